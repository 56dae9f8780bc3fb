//! Network changes and what we know of our own addresses: the reaction to a change
//! (direct paths in doubt, probers kicked, candidates sent again, one STUN round at a
//! time), its detection (the interface poll, a STUN answer or a trusted hello that moved,
//! rate-limited), STUN rounds and their background refresh, the NAT kind, the gateway
//! port mapping, and the candidates offered for hole punching.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;

use super::{Endpoint, Inner};
use crate::observe::Observer;
use crate::portmap::PortMapper;
use crate::punch_state::MAX_ADVERTISED;
use crate::stun::{NatKind, StunError};
use crate::sync::lock;

/// The longest a STUN round at bind or after a network change waits for the servers
/// (transmissions at 0, 0.5 and 1.5 s); the background refresh runs RFC 8489's whole
/// schedule.
const STUN_QUICK: std::time::Duration = std::time::Duration::from_secs(2);
/// Network changes detected automatically (a STUN server or a peer reports a new
/// address for us) are acted on at most once per this interval.
const AUTO_CHANGE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3);

/// Network-change bookkeeping.
#[derive(Default)]
pub(super) struct NetChange {
    /// When a network change was last acted on (rate limit of automatic detection).
    last: Mutex<Option<Instant>>,
    /// A network change's STUN round is running.
    busy: AtomicBool,
    /// Another network change arrived while a round was running.
    again: AtomicBool,
    /// Network changes acted on (for tests: `Endpoint::network_changes`).
    count: AtomicU64,
}

impl Inner {
    /// The NAT in front of the IPv4 socket as observations classify it now: from the
    /// STUN servers and the home relay, and from peers only where independent peers
    /// agree (see [`Observations`](crate::observe::Observations)).
    pub(super) fn nat_now(&self) -> NatKind {
        let Some(local) = self.v4_local() else {
            return NatKind::Unknown;
        };
        let reports: Vec<_> = lock(&self.observed)
            .classification_at(Instant::now())
            .into_iter()
            .filter(|(o, m)| o.is_ipv4() && m.is_ipv4())
            .collect();
        crate::stun::classify(local, &reports)
    }

    /// Addresses to offer a peer for hole punching, reflexive ones (what a trusted
    /// observer or agreeing independent peers observe for us) first, then bound
    /// addresses (unless
    /// [`HolePunchConfig::advertise_bound`](crate::HolePunchConfig::advertise_bound) is off); and how many are
    /// reflexive.
    pub(super) fn candidates(&self) -> (Vec<SocketAddr>, usize) {
        // A port mapping on the gateway is the most reliable public address.
        let mut out: Vec<SocketAddr> = self.mapped_addr().into_iter().collect();
        for seen in lock(&self.observed).accepted_at(Instant::now()) {
            if !out.contains(&seen) {
                out.push(seen);
            }
        }
        let reflexive = out.len();
        let bound = self.config.hole_punch.advertise_bound;
        for a in self
            .socks()
            .filter_map(|s| s.ep.local_addr().ok())
            .filter(|a| bound && !a.ip().is_unspecified())
        {
            if !out.contains(&a) {
                out.push(a);
            }
        }
        out.truncate(MAX_ADVERTISED);
        (out, reflexive.min(MAX_ADVERTISED))
    }

    /// Whether a port mapping on the gateway holds an external address for us.
    pub(super) fn has_port_mapping(&self) -> bool {
        self.mapped_addr().is_some()
    }

    /// The external address the gateway maps to the IPv4 socket, if port mapping holds one.
    fn mapped_addr(&self) -> Option<SocketAddr> {
        lock(&self.portmap).as_ref().and_then(|m| m.external())
    }

    /// This host's network changed: direct paths must be confirmed again soon (or fall
    /// back to the relay), probers go back to fast rounds and every relayed connection
    /// sends its candidates to the peer anew; the STUN servers are asked again, and if
    /// that changes the candidates they are sent once more.
    fn network_changed(self: &Arc<Self>, why: &'static str) {
        if self.closing.load(Ordering::Acquire) {
            return;
        }
        tracing::info!(why, "network changed: probing paths again");
        self.net.count.fetch_add(1, Ordering::AcqRel);
        *lock(&self.net.last) = Some(Instant::now());
        let now = Instant::now();
        for s in self.socks() {
            s.table.network_changed(now);
        }
        // The gateway (or its external address) may be new: ask it again now.
        if let Some(pm) = lock(&self.portmap).as_ref() {
            pm.refresh();
        }
        // Re-advertise at once with what is known now (a peer's new hello may already
        // name the new address), and again after STUN if that changed the candidates.
        for c in self.slots.path_connections() {
            crate::punch::kick(&c, true);
        }
        // One STUN round at a time; a change during a round asks for another one.
        self.net.again.store(true, Ordering::Release);
        if self.net.busy.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = self.clone();
        tokio::spawn(async move {
            loop {
                inner.net.again.store(false, Ordering::Release);
                let before = inner.candidates();
                inner.stun_round(true, Some(STUN_QUICK)).await;
                if inner.candidates() != before {
                    for c in inner.slots.path_connections() {
                        crate::punch::kick(&c, true);
                    }
                }
                if inner.net.again.load(Ordering::Acquire) {
                    continue;
                }
                inner.net.busy.store(false, Ordering::Release);
                // A change between the check and the release found us busy: take it on,
                // unless a new round already did.
                if !inner.net.again.load(Ordering::Acquire)
                    || inner.net.busy.swap(true, Ordering::AcqRel)
                {
                    break;
                }
            }
        });
    }

    /// A network change detected from outside (a new address reported for us), acted on
    /// at most once per [`AUTO_CHANGE_INTERVAL`].
    pub(super) fn maybe_network_changed(self: &Arc<Self>, why: &'static str) {
        let recent = lock(&self.net.last).is_some_and(|t| t.elapsed() < AUTO_CHANGE_INTERVAL);
        if recent {
            tracing::debug!(why, "network change ignored (rate limit)");
            return;
        }
        self.network_changed(why);
    }

    /// Asks a STUN server which address it sees for our socket of its family and records
    /// the answer; also returns whether it differs from the server's previous answer.
    /// Retransmits as RFC 8489 §6.2.1 says (0, 0.5, 1.5, 3.5 … 31.5 s, failing at
    /// 39.5 s), or gives up earlier at `limit` (bind and network changes wait at most
    /// [`STUN_QUICK`]; the background refresh runs the whole schedule).
    async fn stun(
        &self,
        server: SocketAddr,
        limit: Option<std::time::Duration>,
    ) -> Result<(SocketAddr, bool), StunError> {
        let sock = match server {
            SocketAddr::V4(_) => self.v4.as_ref(),
            SocketAddr::V6(_) => self.v6.as_ref(),
        }
        .ok_or(StunError::NoSocket)?;
        let tx: [u8; 12] = rand::random();
        let mut rx = sock.table.stun_wait(tx).ok_or(StunError::TimedOut)?;
        let request = crate::stun::binding_request(tx);
        let start = Instant::now();
        let give_up = limit.map(|l| start + l);
        let mut schedule = crate::stun::Retransmit::rfc8489(start);
        loop {
            let now = Instant::now();
            if schedule.failed(now) || give_up.is_some_and(|g| now >= g) {
                return Err(StunError::TimedOut);
            }
            if schedule.poll_transmit(now) {
                // Bounded: a socket that stays unwritable costs this transmission only.
                let send = sock.socket.send_raw_waiting(server, &request);
                let _ = tokio::time::timeout(std::time::Duration::from_millis(100), send).await;
            }
            let wake = schedule.poll_timeout();
            let wake = give_up.map_or(wake, |g| wake.min(g));
            match tokio::time::timeout_at(wake.into(), &mut rx).await {
                Ok(Ok(resp)) => {
                    let mapped = crate::stun::parse_binding_response(&resp, &tx)?;
                    let outcome = lock(&self.observed).report(
                        Instant::now(),
                        Observer::Server(server),
                        server,
                        true,
                        mapped,
                    );
                    return Ok((mapped, outcome.network_changed));
                }
                Ok(Err(_)) => return Err(StunError::TimedOut),
                Err(_) => continue,
            }
        }
    }

    /// Asks every configured STUN server once, concurrently (each at most `limit`, or
    /// the whole RFC 8489 schedule). After a network change (`after_change`), a server
    /// that no longer answers loses its old answer (it is likely stale); otherwise an
    /// answer that moved is itself a network change.
    async fn stun_round(self: &Arc<Self>, after_change: bool, limit: Option<std::time::Duration>) {
        let servers = self.config.stun_servers.clone();
        let asks = servers.iter().map(|s| self.stun(*s, limit));
        let mut moved = false;
        for (server, res) in servers
            .iter()
            .zip(futures_util::future::join_all(asks).await)
        {
            match res {
                Ok((mapped, changed)) => {
                    tracing::debug!(%server, %mapped, changed, "STUN");
                    moved |= changed;
                }
                Err(e) => {
                    tracing::debug!(%server, error = %e, "STUN failed");
                    if after_change {
                        lock(&self.observed).forget(&Observer::Server(*server));
                    }
                }
            }
        }
        if moved && !after_change {
            self.maybe_network_changed("a STUN server reports a new address");
        }
    }

    /// Starts the gateway port mapping of the IPv4 socket, if
    /// `EndpointConfig::port_mapping` is set.
    pub(super) fn start_port_mapping(&self) {
        if let Some(pm) = self.config.port_mapping.clone() {
            let v4 = self.v4_local();
            if let Some(local) = v4 {
                let mapper = PortMapper::start(pm, local);
                *lock(&self.portmap) = Some(mapper);
            }
        }
    }

    /// With STUN servers configured: a first round before bind returns, then the
    /// background refresh.
    pub(super) async fn start_stun(self: &Arc<Self>) {
        if !self.config.stun_servers.is_empty() {
            // The first round before bind returns, so the first connections already
            // carry reflexive candidates and a NAT kind; then refresh in the background.
            self.stun_round(false, Some(STUN_QUICK)).await;
            // The task holds `Inner` weakly, like the interface poll: it never keeps the
            // endpoint open (nor closes it by dropping the last handle).
            let weak = Arc::downgrade(self);
            let every = self
                .config
                .hole_punch
                .stun_refresh
                .max(std::time::Duration::from_secs(1));
            tokio::spawn(async move {
                // While the NAT kind is unknown (servers unanswered, lossy links), ask
                // again soon: 1 s, then doubling up to `every`.
                let mut unknown_wait = std::time::Duration::from_secs(1);
                loop {
                    let wait = match weak.upgrade() {
                        Some(inner) if inner.nat_now() == NatKind::Unknown => {
                            let w = unknown_wait.min(every);
                            unknown_wait = (unknown_wait * 2).min(every);
                            w
                        }
                        Some(_) => {
                            unknown_wait = std::time::Duration::from_secs(1);
                            every
                        }
                        None => return,
                    };
                    tokio::time::sleep(wait).await;
                    let Some(inner) = weak.upgrade() else { return };
                    if inner.closing.load(Ordering::Acquire) {
                        return;
                    }
                    inner.stun_round(false, None).await;
                }
            });
        }
    }

    /// Starts the interface poll (`HolePunchConfig::network_poll`), if configured.
    pub(super) fn start_interface_poll(self: &Arc<Self>) {
        if let Some(every) = self.config.hole_punch.network_poll {
            let every = every.max(std::time::Duration::from_secs(1));
            tokio::spawn(poll_interfaces(Arc::downgrade(self), every));
        }
    }
}

impl Endpoint {
    /// The candidates offered for hole punching and how many are reflexive (for the
    /// crate's tests).
    #[cfg(test)]
    pub(crate) fn candidates(&self) -> (Vec<SocketAddr>, usize) {
        self.inner().candidates()
    }

    /// The gateway port mapping of the IPv4 socket, when
    /// [`EndpointConfig::port_mapping`](crate::EndpointConfig::port_mapping) is on and a
    /// mapping is held.
    pub fn port_mapping(&self) -> Option<crate::portmap::Mapping> {
        lock(&self.inner().portmap)
            .as_ref()
            .and_then(|m| m.mapping())
    }

    /// A receiver that sees every change of the port mapping (`None` when
    /// [`EndpointConfig::port_mapping`](crate::EndpointConfig::port_mapping) is off), e.g.
    /// to republish this node's address.
    pub fn watch_port_mapping(&self) -> Option<watch::Receiver<Option<crate::portmap::Mapping>>> {
        lock(&self.inner().portmap).as_ref().map(|m| m.watch())
    }

    /// Asks a STUN server (RFC 8489 Binding) which address it sees for this endpoint's
    /// socket of the server's address family: the mapping any peer reaching that socket
    /// from outside sees. Retransmits as RFC 8489 says (0, 0.5, 1.5, 3.5 … 31.5 s) and
    /// fails with [`StunError::TimedOut`] after 39.5 s without an answer.
    pub async fn stun(&self, server: SocketAddr) -> Result<SocketAddr, StunError> {
        self.inner()
            .stun(server, None)
            .await
            .map(|(mapped, _)| mapped)
    }

    /// Classifies the NAT in front of the IPv4 socket by asking several STUN servers
    /// (at least two are needed to tell endpoint-independent from dependent mappings).
    pub async fn nat_kind(&self, servers: &[SocketAddr]) -> NatKind {
        let Some(local) = self.inner().v4_local() else {
            return NatKind::Unknown;
        };
        let v4: Vec<SocketAddr> = servers.iter().copied().filter(|s| s.is_ipv4()).collect();
        let answers = futures_util::future::join_all(v4.iter().map(|s| self.stun(*s))).await;
        let reports: Vec<_> = v4
            .iter()
            .zip(answers)
            .filter_map(|(s, a)| a.ok().map(|m| (*s, m)))
            .collect();
        crate::stun::classify(local, &reports)
    }

    /// The NAT in front of the IPv4 socket as known now, from the configured STUN
    /// servers' answers
    /// ([`EndpointConfig::stun_servers`](crate::EndpointConfig::stun_servers),
    /// [`stun`](Self::stun)) and the addresses peers reached at a real address observe
    /// (at least two observers at different addresses are needed, otherwise
    /// [`NatKind::Unknown`]).
    pub fn nat(&self) -> NatKind {
        self.inner().nat_now()
    }

    /// Tells the endpoint that the host's network changed (an interface came or went,
    /// an address changed: mobile platforms report such events). Relayed connections
    /// then find a direct path again quickly instead of waiting for the old one to time
    /// out: every direct path must be confirmed again within about 2 s or falls back to
    /// the relay, probing restarts at the fast rate, the STUN servers are asked again,
    /// and each relayed connection sends its fresh candidates to the peer.
    ///
    /// The endpoint also detects changes itself: it checks the interface addresses every
    /// [`HolePunchConfig::network_poll`](crate::HolePunchConfig::network_poll), and a
    /// STUN server or a peer reporting a new public address for us counts as a change.
    /// Calling this more often than needed costs a few probes and one small message per
    /// relayed connection.
    pub fn network_changed(&self) {
        self.inner().network_changed("reported by the application");
    }

    /// How many network changes the endpoint acted on (reported by the application or
    /// detected). Only for tests.
    #[doc(hidden)]
    pub fn network_changes(&self) -> u64 {
        self.inner().net.count.load(Ordering::Acquire)
    }
}

/// The host's interface addresses (loopback left out), sorted; `None` if they cannot be
/// read.
fn interface_addrs() -> Option<Vec<IpAddr>> {
    let mut out: Vec<IpAddr> = if_addrs::get_if_addrs()
        .ok()?
        .into_iter()
        .filter(|i| !i.is_loopback())
        .map(|i| i.ip())
        .collect();
    out.sort();
    out.dedup();
    Some(out)
}

/// Checks the interface addresses every `every` while the endpoint lives; a change is a
/// network change.
async fn poll_interfaces(inner: std::sync::Weak<Inner>, every: std::time::Duration) {
    let read = || async {
        tokio::task::spawn_blocking(interface_addrs)
            .await
            .ok()
            .flatten()
    };
    let mut known = read().await;
    loop {
        tokio::time::sleep(every).await;
        let now = read().await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.closing.load(Ordering::Acquire) {
            return;
        }
        if now.is_some() && known.is_some() && now != known {
            tracing::debug!(before = ?known, after = ?now, "interface addresses changed");
            inner.network_changed("the interface addresses changed");
        }
        if now.is_some() {
            known = now;
        }
    }
}
