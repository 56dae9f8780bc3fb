//! Relays: forwarding opaque packets between nodes that cannot reach each other directly.
//!
//! A relay is any kith node that mounts [`RelayServer`] under [`RELAY_PROTOCOL`]. A client
//! opens one bidirectional stream to it (its *reservation*); the relay knows the client's
//! [`NodeId`] from the authenticated connection, so a client can only receive packets
//! addressed to itself and every packet it sends is stamped with its own id as source.
//! Packets are opaque to the relay: kith sends end-to-end QUIC packets through it, so the
//! relay forwards ciphertext and never holds a session key.
//!
//! Wire format on the reservation stream: `kith_core::frame` frames (varint length,
//! capped) whose body is one [`RelayFrame`]:
//!
//! ```text
//! 0x01 | peer id (32) | packet     Packet: client→relay peer = destination,
//!                                          relay→client peer = source
//! 0x02 | peer id (32)               PeerGone: the relay has no reservation for that peer
//! 0x03 | status (1)                 Status: 0 = accepted, 1 = refused (too many clients)
//! ```
//!
//! Limits ([`RelayConfig`]): reservations, packet size, per-client rate (token bucket in
//! bytes; packets over the rate are dropped, as a congested UDP path would) and a bounded
//! queue per client (full → drop). A flooding client spends only its own budget.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};
use kith_core::frame::{FrameError, read_frame};
use kith_core::net::{
    BoxFuture, BoxRecvStream, BoxSendStream, Conn, Protocol, ProtocolHandler, StreamError,
    Transport,
};
use kith_core::{NodeAddr, NodeId};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::sync::lock;

/// The relay protocol.
pub const RELAY_PROTOCOL: Protocol = Protocol::from_static("kith/relay/1");

/// Largest packet a relay forwards (QUIC packets are at most ~1452 bytes on Ethernet).
pub const MAX_RELAY_PACKET: usize = 2048;

/// Largest relay frame body: type, id, packet.
const MAX_FRAME: usize = 1 + 32 + MAX_RELAY_PACKET;

/// One message on a relay reservation stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayFrame {
    /// A packet to (client→relay) or from (relay→client) `peer`.
    Packet {
        /// Destination or source.
        peer: NodeId,
        /// The opaque packet.
        packet: Bytes,
    },
    /// The relay holds no reservation for `peer`.
    PeerGone {
        /// The peer.
        peer: NodeId,
    },
    /// The relay's answer to a reservation.
    Status(RelayStatus),
}

/// Whether a relay accepted a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayStatus {
    /// The reservation is held.
    Accepted,
    /// The relay has no room (reservation limit reached).
    Refused,
}

/// Error decoding a [`RelayFrame`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RelayFrameError {
    /// The frame is empty or shorter than its type requires.
    #[error("relay frame truncated")]
    Truncated,
    /// The frame type is unknown.
    #[error("unknown relay frame type {0:#x}")]
    UnknownType(u8),
    /// The peer id is not a valid key.
    #[error("invalid peer id in relay frame")]
    InvalidPeer,
    /// The packet is empty or longer than [`MAX_RELAY_PACKET`].
    #[error("relay packet of {0} bytes is empty or too large")]
    BadPacketSize(usize),
    /// A status byte other than 0 or 1, or trailing bytes.
    #[error("malformed relay frame")]
    Malformed,
}

impl RelayFrame {
    /// Encodes the frame body (without the length prefix).
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(64);
        match self {
            RelayFrame::Packet { peer, packet } => {
                out.reserve(33 + packet.len());
                out.put_u8(0x01);
                out.put_slice(peer.as_bytes());
                out.put_slice(packet);
            }
            RelayFrame::PeerGone { peer } => {
                out.put_u8(0x02);
                out.put_slice(peer.as_bytes());
            }
            RelayFrame::Status(s) => {
                out.put_u8(0x03);
                out.put_u8(match s {
                    RelayStatus::Accepted => 0,
                    RelayStatus::Refused => 1,
                });
            }
        }
        out.freeze()
    }

    /// The frame with its length prefix, ready to write on a stream.
    pub fn to_wire(&self) -> Bytes {
        kith_core::frame::frame_raw(&self.encode())
    }

    /// Decodes a frame body, validating every field.
    pub fn decode(mut body: Bytes) -> Result<Self, RelayFrameError> {
        let ty = *body.first().ok_or(RelayFrameError::Truncated)?;
        let peer = |b: &Bytes| -> Result<NodeId, RelayFrameError> {
            let id = b.get(1..33).ok_or(RelayFrameError::Truncated)?;
            NodeId::try_from_slice(id).map_err(|_| RelayFrameError::InvalidPeer)
        };
        match ty {
            0x01 => {
                let peer = peer(&body)?;
                let packet = body.split_off(33);
                if packet.is_empty() || packet.len() > MAX_RELAY_PACKET {
                    return Err(RelayFrameError::BadPacketSize(packet.len()));
                }
                Ok(RelayFrame::Packet { peer, packet })
            }
            0x02 => {
                let p = peer(&body)?;
                if body.len() != 33 {
                    return Err(RelayFrameError::Malformed);
                }
                Ok(RelayFrame::PeerGone { peer: p })
            }
            0x03 => match body.get(1..) {
                Some([0]) => Ok(RelayFrame::Status(RelayStatus::Accepted)),
                Some([1]) => Ok(RelayFrame::Status(RelayStatus::Refused)),
                Some([]) | None => Err(RelayFrameError::Truncated),
                Some(_) => Err(RelayFrameError::Malformed),
            },
            other => Err(RelayFrameError::UnknownType(other)),
        }
    }
}

/// Limits of a [`RelayServer`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RelayConfig {
    /// Most simultaneous reservations. Default 512.
    pub max_clients: usize,
    /// Sustained bytes per second one client may send through the relay. Default 2 MiB/s.
    pub rate_bytes_per_sec: u64,
    /// Bytes one client may send in a burst above the rate. Default 256 KiB.
    pub burst_bytes: u64,
    /// Packets queued towards one client before new ones are dropped. Default 512.
    pub queue_packets: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            max_clients: 512,
            rate_bytes_per_sec: 2 << 20,
            burst_bytes: 256 << 10,
            queue_packets: 512,
        }
    }
}

/// Counters of a relay server.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Packets forwarded to their destination's queue.
    pub forwarded: AtomicU64,
    /// Packets dropped because the sender exceeded its rate.
    pub dropped_rate: AtomicU64,
    /// Packets dropped because the destination's queue was full.
    pub dropped_queue: AtomicU64,
    /// Packets for peers without a reservation.
    pub dropped_no_peer: AtomicU64,
    /// Reservations refused at the limit.
    pub refused: AtomicU64,
}

struct Client {
    tx: mpsc::Sender<RelayFrame>,
    /// Distinguishes a reservation from a later one by the same node.
    generation: u64,
}

/// The relay side: mount it under [`RELAY_PROTOCOL`] to offer relaying. Cloning shares
/// the relay.
#[derive(Clone)]
pub struct RelayServer {
    inner: Arc<ServerInner>,
}

struct ServerInner {
    /// Where [`RelayServer::tap`] copies forwarded packets (test hook).
    #[cfg(feature = "test-util")]
    tap: Mutex<Option<mpsc::UnboundedSender<Bytes>>>,
    config: RelayConfig,
    clients: Mutex<HashMap<NodeId, Client>>,
    next_generation: AtomicU64,
    stats: RelayStats,
}

impl fmt::Debug for RelayServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayServer")
            .field("config", &self.inner.config)
            .field("clients", &lock(&self.inner.clients).len())
            .finish()
    }
}

struct Bucket {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
}

impl Bucket {
    fn take(&mut self, n: usize) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= n as f64 {
            self.tokens -= n as f64;
            true
        } else {
            false
        }
    }
}

impl RelayServer {
    /// A relay with these limits.
    pub fn new(config: RelayConfig) -> Self {
        Self {
            inner: Arc::new(ServerInner {
                #[cfg(feature = "test-util")]
                tap: Mutex::new(None),
                config,
                clients: Mutex::new(HashMap::new()),
                next_generation: AtomicU64::new(1),
                stats: RelayStats::default(),
            }),
        }
    }

    /// The relay's counters.
    pub fn stats(&self) -> &RelayStats {
        &self.inner.stats
    }

    /// Number of reservations held.
    pub fn clients(&self) -> usize {
        lock(&self.inner.clients).len()
    }

    /// Copies every forwarded packet to the returned channel (unbounded): what an
    /// observer on the relay sees. Test hook: only with the `test-util` feature.
    #[cfg(feature = "test-util")]
    pub fn tap(&self) -> mpsc::UnboundedReceiver<Bytes> {
        let (tx, rx) = mpsc::unbounded_channel();
        *lock(&self.inner.tap) = Some(tx);
        rx
    }
}

impl ServerInner {
    /// Serves one reservation of the authenticated client `me` over any byte stream (a
    /// QUIC stream, or TLS over TCP where UDP is blocked).
    async fn serve_io<W, R>(self: Arc<Self>, me: NodeId, mut send: W, mut recv: R)
    where
        W: AsyncWrite + Unpin + Send + 'static,
        R: AsyncRead + Unpin + Send,
    {
        let (tx, mut rx) = mpsc::channel::<RelayFrame>(self.config.queue_packets);
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let accepted = {
            let mut clients = lock(&self.clients);
            // A node re-reserving replaces its old reservation; others count against the limit.
            if clients.len() >= self.config.max_clients && !clients.contains_key(&me) {
                false
            } else {
                clients.insert(me, Client { tx, generation });
                true
            }
        };
        if !accepted {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            let _ = send
                .write_all(&RelayFrame::Status(RelayStatus::Refused).to_wire())
                .await;
            let _ = send.shutdown().await;
            return;
        }
        tracing::debug!(client = %me.fmt_short(), "relay reservation accepted");
        let writer = tokio::spawn(async move {
            if send
                .write_all(&RelayFrame::Status(RelayStatus::Accepted).to_wire())
                .await
                .is_err()
            {
                return;
            }
            while let Some(frame) = rx.recv().await {
                if send.write_all(&frame.to_wire()).await.is_err() {
                    return;
                }
            }
        });
        let mut bucket = Bucket {
            tokens: self.config.burst_bytes as f64,
            last: Instant::now(),
            rate: self.config.rate_bytes_per_sec as f64,
            burst: self.config.burst_bytes as f64,
        };
        loop {
            let body = match read_frame(&mut recv, MAX_FRAME).await {
                Ok(Some(b)) => b,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(client = %me.fmt_short(), error = %e, "relay stream error");
                    break;
                }
            };
            let (dest, packet) = match RelayFrame::decode(body) {
                Ok(RelayFrame::Packet { peer, packet }) => (peer, packet),
                Ok(_) | Err(_) => break,
            };
            if !bucket.take(packet.len()) {
                self.stats.dropped_rate.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            #[cfg(feature = "test-util")]
            if let Some(tap) = lock(&self.tap).as_ref() {
                let _ = tap.send(packet.clone());
            }
            let target = lock(&self.clients).get(&dest).map(|c| c.tx.clone());
            match target {
                Some(t) => match t.try_send(RelayFrame::Packet { peer: me, packet }) {
                    Ok(()) => {
                        self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        self.stats.dropped_queue.fetch_add(1, Ordering::Relaxed);
                    }
                },
                None => {
                    self.stats.dropped_no_peer.fetch_add(1, Ordering::Relaxed);
                    let own = lock(&self.clients).get(&me).map(|c| c.tx.clone());
                    if let Some(own) = own {
                        let _ = own.try_send(RelayFrame::PeerGone { peer: dest });
                    }
                }
            }
        }
        {
            let mut clients = lock(&self.clients);
            if clients.get(&me).is_some_and(|c| c.generation == generation) {
                clients.remove(&me);
            }
        }
        writer.abort();
        tracing::debug!(client = %me.fmt_short(), "relay reservation ended");
    }
}

impl ProtocolHandler for RelayServer {
    fn accept_bi(
        &self,
        conn: Conn,
        send: BoxSendStream,
        recv: BoxRecvStream,
    ) -> BoxFuture<'static, ()> {
        Box::pin(self.inner.clone().serve_io(conn.remote_id(), send, recv))
    }
}

/// TLS ALPN of the relay protocol over TCP (for clients whose UDP is blocked).
pub const RELAY_TCP_ALPN: &[u8] = b"kith-relay-tcp/1";

impl RelayServer {
    /// Serves reservations over TLS on TCP, for clients that cannot use UDP. The TLS
    /// handshake authenticates the client's node id exactly as over QUIC.
    pub(crate) fn serve_tcp(
        &self,
        listener: tokio::net::TcpListener,
        tls: Arc<rustls::ServerConfig>,
    ) {
        let inner = self.inner.clone();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        // Handshakes in flight are bounded like reservations.
        let pending = Arc::new(tokio::sync::Semaphore::new(inner.config.max_clients.max(1)));
        tokio::spawn(async move {
            loop {
                let Ok((tcp, from)) = listener.accept().await else {
                    return;
                };
                let Ok(permit) = pending.clone().try_acquire_owned() else {
                    tracing::debug!(%from, "relay over TCP: too many handshakes");
                    continue;
                };
                let (inner, acceptor) = (inner.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let tls =
                        match tokio::time::timeout(TCP_HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
                            .await
                        {
                            Ok(Ok(t)) => t,
                            _ => return,
                        };
                    drop(permit);
                    let Some(me) =
                        crate::tls::peer_node_id(tls.get_ref().1.peer_certificates().map(|c| {
                            Box::new(c.iter().map(|c| c.clone().into_owned()).collect::<Vec<_>>())
                                as Box<dyn std::any::Any>
                        }))
                    else {
                        return;
                    };
                    let (recv, send) = tokio::io::split(tls);
                    inner.serve_io(me, send, recv).await;
                });
            }
        });
    }
}

/// Time a TCP client has to complete its TLS handshake with a relay.
const TCP_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Error reserving a relay or sending through it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The relay could not be reached.
    #[error("cannot reach relay: {0}")]
    Connect(#[from] kith_core::net::ConnectError),
    /// The reservation stream failed.
    #[error("relay stream failed: {0}")]
    Stream(#[from] StreamError),
    /// The relay refused the reservation (it is full).
    #[error("relay refused the reservation")]
    Refused,
    /// The relay answered something that is not a relay frame.
    #[error("relay sent a malformed frame")]
    Malformed,
    /// The packet is empty or larger than [`MAX_RELAY_PACKET`].
    #[error("packet of {0} bytes cannot be relayed")]
    PacketSize(usize),
    /// The local send queue is full; the packet was not sent.
    #[error("relay send queue is full")]
    QueueFull,
    /// The reservation has ended.
    #[error("relay reservation closed")]
    Closed,
}

/// A packet received through a relay, or a notice about a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEvent {
    /// `packet` from `from`.
    Packet {
        /// The sender (as authenticated by the relay).
        from: NodeId,
        /// The packet.
        packet: Bytes,
    },
    /// The relay has no reservation for `peer`: packets to it are dropped.
    PeerGone {
        /// The peer.
        peer: NodeId,
    },
}

/// A client's reservation on a relay: send packets to nodes by id, receive theirs.
#[derive(Clone)]
pub struct RelayClient {
    relay: NodeId,
    tx: mpsc::Sender<RelayFrame>,
}

impl fmt::Debug for RelayClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayClient")
            .field("relay", &self.relay)
            .finish()
    }
}

/// Packets queued towards the relay before [`RelayClient::send`] reports `QueueFull`.
const CLIENT_QUEUE: usize = 512;

impl RelayClient {
    /// Connects to `relay` over `transport` and reserves; received packets arrive on the
    /// returned channel (bounded: when the application does not keep up, the reader
    /// waits and the relay drops what does not fit its queue).
    pub async fn connect(
        transport: &dyn Transport,
        relay: NodeAddr,
    ) -> Result<(RelayClient, mpsc::Receiver<RelayEvent>), RelayError> {
        let relay_id = relay.node_id;
        let conn = transport.connect(relay).await?;
        let (send, mut recv) = conn.open_bi(&RELAY_PROTOCOL).await?;
        // open_bi has sent the protocol header, so the relay sees the reservation now.
        expect_accepted(&mut recv).await?;
        Ok(spawn_client(relay_id, send, recv, Box::new(conn)))
    }

    /// Reserves on `relay` over TLS on TCP: for hosts whose UDP is blocked. `key` is this
    /// node's identity (the relay authenticates it as over QUIC).
    pub async fn connect_tcp(
        key: &kith_core::SecretKey,
        relay: NodeAddr,
    ) -> Result<(RelayClient, mpsc::Receiver<RelayEvent>), RelayError> {
        let relay_id = relay.node_id;
        let addr = *relay.direct.first().ok_or(RelayError::Connect(
            kith_core::net::ConnectError::NoAddress(relay_id),
        ))?;
        let tcp_err = |e: std::io::Error| {
            RelayError::Connect(kith_core::net::ConnectError::Transport(e.to_string()))
        };
        let attempt = async {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(tcp_err)?;
            let _ = tcp.set_nodelay(true);
            let config =
                crate::tls::client_config(key, vec![RELAY_TCP_ALPN.to_vec()]).map_err(|e| {
                    RelayError::Connect(kith_core::net::ConnectError::Transport(e.to_string()))
                })?;
            let name = rustls::pki_types::ServerName::try_from(crate::tls::server_name(&relay_id))
                .map_err(|_| RelayError::Malformed)?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|_| {
                    RelayError::Connect(kith_core::net::ConnectError::Authentication {
                        expected: relay_id,
                    })
                })?;
            let (mut recv, send) = tokio::io::split(tls);
            expect_accepted(&mut recv).await?;
            Ok(spawn_client(relay_id, send, recv, Box::new(())))
        };
        match tokio::time::timeout(TCP_HANDSHAKE_TIMEOUT, attempt).await {
            Ok(r) => r,
            Err(_) => Err(RelayError::Connect(kith_core::net::ConnectError::TimedOut)),
        }
    }

    /// The relay this reservation is on.
    pub fn relay(&self) -> NodeId {
        self.relay
    }

    /// Queues `packet` for `to`. Never waits: a full queue is an error, like a full
    /// socket buffer.
    pub fn send(&self, to: NodeId, packet: Bytes) -> Result<(), RelayError> {
        if packet.is_empty() || packet.len() > MAX_RELAY_PACKET {
            return Err(RelayError::PacketSize(packet.len()));
        }
        self.tx
            .try_send(RelayFrame::Packet { peer: to, packet })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => RelayError::QueueFull,
                mpsc::error::TrySendError::Closed(_) => RelayError::Closed,
            })
    }
}

/// Reads the relay's answer to a reservation.
async fn expect_accepted<R: AsyncRead + Unpin>(recv: &mut R) -> Result<(), RelayError> {
    let status = match read_frame(recv, MAX_FRAME).await {
        Ok(Some(body)) => RelayFrame::decode(body).map_err(|_| RelayError::Malformed)?,
        Ok(None) => return Err(RelayError::Closed),
        Err(FrameError::Io(e)) => return Err(StreamError::from_io(e).into()),
        Err(_) => return Err(RelayError::Malformed),
    };
    match status {
        RelayFrame::Status(RelayStatus::Accepted) => Ok(()),
        RelayFrame::Status(RelayStatus::Refused) => Err(RelayError::Refused),
        _ => Err(RelayError::Malformed),
    }
}

/// Runs a reservation's writer and reader tasks; `keep` is held as long as the reader
/// runs (the QUIC connection, for example).
fn spawn_client<W, R>(
    relay: NodeId,
    mut send: W,
    mut recv: R,
    keep: Box<dyn std::any::Any + Send>,
) -> (RelayClient, mpsc::Receiver<RelayEvent>)
where
    W: AsyncWrite + Unpin + Send + 'static,
    R: AsyncRead + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<RelayFrame>(CLIENT_QUEUE);
    let (ev_tx, ev_rx) = mpsc::channel::<RelayEvent>(CLIENT_QUEUE);
    tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if send.write_all(&frame.to_wire()).await.is_err() {
                return;
            }
        }
        let _ = send.shutdown().await;
    });
    tokio::spawn(async move {
        let _keep = keep;
        loop {
            let body = match read_frame(&mut recv, MAX_FRAME).await {
                Ok(Some(b)) => b,
                _ => return,
            };
            let ev = match RelayFrame::decode(body) {
                Ok(RelayFrame::Packet { peer, packet }) => {
                    RelayEvent::Packet { from: peer, packet }
                }
                Ok(RelayFrame::PeerGone { peer }) => RelayEvent::PeerGone { peer },
                Ok(RelayFrame::Status(_)) | Err(_) => return,
            };
            if ev_tx.send(ev).await.is_err() {
                return;
            }
        }
    });
    (RelayClient { relay, tx }, ev_rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(n: u8) -> NodeId {
        kith_core::SecretKey::from_bytes(&[n; 32]).node_id()
    }

    #[test]
    fn frames_round_trip() {
        for f in [
            RelayFrame::Packet {
                peer: id(1),
                packet: Bytes::from_static(b"quic"),
            },
            RelayFrame::PeerGone { peer: id(2) },
            RelayFrame::Status(RelayStatus::Accepted),
            RelayFrame::Status(RelayStatus::Refused),
        ] {
            assert_eq!(RelayFrame::decode(f.encode()), Ok(f));
        }
    }

    #[test]
    fn bad_frames_are_typed_errors() {
        assert_eq!(
            RelayFrame::decode(Bytes::new()),
            Err(RelayFrameError::Truncated)
        );
        assert_eq!(
            RelayFrame::decode(Bytes::from_static(&[9])),
            Err(RelayFrameError::UnknownType(9))
        );
        let mut empty = BytesMut::from(&[1u8][..]);
        empty.put_slice(id(1).as_bytes());
        assert_eq!(
            RelayFrame::decode(empty.freeze()),
            Err(RelayFrameError::BadPacketSize(0))
        );
        let mut big = BytesMut::from(&[1u8][..]);
        big.put_slice(id(1).as_bytes());
        big.put_slice(&[0u8; MAX_RELAY_PACKET + 1]);
        assert_eq!(
            RelayFrame::decode(big.freeze()),
            Err(RelayFrameError::BadPacketSize(MAX_RELAY_PACKET + 1))
        );
        assert_eq!(
            RelayFrame::decode(Bytes::from_static(&[3, 7])),
            Err(RelayFrameError::Malformed)
        );
        // The first byte string of the form [n, 0, …] that is not a curve point.
        let invalid = (0u8..=255)
            .map(|n| {
                let mut b = [0u8; 32];
                b[0] = n;
                b
            })
            .find(|b| NodeId::from_bytes(b).is_err())
            .unwrap_or_else(|| panic!("some small y is not on the curve"));
        let mut bad_id = BytesMut::from(&[2u8][..]);
        bad_id.put_slice(&invalid);
        assert_eq!(
            RelayFrame::decode(bad_id.freeze()),
            Err(RelayFrameError::InvalidPeer)
        );
    }

    proptest! {
        #[test]
        fn decode_never_panics_and_round_trips(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(f) = RelayFrame::decode(Bytes::from(data.clone())) {
                prop_assert_eq!(f.encode().to_vec(), data);
            }
        }
    }
}
