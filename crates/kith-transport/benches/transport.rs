//! `cargo xtask bench transport`: kith's endpoint against raw quinn configured alike
//! (same TLS 1.3 raw-public-key handshake, same transport parameters), in one run,
//! on loopback.
//!
//! * bulk: bytes over one stream (default 1 GiB; `KITH_BENCH_BULK_MIB`), client → server,
//!   timed until the server confirms it read everything. Rounds alternate kith / quinn.
//! * connect: sequential connection set-ups to one server (default 300 per side,
//!   `KITH_BENCH_CONNECTS`), each closed before the next; full handshakes (0-RTT off on
//!   both) with TLS session resumption as both clients cache sessions alike. A separate
//!   figure reports kith's 0-RTT set-up.
//!
//! Figures: `figure transport.bulk.ratio`, `figure transport.connect.ratio` (kith / quinn
//! median set-up time, dialer with the smaller id), `figure transport.connect.ratio_larger`
//! (dialer with the larger id, which waits for the acceptor's hello), and absolute values.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use kith_core::net::{
    BoxFuture, BoxRecvStream, BoxSendStream, Conn, Connection, Protocol, ProtocolHandler,
};
use kith_core::{NodeAddr, SecretKey};
use kith_transport::{Endpoint, EndpointConfig, raw_quinn_configs, raw_server_name};
use rand::SeedableRng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SINK: Protocol = Protocol::from_static("bench/sink/1");
const CHUNK: usize = 64 * 1024;

struct Sink;

impl ProtocolHandler for Sink {
    fn accept_bi(
        &self,
        _c: Conn,
        mut send: BoxSendStream,
        mut recv: BoxRecvStream,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let n = drain(&mut recv).await;
            let _ = send.write_all(&n.to_le_bytes()).await;
            let _ = send.finish();
        })
    }
}

async fn drain<R: tokio::io::AsyncRead + Unpin + ?Sized>(r: &mut R) -> u64 {
    let mut buf = vec![0u8; CHUNK];
    let mut n = 0u64;
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return n,
            Ok(k) => n += k as u64,
        }
    }
}

fn key(seed: u64) -> SecretKey {
    SecretKey::generate(&mut rand::rngs::StdRng::seed_from_u64(seed))
}

/// Two keys ordered so that the first has the smaller node id.
fn ordered_keys(a: u64, b: u64) -> (SecretKey, SecretKey) {
    let (ka, kb) = (key(a), key(b));
    if ka.node_id() < kb.node_id() {
        (ka, kb)
    } else {
        (kb, ka)
    }
}

fn cfg(zero_rtt: bool) -> EndpointConfig {
    let mut c = EndpointConfig::loopback();
    c.zero_rtt = zero_rtt;
    // The benchmark makes hundreds of handshakes per second on purpose.
    c.limits.handshake_rate = 1e6;
    c.limits.handshake_burst = 1_000_000;
    c
}

async fn kith_bulk(client: &Endpoint, server: &NodeAddr, bytes: u64) -> anyhow::Result<Duration> {
    let conn = client.connect(server.clone()).await?;
    let data = vec![7u8; CHUNK];
    let start = Instant::now();
    let (mut send, mut recv) = conn.open_bi(&SINK).await?;
    let mut left = bytes;
    while left > 0 {
        let k = left.min(CHUNK as u64) as usize;
        send.write_all(&data[..k]).await?;
        left -= k as u64;
    }
    send.finish()?;
    let mut ack = [0u8; 8];
    recv.read_exact(&mut ack).await?;
    let t = start.elapsed();
    anyhow::ensure!(
        u64::from_le_bytes(ack) == bytes,
        "server read a different count"
    );
    Ok(t)
}

struct RawQuinn {
    client: quinn::Endpoint,
    server: quinn::Endpoint,
    client_cfg: quinn::ClientConfig,
    server_name: String,
}

impl RawQuinn {
    fn new(server_key: &SecretKey, client_key: &SecretKey) -> anyhow::Result<Self> {
        let (server_cfg, _) = raw_quinn_configs(server_key, &cfg(false))?;
        let (_, client_cfg) = raw_quinn_configs(client_key, &cfg(false))?;
        let server = quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse()?)?;
        let client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        let s = server.clone();
        tokio::spawn(async move {
            while let Some(inc) = s.accept().await {
                tokio::spawn(async move {
                    let Ok(conn) = inc.await else { return };
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        tokio::spawn(async move {
                            let n = drain(&mut recv).await;
                            let _ = send.write_all(&n.to_le_bytes()).await;
                            let _ = send.finish();
                        });
                    }
                });
            }
        });
        Ok(Self {
            client,
            server,
            client_cfg,
            server_name: raw_server_name(&server_key.node_id()),
        })
    }

    async fn connect(&self) -> anyhow::Result<quinn::Connection> {
        let addr = self.server.local_addr()?;
        Ok(self
            .client
            .connect_with(self.client_cfg.clone(), addr, &self.server_name)?
            .await?)
    }

    async fn bulk(&self, conn: &quinn::Connection, bytes: u64) -> anyhow::Result<Duration> {
        let data = vec![7u8; CHUNK];
        let start = Instant::now();
        let (mut send, mut recv) = conn.open_bi().await?;
        let mut left = bytes;
        while left > 0 {
            let k = left.min(CHUNK as u64) as usize;
            send.write_all(&data[..k]).await?;
            left -= k as u64;
        }
        send.finish()?;
        let mut ack = [0u8; 8];
        recv.read_exact(&mut ack).await?;
        let t = start.elapsed();
        anyhow::ensure!(
            u64::from_le_bytes(ack) == bytes,
            "server read a different count"
        );
        Ok(t)
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

async fn kith_connects(
    client: &Endpoint,
    server: &NodeAddr,
    n: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let conn = client
            .connect(server.clone())
            .await
            .map_err(|e| anyhow::anyhow!("kith connect #{}: {e}", out.len()))?;
        out.push(start.elapsed());
        conn.close(0, b"bench");
    }
    Ok(out)
}

async fn quinn_connects(q: &RawQuinn, n: usize) -> anyhow::Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let conn = q.connect().await?;
        out.push(start.elapsed());
        conn.close(0u32.into(), b"bench");
    }
    Ok(out)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let bulk_mib = env_u64("KITH_BENCH_BULK_MIB", 1024);
    let connects = env_u64("KITH_BENCH_CONNECTS", 300) as usize;
    let rounds = env_u64("KITH_BENCH_ROUNDS", 5) as usize;
    let bytes = bulk_mib << 20;
    let (small, large) = ordered_keys(1, 2);

    // --- bulk ---
    let server = Endpoint::bind(large.clone(), cfg(false)).await?;
    server.mount(SINK, Arc::new(Sink))?;
    let client = Endpoint::bind(small.clone(), cfg(false)).await?;
    let q = RawQuinn::new(&large, &small)?;
    let qconn = q.connect().await?;
    let (mut tk, mut tq) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let k = kith_bulk(&client, &server.node_addr(), bytes).await?;
        let r = q.bulk(&qconn, bytes).await?;
        let mibs = |d: Duration| bulk_mib as f64 / d.as_secs_f64();
        println!(
            "bulk round {round}: kith {:.0} MiB/s, quinn {:.0} MiB/s",
            mibs(k),
            mibs(r)
        );
        tk.push(k);
        tq.push(r);
    }
    let (mk, mq) = (median(tk), median(tq));
    let kith_mibs = bulk_mib as f64 / mk.as_secs_f64();
    let quinn_mibs = bulk_mib as f64 / mq.as_secs_f64();
    println!("figure transport.bulk.kith_mib_s {kith_mibs:.0}");
    println!("figure transport.bulk.quinn_mib_s {quinn_mibs:.0}");
    println!("figure transport.bulk.ratio {:.3}", kith_mibs / quinn_mibs);
    qconn.close(0u32.into(), b"done");
    client.close().await;

    // --- connection set-up ---
    let block = 50.min(connects.max(1));
    let mut ks = Vec::new();
    let mut kl = Vec::new();
    let mut qs = Vec::new();
    let small_client = Endpoint::bind(small.clone(), cfg(false)).await?;
    let (_, larger) = ordered_keys(3, 4);
    let larger_server = Endpoint::bind(key_smaller_than(&larger), cfg(false)).await?;
    let large_client = Endpoint::bind(larger.clone(), cfg(false)).await?;
    // Warm up every path once (first contact: full handshake without a session).
    kith_connects(&small_client, &server.node_addr(), 1).await?;
    kith_connects(&large_client, &larger_server.node_addr(), 1).await?;
    quinn_connects(&q, 1).await?;
    let mut done = 0;
    while done < connects {
        let n = block.min(connects - done);
        ks.extend(
            kith_connects(&small_client, &server.node_addr(), n)
                .await
                .context("smaller dialer")?,
        );
        qs.extend(quinn_connects(&q, n).await.context("quinn")?);
        kl.extend(
            kith_connects(&large_client, &larger_server.node_addr(), n)
                .await
                .context("larger dialer")?,
        );
        done += n;
    }
    let (ks, kl, qs) = (median(ks), median(kl), median(qs));
    println!(
        "figure transport.connect.kith_us {:.0}",
        ks.as_secs_f64() * 1e6
    );
    println!(
        "figure transport.connect.kith_larger_us {:.0}",
        kl.as_secs_f64() * 1e6
    );
    println!(
        "figure transport.connect.quinn_us {:.0}",
        qs.as_secs_f64() * 1e6
    );
    println!(
        "figure transport.connect.ratio {:.3}",
        ks.as_secs_f64() / qs.as_secs_f64()
    );
    println!(
        "figure transport.connect.ratio_larger {:.3}",
        kl.as_secs_f64() / qs.as_secs_f64()
    );

    // --- 0-RTT set-up (kith only; reported for reference) ---
    let zr_client = Endpoint::bind(small.clone(), cfg(true)).await?;
    kith_connects(&zr_client, &server.node_addr(), 1).await?;
    let zr = median(
        kith_connects(&zr_client, &server.node_addr(), connects.min(100))
            .await
            .context("0-rtt")?,
    );
    println!(
        "figure transport.connect.kith_0rtt_us {:.0}",
        zr.as_secs_f64() * 1e6
    );
    Ok(())
}

/// A key whose node id is smaller than `than`'s (so `than` dials as the larger id).
fn key_smaller_than(than: &SecretKey) -> SecretKey {
    (100u64..)
        .map(key)
        .find(|k| k.node_id() < than.node_id())
        .unwrap_or_else(|| key(0))
}
