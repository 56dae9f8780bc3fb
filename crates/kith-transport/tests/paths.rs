//! Relayed connections and the move to a direct path, on loopback.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use kith_core::NodeAddr;
use kith_core::net::Connection;
use kith_transport::relay::{RelayConfig, RelayServer};
use kith_transport::{Endpoint, EndpointConfig, PathKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(15);

struct Net {
    relay: Endpoint,
    relay_server: RelayServer,
}

async fn relay() -> Net {
    let mut config = RelayConfig::default();
    config.rate_bytes_per_sec = 64 << 20;
    config.burst_bytes = 8 << 20;
    let server = RelayServer::new(config);
    let relay = bind(1).await;
    relay
        .mount(
            kith_transport::relay::RELAY_PROTOCOL,
            Arc::new(server.clone()),
        )
        .unwrap();
    Net {
        relay,
        relay_server: server,
    }
}

async fn peer(seed: u64, net: &Net, probe_delay: Duration) -> Endpoint {
    let mut cfg = EndpointConfig::loopback();
    cfg.relay = Some(net.relay.node_addr());
    cfg.path_probe_delay = probe_delay;
    let ep = bind_with(seed, cfg).await;
    ep.mount(HASH, Arc::new(Hasher)).unwrap();
    assert_eq!(
        ep.node_addr().relays.len(),
        1,
        "home relay reserved and advertised"
    );
    ep
}

/// The address of `ep` with only its relay: the dialer cannot go direct at first.
fn relay_only(ep: &Endpoint) -> NodeAddr {
    let mut a = ep.node_addr();
    a.direct.clear();
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_connection_moves_to_direct_and_the_stream_survives() {
    let net = relay().await;
    let a = peer(2, &net, Duration::from_millis(700)).await;
    let b = peer(3, &net, Duration::ZERO).await;
    let conn = a.connect(relay_only(&b)).await.unwrap();
    assert_eq!(conn.path(), PathKind::Relayed(net.relay.node_id()));
    let mut events = conn.path_events();

    // A transfer that starts on the relay and finishes on the direct path.
    let (mut send, mut recv) = conn.open_bi(&HASH).await.unwrap();
    let data: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let (first, second) = data.split_at(256 << 10);
    send.write_all(first).await.unwrap();
    send.flush().await.unwrap();
    assert_eq!(
        conn.path(),
        PathKind::Relayed(net.relay.node_id()),
        "still relayed mid-transfer"
    );
    let direct = tokio::time::timeout(T, events.wait_for(|p| matches!(p, PathKind::Direct(_))))
        .await
        .expect("direct path within the timeout")
        .map(|p| *p)
        .unwrap();
    assert_eq!(direct, PathKind::Direct(b.local_addrs()[0]));
    send.write_all(second).await.unwrap();
    send.finish().unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(T, recv.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        &reply[..32],
        blake3::hash(&data).as_bytes(),
        "every byte arrived, in order"
    );
    assert_eq!(
        u64::from_le_bytes(reply[32..40].try_into().unwrap()),
        data.len() as u64
    );
    assert!(conn.stats().probes_sent >= 1);
    // The same connection throughout: no reconnect.
    assert!(Arc::ptr_eq(
        &conn,
        &a.connect(relay_only(&b)).await.unwrap()
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_sees_only_ciphertext() {
    let net = relay().await;
    let mut tap = net.relay_server.tap();
    // Both sides hold off probing, so everything goes through the relay.
    let a = peer(2, &net, Duration::from_secs(60)).await;
    let b = peer(3, &net, Duration::from_secs(60)).await;
    let conn = a.connect(relay_only(&b)).await.unwrap();
    let marker = b"KITH-PLAINTEXT-MARKER-4f1c2a".repeat(400);
    let reply = hash_reply(&conn, &marker).await;
    assert_eq!(&reply[..32], blake3::hash(&marker).as_bytes());
    assert_eq!(conn.path(), PathKind::Relayed(net.relay.node_id()));
    let mut seen = Vec::new();
    while let Ok(p) = tap.try_recv() {
        seen.extend_from_slice(&p);
    }
    assert!(
        seen.len() > marker.len(),
        "the transfer went through the relay ({} bytes)",
        seen.len()
    );
    let needle = b"KITH-PLAINTEXT-MARKER";
    assert!(
        !seen.windows(needle.len()).any(|w| w == needle),
        "no plaintext on the relay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_replayed_probes_do_not_move_a_path() {
    use rand::{Rng, SeedableRng};
    let net = relay().await;
    let a = peer(2, &net, Duration::from_secs(60)).await;
    let b = peer(3, &net, Duration::from_secs(60)).await;
    let conn = a.connect(relay_only(&b)).await.unwrap();
    assert_eq!(echo(&*conn, b"x").await.unwrap(), b"x");
    // An attacker who knows both ids sprays probe-shaped packets at a's socket: pongs
    // and pings with random transaction ids and MACs, claiming to come from b.
    let attacker = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for i in 0..2000u32 {
        let mut p = vec![0u8; 66];
        p[1..5].copy_from_slice(b"kPRB");
        p[5] = if i % 2 == 0 { 2 } else { 1 };
        rng.fill(&mut p[6..18]);
        p[18..50].copy_from_slice(b.node_id().as_bytes());
        rng.fill(&mut p[50..]);
        attacker.send_to(&p, a.local_addrs()[0]).unwrap();
    }
    // The connection still works and still goes through the relay.
    assert_eq!(
        echo(&*conn, b"still relayed").await.unwrap(),
        b"still relayed"
    );
    assert_eq!(conn.path(), PathKind::Relayed(net.relay.node_id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_blocked_host_connects_through_the_relay_over_tcp() {
    // The relay offers relaying over QUIC and over TLS/TCP on the same address.
    let mut relay_cfg = EndpointConfig::loopback();
    relay_cfg.relay_server = Some(RelayConfig::default());
    let relay = bind_with(1, relay_cfg).await;
    // c reaches the relay over TCP only (as a host behind a UDP-blocking firewall would)
    // and holds off direct probing; b is an ordinary peer on the same relay.
    let mut c_cfg = EndpointConfig::loopback();
    c_cfg.relay = Some(relay.node_addr());
    c_cfg.relay_over_tcp_only = true;
    c_cfg.path_probe_delay = Duration::from_secs(60);
    let c = bind_with(2, c_cfg).await;
    let mut b_cfg = EndpointConfig::loopback();
    b_cfg.relay = Some(relay.node_addr());
    let b = bind_with(3, b_cfg).await;
    b.mount(HASH, Arc::new(Hasher)).unwrap();
    assert_eq!(c.node_addr().relays.len(), 1, "reserved over TCP");
    assert!(
        relay.connection(&c.node_id()).is_none(),
        "no QUIC connection from c to the relay"
    );
    // Both directions work through the TCP reservation.
    let conn = c.connect(relay_only(&b)).await.unwrap();
    assert_eq!(conn.path(), PathKind::Relayed(relay.node_id()));
    let data = vec![0x5a; 1 << 20];
    let reply = hash_reply(&conn, &data).await;
    assert_eq!(&reply[..32], blake3::hash(&data).as_bytes());
    // The other direction reuses the one connection. (On loopback c's UDP is not really
    // blocked, so b's own probes may find a direct path; c never probes.)
    let back = b.connect(relay_only(&c)).await.unwrap();
    assert_eq!(echo(&*back, b"b->c").await.unwrap(), b"b->c");
    assert_eq!(conn.path(), PathKind::Relayed(relay.node_id()));
}

/// Sends `data` on a new stream of `conn` to the hash handler and returns its reply
/// (BLAKE3 hash, then the length as u64 LE).
async fn hash_reply(conn: &kith_transport::QuicConnection, data: &[u8]) -> Vec<u8> {
    let (mut send, mut recv) = conn.open_bi(&HASH).await.unwrap();
    send.write_all(data).await.unwrap();
    send.finish().unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(T, recv.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    reply
}

/// Sends `len` bytes on a new stream of `conn` to the hash handler; true if the peer's
/// hash and length match.
async fn hashed_transfer(conn: &kith_transport::QuicConnection, len: usize) -> bool {
    let data: Vec<u8> = (0..len as u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    let reply = hash_reply(conn, &data).await;
    reply.len() == 40
        && &reply[..32] == blake3::hash(&data).as_bytes()
        && u64::from_le_bytes(reply[32..40].try_into().unwrap()) == len as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_home_relay_is_reserved_again_after_it_restarts() {
    let net = relay().await;
    let bound = net.relay.local_addrs()[0];
    // Both peers stay on the relay (they never probe within the test).
    let hold = Duration::from_secs(3600);
    let a = peer(2, &net, hold).await;
    let b = peer(3, &net, hold).await;
    let conn = a.connect(relay_only(&b)).await.unwrap();
    assert_eq!(conn.path(), PathKind::Relayed(net.relay.node_id()));
    assert!(hashed_transfer(&conn, 64 << 10).await);
    assert_eq!(net.relay_server.clients(), 2);

    // The relay goes away and comes back on the same address with the same key.
    net.relay.close().await;
    drop(net);
    let server = RelayServer::new(RelayConfig::default());
    let mut cfg = EndpointConfig::loopback();
    cfg.bind_v4 = Some(bound);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let relay2 = loop {
        // The old socket is released once the old endpoint's tasks end.
        match Endpoint::bind(key(1), cfg.clone()).await {
            Ok(ep) => break ep,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("rebinding the relay's address: {e}"),
        }
    };
    relay2
        .mount(
            kith_transport::relay::RELAY_PROTOCOL,
            Arc::new(server.clone()),
        )
        .unwrap();

    // Both peers reserve again by themselves (backoff from 0.5 s).
    tokio::time::timeout(T, async {
        while server.clients() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("both peers reserved again on the restarted relay");
    // The connection made before the restart still works through the new reservations:
    // the same connection, nothing redialed.
    assert!(hashed_transfer(&conn, 256 << 10).await);
    assert!(Arc::ptr_eq(
        &conn,
        &a.connect(relay_only(&b)).await.unwrap()
    ));
    assert_eq!(b.node_addr().relays.len(), 1);
}
