//! A node dials another by its bare NodeId: the endpoint asks the DHT for the address
//! record the other node published (real QUIC endpoints on loopback).

use std::sync::Arc;

use kith::{EndpointConfig, Node, NodeAddr, SecretKey, Transport};
use kith_overlay::dht::{Config, Dht, DhtHandle};
use rand::SeedableRng;

async fn node(seed: u64, bootstrap: Vec<NodeAddr>) -> (Node, DhtHandle) {
    let key = SecretKey::generate(&mut rand::rngs::StdRng::seed_from_u64(seed));
    let node = Node::builder()
        .secret_key(key.clone())
        .config(EndpointConfig::loopback())
        .spawn()
        .await
        .unwrap();
    let transport: Arc<dyn Transport> = Arc::new(node.endpoint().clone());
    let dht = Dht::spawn(transport, key, Config::default(), bootstrap).unwrap();
    (node, dht)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_a_bare_node_id_through_dht_discovery() {
    let (first, first_dht) = node(1, Vec::new()).await;
    let mut nodes = vec![(first.clone(), first_dht)];
    for seed in 2..=8 {
        nodes.push(node(seed, vec![first.addr()]).await);
    }
    for (_, dht) in &nodes {
        dht.bootstrap().await.unwrap();
    }
    for (_, dht) in &nodes {
        assert!(dht.publish_addr().await.unwrap() >= 1);
    }
    // A fresh endpoint with no connections, resolving through a DHT node's handle.
    let dialer = Node::builder().loopback().spawn().await.unwrap();
    let (target, _) = &nodes[7];
    let bare = NodeAddr::new(target.id());
    // Without discovery, a bare id cannot be dialed.
    assert_eq!(
        dialer.connect(bare.clone()).await.unwrap_err(),
        kith::ConnectError::NoAddress(target.id())
    );
    dialer
        .endpoint()
        .set_discovery(Arc::new(nodes[3].1.clone()));
    let conn = dialer.connect(bare).await.unwrap();
    assert_eq!(kith::Connection::remote_id(&*conn), target.id());
    assert_eq!(
        kith::Connection::remote_addr(&*conn),
        target.addr().direct.first().copied()
    );
}
