//! LAN discovery with multicast DNS (RFC 6762) and DNS-SD (RFC 6763).
//!
//! [`MdnsDiscovery`] announces an [`Endpoint`] on the local network and watches for other
//! kith nodes announcing themselves, so two nodes on one LAN find each other and connect
//! directly, with no relay, no DHT and no server. It implements
//! [`Discovery`]: give it to [`Endpoint::set_discovery`] (alone, or first in a
//! [`Chain`](crate::discovery::Chain)) and `endpoint.connect(NodeAddr::new(id))` dials a
//! peer seen on the LAN by its bare id. [`peers`](MdnsDiscovery::peers) and
//! [`events`](MdnsDiscovery::events) list the peers seen, for a LAN chat or a game lobby.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> anyhow::Result<()> {
//! use std::sync::Arc;
//! use kith_core::{NodeAddr, SecretKey};
//! use kith_transport::mdns::{MdnsConfig, MdnsDiscovery};
//! use kith_transport::{Endpoint, EndpointConfig};
//!
//! let endpoint = Endpoint::bind(SecretKey::generate(&mut rand::rngs::OsRng), EndpointConfig::default()).await?;
//! let lan = Arc::new(MdnsDiscovery::spawn(&endpoint, MdnsConfig::default())?);
//! endpoint.set_discovery(lan.clone());
//! // Later: who is on the LAN, and dial one of them by id alone.
//! if let Some(peer) = lan.peers().first() {
//!     let conn = endpoint.connect(NodeAddr::new(peer.node_id)).await?;
//!     println!("connected to {} over {:?}", peer.node_id, conn.path());
//! }
//! lan.shutdown().await; // says goodbye on the LAN; dropping it does too
//! # Ok(()) }
//! ```
//!
//! # Records
//!
//! A node registers one DNS-SD service instance of type [`SERVICE_TYPE`]
//! (`_kith._udp.local.`, configurable):
//!
//! * instance name: the node id in its text form (52 lowercase base32 characters, within
//!   DNS's 63-byte label limit), so the full name is `<node id>._kith._udp.local.`;
//! * SRV: host `<node id>.local.` and the UDP port of the IPv4 socket (of the IPv6 socket
//!   when only IPv6 is bound);
//! * A/AAAA: the endpoint's bound addresses; when a socket is bound to an unspecified
//!   address (`0.0.0.0`, `::`) the addresses of every interface of that family, each
//!   announced only on its own interface;
//! * TXT: `id=<node id>` (must equal the instance name) and, when the IPv6 socket's port
//!   differs from the SRV port, `p6=<port>`.
//!
//! Only the node id is authenticated, by the TLS handshake of the connection that
//! follows: a forged record can make a dial fail or go to the wrong address, never
//! reach a node that does not hold the key.
//!
//! # Bounds
//!
//! Everything a hostile LAN could inflate is bounded here: at most
//! [`MdnsConfig::max_peers`] peers are cached (the least recently announced is evicted
//! first), at most [`MAX_DIRECT_ADDRS`] addresses are kept per peer (of at most
//! [`MAX_CANDIDATE_ADDRS`] looked at), and a record is ignored when its instance name or
//! TXT `id` is not a valid node id, when the two differ, when it names this node, or
//! when it carries no usable address or port. The event channel is bounded (a slow
//! receiver misses events, see [`events`](MdnsDiscovery::events)). The mDNS daemon
//! (the `mdns-sd` crate) keeps its own record cache, bounded by the records' TTLs.
//!
//! # Lifetime
//!
//! The daemon runs on a thread of its own; [`MdnsDiscovery::spawn`] also starts a tokio
//! task that turns its browse results into the cache. Dropping the `MdnsDiscovery` (or
//! [`shutdown`](MdnsDiscovery::shutdown)) unregisters the service (mDNS "goodbye"
//! packets tell peers at once) and stops both.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kith_core::addr::MAX_DIRECT_ADDRS;
use kith_core::net::{BoxFuture, Discovery};
use kith_core::{NODE_ID_TEXT_LEN, NodeAddr, NodeId};
use mdns_sd::{IfKind, ResolvedService, ScopedIp, ServiceDaemon, ServiceEvent, ServiceInfo};
use tokio::sync::broadcast;

use crate::Endpoint;

/// The default DNS-SD service type kith nodes announce.
pub const SERVICE_TYPE: &str = "_kith._udp.local.";
/// TXT key of the node id.
pub const TXT_ID: &str = "id";
/// TXT key of the IPv6 socket's port, when it differs from the SRV port.
pub const TXT_PORT6: &str = "p6";
/// Most addresses of one record looked at (of which at most [`MAX_DIRECT_ADDRS`] are
/// kept).
pub const MAX_CANDIDATE_ADDRS: usize = 4 * MAX_DIRECT_ADDRS;
/// Longest service name (the `kith` in `_kith._udp.local.`), as mDNS-SD limits it.
const MAX_SERVICE_NAME: usize = 15;
/// Capacity of the event channel.
const EVENT_CAPACITY: usize = 64;
/// How long [`MdnsDiscovery::shutdown`] waits for the daemon to confirm.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(1);
/// Least time between two browse restarts after the daemon dropped our subscription.
const REBROWSE_BACKOFF: Duration = Duration::from_secs(1);

/// Settings of [`MdnsDiscovery`]. The defaults suit a home or office LAN.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MdnsConfig {
    /// DNS-SD service type: `_<name>._udp.local.` with a name of 1–15 lowercase letters,
    /// digits or hyphens. Nodes find only nodes of the same type. Default
    /// [`SERVICE_TYPE`].
    pub service_type: String,
    /// Announce this endpoint (default `true`); `false` only listens for others.
    pub announce: bool,
    /// Most LAN peers kept in the cache (default 256, at least 1).
    pub max_peers: usize,
    /// How long [`resolve`](Discovery::resolve) waits for a peer not seen yet to appear
    /// on the LAN (default 2 s). A peer already seen is answered at once.
    pub resolve_timeout: Duration,
}

impl Default for MdnsConfig {
    fn default() -> Self {
        Self {
            service_type: SERVICE_TYPE.into(),
            announce: true,
            max_peers: 256,
            resolve_timeout: Duration::from_secs(2),
        }
    }
}

/// Error starting [`MdnsDiscovery`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MdnsError {
    /// The service type is not `_<name>._udp.local.` with a name of 1–15 lowercase
    /// letters, digits or hyphens.
    #[error("invalid mDNS service type {0:?}: expected _<name>._udp.local.")]
    InvalidServiceType(String),
    /// [`MdnsConfig::max_peers`] is zero.
    #[error("mDNS max_peers must be at least 1")]
    ZeroMaxPeers,
    /// The endpoint has no bound socket (it was closed).
    #[error("the endpoint has no bound socket to announce")]
    NoSocket,
    /// Not called from within a tokio runtime.
    #[error("mDNS discovery must be started from within a tokio runtime")]
    NoRuntime,
    /// The mDNS daemon could not be started or refused a command.
    #[error("mDNS daemon: {0}")]
    Daemon(String),
}

impl From<mdns_sd::Error> for MdnsError {
    fn from(e: mdns_sd::Error) -> Self {
        MdnsError::Daemon(e.to_string())
    }
}

/// A change in the set of LAN peers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LanEvent {
    /// A peer appeared on the LAN, or announced different addresses.
    Discovered(NodeAddr),
    /// A peer said goodbye or its records expired.
    Lost(NodeId),
}

/// mDNS announcer and resolver for one [`Endpoint`]; see the [module docs](self).
pub struct MdnsDiscovery {
    shared: Arc<Shared>,
    daemon: ServiceDaemon,
    /// Full name of our registered service instance, if we announce.
    fullname: Option<String>,
    task: tokio::task::JoinHandle<()>,
    stopped: std::sync::atomic::AtomicBool,
}

impl fmt::Debug for MdnsDiscovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MdnsDiscovery")
            .field("node_id", &self.shared.own)
            .field("service_type", &self.shared.service_type)
            .field("announced", &self.fullname)
            .field("peers", &self.shared.cache().len())
            .finish()
    }
}

#[derive(Debug)]
struct Shared {
    own: NodeId,
    service_type: String,
    resolve_timeout: Duration,
    cache: Mutex<PeerCache>,
    events: broadcast::Sender<LanEvent>,
}

impl Shared {
    fn cache(&self) -> std::sync::MutexGuard<'_, PeerCache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies one browse event to the cache and tells subscribers what changed.
    fn handle(&self, event: ServiceEvent) {
        match event {
            ServiceEvent::ServiceResolved(resolved) => {
                let parsed = parse_announcement(
                    &self.service_type,
                    self.own,
                    &Announcement::from_resolved(&resolved),
                );
                let addr = match parsed {
                    Ok(addr) => addr,
                    Err(RecordError::OwnId) => return,
                    Err(e) => {
                        tracing::debug!(name = %resolved.fullname, error = %e, "mDNS record ignored");
                        return;
                    }
                };
                let change = self.cache().upsert(addr.clone());
                if let Upsert::New {
                    evicted: Some(old), ..
                } = change
                {
                    tracing::debug!(%old, "mDNS peer cache full: evicted the least recently announced");
                    let _ = self.events.send(LanEvent::Lost(old));
                }
                if change != Upsert::Unchanged {
                    tracing::debug!(%addr, "mDNS peer");
                    let _ = self.events.send(LanEvent::Discovered(addr));
                }
            }
            ServiceEvent::ServiceRemoved(_, fullname) => {
                let Ok(id) = instance_id(&self.service_type, &fullname) else {
                    return;
                };
                if self.cache().remove(&id) {
                    tracing::debug!(%id, "mDNS peer gone");
                    let _ = self.events.send(LanEvent::Lost(id));
                }
            }
            _ => {}
        }
    }
}

impl MdnsDiscovery {
    /// Starts the mDNS daemon: announces `endpoint` (unless [`MdnsConfig::announce`] is
    /// off) on the interfaces of its bound addresses (every interface of a family bound
    /// to an unspecified address) and browses for other nodes there. Must be called
    /// from within a tokio runtime.
    pub fn spawn(endpoint: &Endpoint, config: MdnsConfig) -> Result<Self, MdnsError> {
        validate_service_type(&config.service_type)?;
        if config.max_peers == 0 {
            return Err(MdnsError::ZeroMaxPeers);
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| MdnsError::NoRuntime)?;
        let bound = endpoint.local_addrs();
        let advert = Advert::new(endpoint.node_id(), &bound).ok_or(MdnsError::NoSocket)?;
        let daemon = ServiceDaemon::new()?;
        // Keep to the interfaces of the bound addresses.
        let started = (|| {
            daemon.disable_interface(IfKind::All)?;
            for kind in advert.interfaces() {
                daemon.enable_interface(kind)?;
            }
            let fullname = if config.announce {
                let info = advert.service_info(&config.service_type)?;
                let name = info.get_fullname().to_owned();
                daemon.register(info)?;
                Some(name)
            } else {
                None
            };
            let browse = daemon.browse(&config.service_type)?;
            Ok::<_, mdns_sd::Error>((fullname, browse))
        })();
        let (fullname, browse) = match started {
            Ok(v) => v,
            Err(e) => {
                let _ = daemon.shutdown();
                return Err(e.into());
            }
        };
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let shared = Arc::new(Shared {
            own: endpoint.node_id(),
            service_type: config.service_type.clone(),
            resolve_timeout: config.resolve_timeout,
            cache: Mutex::new(PeerCache::new(config.max_peers)),
            events,
        });
        let task = runtime.spawn(browse_loop(
            shared.clone(),
            daemon.clone(),
            config.service_type,
            browse,
        ));
        tracing::debug!(announced = ?fullname, addrs = ?bound, "mDNS discovery started");
        Ok(Self {
            shared,
            daemon,
            fullname,
            task,
            stopped: false.into(),
        })
    }

    /// The LAN peers seen and not gone, ordered by node id.
    pub fn peers(&self) -> Vec<NodeAddr> {
        self.shared.cache().list()
    }

    /// The address of `id` if it has been seen on the LAN, without waiting.
    pub fn peer(&self, id: &NodeId) -> Option<NodeAddr> {
        self.shared.cache().get(id)
    }

    /// Changes in the set of LAN peers from now on. The channel holds 64 events; a
    /// receiver that falls further behind gets `RecvError::Lagged` and should re-read
    /// [`peers`](Self::peers).
    pub fn events(&self) -> broadcast::Receiver<LanEvent> {
        self.shared.events.subscribe()
    }

    /// The full DNS-SD name this node is announced under, if it announces.
    pub fn service_name(&self) -> Option<&str> {
        self.fullname.as_deref()
    }

    /// Waits up to `timeout` for `id` to be seen on the LAN.
    pub async fn wait_for(&self, id: NodeId, timeout: Duration) -> Option<NodeAddr> {
        if id == self.shared.own {
            return None;
        }
        // Subscribe before looking at the cache, so an announcement between the two
        // is not missed.
        let mut rx = self.shared.events.subscribe();
        if let Some(found) = self.peer(&id) {
            return Some(found);
        }
        let wait = async {
            loop {
                match rx.recv().await {
                    Ok(LanEvent::Discovered(a)) if a.node_id == id => return Some(a),
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if let Some(found) = self.peer(&id) {
                            return Some(found);
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.ok().flatten()
    }

    /// Unregisters the service (peers are told at once) and stops the daemon, waiting
    /// up to a second for it to confirm. Dropping does the same without waiting.
    pub async fn shutdown(&self) {
        if self.stopped.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        if let Some(name) = &self.fullname {
            if let Ok(rx) = self.daemon.unregister(name) {
                let _ = tokio::time::timeout(SHUTDOWN_WAIT, rx.recv_async()).await;
            }
        }
        if let Ok(rx) = self.daemon.shutdown() {
            let _ = tokio::time::timeout(SHUTDOWN_WAIT, rx.recv_async()).await;
        }
        self.task.abort();
    }

    fn stop_now(&self) {
        if self.stopped.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        // Commands run in order on the daemon thread: the goodbye goes out before exit.
        if let Some(name) = &self.fullname {
            let _ = self.daemon.unregister(name);
        }
        let _ = self.daemon.shutdown();
        self.task.abort();
    }
}

impl Drop for MdnsDiscovery {
    fn drop(&mut self) {
        self.stop_now();
    }
}

impl Discovery for MdnsDiscovery {
    /// The address of a peer seen on the LAN; waits up to
    /// [`MdnsConfig::resolve_timeout`] for one not seen yet.
    fn resolve(&self, id: NodeId) -> BoxFuture<'_, Option<NodeAddr>> {
        Box::pin(self.wait_for(id, self.shared.resolve_timeout))
    }
}

/// Feeds browse results into the cache until the daemon stops.
async fn browse_loop(
    shared: Arc<Shared>,
    daemon: ServiceDaemon,
    service_type: String,
    mut browse: mdns_sd::Receiver<ServiceEvent>,
) {
    loop {
        while let Ok(event) = browse.recv_async().await {
            shared.handle(event);
        }
        // The daemon ends a subscription whose receiver fell behind; start over unless
        // it has shut down.
        tokio::time::sleep(REBROWSE_BACKOFF).await;
        match daemon.browse(&service_type) {
            Ok(rx) => browse = rx,
            Err(_) => return,
        }
    }
}

fn validate_service_type(ty: &str) -> Result<(), MdnsError> {
    let bad = || MdnsError::InvalidServiceType(ty.to_owned());
    let name = ty
        .strip_prefix('_')
        .and_then(|t| t.strip_suffix("._udp.local."))
        .ok_or_else(bad)?;
    let ok = !name.is_empty()
        && name.len() <= MAX_SERVICE_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok { Ok(()) } else { Err(bad()) }
}

// ---------------------------------------------------------------------------------------
// What we announce (pure).

/// The records this node announces, derived from its bound socket addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Advert {
    id: NodeId,
    /// SRV port: the IPv4 socket's, else the IPv6 socket's.
    port: u16,
    /// The IPv6 socket's port when it differs from `port`.
    port6: Option<u16>,
    /// Specific bound addresses.
    ips: Vec<IpAddr>,
    /// Bound to an unspecified address of these families (v4, v6): announce every
    /// interface address of the family.
    auto: (bool, bool),
}

impl Advert {
    /// `None` when nothing is bound.
    fn new(id: NodeId, bound: &[SocketAddr]) -> Option<Self> {
        let v4 = bound.iter().find(|a| a.is_ipv4());
        let v6 = bound.iter().find(|a| a.is_ipv6());
        let port = v4.or(v6)?.port();
        let port6 = v6.map(|a| a.port()).filter(|&p| p != port);
        let specified =
            |a: Option<&SocketAddr>| a.map(|a| a.ip()).filter(|ip| !ip.is_unspecified());
        let ips = [specified(v4), specified(v6)]
            .into_iter()
            .flatten()
            .collect();
        let unspecified = |a: Option<&SocketAddr>| a.is_some_and(|a| a.ip().is_unspecified());
        Some(Self {
            id,
            port,
            port6,
            ips,
            auto: (unspecified(v4), unspecified(v6)),
        })
    }

    /// The interfaces the daemon should use (after disabling all).
    fn interfaces(&self) -> Vec<IfKind> {
        let mut kinds: Vec<IfKind> = self.ips.iter().map(|&ip| IfKind::Addr(ip)).collect();
        if self.auto.0 {
            kinds.push(IfKind::IPv4);
        }
        if self.auto.1 {
            kinds.push(IfKind::IPv6);
        }
        kinds
    }

    fn txt(&self) -> Vec<(&'static str, String)> {
        let mut txt = vec![(TXT_ID, self.id.to_string())];
        if let Some(p) = self.port6 {
            txt.push((TXT_PORT6, p.to_string()));
        }
        txt
    }

    fn service_info(&self, service_type: &str) -> Result<ServiceInfo, mdns_sd::Error> {
        let id = self.id.to_string();
        let mut info = ServiceInfo::new(
            service_type,
            &id,
            &format!("{id}.local."),
            &self.ips[..],
            self.port,
            &self.txt()[..],
        )?;
        // The instance name is the node id, unique by construction: skip the probing
        // that would delay the first announcement by ~750 ms.
        info.set_requires_probe(false);
        if self.auto.0 || self.auto.1 {
            info = info.enable_addr_auto();
        }
        Ok(info)
    }
}

// ---------------------------------------------------------------------------------------
// What we accept (pure).

/// A resolved DNS-SD instance, reduced to what kith reads from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Announcement<'a> {
    /// `<instance>.<service type>`.
    pub(crate) fullname: &'a str,
    /// SRV port.
    pub(crate) port: u16,
    /// A/AAAA addresses with the IPv6 scope (interface index, 0 if none).
    pub(crate) ips: Vec<(IpAddr, u32)>,
    /// TXT `id`.
    pub(crate) txt_id: Option<&'a str>,
    /// TXT `p6`.
    pub(crate) txt_port6: Option<&'a str>,
}

impl<'a> Announcement<'a> {
    fn from_resolved(r: &'a ResolvedService) -> Self {
        let ips = r
            .addresses
            .iter()
            .take(MAX_CANDIDATE_ADDRS)
            .filter_map(|a| match a {
                ScopedIp::V4(v4) => Some((IpAddr::V4(*v4.addr()), 0)),
                ScopedIp::V6(v6) => Some((IpAddr::V6(*v6.addr()), v6.scope_id().index)),
                _ => None,
            })
            .collect();
        Self {
            fullname: &r.fullname,
            port: r.port,
            ips,
            txt_id: r.txt_properties.get_property_val_str(TXT_ID),
            txt_port6: r.txt_properties.get_property_val_str(TXT_PORT6),
        }
    }
}

/// Why a record was ignored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RecordError {
    /// The name is not `<instance>.<our service type>`.
    #[error("not of our service type")]
    WrongService,
    /// The instance name is not a node id.
    #[error("instance name is not a node id")]
    BadInstance,
    /// No TXT `id`, or it is not a node id.
    #[error("TXT id missing or invalid")]
    BadTxtId,
    /// TXT `id` and instance name differ.
    #[error("TXT id differs from the instance name")]
    IdMismatch,
    /// The record announces this node.
    #[error("our own record")]
    OwnId,
    /// SRV port 0, or a TXT `p6` that is not a port.
    #[error("invalid port")]
    BadPort,
    /// No usable address.
    #[error("no usable address")]
    NoAddress,
}

/// The node id in the instance name of `fullname`.
fn instance_id(service_type: &str, fullname: &str) -> Result<NodeId, RecordError> {
    let split = fullname
        .len()
        .checked_sub(service_type.len() + 1)
        .ok_or(RecordError::WrongService)?;
    let (instance, rest) = (
        fullname.get(..split).ok_or(RecordError::WrongService)?,
        fullname.get(split..).ok_or(RecordError::WrongService)?,
    );
    let suffix_ok = rest
        .strip_prefix('.')
        .is_some_and(|t| t.eq_ignore_ascii_case(service_type));
    if !suffix_ok {
        return Err(RecordError::WrongService);
    }
    // DNS names compare case-insensitively; node ids are lowercase.
    if instance.len() != NODE_ID_TEXT_LEN {
        return Err(RecordError::BadInstance);
    }
    instance
        .to_ascii_lowercase()
        .parse()
        .map_err(|_| RecordError::BadInstance)
}

fn parse_port(p: Option<&str>, default: u16) -> Result<u16, RecordError> {
    match p {
        None => Ok(default),
        Some(s) if s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit()) => {
            match s.parse::<u16>() {
                Ok(p) if p != 0 => Ok(p),
                _ => Err(RecordError::BadPort),
            }
        }
        Some(_) => Err(RecordError::BadPort),
    }
}

/// Turns a resolved instance into the peer's [`NodeAddr`]: checks the names, drops
/// unusable addresses (unspecified, multicast, broadcast, IPv6 link-local without a
/// scope), and orders the rest (non-loopback first, IPv4 first) and caps them at
/// [`MAX_DIRECT_ADDRS`].
pub(crate) fn parse_announcement(
    service_type: &str,
    own: NodeId,
    a: &Announcement<'_>,
) -> Result<NodeAddr, RecordError> {
    let id = instance_id(service_type, a.fullname)?;
    let txt: NodeId = a
        .txt_id
        .filter(|t| t.len() == NODE_ID_TEXT_LEN)
        .and_then(|t| t.parse().ok())
        .ok_or(RecordError::BadTxtId)?;
    if txt != id {
        return Err(RecordError::IdMismatch);
    }
    if id == own {
        return Err(RecordError::OwnId);
    }
    if a.port == 0 {
        return Err(RecordError::BadPort);
    }
    let port6 = parse_port(a.txt_port6, a.port)?;
    let mut direct: Vec<SocketAddr> = a
        .ips
        .iter()
        .take(MAX_CANDIDATE_ADDRS)
        .filter_map(|&(ip, scope)| match ip {
            IpAddr::V4(v4) => (!v4.is_unspecified() && !v4.is_multicast() && !v4.is_broadcast())
                .then(|| SocketAddr::new(ip, a.port)),
            IpAddr::V6(v6) => {
                if v6.is_unspecified() || v6.is_multicast() {
                    return None;
                }
                let link_local = v6.segments()[0] & 0xffc0 == 0xfe80;
                match (link_local, scope) {
                    (true, 0) => None,
                    (true, s) => Some(SocketAddrV6::new(v6, port6, 0, s).into()),
                    (false, _) => Some(SocketAddr::new(ip, port6)),
                }
            }
        })
        .collect();
    direct.sort_by_key(|s| (s.ip().is_loopback(), s.is_ipv6(), *s));
    direct.dedup();
    direct.truncate(MAX_DIRECT_ADDRS);
    if direct.is_empty() {
        return Err(RecordError::NoAddress);
    }
    Ok(NodeAddr::new(id).with_direct(direct))
}

// ---------------------------------------------------------------------------------------
// The peer cache (pure).

/// What [`PeerCache::upsert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upsert {
    /// A peer not in the cache; `evicted` made room for it.
    New { evicted: Option<NodeId> },
    /// A known peer with different addresses.
    Changed,
    /// A known peer, same addresses (refreshed).
    Unchanged,
}

/// LAN peers by id, at most `max`; the least recently announced goes first.
#[derive(Debug)]
struct PeerCache {
    max: usize,
    /// Announcement counter: the recency order without a clock.
    tick: u64,
    peers: HashMap<NodeId, (u64, NodeAddr)>,
}

impl PeerCache {
    fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            tick: 0,
            peers: HashMap::new(),
        }
    }

    fn len(&self) -> usize {
        self.peers.len()
    }

    fn upsert(&mut self, addr: NodeAddr) -> Upsert {
        self.tick += 1;
        let tick = self.tick;
        if let Some(entry) = self.peers.get_mut(&addr.node_id) {
            entry.0 = tick;
            if entry.1 == addr {
                return Upsert::Unchanged;
            }
            entry.1 = addr;
            return Upsert::Changed;
        }
        let mut evicted = None;
        if self.peers.len() >= self.max {
            let oldest = self
                .peers
                .iter()
                .min_by_key(|(_, (t, _))| *t)
                .map(|(id, _)| *id);
            if let Some(old) = oldest {
                self.peers.remove(&old);
                evicted = Some(old);
            }
        }
        self.peers.insert(addr.node_id, (tick, addr));
        Upsert::New { evicted }
    }

    fn remove(&mut self, id: &NodeId) -> bool {
        self.peers.remove(id).is_some()
    }

    fn get(&self, id: &NodeId) -> Option<NodeAddr> {
        self.peers.get(id).map(|(_, a)| a.clone())
    }

    fn list(&self) -> Vec<NodeAddr> {
        let mut v: Vec<NodeAddr> = self.peers.values().map(|(_, a)| a.clone()).collect();
        v.sort_by_key(|a| a.node_id);
        v
    }
}

#[cfg(test)]
mod tests;
