//! Relay reservations on loopback: forwarding by node id, limits, floods.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use kith_transport::Endpoint;
use kith_transport::relay::{
    RELAY_PROTOCOL, RelayClient, RelayConfig, RelayError, RelayEvent, RelayServer,
};

const T: Duration = Duration::from_secs(10);

async fn relay_node(seed: u64, config: RelayConfig) -> (Endpoint, RelayServer) {
    let ep = bind(seed).await;
    let server = RelayServer::new(config);
    ep.mount(RELAY_PROTOCOL, std::sync::Arc::new(server.clone()))
        .unwrap();
    (ep, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_are_forwarded_by_node_id_with_authenticated_source() {
    let (relay, server) = relay_node(1, RelayConfig::default()).await;
    let a = bind(2).await;
    let b = bind(3).await;
    let (ca, mut ra) = RelayClient::connect(&a, relay.node_addr()).await.unwrap();
    let (cb, mut rb) = RelayClient::connect(&b, relay.node_addr()).await.unwrap();
    assert_eq!(server.clients(), 2);
    ca.send(b.node_id(), Bytes::from_static(b"to b")).unwrap();
    let ev = tokio::time::timeout(T, rb.recv()).await.unwrap().unwrap();
    assert_eq!(
        ev,
        RelayEvent::Packet {
            from: a.node_id(),
            packet: Bytes::from_static(b"to b")
        }
    );
    cb.send(a.node_id(), Bytes::from_static(b"to a")).unwrap();
    let ev = tokio::time::timeout(T, ra.recv()).await.unwrap().unwrap();
    assert_eq!(
        ev,
        RelayEvent::Packet {
            from: b.node_id(),
            packet: Bytes::from_static(b"to a")
        }
    );
    // A packet for a node without a reservation comes back as PeerGone.
    let nobody = key(99).node_id();
    ca.send(nobody, Bytes::from_static(b"?")).unwrap();
    let ev = tokio::time::timeout(T, ra.recv()).await.unwrap().unwrap();
    assert_eq!(ev, RelayEvent::PeerGone { peer: nobody });
    assert_eq!(
        ca.send(b.node_id(), Bytes::new()),
        Err(RelayError::PacketSize(0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservation_limit_refuses() {
    let mut config = RelayConfig::default();
    config.max_clients = 1;
    let (relay, server) = relay_node(1, config).await;
    let a = bind(2).await;
    let b = bind(3).await;
    let _keep = RelayClient::connect(&a, relay.node_addr()).await.unwrap();
    let err = RelayClient::connect(&b, relay.node_addr())
        .await
        .unwrap_err();
    assert_eq!(err, RelayError::Refused);
    assert_eq!(server.stats().refused.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_peer_is_limited_and_others_keep_flowing() {
    let mut config = RelayConfig::default();
    config.rate_bytes_per_sec = 64 << 10;
    config.burst_bytes = 64 << 10;
    let (relay, server) = relay_node(1, config).await;
    let flooder = bind(2).await;
    let polite = bind(3).await;
    let sink = bind(4).await;
    let (cf, _rf) = RelayClient::connect(&flooder, relay.node_addr())
        .await
        .unwrap();
    let (cp, _rp) = RelayClient::connect(&polite, relay.node_addr())
        .await
        .unwrap();
    let (_cs, mut rs) = RelayClient::connect(&sink, relay.node_addr())
        .await
        .unwrap();
    // The flooder offers 4 MiB at once: 64 times its burst.
    let big = Bytes::from(vec![0xaa; 1024]);
    let start = tokio::time::Instant::now();
    let mut queued = 0u64;
    let deadline = tokio::time::Instant::now() + T;
    while queued < 4096 && tokio::time::Instant::now() < deadline {
        match cf.send(sink.node_id(), big.clone()) {
            Ok(()) => queued += 1,
            Err(RelayError::QueueFull) => tokio::task::yield_now().await,
            Err(e) => panic!("{e}"),
        }
    }
    // The polite peer's packets still arrive, in order, while the flood is being cut.
    for i in 0..20u8 {
        cp.send(sink.node_id(), Bytes::from(vec![i; 100])).unwrap();
    }
    let mut polite_seen = Vec::new();
    let mut flood_seen = 0u64;
    while polite_seen.len() < 20 {
        match tokio::time::timeout(T, rs.recv()).await.unwrap().unwrap() {
            RelayEvent::Packet { from, packet } if from == polite.node_id() => {
                polite_seen.push(packet[0])
            }
            RelayEvent::Packet { from, .. } if from == flooder.node_id() => flood_seen += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(polite_seen, (0..20).collect::<Vec<u8>>());
    // The flood was cut to its budget: burst + rate × elapsed, in 1 KiB packets.
    let elapsed = start.elapsed().as_secs_f64();
    let forwarded = server.stats().forwarded.load(Ordering::Relaxed);
    let budget = ((64 << 10) as f64 + (64 << 10) as f64 * elapsed) / 1024.0;
    assert_eq!(queued, 4096, "the whole flood was offered");
    assert!(
        (forwarded - 20) as f64 <= budget + 1.0,
        "flood forwarded {} packets, budget {budget:.0} after {elapsed:.2} s",
        forwarded - 20
    );
    assert!(flood_seen as f64 <= budget + 1.0);
    assert!(server.stats().dropped_rate.load(Ordering::Relaxed) > 0);
}
