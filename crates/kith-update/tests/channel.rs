//! A channel end to end over the in-memory network: publish, follow (pushes), health
//! checks that roll back, and followers that seed the release when the publisher is gone.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kith_core::mem::{MemNetwork, MemTransport};
use kith_core::{NodeAddr, SecretKey, Transport};
use kith_overlay::dht::Dht;
use kith_overlay::gossip::driver::Gossip;
use kith_share::{Share, ShareConfig};
use kith_store::{MemStore, StoreConfig};
use kith_update::{
    ChannelKeys, FollowEvent, HealthCheck, Installer, Outcome, UpdateConfig, Updates,
};
use rand::SeedableRng;

struct Node {
    updates: Updates,
    transport: MemTransport,
}

async fn swarm(net: &MemNetwork, n: usize, seed: u8) -> Vec<Node> {
    let mut out: Vec<Node> = Vec::new();
    let mut first: Option<NodeAddr> = None;
    for i in 0..n {
        let key = SecretKey::from_bytes(&[seed + i as u8; 32]);
        let mt = net.node(key.node_id());
        let t: Arc<dyn Transport> = Arc::new(mt.clone());
        let boot: Vec<NodeAddr> = first.iter().cloned().collect();
        let dht =
            Dht::spawn(t.clone(), key.clone(), Default::default(), boot.clone()).expect("dht");
        if !boot.is_empty() {
            dht.bootstrap().await.expect("bootstrap");
        }
        first.get_or_insert(t.local_addr());
        let gossip = Gossip::spawn(t.clone(), key, Default::default()).expect("gossip");
        let store = Arc::new(MemStore::new(StoreConfig::default()));
        let share =
            Share::spawn(t, store, Some(dht.clone()), ShareConfig::default()).expect("share");
        let mut config = UpdateConfig::default();
        // Updates must arrive by push: the DHT is re-read only hourly here.
        config.refresh = Duration::from_secs(3600);
        out.push(Node {
            updates: Updates::new(share, dht, Some(gossip), config),
            transport: mt,
        });
    }
    out
}

fn release(dir: &Path, version: u64, healthy: bool) {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(dir.join("app.txt"), format!("app {version}")).expect("write");
    let script = dir.join("health.sh");
    std::fs::write(
        &script,
        if healthy {
            "#!/bin/sh\nexit 0\n"
        } else {
            "#!/bin/sh\nexit 3\n"
        },
    )
    .expect("write");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
}

async fn next_installed_or_refused(f: &mut kith_update::Following) -> FollowEvent {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match f.next_event().await.expect("follower running") {
                e @ (FollowEvent::Installed { .. } | FollowEvent::Refused(_)) => return e,
                _ => continue,
            }
        }
    })
    .await
    .expect("in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_install_pushed_releases_roll_back_bad_ones_and_seed() {
    let net = MemNetwork::new();
    let nodes = swarm(&net, 5, 10).await;
    let keys = ChannelKeys::generate(&mut rand::rngs::StdRng::seed_from_u64(3), (3, 2), (2, 1))
        .expect("keys");
    let channel = keys.channel();
    let src = tempfile::tempdir().expect("tmp");
    let health = HealthCheck {
        program: "./health.sh".into(),
        args: vec![],
    };

    release(&src.path().join("1"), 1, true);
    nodes[0]
        .updates
        .publish(&keys, &src.path().join("1"), 1, "1.0")
        .await
        .expect("publish");
    let target = tempfile::tempdir().expect("tmp");
    let installer = Installer::new(target.path()).expect("installer");
    let mut following = nodes[3]
        .updates
        .follow(channel, installer.clone(), Some(health.clone()));
    assert_eq!(
        next_installed_or_refused(&mut following).await,
        FollowEvent::Installed {
            version: 1,
            label: "1.0".into()
        }
    );

    // Version 2 is pushed on the channel's topic.
    release(&src.path().join("2"), 2, true);
    nodes[0]
        .updates
        .publish(&keys, &src.path().join("2"), 2, "2.0")
        .await
        .expect("publish");
    assert_eq!(
        next_installed_or_refused(&mut following).await,
        FollowEvent::Installed {
            version: 2,
            label: "2.0".into()
        }
    );
    assert_eq!(
        std::fs::read_to_string(installer.current_path().join("app.txt")).expect("app"),
        "app 2"
    );
    assert_eq!(installer.previous(), Some(1));

    // Version 3 fails its health check: rolled back to 2, and not tried again.
    release(&src.path().join("3"), 3, false);
    nodes[0]
        .updates
        .publish(&keys, &src.path().join("3"), 3, "3.0")
        .await
        .expect("publish");
    match next_installed_or_refused(&mut following).await {
        FollowEvent::Refused(e) => assert!(e.contains("health check"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(installer.current(), Some(2));
    assert_eq!(installer.rejected(), vec![3]);
    assert_eq!(installer.verify_current().expect("intact"), Some(2));
    drop(following);

    // The publisher goes away. The follower fetched version 3 before its health check
    // failed here, and seeds what it fetched: a new follower without a health check
    // installs version 3 from it alone.
    for (root, _) in nodes[0].updates.share().shared() {
        nodes[0].updates.share().remove(&root).expect("remove");
    }
    nodes[0].transport.disconnect_all();
    let target2 = tempfile::tempdir().expect("tmp");
    let installer2 = Installer::new(target2.path()).expect("installer");
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        nodes[4]
            .updates
            .update_once(channel, &installer2, None, None),
    )
    .await
    .expect("in time")
    .expect("update");
    assert_eq!(
        out,
        Outcome::Installed {
            version: 3,
            label: "3.0".into()
        }
    );
    assert_eq!(
        std::fs::read_to_string(installer2.current_path().join("app.txt")).expect("app"),
        "app 3"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_rotation_reaches_followers_end_to_end() {
    let net = MemNetwork::new();
    let nodes = swarm(&net, 4, 40).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let mut keys = ChannelKeys::generate(&mut rng, (3, 2), (2, 1)).expect("keys");
    let channel = keys.channel();
    let src = tempfile::tempdir().expect("tmp");
    release(&src.path().join("1"), 1, true);
    nodes[0]
        .updates
        .publish(&keys, &src.path().join("1"), 1, "1")
        .await
        .expect("publish");
    let target = tempfile::tempdir().expect("tmp");
    let installer = Installer::new(target.path()).expect("installer");
    let out = nodes[3]
        .updates
        .update_once(channel, &installer, None, None)
        .await
        .expect("v1");
    assert_eq!(
        out,
        Outcome::Installed {
            version: 1,
            label: "1".into()
        }
    );

    // New root and release keys, signed by the old root threshold: the follower, which
    // trusts only root 1, walks the chain and takes release 2 signed by the new keys.
    keys.rotate(&mut rng, 2, (2, 2), (1, 1)).expect("rotate");
    assert_eq!(keys.channel(), channel, "the channel keeps its name");
    release(&src.path().join("2"), 2, true);
    nodes[0]
        .updates
        .publish(&keys, &src.path().join("2"), 2, "2")
        .await
        .expect("publish");
    let out = nodes[3]
        .updates
        .update_once(channel, &installer, None, None)
        .await
        .expect("v2");
    assert_eq!(
        out,
        Outcome::Installed {
            version: 2,
            label: "2".into()
        }
    );
    assert_eq!(
        std::fs::read_to_string(installer.current_path().join("app.txt")).expect("app"),
        "app 2"
    );
}
