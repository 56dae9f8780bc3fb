//! Binding: the UDP sockets under the path layer and quinn's configuration, the
//! relay service when configured, the accept loop and incoming handshakes, and admission
//! (the connection limit and the handshake-rate token bucket).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kith_core::net::{Router, codes};
use kith_core::{NodeId, SecretKey};
use quinn::VarInt;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use tokio::sync::Semaphore;
use tracing::Instrument;

use super::ctl::{drive, send_hello};
use super::dial::Slots;
use super::netchange::NetChange;
use super::relays::Relays;
use super::{Endpoint, Handle, Inner, Sock};
use crate::config::EndpointConfig;
use crate::conn::ZeroRtt;
use crate::observe::{ObservationConfig, Observations};
use crate::paths::{PathSocket, PathTable};
use crate::punch::start_paths;
use crate::relay::{RELAY_PROTOCOL, RELAY_TCP_ALPN, RelayServer};
use crate::sync::lock;
use crate::tls;

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

struct TokenBucket {
    tokens: f64,
    last: Instant,
}

/// What bounds the connections the endpoint takes on: `Limits::max_connections` and the
/// handshake rate (`Limits::handshake_rate`, `Limits::handshake_burst`).
pub(super) struct Admission {
    /// Connections counted against `max_connections` (incoming and outgoing).
    active: AtomicUsize,
    /// Handshake-rate token bucket (incoming handshakes only).
    bucket: Mutex<TokenBucket>,
}

impl Admission {
    fn new(burst: u32) -> Self {
        Self {
            active: AtomicUsize::new(0),
            bucket: Mutex::new(TokenBucket {
                tokens: f64::from(burst),
                last: Instant::now(),
            }),
        }
    }
}

/// Counts a connection against `max_connections` while it lives.
pub(super) struct ConnGuard(Arc<Inner>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.admission.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Inner {
    pub(super) fn try_reserve(self: &Arc<Self>) -> Option<ConnGuard> {
        let max = self.config.limits.max_connections;
        let mut cur = self.admission.active.load(Ordering::Acquire);
        loop {
            if cur >= max {
                return None;
            }
            match self.admission.active.compare_exchange(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(ConnGuard(self.clone())),
                Err(v) => cur = v,
            }
        }
    }

    fn take_handshake_token(&self) -> bool {
        let limits = &self.config.limits;
        let mut b = lock(&self.admission.bucket);
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
        let admission = Admission::new(config.limits.handshake_burst);
        let inner = Arc::new(Inner {
            id,
            key: key.clone(),
            v4,
            v6,
            observed: Mutex::new(Observations::new(ObservationConfig::default())),
            birthday_slot: Semaphore::new(1),
            relays: Relays::default(),
            discovery: Mutex::new(None),
            client_config,
            config,
            router: Router::default(),
            slots: Slots::default(),
            admission,
            closing: AtomicBool::new(false),
            portmap: Mutex::new(None),
            net: NetChange::default(),
        });
        for ep in inner.endpoints() {
            let span = tracing::debug_span!("endpoint", id = %inner.id.fmt_short());
            tokio::spawn(accept_loop(inner.clone(), ep.clone()).instrument(span));
        }
        let endpoint = Self {
            handle: Arc::new(Handle { inner }),
        };
        endpoint.inner().start_port_mapping();
        if let Some(rc) = endpoint.config().relay_server.clone() {
            let server = RelayServer::new(rc);
            endpoint
                .mount(RELAY_PROTOCOL, Arc::new(server.clone()))
                .map_err(|e| BindError::Config(e.to_string()))?;
            // The same relay over TLS/TCP on the same address, for UDP-blocked clients.
            if let Some(addr) = endpoint.inner().v4_local() {
                match tokio::net::TcpListener::bind(addr).await {
                    Ok(listener) => {
                        let tls = tls::server_config(&key, vec![RELAY_TCP_ALPN.to_vec()])?;
                        server.serve_tcp(listener, Arc::new(tls));
                    }
                    Err(e) => tracing::warn!(%addr, error = %e, "relay over TCP unavailable"),
                }
            }
        }
        endpoint.inner().start_stun().await;
        endpoint.inner().start_interface_poll();
        endpoint.reserve_home().await;
        Ok(endpoint)
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
        inner.yield_to_own_dial(id, deadline).await;
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
