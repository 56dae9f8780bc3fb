//! `kith site publish|pin` and `kith gateway`: web sites from peers.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use kith::Node;
use kith_site::{Gateway, GatewayConfig, SiteEvent, SiteName, Sites, SitesConfig};

use crate::{Layers, NetArgs, start, wait_ctrl_c};

/// `kith site …`
#[derive(Subcommand, Debug)]
pub(crate) enum SiteCommand {
    /// Publish a folder as a web site under a signed name (a new version each time);
    /// serve it until Ctrl-C. Prints the site's name on stdout.
    Publish(PublishArgs),
    /// Keep a copy of a site and serve it, following its new versions, until Ctrl-C:
    /// the site stays up while its author is offline.
    Pin(PinArgs),
}

#[derive(Args, Debug)]
pub(crate) struct PublishArgs {
    /// The folder: index.html at its top is the home page. Read in place.
    // Not named `dir`: clap would give it the global `--dir` option's id, and the data
    // directory (the node's secret key, its store) would land in the published folder.
    #[arg(value_name = "DIR")]
    folder: PathBuf,
    /// The site's key file: its public half is the site's name. Created on first use
    /// [default: site.key in the data directory]. Publish again with the same key (from
    /// any machine) to update the site.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    #[command(flatten)]
    net: NetArgs,
}

#[derive(Args, Debug)]
pub(crate) struct PinArgs {
    /// The site's name (as `kith site publish` printed it).
    name: SiteName,
    #[command(flatten)]
    net: NetArgs,
}

/// `kith gateway`
#[derive(Args, Debug)]
pub(crate) struct GatewayArgs {
    /// TCP port for the browser (0: any free port).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Address to listen on. Keep it on loopback: the gateway is for this machine's
    /// browser.
    #[arg(long, default_value = "127.0.0.1")]
    listen: IpAddr,
    #[command(flatten)]
    net: NetArgs,
}

fn layers() -> Layers {
    Layers {
        dht: true,
        gossip: true,
        share: Some(kith::ShareConfig::default()),
        relay_server: false,
        search: None,
    }
}

fn sites(node: &Node) -> anyhow::Result<Sites> {
    Ok(Sites::new(
        node.share()?.clone(),
        node.dht()?.clone(),
        node.gossip().ok().cloned(),
        SitesConfig::default(),
    ))
}

pub(crate) async fn run(dir: &Path, cmd: SiteCommand) -> anyhow::Result<()> {
    match cmd {
        SiteCommand::Publish(a) => publish(dir, a).await,
        SiteCommand::Pin(a) => pin(dir, a).await,
    }
}

async fn publish(dir: &Path, a: PublishArgs) -> anyhow::Result<()> {
    if !a.folder.is_dir() {
        bail!("{} is not a folder", a.folder.display());
    }
    if !a.folder.join("index.html").is_file() {
        eprintln!(
            "warning: {} has no index.html: the site's home page will be a 404",
            a.folder.display()
        );
    }
    let node = start(dir, &a.net, layers(), &[]).await?;
    let key_file = a.key.unwrap_or_else(|| dir.join("site.key"));
    let key = kith::layers::transport::load_or_create_secret_key(&key_file)
        .with_context(|| format!("site key {}", key_file.display()))?;
    let sites = sites(&node)?;
    let published = sites
        .publish(&key, &a.folder)
        .await
        .context("publishing the site")?;
    let name = published.record.name;
    println!("{name}");
    eprintln!(
        "published {} as version {} of site {name} (record stored on {} DHT nodes)",
        a.folder.display(),
        published.record.seq,
        published.stored_on
    );
    if published.stored_on == 0 {
        eprintln!("warning: no DHT peer stored the record yet: pass --bootstrap to join a network");
    }
    eprintln!("open it: kith gateway, then http://{name}.localhost:8080/");
    eprintln!("this node: {}", node.addr());
    eprintln!("serving until Ctrl-C");
    wait_ctrl_c().await;
    node.close().await;
    Ok(())
}

async fn pin(dir: &Path, a: PinArgs) -> anyhow::Result<()> {
    let node = start(dir, &a.net, layers(), &[]).await?;
    let sites = sites(&node)?;
    eprintln!("fetching site {} …", a.name);
    let version = sites.pin(a.name).await.context("pinning the site")?;
    let bytes: u64 = version.manifest.entries.iter().map(|e| e.size).sum();
    eprintln!(
        "pinned version {} ({} files, {} bytes); following updates and serving until Ctrl-C",
        version.record.seq,
        version.manifest.entries.len(),
        bytes
    );
    eprintln!("this node: {}", node.addr());
    let mut events = sites.events(a.name).context("the site is not followed")?;
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(SiteEvent::Switched { seq, .. }) => eprintln!("site updated: now version {seq}"),
                Ok(SiteEvent::Rejected { error, .. }) => eprintln!("rejected an update: {error}"),
                Ok(SiteEvent::FetchFailed { seq, error }) => eprintln!("fetching version {seq} failed: {error}"),
                Ok(SiteEvent::Stale { .. }) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
            () = wait_ctrl_c() => break,
        }
    }
    node.close().await;
    Ok(())
}

pub(crate) async fn gateway(dir: &Path, a: GatewayArgs) -> anyhow::Result<()> {
    let node = start(dir, &a.net, layers(), &[]).await?;
    let sites = sites(&node)?;
    let addr = SocketAddr::new(a.listen, a.port);
    let mut config = GatewayConfig::default();
    config.stall_timeout = Duration::from_secs(30);
    let gw = Gateway::bind(sites, addr, config)
        .await
        .with_context(|| format!("is port {} in use? pick another with --port", a.port))?;
    let port = gw.local_addr().port();
    println!("http://localhost:{port}/");
    eprintln!(
        "gateway on http://localhost:{port}/: open a site at http://<name>.localhost:{port}/"
    );
    eprintln!("this node: {}", node.addr());
    wait_ctrl_c().await;
    drop(gw);
    node.close().await;
    Ok(())
}
