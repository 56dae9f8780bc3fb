//! The [`Endpoint`]: sockets, handshakes, one connection per peer, and stream routing.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use kith_core::net::{
    BoxFuture, Conn, ConnectError, ConnectionError, Discovery, MountError, Protocol,
    ProtocolHandler, RecvStream, Router, SendStream, codes, read_protocol_header, split_datagram,
};
use kith_core::{NodeAddr, NodeId, RelayHint, SecretKey, Transport};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{TransportErrorCode, VarInt};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tracing::Instrument;

use crate::config::EndpointConfig;
use crate::conn::{QuicConnection, QuicRecv, QuicSend, ZeroRtt, map_conn_err};
use crate::observe::{ObservationConfig, Observations, Observer};
use crate::paths::{PathKind, PathSocket, PathTable, is_synthetic};
use crate::punch::{MAX_ADVERTISED, PATHS, PUNCH, handle_paths, handle_punch, start_paths};
use crate::relay::{
    RELAY_PROTOCOL, RELAY_TCP_ALPN, RelayClient, RelayError, RelayEvent, RelayServer,
};
use crate::stun::{NatKind, StunError};
use crate::tls;

/// Internal control protocol: the acceptor's hello (observed address, "connection kept").
const CTL: Protocol = Protocol::from_static("kith/ctl/1");

/// The longest a STUN round at bind or after a network change waits for the servers
/// (transmissions at 0, 0.5 and 1.5 s); the background refresh runs RFC 8489's whole
/// schedule.
const STUN_QUICK: std::time::Duration = std::time::Duration::from_secs(2);
/// Network changes detected automatically (a STUN server or a peer reports a new
/// address for us) are acted on at most once per this interval.
const AUTO_CHANGE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3);

/// How often the acceptor of a connection to a real address checks whether the peer's
/// address changed (its NAT rebound or was renumbered), to tell it in a new hello.
const ADDR_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// TLS alert `no_application_protocol` (RFC 8446 §6.2), as a QUIC crypto error.
const ALERT_NO_APPLICATION_PROTOCOL: u8 = 0x78;

/// Error binding an endpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// The TLS configuration could not be built from the key.
    #[error("tls configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// A UDP socket could not be bound.
    #[error("binding {addr}: {source}")]
    Io {
        /// Address that failed.
        addr: SocketAddr,
        /// Underlying error.
        source: std::io::Error,
    },
    /// No socket was configured (both `bind_v4` and `bind_v6` are `None`, or IPv6 failed).
    #[error("no socket could be bound")]
    NoSocket,
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// A QUIC endpoint: this node on the network.
///
/// Cloning is cheap and shares the endpoint. The endpoint closes when the last clone
/// is dropped, or explicitly with [`Endpoint::close`].
#[derive(Clone)]
pub struct Endpoint {
    handle: Arc<Handle>,
}

/// Closes the endpoint when the last user handle goes away (tasks hold `Inner` only).
struct Handle {
    inner: Arc<Inner>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.inner.shutdown_now();
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("id", &self.handle.inner.id)
            .field("addrs", &self.local_addrs())
            .finish()
    }
}

struct PeerSlot {
    conn: Option<Arc<QuicConnection>>,
    dialing: bool,
    changed: watch::Sender<u64>,
}

impl PeerSlot {
    fn new() -> Self {
        Self {
            conn: None,
            dialing: false,
            changed: watch::channel(0).0,
        }
    }

    fn live(&self) -> Option<Arc<QuicConnection>> {
        self.conn.as_ref().filter(|c| !c.is_closed()).cloned()
    }

    fn notify(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }
}

struct TokenBucket {
    tokens: f64,
    last: Instant,
}

/// One bound UDP socket: quinn's endpoint over the path socket, and the path table.
pub(crate) struct Sock {
    ep: quinn::Endpoint,
    pub(crate) socket: Arc<PathSocket>,
    pub(crate) table: Arc<PathTable>,
}

pub(crate) struct Inner {
    pub(crate) id: NodeId,
    key: SecretKey,
    v4: Option<Sock>,
    v6: Option<Sock>,
    /// What STUN servers, the home relay and peers say our address is, and how much of
    /// it we believe (issue 14: a peer's hello alone is never believed).
    observed: Mutex<Observations>,
    /// One birthday-probing attempt at a time (it holds many sockets).
    pub(crate) birthday_slot: tokio::sync::Semaphore,
    /// Relay reservations by relay id.
    relays: Mutex<HashMap<NodeId, RelayClient>>,
    /// The home relay, once reserved.
    home_relay: Mutex<Option<RelayHint>>,
    /// Where to look up nodes dialed by id alone.
    discovery: Mutex<Option<Arc<dyn Discovery>>>,
    client_config: quinn::ClientConfig,
    pub(crate) config: EndpointConfig,
    router: Router,
    peers: Mutex<HashMap<NodeId, PeerSlot>>,
    active: AtomicUsize,
    bucket: Mutex<TokenBucket>,
    closing: AtomicBool,
    /// The gateway port mapping of the IPv4 socket (`EndpointConfig::port_mapping`).
    portmap: Mutex<Option<crate::portmap::PortMapper>>,
    /// When a network change was last acted on (rate limit of automatic detection).
    last_net_change: Mutex<Option<Instant>>,
    /// A network change's STUN round is running.
    net_change_busy: AtomicBool,
    /// Another network change arrived while a round was running.
    net_change_again: AtomicBool,
    /// Network changes acted on (for tests: `Endpoint::network_changes`).
    net_changes: AtomicU64,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counts a connection against `max_connections` while it lives.
struct ConnGuard(Arc<Inner>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Inner {
    fn try_reserve(self: &Arc<Self>) -> Option<ConnGuard> {
        let max = self.config.limits.max_connections;
        let mut cur = self.active.load(Ordering::Acquire);
        loop {
            if cur >= max {
                return None;
            }
            match self
                .active
                .compare_exchange(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(ConnGuard(self.clone())),
                Err(v) => cur = v,
            }
        }
    }

    fn take_handshake_token(&self) -> bool {
        let limits = &self.config.limits;
        let mut b = lock(&self.bucket);
        let now = Instant::now();
        let elapsed = now.duration_since(b.last).as_secs_f64();
        b.last = now;
        b.tokens =
            (b.tokens + elapsed * limits.handshake_rate).min(f64::from(limits.handshake_burst));
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn endpoints(&self) -> impl Iterator<Item = &quinn::Endpoint> {
        self.socks().map(|s| &s.ep)
    }

    fn socks(&self) -> impl Iterator<Item = &Sock> {
        self.v4.iter().chain(self.v6.iter())
    }

    /// The socket relayed traffic uses (IPv4 if bound, else IPv6).
    fn primary(&self) -> Option<&Sock> {
        self.v4.as_ref().or(self.v6.as_ref())
    }

    /// The socket (and its path table) whose synthetic block `addr` is in, if any.
    pub(crate) fn sock_for_mapped(&self, addr: &SocketAddr) -> Option<&Sock> {
        self.socks().find(|s| s.table.node_of(addr).is_some())
    }

    /// The bound address of the IPv4 socket.
    pub(crate) fn v4_local(&self) -> Option<SocketAddr> {
        self.v4.as_ref().and_then(|s| s.ep.local_addr().ok())
    }

    /// Whether `id` is the home relay (`EndpointConfig::relay`): a trusted observer.
    fn is_home_relay(&self, id: &NodeId) -> bool {
        self.config.relay.as_ref().is_some_and(|r| r.node_id == *id)
    }

    /// The NAT in front of the IPv4 socket as observations classify it now: from the
    /// STUN servers and the home relay, and from peers only where independent peers
    /// agree (see [`Observations`]).
    pub(crate) fn nat_now(&self) -> NatKind {
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
    pub(crate) fn candidates(&self) -> (Vec<SocketAddr>, usize) {
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
    pub(crate) fn has_port_mapping(&self) -> bool {
        self.mapped_addr().is_some()
    }

    /// The external address the gateway maps to the IPv4 socket, if port mapping holds one.
    fn mapped_addr(&self) -> Option<SocketAddr> {
        lock(&self.portmap).as_ref().and_then(|m| m.external())
    }

    /// Live connections that run over a mapped address (relayed, or direct under the
    /// path layer).
    fn path_connections(&self) -> Vec<Arc<QuicConnection>> {
        lock(&self.peers)
            .values()
            .filter_map(PeerSlot::live)
            .filter(|c| c.table.is_some())
            .collect()
    }

    /// This host's network changed: direct paths must be confirmed again soon (or fall
    /// back to the relay), probers go back to fast rounds and every relayed connection
    /// sends its candidates to the peer anew; the STUN servers are asked again, and if
    /// that changes the candidates they are sent once more.
    pub(crate) fn network_changed(self: &Arc<Self>, why: &'static str) {
        if self.closing.load(Ordering::Acquire) {
            return;
        }
        tracing::info!(why, "network changed: probing paths again");
        self.net_changes.fetch_add(1, Ordering::AcqRel);
        *lock(&self.last_net_change) = Some(Instant::now());
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
        for c in self.path_connections() {
            crate::punch::kick(&c, true);
        }
        // One STUN round at a time; a change during a round asks for another one.
        self.net_change_again.store(true, Ordering::Release);
        if self.net_change_busy.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = self.clone();
        tokio::spawn(async move {
            loop {
                inner.net_change_again.store(false, Ordering::Release);
                let before = inner.candidates();
                inner.stun_round(true, Some(STUN_QUICK)).await;
                if inner.candidates() != before {
                    for c in inner.path_connections() {
                        crate::punch::kick(&c, true);
                    }
                }
                if inner.net_change_again.load(Ordering::Acquire) {
                    continue;
                }
                inner.net_change_busy.store(false, Ordering::Release);
                // A change between the check and the release found us busy: take it on,
                // unless a new round already did.
                if !inner.net_change_again.load(Ordering::Acquire)
                    || inner.net_change_busy.swap(true, Ordering::AcqRel)
                {
                    break;
                }
            }
        });
    }

    /// A network change detected from outside (a new address reported for us), acted on
    /// at most once per [`AUTO_CHANGE_INTERVAL`].
    fn maybe_network_changed(self: &Arc<Self>, why: &'static str) {
        let recent =
            lock(&self.last_net_change).is_some_and(|t| t.elapsed() < AUTO_CHANGE_INTERVAL);
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
                let _ = sock.socket.send_raw(server, &request);
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

    fn shutdown_now(&self) {
        if self.closing.swap(true, Ordering::AcqRel) {
            return;
        }
        let conns: Vec<_> = lock(&self.peers)
            .values()
            .filter_map(|s| s.conn.clone())
            .collect();
        for c in conns {
            c.inner
                .close(VarInt::from_u32(codes::CLOSE_SHUTDOWN), b"shutdown");
        }
        for ep in self.endpoints() {
            ep.close(VarInt::from_u32(codes::CLOSE_SHUTDOWN), b"shutdown");
        }
    }

    /// Decides which of two connections to the same peer survives; returns true if
    /// `conn` is kept. Both sides reach the same decision: the connection dialed by the
    /// smaller node id wins; between two dialed by the same side, the newer wins.
    fn register(&self, conn: &Arc<QuicConnection>) -> bool {
        let mut peers = lock(&self.peers);
        let slot = peers.entry(conn.remote).or_insert_with(PeerSlot::new);
        let keep = match slot.live() {
            Some(old) if !Arc::ptr_eq(&old, conn) => {
                let min = self.id.min(conn.remote);
                let new_wins = conn.client_id(self.id) == min || old.client_id(self.id) != min;
                let loser = if new_wins { &old } else { conn };
                loser
                    .inner
                    .close(VarInt::from_u32(codes::CLOSE_DUPLICATE), b"duplicate");
                if new_wins {
                    slot.conn = Some(conn.clone());
                }
                new_wins
            }
            _ => {
                slot.conn = Some(conn.clone());
                true
            }
        };
        slot.notify();
        keep
    }

    fn unregister(&self, conn: &Arc<QuicConnection>) {
        let mut peers = lock(&self.peers);
        if let Some(slot) = peers.get_mut(&conn.remote) {
            if slot.conn.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
                slot.conn = None;
                slot.notify();
            }
            if slot.conn.is_none() {
                // What it said about our address goes with its connection.
                lock(&self.observed).forget(&Observer::Peer(conn.remote));
            }
            if slot.conn.is_none() && !slot.dialing && slot.changed.receiver_count() == 0 {
                peers.remove(&conn.remote);
            }
        }
    }

    /// Waits until a live connection to `id` is registered, or the deadline passes.
    async fn wait_registered(
        &self,
        id: NodeId,
        deadline: tokio::time::Instant,
    ) -> Option<Arc<QuicConnection>> {
        let mut rx = lock(&self.peers)
            .entry(id)
            .or_insert_with(PeerSlot::new)
            .changed
            .subscribe();
        loop {
            if let Some(c) = lock(&self.peers).get(&id).and_then(PeerSlot::live) {
                return Some(c);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return None,
            }
        }
    }

    fn new_connection(
        &self,
        inner: quinn::Connection,
        remote: NodeId,
        outgoing: bool,
        zero_rtt: ZeroRtt,
    ) -> Arc<QuicConnection> {
        let addr = inner.remote_address();
        let path = match self
            .sock_for_mapped(&addr)
            .and_then(|s| s.table.path(&remote))
        {
            Some(rx) => rx,
            None => watch::channel(PathKind::Direct(addr)).1,
        };
        Arc::new(QuicConnection {
            inner,
            remote,
            outgoing,
            zero_rtt: watch::channel(zero_rtt).0,
            observed: watch::channel(None).0,
            open_timeout: self.config.limits.stream_open_timeout,
            path,
            path_kick: tokio::sync::Notify::new(),
            punch: crate::punch::PunchState::new(),
            table: self.sock_for_mapped(&addr).map(|s| s.table.clone()),
        })
    }
}

fn map_handshake_err(e: &quinn::ConnectionError, expected: NodeId) -> ConnectError {
    use quinn::ConnectionError as Q;
    let crypto = |code: TransportErrorCode| {
        let c = u64::from(code);
        (0x100..0x200).contains(&c).then_some((c & 0xff) as u8)
    };
    match e {
        Q::TransportError(t) => match crypto(t.code) {
            Some(_) => ConnectError::Authentication { expected },
            None => ConnectError::Transport(t.to_string()),
        },
        Q::ConnectionClosed(c) => match crypto(c.error_code) {
            Some(ALERT_NO_APPLICATION_PROTOCOL) => ConnectError::ProtocolMismatch,
            Some(_) => ConnectError::Authentication { expected },
            None if c.error_code == TransportErrorCode::CONNECTION_REFUSED => {
                ConnectError::Refused(ConnectionError::Reset(c.to_string()))
            }
            None => ConnectError::Transport(c.to_string()),
        },
        Q::ApplicationClosed(_) => ConnectError::Refused(map_conn_err(e)),
        Q::TimedOut => ConnectError::TimedOut,
        Q::LocallyClosed => ConnectError::EndpointClosed,
        other => ConnectError::Transport(other.to_string()),
    }
}

fn transport_config(config: &EndpointConfig) -> Result<quinn::TransportConfig, BindError> {
    let limits = &config.limits;
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(limits.max_bi_streams));
    t.max_concurrent_uni_streams(VarInt::from_u32(limits.max_uni_streams));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(config.idle_timeout)
            .map_err(|_| BindError::Config("idle_timeout too large".into()))?,
    ));
    t.keep_alive_interval(config.keep_alive);
    t.datagram_receive_buffer_size(Some(limits.datagram_buffer));
    Ok(t)
}

/// Builds the quinn server and client configurations an endpoint with `key` uses.
/// Public within the crate so benchmarks can configure raw quinn alike.
pub(crate) fn quinn_configs(
    key: &SecretKey,
    config: &EndpointConfig,
    alpn: &[u8],
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), BindError> {
    let transport = Arc::new(transport_config(config)?);
    let server_tls = tls::server_config(key, vec![alpn.to_vec()])?;
    let client_tls = tls::client_config(key, vec![alpn.to_vec()])?;
    let server_crypto =
        QuicServerConfig::try_from(server_tls).map_err(|e| BindError::Config(e.to_string()))?;
    let client_crypto =
        QuicClientConfig::try_from(client_tls).map_err(|e| BindError::Config(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server.transport_config(transport.clone());
    let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
    client.transport_config(transport);
    Ok((server, client))
}

impl Endpoint {
    /// Binds the configured sockets and starts accepting connections.
    ///
    /// Must be called inside a tokio runtime.
    pub async fn bind(key: SecretKey, config: EndpointConfig) -> Result<Self, BindError> {
        Self::bind_with_alpn(key, config, tls::KITH_ALPN).await
    }

    /// Like [`bind`](Self::bind) with a different TLS ALPN: only for testing version
    /// negotiation (peers with different ALPNs refuse each other).
    #[doc(hidden)]
    pub async fn bind_with_alpn(
        key: SecretKey,
        config: EndpointConfig,
        alpn: &[u8],
    ) -> Result<Self, BindError> {
        let (server, client_config) = quinn_configs(&key, &config, alpn)?;
        let id = key.node_id();
        let v4 = match config.bind_v4 {
            Some(addr) => Some(
                bind_socket(addr, server.clone(), id)
                    .map_err(|source| BindError::Io { addr, source })?,
            ),
            None => None,
        };
        let v6 = match config.bind_v6 {
            Some(addr) => match bind_socket(addr, server, id) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::info!(%addr, error = %e, "IPv6 unavailable; running IPv4 only");
                    None
                }
            },
            None => None,
        };
        if v4.is_none() && v6.is_none() {
            return Err(BindError::NoSocket);
        }
        let burst = f64::from(config.limits.handshake_burst);
        let inner = Arc::new(Inner {
            id,
            key: key.clone(),
            v4,
            v6,
            observed: Mutex::new(Observations::new(ObservationConfig::default())),
            birthday_slot: tokio::sync::Semaphore::new(1),
            relays: Mutex::new(HashMap::new()),
            home_relay: Mutex::new(None),
            discovery: Mutex::new(None),
            client_config,
            config,
            router: Router::default(),
            peers: Mutex::new(HashMap::new()),
            active: AtomicUsize::new(0),
            bucket: Mutex::new(TokenBucket {
                tokens: burst,
                last: Instant::now(),
            }),
            closing: AtomicBool::new(false),
            portmap: Mutex::new(None),
            last_net_change: Mutex::new(None),
            net_change_busy: AtomicBool::new(false),
            net_change_again: AtomicBool::new(false),
            net_changes: AtomicU64::new(0),
        });
        for ep in inner.endpoints() {
            let span = tracing::debug_span!("endpoint", id = %inner.id.fmt_short());
            tokio::spawn(accept_loop(inner.clone(), ep.clone()).instrument(span));
        }
        let endpoint = Self {
            handle: Arc::new(Handle { inner }),
        };
        if let Some(pm) = endpoint.config().port_mapping.clone() {
            let v4 = endpoint
                .inner()
                .v4
                .as_ref()
                .and_then(|s| s.ep.local_addr().ok());
            if let Some(local) = v4 {
                let mapper = crate::portmap::PortMapper::start(pm, local);
                *lock(&endpoint.inner().portmap) = Some(mapper);
            }
        }
        if let Some(rc) = endpoint.config().relay_server.clone() {
            let server = RelayServer::new(rc);
            endpoint
                .mount(RELAY_PROTOCOL, Arc::new(server.clone()))
                .map_err(|e| BindError::Config(e.to_string()))?;
            // The same relay over TLS/TCP on the same address, for UDP-blocked clients.
            if let Some(addr) = endpoint
                .inner()
                .v4
                .as_ref()
                .and_then(|s| s.ep.local_addr().ok())
            {
                match tokio::net::TcpListener::bind(addr).await {
                    Ok(listener) => {
                        let tls = tls::server_config(&key, vec![RELAY_TCP_ALPN.to_vec()])?;
                        server.serve_tcp(listener, Arc::new(tls));
                    }
                    Err(e) => tracing::warn!(%addr, error = %e, "relay over TCP unavailable"),
                }
            }
        }
        if !endpoint.config().stun_servers.is_empty() {
            // The first round before bind returns, so the first connections already
            // carry reflexive candidates and a NAT kind; then refresh in the background.
            endpoint.inner().stun_round(false, Some(STUN_QUICK)).await;
            // The task holds `Inner` weakly, like the interface poll: it never keeps the
            // endpoint open (nor closes it by dropping the last handle).
            let weak = Arc::downgrade(endpoint.inner());
            let every = endpoint
                .config()
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
        if let Some(every) = endpoint.config().hole_punch.network_poll {
            let every = every.max(std::time::Duration::from_secs(1));
            tokio::spawn(poll_interfaces(Arc::downgrade(endpoint.inner()), every));
        }
        if let Some(home) = endpoint.config().relay.clone() {
            // A relay that is down now is not fatal: the node still works directly.
            match endpoint.ensure_relay(home.clone()).await {
                Ok(_) => {
                    if let Some(addr) = home.direct.first() {
                        *lock(&endpoint.inner().home_relay) = Some(RelayHint {
                            node_id: home.node_id,
                            addr: *addr,
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!(relay = ?home.node_id, error = %e, "home relay unavailable")
                }
            }
        }
        Ok(endpoint)
    }

    /// The reservation on `relay`, made if needed. Packets from it feed the path layer.
    ///
    /// Boxed (not `async fn`) because the task it spawns may call it again (re-reserving
    /// the home relay), which an opaque future type cannot express.
    fn ensure_relay(&self, relay: NodeAddr) -> BoxFuture<'_, Result<RelayClient, RelayError>> {
        Box::pin(async move {
            let inner = self.inner();
            if let Some(c) = lock(&inner.relays).get(&relay.node_id) {
                return Ok(c.clone());
            }
            let relay_id = relay.node_id;
            // QUIC first; where UDP is blocked, TLS over TCP to the same address.
            let quic = if inner.config.relay_over_tcp_only() {
                None
            } else {
                let limit = inner
                    .config
                    .handshake_timeout
                    .min(std::time::Duration::from_secs(3));
                match tokio::time::timeout(limit, RelayClient::connect(self, relay.clone())).await {
                    Ok(Ok(c)) => Some(c),
                    Ok(Err(RelayError::Refused)) => return Err(RelayError::Refused),
                    _ => None,
                }
            };
            let (client, mut events) = match quic {
                Some(c) => c,
                None => {
                    tracing::debug!(relay = %relay_id.fmt_short(), "relay over TCP");
                    RelayClient::connect_tcp(&inner.key, relay).await?
                }
            };
            let table = inner
                .primary()
                .map(|s| s.table.clone())
                .ok_or(RelayError::Closed)?;
            lock(&inner.relays).insert(relay_id, client.clone());
            // Connections already going through this relay (a new reservation after the
            // old one was lost) continue on the new one.
            table.replace_relay(&client);
            let weak = Arc::downgrade(&self.handle);
            let pump_client = client.clone();
            tokio::spawn(async move {
                while let Some(ev) = events.recv().await {
                    if let RelayEvent::Packet { from, packet } = ev {
                        table.on_relay_packet(&pump_client, from, packet);
                    }
                }
                let home = match weak.upgrade() {
                    Some(handle) => {
                        let inner = &handle.inner;
                        lock(&inner.relays).remove(&relay_id);
                        inner.config.relay.clone().filter(|h| h.node_id == relay_id)
                    }
                    None => None,
                };
                if let Some(home) = home {
                    tracing::info!(relay = %relay_id.fmt_short(), "home relay lost; reserving again");
                    reserve_again(weak, home).await;
                }
            });
            Ok(client)
        })
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.handle.inner
    }

    /// This node's identity.
    pub fn node_id(&self) -> NodeId {
        self.inner().id
    }

    /// The bound socket addresses (unspecified addresses as bound, port filled in).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.inner()
            .endpoints()
            .filter_map(|ep| ep.local_addr().ok())
            .collect()
    }

    /// This node's address for peers: its id and socket addresses. An unspecified bind
    /// address (`0.0.0.0`, `::`) is reported as the loopback address of its family;
    /// addresses seen from outside come from address discovery.
    pub fn node_addr(&self) -> NodeAddr {
        let direct = self.local_addrs().into_iter().map(|mut a| {
            if a.ip().is_unspecified() {
                a.set_ip(match a.ip() {
                    IpAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                    IpAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
                });
            }
            a
        });
        let mut addr = NodeAddr::new(self.node_id()).with_direct(direct);
        // Reflexive addresses (STUN answers, what peers observe) after the bound ones.
        let (cands, reflexive) = self.inner().candidates();
        for a in cands.into_iter().take(reflexive) {
            if !addr.direct.contains(&a) && addr.direct.len() < kith_core::addr::MAX_DIRECT_ADDRS {
                addr.direct.push(a);
            }
        }
        if let Some(hint) = *lock(&self.inner().home_relay) {
            addr.relays.push(hint);
        }
        addr
    }

    /// The gateway port mapping of the IPv4 socket, when
    /// [`EndpointConfig::port_mapping`] is on and a mapping is held.
    pub fn port_mapping(&self) -> Option<crate::portmap::Mapping> {
        lock(&self.inner().portmap)
            .as_ref()
            .and_then(|m| m.mapping())
    }

    /// A receiver that sees every change of the port mapping (`None` when
    /// [`EndpointConfig::port_mapping`] is off), e.g. to republish this node's address.
    pub fn watch_port_mapping(&self) -> Option<watch::Receiver<Option<crate::portmap::Mapping>>> {
        lock(&self.inner().portmap).as_ref().map(|m| m.watch())
    }

    /// The configuration the endpoint runs with.
    pub fn config(&self) -> &EndpointConfig {
        &self.inner().config
    }

    /// Routes streams and datagrams of `protocol` to `handler`.
    pub fn mount(
        &self,
        protocol: Protocol,
        handler: Arc<dyn ProtocolHandler>,
    ) -> Result<(), MountError> {
        self.inner().router.mount(protocol, handler)
    }

    /// The live connection to `id`, if any.
    pub fn connection(&self, id: &NodeId) -> Option<Arc<QuicConnection>> {
        lock(&self.inner().peers).get(id).and_then(PeerSlot::live)
    }

    /// Number of peers the endpoint keeps state for (live connections, dials in
    /// flight). For tests that check nothing leaks; not part of the stable API.
    #[doc(hidden)]
    pub fn tracked_peers(&self) -> usize {
        lock(&self.inner().peers).len()
    }

    /// All live connections.
    pub fn connections(&self) -> Vec<Arc<QuicConnection>> {
        lock(&self.inner().peers)
            .values()
            .filter_map(PeerSlot::live)
            .collect()
    }

    /// Connects to `addr.node_id`, trying its direct addresses in order, or returns the
    /// live connection to it. Concurrent calls for one peer share one dial, and a dial
    /// that races with the peer dialing us ends on the one connection both sides keep.
    pub async fn connect(&self, addr: NodeAddr) -> Result<Arc<QuicConnection>, ConnectError> {
        let inner = self.inner();
        let id = addr.node_id;
        if id == inner.id {
            return Err(ConnectError::DialSelf);
        }
        if inner.closing.load(Ordering::Acquire) {
            return Err(ConnectError::EndpointClosed);
        }
        let deadline = tokio::time::Instant::now() + inner.config.handshake_timeout;
        // Join a dial in flight, or become the dialer.
        loop {
            let mut rx = {
                let mut peers = lock(&inner.peers);
                let slot = peers.entry(id).or_insert_with(PeerSlot::new);
                if let Some(c) = slot.live() {
                    return Ok(c);
                }
                if !slot.dialing {
                    slot.dialing = true;
                    break;
                }
                slot.changed.subscribe()
            };
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Err(ConnectError::TimedOut);
            }
        }
        let addr = self.discover(addr, deadline).await;
        let result = self.dial_addrs(&addr, deadline).await;
        let result = match result {
            Ok(conn) if inner.register(&conn) => Ok(conn),
            // Lost the tie-break to a connection the peer dialed: use that one.
            Ok(_) | Err(DialFailure::Duplicate) => inner
                .wait_registered(id, deadline)
                .await
                .ok_or(ConnectError::TimedOut),
            Err(DialFailure::Error(e)) => Err(e),
        };
        let mut peers = lock(&inner.peers);
        if let Some(slot) = peers.get_mut(&id) {
            slot.dialing = false;
            slot.notify();
            // Forget peers we failed to reach, unless someone is waiting on the slot.
            if slot.conn.is_none() && slot.changed.receiver_count() == 0 {
                peers.remove(&id);
            }
        }
        result
    }

    /// Fills in the addresses of a node dialed by id alone, from the discovery source.
    async fn discover(&self, addr: NodeAddr, deadline: tokio::time::Instant) -> NodeAddr {
        if !addr.direct.is_empty() || !addr.relays.is_empty() {
            return addr;
        }
        let Some(discovery) = lock(&self.inner().discovery).clone() else {
            return addr;
        };
        match tokio::time::timeout_at(deadline, discovery.resolve(addr.node_id)).await {
            Ok(Some(found)) if found.node_id == addr.node_id => found,
            _ => addr,
        }
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
        let Some(local) = self
            .inner()
            .v4
            .as_ref()
            .and_then(|s| s.ep.local_addr().ok())
        else {
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
    /// servers' answers ([`EndpointConfig::stun_servers`], [`stun`](Self::stun)) and the
    /// addresses peers reached at a real address observe (at least two observers at
    /// different addresses are needed, otherwise [`NatKind::Unknown`]).
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
        self.inner().net_changes.load(Ordering::Acquire)
    }

    /// Sets the source the endpoint asks for the addresses of a node dialed by id alone
    /// (for example a DHT handle: `kith_overlay::dht::DhtHandle`).
    pub fn set_discovery(&self, discovery: Arc<dyn Discovery>) {
        *lock(&self.inner().discovery) = Some(discovery);
    }

    async fn dial_addrs(
        &self,
        addr: &NodeAddr,
        deadline: tokio::time::Instant,
    ) -> Result<Arc<QuicConnection>, DialFailure> {
        if let Some(hint) = addr.relays.first() {
            // Start through the relay; the path layer moves to a direct path once a
            // probe to one of the peer's candidates is answered.
            let relay = NodeAddr::new(hint.node_id).with_direct([hint.addr]);
            let client = self
                .ensure_relay(relay)
                .await
                .map_err(|e| ConnectError::Transport(format!("relay: {e}")))?;
            let sock = self.inner().primary().ok_or(ConnectError::EndpointClosed)?;
            let mapped = sock.table.map(addr.node_id, Some(client), &addr.direct);
            return self.dial_one(addr.node_id, mapped, deadline).await;
        }
        if addr.direct.is_empty() {
            return Err(DialFailure::Error(ConnectError::NoAddress(addr.node_id)));
        }
        let mut first_err = None;
        let n = addr.direct.len() as u32;
        for (i, &sock) in addr.direct.iter().enumerate() {
            // Each address gets an equal share of the time left, so a dead address
            // early in the list cannot starve a live one after it.
            let now = tokio::time::Instant::now();
            let share = deadline.saturating_duration_since(now) / (n - i as u32);
            let attempt_deadline = now + share;
            match self.dial_one(addr.node_id, sock, attempt_deadline).await {
                Ok(c) => return Ok(c),
                Err(DialFailure::Duplicate) => return Err(DialFailure::Duplicate),
                Err(DialFailure::Error(e)) => {
                    tracing::debug!(%sock, error = %e, "dial attempt failed");
                    // Keep the most telling error: authentication and refusals over timeouts.
                    let telling = !matches!(e, ConnectError::TimedOut | ConnectError::Transport(_));
                    if first_err.is_none() || telling {
                        first_err = Some(e);
                    }
                }
            }
        }
        Err(DialFailure::Error(
            first_err.unwrap_or(ConnectError::NoAddress(addr.node_id)),
        ))
    }

    async fn dial_one(
        &self,
        id: NodeId,
        sock: SocketAddr,
        deadline: tokio::time::Instant,
    ) -> Result<Arc<QuicConnection>, DialFailure> {
        let inner = self.inner();
        let ep = match sock {
            SocketAddr::V4(_) => inner.v4.as_ref().map(|s| &s.ep),
            SocketAddr::V6(_) => inner.v6.as_ref().map(|s| &s.ep),
        }
        .ok_or_else(|| {
            ConnectError::Transport(format!("no socket for the address family of {sock}"))
        })?;
        let guard = inner
            .try_reserve()
            .ok_or(ConnectError::LimitReached("max_connections"))?;
        let connecting = ep
            .connect_with(inner.client_config.clone(), sock, &tls::server_name(&id))
            .map_err(|e| ConnectError::Transport(e.to_string()))?;
        let span = tracing::debug_span!("conn", peer = %id.fmt_short(), dir = "out");
        let (qconn, accepted) = if inner.config.zero_rtt {
            match connecting.into_0rtt() {
                Ok((c, acc)) => (c, Some(acc)),
                Err(connecting) => (await_handshake(connecting, id, deadline).await?, None),
            }
        } else {
            (await_handshake(connecting, id, deadline).await?, None)
        };
        let zr = if accepted.is_some() {
            ZeroRtt::Pending
        } else {
            ZeroRtt::NotAttempted
        };
        let conn = inner.new_connection(qconn, id, true, zr);
        if let Some(acc) = accepted {
            let c = conn.clone();
            tokio::spawn(async move {
                let ok = acc.await;
                let v = if ok {
                    ZeroRtt::Accepted
                } else {
                    ZeroRtt::Rejected
                };
                c.zero_rtt.send_replace(v);
            });
        }
        start_paths(inner, &conn);
        tokio::spawn(drive(inner.clone(), conn.clone(), guard).instrument(span));
        // The smaller id's dial always wins the tie-break; the larger waits for the
        // acceptor's hello, which it sends only for a connection it keeps.
        if inner.id > id {
            let mut hello = conn.observed.subscribe();
            tokio::select! {
                r = tokio::time::timeout_at(deadline, hello.wait_for(Option::is_some)) => {
                    if !matches!(r, Ok(Ok(_))) {
                        conn.inner.close(VarInt::from_u32(codes::CLOSE_NORMAL), b"timeout");
                        return Err(ConnectError::TimedOut.into());
                    }
                }
                e = conn.inner.closed() => {
                    if let quinn::ConnectionError::ApplicationClosed(c) = &e {
                        if c.error_code == VarInt::from_u32(codes::CLOSE_DUPLICATE) {
                            return Err(DialFailure::Duplicate);
                        }
                    }
                    return Err(map_handshake_err(&e, id).into());
                }
            }
        }
        Ok(conn)
    }

    /// Closes every connection (code [`codes::CLOSE_SHUTDOWN`]) and the sockets, and waits
    /// until peers have been told (bounded by the handshake timeout).
    pub async fn close(&self) {
        let inner = self.inner();
        let mapper = lock(&inner.portmap).take();
        if let Some(mapper) = mapper {
            mapper.shutdown().await;
        }
        inner.shutdown_now();
        for ep in inner.endpoints() {
            let _ = tokio::time::timeout(inner.config.handshake_timeout, ep.wait_idle()).await;
        }
    }
}

enum DialFailure {
    /// The peer closed our connection because its own dial to us won the tie-break.
    Duplicate,
    Error(ConnectError),
}

impl From<ConnectError> for DialFailure {
    fn from(e: ConnectError) -> Self {
        DialFailure::Error(e)
    }
}

async fn await_handshake(
    connecting: quinn::Connecting,
    id: NodeId,
    deadline: tokio::time::Instant,
) -> Result<quinn::Connection, DialFailure> {
    match tokio::time::timeout_at(deadline, connecting).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(map_handshake_err(&e, id).into()),
        Err(_) => Err(ConnectError::TimedOut.into()),
    }
}

async fn accept_loop(inner: Arc<Inner>, ep: quinn::Endpoint) {
    while let Some(incoming) = ep.accept().await {
        if inner.closing.load(Ordering::Acquire) {
            incoming.refuse();
            continue;
        }
        if !inner.take_handshake_token() {
            tracing::debug!(remote = %incoming.remote_address(), "handshake rate limit: refused");
            incoming.refuse();
            continue;
        }
        let Some(guard) = inner.try_reserve() else {
            tracing::debug!(remote = %incoming.remote_address(), "connection limit: refused");
            incoming.refuse();
            continue;
        };
        tokio::spawn(handle_incoming(inner.clone(), incoming, guard));
    }
}

async fn handle_incoming(inner: Arc<Inner>, incoming: quinn::Incoming, guard: ConnGuard) {
    let remote = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%remote, error = %e, "incoming connection failed");
            return;
        }
    };
    let deadline = tokio::time::Instant::now() + inner.config.handshake_timeout;
    // Servers always get a connection here (0.5-RTT). A resumed client is already
    // authenticated by its session; others are once the handshake completes.
    let (qconn, handshake_done) = match connecting.into_0rtt() {
        Ok((c, done)) => (c, Some(done)),
        Err(connecting) => match tokio::time::timeout_at(deadline, connecting).await {
            Ok(Ok(c)) => (c, None),
            _ => return,
        },
    };
    let id = match tls::peer_node_id(qconn.peer_identity()) {
        Some(id) => id,
        None => {
            if let Some(done) = handshake_done {
                if tokio::time::timeout_at(deadline, done).await.is_err() {
                    qconn.close(VarInt::from_u32(codes::CLOSE_NORMAL), b"handshake timeout");
                    return;
                }
            }
            match tls::peer_node_id(qconn.peer_identity()) {
                Some(id) => id,
                None => {
                    tracing::debug!(%remote, "handshake failed or peer unauthenticated");
                    qconn.close(VarInt::from_u32(codes::CLOSE_NORMAL), b"unauthenticated");
                    return;
                }
            }
        }
    };
    let conn = inner.new_connection(qconn, id, false, ZeroRtt::NotAttempted);
    let span = tracing::debug_span!("conn", peer = %id.fmt_short(), dir = "in");
    async move {
        // If our own dial to this peer is in flight and would win the tie-break (we have
        // the smaller id), let it finish first.
        if inner.id < id {
            let rx = lock(&inner.peers)
                .get(&id)
                .filter(|s| s.dialing)
                .map(|s| s.changed.subscribe());
            if let Some(mut rx) = rx {
                loop {
                    if !lock(&inner.peers).get(&id).is_some_and(|s| s.dialing) {
                        break;
                    }
                    if tokio::time::timeout_at(deadline, rx.changed())
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        // A relayed connection must come from the node the relay vouched for.
        let remote = conn.inner.remote_address();
        if let Some(s) = inner.sock_for_mapped(&remote) {
            if s.table.node_of(&remote) != Some(id) {
                conn.inner.close(
                    VarInt::from_u32(codes::CLOSE_NORMAL),
                    b"relay identity mismatch",
                );
                return;
            }
        }
        if !inner.register(&conn) {
            return;
        }
        start_paths(&inner, &conn);
        send_hello(&conn).await;
        drive(inner, conn, guard).await;
    }
    .instrument(span)
    .await;
}

/// First retry delay after the home relay's reservation is lost, and the cap of the
/// doubling backoff.
const RESERVE_RETRY: std::time::Duration = std::time::Duration::from_millis(500);
const RESERVE_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// Reserves on the home relay again after the reservation was lost (the relay restarted,
/// the network changed), with doubling backoff, for as long as the endpoint is open. The
/// task holds the endpoint only while it dials, so dropping the endpoint ends it.
async fn reserve_again(weak: std::sync::Weak<Handle>, home: NodeAddr) {
    let mut wait = RESERVE_RETRY;
    loop {
        tokio::time::sleep(wait).await;
        let Some(handle) = weak.upgrade() else {
            return;
        };
        if handle.inner.closing.load(Ordering::Acquire) {
            return;
        }
        let ep = Endpoint { handle };
        match ep.ensure_relay(home.clone()).await {
            Ok(_) => {
                tracing::info!(relay = %home.node_id.fmt_short(), "home relay reserved again");
                return;
            }
            Err(e) => {
                tracing::debug!(relay = %home.node_id.fmt_short(), error = %e, ?wait, "home relay still unavailable");
            }
        }
        drop(ep);
        wait = (wait * 2).min(RESERVE_RETRY_MAX);
    }
}

/// Tells the dialer we keep this connection, and which address we observe for it.
async fn send_hello(conn: &Arc<QuicConnection>) {
    let observed = conn.inner.remote_address();
    let msg = NodeAddr::new(conn.remote).with_direct([observed]).encode();
    let res = async {
        let mut s = conn.inner.open_uni().await.ok()?;
        s.write_all(&CTL.header()).await.ok()?;
        s.write_all(&msg).await.ok()?;
        s.finish().ok()
    }
    .await;
    if res.is_none() {
        tracing::debug!("could not send hello");
    }
}

/// Runs one connection: accepts its streams and datagrams and routes them.
async fn drive(inner: Arc<Inner>, conn: Arc<QuicConnection>, guard: ConnGuard) {
    // The acceptor of a connection to a real address tells the peer again which address
    // it observes when that changes (QUIC migration after a NAT rebinding): the peer
    // learns its new public address, as from a STUN server.
    let mut seen = conn.inner.remote_address();
    let watch_addr = !conn.outgoing && !is_synthetic(&seen);
    let mut check = tokio::time::interval(ADDR_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = check.tick(), if watch_addr => {
                let now = conn.inner.remote_address();
                if now != seen {
                    tracing::debug!(from = %seen, to = %now, "peer address changed; new hello");
                    seen = now;
                    let c = conn.clone();
                    tokio::spawn(async move { send_hello(&c).await }.in_current_span());
                }
            }
            bi = conn.inner.accept_bi() => match bi {
                Ok((send, recv)) => {
                    let fut = route_stream(inner.clone(), conn.clone(), Some(send), recv);
                    tokio::spawn(fut.in_current_span());
                }
                Err(_) => break,
            },
            uni = conn.inner.accept_uni() => match uni {
                Ok(recv) => {
                    let fut = route_stream(inner.clone(), conn.clone(), None, recv);
                    tokio::spawn(fut.in_current_span());
                }
                Err(_) => break,
            },
            dg = conn.inner.read_datagram() => match dg {
                Ok(data) => route_datagram(&inner, &(conn.clone() as Conn), data),
                Err(_) => break,
            },
        }
    }
    let reason = conn.inner.close_reason();
    tracing::debug!(?reason, "connection ended");
    inner.unregister(&conn);
    drop(guard);
}

fn route_datagram(inner: &Inner, conn: &Conn, data: Bytes) {
    match split_datagram(data) {
        Ok((proto, payload)) => match inner.router.get(&proto) {
            Some(h) => h.datagram(conn, payload),
            None => tracing::trace!(%proto, "datagram for unmounted protocol dropped"),
        },
        Err(_) => tracing::trace!("malformed datagram dropped"),
    }
}

async fn route_stream(
    inner: Arc<Inner>,
    conn: Arc<QuicConnection>,
    send: Option<quinn::SendStream>,
    recv: quinn::RecvStream,
) {
    let mut recv = QuicRecv(recv);
    let mut send = send.map(QuicSend);
    let refuse = |send: &mut Option<QuicSend>, recv: &mut QuicRecv, code: u32| {
        recv.stop(code);
        if let Some(s) = send.as_mut() {
            s.reset(code);
        }
    };
    let header = tokio::time::timeout(
        inner.config.limits.stream_header_timeout,
        read_protocol_header(&mut recv),
    )
    .await;
    let proto = match header {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "bad stream header");
            refuse(&mut send, &mut recv, codes::BAD_HEADER);
            return;
        }
        Err(_) => {
            tracing::debug!("stream header timeout");
            refuse(&mut send, &mut recv, codes::BAD_HEADER);
            return;
        }
    };
    if proto == CTL && send.is_none() {
        handle_ctl(&inner, &conn, recv).await;
        return;
    }
    if proto == PATHS && send.is_none() {
        handle_paths(&inner, &conn, recv).await;
        return;
    }
    if proto == PUNCH && send.is_none() {
        handle_punch(&inner, &conn, recv).await;
        return;
    }
    let Some(handler) = inner.router.get(&proto) else {
        tracing::debug!(%proto, "stream for unsupported protocol refused");
        refuse(&mut send, &mut recv, codes::UNSUPPORTED_PROTOCOL);
        return;
    };
    let conn: Conn = conn;
    match send {
        Some(send) => {
            handler
                .accept_bi(conn, Box::new(send), Box::new(recv))
                .await
        }
        None => handler.accept_uni(conn, Box::new(recv)).await,
    }
}

async fn handle_ctl(inner: &Arc<Inner>, conn: &QuicConnection, mut recv: QuicRecv) {
    let mut buf = Vec::new();
    let limit = kith_core::addr::MAX_NODE_ADDR_LEN as u64 + 1;
    if (&mut recv).take(limit).read_to_end(&mut buf).await.is_err() {
        return;
    }
    // The hello names us and the address the peer observes for us.
    match NodeAddr::decode(&buf) {
        Ok(hello) if hello.node_id == inner.id => {
            let seen = hello.direct.first().copied();
            conn.observed.send_replace(seen);
            // What the peer says is only a report (issue 14): it counts if the peer is
            // the home relay, or once independent peers agree. A later hello naming
            // another address (our NAT rebound or was renumbered) is a network change
            // under the same rule, and rate-limited. A relayed connection's addresses
            // are synthetic: nothing to learn.
            let remote = conn.inner.remote_address();
            let Some(seen) = seen.filter(|s| !is_synthetic(s) && !is_synthetic(&remote)) else {
                return;
            };
            let trusted = inner.is_home_relay(&conn.remote);
            let outcome = lock(&inner.observed).report(
                Instant::now(),
                Observer::Peer(conn.remote),
                remote,
                trusted,
                seen,
            );
            if outcome.muted {
                tracing::debug!(peer = %conn.remote.fmt_short(), %seen, "hello ignored: the peer changes its report too often");
            }
            if outcome.network_changed {
                tracing::debug!(%seen, trusted, "observers see a new address for us");
                inner.maybe_network_changed("observers see a new address for us");
            }
        }
        _ => tracing::debug!("malformed hello ignored"),
    }
}

impl Transport for Endpoint {
    fn local_id(&self) -> NodeId {
        self.node_id()
    }

    fn local_addr(&self) -> NodeAddr {
        self.node_addr()
    }

    fn connect(&self, addr: NodeAddr) -> BoxFuture<'_, Result<Conn, ConnectError>> {
        Box::pin(async move { Endpoint::connect(self, addr).await.map(|c| c as Conn) })
    }

    fn mount(
        &self,
        protocol: Protocol,
        handler: Arc<dyn ProtocolHandler>,
    ) -> Result<(), MountError> {
        Endpoint::mount(self, protocol, handler)
    }
}

/// Binds one UDP socket under the path layer and starts quinn on it.
fn bind_socket(addr: SocketAddr, server: quinn::ServerConfig, id: NodeId) -> std::io::Result<Sock> {
    let std_sock = std::net::UdpSocket::bind(addr)?;
    let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
    let raw = runtime.wrap_udp_socket(std_sock)?;
    let local = raw.local_addr()?;
    let table = PathTable::new(id, local.is_ipv6());
    let socket = Arc::new(PathSocket::new(raw, table.clone()));
    let mut ep_config = quinn::EndpointConfig::default();
    // Probes are told apart from QUIC by a clear fixed bit; never let peers grease it.
    ep_config.grease_quic_bit(false);
    let ep = quinn::Endpoint::new_with_abstract_socket(
        ep_config,
        Some(server),
        socket.clone() as Arc<dyn quinn::AsyncUdpSocket>,
        runtime,
    )?;
    Ok(Sock { ep, socket, table })
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
