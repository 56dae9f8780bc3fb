//! Issue 14, "trust nothing a peer says": a peer that lies in its hello about the
//! address it observes for us, over and over and with a new address each time, changes
//! neither our NAT kind nor the candidates we advertise, and triggers no network change.
//!
//! The victim learns its address from two STUN responders on loopback (trusted: it
//! configured them), which both report the same documentation address, so it classifies
//! its NAT as endpoint-independent. The liars are raw quinn endpoints with kith's TLS
//! configuration: one dials the victim (an inbound connection), one is dialed by it (an
//! outbound connection, whose hello the victim waits for).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use kith_core::NodeAddr;
use kith_core::net::Protocol;
use kith_transport::stun::{NatKind, binding_response, is_stun, transaction_id};
use kith_transport::{Endpoint, EndpointConfig, raw_quinn_configs, raw_server_name};

const T: Duration = Duration::from_secs(10);
const CTL: Protocol = Protocol::from_static("kith/ctl/1");
/// What the STUN responders say the victim's public address is.
const PUBLIC: &str = "203.0.113.16:40000";

/// A STUN server on loopback that answers every Binding request with `PUBLIC`.
async fn stun_server() -> SocketAddr {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let public: SocketAddr = PUBLIC.parse().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            if !is_stun(&buf[..n]) {
                continue;
            }
            let Some(tx) = transaction_id(&buf[..n]) else {
                continue;
            };
            let _ = sock.send_to(&binding_response(&tx, public), from).await;
        }
    });
    addr
}

/// The lie number `i`: a different address (and network) every time.
fn lie(i: u16) -> SocketAddr {
    SocketAddr::new(
        [198, 51, (i % 200) as u8, 1 + (i % 250) as u8].into(),
        1000 + i,
    )
}

/// Sends one hello naming `victim` and claiming it is seen at `seen`.
async fn send_hello(conn: &quinn::Connection, victim: &NodeAddr, seen: SocketAddr) {
    let mut s = conn.open_uni().await.unwrap();
    s.write_all(&CTL.header()).await.unwrap();
    let msg = NodeAddr::new(victim.node_id).with_direct([seen]).encode();
    s.write_all(&msg).await.unwrap();
    s.finish().unwrap();
}

/// Waits (bounded) until the victim processed the hello claiming `seen`.
async fn processed(victim: &Endpoint, liar: &kith_core::NodeId, seen: SocketAddr) {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let got = victim.connection(liar).and_then(|c| c.observed_addr());
        if got == Some(seen) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the victim never processed the hello claiming {seen} (it has {got:?})"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// What must not change.
fn snapshot(victim: &Endpoint) -> (NatKind, Vec<SocketAddr>, u64) {
    (
        victim.nat(),
        victim.node_addr().direct,
        victim.network_changes(),
    )
}

fn victim_config(stun: Vec<SocketAddr>) -> EndpointConfig {
    let mut cfg = EndpointConfig::loopback();
    cfg.stun_servers = stun;
    // Only the liars may cause a change here.
    cfg.hole_punch.network_poll = None;
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_lying_in_its_hello_changes_nothing() {
    let stun = vec![stun_server().await, stun_server().await];
    let victim = bind_with(1, victim_config(stun)).await;
    let before = snapshot(&victim);
    assert_eq!(
        before.0,
        NatKind::EndpointIndependent,
        "the STUN servers agree"
    );
    assert!(
        before.1.contains(&PUBLIC.parse().unwrap()),
        "{:?}",
        before.1
    );
    assert_eq!(before.2, 0);
    let vaddr = victim.node_addr();

    // An inbound liar: it dials the victim and sends hello after hello.
    let inbound_key = key(2);
    let (_, client_cfg) = raw_quinn_configs(&inbound_key, &EndpointConfig::loopback()).unwrap();
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    client.set_default_client_config(client_cfg);
    let to = vaddr.direct[0];
    let inbound = tokio::time::timeout(
        T,
        client
            .connect(to, &raw_server_name(&vaddr.node_id))
            .unwrap(),
    )
    .await
    .unwrap()
    .unwrap();

    // An outbound liar: the victim dials it; its hello lies from the first one on.
    let outbound_key = key(3);
    let (server_cfg, _) = raw_quinn_configs(&outbound_key, &EndpointConfig::loopback()).unwrap();
    let server = quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse().unwrap()).unwrap();
    let server_addr = server.local_addr().unwrap();
    let (conn_tx, conn_rx) = tokio::sync::oneshot::channel();
    let (v2, first) = (vaddr.clone(), lie(1000));
    tokio::spawn(async move {
        let conn = server.accept().await.unwrap().await.unwrap();
        send_hello(&conn, &v2, first).await;
        let _ = conn_tx.send((server, conn));
    });
    let dialed = tokio::time::timeout(
        T,
        victim.connect(NodeAddr::new(outbound_key.node_id()).with_direct([server_addr])),
    )
    .await
    .unwrap()
    .unwrap();
    let (_server, outbound) = conn_rx.await.unwrap();
    processed(&victim, &outbound_key.node_id(), first).await;
    assert_eq!(
        snapshot(&victim),
        before,
        "after the outbound liar's first hello"
    );

    // Over and over, a new address every time, from both liars.
    for i in 0..40u16 {
        let seen = lie(i);
        send_hello(&inbound, &vaddr, seen).await;
        processed(&victim, &inbound_key.node_id(), seen).await;
        assert_eq!(snapshot(&victim), before, "after lie {i} ({seen}), inbound");
        let seen = lie(500 + i);
        send_hello(&outbound, &vaddr, seen).await;
        processed(&victim, &outbound_key.node_id(), seen).await;
        assert_eq!(
            snapshot(&victim),
            before,
            "after lie {i} ({seen}), outbound"
        );
    }
    // The connections themselves stay up: lying costs the liar nothing but its lies.
    assert!(!dialed.is_closed());
    assert!(victim.connection(&inbound_key.node_id()).is_some());
    tokio::time::timeout(T, victim.close()).await.unwrap();
}
