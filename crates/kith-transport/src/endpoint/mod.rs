//! The [`Endpoint`]: sockets, handshakes, one connection per peer, and stream routing.
//!
//! By responsibility:
//! - `bind` — binding the sockets (one `PathSocket` per address family) and quinn's
//!   configuration, the accept loop and incoming handshakes, admission (connection
//!   limit, handshake-rate token bucket).
//! - `dial` — `connect`, discovery, the address list, relay hints and 0-RTT; the
//!   per-peer slot table and the simultaneous-dial tie-break.
//! - `relays` — relay reservations and the home relay (reserved again when lost).
//! - `netchange` — network changes (detection and reaction), STUN rounds, the NAT kind,
//!   the gateway port mapping, and the candidates offered for hole punching.
//! - `ctl` — the per-connection driver: the control stream (the acceptor's hello),
//!   routing streams and datagrams to the mounted handlers.
//!
//! This file holds [`Endpoint`], the shared state `Inner` and its small accessors, and
//! the one view hole punching has of the endpoint: `impl PunchHost for Inner`.

mod bind;
mod ctl;
mod dial;
mod netchange;
mod relays;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kith_core::net::{
    BoxFuture, Conn, ConnectError, Discovery, MountError, Protocol, ProtocolHandler, Router, codes,
};
use kith_core::{NodeAddr, NodeId, SecretKey, Transport};
use quinn::VarInt;
use tokio::sync::{Semaphore, watch};

use crate::config::{EndpointConfig, HolePunchConfig};
use crate::conn::{QuicConnection, ZeroRtt};
use crate::observe::Observations;
use crate::paths::{PathKind, PathSocket, PathTable};
use crate::portmap::PortMapper;
use crate::punch::PunchHost;
use crate::punch_state::PunchState;
use crate::stun::NatKind;
use crate::sync::lock;

pub use bind::BindError;
pub(crate) use bind::quinn_configs;

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

/// One bound UDP socket: quinn's endpoint over the path socket, and the path table.
struct Sock {
    ep: quinn::Endpoint,
    socket: Arc<PathSocket>,
    table: Arc<PathTable>,
}

/// The endpoint's shared state. Tasks hold it (strongly or weakly); only [`Handle`]s keep
/// the endpoint open. Each submodule owns the fields of its responsibility (see the
/// module docs); the rest is shared.
struct Inner {
    id: NodeId,
    key: SecretKey,
    v4: Option<Sock>,
    v6: Option<Sock>,
    /// What STUN servers, the home relay and peers say our address is, and how much of
    /// it we believe (issue 14: a peer's hello alone is never believed).
    observed: Mutex<Observations>,
    /// One birthday-probing attempt at a time (it holds many sockets).
    birthday_slot: Semaphore,
    /// Relay reservations and the home relay.
    relays: relays::Relays,
    /// Where to look up nodes dialed by id alone.
    discovery: Mutex<Option<Arc<dyn Discovery>>>,
    client_config: quinn::ClientConfig,
    config: EndpointConfig,
    router: Router,
    /// The per-peer slot table.
    slots: dial::Slots,
    /// The connection limit and the handshake-rate token bucket.
    admission: bind::Admission,
    closing: AtomicBool,
    /// The gateway port mapping of the IPv4 socket (`EndpointConfig::port_mapping`).
    portmap: Mutex<Option<PortMapper>>,
    /// Network-change bookkeeping (rate limit, one STUN round at a time, count).
    net: netchange::NetChange,
}

impl Inner {
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
    fn sock_for_mapped(&self, addr: &SocketAddr) -> Option<&Sock> {
        self.socks().find(|s| s.table.node_of(addr).is_some())
    }

    /// The bound address of the IPv4 socket.
    fn v4_local(&self) -> Option<SocketAddr> {
        self.v4.as_ref().and_then(|s| s.ep.local_addr().ok())
    }

    fn shutdown_now(&self) {
        if self.closing.swap(true, Ordering::AcqRel) {
            return;
        }
        for c in self.slots.registered() {
            c.inner
                .close(VarInt::from_u32(codes::CLOSE_SHUTDOWN), b"shutdown");
        }
        for ep in self.endpoints() {
            ep.close(VarInt::from_u32(codes::CLOSE_SHUTDOWN), b"shutdown");
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
            punch: PunchState::new(),
            table: self.sock_for_mapped(&addr).map(|s| s.table.clone()),
        })
    }
}

/// All hole punching sees of the endpoint.
impl PunchHost for Inner {
    fn node_id(&self) -> NodeId {
        self.id
    }

    fn candidates(&self) -> (Vec<SocketAddr>, usize) {
        Inner::candidates(self)
    }

    fn nat_now(&self) -> NatKind {
        Inner::nat_now(self)
    }

    fn path_for(&self, mapped: &SocketAddr) -> Option<(&Arc<PathSocket>, &Arc<PathTable>)> {
        self.sock_for_mapped(mapped).map(|s| (&s.socket, &s.table))
    }

    fn hole_punch(&self) -> &HolePunchConfig {
        &self.config.hole_punch
    }

    fn path_probe_delay(&self) -> Duration {
        self.config.path_probe_delay()
    }

    fn has_port_mapping(&self) -> bool {
        Inner::has_port_mapping(self)
    }

    fn v4_local(&self) -> Option<SocketAddr> {
        Inner::v4_local(self)
    }

    fn birthday_slot(&self) -> &Semaphore {
        &self.birthday_slot
    }
}

impl Endpoint {
    fn inner(&self) -> &Arc<Inner> {
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
        if let Some(hint) = self.inner().relays.home() {
            addr.relays.push(hint);
        }
        addr
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
