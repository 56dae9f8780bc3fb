//! An in-memory implementation of the [`Transport`] traits, for tests and simulations
//! of the upper layers without sockets (feature `mem`).
//!
//! Nodes join a shared [`MemNetwork`]; a dial looks the peer up by [`NodeId`] (addresses
//! are ignored). Streams are in-memory pipes with the same finish/reset/stop semantics
//! as QUIC streams, and unsupported protocols are refused as on the real transport.
//! Handlers run on the ambient tokio runtime.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::sync::Arc;
//! use kith_core::mem::MemNetwork;
//! use kith_core::{net::*, SecretKey, NodeAddr};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! struct Echo;
//! impl ProtocolHandler for Echo {
//!     fn accept_bi(&self, _c: Conn, mut send: BoxSendStream, mut recv: BoxRecvStream) -> BoxFuture<'static, ()> {
//!         Box::pin(async move {
//!             let _ = tokio::io::copy(&mut recv, &mut send).await;
//!             let _ = send.finish();
//!         })
//!     }
//! }
//! const ECHO: Protocol = Protocol::from_static("example/echo/1");
//!
//! let net = MemNetwork::new();
//! let a = net.node(SecretKey::from_bytes(&[1; 32]).node_id());
//! let b = net.node(SecretKey::from_bytes(&[2; 32]).node_id());
//! b.mount(ECHO, Arc::new(Echo)).unwrap();
//! let conn = a.connect(NodeAddr::new(b.local_id())).await.unwrap();
//! let (mut send, mut recv) = conn.open_bi(&ECHO).await.unwrap();
//! send.write_all(b"hi").await.unwrap();
//! send.finish().unwrap();
//! let mut out = Vec::new();
//! recv.read_to_end(&mut out).await.unwrap();
//! assert_eq!(out, b"hi");
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::sync::watch;

use crate::net::*;
use crate::{NodeAddr, NodeId};

/// Largest datagram (protocol prefix included) the in-memory transport carries,
/// the same as QUIC's guaranteed minimum path MTU payload.
pub const MEM_MAX_DATAGRAM: usize = 1200;

/// Buffer of each in-memory stream direction.
const PIPE_BUFFER: usize = 64 * 1024;

/// A set of in-memory nodes that can dial each other by [`NodeId`].
#[derive(Clone, Default)]
pub struct MemNetwork {
    nodes: Arc<Mutex<HashMap<NodeId, Weak<NodeInner>>>>,
}

impl fmt::Debug for MemNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemNetwork").finish_non_exhaustive()
    }
}

impl MemNetwork {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a node with this identity. Dropping every handle to it takes it offline.
    pub fn node(&self, id: NodeId) -> MemTransport {
        let inner = Arc::new(NodeInner {
            id,
            net: self.clone(),
            router: Router::default(),
            conns: Mutex::new(HashMap::new()),
        });
        lock(&self.nodes).insert(id, Arc::downgrade(&inner));
        MemTransport { inner }
    }

    fn lookup(&self, id: &NodeId) -> Option<Arc<NodeInner>> {
        lock(&self.nodes).get(id).and_then(Weak::upgrade)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct NodeInner {
    id: NodeId,
    net: MemNetwork,
    router: Router,
    conns: Mutex<HashMap<NodeId, Arc<MemConn>>>,
}

/// One node on a [`MemNetwork`]; implements [`Transport`].
#[derive(Clone)]
pub struct MemTransport {
    inner: Arc<NodeInner>,
}

impl fmt::Debug for MemTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemTransport")
            .field("id", &self.inner.id)
            .finish()
    }
}

impl MemTransport {
    /// Closes every connection of this node, as if it crashed.
    pub fn disconnect_all(&self) {
        let conns: Vec<_> = lock(&self.inner.conns).drain().map(|(_, c)| c).collect();
        for c in conns {
            c.close(codes::CLOSE_SHUTDOWN, b"offline");
        }
    }
}

impl Transport for MemTransport {
    fn local_id(&self) -> NodeId {
        self.inner.id
    }

    fn local_addr(&self) -> NodeAddr {
        NodeAddr::new(self.inner.id)
    }

    fn connect(&self, addr: NodeAddr) -> BoxFuture<'_, Result<Conn, ConnectError>> {
        Box::pin(async move {
            if addr.node_id == self.inner.id {
                return Err(ConnectError::DialSelf);
            }
            if let Some(c) = lock(&self.inner.conns).get(&addr.node_id) {
                if c.error().is_none() {
                    return Ok(c.clone() as Conn);
                }
            }
            let peer = self
                .inner
                .net
                .lookup(&addr.node_id)
                .ok_or(ConnectError::NoAddress(addr.node_id))?;
            let (ours, theirs) = MemConn::pair(&self.inner, &peer);
            lock(&self.inner.conns).insert(peer.id, ours.clone());
            lock(&peer.conns).insert(self.inner.id, theirs);
            Ok(ours as Conn)
        })
    }

    fn mount(
        &self,
        protocol: Protocol,
        handler: Arc<dyn ProtocolHandler>,
    ) -> Result<(), MountError> {
        self.inner.router.mount(protocol, handler)
    }
}

/// One side of an in-memory connection.
struct MemConn {
    local: NodeId,
    remote: NodeId,
    /// The peer node's router, to dispatch streams to.
    remote_node: Weak<NodeInner>,
    /// The other side of this connection.
    peer: Mutex<Weak<MemConn>>,
    me: Weak<MemConn>,
    state: watch::Sender<Option<ConnectionError>>,
}

impl fmt::Debug for MemConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemConn")
            .field("local", &self.local)
            .field("remote", &self.remote)
            .finish()
    }
}

impl MemConn {
    fn pair(a: &Arc<NodeInner>, b: &Arc<NodeInner>) -> (Arc<MemConn>, Arc<MemConn>) {
        let mk = |local: &Arc<NodeInner>, remote: &Arc<NodeInner>| {
            Arc::new_cyclic(|me| MemConn {
                local: local.id,
                remote: remote.id,
                remote_node: Arc::downgrade(remote),
                peer: Mutex::new(Weak::new()),
                me: me.clone(),
                state: watch::channel(None).0,
            })
        };
        let ab = mk(a, b);
        let ba = mk(b, a);
        *lock(&ab.peer) = Arc::downgrade(&ba);
        *lock(&ba.peer) = Arc::downgrade(&ab);
        (ab, ba)
    }

    fn error(&self) -> Option<ConnectionError> {
        self.state.borrow().clone()
    }

    fn peer(&self) -> Result<(Arc<MemConn>, Arc<NodeInner>), ConnectionError> {
        if let Some(e) = self.error() {
            return Err(e);
        }
        let peer = lock(&self.peer).upgrade();
        match (peer, self.remote_node.upgrade()) {
            (Some(p), Some(n)) => Ok((p, n)),
            _ => Err(ConnectionError::TimedOut),
        }
    }

    fn handler(
        &self,
        protocol: &Protocol,
    ) -> Result<(Conn, Arc<dyn ProtocolHandler>), StreamError> {
        let (peer, node) = self.peer()?;
        let handler = node
            .router
            .get(protocol)
            .ok_or(StreamError::UnsupportedProtocol)?;
        Ok((peer as Conn, handler))
    }
}

fn pipe() -> (MemSend, MemRecv) {
    let (w, r) = tokio::io::duplex(PIPE_BUFFER);
    let state = Arc::new(Mutex::new(PipeState::default()));
    (
        MemSend {
            io: w,
            state: state.clone(),
        },
        MemRecv { io: r, state },
    )
}

impl Connection for MemConn {
    fn remote_id(&self) -> NodeId {
        self.remote
    }

    fn remote_addr(&self) -> Option<std::net::SocketAddr> {
        None
    }

    fn rtt(&self) -> Duration {
        Duration::ZERO
    }

    fn open_bi(
        &self,
        protocol: &Protocol,
    ) -> BoxFuture<'_, Result<(BoxSendStream, BoxRecvStream), StreamError>> {
        let res = self.handler(protocol).map(|(peer, handler)| {
            let (our_send, their_recv) = pipe();
            let (their_send, our_recv) = pipe();
            tokio::spawn(handler.accept_bi(peer, Box::new(their_send), Box::new(their_recv)));
            (
                Box::new(our_send) as BoxSendStream,
                Box::new(our_recv) as BoxRecvStream,
            )
        });
        Box::pin(async move { res })
    }

    fn open_uni(&self, protocol: &Protocol) -> BoxFuture<'_, Result<BoxSendStream, StreamError>> {
        let res = self.handler(protocol).map(|(peer, handler)| {
            let (our_send, their_recv) = pipe();
            tokio::spawn(handler.accept_uni(peer, Box::new(their_recv)));
            Box::new(our_send) as BoxSendStream
        });
        Box::pin(async move { res })
    }

    fn send_datagram(&self, protocol: &Protocol, payload: &[u8]) -> Result<(), DatagramError> {
        let size = protocol.datagram_overhead() + payload.len();
        if size > MEM_MAX_DATAGRAM {
            return Err(DatagramError::TooLarge {
                size,
                max: MEM_MAX_DATAGRAM,
            });
        }
        let (peer, node) = self.peer()?;
        // Like QUIC, a datagram for a protocol the peer lacks is silently dropped there.
        if let Some(h) = node.router.get(protocol) {
            h.datagram(&(peer as Conn), bytes::Bytes::copy_from_slice(payload));
        }
        Ok(())
    }

    fn max_datagram_payload(&self, protocol: &Protocol) -> Option<usize> {
        MEM_MAX_DATAGRAM.checked_sub(protocol.datagram_overhead())
    }

    fn close(&self, code: u32, reason: &[u8]) {
        if self.error().is_some() {
            return;
        }
        self.state
            .send_replace(Some(ConnectionError::LocallyClosed));
        if let Some(peer) = lock(&self.peer).upgrade() {
            peer.state.send_if_modified(|s| {
                if s.is_none() {
                    *s = Some(ConnectionError::ClosedByPeer {
                        code,
                        reason: String::from_utf8_lossy(reason).into_owned(),
                    });
                    true
                } else {
                    false
                }
            });
        }
        let me = self.me.clone();
        if let Some(node) = self.remote_node.upgrade() {
            // Forget the peer's side of this connection in the peer's table.
            lock(&node.conns).retain(|_, c| !Weak::ptr_eq(&*lock(&c.peer), &me));
        }
    }

    fn closed(&self) -> BoxFuture<'_, ConnectionError> {
        let mut rx = self.state.subscribe();
        Box::pin(async move {
            loop {
                if let Some(e) = rx.borrow_and_update().clone() {
                    return e;
                }
                if rx.changed().await.is_err() {
                    return ConnectionError::LocallyClosed;
                }
            }
        })
    }
}

#[derive(Debug, Default)]
struct PipeState {
    reset: Option<u32>,
    stopped: Option<u32>,
    finished: bool,
}

/// Sending half of an in-memory stream.
struct MemSend {
    io: DuplexStream,
    state: Arc<Mutex<PipeState>>,
}

impl fmt::Debug for MemSend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemSend").finish_non_exhaustive()
    }
}

impl MemSend {
    fn check(&self) -> Result<(), io::Error> {
        let st = lock(&self.state);
        if let Some(code) = st.stopped {
            return Err(StreamError::Stopped(code).into_io());
        }
        if st.finished || st.reset.is_some() {
            return Err(StreamError::ClosedStream.into_io());
        }
        Ok(())
    }
}

impl AsyncWrite for MemSend {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check()?;
        match Pin::new(&mut self.io).poll_write(cx, buf) {
            // The reader went away: report it as stopped, like QUIC would.
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::BrokenPipe => {
                Poll::Ready(Err(StreamError::Stopped(0).into_io()))
            }
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        lock(&self.state).finished = true;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl SendStream for MemSend {
    fn finish(&mut self) -> Result<(), StreamError> {
        self.check().map_err(StreamError::from_io)?;
        lock(&self.state).finished = true;
        // A duplex pipe shuts down without waiting.
        match self.io.shutdown().now_or_never() {
            Some(Ok(())) | None => Ok(()),
            Some(Err(e)) => Err(StreamError::from_io(e)),
        }
    }

    fn reset(&mut self, code: u32) {
        lock(&self.state).reset = Some(code);
        let _ = self.io.shutdown().now_or_never();
    }
}

/// Receiving half of an in-memory stream.
struct MemRecv {
    io: DuplexStream,
    state: Arc<Mutex<PipeState>>,
}

impl fmt::Debug for MemRecv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemRecv").finish_non_exhaustive()
    }
}

impl AsyncRead for MemRecv {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(code) = lock(&self.state).reset {
            return Poll::Ready(Err(StreamError::Reset(code).into_io()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() == before => {
                // End of pipe: a clean finish, or a reset racing with it.
                match lock(&self.state).reset {
                    Some(code) => Poll::Ready(Err(StreamError::Reset(code).into_io())),
                    None => Poll::Ready(Ok(())),
                }
            }
            other => other,
        }
    }
}

impl RecvStream for MemRecv {
    fn stop(&mut self, code: u32) {
        lock(&self.state).stopped = Some(code);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SecretKey;
    use tokio::io::AsyncReadExt;

    const P: Protocol = Protocol::from_static("test/p/1");

    fn id(n: u8) -> NodeId {
        SecretKey::from_bytes(&[n; 32]).node_id()
    }

    struct Upper;
    impl ProtocolHandler for Upper {
        fn accept_bi(
            &self,
            _c: Conn,
            mut send: BoxSendStream,
            mut recv: BoxRecvStream,
        ) -> BoxFuture<'static, ()> {
            Box::pin(async move {
                let mut buf = Vec::new();
                if recv.read_to_end(&mut buf).await.is_ok() {
                    buf.make_ascii_uppercase();
                    let _ = send.write_all(&buf).await;
                    let _ = send.finish();
                }
            })
        }
    }

    #[tokio::test]
    async fn unsupported_protocol_is_typed() {
        let net = MemNetwork::new();
        let a = net.node(id(1));
        let b = net.node(id(2));
        let conn = a.connect(b.local_addr()).await.map_err(|e| e.to_string());
        let conn = conn.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            conn.open_bi(&P).await.err(),
            Some(StreamError::UnsupportedProtocol)
        );
        b.mount(P, Arc::new(Upper))
            .unwrap_or_else(|e| panic!("{e}"));
        let (mut s, mut r) = conn.open_bi(&P).await.unwrap_or_else(|e| panic!("{e}"));
        s.write_all(b"abc").await.unwrap_or_else(|e| panic!("{e}"));
        s.finish().unwrap_or_else(|e| panic!("{e}"));
        let mut out = Vec::new();
        r.read_to_end(&mut out)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out, b"ABC");
    }

    #[tokio::test]
    async fn close_is_seen_by_peer_and_dial_reuses() {
        let net = MemNetwork::new();
        let a = net.node(id(1));
        let b = net.node(id(2));
        let c1 = a
            .connect(b.local_addr())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let c2 = a
            .connect(b.local_addr())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(Arc::ptr_eq(&c1, &c2));
        let cb = b
            .connect(a.local_addr())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        c1.close(7, b"bye");
        assert_eq!(
            cb.closed().await,
            ConnectionError::ClosedByPeer {
                code: 7,
                reason: "bye".into()
            }
        );
        assert_eq!(
            a.connect(a.local_addr()).await.err(),
            Some(ConnectError::DialSelf)
        );
    }

    #[tokio::test]
    async fn reset_and_stop_are_typed() {
        let (mut s, mut r) = pipe();
        s.write_all(b"x").await.unwrap_or_else(|e| panic!("{e}"));
        s.reset(9);
        let mut out = Vec::new();
        let err = r
            .read_to_end(&mut out)
            .await
            .err()
            .map(StreamError::from_io);
        assert_eq!(err, Some(StreamError::Reset(9)));
        let (mut s, mut r) = pipe();
        r.stop(4);
        let err = s.write_all(b"x").await.err().map(StreamError::from_io);
        assert_eq!(err, Some(StreamError::Stopped(4)));
    }
}
