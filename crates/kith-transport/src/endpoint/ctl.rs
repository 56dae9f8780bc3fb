//! The control stream and the per-connection driver: the acceptor's hello (the address
//! it observes for the dialer; sent again when quinn migrated the peer) and what a
//! received hello tells us, accepting a connection's streams and datagrams and routing
//! them by protocol (`kith/ctl/1` here, `kith/paths/1` and `kith/punch/1` to hole
//! punching, the rest to the mounted handlers).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use kith_core::NodeAddr;
use kith_core::net::{
    Conn, Protocol, RecvStream, SendStream, codes, read_protocol_header, split_datagram,
};
use tokio::io::AsyncReadExt;
use tracing::Instrument;

use super::Inner;
use super::bind::ConnGuard;
use crate::conn::{QuicConnection, QuicRecv, QuicSend};
use crate::observe::Observer;
use crate::paths::is_synthetic;
use crate::punch::{PATHS, PUNCH, handle_paths, handle_punch};
use crate::sync::lock;

/// Internal control protocol: the acceptor's hello (observed address, "connection kept").
const CTL: Protocol = Protocol::from_static("kith/ctl/1");

/// How often the acceptor of a connection to a real address checks whether the peer's
/// address changed (its NAT rebound or was renumbered), to tell it in a new hello.
const ADDR_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Tells the dialer we keep this connection, and which address we observe for it.
pub(super) async fn send_hello(conn: &Arc<QuicConnection>) {
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
pub(super) async fn drive(inner: Arc<Inner>, conn: Arc<QuicConnection>, guard: ConnGuard) {
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
