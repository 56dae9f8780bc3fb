//! `kith-lab peer`: a node for connectivity experiments (the NAT lab drives it).
//!
//! It prints `addr <hex of the NodeAddr wire form>` (direct addresses and home relay),
//! then answers commands on stdin, one line each:
//!
//! ```text
//! connect <hex NodeAddr>    ok ms=<connect time> path=<relayed|direct>
//! connect <node id>         the same, addresses from discovery (--mdns)
//! wait-direct <id> <ms> [<ip>]
//!                           ok direct=<addr> ms=<time to direct> | ok relayed
//!                           (with <ip>: waits for a direct path to that IP address)
//! network-changed           ok   (tells the endpoint the host's network changed)
//! transfer <id> <bytes>     ok bytes=<n> intact=<true|false> path_before=<p> path_after=<p>
//! path <id>                 ok <relayed|direct=<addr>|none>
//! probes <id>               ok <pings sent>
//! punch <id>                ok <idle|probing|birthday|both-endpoint-dependent> birthday_probes=<n>
//! nat                       ok <public|endpoint-independent|endpoint-dependent|unknown>
//! marker <id> <text> <n>    like transfer, of <text> repeated <n> times (the lab looks
//!                           for it in a capture on the relay)
//! lan-peers                 ok <count> <id>@<addr>,<addr> …   (--mdns)
//! wait-lan <id> <ms>        ok <id>@<addr>,… ms=<time until seen on the LAN>   (--mdns)
//! mapping [<ms>]            ok <pcp|natpmp|upnp> <external addr> | err none
//!                           (waits up to <ms>, default 0, for a port mapping; --port-map)
//! mapped-addr               ok <hex NodeAddr with the mapped address only, no relay>
//! addr-with <ip:port>       ok <hex NodeAddr with this node's id and only that address>
//! quit
//! ```
//!
//! With `--mdns` the peer announces itself on the LAN (mDNS, `_kith._udp.local.`) and
//! resolves a bare node id given to `connect` from what it has seen there.
//!
//! Transfers go to the peer's `kith/lab-hash/1` handler, which answers with the BLAKE3
//! hash and length of what it read, so a transfer that spans a path change is checked
//! end to end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kith::layers::transport::mdns::{MdnsConfig, MdnsDiscovery};
use kith::layers::transport::portmap::Mapping;
use kith::{
    BoxFuture, BoxRecvStream, BoxSendStream, Conn, Connection, HolePunch, NatKind, NodeAddr,
    NodeId, PathKind, Protocol, ProtocolHandler, QuicConnection, StreamError,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::{Args, start_node};

const HASH: Protocol = Protocol::from_static("kith/lab-hash/1");
/// How long `connect <node id>` waits for the peer to appear on the LAN (--mdns).
const LAN_RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
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

/// Sends `bytes` bytes, byte `i` being `fill(i)`, to the peer's hash handler and checks
/// its answer.
async fn transfer(
    conn: &QuicConnection,
    bytes: u64,
    fill: impl Fn(u64) -> u8,
) -> anyhow::Result<String> {
    let before = conn.path();
    let (mut send, mut recv) = conn.open_bi(&HASH).await?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    while sent < bytes {
        let k = (bytes - sent).min(buf.len() as u64) as usize;
        for (j, b) in buf[..k].iter_mut().enumerate() {
            *b = fill(sent + j as u64);
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
    let lan = if args.mdns {
        let mut config = MdnsConfig::default();
        // Someone who types `connect <id>` right after start can wait for the LAN.
        config.resolve_timeout = LAN_RESOLVE_TIMEOUT;
        let lan = Arc::new(MdnsDiscovery::spawn(node.endpoint(), config)?);
        node.endpoint().set_discovery(lan.clone());
        Some(lan)
    } else {
        None
    };
    let peer = Peer { node, lan };
    let mut out = tokio::io::stdout();
    out.write_all(format!("addr {}\n", hex(&peer.node.addr().encode())).as_bytes())
        .await?;
    out.flush().await?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let line = line.trim().to_owned();
        if line == "quit" {
            break;
        }
        let reply = match peer.command(&line).await {
            Ok(v) => format!("ok {v}\n"),
            Err(e) => format!("err {}\n", e.to_string().replace('\n', " ")),
        };
        out.write_all(reply.as_bytes()).await?;
        out.flush().await?;
    }
    if let Some(lan) = &peer.lan {
        lan.shutdown().await;
    }
    peer.node.close().await;
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

/// The running node and, with `--mdns`, its LAN discovery.
struct Peer {
    node: kith::Node,
    lan: Option<Arc<MdnsDiscovery>>,
}

fn conn_to(node: &kith::Node, id: &str) -> anyhow::Result<Arc<QuicConnection>> {
    let id: NodeId = id.parse()?;
    node.endpoint()
        .connection(&id)
        .context("no connection to that node")
}

/// `connect`'s argument: a bare node id (resolved by discovery) or a hex `NodeAddr`.
fn connect_target(arg: &str) -> anyhow::Result<NodeAddr> {
    if arg.len() == kith::layers::core::NODE_ID_TEXT_LEN {
        if let Ok(id) = arg.parse::<NodeId>() {
            return Ok(NodeAddr::new(id));
        }
    }
    Ok(NodeAddr::decode(&unhex(arg)?)?)
}

impl Peer {
    async fn command(&self, line: &str) -> anyhow::Result<String> {
        let mut words = line.split_whitespace();
        let cmd = words.next().unwrap_or_default();
        if !matches!(cmd, "lan-peers" | "wait-lan") {
            return command(&self.node, line).await;
        }
        let lan = self.lan.as_ref().context("LAN commands need --mdns")?;
        if cmd == "lan-peers" {
            let peers = lan.peers();
            let mut out = peers.len().to_string();
            for p in &peers {
                out.push(' ');
                out.push_str(&p.to_string());
            }
            return Ok(out);
        }
        let id: NodeId = words.next().context("wait-lan <id> <ms>")?.parse()?;
        let ms: u64 = words.next().context("wait-lan <id> <ms>")?.parse()?;
        let start = Instant::now();
        let found = lan
            .wait_for(id, Duration::from_millis(ms.min(60_000)))
            .await
            .context("not seen on the LAN")?;
        Ok(format!("{found} ms={}", start.elapsed().as_millis()))
    }
}

async fn command(node: &kith::Node, line: &str) -> anyhow::Result<String> {
    let mut words = line.split_whitespace();
    let cmd = words.next().unwrap_or_default();
    match cmd {
        "connect" => {
            let addr = connect_target(words.next().context("connect <hex|node id>")?)?;
            let start = Instant::now();
            let conn = node.connect(addr).await?;
            Ok(format!(
                "ms={} path={}",
                start.elapsed().as_millis(),
                path_text(conn.path())
            ))
        }
        "wait-direct" => {
            let usage = "wait-direct <id> <ms> [<ip>]";
            let conn = conn_to(node, words.next().context(usage)?)?;
            let ms: u64 = words.next().context(usage)?.parse()?;
            let ip: Option<std::net::IpAddr> = words.next().map(str::parse).transpose()?;
            let start = Instant::now();
            let mut events = conn.path_events();
            let r = tokio::time::timeout(
                Duration::from_millis(ms),
                events.wait_for(|p| match p {
                    PathKind::Direct(a) => ip.is_none_or(|ip| a.ip() == ip),
                    _ => false,
                }),
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
            transfer(&conn, bytes.min(MAX_TRANSFER), data_byte).await
        }
        "marker" => {
            let usage = "marker <id> <text> <count>";
            let conn = conn_to(node, words.next().context(usage)?)?;
            let text = words.next().context(usage)?.as_bytes().to_vec();
            let count: u64 = words.next().context(usage)?.parse()?;
            let len = text.len() as u64;
            let bytes = len.saturating_mul(count).min(MAX_TRANSFER);
            transfer(&conn, bytes, move |i| text[(i % len) as usize]).await
        }
        "punch" => {
            let conn = conn_to(node, words.next().context("punch <id>")?)?;
            let status = match conn.hole_punch() {
                HolePunch::Idle => "idle",
                HolePunch::Probing => "probing",
                HolePunch::Birthday => "birthday",
                HolePunch::BothEndpointDependent => "both-endpoint-dependent",
            };
            Ok(format!(
                "{status} birthday_probes={}",
                conn.stats().birthday_probes
            ))
        }
        "network-changed" => {
            node.endpoint().network_changed();
            Ok(String::new())
        }
        "nat" => Ok(match node.endpoint().nat() {
            NatKind::Public => "public",
            NatKind::EndpointIndependent => "endpoint-independent",
            NatKind::EndpointDependent => "endpoint-dependent",
            NatKind::Unknown => "unknown",
        }
        .to_owned()),
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

#[cfg(test)]
mod tests {
    use kith::SecretKey;

    use super::*;

    #[test]
    fn connect_takes_a_bare_id_or_a_hex_node_addr() {
        let id = SecretKey::from_bytes(&[7; 32]).node_id();
        assert_eq!(connect_target(&id.to_string()).unwrap(), NodeAddr::new(id));
        let full = NodeAddr::new(id).with_direct(["192.0.2.1:4433".parse().unwrap()]);
        assert_eq!(connect_target(&hex(&full.encode())).unwrap(), full);
        assert!(connect_target("zz").is_err());
        assert!(connect_target(&"!".repeat(52)).is_err());
    }
}
