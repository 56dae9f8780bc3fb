//! Dialing: `connect` (joining a dial in flight), discovery of a node dialed by id alone,
//! the address list (an equal share of the time each), relay hints and 0-RTT; the
//! per-peer slot table and the simultaneous-dial tie-break (the connection dialed by the
//! smaller node id survives).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use kith_core::net::{ConnectError, ConnectionError, Discovery, codes};
use kith_core::{NodeAddr, NodeId};
use quinn::{TransportErrorCode, VarInt};
use tokio::sync::watch;
use tracing::Instrument;

use super::ctl::drive;
use super::{Endpoint, Inner};
use crate::conn::{QuicConnection, ZeroRtt, map_conn_err};
use crate::observe::Observer;
use crate::punch::start_paths;
use crate::sync::lock;
use crate::tls;

/// TLS alert `no_application_protocol` (RFC 8446 §6.2), as a QUIC crypto error.
const ALERT_NO_APPLICATION_PROTOCOL: u8 = 0x78;

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

/// The slot table: one slot per peer we hold a connection to or dial (concurrent dials
/// to one peer share a slot, and so one dial).
#[derive(Default)]
pub(super) struct Slots {
    peers: Mutex<HashMap<NodeId, PeerSlot>>,
}

impl Slots {
    /// The live connection to `id`, if any.
    pub(super) fn live(&self, id: &NodeId) -> Option<Arc<QuicConnection>> {
        lock(&self.peers).get(id).and_then(PeerSlot::live)
    }

    /// All live connections.
    pub(super) fn all_live(&self) -> Vec<Arc<QuicConnection>> {
        lock(&self.peers)
            .values()
            .filter_map(PeerSlot::live)
            .collect()
    }

    /// Every registered connection, closed or not (to close them all at shutdown).
    pub(super) fn registered(&self) -> Vec<Arc<QuicConnection>> {
        lock(&self.peers)
            .values()
            .filter_map(|s| s.conn.clone())
            .collect()
    }

    /// Live connections that run over a mapped address (relayed, or direct under the
    /// path layer).
    pub(super) fn path_connections(&self) -> Vec<Arc<QuicConnection>> {
        lock(&self.peers)
            .values()
            .filter_map(PeerSlot::live)
            .filter(|c| c.table.is_some())
            .collect()
    }

    /// Number of peers with a slot (live connections, dials in flight).
    pub(super) fn len(&self) -> usize {
        lock(&self.peers).len()
    }
}

impl Inner {
    /// Decides which of two connections to the same peer survives; returns true if
    /// `conn` is kept. Both sides reach the same decision: the connection dialed by the
    /// smaller node id wins; between two dialed by the same side, the newer wins.
    pub(super) fn register(&self, conn: &Arc<QuicConnection>) -> bool {
        let mut peers = lock(&self.slots.peers);
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

    pub(super) fn unregister(&self, conn: &Arc<QuicConnection>) {
        let mut peers = lock(&self.slots.peers);
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
        let mut rx = lock(&self.slots.peers)
            .entry(id)
            .or_insert_with(PeerSlot::new)
            .changed
            .subscribe();
        loop {
            if let Some(c) = lock(&self.slots.peers).get(&id).and_then(PeerSlot::live) {
                return Some(c);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return None,
            }
        }
    }

    /// For an incoming connection from `id`: if our own dial to `id` is in flight and
    /// would win the tie-break (we have the smaller id), lets it finish first (until
    /// `deadline`).
    pub(super) async fn yield_to_own_dial(&self, id: NodeId, deadline: tokio::time::Instant) {
        if self.id < id {
            let rx = lock(&self.slots.peers)
                .get(&id)
                .filter(|s| s.dialing)
                .map(|s| s.changed.subscribe());
            if let Some(mut rx) = rx {
                loop {
                    if !lock(&self.slots.peers).get(&id).is_some_and(|s| s.dialing) {
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
    }
}

impl Endpoint {
    /// The live connection to `id`, if any.
    pub fn connection(&self, id: &NodeId) -> Option<Arc<QuicConnection>> {
        self.inner().slots.live(id)
    }

    /// Number of peers the endpoint keeps state for (live connections, dials in
    /// flight). For tests that check nothing leaks; not part of the stable API.
    #[doc(hidden)]
    pub fn tracked_peers(&self) -> usize {
        self.inner().slots.len()
    }

    /// All live connections.
    pub fn connections(&self) -> Vec<Arc<QuicConnection>> {
        self.inner().slots.all_live()
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
                let mut peers = lock(&inner.slots.peers);
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
        let mut peers = lock(&inner.slots.peers);
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
