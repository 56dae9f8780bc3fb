//! The composed node: one identity for every layer, key files, loopback that keeps the
//! other settings, discovery through the DHT, sharing through the node.

use std::time::Duration;

use kith::{DownloadOptions, EndpointConfig, Node, NodeAddr, ShareConfig, Ticket};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_file_serves_every_layer_and_keeps_id_and_port() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("node.key");
    let build = || {
        // Not `loopback()`: the port is persisted. Binding 127.0.0.1:0 keeps the test on
        // loopback while taking the same path as a node on a real network.
        Node::builder()
            .key_file(&key)
            .bind("127.0.0.1:0".parse().unwrap())
            .mdns(false)
            .dht(Default::default())
            .gossip(Default::default())
            .store(tmp.path().join("store"))
            .share(ShareConfig::default())
    };
    let a = build().spawn().await.unwrap();
    assert!(a.dht().is_ok() && a.gossip().is_ok() && a.store().is_ok() && a.share().is_ok());
    assert_eq!(a.share().unwrap().node_id(), a.id());
    assert_eq!(a.dht().unwrap().node_id(), a.id());
    let (id, port) = (a.id(), a.endpoint().local_addrs()[0].port());
    let port_file = tmp.path().join("node.key.port");
    assert_eq!(
        std::fs::read_to_string(&port_file).unwrap().trim(),
        port.to_string()
    );
    a.close().await;
    drop(a);
    // The next start binds the persisted port (a free one is written there: this
    // process still holds the first node's socket until its layers wind down).
    let free = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(&port_file, format!("{free}\n")).unwrap();
    let b = build().spawn().await.unwrap();
    assert_eq!(b.id(), id);
    assert_eq!(
        b.endpoint().local_addrs()[0].port(),
        free,
        "the persisted port was not used"
    );
    assert!(b.mdns().is_err());
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_keeps_the_other_settings() {
    let mut config = EndpointConfig::default();
    config.limits.max_connections = 7;
    config.idle_timeout = Duration::from_secs(5);
    let n = Node::builder()
        .config(config)
        .loopback()
        .spawn()
        .await
        .unwrap();
    assert_eq!(n.endpoint().config().limits.max_connections, 7);
    assert_eq!(n.endpoint().config().idle_timeout, Duration::from_secs(5));
    assert!(
        n.endpoint()
            .local_addrs()
            .iter()
            .all(|a| a.ip().is_loopback())
    );
    // And in the other order.
    let mut config = EndpointConfig::default();
    config.limits.max_connections = 9;
    let n2 = Node::builder()
        .loopback()
        .config(config)
        .spawn()
        .await
        .unwrap();
    assert_eq!(n2.endpoint().config().limits.max_connections, 9);
    assert!(
        n2.endpoint()
            .local_addrs()
            .iter()
            .all(|a| a.ip().is_loopback())
    );
    n.close().await;
    n2.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_ids_and_bare_tickets_resolve_through_the_dht() {
    let first = Node::builder()
        .loopback()
        .dht(Default::default())
        .share(ShareConfig::default())
        .spawn()
        .await
        .unwrap();
    let mut nodes = vec![first.clone()];
    for _ in 0..5 {
        let n = Node::builder()
            .loopback()
            .dht(Default::default())
            .share(ShareConfig::default())
            .bootstrap([first.addr()])
            .spawn()
            .await
            .unwrap();
        n.dht().unwrap().bootstrap().await.unwrap();
        nodes.push(n);
    }
    for n in &nodes {
        n.dht().unwrap().bootstrap().await.unwrap();
        n.dht().unwrap().publish_addr().await.unwrap();
    }
    // Dial by bare id: the DHT resolves the address.
    let conn = nodes[5]
        .connect(NodeAddr::new(nodes[2].id()))
        .await
        .unwrap();
    assert_eq!(kith::Connection::remote_id(&*conn), nodes[2].id());
    // Share on node 3; node 4 fetches with a ticket that names no provider.
    let t = nodes[3]
        .share()
        .unwrap()
        .add_bytes(vec![5u8; 200_000].into())
        .await
        .unwrap();
    assert!(nodes[3].share().unwrap().announce(t.root).await.unwrap() > 0);
    let bare = Ticket::new(t.root, t.format, vec![]);
    let stats = nodes[4]
        .share()
        .unwrap()
        .download(&bare, DownloadOptions::default())
        .finish()
        .await
        .unwrap();
    assert_eq!(stats.fetched_bytes, 200_000);
    for n in nodes {
        n.close().await;
    }
}
