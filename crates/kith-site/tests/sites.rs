//! Publishing, resolving, following and pinning sites over an in-memory network.

mod common;

use std::time::Duration;

use common::{swarm, trace, write_site};
use kith_core::SecretKey;
use kith_core::mem::MemNetwork;
use kith_site::{Lookup, SitesConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_opens_by_name_on_a_node_that_never_saw_it() {
    trace();
    let net = MemNetwork::new();
    let nodes = swarm(&net, 4, 10, SitesConfig::default()).await;
    let dir = tempfile::tempdir().expect("tmp");
    write_site(
        dir.path(),
        &[("index.html", b"<h1>v1</h1>"), ("css/site.css", b"h1{}")],
    );
    let key = SecretKey::from_bytes(&[99; 32]);
    let published = nodes[0]
        .sites
        .publish(&key, dir.path())
        .await
        .expect("publish");
    assert!(published.stored_on > 0);
    let site = tokio::time::timeout(
        Duration::from_secs(20),
        nodes[3].sites.open(published.record.name),
    )
    .await
    .expect("in time")
    .expect("open");
    assert_eq!(site.record.seq, published.record.seq);
    assert!(matches!(site.lookup("index.html"), Lookup::File(..)));
    assert_eq!(site.lookup("css"), Lookup::Directory);
    assert_eq!(site.lookup("nope.html"), Lookup::NotFound);
    tokio::time::timeout(Duration::from_secs(20), site.wait_complete())
        .await
        .expect("in time")
        .expect("complete");
}

/// A config whose DHT refresh never fires during a test: updates must come by gossip.
fn push_only() -> SitesConfig {
    let mut c = SitesConfig::default();
    c.refresh = Duration::from_secs(3600);
    c
}

/// Waits for the next `Switched` event, skipping others.
async fn next_switch(
    events: &mut tokio::sync::broadcast::Receiver<kith_site::SiteEvent>,
    within: Duration,
) -> (u64, kith_store::Hash) {
    tokio::time::timeout(within, async {
        loop {
            match events.recv().await.expect("events") {
                kith_site::SiteEvent::Switched { seq, root } => return (seq, root),
                _ => continue,
            }
        }
    })
    .await
    .expect("switched in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_is_pushed_to_followers_within_two_seconds() {
    trace();
    let net = MemNetwork::new();
    let nodes = swarm(&net, 5, 20, push_only()).await;
    let key = SecretKey::from_bytes(&[98; 32]);
    let v1 = tempfile::tempdir().expect("tmp");
    write_site(v1.path(), &[("index.html", b"<h1>v1</h1>")]);
    let p1 = nodes[0]
        .sites
        .publish(&key, v1.path())
        .await
        .expect("publish");
    let name = p1.record.name;
    // Two followers open v1.
    for n in &nodes[3..5] {
        let site = n.sites.open(name).await.expect("open");
        assert_eq!(site.record.seq, p1.record.seq);
    }
    let mut ev3 = nodes[3].sites.events(name).expect("followed");
    let mut ev4 = nodes[4].sites.events(name).expect("followed");
    let v2 = tempfile::tempdir().expect("tmp");
    write_site(v2.path(), &[("index.html", b"<h1>v2</h1>")]);
    let p2 = nodes[0]
        .sites
        .publish(&key, v2.path())
        .await
        .expect("publish");
    assert!(p2.record.seq > p1.record.seq);
    let want = (p2.record.seq, p2.record.root);
    assert_eq!(next_switch(&mut ev3, Duration::from_secs(2)).await, want);
    assert_eq!(next_switch(&mut ev4, Duration::from_secs(2)).await, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_older_records_are_ignored() {
    use kith_overlay::dht::Limits;
    use kith_site::{SiteEvent, SiteRecord};
    trace();
    let net = MemNetwork::new();
    let nodes = swarm(&net, 4, 30, push_only()).await;
    let key = SecretKey::from_bytes(&[97; 32]);
    let dir = tempfile::tempdir().expect("tmp");
    write_site(dir.path(), &[("index.html", b"<h1>v1</h1>")]);
    let p1 = nodes[0]
        .sites
        .publish(&key, dir.path())
        .await
        .expect("publish");
    write_site(dir.path(), &[("index.html", b"<h1>v2</h1>")]);
    let p2 = nodes[0]
        .sites
        .publish(&key, dir.path())
        .await
        .expect("publish");
    let name = p1.record.name;
    let site = nodes[3].sites.open(name).await.expect("open");
    assert_eq!(site.record.seq, p2.record.seq);
    let mut events = nodes[3].sites.events(name).expect("followed");

    // An attacker on the site's topic pushes: a record signed by its own key, one whose
    // sequence was raised after signing, and the genuine older version (a replay).
    let attacker = &nodes[1];
    let topic = attacker
        .gossip
        .join(name.topic(), vec![nodes[3].addr.clone()])
        .await
        .expect("join");
    let evil = SecretKey::from_bytes(&[66; 32]);
    let forged = SiteRecord::sign(&evil, u64::MAX - 1, p2.record.root, &[], &Limits::default())
        .expect("sign")
        .to_update();
    let mut raised = kith_site::record::SiteUpdate::decode_from(&p2.record.to_update());
    raised.seq = u64::MAX - 1;
    for payload in [forged, raised.to_bytes(), p1.record.to_update()] {
        topic.broadcast(payload).await.expect("broadcast");
    }
    let (mut rejected, mut stale) = (0, 0);
    tokio::time::timeout(Duration::from_secs(10), async {
        while rejected < 2 || stale < 1 {
            match events.recv().await.expect("events") {
                SiteEvent::Rejected { from, .. } => {
                    assert_eq!(from, Some(attacker.addr.node_id));
                    rejected += 1;
                }
                // Copies of the current version (pushed when neighbours meet) are stale
                // too; the replay is the one to see.
                SiteEvent::Stale { seq } if seq == p1.record.seq => stale += 1,
                SiteEvent::Stale { seq } => assert_eq!(seq, p2.record.seq),
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .expect("every forged record seen");
    let now = nodes[3].sites.current(name).expect("current");
    assert_eq!(now.record.seq, p2.record.seq);
    assert_eq!(now.record.root, p2.record.root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_site_stays_up_and_follows_updates_while_its_author_is_offline() {
    trace();
    let net = MemNetwork::new();
    let nodes = swarm(&net, 6, 40, push_only()).await;
    let key = SecretKey::from_bytes(&[96; 32]);
    let dir = tempfile::tempdir().expect("tmp");
    let big: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
    write_site(
        dir.path(),
        &[("index.html", b"<h1>v1</h1>"), ("big.bin", &big)],
    );
    let p1 = nodes[0]
        .sites
        .publish(&key, dir.path())
        .await
        .expect("publish");
    let name = p1.record.name;
    let pinned = nodes[2].sites.pin(name).await.expect("pin");
    assert_eq!(pinned.record.seq, p1.record.seq);
    let mut events = nodes[2].sites.events(name).expect("followed");
    // v2 reaches the pinner, which fetches it whole.
    write_site(dir.path(), &[("index.html", b"<h1>v2</h1>")]);
    let p2 = nodes[0]
        .sites
        .publish(&key, dir.path())
        .await
        .expect("publish");
    assert_eq!(
        next_switch(&mut events, Duration::from_secs(5)).await,
        (p2.record.seq, p2.record.root)
    );
    let mut watch = nodes[2].sites.watch(name).expect("followed");
    let v2 = watch
        .wait_for(|v| v.as_ref().is_some_and(|v| v.record.seq == p2.record.seq))
        .await
        .expect("watch")
        .clone()
        .expect("some");
    tokio::time::timeout(Duration::from_secs(20), v2.wait_complete())
        .await
        .expect("in time")
        .expect("complete");
    // The author goes offline: its share serves nothing and its connections drop.
    nodes[0]
        .sites
        .share()
        .remove(&p2.record.root)
        .expect("remove");
    nodes[0].transport.disconnect_all();
    // A node that never saw the site opens it: the record and the content come from
    // the pinner.
    let site = tokio::time::timeout(Duration::from_secs(20), nodes[5].sites.open(name))
        .await
        .expect("in time")
        .expect("open");
    assert_eq!(site.record.seq, p2.record.seq);
    tokio::time::timeout(Duration::from_secs(20), site.wait_complete())
        .await
        .expect("in time")
        .expect("complete");
    let Lookup::File(_, entry) = site.lookup("big.bin") else {
        panic!("big.bin missing")
    };
    let hash = entry.hash().expect("hash");
    assert_eq!(
        nodes[5]
            .sites
            .share()
            .store()
            .read_range(hash, 0..big.len() as u64)
            .expect("read"),
        big
    );
}
