//! Hole punching for relayed connections: the `kith/paths/1` exchange (probe key,
//! candidates, NAT kind), the probe rounds, and birthday-paradox probing when exactly
//! one side's NAT maps endpoint-dependently.
//!
//! The state of each peer's paths lives in the [`PathTable`] of the socket; this module
//! only decides *what* to send and *when*.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kith_core::net::Protocol;
use kith_core::{NodeAddr, NodeId};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use crate::conn::{QuicConnection, QuicRecv};
use crate::endpoint::{Inner, Sock};
use crate::paths::{PathSocket, PathTable, Via, is_synthetic};
use crate::stun::NatKind;

/// Internal path protocol: probe key, direct candidates and NAT kind, for relayed
/// connections.
pub(crate) const PATHS: Protocol = Protocol::from_static("kith/paths/1");

/// Internal hole-punch signal: "my birthday-probing mappings are open, spray now"
/// (one byte: the attempt number), sent by the endpoint-dependent side.
pub(crate) const PUNCH: Protocol = Protocol::from_static("kith/punch/1");

/// Most candidate addresses sent to a peer.
pub(crate) const MAX_ADVERTISED: usize = 8;

/// Probe rounds right after a connection starts or a network changes.
const FAST_ROUND: Duration = Duration::from_millis(150);
/// How many fast rounds before probing slows down to [`SLOW_ROUND`].
const FAST_ROUNDS: u32 = 20;
/// Probe rounds afterwards (they also keep a direct path confirmed).
const SLOW_ROUND: Duration = Duration::from_secs(2);
/// Longest wait for the stream that carries a `kith/paths/1` message.
const SEND_PATHS_TIMEOUT: Duration = Duration::from_secs(5);

/// Wakes the prober of `conn` for fast rounds; with `reannounce` it also sends our
/// candidates to the peer again (after our network changed). Repeated calls before the
/// prober runs coalesce.
pub(crate) fn kick(conn: &QuicConnection, reannounce: bool) {
    conn.punch.fast.store(true, Ordering::Release);
    if reannounce {
        conn.punch.reannounce.store(true, Ordering::Release);
    }
    conn.path_kick.notify_one();
}

/// Sends our probe key, candidates (as known now) and NAT kind to the peer.
async fn send_paths(inner: &Inner, conn: &QuicConnection, key: [u8; 32]) {
    let sent = tokio::time::timeout(SEND_PATHS_TIMEOUT, async {
        let mut s = conn.inner.open_uni().await.ok()?;
        // Read the candidates once the stream is open: stream order is freshness order
        // (the peer ignores a message on an older stream than one it applied).
        let (candidates, reflexive) = inner.candidates();
        let msg = PathsMsg {
            key,
            candidates,
            reflexive,
            nat: inner.nat_now(),
        }
        .encode(inner.id);
        s.write_all(&PATHS.header()).await.ok()?;
        s.write_all(&msg).await.ok()?;
        s.finish().ok()
    })
    .await;
    if !matches!(sent, Ok(Some(()))) {
        tracing::debug!("could not send path candidates");
    }
}

/// What hole punching is doing for a relayed connection, or why it stays relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HolePunch {
    /// A connection to a real address (nothing to punch), or nothing known yet.
    Idle,
    /// Probing the peer's candidates (the usual case; it ends on a direct path or keeps
    /// probing slowly while relayed).
    Probing,
    /// Birthday-paradox probing: one side's NAT maps endpoint-dependently.
    Birthday,
    /// Both sides' NATs map endpoint-dependently: no direct address can be predicted, so
    /// the connection stays relayed (it still probes slowly, in case a NAT changes).
    BothEndpointDependent,
}

/// The peer's `kith/paths/1` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PathsMsg {
    /// Key our probes to the peer are authenticated with.
    pub(crate) key: [u8; 32],
    /// Addresses the peer may be reached at.
    pub(crate) candidates: Vec<SocketAddr>,
    /// How many of `candidates` (the first ones) are reflexive: addresses observers
    /// outside its NAT saw, rather than addresses bound on the peer's host.
    pub(crate) reflexive: usize,
    /// The peer's view of its own NAT.
    pub(crate) nat: NatKind,
}

fn nat_to_byte(n: NatKind) -> u8 {
    match n {
        NatKind::Unknown => 0,
        NatKind::Public => 1,
        NatKind::EndpointIndependent => 2,
        NatKind::EndpointDependent => 3,
    }
}

fn nat_from_byte(b: u8) -> NatKind {
    match b {
        1 => NatKind::Public,
        2 => NatKind::EndpointIndependent,
        3 => NatKind::EndpointDependent,
        // Unknown values (a newer peer) carry no information.
        _ => NatKind::Unknown,
    }
}

impl PathsMsg {
    /// `key | count | (len | NodeAddr naming `sender`)* | nat | reflexive`.
    pub(crate) fn encode(&self, sender: NodeId) -> Vec<u8> {
        let cands = &self.candidates[..self.candidates.len().min(MAX_ADVERTISED)];
        let mut msg = Vec::with_capacity(32 + 1 + cands.len() * 24 + 2);
        msg.extend_from_slice(&self.key);
        msg.push(cands.len() as u8);
        for c in cands {
            let enc = NodeAddr::new(sender).with_direct([*c]).encode();
            msg.push(enc.len() as u8);
            msg.extend_from_slice(&enc);
        }
        msg.push(nat_to_byte(self.nat));
        msg.push(self.reflexive.min(cands.len()) as u8);
        msg
    }
}

/// Parses a `kith/paths/1` message (see [`PathsMsg::encode`]); the two trailing bytes
/// may be missing (an older peer), then the NAT kind is unknown and every candidate is
/// taken as possibly reflexive.
pub(crate) fn parse_paths(buf: &[u8]) -> Option<PathsMsg> {
    let key: [u8; 32] = buf.get(..32)?.try_into().ok()?;
    let count = *buf.get(32)? as usize;
    if count > MAX_ADVERTISED {
        return None;
    }
    let mut rest = buf.get(33..)?;
    let mut candidates = Vec::with_capacity(count);
    for _ in 0..count {
        let len = *rest.first()? as usize;
        let enc = rest.get(1..1 + len)?;
        // Candidates are carried as NodeAddrs only to reuse one bounded decoder; the id
        // is not otherwise used.
        let addr = NodeAddr::decode(enc).ok()?;
        candidates.extend(addr.direct.into_iter().filter(|a| !is_synthetic(a)).take(1));
        rest = &rest[1 + len..];
    }
    let (nat, reflexive) = match rest {
        [] => (NatKind::Unknown, candidates.len()),
        [n, r] => (nat_from_byte(*n), (*r as usize).min(candidates.len())),
        _ => return None,
    };
    Some(PathsMsg {
        key,
        candidates,
        reflexive,
        nat,
    })
}

/// Per-connection hole-punching state shared by the prober and the message handler.
#[derive(Debug)]
pub(crate) struct PunchState {
    pub(crate) status: watch::Sender<HolePunch>,
    /// The peer's message, once it arrived.
    pub(crate) peer: std::sync::Mutex<Option<PathsMsg>>,
    /// Birthday attempts started.
    pub(crate) attempts: std::sync::atomic::AtomicU32,
    /// Set with a `path_kick`: go back to fast probe rounds.
    fast: AtomicBool,
    /// Set with a `path_kick`: send our `kith/paths/1` message again (our network
    /// changed).
    reannounce: AtomicBool,
    /// Stream index + 1 of the newest `kith/paths/1` message applied (0: none), so a
    /// stale message that completes after a newer one is ignored.
    applied: std::sync::atomic::AtomicU64,
    /// The peer's "mappings open" signal came before its `kith/paths/1` message (the
    /// two travel on separate streams): act on it once the message is in.
    signal_early: AtomicBool,
}

impl PunchState {
    pub(crate) fn new() -> Self {
        Self {
            status: watch::channel(HolePunch::Idle).0,
            peer: std::sync::Mutex::new(None),
            attempts: std::sync::atomic::AtomicU32::new(0),
            fast: AtomicBool::new(false),
            reannounce: AtomicBool::new(false),
            applied: std::sync::atomic::AtomicU64::new(0),
            signal_early: AtomicBool::new(false),
        }
    }

    fn set(&self, s: HolePunch) {
        self.status.send_if_modified(|cur| {
            let changed = *cur != s;
            *cur = s;
            changed
        });
    }
}

/// Which side of a birthday attempt this endpoint plays, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Our NAT maps endpoint-dependently: open many sockets.
    Hard,
    /// The peer's does, ours does not: send many probes.
    Easy,
}

/// Decides the birthday role from both NAT kinds; `Err` if both are endpoint-dependent.
pub(crate) fn birthday_role(ours: NatKind, theirs: NatKind) -> Result<Option<Role>, ()> {
    use NatKind::*;
    match (ours, theirs) {
        (EndpointDependent, EndpointDependent) => Err(()),
        // A public peer answers our first ping from any of our mappings: no need.
        (EndpointDependent, EndpointIndependent) => Ok(Some(Role::Hard)),
        (EndpointIndependent, EndpointDependent) => Ok(Some(Role::Easy)),
        _ => Ok(None),
    }
}

/// For a connection over a mapped (relayed) address: exchange probe keys and candidates
/// with the peer, then probe until a direct path is validated, and keep it confirmed.
pub(crate) fn start_paths(inner: &Arc<Inner>, conn: &Arc<QuicConnection>) {
    let remote = conn.inner.remote_address();
    let Some(sock) = inner.sock_for_mapped(&remote) else {
        return;
    };
    let (table, socket) = (sock.table.clone(), sock.socket.clone());
    let inner = inner.clone();
    let conn = conn.clone();
    tokio::spawn(async move {
        let node = conn.remote;
        let my_key: [u8; 32] = rand::random();
        table.set_my_key(node, my_key);
        send_paths(&inner, &conn, my_key).await;
        let delay = inner.config.path_probe_delay();
        if !delay.is_zero() {
            tokio::select! {
                _ = conn.inner.closed() => {}
                _ = tokio::time::sleep(delay) => {}
            }
        }
        table.enable_probing(&node);
        conn.punch.set(HolePunch::Probing);
        let mut round = 0u32;
        let mut was_direct = false;
        loop {
            let wait = if round < FAST_ROUNDS {
                FAST_ROUND
            } else {
                SLOW_ROUND
            };
            tokio::select! {
                _ = conn.inner.closed() => break,
                _ = conn.path_kick.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
            round = round.saturating_add(1);
            if conn.punch.fast.swap(false, Ordering::AcqRel) {
                round = 0;
            }
            if conn.punch.reannounce.swap(false, Ordering::AcqRel) {
                // The same key: the peer's probes to us stay valid across the change.
                let (inner, conn) = (inner.clone(), conn.clone());
                tokio::spawn(async move { send_paths(&inner, &conn, my_key).await });
            }
            let now = Instant::now();
            if table.expire(&node, now) {
                tracing::debug!(peer = %node.fmt_short(), "direct path lost; probing again");
                round = 0;
            }
            let direct = table.is_direct(&node);
            if was_direct && !direct {
                // Path loss: a birthday path needs a fresh attempt (its sockets are gone).
                maybe_birthday(&inner, &conn, &table, &socket);
            }
            was_direct = direct;
            for o in table.make_pings(&node, now) {
                let _ = socket.send_probe(&o);
            }
        }
        table.remove(&node);
    });
}

/// The peer's probe key and candidates for a relayed connection.
pub(crate) async fn handle_paths(
    inner: &Arc<Inner>,
    conn: &Arc<QuicConnection>,
    mut recv: QuicRecv,
) {
    let seq = recv.0.id().index().saturating_add(1);
    let mut buf = Vec::new();
    let limit = (32 + 1 + MAX_ADVERTISED * (1 + 255) + 2) as u64;
    if (&mut recv).take(limit).read_to_end(&mut buf).await.is_err() {
        return;
    }
    let Some(sock) = inner.sock_for_mapped(&conn.inner.remote_address()) else {
        return;
    };
    let Some(msg) = parse_paths(&buf) else {
        tracing::debug!("malformed path message ignored");
        return;
    };
    if conn.punch.applied.fetch_max(seq, Ordering::AcqRel) > seq {
        tracing::debug!("stale path message ignored");
        return;
    }
    sock.table.set_their_key(conn.remote, msg.key);
    let update = crate::endpoint::lock(&conn.punch.peer)
        .replace(msg.clone())
        .is_some();
    if update {
        // A later message: the peer's network changed. What it advertised before (and
        // what we learned from its probes) is likely stale, and so may be our direct
        // path to it: probe its new candidates at the fast rate.
        tracing::debug!(peer = %conn.remote.fmt_short(), candidates = ?msg.candidates, "peer re-advertised its paths");
        sock.table
            .replace_candidates(conn.remote, &msg.candidates, Instant::now());
        kick(conn, false);
    } else {
        sock.table.add_candidates(conn.remote, &msg.candidates);
        conn.path_kick.notify_one();
    }
    maybe_birthday(inner, conn, &sock.table, &sock.socket);
    if conn.punch.signal_early.swap(false, Ordering::AcqRel) {
        tracing::debug!(peer = %conn.remote.fmt_short(), "acting on the early birthday signal");
        spray_on_signal(inner, conn, sock).await;
    }
}

/// Starts a birthday-probing attempt if the two NAT kinds call for one (and the attempt
/// budget allows), or records that both sides are endpoint-dependent.
fn maybe_birthday(
    inner: &Arc<Inner>,
    conn: &Arc<QuicConnection>,
    table: &Arc<PathTable>,
    socket: &Arc<PathSocket>,
) {
    let cfg = &inner.config.hole_punch;
    let Some(peer) = crate::endpoint::lock(&conn.punch.peer).clone() else {
        return;
    };
    let ours = inner.nat_now();
    let role = match birthday_role(ours, peer.nat) {
        Err(()) => {
            tracing::info!(
                peer = %conn.remote.fmt_short(),
                "both sides behind endpoint-dependent NATs: staying relayed"
            );
            conn.punch.set(HolePunch::BothEndpointDependent);
            return;
        }
        Ok(None) => return,
        Ok(Some(role)) => role,
    };
    if !cfg.birthday || table.is_direct(&conn.remote) {
        return;
    }
    conn.punch.set(HolePunch::Birthday);
    if role == Role::Easy {
        // The other side opens its mappings and tells us when (`kith/punch/1`).
        return;
    }
    if inner.has_port_mapping() {
        // The peer reaches our mapped address directly; no need to guess mappings.
        return;
    }
    if conn.punch.attempts.fetch_add(1, Ordering::AcqRel) >= cfg.birthday_attempts {
        return;
    }
    let targets = reflexive_v4(&peer);
    let (inner, conn, table, socket) = (inner.clone(), conn.clone(), table.clone(), socket.clone());
    tokio::spawn(async move {
        // Retry with fresh sockets (fresh mappings) while the budget allows.
        loop {
            birthday_hard(&inner, &conn, &table, &socket, &targets).await;
            if table.is_direct(&conn.remote) || conn.inner.close_reason().is_some() {
                break;
            }
            let spent = conn.punch.attempts.fetch_add(1, Ordering::AcqRel);
            if spent >= inner.config.hole_punch.birthday_attempts {
                break;
            }
            tracing::debug!(attempt = spent + 1, "birthday probing: retrying");
        }
        finish_status(&conn, &table);
    });
}

/// The peer's reflexive IPv4 candidates (where its NAT maps it).
fn reflexive_v4(peer: &PathsMsg) -> Vec<SocketAddr> {
    peer.candidates[..peer.reflexive]
        .iter()
        .copied()
        .filter(SocketAddr::is_ipv4)
        .collect()
}

fn finish_status(conn: &QuicConnection, table: &PathTable) {
    let status = if table.is_direct(&conn.remote) {
        HolePunch::Probing
    } else {
        HolePunch::Birthday
    };
    conn.punch.set(status);
}

/// The peer's "mappings open" signal: spray, if we are the side that should, within
/// the attempt budget (a peer cannot make us spray more than
/// `birthday_attempts × birthday_probes` probes per connection).
pub(crate) async fn handle_punch(
    inner: &Arc<Inner>,
    conn: &Arc<QuicConnection>,
    mut recv: QuicRecv,
) {
    let mut buf = Vec::new();
    if (&mut recv).take(1).read_to_end(&mut buf).await.is_err() || buf.len() != 1 {
        return;
    }
    let Some(sock) = inner.sock_for_mapped(&conn.inner.remote_address()) else {
        return;
    };
    if crate::endpoint::lock(&conn.punch.peer).is_none() {
        // Its candidates are still on the way (another stream): spray once they are in.
        conn.punch.signal_early.store(true, Ordering::Release);
        tracing::info!(peer = %conn.remote.fmt_short(), "birthday signal before the peer's paths message");
        return;
    }
    spray_on_signal(inner, conn, sock).await;
}

/// Sprays for the peer's birthday attempt, if we are the side that should and the
/// attempt budget allows.
async fn spray_on_signal(inner: &Arc<Inner>, conn: &Arc<QuicConnection>, sock: &Sock) {
    let cfg = &inner.config.hole_punch;
    let Some(peer) = crate::endpoint::lock(&conn.punch.peer).clone() else {
        return;
    };
    let ours = inner.nat_now();
    if !cfg.birthday || sock.table.is_direct(&conn.remote) {
        return;
    }
    if birthday_role(ours, peer.nat) != Ok(Some(Role::Easy)) {
        tracing::info!(
            peer = %conn.remote.fmt_short(),
            ?ours,
            theirs = ?peer.nat,
            "birthday signal ignored: we are not the side that sprays"
        );
        return;
    }
    if conn.punch.attempts.fetch_add(1, Ordering::AcqRel) >= cfg.birthday_attempts {
        tracing::debug!("birthday attempts spent; signal ignored");
        return;
    }
    conn.punch.set(HolePunch::Birthday);
    let targets = reflexive_v4(&peer);
    birthday_easy(inner, conn, &sock.table, &sock.socket, &targets).await;
    finish_status(conn, &sock.table);
}

/// The endpoint-dependent side: open many sockets, send one probe from each to the
/// peer's reflexive addresses (each opens a NAT mapping the peer's probes may hit), and
/// serve them until a direct path is found or the window closes.
async fn birthday_hard(
    inner: &Arc<Inner>,
    conn: &Arc<QuicConnection>,
    table: &Arc<PathTable>,
    socket: &Arc<PathSocket>,
    targets: &[SocketAddr],
) {
    let cfg = &inner.config.hole_punch;
    let node = conn.remote;
    let Some(local_ip) = inner.v4_local().map(|a| a.ip()) else {
        return;
    };
    if targets.is_empty() {
        return;
    }
    // One attempt at a time per endpoint bounds the sockets we hold.
    let Ok(Ok(_permit)) =
        tokio::time::timeout(cfg.birthday_window, inner.birthday_slot.acquire()).await
    else {
        tracing::debug!("another birthday attempt kept the sockets; skipping");
        return;
    };
    let mut socks = Vec::with_capacity(cfg.birthday_sockets);
    for _ in 0..cfg.birthday_sockets {
        match tokio::net::UdpSocket::bind(SocketAddr::new(local_ip, 0)).await {
            Ok(s) => socks.push(Arc::new(s)),
            Err(e) => {
                tracing::debug!(error = %e, "birthday socket bind failed");
                break;
            }
        }
    }
    tracing::info!(
        peer = %node.fmt_short(),
        sockets = socks.len(),
        ?targets,
        "birthday probing: opening mappings"
    );
    table.set_extra_sockets(&node, socks.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    for s in &socks {
        tokio::spawn(serve_extra(
            table.clone(),
            socket.clone(),
            conn.clone(),
            s.clone(),
            stop_rx.clone(),
        ));
    }
    let pairs: Vec<(Via, SocketAddr)> = socks
        .iter()
        .flat_map(|s| targets.iter().map(move |t| (Some(s.clone()), *t)))
        .collect();
    let mut refused = 0;
    for o in table.spray_pings(&node, &pairs, Instant::now()) {
        if !socket.send_probe(&o) {
            // A full buffer: wait until the socket can send and try once more.
            if let Some(s) = &o.0 {
                let _ = s.writable().await;
            }
            refused += usize::from(!socket.send_probe(&o));
        }
    }
    if refused > 0 {
        tracing::debug!(refused, "birthday mapping probes the sockets refused");
    }
    drop(socks);
    // Tell the peer the mappings are open: it sprays now, not on a guess of our timing.
    let attempt = conn
        .punch
        .attempts
        .load(std::sync::atomic::Ordering::Acquire)
        .min(255) as u8;
    let signalled = async {
        let mut s = conn.inner.open_uni().await.ok()?;
        s.write_all(&PUNCH.header()).await.ok()?;
        s.write_all(&[attempt]).await.ok()?;
        s.finish().ok()
    }
    .await;
    if signalled.is_none() {
        tracing::debug!("could not signal the birthday attempt");
    }
    let mut path = conn.path.clone();
    let _ = tokio::time::timeout(cfg.birthday_window, async {
        loop {
            if table.is_direct(&node) || conn.inner.close_reason().is_some() {
                return;
            }
            if path.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    table.keep_only_used_socket(&node);
    let _ = stop_tx.send(true);
}

/// Receives on one birthday socket until the attempt ends; the socket a direct path
/// uses keeps serving until the connection closes or the path moves off it.
async fn serve_extra(
    table: Arc<PathTable>,
    socket: Arc<PathSocket>,
    conn: Arc<QuicConnection>,
    sock: Arc<tokio::net::UdpSocket>,
    mut stop: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 65535];
    let mut stopping = false;
    loop {
        tokio::select! {
            _ = conn.inner.closed() => return,
            r = stop.changed(), if !stopping => {
                stopping = true;
                if r.is_err() || !table.uses_socket(&conn.remote, &sock) {
                    return;
                }
            }
            r = sock.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { return };
                for o in table.on_extra_datagram(&sock, &buf[..n], from, Instant::now()) {
                    let _ = socket.send_probe(&o);
                }
                if stopping && !table.uses_socket(&conn.remote, &sock) {
                    return;
                }
            }
        }
    }
}

/// The other side, once the peer signalled its mappings are open: send probes to random
/// ports of its public address(es), paced, until one is answered or the budget is spent.
async fn birthday_easy(
    inner: &Arc<Inner>,
    conn: &Arc<QuicConnection>,
    table: &Arc<PathTable>,
    socket: &Arc<PathSocket>,
    targets: &[SocketAddr],
) {
    let cfg = &inner.config.hole_punch;
    let node = conn.remote;
    let mut ips: Vec<IpAddr> = targets.iter().map(SocketAddr::ip).collect();
    ips.sort();
    ips.dedup();
    if ips.is_empty() || cfg.birthday_probes == 0 {
        tracing::info!(peer = %node.fmt_short(), "birthday probing: no public address of the peer to spray");
        return;
    }
    let per_ip = (cfg.birthday_probes / ips.len()).max(1);
    let mut targets = Vec::with_capacity(per_ip * ips.len());
    for ip in &ips {
        for port in random_ports(per_ip) {
            targets.push((None, SocketAddr::new(*ip, port)));
        }
    }
    tracing::info!(
        peer = %node.fmt_short(),
        probes = targets.len(),
        ?ips,
        "birthday probing: spraying"
    );
    let rate = cfg.birthday_rate.max(100) as usize;
    // Batches every 10 ms.
    let batch = (rate / 100).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut refused = 0usize;
    for chunk in targets.chunks(batch) {
        tick.tick().await;
        if table.is_direct(&node) || conn.inner.close_reason().is_some() {
            break;
        }
        for o in table.spray_pings(&node, chunk, Instant::now()) {
            if !socket.send_probe(&o) {
                // A full send buffer: give it a moment, then once more.
                tokio::time::sleep(Duration::from_millis(1)).await;
                refused += usize::from(!socket.send_probe(&o));
            }
        }
    }
    tracing::debug!(
        peer = %node.fmt_short(),
        refused,
        direct = table.is_direct(&node),
        "birthday spray done"
    );
}

/// `n` distinct random ports in 1024–65535 (where NATs allocate mappings).
pub(crate) fn random_ports(n: usize) -> Vec<u16> {
    let n = n.min(65535 - 1024 + 1);
    let mut seen = HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let p: u16 = rand::random::<u16>();
        if p >= 1024 && seen.insert(p) {
            out.push(p);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|_| unreachable!())
    }

    #[test]
    fn message_round_trips_with_nat_and_reflexive_count() {
        let id = kith_core::SecretKey::from_bytes(&[3; 32]).node_id();
        let m = PathsMsg {
            key: [9; 32],
            candidates: vec![sa("203.0.113.17:4000"), sa("192.0.2.10:5000")],
            reflexive: 1,
            nat: NatKind::EndpointDependent,
        };
        assert_eq!(parse_paths(&m.encode(id)), Some(m.clone()));
        // An older peer's message (no trailer) parses with an unknown NAT.
        let enc = m.encode(id);
        let old = parse_paths(&enc[..enc.len() - 2]).unwrap_or_else(|| panic!("parse"));
        assert_eq!(old.nat, NatKind::Unknown);
        assert_eq!(old.reflexive, 2);
        // One stray byte is malformed.
        assert_eq!(parse_paths(&enc[..enc.len() - 1]), None);
    }

    #[test]
    fn roles() {
        use NatKind::*;
        assert_eq!(birthday_role(EndpointDependent, EndpointDependent), Err(()));
        assert_eq!(
            birthday_role(EndpointDependent, EndpointIndependent),
            Ok(Some(Role::Hard))
        );
        assert_eq!(
            birthday_role(EndpointIndependent, EndpointDependent),
            Ok(Some(Role::Easy))
        );
        assert_eq!(birthday_role(Public, EndpointDependent), Ok(None));
        assert_eq!(birthday_role(EndpointDependent, Public), Ok(None));
        assert_eq!(birthday_role(Unknown, EndpointDependent), Ok(None));
    }

    #[test]
    fn random_ports_are_distinct_and_in_range() {
        let ports = random_ports(5000);
        assert_eq!(ports.len(), 5000);
        let set: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(set.len(), 5000);
        assert!(ports.iter().all(|p| *p >= 1024));
        assert_eq!(random_ports(100_000).len(), 64512);
    }

    proptest! {
        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Some(m) = parse_paths(&data) {
                prop_assert!(m.candidates.len() <= MAX_ADVERTISED);
                prop_assert!(m.reflexive <= m.candidates.len());
            }
        }
    }
}
