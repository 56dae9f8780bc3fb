//! The endpoint's STUN client against STUN responders on loopback, and the NAT
//! classification from several observers.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use kith_transport::stun::{NatKind, StunError, binding_response, is_stun, transaction_id};

/// A STUN server on loopback answering Binding requests with the source address it
/// sees, shifted by `port_offset` (a non-zero offset plays an endpoint-dependent NAT).
/// Answers at most `limit` requests, then stops.
async fn responder(port_offset: u16, limit: usize) -> SocketAddr {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        for _ in 0..limit {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                return;
            };
            if !is_stun(&buf[..n]) {
                continue;
            }
            let Some(tx) = transaction_id(&buf[..n]) else {
                continue;
            };
            let mut seen = from;
            seen.set_port(from.port().wrapping_add(port_offset));
            let _ = sock.send_to(&binding_response(&tx, seen), from).await;
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stun_reports_the_socket_address_and_classifies() {
    let ep = bind(1).await;
    let local = ep.local_addrs()[0];
    let s1 = responder(0, 16).await;
    let s2 = responder(0, 16).await;
    assert_eq!(ep.stun(s1).await, Ok(local), "same socket as QUIC");
    assert_eq!(ep.nat_kind(&[s1, s2]).await, NatKind::Public);
    // Observers that see different ports: an endpoint-dependent mapping.
    let d1 = responder(1, 16).await;
    let d2 = responder(2, 16).await;
    assert_eq!(ep.nat_kind(&[d1, d2]).await, NatKind::EndpointDependent);
    assert_eq!(ep.nat_kind(&[d1]).await, NatKind::Unknown);
    // QUIC keeps working on the socket STUN shares.
    let peer = bind(2).await;
    let conn = peer.connect(ep.node_addr()).await.unwrap();
    assert_eq!(echo(&*conn, b"after stun").await.unwrap(), b"after stun");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_times_out() {
    let ep = bind(1).await;
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let start = std::time::Instant::now();
    assert_eq!(
        ep.stun(silent.local_addr().unwrap()).await,
        Err(StunError::TimedOut)
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "bounded: three tries"
    );
}
