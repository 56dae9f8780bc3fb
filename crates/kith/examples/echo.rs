//! Several nodes on loopback exchange messages by NodeId.
//!
//! Run: `cargo run --release -p kith --example echo -- [NODES]` (default 4).
//! Each node mounts an echo protocol; every node then connects to every other by its
//! NodeAddr (id + address), sends a greeting and checks the echo. It prints one line
//! per exchange and a summary with the round-trip times.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kith::{
    BoxFuture, BoxRecvStream, BoxSendStream, Conn, Connection, Node, Protocol, ProtocolHandler,
    StreamError,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The protocol name this example speaks.
pub(crate) const ECHO: Protocol = Protocol::from_static("kith-example/echo/1");

/// Echoes every stream back to its sender (at most 64 KiB).
#[derive(Debug)]
pub(crate) struct Echo;

impl ProtocolHandler for Echo {
    fn accept_bi(
        &self,
        _conn: Conn,
        mut send: BoxSendStream,
        recv: BoxRecvStream,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let mut limited = recv.take(64 * 1024);
            if tokio::io::copy(&mut limited, &mut send).await.is_ok() {
                let _ = send.finish();
            }
        })
    }
}

/// Sends `msg` to the peer on `conn` and returns the echo.
pub(crate) async fn ask(conn: &dyn Connection, msg: &[u8]) -> Result<Vec<u8>, StreamError> {
    let (mut send, mut recv) = conn.open_bi(&ECHO).await?;
    send.write_all(msg).await.map_err(StreamError::from_io)?;
    send.finish()?;
    let mut out = Vec::new();
    recv.read_to_end(&mut out)
        .await
        .map_err(StreamError::from_io)?;
    Ok(out)
}

/// Starts `n` nodes, has each greet every other, and returns the round-trip times.
pub(crate) async fn run(n: usize) -> anyhow::Result<Vec<Duration>> {
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(
            Node::builder()
                .loopback()
                .protocol(ECHO, Arc::new(Echo))
                .spawn()
                .await?,
        );
    }
    for node in &nodes {
        println!(
            "node {} listening on {:?}",
            node.id().fmt_short(),
            node.endpoint().local_addrs()
        );
    }
    let mut rtts = Vec::new();
    for a in &nodes {
        for b in &nodes {
            if a.id() == b.id() {
                continue;
            }
            let msg = format!("hello {} from {}", b.id().fmt_short(), a.id().fmt_short());
            let start = Instant::now();
            let conn = a.connect(b.addr()).await?;
            let reply = ask(&*conn, msg.as_bytes()).await?;
            let rtt = start.elapsed();
            anyhow::ensure!(reply == msg.as_bytes(), "echo mismatch");
            println!(
                "{} -> {}: {:?} in {:.2?}",
                a.id().fmt_short(),
                b.id().fmt_short(),
                String::from_utf8_lossy(&reply),
                rtt
            );
            rtts.push(rtt);
        }
    }
    // Every pair shares exactly one connection, whoever dialed first.
    for node in &nodes {
        anyhow::ensure!(
            node.endpoint().connections().len() == n - 1,
            "one connection per peer"
        );
    }
    for node in &nodes {
        node.close().await;
    }
    Ok(rtts)
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(4usize);
    let mut rtts = run(n.max(2)).await?;
    rtts.sort();
    println!(
        "echo: {} exchanges between {} nodes, median {:.2?} (connect + round trip), max {:.2?}",
        rtts.len(),
        n,
        rtts[rtts.len() / 2],
        rtts[rtts.len() - 1]
    );
    Ok(())
}
