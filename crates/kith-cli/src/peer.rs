//! `kith peer`: a node for connectivity experiments (the NAT lab drives it).
//!
//! It prints `addr <hex of the NodeAddr wire form>` (direct addresses and home relay),
//! then answers commands on stdin, one line each:
//!
//! ```text
//! connect <hex NodeAddr>    ok ms=<connect time> path=<relayed|direct>
//! wait-direct <id> <ms>     ok direct=<addr> ms=<time to direct> | ok relayed
//! transfer <id> <bytes>     ok bytes=<n> intact=<true|false> path_before=<p> path_after=<p>
//! path <id>                 ok <relayed|direct=<addr>|none>
//! probes <id>               ok <pings sent>
//! mapping [<ms>]            ok <pcp|natpmp|upnp> <external addr> | err none
//!                           (waits up to <ms>, default 0, for a port mapping; --port-map)
//! mapped-addr               ok <hex NodeAddr with the mapped address only, no relay>
//! addr-with <ip:port>       ok <hex NodeAddr with this node's id and only that address>
//! quit
//! ```
//!
//! Transfers go to the peer's `kith/lab-hash/1` handler, which answers with the BLAKE3
//! hash and length of what it read, so a transfer that spans a path change is checked
//! end to end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kith::layers::transport::portmap::Mapping;
use kith::{
    BoxFuture, BoxRecvStream, BoxSendStream, Conn, Connection, NodeAddr, NodeId, PathKind,
    Protocol, ProtocolHandler, QuicConnection, StreamError,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::{Args, start_node};

const HASH: Protocol = Protocol::from_static("kith/lab-hash/1");
/// Longest transfer a peer accepts.
const MAX_TRANSFER: u64 = 1 << 30;

struct Hasher;

impl ProtocolHandler for Hasher {
    fn accept_bi(
        &self,
        _c: Conn,
        mut send: BoxSendStream,
        recv: BoxRecvStream,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let mut h = blake3::Hasher::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut n = 0u64;
            let mut recv = recv.take(MAX_TRANSFER);
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

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> anyhow::Result<Vec<u8>> {
    let s = s.trim();
    if s.len() % 2 != 0 || s.len() > 4096 {
        bail!("bad hex length");
    }
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).context("bad hex"))
        .collect()
}

fn path_text(p: PathKind) -> String {
    match p {
        PathKind::Direct(a) => format!("direct={a}"),
        PathKind::Relayed(_) => "relayed".into(),
        PathKind::None => "none".into(),
    }
}

fn data_byte(i: u64) -> u8 {
    (i.wrapping_mul(2654435761) >> 13) as u8
}

async fn transfer(conn: &QuicConnection, bytes: u64) -> anyhow::Result<String> {
    let before = conn.path();
    let (mut send, mut recv) = conn.open_bi(&HASH).await?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    while sent < bytes {
        let k = (bytes - sent).min(buf.len() as u64) as usize;
        for (j, b) in buf[..k].iter_mut().enumerate() {
            *b = data_byte(sent + j as u64);
        }
        h.update(&buf[..k]);
        send.write_all(&buf[..k])
            .await
            .map_err(StreamError::from_io)?;
        sent += k as u64;
    }
    send.finish()?;
    let mut reply = [0u8; 40];
    recv.read_exact(&mut reply)
        .await
        .map_err(StreamError::from_io)?;
    let intact = reply[..32] == *h.finalize().as_bytes()
        && u64::from_le_bytes(reply[32..].try_into().unwrap_or_default()) == bytes;
    Ok(format!(
        "bytes={bytes} intact={intact} path_before={} path_after={}",
        path_text(before),
        path_text(conn.path())
    ))
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let (node, _) = start_node(&args).await?;
    node.mount(HASH, Arc::new(Hasher))?;
    let mut out = tokio::io::stdout();
    out.write_all(format!("addr {}\n", hex(&node.addr().encode())).as_bytes())
        .await?;
    out.flush().await?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let line = line.trim().to_owned();
        if line == "quit" {
            break;
        }
        let reply = match command(&node, &line).await {
            Ok(v) => format!("ok {v}\n"),
            Err(e) => format!("err {}\n", e.to_string().replace('\n', " ")),
        };
        out.write_all(reply.as_bytes()).await?;
        out.flush().await?;
    }
    node.close().await;
    Ok(())
}

/// The endpoint's port mapping, waiting up to `wait` for one.
async fn mapping(node: &kith::Node, wait: Duration) -> anyhow::Result<Mapping> {
    let Some(mut w) = node.endpoint().watch_port_mapping() else {
        bail!("none");
    };
    let found = tokio::time::timeout(wait, w.wait_for(|m| m.is_some()))
        .await
        .ok()
        .and_then(|r| r.ok().and_then(|m| *m));
    found.or(*w.borrow()).context("none")
}

fn conn_to(node: &kith::Node, id: &str) -> anyhow::Result<Arc<QuicConnection>> {
    let id: NodeId = id.parse()?;
    node.endpoint()
        .connection(&id)
        .context("no connection to that node")
}

async fn command(node: &kith::Node, line: &str) -> anyhow::Result<String> {
    let mut words = line.split_whitespace();
    let cmd = words.next().unwrap_or_default();
    match cmd {
        "connect" => {
            let addr = NodeAddr::decode(&unhex(words.next().context("connect <hex>")?)?)?;
            let start = Instant::now();
            let conn = node.connect(addr).await?;
            Ok(format!(
                "ms={} path={}",
                start.elapsed().as_millis(),
                path_text(conn.path())
            ))
        }
        "wait-direct" => {
            let conn = conn_to(node, words.next().context("wait-direct <id> <ms>")?)?;
            let ms: u64 = words.next().context("wait-direct <id> <ms>")?.parse()?;
            let start = Instant::now();
            let mut events = conn.path_events();
            let r = tokio::time::timeout(
                Duration::from_millis(ms),
                events.wait_for(|p| matches!(p, PathKind::Direct(_))),
            )
            .await;
            Ok(match r {
                Ok(Ok(p)) => format!("{} ms={}", path_text(*p), start.elapsed().as_millis()),
                _ => path_text(conn.path()),
            })
        }
        "transfer" => {
            let conn = conn_to(node, words.next().context("transfer <id> <bytes>")?)?;
            let bytes: u64 = words.next().context("transfer <id> <bytes>")?.parse()?;
            transfer(&conn, bytes.min(MAX_TRANSFER)).await
        }
        "path" => Ok(path_text(
            conn_to(node, words.next().context("path <id>")?)?.path(),
        )),
        "probes" => Ok(conn_to(node, words.next().context("probes <id>")?)?
            .stats()
            .probes_sent
            .to_string()),
        "mapping" => {
            let ms: u64 = words.next().map(str::parse).transpose()?.unwrap_or(0);
            let m = mapping(node, Duration::from_millis(ms.min(60_000))).await?;
            Ok(format!("{} {}", m.protocol, m.external))
        }
        "mapped-addr" => {
            let m = mapping(node, Duration::ZERO).await?;
            let addr = NodeAddr::new(node.endpoint().node_id()).with_direct([m.external]);
            Ok(hex(&addr.encode()))
        }
        "addr-with" => {
            let at: std::net::SocketAddr = words.next().context("addr-with <ip:port>")?.parse()?;
            let addr = NodeAddr::new(node.endpoint().node_id()).with_direct([at]);
            Ok(hex(&addr.encode()))
        }
        other => bail!("unknown command {other:?}"),
    }
}
