//! An application that updates itself through a kith channel.
//!
//! The application is whatever release is installed in `DIR/current`: this program is
//! its supervisor. It follows the channel, and whenever a new release is installed
//! (verified, atomically switched, health-checked) it stops the running program and
//! starts the new one. Releases come from every peer that has them, not from one server.
//!
//! Run it with no arguments for a self-contained demo on loopback: a publisher creates a
//! channel and releases v1, the supervisor installs and runs it, then v2 is published and
//! the running app is replaced by v2 within moments.
//!
//! ```sh
//! cargo run -p kith-update --example self_update
//! # or against a real channel (kith update init / publish):
//! cargo run -p kith-update --example self_update -- <kithup…> <DIR> [<bootstrap NodeAddr>]
//! ```

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use kith::{Node, NodeAddr};
use kith_update::{
    ChannelId, ChannelKeys, FollowEvent, HealthCheck, Installer, UpdateConfig, Updates,
};
use tokio::process::{Child, Command};

type Error = Box<dyn std::error::Error + Send + Sync>;

async fn node(bootstrap: Option<NodeAddr>) -> Result<(Node, Updates), Error> {
    let mut b = Node::builder()
        .loopback()
        .dht(Default::default())
        .gossip(Default::default())
        .memory_store()
        .share(Default::default());
    if let Some(peer) = bootstrap.clone() {
        b = b.bootstrap([peer]);
    }
    let node = b.spawn().await?;
    if bootstrap.is_some() {
        node.dht()?.bootstrap().await?;
    }
    let updates = Updates::new(
        node.share()?.clone(),
        node.dht()?.clone(),
        node.gossip().ok().cloned(),
        UpdateConfig::default(),
    );
    Ok((node, updates))
}

/// Starts the installed release's program (`DIR/current/app`).
fn start_app(installer: &Installer) -> Option<Child> {
    installer.current()?;
    let program = installer.current_path().join("app");
    let child = Command::new(&program)
        .current_dir(installer.current_path())
        .stdout(Stdio::inherit())
        .kill_on_drop(true)
        .spawn();
    match child {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("supervisor: cannot start {}: {e}", program.display());
            None
        }
    }
}

/// Follows `channel` into `dir`, running the current release until `stop` resolves.
async fn supervise(
    updates: &Updates,
    channel: ChannelId,
    dir: &Path,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let installer = Installer::new(dir)?;
    let health = HealthCheck {
        program: "./app".into(),
        args: vec!["--check".into()],
    };
    let mut app = start_app(&installer);
    let mut following = updates.follow(channel, installer.clone(), Some(health));
    tokio::pin!(stop);
    loop {
        tokio::select! {
            ev = following.next_event() => match ev {
                Some(FollowEvent::Installed { version, label }) => {
                    eprintln!("supervisor: release {version} ({label}) installed; restarting the app");
                    if let Some(mut old) = app.take() {
                        let _ = old.kill().await;
                    }
                    app = start_app(&installer);
                }
                Some(FollowEvent::Refused(e)) => eprintln!("supervisor: refused an update: {e}"),
                Some(_) => {}
                None => break,
            },
            () = &mut stop => break,
        }
    }
    if let Some(mut a) = app {
        let _ = a.kill().await;
    }
    Ok(())
}

/// A release: an `app` script that prints its version every half second, and passes
/// its own health check (`app --check`).
fn write_release(dir: &Path, version: u32) -> Result<(), Error> {
    std::fs::create_dir_all(dir)?;
    let app = dir.join("app");
    std::fs::write(
        &app,
        format!(
            "#!/bin/sh\n[ \"$1\" = --check ] && exit 0\nfor i in 1 2 3 4 5 6 7 8 9 10; do echo \"  app: hello from version {version}\"; sleep 0.5; done\n"
        ),
    )?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

async fn demo() -> Result<(), Error> {
    let tmp = std::env::temp_dir().join(format!("kith-self-update-{}", std::process::id()));
    let (publisher_node, publisher) = node(None).await?;
    let (_relay_node, _) = node(Some(publisher_node.addr())).await?;
    let (follower_node, follower) = node(Some(publisher_node.addr())).await?;
    let keys = ChannelKeys::generate(&mut rand::rngs::OsRng, (3, 2), (2, 1))?;
    let channel = keys.channel();
    eprintln!("demo: channel {channel}");
    write_release(&tmp.join("src/v1"), 1)?;
    publisher
        .publish(&keys, &tmp.join("src/v1"), 1, "1.0")
        .await?;
    eprintln!("demo: published 1.0");
    let install_dir = tmp.join("app");
    let publish_v2 = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        if let Err(e) = write_release(&tmp.join("src/v2"), 2) {
            eprintln!("demo: {e}");
            return;
        }
        match publisher
            .publish(&keys, &tmp.join("src/v2"), 2, "2.0")
            .await
        {
            Ok(_) => eprintln!("demo: published 2.0"),
            Err(e) => eprintln!("demo: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    supervise(&follower, channel, &install_dir, publish_v2).await?;
    let installer = Installer::new(&install_dir)?;
    eprintln!(
        "demo: installed {:?}, previous {:?} (in {})",
        installer.current(),
        installer.previous(),
        install_dir.display()
    );
    follower_node.close().await;
    publisher_node.close().await;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => demo().await,
        [channel, dir, rest @ ..] => {
            let channel: ChannelId = channel.parse()?;
            let boot = rest.first().map(|a| a.parse::<NodeAddr>()).transpose()?;
            let (n, updates) = node(boot).await?;
            let stop = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            supervise(&updates, channel, &PathBuf::from(dir), stop).await?;
            n.close().await;
            Ok(())
        }
        _ => Err("usage: self_update [<kithup…> <DIR> [<bootstrap NodeAddr>]]".into()),
    }
}
