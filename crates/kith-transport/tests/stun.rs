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

/// A STUN server on loopback that records when each request arrives and answers only
/// from request number `answer_from` on (earlier ones are "lost"; `usize::MAX`: never).
async fn lossy(
    answer_from: usize,
) -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<std::time::Instant>,
) {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        for n in 1..=16usize {
            let Ok((len, from)) = sock.recv_from(&mut buf).await else {
                return;
            };
            let _ = tx.send(std::time::Instant::now());
            let Some(t) = transaction_id(&buf[..len]) else {
                continue;
            };
            if n >= answer_from {
                let _ = sock.send_to(&binding_response(&t, from), from).await;
            }
        }
    });
    (addr, rx)
}

/// Requests are retransmitted as RFC 8489 says (RTO 500 ms, doubling): with the first
/// three lost, the fourth (sent 3.5 s in) is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_requests_are_retransmitted_with_doubling_waits() {
    let ep = bind(1).await;
    let local = ep.local_addrs()[0];
    let (server, mut arrivals) = lossy(4).await;
    assert_eq!(ep.stun(server).await, Ok(local));
    let mut at = vec![];
    while let Ok(t) = arrivals.try_recv() {
        at.push(t);
    }
    assert_eq!(at.len(), 4, "one request per transmission until the answer");
    // Waits of 0.5, 1 and 2 s (lower bounds: a loaded machine only makes them longer).
    for (k, min_ms) in [(1, 450), (2, 950), (3, 1950)] {
        let gap = at[k].duration_since(at[k - 1]);
        assert!(gap >= Duration::from_millis(min_ms), "gap {k}: {gap:?}");
    }
}

/// A server that never answers: seven transmissions (Rc), then a typed timeout once
/// the last wait (16 RTO) is over: 39.5 s after the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_times_out_after_the_rfc_schedule() {
    let ep = bind(1).await;
    let (server, mut arrivals) = lossy(usize::MAX).await;
    let start = std::time::Instant::now();
    assert_eq!(ep.stun(server).await, Err(StunError::TimedOut));
    assert!(start.elapsed() >= Duration::from_millis(39_400));
    let mut n = 0;
    while arrivals.try_recv().is_ok() {
        n += 1;
    }
    assert_eq!(n, 7);
}

/// While the NAT kind is unknown the endpoint asks its STUN servers again within
/// seconds, not after the 5-minute refresh: servers whose answers are all lost during
/// the round at bind classify the node soon after they start answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kind_is_asked_again_soon() {
    // Two servers that drop every request for the first 2.5 s (the round at bind gives
    // up after 2 s), then answer.
    let deaf_until = std::time::Instant::now() + Duration::from_millis(2500);
    let mut servers = vec![];
    for _ in 0..2 {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        servers.push(sock.local_addr().unwrap());
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            for _ in 0..64 {
                let Ok((len, from)) = sock.recv_from(&mut buf).await else {
                    return;
                };
                let Some(t) = transaction_id(&buf[..len]) else {
                    continue;
                };
                if std::time::Instant::now() >= deaf_until {
                    let _ = sock.send_to(&binding_response(&t, from), from).await;
                }
            }
        });
    }
    let mut cfg = kith_transport::EndpointConfig::loopback();
    cfg.stun_servers = servers;
    let ep = bind_with(1, cfg).await;
    assert_eq!(ep.nat(), NatKind::Unknown, "every answer at bind was lost");
    // Known well before the refresh (300 s): polled, bounded at 30 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while ep.nat() == NatKind::Unknown && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ep.nat(), NatKind::Public);
}
