//! Hole punching for relayed connections: the `kith/paths/1` exchange (probe key,
//! candidates, NAT kind), the probe rounds, and birthday-paradox probing when exactly
//! one side's NAT maps endpoint-dependently.
//!
//! The state of each peer's paths lives in the [`PathTable`] of the socket; this module
//! only decides *what* to send and *when*. It sees the endpoint only through
//! [`PunchHost`] (never the endpoint's internals), and the per-connection state it drives
//! lives in the leaf module `punch_state`.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kith_core::NodeId;
use kith_core::net::Protocol;
use tokio::io::AsyncReadExt;
use tokio::sync::{Semaphore, watch};

use crate::config::HolePunchConfig;
use crate::conn::{QuicConnection, QuicRecv};
use crate::paths::{PathSocket, PathTable, Via};
use crate::punch_state::{HolePunch, MAX_ADVERTISED, PathsMsg, parse_paths};
use crate::stun::NatKind;
use crate::sync::lock;

/// Internal path protocol: probe key, direct candidates and NAT kind, for relayed
/// connections.
pub(crate) const PATHS: Protocol = Protocol::from_static("kith/paths/1");

/// Internal hole-punch signal: "my birthday-probing mappings are open, spray now"
/// (one byte: the attempt number), sent by the endpoint-dependent side.
pub(crate) const PUNCH: Protocol = Protocol::from_static("kith/punch/1");

/// Probe rounds right after a connection starts or a network changes.
const FAST_ROUND: Duration = Duration::from_millis(150);
/// How many fast rounds before probing slows down to [`SLOW_ROUND`].
const FAST_ROUNDS: u32 = 20;
/// Probe rounds afterwards (they also keep a direct path confirmed).
const SLOW_ROUND: Duration = Duration::from_secs(2);
/// Longest wait for the stream that carries a `kith/paths/1` message.
const SEND_PATHS_TIMEOUT: Duration = Duration::from_secs(5);

/// What hole punching needs from the endpoint, and nothing more. The endpoint implements
/// it; this module never reaches into the endpoint itself.
pub(crate) trait PunchHost: Send + Sync + 'static {
    /// Our node id (it names the sender of our `kith/paths/1` messages).
    fn node_id(&self) -> NodeId;
    /// Addresses to offer the peer, reflexive ones first, and how many are reflexive.
    fn candidates(&self) -> (Vec<SocketAddr>, usize);
    /// The NAT in front of our IPv4 socket as known now.
    fn nat_now(&self) -> NatKind;
    /// The path socket and its path table whose synthetic block `mapped` (a relayed
    /// connection's remote address) is in, if any.
    fn path_for(&self, mapped: &SocketAddr) -> Option<(&Arc<PathSocket>, &Arc<PathTable>)>;
    /// The hole-punching configuration.
    fn hole_punch(&self) -> &HolePunchConfig;
    /// How long to wait before probing a new relayed connection's candidates.
    fn path_probe_delay(&self) -> Duration;
    /// Whether a port mapping on the gateway holds an external address for us.
    fn has_port_mapping(&self) -> bool;
    /// The bound address of our IPv4 socket.
    fn v4_local(&self) -> Option<SocketAddr>;
    /// One birthday-probing attempt at a time per endpoint (it holds many sockets).
    fn birthday_slot(&self) -> &Semaphore;
}

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
async fn send_paths(host: &impl PunchHost, conn: &QuicConnection, key: [u8; 32]) {
    let sent = tokio::time::timeout(SEND_PATHS_TIMEOUT, async {
        let mut s = conn.inner.open_uni().await.ok()?;
        // Read the candidates once the stream is open: stream order is freshness order
        // (the peer ignores a message on an older stream than one it applied).
        let (candidates, reflexive) = host.candidates();
        let msg = PathsMsg {
            key,
            candidates,
            reflexive,
            nat: host.nat_now(),
        }
        .encode(host.node_id());
        s.write_all(&PATHS.header()).await.ok()?;
        s.write_all(&msg).await.ok()?;
        s.finish().ok()
    })
    .await;
    if !matches!(sent, Ok(Some(()))) {
        tracing::debug!("could not send path candidates");
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
pub(crate) fn start_paths<H: PunchHost>(host: &Arc<H>, conn: &Arc<QuicConnection>) {
    let remote = conn.inner.remote_address();
    let Some((socket, table)) = host.path_for(&remote) else {
        return;
    };
    let (table, socket) = (table.clone(), socket.clone());
    let host = host.clone();
    let conn = conn.clone();
    tokio::spawn(async move {
        let node = conn.remote;
        let my_key: [u8; 32] = rand::random();
        table.set_my_key(node, my_key);
        send_paths(&*host, &conn, my_key).await;
        let delay = host.path_probe_delay();
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
                let (host, conn) = (host.clone(), conn.clone());
                tokio::spawn(async move { send_paths(&*host, &conn, my_key).await });
            }
            let now = Instant::now();
            if table.expire(&node, now) {
                tracing::debug!(peer = %node.fmt_short(), "direct path lost; probing again");
                round = 0;
            }
            let direct = table.is_direct(&node);
            if was_direct && !direct {
                // Path loss: a birthday path needs a fresh attempt (its sockets are gone).
                maybe_birthday(&host, &conn, &table, &socket);
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
pub(crate) async fn handle_paths<H: PunchHost>(
    host: &Arc<H>,
    conn: &Arc<QuicConnection>,
    mut recv: QuicRecv,
) {
    let seq = recv.0.id().index().saturating_add(1);
    let mut buf = Vec::new();
    let limit = (32 + 1 + MAX_ADVERTISED * (1 + 255) + 2) as u64;
    if (&mut recv).take(limit).read_to_end(&mut buf).await.is_err() {
        return;
    }
    let Some((socket, table)) = host.path_for(&conn.inner.remote_address()) else {
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
    table.set_their_key(conn.remote, msg.key);
    let update = lock(&conn.punch.peer).replace(msg.clone()).is_some();
    if update {
        // A later message: the peer's network changed. What it advertised before (and
        // what we learned from its probes) is likely stale, and so may be our direct
        // path to it: probe its new candidates at the fast rate.
        tracing::debug!(peer = %conn.remote.fmt_short(), candidates = ?msg.candidates, "peer re-advertised its paths");
        table.replace_candidates(conn.remote, &msg.candidates, Instant::now());
        kick(conn, false);
    } else {
        table.add_candidates(conn.remote, &msg.candidates);
        conn.path_kick.notify_one();
    }
    maybe_birthday(host, conn, table, socket);
    if conn.punch.signal_early.swap(false, Ordering::AcqRel) {
        tracing::debug!(peer = %conn.remote.fmt_short(), "acting on the early birthday signal");
        spray_on_signal(host, conn, socket, table).await;
    }
}

/// Starts a birthday-probing attempt if the two NAT kinds call for one (and the attempt
/// budget allows), or records that both sides are endpoint-dependent.
fn maybe_birthday<H: PunchHost>(
    host: &Arc<H>,
    conn: &Arc<QuicConnection>,
    table: &Arc<PathTable>,
    socket: &Arc<PathSocket>,
) {
    let cfg = host.hole_punch();
    let Some(peer) = lock(&conn.punch.peer).clone() else {
        return;
    };
    let ours = host.nat_now();
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
    if host.has_port_mapping() {
        // The peer reaches our mapped address directly; no need to guess mappings.
        return;
    }
    if conn.punch.attempts.fetch_add(1, Ordering::AcqRel) >= cfg.birthday_attempts {
        return;
    }
    let targets = reflexive_v4(&peer);
    let (host, conn, table, socket) = (host.clone(), conn.clone(), table.clone(), socket.clone());
    tokio::spawn(async move {
        // Retry with fresh sockets (fresh mappings) while the budget allows.
        loop {
            birthday_hard(&host, &conn, &table, &socket, &targets).await;
            if table.is_direct(&conn.remote) || conn.inner.close_reason().is_some() {
                break;
            }
            let spent = conn.punch.attempts.fetch_add(1, Ordering::AcqRel);
            if spent >= host.hole_punch().birthday_attempts {
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
pub(crate) async fn handle_punch<H: PunchHost>(
    host: &Arc<H>,
    conn: &Arc<QuicConnection>,
    mut recv: QuicRecv,
) {
    let mut buf = Vec::new();
    if (&mut recv).take(1).read_to_end(&mut buf).await.is_err() || buf.len() != 1 {
        return;
    }
    let Some((socket, table)) = host.path_for(&conn.inner.remote_address()) else {
        return;
    };
    if lock(&conn.punch.peer).is_none() {
        // Its candidates are still on the way (another stream): spray once they are in.
        conn.punch.signal_early.store(true, Ordering::Release);
        tracing::info!(peer = %conn.remote.fmt_short(), "birthday signal before the peer's paths message");
        return;
    }
    spray_on_signal(host, conn, socket, table).await;
}

/// Sprays for the peer's birthday attempt, if we are the side that should and the
/// attempt budget allows.
async fn spray_on_signal<H: PunchHost>(
    host: &Arc<H>,
    conn: &Arc<QuicConnection>,
    socket: &Arc<PathSocket>,
    table: &Arc<PathTable>,
) {
    let cfg = host.hole_punch();
    let Some(peer) = lock(&conn.punch.peer).clone() else {
        return;
    };
    let ours = host.nat_now();
    if !cfg.birthday || table.is_direct(&conn.remote) {
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
    birthday_easy(host, conn, table, socket, &targets).await;
    finish_status(conn, table);
}

/// The endpoint-dependent side: open many sockets, send one probe from each to the
/// peer's reflexive addresses (each opens a NAT mapping the peer's probes may hit), and
/// serve them until a direct path is found or the window closes.
async fn birthday_hard<H: PunchHost>(
    host: &Arc<H>,
    conn: &Arc<QuicConnection>,
    table: &Arc<PathTable>,
    socket: &Arc<PathSocket>,
    targets: &[SocketAddr],
) {
    let cfg = host.hole_punch();
    let node = conn.remote;
    let Some(local_ip) = host.v4_local().map(|a| a.ip()) else {
        return;
    };
    if targets.is_empty() {
        return;
    }
    // One attempt at a time per endpoint bounds the sockets we hold.
    let Ok(Ok(_permit)) =
        tokio::time::timeout(cfg.birthday_window, host.birthday_slot().acquire()).await
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
async fn birthday_easy<H: PunchHost>(
    host: &Arc<H>,
    conn: &Arc<QuicConnection>,
    table: &Arc<PathTable>,
    socket: &Arc<PathSocket>,
    targets: &[SocketAddr],
) {
    let cfg = host.hole_punch();
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
}
