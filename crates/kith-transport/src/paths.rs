//! Paths under QUIC: a UDP socket wrapper that gives each relayed peer a stable
//! address and picks, per datagram, the path it takes (a validated direct UDP address or
//! a relay), so a connection that starts relayed moves to a direct path without QUIC
//! noticing: no migration, no reconnect, no stream broken.
//!
//! * **Mapped addresses.** A peer reached through a relay gets a synthetic address from
//!   a reserved block (`240.107.0.0/16` for IPv4 sockets, `fd6b:6974:6800::/48` for IPv6).
//!   quinn only ever sees that address. A datagram to it goes to the peer's validated
//!   direct address if it has one, otherwise through the relay. Nothing is ever sent to a
//!   synthetic address on the wire: an unknown one is dropped.
//! * **Probes** share the UDP socket with QUIC and are told apart by their first byte
//!   (0x00; QUIC packets always have the fixed bit 0x40 set, as this endpoint disables
//!   QUIC-bit greasing). A probe carries a random transaction id and a 16-byte BLAKE3
//!   keyed MAC under a key the *receiver* chose and sent to the sender over their
//!   encrypted connection. A direct path is adopted only when a pong answers one of our
//!   own pings: a forged probe fails the MAC, a replayed pong matches no outstanding
//!   ping, so neither can steer a path.
//! * **Receiving**: datagrams from a peer's validated direct address are rewritten to the
//!   peer's mapped address; datagrams from relays arrive with the sender's mapped address.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kith_core::NodeId;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::watch;

use crate::relay::RelayClient;
use crate::sync::lock;

/// Size of a probe datagram.
pub(crate) const PROBE_LEN: usize = 1 + 4 + 1 + 12 + 32 + 16;
const PROBE_MAGIC: &[u8; 4] = b"kPRB";
const PING: u8 = 1;
const PONG: u8 = 2;
/// Most direct candidates kept per peer.
const MAX_CANDIDATES: usize = 8;
/// Most STUN transactions in flight per socket.
const MAX_STUN_IN_FLIGHT: usize = 64;
/// Most addresses labelled as some peer's on receive.
const MAX_KNOWN_ADDRS: usize = 4096;
/// Recent ping tx ids remembered per peer to drop replays.
const MAX_SEEN_PINGS: usize = 1024;
/// Most outstanding pings per peer.
const MAX_PENDING_PINGS: usize = 64;
/// Relayed packets buffered for quinn before new ones are dropped.
const RELAY_QUEUE: usize = 1024;
/// Most outstanding birthday-probing pings per peer (see [`PathTable::spray_pings`]).
pub(crate) const MAX_SPRAY: usize = 8192;
/// A direct path not confirmed by a pong for this long is abandoned.
pub(crate) const PATH_TIMEOUT: Duration = Duration::from_secs(6);
/// After a network change, a direct path must be confirmed again by a pong to a ping
/// sent since the change within this long, or it is abandoned (without waiting for
/// [`PATH_TIMEOUT`]).
pub(crate) const REPROBE_GRACE: Duration = Duration::from_secs(2);
/// Amplification bound (issue 14; docs/transport.md "Amplification bound"): pings sent
/// on our own initiative to one address of a peer that never answered, before we stop
/// (until it answers, our network changes, or the peer re-advertises its candidates).
pub(crate) const MAX_UNANSWERED_PINGS: u32 = 32;
/// Per peer, pings to addresses that never answered, as a token bucket: at most this
/// many at once ([`MAX_CANDIDATES`] × [`MAX_UNANSWERED_PINGS`])…
pub(crate) const UNANSWERED_BURST: f64 = (MAX_CANDIDATES as u32 * MAX_UNANSWERED_PINGS) as f64;
/// …and afterwards this many per second.
pub(crate) const UNANSWERED_PER_SEC: f64 = 1.0;
/// Addresses per peer whose ping count (or answer) is remembered.
const MAX_TRACKED_ADDRS: usize = 64;

/// The path a connection currently uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// Straight to this UDP address.
    Direct(SocketAddr),
    /// Through the relay with this node id.
    Relayed(NodeId),
    /// No usable path right now.
    None,
}

/// A decoded probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Probe {
    pub(crate) pong: bool,
    pub(crate) tx: [u8; 12],
    pub(crate) sender: NodeId,
}

fn mac(key: &[u8; 32], body: &[u8]) -> [u8; 16] {
    let h = blake3::keyed_hash(key, body);
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.as_bytes()[..16]);
    out
}

/// Encodes a probe authenticated under `key` (the receiver's key).
pub(crate) fn encode_probe(p: &Probe, key: &[u8; 32]) -> [u8; PROBE_LEN] {
    let mut out = [0u8; PROBE_LEN];
    out[0] = 0;
    out[1..5].copy_from_slice(PROBE_MAGIC);
    out[5] = if p.pong { PONG } else { PING };
    out[6..18].copy_from_slice(&p.tx);
    out[18..50].copy_from_slice(p.sender.as_bytes());
    let m = mac(key, &out[..50]);
    out[50..].copy_from_slice(&m);
    out
}

/// True if `data` looks like a probe (it may still fail authentication).
pub(crate) fn is_probe(data: &[u8]) -> bool {
    data.len() == PROBE_LEN && data[0] == 0 && &data[1..5] == PROBE_MAGIC
}

/// Parses a probe's unauthenticated fields; the MAC is checked by [`verify_probe`].
pub(crate) fn parse_probe(data: &[u8]) -> Option<Probe> {
    if !is_probe(data) {
        return None;
    }
    let pong = match data[5] {
        PING => false,
        PONG => true,
        _ => return None,
    };
    let mut tx = [0u8; 12];
    tx.copy_from_slice(&data[6..18]);
    let sender = NodeId::try_from_slice(&data[18..50]).ok()?;
    Some(Probe { pong, tx, sender })
}

/// Checks the MAC of a probe against `key` in constant time.
pub(crate) fn verify_probe(data: &[u8], key: &[u8; 32]) -> bool {
    if data.len() != PROBE_LEN {
        return false;
    }
    let want = blake3::keyed_hash(key, &data[..50]);
    // Compare through blake3::Hash's constant-time equality on a re-hash of both sides.
    let mut got = [0u8; 32];
    got[..16].copy_from_slice(&data[50..]);
    let mut exp = [0u8; 32];
    exp[..16].copy_from_slice(&want.as_bytes()[..16]);
    blake3::Hash::from(got) == blake3::Hash::from(exp)
}

/// The local socket a probe or a direct path uses: `None` is the endpoint's own socket,
/// `Some` one of the extra sockets a birthday-probing attempt opened for this peer.
pub(crate) type Via = Option<Arc<tokio::net::UdpSocket>>;

/// A probe to send: from which socket, to where, and the datagram.
pub(crate) type Outgoing = (Via, SocketAddr, [u8; PROBE_LEN]);

fn same_via(a: &Via, b: &Via) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(x), Some(y)) => Arc::ptr_eq(x, y),
        _ => false,
    }
}

struct DirectPath {
    addr: SocketAddr,
    via: Via,
    rtt: Duration,
    confirmed: Instant,
    /// Set by a network change (ours or the peer's): the path must be confirmed by a
    /// ping sent after this instant, within [`REPROBE_GRACE`].
    suspect: Option<Instant>,
}

/// A ping waiting for its pong.
struct Pending {
    addr: SocketAddr,
    via: Via,
    at: Instant,
}

struct NodePaths {
    mapped: SocketAddr,
    candidates: Vec<SocketAddr>,
    direct: Option<DirectPath>,
    relay: Option<RelayClient>,
    /// Key the peer authenticates probes to us with (we chose it).
    my_key: Option<[u8; 32]>,
    /// Key we authenticate probes to the peer with (it chose it).
    their_key: Option<[u8; 32]>,
    pending: HashMap<[u8; 12], Pending>,
    /// Birthday-probing pings (many addresses or sockets at once), kept apart so they
    /// cannot crowd out the regular ones; at most [`MAX_SPRAY`].
    spray: HashMap<[u8; 12], Pending>,
    /// Extra sockets of a birthday-probing attempt (the endpoint-dependent side).
    extra: Vec<Arc<tokio::net::UdpSocket>>,
    path_tx: watch::Sender<PathKind>,
    /// Pings sent, for reporting (for example the probes a hole punch spent).
    pings_sent: u64,
    /// Of those, birthday-probing pings.
    sprayed: u64,
    /// Whether this side probes yet (it may hold off; see `path_probe_delay`).
    probing: bool,
    /// Tx ids of the peer's recent pings (replay detection), oldest first.
    seen_order: VecDeque<[u8; 12]>,
    seen_pings: std::collections::HashSet<[u8; 12]>,
    /// Pings sent on our own initiative to each address that has not answered yet.
    tried: HashMap<SocketAddr, u32>,
    /// Addresses that answered one of our pings (the peer proved it is there): pinged
    /// without the amplification bound.
    answered: std::collections::HashSet<SocketAddr>,
    /// Token bucket of pings to addresses that never answered, and when it was filled.
    unanswered_tokens: f64,
    tokens_at: Option<Instant>,
}

impl NodePaths {
    /// Whether the amplification bound lets us ping `addr` now; counts the ping if so.
    /// An address that answered before is always allowed.
    fn may_ping(&mut self, addr: SocketAddr, now: Instant) -> bool {
        if self.answered.contains(&addr) {
            return true;
        }
        let since = self
            .tokens_at
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        self.tokens_at = Some(now);
        self.unanswered_tokens = (self.unanswered_tokens
            + since.as_secs_f64() * UNANSWERED_PER_SEC)
            .min(UNANSWERED_BURST);
        if self.unanswered_tokens < 1.0 {
            return false;
        }
        if !self.tried.contains_key(&addr) && self.tried.len() >= MAX_TRACKED_ADDRS {
            // Make room (the bucket still bounds what the forgotten address gets).
            let old = self.tried.keys().next().copied();
            if let Some(a) = old {
                self.tried.remove(&a);
            }
        }
        let n = self.tried.entry(addr).or_insert(0);
        if *n >= MAX_UNANSWERED_PINGS {
            return false;
        }
        *n += 1;
        self.unanswered_tokens -= 1.0;
        true
    }

    /// `addr` answered one of our pings.
    fn answered_from(&mut self, addr: SocketAddr) {
        self.tried.remove(&addr);
        if self.answered.len() >= MAX_TRACKED_ADDRS {
            self.answered.clear();
        }
        self.answered.insert(addr);
    }

    /// The direct path datagrams take: none while the path is in doubt after a network
    /// change and a relay can carry them (so what is sent then, the new candidates
    /// among it, is not lost on a dead path); the doubtful path if there is no relay.
    fn usable_direct(&self) -> Option<&DirectPath> {
        self.direct
            .as_ref()
            .filter(|d| d.suspect.is_none() || self.relay.is_none())
    }

    fn kind(&self) -> PathKind {
        match (self.usable_direct(), &self.relay) {
            (Some(d), _) => PathKind::Direct(d.addr),
            (None, Some(r)) => PathKind::Relayed(r.relay()),
            (None, None) => PathKind::None,
        }
    }

    fn publish(&self) {
        let k = self.kind();
        self.path_tx.send_if_modified(|cur| {
            if *cur != k {
                *cur = k;
                true
            } else {
                false
            }
        });
    }
}

#[derive(Default)]
struct TableState {
    next: u32,
    by_mapped: HashMap<SocketAddr, NodeId>,
    nodes: HashMap<NodeId, NodePaths>,
    /// Addresses a peer proved (by an authenticated probe) it sends from.
    by_direct: HashMap<SocketAddr, NodeId>,
    relay_queue: VecDeque<(SocketAddr, Bytes)>,
    relay_waker: Option<Waker>,
    /// Probes to send, queued by the receive path (which cannot send itself).
    outbox: VecDeque<Outgoing>,
    /// STUN transactions waiting for a response, by transaction id.
    stun_waiters: HashMap<[u8; 12], tokio::sync::oneshot::Sender<Bytes>>,
}

/// Shared path state of one socket: mapped addresses, candidates, validated paths.
pub(crate) struct PathTable {
    local: NodeId,
    v6: bool,
    state: Mutex<TableState>,
}

impl fmt::Debug for PathTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PathTable")
            .field("local", &self.local)
            .finish()
    }
}

/// True if `addr` lies in the synthetic block mapped addresses come from.
pub(crate) fn is_synthetic(addr: &SocketAddr) -> bool {
    match addr.ip() {
        IpAddr::V4(ip) => ip.octets()[0] == 240 && ip.octets()[1] == 107,
        IpAddr::V6(ip) => ip.segments()[..3] == [0xfd6b, 0x6974, 0x6800],
    }
}

/// Appends the usable addresses of `new` to `list`, without duplicates, up to
/// [`MAX_CANDIDATES`].
fn push_candidates(list: &mut Vec<SocketAddr>, new: &[SocketAddr]) {
    for c in new {
        if list.len() >= MAX_CANDIDATES {
            break;
        }
        if !list.contains(c) && !is_synthetic(c) {
            list.push(*c);
        }
    }
}

impl PathTable {
    pub(crate) fn new(local: NodeId, v6: bool) -> Arc<Self> {
        Arc::new(Self {
            local,
            v6,
            state: Mutex::new(TableState::default()),
        })
    }

    fn alloc(&self, st: &mut TableState, node: NodeId) -> SocketAddr {
        if let Some(p) = st.nodes.get(&node) {
            return p.mapped;
        }
        st.next = st.next.wrapping_add(1);
        let n = st.next;
        let ip: IpAddr = if self.v6 {
            Ipv6Addr::new(0xfd6b, 0x6974, 0x6800, 0, 0, 0, (n >> 16) as u16, n as u16).into()
        } else {
            Ipv4Addr::new(240, 107, (n >> 8) as u8, n as u8).into()
        };
        // Port 1..=65535 keeps quinn's address checks happy; the pair is unique enough
        // for 2^24 peers per socket.
        let port = ((n >> 16) as u16).max(1);
        let mapped = SocketAddr::new(ip, port);
        st.by_mapped.insert(mapped, node);
        st.nodes.insert(
            node,
            NodePaths {
                mapped,
                candidates: Vec::new(),
                direct: None,
                relay: None,
                my_key: None,
                their_key: None,
                pending: HashMap::new(),
                spray: HashMap::new(),
                extra: Vec::new(),
                path_tx: watch::channel(PathKind::None).0,
                pings_sent: 0,
                sprayed: 0,
                probing: false,
                seen_order: VecDeque::new(),
                seen_pings: std::collections::HashSet::new(),
                tried: HashMap::new(),
                answered: std::collections::HashSet::new(),
                unanswered_tokens: UNANSWERED_BURST,
                tokens_at: None,
            },
        );
        mapped
    }

    /// The mapped address of `node`, creating it with `relay` and `candidates`.
    pub(crate) fn map(
        &self,
        node: NodeId,
        relay: Option<RelayClient>,
        candidates: &[SocketAddr],
    ) -> SocketAddr {
        let mut st = lock(&self.state);
        let mapped = self.alloc(&mut st, node);
        if let Some(p) = st.nodes.get_mut(&node) {
            if relay.is_some() {
                p.relay = relay;
            }
            push_candidates(&mut p.candidates, candidates);
            p.publish();
        }
        mapped
    }

    /// The node behind a mapped address.
    pub(crate) fn node_of(&self, mapped: &SocketAddr) -> Option<NodeId> {
        lock(&self.state).by_mapped.get(mapped).copied()
    }

    /// Current path to `node` and a watch of its changes.
    pub(crate) fn path(&self, node: &NodeId) -> Option<watch::Receiver<PathKind>> {
        lock(&self.state)
            .nodes
            .get(node)
            .map(|p| p.path_tx.subscribe())
    }

    /// Pings sent to `node` so far.
    pub(crate) fn pings_sent(&self, node: &NodeId) -> u64 {
        lock(&self.state)
            .nodes
            .get(node)
            .map_or(0, |p| p.pings_sent)
    }

    /// Birthday-probing pings sent to `node` so far.
    pub(crate) fn sprayed(&self, node: &NodeId) -> u64 {
        lock(&self.state).nodes.get(node).map_or(0, |p| p.sprayed)
    }

    /// Sets the key the peer must authenticate probes to us with (we send it to the peer).
    pub(crate) fn set_my_key(&self, node: NodeId, key: [u8; 32]) {
        if let Some(p) = lock(&self.state).nodes.get_mut(&node) {
            p.my_key = Some(key);
        }
    }

    /// Sets the key we authenticate probes to the peer with (the peer sent it).
    pub(crate) fn set_their_key(&self, node: NodeId, key: [u8; 32]) {
        if let Some(p) = lock(&self.state).nodes.get_mut(&node) {
            p.their_key = Some(key);
        }
    }

    /// Lets this side start probing `node` (pings, and pinging back new addresses).
    pub(crate) fn enable_probing(&self, node: &NodeId) {
        if let Some(p) = lock(&self.state).nodes.get_mut(node) {
            p.probing = true;
        }
    }

    /// Adds candidates the peer advertised.
    pub(crate) fn add_candidates(&self, node: NodeId, candidates: &[SocketAddr]) {
        if let Some(p) = lock(&self.state).nodes.get_mut(&node) {
            push_candidates(&mut p.candidates, candidates);
        }
    }

    /// The peer's network changed (it advertised anew): its candidates become exactly
    /// `candidates` (addresses it advertised or we learned before are likely stale and
    /// would only waste probes), and the direct path must be confirmed again soon.
    pub(crate) fn replace_candidates(&self, node: NodeId, candidates: &[SocketAddr], now: Instant) {
        if let Some(p) = lock(&self.state).nodes.get_mut(&node) {
            p.candidates.clear();
            push_candidates(&mut p.candidates, candidates);
            // Advertised anew: each gets a fresh count (the bucket still bounds them).
            p.tried.clear();
            if let Some(d) = &mut p.direct {
                d.suspect = Some(now);
            }
            p.publish();
        }
    }

    /// Our network changed: every direct path must be confirmed again by a pong to a
    /// ping sent from now on, within [`REPROBE_GRACE`], or it is dropped; meanwhile the
    /// relay carries the connection (see [`NodePaths::usable_direct`]).
    pub(crate) fn network_changed(&self, now: Instant) {
        for p in lock(&self.state).nodes.values_mut() {
            if let Some(d) = &mut p.direct {
                d.suspect = Some(now);
            }
            // From our new network, addresses that never answered may answer.
            p.tried.clear();
            p.publish();
        }
    }

    /// Builds pings to every candidate of `node` (and the current direct path, to keep
    /// it confirmed). Returns them for the caller to send.
    pub(crate) fn make_pings(&self, node: &NodeId, now: Instant) -> Vec<Outgoing> {
        let mut st = lock(&self.state);
        let Some(p) = st.nodes.get_mut(node) else {
            return Vec::new();
        };
        let Some(key) = p.their_key else {
            return Vec::new();
        };
        // Forget pings nobody answered.
        p.pending
            .retain(|_, q| now.duration_since(q.at) < PATH_TIMEOUT);
        p.spray
            .retain(|_, q| now.duration_since(q.at) < PATH_TIMEOUT);
        let mut targets: Vec<(Via, SocketAddr)> = p.candidates.iter().map(|c| (None, *c)).collect();
        if let Some(d) = &p.direct {
            if !targets
                .iter()
                .any(|(v, a)| *a == d.addr && same_via(v, &d.via))
            {
                targets.push((d.via.clone(), d.addr));
            }
        }
        let mut out = Vec::new();
        for (via, addr) in targets {
            if p.pending.len() >= MAX_PENDING_PINGS {
                break;
            }
            if !p.may_ping(addr, now) {
                continue;
            }
            let tx: [u8; 12] = rand::random();
            p.pending.insert(
                tx,
                Pending {
                    addr,
                    via: via.clone(),
                    at: now,
                },
            );
            p.pings_sent += 1;
            out.push((via, addr, self.ping(tx, &key)));
        }
        out
    }

    fn ping(&self, tx: [u8; 12], key: &[u8; 32]) -> [u8; PROBE_LEN] {
        encode_probe(
            &Probe {
                pong: false,
                tx,
                sender: self.local,
            },
            key,
        )
    }

    /// Builds birthday-probing pings to `node`: one from each `via` socket to each
    /// target (the endpoint-dependent side opening mappings), or from our own socket to
    /// many guessed addresses (the other side). Stops at [`MAX_SPRAY`] outstanding.
    pub(crate) fn spray_pings(
        &self,
        node: &NodeId,
        targets: &[(Via, SocketAddr)],
        now: Instant,
    ) -> Vec<Outgoing> {
        let mut st = lock(&self.state);
        let Some(p) = st.nodes.get_mut(node) else {
            return Vec::new();
        };
        let Some(key) = p.their_key else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(targets.len());
        for (via, addr) in targets {
            if p.spray.len() >= MAX_SPRAY {
                break;
            }
            let tx: [u8; 12] = rand::random();
            p.spray.insert(
                tx,
                Pending {
                    addr: *addr,
                    via: via.clone(),
                    at: now,
                },
            );
            p.pings_sent += 1;
            p.sprayed += 1;
            out.push((via.clone(), *addr, self.ping(tx, &key)));
        }
        out
    }

    /// Keeps `sockets` as `node`'s birthday-probing sockets (replacing earlier ones).
    pub(crate) fn set_extra_sockets(
        &self,
        node: &NodeId,
        sockets: Vec<Arc<tokio::net::UdpSocket>>,
    ) {
        if let Some(p) = lock(&self.state).nodes.get_mut(node) {
            p.extra = sockets;
        }
    }

    /// Ends a birthday-probing attempt: drops every extra socket but the one the direct
    /// path uses.
    pub(crate) fn keep_only_used_socket(&self, node: &NodeId) {
        if let Some(p) = lock(&self.state).nodes.get_mut(node) {
            let used = p.direct.as_ref().and_then(|d| d.via.clone());
            p.extra
                .retain(|s| used.as_ref().is_some_and(|u| Arc::ptr_eq(s, u)));
        }
    }

    /// Whether `sock` is still one of `node`'s extra sockets.
    pub(crate) fn uses_socket(&self, node: &NodeId, sock: &Arc<tokio::net::UdpSocket>) -> bool {
        lock(&self.state)
            .nodes
            .get(node)
            .is_some_and(|p| p.extra.iter().any(|s| Arc::ptr_eq(s, sock)))
    }

    /// Whether `node` has a direct path now.
    pub(crate) fn is_direct(&self, node: &NodeId) -> bool {
        lock(&self.state)
            .nodes
            .get(node)
            .is_some_and(|p| p.direct.is_some())
    }

    /// A datagram arrived on one of the birthday-probing sockets: a probe is handled as
    /// on the main socket (the answers are returned for the caller to send from `via`);
    /// a QUIC packet from an address a peer proved it sends from goes to quinn labelled
    /// with that peer's mapped address; anything else is dropped.
    pub(crate) fn on_extra_datagram(
        &self,
        via: &Arc<tokio::net::UdpSocket>,
        data: &[u8],
        from: SocketAddr,
        now: Instant,
    ) -> Vec<Outgoing> {
        if is_probe(data) {
            let local = via.local_addr().ok();
            let out = self
                .on_probe(data, from, now, Some(via.clone()))
                .unwrap_or_default();
            tracing::debug!(%from, ?local, answers = out.len(), "probe on a birthday socket");
            return out;
        }
        let mut st = lock(&self.state);
        let Some(mapped) = st
            .by_direct
            .get(&from)
            .and_then(|node| st.nodes.get(node))
            .map(|p| p.mapped)
        else {
            return Vec::new();
        };
        if st.relay_queue.len() < RELAY_QUEUE {
            st.relay_queue
                .push_back((mapped, Bytes::copy_from_slice(data)));
            if let Some(w) = st.relay_waker.take() {
                w.wake();
            }
        }
        Vec::new()
    }

    /// Drops a direct path that has not been confirmed recently (within [`PATH_TIMEOUT`],
    /// or within [`REPROBE_GRACE`] of a network change); returns true if the path fell
    /// back.
    pub(crate) fn expire(&self, node: &NodeId, now: Instant) -> bool {
        let mut st = lock(&self.state);
        let Some(p) = st.nodes.get_mut(node) else {
            return false;
        };
        if p.direct.as_ref().is_some_and(|d| {
            now.duration_since(d.confirmed) > PATH_TIMEOUT
                || d.suspect
                    .is_some_and(|s| now.saturating_duration_since(s) > REPROBE_GRACE)
        }) {
            p.direct = None;
            p.publish();
            return true;
        }
        false
    }

    /// Registers a STUN transaction; the response is delivered on the returned channel.
    /// `None` if too many are in flight.
    pub(crate) fn stun_wait(&self, tx: [u8; 12]) -> Option<tokio::sync::oneshot::Receiver<Bytes>> {
        let mut st = lock(&self.state);
        st.stun_waiters.retain(|_, w| !w.is_closed());
        if st.stun_waiters.len() >= MAX_STUN_IN_FLIGHT {
            return None;
        }
        let (w, r) = tokio::sync::oneshot::channel();
        st.stun_waiters.insert(tx, w);
        Some(r)
    }

    /// Forgets a peer (its connection ended).
    pub(crate) fn remove(&self, node: &NodeId) {
        let mut st = lock(&self.state);
        if let Some(p) = st.nodes.remove(node) {
            st.by_mapped.remove(&p.mapped);
            st.by_direct.retain(|_, n| n != node);
        }
    }

    /// Peers reached through `client`'s relay use `client` from now on (a new
    /// reservation on the same relay replaced a lost one).
    pub(crate) fn replace_relay(&self, client: &RelayClient) {
        let mut st = lock(&self.state);
        for p in st.nodes.values_mut() {
            if p.relay
                .as_ref()
                .is_some_and(|r| r.relay() == client.relay())
            {
                p.relay = Some(client.clone());
            }
        }
    }

    /// A packet arrived through a relay from `from`.
    pub(crate) fn on_relay_packet(&self, relay: &RelayClient, from: NodeId, packet: Bytes) {
        let mut st = lock(&self.state);
        let mapped = self.alloc(&mut st, from);
        if let Some(p) = st.nodes.get_mut(&from) {
            if p.relay.is_none() {
                p.relay = Some(relay.clone());
                p.publish();
            }
        }
        if st.relay_queue.len() >= RELAY_QUEUE {
            return;
        }
        st.relay_queue.push_back((mapped, packet));
        if let Some(w) = st.relay_waker.take() {
            w.wake();
        }
    }

    /// Handles a probe that arrived on `via` (see [`Via`]); returns the probes to send
    /// in answer (a pong, and a ping back to an address not yet validated), all from
    /// `via`.
    fn on_probe(
        &self,
        data: &[u8],
        from: SocketAddr,
        now: Instant,
        via: Via,
    ) -> Option<Vec<Outgoing>> {
        let probe = parse_probe(data)?;
        let mut st = lock(&self.state);
        let TableState {
            nodes, by_direct, ..
        } = &mut *st;
        let p = nodes.get_mut(&probe.sender)?;
        let key = p.my_key?;
        if !verify_probe(data, &key) {
            tracing::debug!(%from, "probe with a bad MAC dropped");
            return None;
        }
        // A ping's tx id is fresh every time: one seen before is a replay (an attacker
        // re-sending a captured ping must not make us answer it, nor add its address).
        if !probe.pong {
            if p.seen_pings.contains(&probe.tx) {
                tracing::debug!(%from, "replayed ping dropped");
                return None;
            }
            if p.seen_order.len() >= MAX_SEEN_PINGS {
                if let Some(old) = p.seen_order.pop_front() {
                    p.seen_pings.remove(&old);
                }
            }
            p.seen_order.push_back(probe.tx);
            p.seen_pings.insert(probe.tx);
        }
        // The peer proved it sends from `from` (a fresh ping, or a pong to our ping from
        // where we sent it, checked below): label what arrives from there as the peer's,
        // so quinn never sees the address change when either side moves paths.
        // (Receiving is safe to relabel: QUIC authenticates every packet. Where we
        // *send* changes only on a pong to our own ping, below.)
        let label = |by_direct: &mut HashMap<SocketAddr, NodeId>| {
            if by_direct.len() < MAX_KNOWN_ADDRS {
                by_direct.insert(from, probe.sender);
            }
        };
        if !probe.pong {
            label(by_direct);
        }
        if probe.pong {
            // Only an answer to one of our own pings, from the address we pinged and on
            // the socket we pinged from, counts.
            let Some(pending) = p.pending.get(&probe.tx).or_else(|| p.spray.get(&probe.tx)) else {
                tracing::debug!(%from, "pong answering no outstanding ping dropped");
                return None;
            };
            if pending.addr != from || !same_via(&pending.via, &via) {
                tracing::debug!(%from, pinged = %pending.addr, "pong from another address dropped");
                return None;
            }
            let sent = pending.at;
            label(by_direct);
            p.answered_from(from);
            p.pending.remove(&probe.tx);
            if p.spray.remove(&probe.tx).is_some() {
                tracing::debug!(%from, "birthday probe answered");
            }
            let rtt = now.duration_since(sent);
            let mut suspect = None;
            let better = match &p.direct {
                None => true,
                Some(d) if d.addr == from && same_via(&d.via, &via) => {
                    // Only a ping sent since the network change clears the doubt.
                    suspect = d.suspect.filter(|s| sent < *s);
                    true
                }
                Some(d) => {
                    d.suspect.is_some()
                        || rtt + Duration::from_millis(2) < d.rtt
                        || now.duration_since(d.confirmed) > PATH_TIMEOUT / 2
                }
            };
            if better {
                p.direct = Some(DirectPath {
                    addr: from,
                    via,
                    rtt,
                    confirmed: now,
                    suspect,
                });
                p.publish();
            }
            None
        } else {
            // Answer on the path the ping came from; that also opens our NAT towards it.
            let their = p.their_key?;
            if via.is_none() && p.candidates.len() < MAX_CANDIDATES && !p.candidates.contains(&from)
            {
                p.candidates.push(from);
            }
            let pong = Probe {
                pong: true,
                tx: probe.tx,
                sender: self.local,
            };
            let mut out = vec![(via.clone(), from, encode_probe(&pong, &their))];
            // Ping the address back at once (it may be a NAT mapping towards us that no
            // candidate named) rather than at the next probe round.
            let validated = p
                .direct
                .as_ref()
                .is_some_and(|d| d.addr == from && same_via(&d.via, &via));
            let outstanding = p
                .pending
                .values()
                .any(|q| q.addr == from && same_via(&q.via, &via));
            if p.probing && !validated && !outstanding && p.pending.len() < MAX_PENDING_PINGS {
                let tx: [u8; 12] = rand::random();
                p.pending.insert(
                    tx,
                    Pending {
                        addr: from,
                        via: via.clone(),
                        at: now,
                    },
                );
                p.pings_sent += 1;
                let ping = Probe {
                    pong: false,
                    tx,
                    sender: self.local,
                };
                out.push((via, from, encode_probe(&ping, &their)));
            }
            Some(out)
        }
    }
}

/// The socket quinn sees: the real UDP socket plus the path table.
pub(crate) struct PathSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    table: Arc<PathTable>,
}

impl fmt::Debug for PathSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PathSocket")
            .field("inner", &self.inner)
            .finish()
    }
}

/// A plain datagram to `to`, for sending on the real socket.
fn raw_transmit(to: SocketAddr, data: &[u8]) -> Transmit<'_> {
    Transmit {
        destination: to,
        ecn: None,
        contents: data,
        segment_size: None,
        src_ip: None,
    }
}

impl PathSocket {
    pub(crate) fn new(inner: Arc<dyn AsyncUdpSocket>, table: Arc<PathTable>) -> Self {
        Self { inner, table }
    }

    /// Sends a probe (or any raw datagram) on the real socket, best effort; false if the
    /// socket refused it (for example a full send buffer).
    pub(crate) fn send_raw(&self, to: SocketAddr, data: &[u8]) -> bool {
        let t = raw_transmit(to, data);
        self.inner.try_send(&t).is_ok()
    }

    /// Sends a raw datagram like [`send_raw`](Self::send_raw), but when the socket says
    /// it would block, waits until it is writable and tries again (three tries in all).
    /// A socket just bound refuses sends until the reactor has once seen it writable:
    /// without the wait, the first STUN request after bind was dropped on the floor.
    pub(crate) async fn send_raw_waiting(&self, to: SocketAddr, data: &[u8]) -> bool {
        let t = raw_transmit(to, data);
        let mut poller = None;
        for _ in 0..3 {
            match self.inner.try_send(&t) {
                Ok(()) => return true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let p = poller.get_or_insert_with(|| self.inner.clone().create_io_poller());
                    if std::future::poll_fn(|cx| p.as_mut().poll_writable(cx))
                        .await
                        .is_err()
                    {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
        false
    }

    /// Sends a probe from the socket it names; false if the socket refused it.
    pub(crate) fn send_probe(&self, (via, to, probe): &Outgoing) -> bool {
        match via {
            None => self.send_raw(*to, probe),
            Some(s) => s.try_send_to(probe, *to).is_ok(),
        }
    }

    fn flush_outbox(&self) {
        let out: Vec<_> = lock(&self.table.state).outbox.drain(..).collect();
        for o in &out {
            let _ = self.send_probe(o);
        }
    }
}

impl AsyncUdpSocket for PathSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        if !is_synthetic(&transmit.destination) {
            return self.inner.try_send(transmit);
        }
        let (node, direct, relay) = {
            let st = lock(&self.table.state);
            let Some(node) = st.by_mapped.get(&transmit.destination).copied() else {
                // Never put a synthetic address on the wire.
                return Ok(());
            };
            let p = st.nodes.get(&node);
            (
                node,
                p.and_then(|p| p.usable_direct().map(|d| (d.addr, d.via.clone()))),
                p.and_then(|p| p.relay.clone()),
            )
        };
        match direct {
            Some((addr, None)) => {
                let t = Transmit {
                    destination: addr,
                    ..*transmit
                };
                return self.inner.try_send(&t);
            }
            Some((addr, Some(sock))) => {
                // A path through a birthday-probing socket: no GSO there, one by one.
                let seg = transmit
                    .segment_size
                    .unwrap_or(transmit.contents.len())
                    .max(1);
                for chunk in transmit.contents.chunks(seg) {
                    let _ = sock.try_send_to(chunk, addr);
                }
                return Ok(());
            }
            None => {}
        }
        if let Some(relay) = relay {
            let seg = transmit
                .segment_size
                .unwrap_or(transmit.contents.len())
                .max(1);
            for chunk in transmit.contents.chunks(seg) {
                // A full relay queue drops the datagram, as a congested path would.
                let _ = relay.send(node, Bytes::copy_from_slice(chunk));
            }
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        // Relayed packets first, so a busy direct socket cannot starve them.
        let mut n = 0;
        {
            let mut st = lock(&self.table.state);
            while n < bufs.len().min(meta.len()) {
                let Some((from, pkt)) = st.relay_queue.pop_front() else {
                    break;
                };
                if pkt.len() > bufs[n].len() {
                    continue;
                }
                bufs[n][..pkt.len()].copy_from_slice(&pkt);
                meta[n] = RecvMeta {
                    addr: from,
                    len: pkt.len(),
                    stride: pkt.len(),
                    ..RecvMeta::default()
                };
                n += 1;
            }
            if n == 0 {
                st.relay_waker = Some(cx.waker().clone());
            }
        }
        if n > 0 {
            return Poll::Ready(Ok(n));
        }
        loop {
            let k = match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(k)) => k,
                other => return other,
            };
            let now = Instant::now();
            let mut w = 0;
            for i in 0..k {
                let m = meta[i];
                let data = &bufs[i][..m.len];
                if m.len == m.stride && is_probe(data) {
                    if let Some(replies) = self.table.on_probe(data, m.addr, now, None) {
                        lock(&self.table.state).outbox.extend(replies);
                    }
                    continue;
                }
                if m.len == m.stride && crate::stun::is_stun(data) {
                    // A STUN response for one of our transactions (anything else STUN is
                    // dropped: this socket is a STUN client, not a server).
                    if let Some(tx) = crate::stun::transaction_id(data) {
                        let waiter = lock(&self.table.state).stun_waiters.remove(&tx);
                        if let Some(w) = waiter {
                            let _ = w.send(Bytes::copy_from_slice(data));
                        }
                    }
                    continue;
                }
                let mut m = m;
                let mapped = {
                    let st = lock(&self.table.state);
                    st.by_direct
                        .get(&m.addr)
                        .and_then(|node| st.nodes.get(node))
                        .map(|p| p.mapped)
                };
                if let Some(mapped) = mapped {
                    m.addr = mapped;
                }
                if w != i {
                    let (head, tail) = bufs.split_at_mut(i);
                    head[w][..m.len].copy_from_slice(&tail[0][..m.len]);
                }
                meta[w] = m;
                w += 1;
            }
            self.flush_outbox();
            if w > 0 {
                return Poll::Ready(Ok(w));
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(n: u8) -> NodeId {
        kith_core::SecretKey::from_bytes(&[n; 32]).node_id()
    }

    #[test]
    fn probes_round_trip_and_authenticate() {
        let key = [7u8; 32];
        let p = Probe {
            pong: false,
            tx: [1; 12],
            sender: id(1),
        };
        let wire = encode_probe(&p, &key);
        assert!(is_probe(&wire));
        assert_eq!(parse_probe(&wire), Some(p));
        assert!(verify_probe(&wire, &key));
        assert!(!verify_probe(&wire, &[8u8; 32]));
        let mut forged = wire;
        forged[10] ^= 1;
        assert!(!verify_probe(&forged, &key));
    }

    #[test]
    fn quic_packets_are_never_probes() {
        // QUIC v1 packets have the fixed bit (0x40) set in the first byte.
        for first in 0x40u8..=0xff {
            let mut pkt = [0u8; PROBE_LEN];
            pkt[0] = first;
            assert!(!is_probe(&pkt) || first & 0x40 == 0);
        }
    }

    #[test]
    fn synthetic_block() {
        assert!(is_synthetic(
            &"240.107.0.1:1".parse().unwrap_or_else(|_| unreachable!())
        ));
        assert!(!is_synthetic(
            &"203.0.113.1:1".parse().unwrap_or_else(|_| unreachable!())
        ));
        assert!(is_synthetic(
            &"[fd6b:6974:6800::1]:1"
                .parse()
                .unwrap_or_else(|_| unreachable!())
        ));
    }

    #[test]
    fn only_answered_pings_validate_a_path_and_replays_do_not() {
        let now = Instant::now();
        let a = PathTable::new(id(1), false);
        let b = PathTable::new(id(2), false);
        let b_addr: SocketAddr = "203.0.113.2:5000"
            .parse()
            .unwrap_or_else(|_| unreachable!());
        let a_addr: SocketAddr = "198.51.100.1:4000"
            .parse()
            .unwrap_or_else(|_| unreachable!());
        a.map(id(2), None, &[b_addr]);
        b.map(id(1), None, &[]);
        let (ka, kb) = ([1u8; 32], [2u8; 32]);
        a.enable_probing(&id(2));
        b.enable_probing(&id(1));
        a.set_my_key(id(2), ka);
        a.set_their_key(id(2), kb);
        b.set_my_key(id(1), kb);
        b.set_their_key(id(1), ka);
        let pings = a.make_pings(&id(2), now);
        assert_eq!(pings.len(), 1);
        let (_, to, ping) = pings[0].clone();
        assert_eq!(to, b_addr);
        // b answers the ping (and learns a's address as a candidate).
        let replies = b
            .on_probe(&ping, a_addr, now, None)
            .unwrap_or_else(|| panic!("pong"));
        // A pong, and (a's address being new to b) a ping straight back.
        assert_eq!(replies.len(), 2);
        // The same ping replayed, from a's address or another, is not answered again.
        assert!(b.on_probe(&ping, a_addr, now, None).is_none());
        let attacker: SocketAddr = "192.0.2.77:7".parse().unwrap_or_else(|_| unreachable!());
        assert!(b.on_probe(&ping, attacker, now, None).is_none());
        assert!(!lock(&b.state).by_direct.contains_key(&attacker));
        let (_, back, pong) = replies[0].clone();
        assert_eq!(back, a_addr);
        // A pong from another address than the one pinged does not count.
        let spoofed_from: SocketAddr = "192.0.2.66:1".parse().unwrap_or_else(|_| unreachable!());
        assert!(a.on_probe(&pong, spoofed_from, now, None).is_none());
        assert!(matches!(
            *a.path(&id(2)).unwrap_or_else(|| panic!()).borrow(),
            PathKind::None
        ));
        // The genuine pong, from the pinged address, validates the path.
        assert!(a.on_probe(&pong, b_addr, now, None).is_none());
        assert_eq!(
            *a.path(&id(2)).unwrap_or_else(|| panic!()).borrow(),
            PathKind::Direct(b_addr)
        );
        let pong2 = pong;
        // Replaying the same pong from elsewhere moves nothing.
        let evil: SocketAddr = "192.0.2.99:9".parse().unwrap_or_else(|_| unreachable!());
        assert!(a.on_probe(&pong2, evil, now, None).is_none());
        assert_eq!(
            *a.path(&id(2)).unwrap_or_else(|| panic!()).borrow(),
            PathKind::Direct(b_addr)
        );
        // A forged pong (bad MAC) moves nothing either.
        let forged = encode_probe(
            &Probe {
                pong: true,
                tx: [9; 12],
                sender: id(2),
            },
            &[0u8; 32],
        );
        assert!(a.on_probe(&forged, evil, now, None).is_none());
        assert_eq!(
            *a.path(&id(2)).unwrap_or_else(|| panic!()).borrow(),
            PathKind::Direct(b_addr)
        );
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|_| unreachable!())
    }

    /// Two tables that know each other's keys, `a` probing `b`'s `b_addrs`.
    fn pair(b_addrs: &[SocketAddr]) -> (Arc<PathTable>, Arc<PathTable>) {
        let a = PathTable::new(id(1), false);
        let b = PathTable::new(id(2), false);
        a.map(id(2), None, b_addrs);
        b.map(id(1), None, &[]);
        let (ka, kb) = ([1u8; 32], [2u8; 32]);
        for (t, peer, mine, theirs) in [(&a, id(2), ka, kb), (&b, id(1), kb, ka)] {
            t.enable_probing(&peer);
            t.set_my_key(peer, mine);
            t.set_their_key(peer, theirs);
        }
        (a, b)
    }

    /// `a` pings `to` at `sent`; `b` (which sees `a` at `a_addr`) answers; the pong
    /// reaches `a` from `to` at `at`.
    fn ping_pong(a: &PathTable, b: &PathTable, to: SocketAddr, sent: Instant, at: Instant) {
        let a_addr = sa("198.51.100.1:4000");
        let pings = a.make_pings(&id(2), sent);
        let (_, _, ping) = pings
            .iter()
            .find(|(_, t, _)| *t == to)
            .cloned()
            .unwrap_or_else(|| panic!("a ping to {to}"));
        let replies = b
            .on_probe(&ping, a_addr, sent, None)
            .unwrap_or_else(|| panic!("pong"));
        assert!(a.on_probe(&replies[0].2, to, at, None).is_none());
    }

    fn candidates(t: &PathTable, node: &NodeId) -> Vec<SocketAddr> {
        lock(&t.state).nodes[node].candidates.clone()
    }

    #[test]
    fn replacing_candidates_drops_stale_ones_and_keeps_the_bound() {
        let old = [sa("203.0.113.5:1000"), sa("192.0.2.5:1000")];
        let (a, _b) = pair(&old);
        assert_eq!(candidates(&a, &id(2)), old);
        // A second advertisement: duplicates collapse, synthetic addresses are refused,
        // and no more than MAX_CANDIDATES are kept.
        let mut new: Vec<SocketAddr> = (0..12u16)
            .map(|i| SocketAddr::new(Ipv4Addr::new(203, 0, 113, 40).into(), 2000 + i))
            .collect();
        new.insert(1, new[0]);
        new.insert(2, sa("240.107.0.9:1"));
        a.replace_candidates(id(2), &new, Instant::now());
        let got = candidates(&a, &id(2));
        assert_eq!(got.len(), MAX_CANDIDATES);
        assert!(got.iter().all(|c| c.ip() == Ipv4Addr::new(203, 0, 113, 40)));
        assert_eq!(got[0].port(), 2000);
        assert_eq!(got[1].port(), 2001);
        // Probes go to the new addresses only.
        let pings = a.make_pings(&id(2), Instant::now());
        assert!(pings.iter().all(|(_, to, _)| !old.contains(to)));
        assert_eq!(pings.len(), MAX_CANDIDATES);
        // Adding (a first advertisement) respects the bound too.
        a.add_candidates(id(2), &old);
        assert_eq!(candidates(&a, &id(2)).len(), MAX_CANDIDATES);
    }

    #[test]
    fn a_network_change_drops_an_unconfirmed_direct_path_within_the_grace() {
        let b_addr = sa("203.0.113.2:5000");
        let t0 = Instant::now();
        let (a, b) = pair(&[b_addr]);
        ping_pong(&a, &b, b_addr, t0, t0);
        assert!(a.is_direct(&id(2)));
        // The network changes at t1; a pong to a ping sent before it proves nothing.
        let t1 = t0 + Duration::from_secs(1);
        let early = a.make_pings(&id(2), t1 - Duration::from_millis(1));
        a.network_changed(t1);
        let replies = b
            .on_probe(&early[0].2, sa("198.51.100.1:4000"), t1, None)
            .unwrap_or_else(|| panic!("pong"));
        assert!(a.on_probe(&replies[0].2, b_addr, t1, None).is_none());
        assert!(!a.expire(&id(2), t1 + REPROBE_GRACE));
        assert!(
            a.expire(&id(2), t1 + REPROBE_GRACE + Duration::from_millis(1)),
            "gone long before PATH_TIMEOUT"
        );
        assert!(!a.is_direct(&id(2)));
        assert!(REPROBE_GRACE + Duration::from_secs(1) < PATH_TIMEOUT);
    }

    #[test]
    fn a_path_confirmed_after_the_change_stays() {
        let b_addr = sa("203.0.113.2:5000");
        let t0 = Instant::now();
        let (a, b) = pair(&[b_addr]);
        ping_pong(&a, &b, b_addr, t0, t0);
        let t1 = t0 + Duration::from_secs(1);
        a.network_changed(t1);
        ping_pong(&a, &b, b_addr, t1, t1 + Duration::from_millis(5));
        assert!(!a.expire(&id(2), t1 + REPROBE_GRACE * 2));
        assert_eq!(
            *a.path(&id(2)).unwrap_or_else(|| panic!()).borrow(),
            PathKind::Direct(b_addr)
        );
    }

    #[test]
    fn after_the_peer_moves_its_new_address_wins_at_once() {
        let b_addr = sa("203.0.113.2:5000");
        let moved = sa("203.0.113.40:5000");
        let t0 = Instant::now();
        let (a, b) = pair(&[b_addr]);
        ping_pong(&a, &b, b_addr, t0, t0);
        // b re-advertises from its new address: the old path is in doubt, and a pong
        // from the new address replaces it even though it is slower and was confirmed
        // a moment ago.
        let t1 = t0 + Duration::from_millis(100);
        a.replace_candidates(id(2), &[moved], t1);
        assert_eq!(candidates(&a, &id(2)), [moved]);
        ping_pong(&a, &b, moved, t1, t1 + Duration::from_millis(50));
        assert_eq!(
            *a.path(&id(2)).unwrap_or_else(|| panic!()).borrow(),
            PathKind::Direct(moved)
        );
        assert!(!a.expire(&id(2), t1 + REPROBE_GRACE * 2));
    }

    fn keyed_pair() -> (Arc<PathTable>, Arc<PathTable>) {
        let a = PathTable::new(id(1), false);
        let b = PathTable::new(id(2), false);
        a.map(id(2), None, &[]);
        b.map(id(1), None, &[]);
        let (ka, kb) = ([1u8; 32], [2u8; 32]);
        a.set_my_key(id(2), ka);
        a.set_their_key(id(2), kb);
        b.set_my_key(id(1), kb);
        b.set_their_key(id(1), ka);
        a.enable_probing(&id(2));
        b.enable_probing(&id(1));
        (a, b)
    }

    #[tokio::test]
    async fn a_birthday_hit_validates_only_on_the_socket_it_reached() {
        let now = Instant::now();
        let (easy, hard) = keyed_pair();
        let extra = Arc::new(
            tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        );
        let other = Arc::new(
            tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        );
        hard.set_extra_sockets(&id(1), vec![extra.clone(), other.clone()]);
        let easy_pub = sa("203.0.113.16:4000");
        let hit = sa("203.0.113.20:31337");
        // The easy side sprays; one ping lands on the hard side's `extra` socket.
        let spray = easy.spray_pings(&id(2), &[(None, sa("203.0.113.20:1024")), (None, hit)], now);
        assert_eq!(spray.len(), 2);
        assert_eq!(easy.sprayed(&id(2)), 2);
        let (_, to, ping) = spray[1].clone();
        assert_eq!(to, hit);
        let answers = hard.on_extra_datagram(&extra, &ping, easy_pub, now);
        // A pong and a ping back, both from the socket the ping reached.
        assert_eq!(answers.len(), 2);
        assert!(
            answers.iter().all(|(via, to, _)| *to == easy_pub
                && via.as_ref().is_some_and(|v| Arc::ptr_eq(v, &extra)))
        );
        let (_, _, pong) = answers[0].clone();
        let (_, _, ping_back) = answers[1].clone();
        // The pong validates the easy side's path to the hit address.
        assert!(easy.on_probe(&pong, hit, now, None).is_none());
        assert_eq!(
            *easy.path(&id(2)).unwrap_or_else(|| panic!()).borrow(),
            PathKind::Direct(hit)
        );
        // The easy side answers the ping back; its pong arriving on the *other* extra
        // socket (or the main one) does not count...
        let back = easy
            .on_probe(&ping_back, hit, now, None)
            .unwrap_or_else(|| panic!("pong"));
        let (_, _, pong_back) = back[0].clone();
        assert!(
            hard.on_extra_datagram(&other, &pong_back, easy_pub, now)
                .is_empty()
        );
        assert!(hard.on_probe(&pong_back, easy_pub, now, None).is_none());
        assert!(!hard.is_direct(&id(1)));
        // ...on the socket the ping left from, it does, and the path sends from it.
        assert!(
            hard.on_extra_datagram(&extra, &pong_back, easy_pub, now)
                .is_empty()
        );
        assert!(hard.is_direct(&id(1)));
        // Ending the attempt keeps only that socket.
        hard.keep_only_used_socket(&id(1));
        assert!(hard.uses_socket(&id(1), &extra));
        assert!(!hard.uses_socket(&id(1), &other));
        // A QUIC packet from the proven address on the kept socket goes to quinn under
        // the peer's mapped address; one from elsewhere is dropped.
        let quic = [0x40u8; 40];
        let _ = hard.on_extra_datagram(&extra, &quic, easy_pub, now);
        let _ = hard.on_extra_datagram(&extra, &quic, sa("192.0.2.66:1"), now);
        let st = lock(&hard.state);
        assert_eq!(st.relay_queue.len(), 1);
        assert_eq!(
            Some(st.relay_queue[0].0),
            st.nodes.get(&id(1)).map(|p| p.mapped)
        );
    }

    #[test]
    fn the_spray_is_bounded() {
        let (a, _) = keyed_pair();
        let targets: Vec<(Via, SocketAddr)> = (0..MAX_SPRAY + 100)
            .map(|i| {
                (
                    None,
                    SocketAddr::new([203, 0, 113, 20].into(), (1024 + i % 60000) as u16),
                )
            })
            .collect();
        let now = Instant::now();
        assert_eq!(a.spray_pings(&id(2), &targets, now).len(), MAX_SPRAY);
        assert!(a.spray_pings(&id(2), &targets, now).is_empty());
        // Expired spray entries make room again.
        let _ = a.make_pings(&id(2), now + PATH_TIMEOUT + Duration::from_secs(1));
        assert_eq!(a.spray_pings(&id(2), &targets[..10], now).len(), 10);
    }

    /// Pings `a` sends to `addr` in `rounds` probe rounds `every` apart from `t`.
    fn pings_to(
        a: &PathTable,
        addr: SocketAddr,
        t: Instant,
        rounds: u32,
        every: Duration,
    ) -> usize {
        (0..rounds)
            .map(|i| {
                a.make_pings(&id(2), t + every * i)
                    .iter()
                    .filter(|(_, to, _)| *to == addr)
                    .count()
            })
            .sum()
    }

    #[test]
    fn a_candidate_that_never_answers_gets_a_bounded_number_of_pings() {
        let dead = sa("192.0.2.99:9");
        let (a, _) = pair(&[dead]);
        let t = Instant::now();
        // An hour of fast rounds.
        let n = pings_to(&a, dead, t, 24_000, Duration::from_millis(150));
        assert_eq!(n, MAX_UNANSWERED_PINGS as usize);
        // Our network changed: it may answer now, so it gets a fresh count.
        let t1 = t + Duration::from_secs(3601);
        a.network_changed(t1);
        assert_eq!(
            pings_to(&a, dead, t1, 100, Duration::from_millis(150)),
            MAX_UNANSWERED_PINGS as usize
        );
    }

    #[test]
    fn an_answering_candidate_is_pinged_without_limit() {
        let alive = sa("198.51.100.2:5000");
        let (a, b) = pair(&[alive]);
        let t = Instant::now();
        ping_pong(&a, &b, alive, t, t + Duration::from_millis(5));
        let n = pings_to(
            &a,
            alive,
            t + Duration::from_secs(1),
            500,
            Duration::from_secs(2),
        );
        assert_eq!(n, 500);
    }

    #[test]
    fn re_advertising_cannot_lift_the_amplification_bound() {
        let (a, _) = pair(&[]);
        let t = Instant::now();
        let every = Duration::from_millis(150);
        let rounds = 24_000u32; // an hour
        let mut sent = 0usize;
        for i in 0..rounds {
            let now = t + every * i;
            // A new set of never-answering addresses every round, and the same ones
            // again every other round (a fresh count each time).
            let base = if i % 2 == 0 { i } else { i - 1 };
            let addrs: Vec<SocketAddr> = (0..MAX_CANDIDATES as u32)
                .map(|k| {
                    SocketAddr::new(
                        [192, 0, 2, (k + 1) as u8].into(),
                        (base % 60_000) as u16 + 1,
                    )
                })
                .collect();
            a.replace_candidates(id(2), &addrs, now);
            sent += a.make_pings(&id(2), now).len();
        }
        let elapsed = (every * (rounds - 1)).as_secs_f64();
        let bound = UNANSWERED_BURST + elapsed * UNANSWERED_PER_SEC;
        assert!(sent as f64 <= bound + 1.0, "{sent} > {bound}");
        assert!(
            sent as f64 >= bound - 10.0,
            "the budget is used, not starved: {sent}"
        );
    }

    proptest! {
        /// Whatever a peer advertises, whenever: pings to addresses that never answered
        /// stay within the bucket, and within the per-address cap between resets.
        #[test]
        fn the_amplification_bound_holds(
            steps in proptest::collection::vec(
                (proptest::collection::vec(0u16..40, 0..8), 0u64..3000, any::<bool>()),
                1..200,
            )
        ) {
            let (a, _) = pair(&[]);
            let t = Instant::now();
            let mut now = t;
            let mut sent = 0usize;
            for (ports, dt, replace) in steps {
                now += Duration::from_millis(dt);
                let addrs: Vec<SocketAddr> = ports
                    .iter()
                    .map(|p| SocketAddr::new([192, 0, 2, 1].into(), 1000 + p))
                    .collect();
                if replace {
                    a.replace_candidates(id(2), &addrs, now);
                } else {
                    a.add_candidates(id(2), &addrs);
                }
                sent += a.make_pings(&id(2), now).len();
            }
            let bound = UNANSWERED_BURST + now.duration_since(t).as_secs_f64() * UNANSWERED_PER_SEC;
            prop_assert!(sent as f64 <= bound + 1e-6, "{} > {}", sent, bound);
        }

        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = parse_probe(&data);
            let _ = verify_probe(&data, &[0; 32]);
        }
    }
}
