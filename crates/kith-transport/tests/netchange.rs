//! Network changes: a relayed connection that went direct loses its direct path when
//! the "NATs" between the peers are renumbered, and finds the new one long before the
//! old path would have timed out; a transfer across the change arrives intact.
//!
//! The NATs are played on loopback by a [`Wire`]: each peer has a public address (a
//! socket of the wire) and is reached only there; a fake STUN server tells each peer its
//! current public address. The peers bind loopback but do not advertise their bound
//! addresses (`HolePunchConfig::advertise_bound` off) and reach the relay over TCP (so
//! no QUIC hello reveals their real address), so the only direct path between them goes
//! through the wire.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use kith_core::NodeAddr;
use kith_core::net::{BoxRecvStream, BoxSendStream};
use kith_transport::relay::RelayConfig;
use kith_transport::stun::{binding_response, is_stun, transaction_id};
use kith_transport::{Endpoint, EndpointConfig, PathKind, QuicConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

const T: Duration = Duration::from_secs(15);
/// How long a dead direct path lingers without a network change (`paths::PATH_TIMEOUT`).
const PATH_TIMEOUT: Duration = Duration::from_secs(6);

/// Two NAT mappings in one: `a_pub` is where b reaches a, `b_pub` where a reaches b.
/// A packet from a's real socket to `b_pub` reaches b from `a_pub`, and back.
struct Wire {
    a_pub: SocketAddr,
    b_pub: SocketAddr,
    tasks: [JoinHandle<()>; 2],
}

impl Wire {
    async fn open(a_real: SocketAddr, b_real: SocketAddr) -> Wire {
        let a_side = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let b_side = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let forward = |from: Arc<UdpSocket>, out: Arc<UdpSocket>, src, dst| {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok((n, who)) = from.recv_from(&mut buf).await {
                    // Only the peer behind this mapping may use it.
                    if who == src {
                        let _ = out.send_to(&buf[..n], dst).await;
                    }
                }
            })
        };
        Wire {
            a_pub: a_side.local_addr().unwrap(),
            b_pub: b_side.local_addr().unwrap(),
            tasks: [
                forward(b_side.clone(), a_side.clone(), a_real, b_real),
                forward(a_side, b_side, b_real, a_real),
            ],
        }
    }

    /// The NATs lose their state and their addresses: nothing passes any more.
    fn close(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A STUN server that answers each peer with its current public address.
async fn stun_server(answers: Arc<Mutex<Vec<(SocketAddr, SocketAddr)>>>) -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let Some(tx) = transaction_id(&buf[..n]).filter(|_| is_stun(&buf[..n])) else {
                continue;
            };
            let seen = answers
                .lock()
                .unwrap()
                .iter()
                .find(|(real, _)| *real == from)
                .map(|(_, public)| *public);
            if let Some(seen) = seen {
                let _ = sock.send_to(&binding_response(&tx, seen), from).await;
            }
        }
    });
    addr
}

struct Lab {
    a: Endpoint,
    b: Endpoint,
    relay: Endpoint,
    wire: Wire,
    answers: Arc<Mutex<Vec<(SocketAddr, SocketAddr)>>>,
}

fn real(ep: &Endpoint) -> SocketAddr {
    SocketAddr::new([127, 0, 0, 1].into(), ep.local_addrs()[0].port())
}

impl Lab {
    /// Relay, fake STUN server, two peers and the wire; `stun_refresh` for the peers.
    async fn new(stun_refresh: Duration) -> Lab {
        let mut relay_config = RelayConfig::default();
        relay_config.rate_bytes_per_sec = 64 << 20;
        relay_config.burst_bytes = 8 << 20;
        let mut relay_cfg = EndpointConfig::loopback();
        relay_cfg.relay_server = Some(relay_config);
        let relay = bind_with(1, relay_cfg).await;
        let answers = Arc::new(Mutex::new(Vec::new()));
        let stun = stun_server(answers.clone()).await;
        let peer = |seed| {
            let mut cfg = EndpointConfig::loopback();
            cfg.bind_v4 = Some("127.0.0.1:0".parse().unwrap());
            cfg.bind_v6 = None;
            cfg.relay = Some(relay.node_addr());
            cfg.relay_over_tcp_only = true;
            cfg.stun_servers = vec![stun];
            cfg.hole_punch.stun_refresh = stun_refresh;
            cfg.hole_punch.network_poll = None;
            cfg.hole_punch.advertise_bound = false;
            async move {
                let ep = bind_with(seed, cfg).await;
                ep.mount(HASH, Arc::new(Hasher)).unwrap();
                ep
            }
        };
        let a = peer(2).await;
        let b = peer(3).await;
        let wire = Wire::open(real(&a), real(&b)).await;
        let lab = Lab {
            a,
            b,
            relay,
            wire,
            answers,
        };
        lab.publish();
        // The first STUN round ran at bind, before the wire existed: ask again.
        assert_eq!(lab.a.stun(stun).await, Ok(lab.wire.a_pub));
        assert_eq!(lab.b.stun(stun).await, Ok(lab.wire.b_pub));
        lab
    }

    /// Tells the STUN server the wire's current addresses.
    fn publish(&self) {
        *self.answers.lock().unwrap() = vec![
            (real(&self.a), self.wire.a_pub),
            (real(&self.b), self.wire.b_pub),
        ];
    }

    /// Renumbers both NATs: the old mappings die, new ones open on new addresses.
    async fn renumber(&mut self) {
        self.wire.close();
        self.wire = Wire::open(real(&self.a), real(&self.b)).await;
        self.publish();
    }

    fn relay_only(ep: &Endpoint) -> NodeAddr {
        let mut a = ep.node_addr();
        a.direct.clear();
        a
    }

    async fn connect(&self) -> Arc<QuicConnection> {
        let conn = self.a.connect(Self::relay_only(&self.b)).await.unwrap();
        let direct = wait_path(&conn, |p| matches!(p, PathKind::Direct(_))).await;
        assert_eq!(
            direct,
            PathKind::Direct(self.wire.b_pub),
            "direct through the wire"
        );
        conn
    }
}

/// Waits (bounded by `T`) until the connection's path satisfies `f`.
async fn wait_path(conn: &QuicConnection, f: impl Fn(&PathKind) -> bool) -> PathKind {
    let mut events = conn.path_events();
    let got = tokio::time::timeout(T, events.wait_for(|p| f(p)))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "path condition not met within {T:?}; path {:?}",
                conn.path()
            )
        })
        .map(|p| *p);
    got.unwrap()
}

/// A transfer to the peer's hash handler, written in parts around the test's steps.
struct Transfer {
    data: Vec<u8>,
    sent: usize,
    send: BoxSendStream,
    recv: BoxRecvStream,
}

impl Transfer {
    async fn start(conn: &QuicConnection) -> Transfer {
        use kith_core::net::Connection;
        let (send, recv) = conn.open_bi(&HASH).await.unwrap();
        let data = (0..4u32 << 20)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        Transfer {
            data,
            sent: 0,
            send,
            recv,
        }
    }

    /// Writes the next `n` bytes and waits until the stream accepted them.
    async fn write(&mut self, n: usize) {
        let end = (self.sent + n).min(self.data.len());
        tokio::time::timeout(T, async {
            self.send
                .write_all(&self.data[self.sent..end])
                .await
                .unwrap();
            self.send.flush().await.unwrap();
        })
        .await
        .unwrap();
        self.sent = end;
    }

    /// Writes the rest and checks that the peer got every byte, in order.
    async fn finish(mut self) {
        let rest = self.data.len() - self.sent;
        self.write(rest).await;
        self.send.finish().unwrap();
        let mut reply = Vec::new();
        tokio::time::timeout(T, self.recv.read_to_end(&mut reply))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&reply[..32], blake3::hash(&self.data).as_bytes(), "intact");
        assert_eq!(
            u64::from_le_bytes(reply[32..40].try_into().unwrap()),
            self.data.len() as u64
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_changed_falls_back_then_finds_the_new_direct_path() {
    let mut lab = Lab::new(Duration::from_secs(300)).await;
    let conn = lab.connect().await;
    let mut xfer = Transfer::start(&conn).await;
    xfer.write(512 << 10).await;

    // The NATs lose their mappings. Without a network change the dead path would stay
    // in use for PATH_TIMEOUT; with one it falls back to the relay within about 2 s.
    lab.wire.close();
    let t0 = Instant::now();
    lab.a.network_changed();
    lab.b.network_changed();
    let relayed = wait_path(&conn, |p| matches!(p, PathKind::Relayed(_))).await;
    let fallback = t0.elapsed();
    assert_eq!(relayed, PathKind::Relayed(lab.relay.node_id()));
    assert!(fallback < PATH_TIMEOUT, "fell back after {fallback:?}");
    xfer.write(512 << 10).await;

    // New mappings on new addresses; the peers learn them from STUN and re-advertise.
    lab.renumber().await;
    let t1 = Instant::now();
    lab.a.network_changed();
    lab.b.network_changed();
    let direct = wait_path(&conn, |p| matches!(p, PathKind::Direct(_))).await;
    let again = t1.elapsed();
    assert_eq!(direct, PathKind::Direct(lab.wire.b_pub), "the new address");
    assert!(again < PATH_TIMEOUT, "direct again after {again:?}");
    // The peer moved too.
    let back = lab.b.connection(&lab.a.node_id()).unwrap();
    let b_direct = wait_path(&back, |p| matches!(p, PathKind::Direct(_))).await;
    assert_eq!(b_direct, PathKind::Direct(lab.wire.a_pub));
    eprintln!("fallback {fallback:?}, direct again {again:?}");

    // The same connection and stream throughout.
    xfer.finish().await;
    assert!(Arc::ptr_eq(
        &conn,
        &lab.a.connect(Lab::relay_only(&lab.b)).await.unwrap()
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_stun_answer_is_detected_as_a_network_change() {
    // STUN asked every second: the renumbering shows up there, and nobody calls
    // network_changed.
    let mut lab = Lab::new(Duration::from_secs(1)).await;
    let conn = lab.connect().await;
    let mut xfer = Transfer::start(&conn).await;
    xfer.write(512 << 10).await;
    lab.renumber().await;
    let t0 = Instant::now();
    let direct = wait_path(&conn, |p| *p == PathKind::Direct(lab.wire.b_pub)).await;
    let again = t0.elapsed();
    assert_eq!(direct, PathKind::Direct(lab.wire.b_pub));
    assert!(again < PATH_TIMEOUT, "direct again after {again:?}");
    eprintln!("direct again after {again:?} (automatic)");
    xfer.finish().await;
}
