//! The transport traits: how higher layers open and accept connections, streams
//! and datagrams without naming any QUIC library.
//!
//! * [`Transport`] dials a [`NodeAddr`] and mounts [`ProtocolHandler`]s by [`Protocol`] name.
//! * [`Connection`] is one authenticated, encrypted connection to a peer; it carries
//!   streams and datagrams of every mounted protocol.
//! * [`SendStream`] / [`RecvStream`] are tokio `AsyncWrite` / `AsyncRead` with QUIC's
//!   extra verbs (finish, reset, stop).
//!
//! kith-transport implements these over QUIC; `kith_core::mem` (feature `mem`) implements
//! them in memory for tests.
//!
//! # Protocol selection on one connection
//!
//! Peers keep **one connection per peer pair**; every stream starts with a protocol
//! header (one length byte, then the protocol name, for example `kith/dht/1`) and
//! every datagram with the same prefix. The receiving side routes the stream or
//! datagram to the handler mounted under that name, or refuses the stream with
//! [`codes::UNSUPPORTED_PROTOCOL`], which the opener sees as
//! [`StreamError::UnsupportedProtocol`].

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use crate::{NodeAddr, NodeId};

/// A boxed, sendable future, as returned by the object-safe traits here.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Application error codes kith uses on streams and connections.
pub mod codes {
    /// Stream refused: no handler is mounted for the requested protocol.
    pub const UNSUPPORTED_PROTOCOL: u32 = 0x6b01;
    /// Stream refused: the protocol header did not arrive in time or was malformed.
    pub const BAD_HEADER: u32 = 0x6b02;
    /// Stream abandoned by a handler that hit an error (for example an oversized frame).
    pub const PROTOCOL_ERROR: u32 = 0x6b03;
    /// Connection closed normally by the application.
    pub const CLOSE_NORMAL: u32 = 0;
    /// Connection closed because a duplicate connection to the same peer won the tie-break.
    pub const CLOSE_DUPLICATE: u32 = 0x6b10;
    /// Connection refused because a limit (connections, handshake rate) was reached.
    pub const CLOSE_LIMIT: u32 = 0x6b11;
    /// Connection closed because the endpoint shuts down.
    pub const CLOSE_SHUTDOWN: u32 = 0x6b12;
}

/// Longest protocol name, in bytes.
pub const MAX_PROTOCOL_LEN: usize = 64;

/// The name of an application protocol carried over kith, for example `kith/dht/1`.
///
/// 1 to 64 bytes of printable ASCII; by convention `<owner>/<name>/<version>`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Protocol(Cow<'static, str>);

/// A protocol name is empty, too long, or not printable ASCII.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid protocol name: 1 to {MAX_PROTOCOL_LEN} printable ASCII bytes required")]
pub struct ProtocolNameError;

const fn valid_protocol(b: &[u8]) -> bool {
    if b.is_empty() || b.len() > MAX_PROTOCOL_LEN {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if !(b[i] > 0x20 && b[i] < 0x7f) {
            return false;
        }
        i += 1;
    }
    true
}

impl Protocol {
    /// A protocol name from a string literal.
    ///
    /// # Panics
    /// At compile time (in a `const`) or at run time if the name is invalid: a static
    /// name is part of the program, so an invalid one is a programming error.
    pub const fn from_static(name: &'static str) -> Self {
        assert!(valid_protocol(name.as_bytes()), "invalid protocol name");
        Self(Cow::Borrowed(name))
    }

    /// A protocol name from any string, checked.
    pub fn new(name: impl Into<String>) -> Result<Self, ProtocolNameError> {
        let name = name.into();
        if valid_protocol(name.as_bytes()) {
            Ok(Self(Cow::Owned(name)))
        } else {
            Err(ProtocolNameError)
        }
    }

    /// Parses a name received from the network.
    pub fn from_wire(name: &[u8]) -> Result<Self, ProtocolNameError> {
        match std::str::from_utf8(name) {
            Ok(s) if valid_protocol(name) => Ok(Self(Cow::Owned(s.to_owned()))),
            _ => Err(ProtocolNameError),
        }
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The stream header that selects this protocol: one length byte, then the name.
    pub fn header(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(1 + self.0.len());
        out.put_u8(self.0.len() as u8);
        out.put_slice(self.0.as_bytes());
        out.freeze()
    }

    /// A datagram of this protocol: the header followed by `payload`.
    pub fn datagram(&self, payload: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(1 + self.0.len() + payload.len());
        out.put_u8(self.0.len() as u8);
        out.put_slice(self.0.as_bytes());
        out.put_slice(payload);
        out.freeze()
    }

    /// Bytes of overhead the protocol prefix adds to each datagram.
    pub fn datagram_overhead(&self) -> usize {
        1 + self.0.len()
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Protocol({})", self.0)
    }
}

/// Splits a received datagram into its protocol name and payload.
pub fn split_datagram(mut data: Bytes) -> Result<(Protocol, Bytes), ProtocolNameError> {
    let len = *data.first().ok_or(ProtocolNameError)? as usize;
    if data.len() < 1 + len {
        return Err(ProtocolNameError);
    }
    let proto = Protocol::from_wire(&data[1..1 + len])?;
    Ok((proto, data.split_off(1 + len)))
}

/// Reads the protocol header at the start of an incoming stream.
pub async fn read_protocol_header<R: AsyncRead + Unpin + ?Sized>(
    recv: &mut R,
) -> Result<Protocol, StreamError> {
    let len = recv.read_u8().await.map_err(StreamError::from_io)? as usize;
    if len == 0 || len > MAX_PROTOCOL_LEN {
        return Err(StreamError::BadHeader);
    }
    let mut name = [0u8; MAX_PROTOCOL_LEN];
    recv.read_exact(&mut name[..len])
        .await
        .map_err(StreamError::from_io)?;
    Protocol::from_wire(&name[..len]).map_err(|_| StreamError::BadHeader)
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// This side closed the connection.
    #[error("connection closed locally")]
    LocallyClosed,
    /// The peer closed the connection with an application code and reason.
    #[error("connection closed by peer (code {code:#x}): {reason}")]
    ClosedByPeer {
        /// Application close code (see [`codes`]).
        code: u32,
        /// Reason text sent by the peer (lossily decoded).
        reason: String,
    },
    /// No packet from the peer within the idle timeout.
    #[error("connection timed out")]
    TimedOut,
    /// The peer reset the connection (stateless reset or a transport-level close).
    #[error("connection reset by peer: {0}")]
    Reset(String),
    /// A transport protocol violation was detected.
    #[error("transport error: {0}")]
    Transport(String),
}

/// Error on a stream (also carried inside the `io::Error`s of the stream traits).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The peer has no handler mounted for the protocol this stream asked for.
    #[error("peer does not support this protocol")]
    UnsupportedProtocol,
    /// The stream's protocol header was missing or malformed.
    #[error("malformed or missing protocol header")]
    BadHeader,
    /// The peer abandoned its sending side with this code.
    #[error("stream reset by peer (code {0:#x})")]
    Reset(u32),
    /// The peer stopped reading with this code.
    #[error("stream stopped by peer (code {0:#x})")]
    Stopped(u32),
    /// The stream was already finished or reset locally.
    #[error("stream already closed")]
    ClosedStream,
    /// No stream could be opened within the open timeout: the peer's stream limit is reached.
    #[error("stream limit reached: no stream available within {0:?}")]
    StreamLimit(Duration),
    /// The connection ended.
    #[error("connection lost: {0}")]
    ConnectionLost(#[from] ConnectionError),
    /// The stream ended before the expected data arrived.
    #[error("stream ended early")]
    UnexpectedEnd,
    /// The stream was opened in 0-RTT and the peer rejected early data; open it again.
    #[error("0-RTT data was rejected by the peer; retry on the same connection")]
    ZeroRttRejected,
}

impl StreamError {
    /// Recovers the typed error from an `io::Error` produced by a kith stream.
    pub fn from_io(err: io::Error) -> Self {
        if err.kind() == io::ErrorKind::UnexpectedEof {
            return StreamError::UnexpectedEnd;
        }
        match err.get_ref().and_then(|e| e.downcast_ref::<StreamError>()) {
            Some(e) => e.clone(),
            None => StreamError::ConnectionLost(ConnectionError::Transport(err.to_string())),
        }
    }

    /// Wraps this error in an `io::Error` (what the stream traits return).
    pub fn into_io(self) -> io::Error {
        let kind = match self {
            StreamError::UnexpectedEnd => io::ErrorKind::UnexpectedEof,
            StreamError::ConnectionLost(_) => io::ErrorKind::ConnectionAborted,
            _ => io::ErrorKind::ConnectionReset,
        };
        io::Error::new(kind, self)
    }
}

/// Error sending a datagram.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DatagramError {
    /// The datagram (with its protocol prefix) exceeds what the path can carry.
    #[error("datagram of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Size with the protocol prefix.
        size: usize,
        /// Current maximum.
        max: usize,
    },
    /// The peer does not accept datagrams.
    #[error("peer does not accept datagrams")]
    Unsupported,
    /// The connection ended.
    #[error("connection lost: {0}")]
    ConnectionLost(#[from] ConnectionError),
}

/// Error dialing a peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The address has no direct address or relay to try, and no discovery found one.
    #[error("no address known for {0:?}")]
    NoAddress(NodeId),
    /// A node cannot dial itself.
    #[error("cannot dial self")]
    DialSelf,
    /// The peer did not prove the expected key: it is somebody else, or could not authenticate.
    #[error("peer failed to authenticate as {expected:?}")]
    Authentication {
        /// The key the dialer asked for.
        expected: NodeId,
    },
    /// The peer does not speak this version of the kith transport (TLS ALPN mismatch).
    #[error("peer does not speak the kith transport protocol version we offer")]
    ProtocolMismatch,
    /// The handshake did not complete within the configured timeout.
    #[error("connection attempt timed out")]
    TimedOut,
    /// The peer refused the connection (for example its connection limit is reached).
    #[error("connection refused by peer: {0}")]
    Refused(ConnectionError),
    /// A local limit (connections, pending dials) is reached.
    #[error("local limit reached: {0}")]
    LimitReached(&'static str),
    /// The local endpoint is closed.
    #[error("endpoint is closed")]
    EndpointClosed,
    /// Any other transport failure (I/O, invalid address), described.
    #[error("transport failure: {0}")]
    Transport(String),
}

/// Error mounting a protocol handler.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MountError {
    /// A handler is already mounted under this protocol name.
    #[error("protocol {0} is already mounted")]
    AlreadyMounted(Protocol),
}

/// The sending half of a stream.
pub trait SendStream: AsyncWrite + Send + Unpin + fmt::Debug {
    /// Ends the stream cleanly: the peer reads end-of-stream after all data written.
    fn finish(&mut self) -> Result<(), StreamError>;
    /// Abandons the stream; the peer's reads fail with [`StreamError::Reset`]`(code)`.
    fn reset(&mut self, code: u32);
    /// Sets the stream's send priority on its connection: data of higher-priority
    /// streams goes first; streams of equal priority share the link. The default is 0;
    /// transports without priorities ignore it (the default implementation does nothing).
    fn set_priority(&mut self, priority: i32) {
        let _ = priority;
    }
}

/// The receiving half of a stream.
pub trait RecvStream: AsyncRead + Send + Unpin + fmt::Debug {
    /// Tells the peer to stop sending; its writes fail with [`StreamError::Stopped`]`(code)`.
    fn stop(&mut self, code: u32);
    /// Reads what arrived into `bufs`, as the transport holds it (QUIC hands over its
    /// received buffers without copying): the number of chunks filled, in stream order,
    /// or `None` at the end of the stream. The default reads into a buffer and hands over
    /// a copy of exactly what it read (one chunk).
    fn read_chunks<'a>(
        &'a mut self,
        bufs: &'a mut [Bytes],
    ) -> BoxFuture<'a, io::Result<Option<usize>>> {
        Box::pin(async move {
            let Some(first) = bufs.first_mut() else {
                return Ok(Some(0));
            };
            let mut buf = [0u8; 16 * 1024];
            let n = self.read(&mut buf).await?;
            *first = Bytes::copy_from_slice(&buf[..n]);
            Ok((n > 0).then_some(1))
        })
    }
}

/// A boxed sending stream.
pub type BoxSendStream = Box<dyn SendStream>;
/// A boxed receiving stream.
pub type BoxRecvStream = Box<dyn RecvStream>;

/// One authenticated, encrypted connection to a peer.
pub trait Connection: Send + Sync + fmt::Debug + 'static {
    /// The peer's authenticated identity.
    fn remote_id(&self) -> NodeId;
    /// The peer's current network address, if it has one.
    fn remote_addr(&self) -> Option<std::net::SocketAddr>;
    /// Current round-trip time estimate.
    fn rtt(&self) -> Duration;
    /// Opens a bidirectional stream speaking `protocol`.
    fn open_bi(
        &self,
        protocol: &Protocol,
    ) -> BoxFuture<'_, Result<(BoxSendStream, BoxRecvStream), StreamError>>;
    /// Opens a unidirectional stream speaking `protocol`.
    fn open_uni(&self, protocol: &Protocol) -> BoxFuture<'_, Result<BoxSendStream, StreamError>>;
    /// Sends an unreliable datagram (RFC 9221) of `protocol`. It may be lost or reordered.
    fn send_datagram(&self, protocol: &Protocol, payload: &[u8]) -> Result<(), DatagramError>;
    /// Largest datagram payload `protocol` can send now, if datagrams are supported. It
    /// changes with the path: it grows as path MTU discovery finds room.
    fn max_datagram_payload(&self, protocol: &Protocol) -> Option<usize>;
    /// Closes the connection with an application code; open streams fail.
    fn close(&self, code: u32, reason: &[u8]);
    /// Resolves when the connection ends, with the reason.
    fn closed(&self) -> BoxFuture<'_, ConnectionError>;
}

/// A shared handle to a connection.
pub type Conn = Arc<dyn Connection>;

/// Handles the streams and datagrams of one protocol. Mounted on a [`Transport`].
///
/// Every method has a default that refuses, so a handler implements only what its
/// protocol uses. Handlers run on the transport's runtime; long work should be
/// spawned or bounded.
pub trait ProtocolHandler: Send + Sync + 'static {
    /// A peer opened a bidirectional stream of this protocol.
    fn accept_bi(
        &self,
        conn: Conn,
        mut send: BoxSendStream,
        mut recv: BoxRecvStream,
    ) -> BoxFuture<'static, ()> {
        let _ = conn;
        send.reset(codes::UNSUPPORTED_PROTOCOL);
        recv.stop(codes::UNSUPPORTED_PROTOCOL);
        Box::pin(async {})
    }

    /// A peer opened a unidirectional stream of this protocol.
    fn accept_uni(&self, conn: Conn, mut recv: BoxRecvStream) -> BoxFuture<'static, ()> {
        let _ = conn;
        recv.stop(codes::UNSUPPORTED_PROTOCOL);
        Box::pin(async {})
    }

    /// A datagram of this protocol arrived. Must not block.
    fn datagram(&self, conn: &Conn, payload: Bytes) {
        let _ = (conn, payload);
    }
}

/// A network endpoint: dials peers and routes their streams to mounted handlers.
pub trait Transport: Send + Sync + fmt::Debug + 'static {
    /// This node's identity.
    fn local_id(&self) -> NodeId;
    /// How others can reach this node.
    fn local_addr(&self) -> NodeAddr;
    /// Connects to a peer, or returns the existing connection to it.
    fn connect(&self, addr: NodeAddr) -> BoxFuture<'_, Result<Conn, ConnectError>>;
    /// Routes streams and datagrams of `protocol` to `handler`.
    fn mount(
        &self,
        protocol: Protocol,
        handler: Arc<dyn ProtocolHandler>,
    ) -> Result<(), MountError>;
}

/// Finds how to reach a node known only by its id: a DHT's node-address records, LAN
/// discovery, a static table. A transport asks its discovery source when it is told to
/// dial a [`NodeAddr`] with no addresses.
pub trait Discovery: Send + Sync + fmt::Debug + 'static {
    /// The addresses `id` can be reached at, or `None` if nothing is known.
    fn resolve(&self, id: NodeId) -> BoxFuture<'_, Option<NodeAddr>>;
}

/// Protocol name → handler table shared by transport implementations.
#[derive(Default, Clone)]
pub struct Router {
    handlers: Arc<RwLock<HashMap<Protocol, Arc<dyn ProtocolHandler>>>>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = match self.handlers.read() {
            Ok(h) => h.keys().map(|p| p.to_string()).collect(),
            Err(_) => Vec::new(),
        };
        f.debug_struct("Router").field("protocols", &names).finish()
    }
}

impl Router {
    /// Adds a handler; fails if the name is taken.
    pub fn mount(
        &self,
        protocol: Protocol,
        handler: Arc<dyn ProtocolHandler>,
    ) -> Result<(), MountError> {
        let mut map = self.handlers.write().unwrap_or_else(|e| e.into_inner());
        if map.contains_key(&protocol) {
            return Err(MountError::AlreadyMounted(protocol));
        }
        map.insert(protocol, handler);
        Ok(())
    }

    /// The handler for `protocol`, if mounted.
    pub fn get(&self, protocol: &Protocol) -> Option<Arc<dyn ProtocolHandler>> {
        let map = self.handlers.read().unwrap_or_else(|e| e.into_inner());
        map.get(protocol).cloned()
    }

    /// Names of all mounted protocols.
    pub fn protocols(&self) -> Vec<Protocol> {
        let map = self.handlers.read().unwrap_or_else(|e| e.into_inner());
        map.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn protocol_names_are_checked() {
        assert!(Protocol::new("kith/dht/1").is_ok());
        assert_eq!(Protocol::new(""), Err(ProtocolNameError));
        assert_eq!(Protocol::new("a b"), Err(ProtocolNameError));
        assert_eq!(Protocol::new("x".repeat(65)), Err(ProtocolNameError));
        assert!(Protocol::new("x".repeat(64)).is_ok());
    }

    #[test]
    fn datagram_prefix_round_trip() {
        let p = Protocol::from_static("kith/game/1");
        let d = p.datagram(b"pos");
        assert_eq!(d.len(), p.datagram_overhead() + 3);
        assert_eq!(split_datagram(d), Ok((p, Bytes::from_static(b"pos"))));
        assert_eq!(split_datagram(Bytes::new()), Err(ProtocolNameError));
        assert_eq!(
            split_datagram(Bytes::from_static(&[5, b'a'])),
            Err(ProtocolNameError)
        );
    }

    #[tokio::test]
    async fn header_round_trip_and_rejects() {
        let p = Protocol::from_static("kith/echo/1");
        let h = p.header();
        assert_eq!(read_protocol_header(&mut &h[..]).await, Ok(p));
        assert_eq!(
            read_protocol_header(&mut &[0u8][..]).await,
            Err(StreamError::BadHeader)
        );
        assert_eq!(
            read_protocol_header(&mut &[65u8][..]).await,
            Err(StreamError::BadHeader)
        );
        assert_eq!(
            read_protocol_header(&mut &[4u8, b'a'][..]).await,
            Err(StreamError::UnexpectedEnd)
        );
    }

    proptest! {
        #[test]
        fn split_datagram_never_panics(data in proptest::collection::vec(any::<u8>(), 0..100)) {
            if let Ok((p, rest)) = split_datagram(Bytes::from(data.clone())) {
                prop_assert_eq!(p.datagram(&rest).to_vec(), data);
            }
        }
    }
}
