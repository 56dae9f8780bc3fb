//! A game-style session: nodes send position updates as unreliable datagrams at 60 Hz
//! and report loss and latency.
//!
//! Run: `cargo run --release -p kith --example game -- [NODES] [SECONDS]` (default 3 nodes,
//! 3 s). Every node sends one datagram per tick to every other node; each datagram holds
//! a sequence number and the send time, so receivers compute loss and one-way latency
//! (all nodes share one clock: they run in one process).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kith::{Conn, Connection, Node, NodeId, Protocol, ProtocolHandler};

/// The protocol name of the game's datagrams.
pub(crate) const GAME: Protocol = Protocol::from_static("kith-example/game/1");

/// What one receiver saw from one sender.
#[derive(Debug, Default, Clone)]
pub(crate) struct Seen {
    /// Datagrams received.
    pub(crate) received: u64,
    /// One-way latencies in microseconds.
    pub(crate) latencies_us: Vec<u64>,
}

/// Records every position update it receives.
#[derive(Debug)]
pub(crate) struct Receiver {
    start: Instant,
    seen: Mutex<HashMap<NodeId, Seen>>,
}

impl ProtocolHandler for Receiver {
    fn datagram(&self, conn: &Conn, payload: Bytes) {
        // seq u32 | sent_us u64 | x f32 | y f32
        if payload.len() != 20 {
            return;
        }
        let mut sent = [0u8; 8];
        sent.copy_from_slice(&payload[4..12]);
        let now_us = self.start.elapsed().as_micros() as u64;
        let lat = now_us.saturating_sub(u64::from_le_bytes(sent));
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let s = seen.entry(conn.remote_id()).or_default();
        s.received += 1;
        s.latencies_us.push(lat);
    }
}

/// Summary of a session.
#[derive(Debug)]
pub(crate) struct Report {
    /// Datagrams sent in total.
    pub(crate) sent: u64,
    /// Datagrams received in total.
    pub(crate) received: u64,
    /// Median one-way latency.
    pub p50: Duration,
    /// 99th percentile one-way latency.
    pub p99: Duration,
}

/// Runs `n` nodes for `secs` seconds at 60 Hz.
pub(crate) async fn run(n: usize, secs: u64) -> anyhow::Result<Report> {
    let start = Instant::now();
    let mut nodes = Vec::new();
    let mut receivers = Vec::new();
    for _ in 0..n {
        let rx = Arc::new(Receiver {
            start,
            seen: Mutex::new(HashMap::new()),
        });
        nodes.push(
            Node::builder()
                .loopback()
                .protocol(GAME, rx.clone())
                .spawn()
                .await?,
        );
        receivers.push(rx);
    }
    // Everyone connects to everyone (one connection per pair, whoever dials first).
    let mut links: Vec<Vec<Arc<kith::QuicConnection>>> = Vec::new();
    for a in &nodes {
        let mut l = Vec::new();
        for b in &nodes {
            if a.id() != b.id() {
                l.push(a.connect(b.addr()).await?);
            }
        }
        links.push(l);
    }
    let ticks = secs * 60;
    let mut interval = tokio::time::interval(Duration::from_micros(16_667));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0u64;
    for seq in 0..ticks as u32 {
        interval.tick().await;
        let t = start.elapsed().as_micros() as u64;
        for (i, conns) in links.iter().enumerate() {
            let angle = seq as f32 / 60.0 + i as f32;
            let mut pkt = Vec::with_capacity(20);
            pkt.extend_from_slice(&seq.to_le_bytes());
            pkt.extend_from_slice(&t.to_le_bytes());
            pkt.extend_from_slice(&angle.cos().to_le_bytes());
            pkt.extend_from_slice(&angle.sin().to_le_bytes());
            for c in conns {
                c.send_datagram(&GAME, &pkt)?;
                sent += 1;
            }
        }
    }
    // Let the last tick's datagrams land: wait up to 500 ms for the count to settle.
    let total = |rs: &[Arc<Receiver>]| -> u64 {
        rs.iter()
            .map(|r| {
                r.seen
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .map(|s| s.received)
                    .sum::<u64>()
            })
            .sum()
    };
    let deadline = Instant::now() + Duration::from_millis(500);
    while total(&receivers) < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut lats: Vec<u64> = Vec::new();
    for (i, r) in receivers.iter().enumerate() {
        let seen = r.seen.lock().unwrap_or_else(|e| e.into_inner());
        for (from, s) in seen.iter() {
            println!(
                "{} <- {}: {}/{} datagrams",
                nodes[i].id().fmt_short(),
                from.fmt_short(),
                s.received,
                ticks
            );
            lats.extend_from_slice(&s.latencies_us);
        }
    }
    lats.sort_unstable();
    let pct = |p: f64| {
        Duration::from_micros(
            lats.get(((lats.len() as f64 - 1.0) * p) as usize)
                .copied()
                .unwrap_or(0),
        )
    };
    let report = Report {
        sent,
        received: total(&receivers),
        p50: pct(0.5),
        p99: pct(0.99),
    };
    for node in &nodes {
        node.close().await;
    }
    Ok(report)
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3usize)
        .max(2);
    let secs = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3u64)
        .max(1);
    let r = run(n, secs).await?;
    let loss = 1.0 - r.received as f64 / r.sent.max(1) as f64;
    println!(
        "game: {} nodes x {} s at 60 Hz: sent {}, received {}, loss {:.2} %, latency p50 {:.2?}, p99 {:.2?}",
        n,
        secs,
        r.sent,
        r.received,
        loss * 100.0,
        r.p50,
        r.p99
    );
    Ok(())
}
