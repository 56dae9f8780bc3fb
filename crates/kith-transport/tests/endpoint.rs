//! End-to-end tests of the QUIC endpoint on loopback.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use kith_core::NodeAddr;
use kith_core::net::{
    BoxFuture, BoxRecvStream, BoxSendStream, Conn, ConnectError, Connection, ConnectionError,
    DatagramError, Protocol, ProtocolHandler, StreamError, codes,
};
use kith_transport::{Endpoint, EndpointConfig, ZeroRtt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_round_trip_by_node_id() {
    let a = bind(1).await;
    let b = bind(2).await;
    let conn = a.connect(b.node_addr()).await.unwrap();
    assert_eq!(conn.remote_id(), b.node_id());
    assert_eq!(echo(&*conn, b"ping").await.unwrap(), b"ping");
    // The acceptor sees the dialer's authenticated id.
    let back = b
        .connection(&a.node_id())
        .expect("acceptor registered the connection");
    assert_eq!(back.remote_id(), a.node_id());
    // The hello reported the address b observes for a.
    let observed = tokio::time::timeout(TIMEOUT, conn.wait_observed_addr())
        .await
        .unwrap();
    assert_eq!(observed, a.local_addrs().first().copied());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialing_the_wrong_key_fails_authentication() {
    let a = bind(1).await;
    let b = bind(2).await;
    let impostor = key(3).node_id();
    let wrong = NodeAddr::new(impostor).with_direct(b.local_addrs());
    let err = a.connect(wrong).await.unwrap_err();
    assert_eq!(err, ConnectError::Authentication { expected: impostor });
    // b keeps serving.
    let conn = a.connect(b.node_addr()).await.unwrap();
    assert_eq!(echo(&*conn, b"ok").await.unwrap(), b"ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_version_mismatch_is_typed() {
    let a = bind(1).await;
    let b = Endpoint::bind_with_alpn(key(2), EndpointConfig::loopback(), b"kith/999")
        .await
        .unwrap();
    let err = a.connect(b.node_addr()).await.unwrap_err();
    assert_eq!(err, ConnectError::ProtocolMismatch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmounted_protocol_is_refused_with_typed_error() {
    let a = bind(1).await;
    let b = bind(2).await;
    let conn = a.connect(b.node_addr()).await.unwrap();
    let nope = Protocol::from_static("test/nope/1");
    let (mut send, mut recv) = conn.open_bi(&nope).await.unwrap();
    let _ = send.write_all(b"x").await;
    let mut buf = Vec::new();
    let err = recv.read_to_end(&mut buf).await.unwrap_err();
    assert_eq!(StreamError::from_io(err), StreamError::UnsupportedProtocol);
    // The connection is still fine for mounted protocols.
    assert_eq!(echo(&*conn, b"still here").await.unwrap(), b"still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_dial_leaves_one_connection() {
    // Each side reaches the other through a proxy adding 50 ms each way, so both
    // handshakes are certainly in flight at once, whatever the scheduler does.
    let delay = Duration::from_millis(50);
    for round in 0..6u64 {
        let a = bind(100 + 2 * round).await;
        let b = bind(101 + 2 * round).await;
        let to_b = delaying_proxy(b.local_addrs()[0], delay).await;
        let to_a = delaying_proxy(a.local_addrs()[0], delay).await;
        let (ra, rb) = tokio::join!(
            a.connect(NodeAddr::new(b.node_id()).with_direct([to_b])),
            b.connect(NodeAddr::new(a.node_id()).with_direct([to_a]))
        );
        let (ca, cb) = (ra.unwrap(), rb.unwrap());
        // Both sides hold the same connection: one dialed it, the other accepted it,
        // and it is the one dialed by the smaller node id.
        assert_ne!(ca.is_outgoing(), cb.is_outgoing(), "round {round}");
        assert_eq!(ca.is_outgoing(), a.node_id() < b.node_id(), "round {round}");
        assert_eq!(echo(&*ca, b"a->b").await.unwrap(), b"a->b");
        assert_eq!(echo(&*cb, b"b->a").await.unwrap(), b"b->a");
        assert!(!ca.is_closed() && !cb.is_closed());
        assert_eq!(a.connections().len(), 1);
        assert_eq!(b.connections().len(), 1);
        // A later dial reuses it.
        let again = a.connect(b.node_addr()).await.unwrap();
        assert!(Arc::ptr_eq(&again, &ca));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_dials_from_one_side_share_a_connection() {
    let a = bind(1).await;
    let b = bind(2).await;
    let dials = (0..10).map(|_| a.connect(b.node_addr()));
    let conns = futures_util::future::join_all(dials).await;
    let first = conns[0].as_ref().unwrap().clone();
    for c in conns {
        assert!(Arc::ptr_eq(&c.unwrap(), &first));
    }
    assert_eq!(b.connections().len(), 1);
}

struct DatagramSink(tokio::sync::mpsc::UnboundedSender<Vec<u8>>);

impl ProtocolHandler for DatagramSink {
    fn datagram(&self, _conn: &Conn, payload: bytes::Bytes) {
        let _ = self.0.send(payload.to_vec());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_flow_and_oversize_is_refused() {
    let game = Protocol::from_static("test/game/1");
    let a = bind(1).await;
    let b = bind(2).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    b.mount(game.clone(), Arc::new(DatagramSink(tx))).unwrap();
    let conn = a.connect(b.node_addr()).await.unwrap();
    let max = conn.max_datagram_payload(&game).unwrap();
    assert!(
        max >= 1000,
        "loopback carries at least ~1 KiB datagrams, got {max}"
    );
    // A datagram of the limit goes out. The limit only grows while path MTU discovery
    // runs, so `max + 1` may fit a moment later: the oversize one is larger than any
    // UDP datagram, and its error names the limit of that moment.
    conn.send_datagram(&game, &vec![0u8; max]).unwrap();
    match conn.send_datagram(&game, &vec![0u8; 65_536]) {
        Err(DatagramError::TooLarge { size, max: limit }) => {
            assert!(
                size > 65_536 && size > limit && limit > max,
                "{size} {limit}"
            );
        }
        other => panic!("an oversize datagram must be refused: {other:?}"),
    }
    for i in 0..20u8 {
        conn.send_datagram(&game, &[i; 32]).unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 20 {
        let d = tokio::time::timeout(TIMEOUT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        // The datagram of the limit may arrive among them.
        if d.len() == 32 {
            got.push(d[0]);
        }
    }
    got.sort();
    assert_eq!(got, (0..20).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_connection_to_known_peer_uses_0rtt() {
    let a = bind(1).await;
    let b = bind(2).await;
    let first = a.connect(b.node_addr()).await.unwrap();
    assert_eq!(echo(&*first, b"one").await.unwrap(), b"one");
    assert_eq!(first.zero_rtt_outcome().await, ZeroRtt::NotAttempted);
    first.close(codes::CLOSE_NORMAL, b"bye");
    first.closed().await;
    // Wait for b to see the close, so the next dial is a new connection on both sides.
    let on_b = b.connection(&a.node_id());
    if let Some(c) = on_b {
        tokio::time::timeout(TIMEOUT, c.closed()).await.unwrap();
    }
    let second = a.connect(b.node_addr()).await.unwrap();
    assert!(!Arc::ptr_eq(&first, &second));
    assert_eq!(echo(&*second, b"two").await.unwrap(), b"two");
    assert_eq!(second.zero_rtt_outcome().await, ZeroRtt::Accepted);
    assert_eq!(second.stats().zero_rtt, ZeroRtt::Accepted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_refuses_with_typed_error() {
    let mut cfg = EndpointConfig::loopback();
    cfg.limits.max_connections = 1;
    let server = bind_with(1, cfg).await;
    let c1 = bind(2).await;
    let c2 = bind(3).await;
    let conn = c1.connect(server.node_addr()).await.unwrap();
    assert_eq!(echo(&*conn, b"1").await.unwrap(), b"1");
    let err = c2.connect(server.node_addr()).await.unwrap_err();
    assert!(matches!(err, ConnectError::Refused(_)), "{err:?}");
    // Outgoing dials count against the local limit too.
    let mut cfg = EndpointConfig::loopback();
    cfg.limits.max_connections = 0;
    let tiny = bind_with(4, cfg).await;
    assert_eq!(
        tiny.connect(server.node_addr()).await.unwrap_err(),
        ConnectError::LimitReached("max_connections")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_rate_limit_refuses_with_typed_error() {
    let mut cfg = EndpointConfig::loopback();
    cfg.limits.handshake_rate = 1e-6;
    cfg.limits.handshake_burst = 1;
    let server = bind_with(1, cfg).await;
    let c1 = bind(2).await;
    let c2 = bind(3).await;
    c1.connect(server.node_addr()).await.unwrap();
    let err = c2.connect(server.node_addr()).await.unwrap_err();
    assert!(matches!(err, ConnectError::Refused(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_limit_gives_typed_error() {
    let mut scfg = EndpointConfig::loopback();
    scfg.limits.max_bi_streams = 2;
    let server = bind_with(1, scfg).await;
    let mut ccfg = EndpointConfig::loopback();
    ccfg.limits.stream_open_timeout = Duration::from_millis(300);
    let client = bind_with(2, ccfg).await;
    let conn = client.connect(server.node_addr()).await.unwrap();
    let _s1 = conn.open_bi(&ECHO).await.unwrap();
    let _s2 = conn.open_bi(&ECHO).await.unwrap();
    let err = conn.open_bi(&ECHO).await.unwrap_err();
    assert_eq!(err, StreamError::StreamLimit(Duration::from_millis(300)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_resets_stream_and_connection_survives() {
    let server = bind(1).await;
    server
        .mount(FRAMED, Arc::new(FramedEcho { max: 1024 }))
        .unwrap();
    let client = bind(2).await;
    let conn = client.connect(server.node_addr()).await.unwrap();
    let (mut send, mut recv) = conn.open_bi(&FRAMED).await.unwrap();
    // A frame announcing 1 MiB: rejected from its length prefix alone.
    let _ = send.write_all(&[0x80, 0x80, 0x40]).await;
    let mut buf = Vec::new();
    let err = recv.read_to_end(&mut buf).await.unwrap_err();
    assert_eq!(
        StreamError::from_io(err),
        StreamError::Reset(codes::PROTOCOL_ERROR)
    );
    assert_eq!(echo(&*conn, b"fine").await.unwrap(), b"fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_streams_are_dropped_and_others_served() {
    let mut cfg = EndpointConfig::loopback();
    cfg.limits.stream_header_timeout = Duration::from_millis(200);
    let server = bind_with(1, cfg).await;
    let lazy = bind(2).await;
    let good = bind(3).await;
    let lconn = lazy.connect(server.node_addr()).await.unwrap();
    // Raw streams that announce a 10-byte protocol name and then never send it.
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(lconn.open_bi_raw_header(&[10]).await.unwrap());
    }
    let gconn = good.connect(server.node_addr()).await.unwrap();
    assert_eq!(echo(&*gconn, b"served").await.unwrap(), b"served");
    for (_s, mut r) in held {
        let mut buf = Vec::new();
        let err = tokio::time::timeout(TIMEOUT, r.read_to_end(&mut buf))
            .await
            .unwrap();
        assert!(err.is_err(), "silent stream must be refused");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_datagrams_are_ignored() {
    use rand::{Rng, SeedableRng};
    let server = bind(1).await;
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let target = server.local_addrs()[0];
    for i in 0..500 {
        let len = rng.gen_range(1..1500);
        let mut pkt: Vec<u8> = (0..len).map(|_| rng.r#gen()).collect();
        if i % 3 == 0 {
            pkt[0] = 0xc0; // looks like a QUIC long header
        }
        sock.send_to(&pkt, target).unwrap();
    }
    let client = bind(2).await;
    let conn = client.connect(server.node_addr()).await.unwrap();
    assert_eq!(
        echo(&*conn, b"after garbage").await.unwrap(),
        b"after garbage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_and_keep_alive_prevents_it() {
    let mut idle = EndpointConfig::loopback();
    idle.idle_timeout = Duration::from_millis(300);
    idle.keep_alive = None;
    let a = bind_with(1, idle.clone()).await;
    let b = bind_with(2, idle.clone()).await;
    let conn = a.connect(b.node_addr()).await.unwrap();
    let reason = tokio::time::timeout(TIMEOUT, conn.closed()).await.unwrap();
    assert_eq!(reason, ConnectionError::TimedOut);

    let mut alive = idle;
    alive.keep_alive = Some(Duration::from_millis(50));
    let c = bind_with(3, alive.clone()).await;
    let d = bind_with(4, alive).await;
    let conn = c.connect(d.node_addr()).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(1200), conn.closed())
            .await
            .is_err(),
        "keep-alive must hold the connection open past the idle timeout"
    );
    assert_eq!(echo(&*conn, b"alive").await.unwrap(), b"alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_close_tells_peers() {
    let a = bind(1).await;
    let b = bind(2).await;
    let conn = a.connect(b.node_addr()).await.unwrap();
    assert_eq!(echo(&*conn, b"x").await.unwrap(), b"x");
    b.close().await;
    let reason = tokio::time::timeout(TIMEOUT, conn.closed()).await.unwrap();
    assert!(
        matches!(
            reason,
            ConnectionError::ClosedByPeer {
                code: codes::CLOSE_SHUTDOWN,
                ..
            }
        ),
        "{reason:?}"
    );
    assert_eq!(
        b.connect(a.node_addr()).await.unwrap_err(),
        ConnectError::EndpointClosed
    );
}

/// A handler that answers on uni streams, to check the uni path and handler conn ids.
struct UniCollector(tokio::sync::mpsc::UnboundedSender<(kith_core::NodeId, Vec<u8>)>);

impl ProtocolHandler for UniCollector {
    fn accept_uni(&self, conn: Conn, mut recv: BoxRecvStream) -> BoxFuture<'static, ()> {
        let tx = self.0.clone();
        Box::pin(async move {
            let mut buf = Vec::new();
            if recv.read_to_end(&mut buf).await.is_ok() {
                let _ = tx.send((conn.remote_id(), buf));
            }
        })
    }

    fn accept_bi(
        &self,
        _c: Conn,
        mut s: BoxSendStream,
        mut r: BoxRecvStream,
    ) -> BoxFuture<'static, ()> {
        s.reset(1);
        kith_core::net::RecvStream::stop(&mut *r, 1);
        Box::pin(async {})
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uni_streams_carry_sender_identity() {
    let p = Protocol::from_static("test/uni/1");
    let a = bind(1).await;
    let b = bind(2).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    b.mount(p.clone(), Arc::new(UniCollector(tx))).unwrap();
    let conn = a.connect(b.node_addr()).await.unwrap();
    let mut s = conn.open_uni(&p).await.unwrap();
    s.write_all(b"uni").await.unwrap();
    s.finish().unwrap();
    let (from, data) = tokio::time::timeout(TIMEOUT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(from, a.node_id());
    assert_eq!(data, b"uni");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_and_dual_stack() {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
    // This test needs IPv6 on loopback: it says so plainly where there is none.
    if let Err(e) = std::net::UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)) {
        assert!(
            std::env::var_os("KITH_NO_IPV6").is_some(),
            "no IPv6 loopback here ({e}): set KITH_NO_IPV6=1 to skip this test"
        );
        println!("SKIPPED ipv6_and_dual_stack: no IPv6 loopback ({e}), KITH_NO_IPV6 set");
        return;
    }
    // IPv6 only, on ::1.
    let mut v6 = EndpointConfig::loopback();
    v6.bind_v4 = None;
    v6.bind_v6 = Some(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 0));
    let a = bind_with(1, v6.clone()).await;
    let b = bind_with(2, v6).await;
    assert!(b.node_addr().direct.iter().all(|s| s.is_ipv6()));
    let conn = a.connect(b.node_addr()).await.unwrap();
    assert_eq!(echo(&*conn, b"v6").await.unwrap(), b"v6");
    // Both families bound (on loopback: tests send nothing elsewhere); a dial over the
    // IPv6 address alone works, and node_addr() lists one address per family.
    let mut dual = EndpointConfig::loopback();
    dual.bind_v4 = Some(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0));
    dual.bind_v6 = Some(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 0));
    let c = bind_with(3, dual.clone()).await;
    let d = bind_with(4, dual).await;
    let families: Vec<bool> = d.node_addr().direct.iter().map(|s| s.is_ipv6()).collect();
    assert_eq!(families, vec![false, true]);
    let only_v6 = NodeAddr::new(d.node_id())
        .with_direct(d.node_addr().direct.into_iter().filter(|s| s.is_ipv6()));
    let conn = c.connect(only_v6).await.unwrap();
    assert!(conn.remote_addr().unwrap().is_ipv6());
    assert_eq!(echo(&*conn, b"dual").await.unwrap(), b"dual");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_dials_leave_no_state_and_fall_through_addresses() {
    let mut cfg = EndpointConfig::loopback();
    cfg.handshake_timeout = Duration::from_millis(300);
    let a = bind_with(1, cfg).await;
    // A UDP port with nobody behind it.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    for seed in 10..15 {
        let addr = NodeAddr::new(key(seed).node_id()).with_direct([dead]);
        assert_eq!(a.connect(addr).await.unwrap_err(), ConnectError::TimedOut);
    }
    assert_eq!(a.tracked_peers(), 0);
    assert_eq!(
        a.connect(NodeAddr::new(key(9).node_id()))
            .await
            .unwrap_err(),
        ConnectError::NoAddress(key(9).node_id())
    );
    assert_eq!(a.tracked_peers(), 0);
    // With a dead address first and a live one second, the dial still succeeds.
    let b = bind(2).await;
    let mut addr = b.node_addr();
    addr.direct.insert(0, dead);
    // Each address gets a share of the deadline, so the live second one is reached.
    let conn = a.connect(addr).await.unwrap();
    assert_eq!(echo(&*conn, b"second").await.unwrap(), b"second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_written_and_read_whole_arrive_in_order_then_the_end() {
    let a = bind(1).await;
    let b = bind(2).await;
    let conn = a.connect(b.node_addr()).await.unwrap();
    // 3 MiB of seeded bytes (more than the stream's initial window), written in pieces
    // of uneven sizes, echoed back and read as the transport holds them.
    let mut rng_state = 0x9e37_79b9_7f4a_7c15u64;
    let want: Vec<u8> = (0..3 << 20)
        .map(|_| {
            rng_state ^= rng_state << 13;
            rng_state ^= rng_state >> 7;
            rng_state ^= rng_state << 17;
            rng_state as u8
        })
        .collect();
    let (mut send, mut recv) = conn.open_bi(&ECHO).await.unwrap();
    let body = bytes::Bytes::from(want.clone());
    let writer = tokio::spawn(async move {
        let mut at = 0;
        let mut step = 1;
        while at < body.len() {
            let end = (at + step * 4099).min(body.len());
            send.write_all(&body[at..end]).await?;
            at = end;
            step = step % 37 + 1;
        }
        send.finish().map_err(StreamError::into_io)
    });
    let mut got = Vec::with_capacity(want.len());
    let mut bufs: [bytes::Bytes; 8] = Default::default();
    tokio::time::timeout(TIMEOUT, async {
        while let Some(n) = recv.read_chunks(&mut bufs).await.unwrap() {
            assert!(n > 0 && n <= bufs.len());
            for b in &bufs[..n] {
                got.extend_from_slice(b);
            }
        }
    })
    .await
    .expect("the echo ends");
    writer.await.unwrap().unwrap();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "bytes differ");
}

/// Hands each accepted uni stream to the test, unread.
struct UniStreams(tokio::sync::mpsc::UnboundedSender<BoxRecvStream>);

impl ProtocolHandler for UniStreams {
    fn accept_uni(&self, _conn: Conn, recv: BoxRecvStream) -> BoxFuture<'static, ()> {
        let _ = self.0.send(recv);
        Box::pin(async {})
    }
}

/// Reads a stream to its end; returns how many bytes that was.
async fn drain(mut recv: BoxRecvStream) -> usize {
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0;
    loop {
        match recv.read(&mut buf).await.unwrap() {
            0 => return n,
            k => n += k,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_higher_priority_stream_goes_first() {
    let p = Protocol::from_static("test/priority/1");
    // The link carries 16 MB/s, so the readers keep up with it and the sender's
    // choice of what to send next decides what arrives first. The low-priority stream
    // starts first and is shorter: sharing the link fairly, it would end first.
    const LOW: usize = 3 << 20;
    const HIGH: usize = 4 << 20;
    let a = bind(1).await;
    let b = bind(2).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    b.mount(p.clone(), Arc::new(UniStreams(tx))).unwrap();
    let to_b = pacing_proxy(b.local_addrs()[0], 16_000_000).await;
    let conn = a
        .connect(NodeAddr::new(b.node_id()).with_direct([to_b]))
        .await
        .unwrap();
    let send = |mut s: BoxSendStream, len: usize| {
        tokio::spawn(async move {
            s.write_all(&vec![7u8; len]).await?;
            s.finish().map_err(StreamError::into_io)
        })
    };
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let read = |name: &'static str, recv: BoxRecvStream| {
        let done_tx = done_tx.clone();
        tokio::spawn(async move {
            let n = drain(recv).await;
            let _ = done_tx.send((name, n));
        });
    };
    tokio::time::timeout(TIMEOUT, async {
        let mut low = conn.open_uni(&p).await.unwrap();
        low.set_priority(-1);
        let low_writer = send(low, LOW);
        read("low", rx.recv().await.expect("the low stream arrives"));
        // The default-priority stream starts once the other's bytes are arriving.
        let high_writer = send(conn.open_uni(&p).await.unwrap(), HIGH);
        read("high", rx.recv().await.expect("the high stream arrives"));
        let first = done_rx.recv().await.unwrap();
        let second = done_rx.recv().await.unwrap();
        low_writer.await.unwrap().unwrap();
        high_writer.await.unwrap().unwrap();
        // Every byte of both arrives, and the higher-priority stream ends first: from
        // the moment it had bytes to send, they went before the rest of the other's.
        let mut lens = [first, second];
        lens.sort();
        assert_eq!(lens, [("high", HIGH), ("low", LOW)]);
        assert_eq!((first.0, second.0), ("high", "low"));
    })
    .await
    .expect("both streams end");
}
