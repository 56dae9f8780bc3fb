//! [`QuicConnection`]: a kith connection over a quinn connection, and its streams.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use kith_core::NodeId;
use kith_core::net::{
    BoxFuture, BoxRecvStream, BoxSendStream, Connection, ConnectionError, DatagramError, Protocol,
    RecvStream, SendStream, StreamError, codes,
};
use quinn::VarInt;

use crate::paths::PathKind;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Whether a connection used 0-RTT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroRtt {
    /// No 0-RTT: a full handshake (first contact, no cached session, or disabled).
    NotAttempted,
    /// 0-RTT was attempted; the handshake has not finished yet.
    Pending,
    /// The peer accepted 0-RTT early data.
    Accepted,
    /// The peer rejected early data; streams opened in 0-RTT failed.
    Rejected,
}

/// Statistics of one connection.
#[derive(Debug, Clone)]
pub struct ConnectionStats {
    /// Whether and how 0-RTT was used (for outgoing connections).
    pub zero_rtt: ZeroRtt,
    /// Current smoothed round-trip time.
    pub rtt: Duration,
    /// UDP bytes sent.
    pub bytes_sent: u64,
    /// UDP bytes received.
    pub bytes_received: u64,
    /// Packets declared lost.
    pub lost_packets: u64,
    /// Path probes (pings) sent to find or confirm a direct path, birthday probes
    /// included.
    pub probes_sent: u64,
    /// Of `probes_sent`, the birthday-paradox probes (see
    /// [`HolePunchConfig`](crate::HolePunchConfig)).
    pub birthday_probes: u64,
}

/// One authenticated QUIC connection to a peer.
pub struct QuicConnection {
    pub(crate) inner: quinn::Connection,
    pub(crate) remote: NodeId,
    /// True if this side dialed.
    pub(crate) outgoing: bool,
    pub(crate) zero_rtt: tokio::sync::watch::Sender<ZeroRtt>,
    /// The address the peer says it observes for us; set when its hello arrives.
    pub(crate) observed: tokio::sync::watch::Sender<Option<SocketAddr>>,
    pub(crate) open_timeout: Duration,
    /// The path this connection takes (fixed for a connection to a real address).
    pub(crate) path: tokio::sync::watch::Receiver<PathKind>,
    /// Wakes the path prober (new candidates arrived).
    pub(crate) path_kick: tokio::sync::Notify,
    /// Hole-punching state of a relayed connection.
    pub(crate) punch: crate::punch_state::PunchState,
    /// The path table, for a relayed (mapped) connection.
    pub(crate) table: Option<std::sync::Arc<crate::paths::PathTable>>,
}

impl fmt::Debug for QuicConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuicConnection")
            .field("remote", &self.remote)
            .field("addr", &self.inner.remote_address())
            .field("outgoing", &self.outgoing)
            .finish()
    }
}

impl QuicConnection {
    /// Statistics of this connection.
    pub fn stats(&self) -> ConnectionStats {
        let s = self.inner.stats();
        ConnectionStats {
            zero_rtt: self.zero_rtt(),
            rtt: s.path.rtt,
            bytes_sent: s.udp_tx.bytes,
            bytes_received: s.udp_rx.bytes,
            lost_packets: s.path.lost_packets,
            probes_sent: self
                .table
                .as_ref()
                .map_or(0, |t| t.pings_sent(&self.remote)),
            birthday_probes: self.table.as_ref().map_or(0, |t| t.sprayed(&self.remote)),
        }
    }

    /// How 0-RTT went for this connection so far.
    pub fn zero_rtt(&self) -> ZeroRtt {
        *self.zero_rtt.borrow()
    }

    /// Waits until the handshake has finished and returns how 0-RTT went
    /// (never [`ZeroRtt::Pending`] unless the connection ended first).
    pub async fn zero_rtt_outcome(&self) -> ZeroRtt {
        let mut rx = self.zero_rtt.subscribe();
        match rx.wait_for(|z| *z != ZeroRtt::Pending).await {
            Ok(z) => *z,
            Err(_) => ZeroRtt::Pending,
        }
    }

    /// True if this side dialed the connection.
    pub fn is_outgoing(&self) -> bool {
        self.outgoing
    }

    /// The address the peer observed for us (what a STUN server would report), once told.
    pub fn observed_addr(&self) -> Option<SocketAddr> {
        *self.observed.borrow()
    }

    /// Waits for the peer's hello and returns the address it observes for us
    /// (`None` if the connection ends first).
    pub async fn wait_observed_addr(&self) -> Option<SocketAddr> {
        let mut rx = self.observed.subscribe();
        tokio::select! {
            r = rx.wait_for(Option::is_some) => r.ok().and_then(|a| *a),
            _ = self.inner.closed() => None,
        }
    }

    /// Opens a bidirectional stream and writes `header` instead of a protocol header.
    /// Only for testing how peers treat malformed or stalled headers.
    #[doc(hidden)]
    pub async fn open_bi_raw_header(
        &self,
        header: &[u8],
    ) -> Result<(BoxSendStream, BoxRecvStream), StreamError> {
        let (mut send, recv) = self
            .inner
            .open_bi()
            .await
            .map_err(|e| StreamError::ConnectionLost(map_conn_err(&e)))?;
        send.write_all(header)
            .await
            .map_err(|e| map_write_err(&e))?;
        Ok((Box::new(QuicSend(send)), Box::new(QuicRecv(recv))))
    }

    /// The path the connection takes now: direct to an address, or through a relay.
    pub fn path(&self) -> PathKind {
        *self.path.borrow()
    }

    /// A watch of the connection's path: it changes when a relayed connection moves to a
    /// direct path (or falls back to the relay).
    pub fn path_events(&self) -> tokio::sync::watch::Receiver<PathKind> {
        self.path.clone()
    }

    /// What hole punching does for this connection, or why it stays relayed (for
    /// example [`HolePunch::BothEndpointDependent`](crate::HolePunch)).
    pub fn hole_punch(&self) -> crate::punch_state::HolePunch {
        *self.punch.status.borrow()
    }

    /// True once the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.inner.close_reason().is_some()
    }

    pub(crate) fn client_id(&self, local: NodeId) -> NodeId {
        if self.outgoing { local } else { self.remote }
    }
}

/// Maps a quinn connection error to kith's.
pub(crate) fn map_conn_err(e: &quinn::ConnectionError) -> ConnectionError {
    use quinn::ConnectionError as Q;
    match e {
        Q::LocallyClosed => ConnectionError::LocallyClosed,
        Q::ApplicationClosed(c) => ConnectionError::ClosedByPeer {
            code: u32::try_from(c.error_code.into_inner()).unwrap_or(u32::MAX),
            reason: String::from_utf8_lossy(&c.reason).into_owned(),
        },
        Q::TimedOut => ConnectionError::TimedOut,
        Q::Reset => ConnectionError::Reset("stateless reset".into()),
        Q::ConnectionClosed(c) => ConnectionError::Reset(c.to_string()),
        other => ConnectionError::Transport(other.to_string()),
    }
}

fn map_code(code: VarInt, reset: bool) -> StreamError {
    match u32::try_from(code.into_inner()) {
        Ok(codes::UNSUPPORTED_PROTOCOL) => StreamError::UnsupportedProtocol,
        Ok(codes::BAD_HEADER) => StreamError::BadHeader,
        Ok(c) if reset => StreamError::Reset(c),
        Ok(c) => StreamError::Stopped(c),
        Err(_) if reset => StreamError::Reset(u32::MAX),
        Err(_) => StreamError::Stopped(u32::MAX),
    }
}

fn map_write_err(e: &quinn::WriteError) -> StreamError {
    use quinn::WriteError as W;
    match e {
        W::Stopped(code) => map_code(*code, false),
        W::ConnectionLost(c) => StreamError::ConnectionLost(map_conn_err(c)),
        W::ClosedStream => StreamError::ClosedStream,
        W::ZeroRttRejected => StreamError::ZeroRttRejected,
    }
}

fn map_read_err(e: &quinn::ReadError) -> StreamError {
    use quinn::ReadError as R;
    match e {
        R::Reset(code) => map_code(*code, true),
        R::ConnectionLost(c) => StreamError::ConnectionLost(map_conn_err(c)),
        R::ClosedStream | R::IllegalOrderedRead => StreamError::ClosedStream,
        R::ZeroRttRejected => StreamError::ZeroRttRejected,
    }
}

/// Converts the `io::Error` quinn's tokio impls return back into a typed [`StreamError`].
fn remap_io(e: io::Error) -> io::Error {
    let typed = match e.get_ref() {
        Some(inner) => {
            if let Some(w) = inner.downcast_ref::<quinn::WriteError>() {
                Some(map_write_err(w))
            } else {
                inner.downcast_ref::<quinn::ReadError>().map(map_read_err)
            }
        }
        None => None,
    };
    match typed {
        Some(t) => t.into_io(),
        None => e,
    }
}

/// Sending half of a QUIC stream.
pub(crate) struct QuicSend(pub(crate) quinn::SendStream);

impl fmt::Debug for QuicSend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("QuicSend").field(&self.0.id()).finish()
    }
}

impl AsyncWrite for QuicSend {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.0), cx, buf).map_err(remap_io)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.0), cx).map_err(remap_io)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(&mut self.0), cx).map_err(remap_io)
    }
}

impl SendStream for QuicSend {
    fn finish(&mut self) -> Result<(), StreamError> {
        self.0.finish().map_err(|_| StreamError::ClosedStream)
    }

    fn reset(&mut self, code: u32) {
        let _ = self.0.reset(VarInt::from_u32(code));
    }

    fn set_priority(&mut self, priority: i32) {
        // Fails only on a stream already closed, which has nothing left to order.
        let _ = self.0.set_priority(priority);
    }
}

/// Receiving half of a QUIC stream.
pub(crate) struct QuicRecv(pub(crate) quinn::RecvStream);

impl fmt::Debug for QuicRecv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("QuicRecv").field(&self.0.id()).finish()
    }
}

impl AsyncRead for QuicRecv {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        AsyncRead::poll_read(Pin::new(&mut self.0), cx, buf).map_err(remap_io)
    }
}

impl RecvStream for QuicRecv {
    fn stop(&mut self, code: u32) {
        let _ = self.0.stop(VarInt::from_u32(code));
    }

    fn read_chunks<'a>(
        &'a mut self,
        bufs: &'a mut [Bytes],
    ) -> BoxFuture<'a, io::Result<Option<usize>>> {
        Box::pin(async move {
            self.0
                .read_chunks(bufs)
                .await
                .map_err(|e| map_read_err(&e).into_io())
        })
    }
}

impl QuicConnection {
    async fn open_bi_inner(
        &self,
        protocol: &Protocol,
    ) -> Result<(BoxSendStream, BoxRecvStream), StreamError> {
        let (mut send, recv) =
            match tokio::time::timeout(self.open_timeout, self.inner.open_bi()).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(StreamError::ConnectionLost(map_conn_err(&e))),
                Err(_) => return Err(StreamError::StreamLimit(self.open_timeout)),
            };
        send.write_all(&protocol.header())
            .await
            .map_err(|e| map_write_err(&e))?;
        Ok((Box::new(QuicSend(send)), Box::new(QuicRecv(recv))))
    }

    async fn open_uni_inner(&self, protocol: &Protocol) -> Result<BoxSendStream, StreamError> {
        let mut send = match tokio::time::timeout(self.open_timeout, self.inner.open_uni()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(StreamError::ConnectionLost(map_conn_err(&e))),
            Err(_) => return Err(StreamError::StreamLimit(self.open_timeout)),
        };
        send.write_all(&protocol.header())
            .await
            .map_err(|e| map_write_err(&e))?;
        Ok(Box::new(QuicSend(send)))
    }
}

impl Connection for QuicConnection {
    fn remote_id(&self) -> NodeId {
        self.remote
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.inner.remote_address())
    }

    fn rtt(&self) -> Duration {
        self.inner.rtt()
    }

    fn open_bi(
        &self,
        protocol: &Protocol,
    ) -> BoxFuture<'_, Result<(BoxSendStream, BoxRecvStream), StreamError>> {
        let protocol = protocol.clone();
        Box::pin(async move { self.open_bi_inner(&protocol).await })
    }

    fn open_uni(&self, protocol: &Protocol) -> BoxFuture<'_, Result<BoxSendStream, StreamError>> {
        let protocol = protocol.clone();
        Box::pin(async move { self.open_uni_inner(&protocol).await })
    }

    fn send_datagram(&self, protocol: &Protocol, payload: &[u8]) -> Result<(), DatagramError> {
        let size = protocol.datagram_overhead() + payload.len();
        let max = match self.inner.max_datagram_size() {
            Some(m) => m,
            None => return Err(DatagramError::Unsupported),
        };
        if size > max {
            return Err(DatagramError::TooLarge { size, max });
        }
        use quinn::SendDatagramError as E;
        match self.inner.send_datagram(protocol.datagram(payload)) {
            Ok(()) => Ok(()),
            Err(E::UnsupportedByPeer) | Err(E::Disabled) => Err(DatagramError::Unsupported),
            Err(E::TooLarge) => Err(DatagramError::TooLarge { size, max }),
            Err(E::ConnectionLost(e)) => Err(DatagramError::ConnectionLost(map_conn_err(&e))),
        }
    }

    fn max_datagram_payload(&self, protocol: &Protocol) -> Option<usize> {
        self.inner
            .max_datagram_size()
            .and_then(|m| m.checked_sub(protocol.datagram_overhead()))
    }

    fn close(&self, code: u32, reason: &[u8]) {
        self.inner.close(VarInt::from_u32(code), reason);
    }

    fn closed(&self) -> BoxFuture<'_, ConnectionError> {
        Box::pin(async move { map_conn_err(&self.inner.closed().await) })
    }
}
