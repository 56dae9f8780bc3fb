//! `kith update init|publish|follow`: software update channels.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use kith::Node;
use kith_update::{
    ChannelId, ChannelKeys, FollowEvent, HealthCheck, Installer, UpdateConfig, Updates,
};

use crate::{Layers, NetArgs, start, wait_ctrl_c};

/// `kith update …`
#[derive(Subcommand, Debug)]
pub(crate) enum UpdateCommand {
    /// Create a channel: root, release and announce keys in KEYS, and its signed root.
    /// Prints the channel's name.
    Init(InitArgs),
    /// Publish a folder as a release of the channel whose keys are in KEYS; serve it
    /// until Ctrl-C.
    Publish(PublishArgs),
    /// Follow a channel: install each new release into DIR atomically (DIR/current),
    /// keep the previous one, and serve what was installed.
    Follow(FollowArgs),
}

#[derive(Args, Debug)]
pub(crate) struct InitArgs {
    /// Directory for the channel's keys (created; keep root keys offline).
    keys: PathBuf,
    /// Root keys.
    #[arg(long, default_value_t = 3)]
    root_keys: usize,
    /// Root signatures needed (to rotate the root).
    #[arg(long, default_value_t = 2)]
    root_threshold: u32,
    /// Release keys.
    #[arg(long, default_value_t = 2)]
    release_keys: usize,
    /// Release signatures needed.
    #[arg(long, default_value_t = 1)]
    release_threshold: u32,
}

#[derive(Args, Debug)]
pub(crate) struct PublishArgs {
    /// The channel's key directory (from `kith update init`).
    #[arg(long = "channel", value_name = "KEYS")]
    keys: PathBuf,
    /// The release folder.
    // Not named `dir`: clap would give it the global `--dir` option's id, and the data
    // directory (the node's secret key, its store) would land in the published folder.
    #[arg(value_name = "DIR")]
    folder: PathBuf,
    /// The release number: it must grow with every release.
    #[arg(long = "version", value_name = "N")]
    release: u64,
    /// A label shown to followers [default: the number].
    #[arg(long)]
    label: Option<String>,
    /// Limit this node's upload to all peers together, in bytes per second.
    #[arg(long, value_name = "BYTES_PER_SEC")]
    upload_limit: Option<u64>,
    #[command(flatten)]
    net: NetArgs,
}

#[derive(Args, Debug)]
pub(crate) struct FollowArgs {
    /// The channel's name (kithup…, as `kith update init` printed it).
    channel: ChannelId,
    /// Where to install: DIR/current is the running release, DIR/previous the one
    /// before.
    #[arg(long = "into", value_name = "DIR")]
    into: PathBuf,
    /// A program run in the new release's directory after it is installed; if it fails
    /// the previous release is restored. A relative path is looked up in the release.
    #[arg(long, value_name = "PROGRAM")]
    health_check: Option<PathBuf>,
    /// Check once, install if there is something newer, and exit.
    #[arg(long)]
    once: bool,
    /// Limit this node's upload to all peers together, in bytes per second.
    #[arg(long, value_name = "BYTES_PER_SEC")]
    upload_limit: Option<u64>,
    #[command(flatten)]
    net: NetArgs,
}

/// A publisher super-seeds: it is the origin of every release, with many followers at
/// once, and should send each piece about once (see `ShareConfig::super_seed`).
fn layers(upload_limit: Option<u64>, super_seed: bool) -> Layers {
    let mut share = kith::ShareConfig::default();
    share.limits.upload_rate_total = upload_limit;
    share.super_seed = super_seed;
    Layers {
        dht: true,
        gossip: true,
        share: Some(share),
        relay_server: false,
        search: None,
    }
}

fn updates(node: &Node) -> anyhow::Result<Updates> {
    Ok(Updates::new(
        node.share()?.clone(),
        node.dht()?.clone(),
        node.gossip().ok().cloned(),
        UpdateConfig::default(),
    ))
}

pub(crate) async fn run(dir: &Path, cmd: UpdateCommand) -> anyhow::Result<()> {
    match cmd {
        UpdateCommand::Init(a) => init(a),
        UpdateCommand::Publish(a) => publish(dir, a).await,
        UpdateCommand::Follow(a) => follow(dir, a).await,
    }
}

fn init(a: InitArgs) -> anyhow::Result<()> {
    if a.keys.join("roots").exists() {
        bail!("{} already holds a channel", a.keys.display());
    }
    let keys = ChannelKeys::generate(
        &mut rand::rngs::OsRng,
        (a.root_keys, a.root_threshold),
        (a.release_keys, a.release_threshold),
    )
    .context("creating the channel")?;
    keys.save(&a.keys)
        .with_context(|| format!("writing {}", a.keys.display()))?;
    println!("{}", keys.channel());
    eprintln!(
        "channel created in {}: {} root keys ({} to sign a new root), {} release keys ({} to sign a release)",
        a.keys.display(),
        a.root_keys,
        a.root_threshold,
        a.release_keys,
        a.release_threshold
    );
    eprintln!(
        "followers: kith update follow {} --into DIR",
        keys.channel()
    );
    Ok(())
}

async fn publish(dir: &Path, a: PublishArgs) -> anyhow::Result<()> {
    let keys = ChannelKeys::load(&a.keys)
        .with_context(|| format!("loading the channel keys in {}", a.keys.display()))?;
    if !a.folder.is_dir() {
        bail!("{} is not a folder", a.folder.display());
    }
    let node = start(dir, &a.net, layers(a.upload_limit, true), &[]).await?;
    let updates = updates(&node)?;
    let label = a.label.unwrap_or_else(|| a.release.to_string());
    let p = updates
        .publish(&keys, &a.folder, a.release, &label)
        .await
        .context("publishing the release")?;
    println!("{}", keys.channel());
    eprintln!(
        "published release {} ({label}) of {}: collection {}, announcement stored on {} DHT nodes",
        p.version,
        a.folder.display(),
        p.collection,
        p.stored_on
    );
    eprintln!("this node: {}", node.addr());
    eprintln!("serving until Ctrl-C");
    wait_ctrl_c().await;
    report_upload(&node);
    node.close().await;
    Ok(())
}

/// Prints what this node uploaded to peers (`uploaded: N bytes`, on stderr).
fn report_upload(node: &Node) {
    if let Ok(share) = node.share() {
        eprintln!("uploaded: {} bytes", share.stats().uploaded_bytes);
    }
}

async fn follow(dir: &Path, a: FollowArgs) -> anyhow::Result<()> {
    let installer =
        Installer::new(&a.into).with_context(|| format!("preparing {}", a.into.display()))?;
    let node = start(dir, &a.net, layers(a.upload_limit, false), &[]).await?;
    let updates = updates(&node)?;
    let health = a.health_check.map(|program| HealthCheck {
        program,
        args: vec![],
    });
    eprintln!("this node: {}", node.addr());
    if a.once {
        let out = updates
            .update_once(a.channel, &installer, None, health.as_ref())
            .await;
        node.close().await;
        match out {
            Ok(kith_update::Outcome::Installed { version, label }) => {
                println!("installed {version}");
                eprintln!(
                    "release {version} ({label}) installed in {}",
                    installer.current_path().display()
                );
                return Ok(());
            }
            Ok(kith_update::Outcome::UpToDate(v)) => {
                println!("up to date {v}");
                return Ok(());
            }
            Err(e) => return Err(e).context("updating"),
        }
    }
    eprintln!(
        "following {}; installed: {}",
        a.channel,
        installer
            .current()
            .map_or("nothing yet".to_owned(), |v| v.to_string())
    );
    let mut following = updates.follow(a.channel, installer.clone(), health);
    loop {
        tokio::select! {
            ev = following.next_event() => match ev {
                Some(FollowEvent::Installed { version, label }) => {
                    println!("installed {version}");
                    eprintln!("release {version} ({label}) installed; previous kept for rollback");
                }
                Some(FollowEvent::Refused(e)) => eprintln!("refused: {e}"),
                Some(FollowEvent::NotFound) => eprintln!("no release found yet"),
                Some(FollowEvent::UpToDate(_)) => {}
                None => break,
            },
            () = wait_ctrl_c() => break,
        }
    }
    drop(following);
    report_upload(&node);
    node.close().await;
    Ok(())
}
