//! Shared helpers for the transport tests.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use kith_core::SecretKey;
use kith_core::frame::{FrameError, read_frame};
use kith_core::net::{
    BoxFuture, BoxRecvStream, BoxSendStream, Conn, Protocol, ProtocolHandler, codes,
};
use kith_transport::{Endpoint, EndpointConfig};
use rand::SeedableRng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const ECHO: Protocol = Protocol::from_static("test/echo/1");
pub const FRAMED: Protocol = Protocol::from_static("test/framed/1");
pub const HASH: Protocol = Protocol::from_static("test/hash/1");

pub fn key(seed: u64) -> SecretKey {
    SecretKey::generate(&mut rand::rngs::StdRng::seed_from_u64(seed))
}

/// Copies every stream back to its sender.
#[derive(Debug)]
pub struct Echo;

impl ProtocolHandler for Echo {
    fn accept_bi(
        &self,
        _conn: Conn,
        mut send: BoxSendStream,
        mut recv: BoxRecvStream,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            if tokio::io::copy(&mut recv, &mut send).await.is_ok() {
                let _ = send.finish();
            }
        })
    }
}

/// Reads a whole stream and answers with its BLAKE3 hash and length.
#[derive(Debug)]
pub struct Hasher;

impl ProtocolHandler for Hasher {
    fn accept_bi(
        &self,
        _c: Conn,
        mut send: BoxSendStream,
        mut recv: BoxRecvStream,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let mut h = blake3::Hasher::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut n = 0u64;
            loop {
                match recv.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(k) => {
                        h.update(&buf[..k]);
                        n += k as u64;
                    }
                    Err(_) => return,
                }
            }
            let _ = send.write_all(h.finalize().as_bytes()).await;
            let _ = send.write_all(&n.to_le_bytes()).await;
            let _ = send.finish();
        })
    }
}

/// Reads length-delimited frames capped at `max` and echoes each; resets the stream
/// with PROTOCOL_ERROR on a bad frame.
#[derive(Debug)]
pub struct FramedEcho {
    pub max: usize,
}

impl ProtocolHandler for FramedEcho {
    fn accept_bi(
        &self,
        _conn: Conn,
        mut send: BoxSendStream,
        mut recv: BoxRecvStream,
    ) -> BoxFuture<'static, ()> {
        let max = self.max;
        Box::pin(async move {
            loop {
                match read_frame(&mut recv, max).await {
                    Ok(Some(body)) => {
                        if send.write_all(&body).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => {
                        let _ = send.finish();
                        return;
                    }
                    Err(FrameError::TooLarge { .. }) | Err(_) => {
                        send.reset(codes::PROTOCOL_ERROR);
                        recv.stop(codes::PROTOCOL_ERROR);
                        return;
                    }
                }
            }
        })
    }
}

pub async fn bind(seed: u64) -> Endpoint {
    bind_with(seed, EndpointConfig::loopback()).await
}

pub async fn bind_with(seed: u64, config: EndpointConfig) -> Endpoint {
    let ep = Endpoint::bind(key(seed), config).await.unwrap();
    ep.mount(ECHO, Arc::new(Echo)).unwrap();
    ep
}

/// Sends `msg` on a fresh echo stream and returns the reply.
pub async fn echo(
    conn: &dyn kith_core::net::Connection,
    msg: &[u8],
) -> Result<Vec<u8>, kith_core::net::StreamError> {
    use kith_core::net::StreamError;
    let (mut send, mut recv) = conn.open_bi(&ECHO).await?;
    send.write_all(msg).await.map_err(StreamError::from_io)?;
    send.finish()?;
    let mut out = Vec::new();
    recv.read_to_end(&mut out)
        .await
        .map_err(StreamError::from_io)?;
    Ok(out)
}

/// The two sockets of a one-client UDP forwarder: the client sends to `front`, and
/// `back` talks to the target.
struct Forwarder {
    front: std::sync::Arc<tokio::net::UdpSocket>,
    back: std::sync::Arc<tokio::net::UdpSocket>,
    client: std::sync::Arc<std::sync::Mutex<Option<std::net::SocketAddr>>>,
}

impl Forwarder {
    async fn bind() -> Self {
        let sock = || async {
            std::sync::Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap())
        };
        Self {
            front: sock().await,
            back: sock().await,
            client: Default::default(),
        }
    }

    /// Spawns both directions: each client packet goes to `forward` (with the back
    /// socket), each reply goes back to the client after `reply_delay`. Returns the
    /// address the client sends to. Both stop when the test's runtime shuts down.
    fn spawn(
        self,
        mut forward: impl FnMut(&std::sync::Arc<tokio::net::UdpSocket>, Vec<u8>) + Send + 'static,
        reply_delay: std::time::Duration,
    ) -> std::net::SocketAddr {
        let Self {
            front,
            back,
            client,
        } = self;
        let addr = front.local_addr().unwrap();
        {
            let (front, back, client) = (front.clone(), back.clone(), client.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok((n, from)) = front.recv_from(&mut buf).await {
                    *client.lock().unwrap() = Some(from);
                    forward(&back, buf[..n].to_vec());
                }
            });
        }
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, _)) = back.recv_from(&mut buf).await {
                let Some(to) = *client.lock().unwrap() else {
                    continue;
                };
                if reply_delay.is_zero() {
                    let _ = front.send_to(&buf[..n], to).await;
                    continue;
                }
                let pkt = buf[..n].to_vec();
                let front = front.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(reply_delay).await;
                    let _ = front.send_to(&pkt, to).await;
                });
            }
        });
        addr
    }
}

/// A one-client UDP forwarder that delays every packet by `delay` in each direction.
/// Returns the address to send to instead of `target`. It stops when the test's
/// runtime shuts down.
pub async fn delaying_proxy(
    target: std::net::SocketAddr,
    delay: std::time::Duration,
) -> std::net::SocketAddr {
    let forward = move |back: &std::sync::Arc<tokio::net::UdpSocket>, pkt: Vec<u8>| {
        let back = back.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = back.send_to(&pkt, target).await;
        });
    };
    Forwarder::bind().await.spawn(forward, delay)
}

/// A one-client UDP forwarder that passes the client's packets on to `target` at
/// `bytes_per_sec` (queued, never dropped), and the replies back at once: a link whose
/// bottleneck is the network, not the readers at its end. Returns the address to send
/// to instead of `target`. It stops when the test's runtime shuts down.
pub async fn pacing_proxy(
    target: std::net::SocketAddr,
    bytes_per_sec: u64,
) -> std::net::SocketAddr {
    use tokio::time::{Duration, Instant};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let fwd = Forwarder::bind().await;
    let back = fwd.back.clone();
    tokio::spawn(async move {
        let mut free = Instant::now();
        while let Some(pkt) = rx.recv().await {
            // Timers tick in milliseconds: packets due within the next one go at once,
            // so the rate holds on average over a few milliseconds.
            let now = Instant::now();
            let at = free.max(now);
            if at > now + Duration::from_millis(1) {
                tokio::time::sleep_until(at).await;
            }
            free = at + Duration::from_secs_f64(pkt.len() as f64 / bytes_per_sec as f64);
            let _ = back.send_to(&pkt, target).await;
        }
    });
    let forward = move |_: &std::sync::Arc<tokio::net::UdpSocket>, pkt: Vec<u8>| {
        let _ = tx.send(pkt);
    };
    fwd.spawn(forward, Duration::ZERO)
}
