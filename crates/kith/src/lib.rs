//! kith: peer-to-peer networking libraries for Rust.
//!
//! Every peer is client and server at once and is named by its Ed25519 public key
//! ([`NodeId`]). A [`Node`] owns one QUIC endpoint and composes the layers on it from one
//! identity: switch each on in the [`NodeBuilder`] and reach it through its accessor.
//!
//! | layer | builder | accessor | crate |
//! |---|---|---|---|
//! | transport (always) | [`config`](NodeBuilder::config), [`loopback`](NodeBuilder::loopback) | [`Node::endpoint`] | `kith-transport` |
//! | Kademlia DHT | [`dht`](NodeBuilder::dht) | [`Node::dht`] | `kith-overlay` |
//! | gossip topics | [`gossip`](NodeBuilder::gossip) | [`Node::gossip`] | `kith-overlay` |
//! | content store | [`store`](NodeBuilder::store), [`memory_store`](NodeBuilder::memory_store) | [`Node::store`] | `kith-store` |
//! | file sharing | [`share`](NodeBuilder::share) | [`Node::share`] | `kith-share` |
//! | keyword search | [`search`](NodeBuilder::search) | [`Node::search`] | `kith-overlay` |
//! | LAN discovery | [`mdns`](NodeBuilder::mdns) | [`Node::mdns`] | `kith-transport` |
//!
//! Two peers on a gossip topic:
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use kith::{Node, TopicId, gossip::Event};
//! let a = Node::builder().loopback().gossip(Default::default()).spawn().await?;
//! let b = Node::builder().loopback().gossip(Default::default()).spawn().await?;
//! let lobby = TopicId::from_name("lobby");
//! let ta = a.gossip()?.join(lobby, vec![]).await?;
//! let mut tb = b.gossip()?.join(lobby, vec![a.addr()]).await?;
//! while !matches!(tb.next_event().await, Some(Event::NeighborUp(_))) {}
//! ta.broadcast("hello, b").await?;
//! while !matches!(tb.next_event().await, Some(Event::Received { .. })) {}
//! # a.close().await; b.close().await;
//! # Ok(()) }
//! ```
//!
//! Share a folder and fetch it by ticket:
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let tmp = tempfile::tempdir()?; let folder = tmp.path().join("folder");
//! # std::fs::create_dir(&folder)?; std::fs::write(folder.join("a.txt"), b"hello")?;
//! # let out = tmp.path().join("out");
//! use kith::{Node, ShareConfig, DownloadOptions};
//! let a = Node::builder().loopback().share(ShareConfig::default()).spawn().await?;
//! let b = Node::builder().loopback().share(ShareConfig::default()).spawn().await?;
//! let ticket = a.share()?.add_dir(&folder).await?.to_string(); // send it to b
//! let ticket = ticket.parse()?;
//! let stats = b.share()?.download(&ticket, DownloadOptions::default()).finish().await?;
//! b.share()?.export_dir(ticket.root, &out).await?;
//! assert_eq!(std::fs::read(out.join("a.txt"))?, b"hello");
//! println!("{} bytes from {} peer(s)", stats.fetched_bytes, stats.per_peer.len());
//! # a.close().await; b.close().await;
//! # Ok(()) }
//! ```
//!
//! A protocol of your own, mounted next to the layers:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use kith::{Node, Protocol, ProtocolHandler, BoxFuture, Conn, BoxSendStream, BoxRecvStream, Connection};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! const HELLO: Protocol = Protocol::from_static("example/hello/1");
//! struct Hello;
//! impl ProtocolHandler for Hello {
//!     fn accept_bi(&self, conn: Conn, mut send: BoxSendStream, _recv: BoxRecvStream) -> BoxFuture<'static, ()> {
//!         Box::pin(async move {
//!             let _ = send.write_all(format!("hello, {}", conn.remote_id().fmt_short()).as_bytes()).await;
//!             let _ = send.finish();
//!         })
//!     }
//! }
//!
//! let server = Node::builder().loopback().protocol(HELLO, Arc::new(Hello)).spawn().await?;
//! let client = Node::builder().loopback().spawn().await?;
//! let conn = client.connect(server.addr()).await?;
//! let (mut send, mut recv) = conn.open_bi(&HELLO).await?;
//! send.finish()?;
//! let mut reply = String::new();
//! recv.read_to_string(&mut reply).await?;
//! assert_eq!(reply, format!("hello, {}", client.id().fmt_short()));
//! # client.close().await; server.close().await;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use kith_core::net::{
    BoxFuture, BoxRecvStream, BoxSendStream, Conn, ConnectError, Connection, ConnectionError,
    DatagramError, MountError, Protocol, ProtocolHandler, RecvStream, SendStream, StreamError,
    Transport,
};
pub use kith_core::{NodeAddr, NodeId, RelayHint, SecretKey, frame};
pub use kith_overlay::dht::{self, DhtHandle};
pub use kith_overlay::gossip::driver::{Gossip, Topic};
pub use kith_overlay::gossip::{self, TopicId};
pub use kith_overlay::search::{self, SearchHandle};
pub use kith_share::{
    self as share, Download, DownloadEvent, DownloadOptions, DownloadStats, Share, ShareConfig,
    SharedStore, Ticket,
};
pub use kith_store::{self as store, FsStore, MemStore, Store, StoreConfig};
pub use kith_transport::mdns::{MdnsConfig, MdnsDiscovery};
pub use kith_transport::stun::NatKind;
pub use kith_transport::{
    BindError, ConnectionStats, Endpoint, EndpointConfig, HolePunch, HolePunchConfig,
    IdentityError, Limits, PathKind, QuicConnection, ZeroRtt,
};

/// The layers, for code that wants them by name.
pub mod layers {
    pub use kith_core as core;
    pub use kith_overlay as overlay;
    pub use kith_share as share;
    pub use kith_store as store;
    pub use kith_transport as transport;
}

/// Error starting a [`Node`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The key file could not be loaded or created.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The endpoint could not bind its sockets.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// Two protocols were mounted under one name.
    #[error(transparent)]
    Mount(#[from] MountError),
    /// The DHT could not start.
    #[error("DHT: {0}")]
    Dht(#[from] kith_overlay::dht::DhtError),
    /// Gossip could not start.
    #[error("gossip: {0}")]
    Gossip(#[from] kith_overlay::gossip::driver::SpawnError),
    /// The store directory could not be opened.
    #[error("store: {0}")]
    Store(#[from] kith_store::OpenError),
    /// The share service could not start.
    #[error("share: {0}")]
    Share(#[from] kith_share::ShareError),
    /// LAN discovery could not start.
    #[error("mDNS: {0}")]
    Mdns(#[from] kith_transport::mdns::MdnsError),
    /// Search could not start.
    #[error("search: {0}")]
    Search(#[from] kith_overlay::search::SearchError),
}

/// A layer was asked for that the node was not built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the {0} layer is not enabled: switch it on in Node::builder()")]
pub struct LayerOff(pub &'static str);

#[derive(Debug, Clone)]
enum StoreKind {
    Memory(StoreConfig),
    Path(PathBuf, StoreConfig),
}

/// Configures and starts a [`Node`]. Every layer but the transport is off until switched
/// on; the identity is created once and used by every layer.
#[derive(Default)]
pub struct NodeBuilder {
    key: Option<SecretKey>,
    key_file: Option<PathBuf>,
    config: EndpointConfig,
    loopback: bool,
    protocols: Vec<(Protocol, Arc<dyn ProtocolHandler>)>,
    dht: Option<kith_overlay::dht::Config>,
    gossip: Option<kith_overlay::gossip::Config>,
    store: Option<StoreKind>,
    share: Option<ShareConfig>,
    search: Option<kith_overlay::search::Config>,
    mdns: Option<bool>,
    bootstrap: Vec<NodeAddr>,
}

impl std::fmt::Debug for NodeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeBuilder")
            .field("key_file", &self.key_file)
            .field("config", &self.config)
            .field("loopback", &self.loopback)
            .field(
                "protocols",
                &self.protocols.iter().map(|p| &p.0).collect::<Vec<_>>(),
            )
            .field("dht", &self.dht.is_some())
            .field("gossip", &self.gossip.is_some())
            .field("store", &self.store)
            .field("share", &self.share.is_some())
            .field("search", &self.search.is_some())
            .field("mdns", &self.mdns)
            .field("bootstrap", &self.bootstrap)
            .finish()
    }
}

impl NodeBuilder {
    /// Uses this identity (default: a fresh random one, unless [`key_file`](Self::key_file)).
    pub fn secret_key(mut self, key: SecretKey) -> Self {
        self.key = Some(key);
        self
    }

    /// Loads the identity from this file, creating it (mode 0600) on first run. The UDP
    /// port is persisted beside it (`<file>.port`), so the node keeps its address across
    /// restarts when the port is free.
    pub fn key_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.key_file = Some(path.into());
        self
    }

    /// Uses this endpoint configuration (binding, limits, relay, STUN servers…).
    pub fn config(mut self, config: EndpointConfig) -> Self {
        let loopback = self.loopback;
        self.config = config;
        if loopback {
            self = self.loopback();
        }
        self
    }

    /// Binds IPv4 loopback only, on an ephemeral port (tests, local demos). Only the
    /// binding changes: every other setting stays. LAN discovery is off unless asked for
    /// with [`mdns`](Self::mdns)`(true)`, as multicast would leave the machine.
    pub fn loopback(mut self) -> Self {
        let lo = EndpointConfig::loopback();
        self.config.bind_v4 = lo.bind_v4;
        self.config.bind_v6 = lo.bind_v6;
        self.loopback = true;
        self
    }

    /// Binds this one socket address, for example `0.0.0.0:4433` (IPv4 only) or
    /// `[::]:4433` (IPv6 only). LAN discovery defaults to off on a loopback address.
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        if addr.is_ipv4() {
            self.config.bind_v4 = Some(addr);
            self.config.bind_v6 = None;
        } else {
            self.config.bind_v4 = None;
            self.config.bind_v6 = Some(addr);
        }
        self
    }

    /// Mounts `handler` for `protocol`.
    pub fn protocol(mut self, protocol: Protocol, handler: Arc<dyn ProtocolHandler>) -> Self {
        self.protocols.push((protocol, handler));
        self
    }

    /// Runs the Kademlia DHT (`kith/dht/1`): node addresses, provider records, values.
    /// Peers are then reachable by bare [`NodeId`] through it.
    pub fn dht(mut self, config: kith_overlay::dht::Config) -> Self {
        self.dht = Some(config);
        self
    }

    /// Runs gossip (`kith/gossip/1`): topic membership and broadcast.
    pub fn gossip(mut self, config: kith_overlay::gossip::Config) -> Self {
        self.gossip = Some(config);
        self
    }

    /// Keeps content in a crash-safe filesystem store in `dir`.
    pub fn store(mut self, dir: impl Into<PathBuf>) -> Self {
        self.store = Some(StoreKind::Path(dir.into(), StoreConfig::default()));
        self
    }

    /// Like [`store`](Self::store) with explicit limits.
    pub fn store_with(mut self, dir: impl Into<PathBuf>, config: StoreConfig) -> Self {
        self.store = Some(StoreKind::Path(dir.into(), config));
        self
    }

    /// Keeps content in memory.
    pub fn memory_store(mut self) -> Self {
        self.store = Some(StoreKind::Memory(StoreConfig::default()));
        self
    }

    /// Runs file sharing (`kith/share/1`) on the node's store (an in-memory store if none
    /// was configured). With the DHT on, shares are announced and downloads find
    /// providers through it; with mDNS on, LAN peers are asked first.
    pub fn share(mut self, config: ShareConfig) -> Self {
        self.share = Some(config);
        self
    }

    /// Runs flood / random-walk keyword search (`kith/search/1`). Its neighbours are the
    /// bootstrap peers and, with the DHT on, the nodes closest to this one (refreshed
    /// every 30 s).
    pub fn search(mut self, config: kith_overlay::search::Config) -> Self {
        self.search = Some(config);
        self
    }

    /// LAN discovery over mDNS: on by default unless the node binds loopback. LAN peers
    /// are found by node id before the DHT is asked.
    pub fn mdns(mut self, on: bool) -> Self {
        self.mdns = Some(on);
        self
    }

    /// Peers to join the DHT (and gossip topics) through.
    pub fn bootstrap(mut self, peers: impl IntoIterator<Item = NodeAddr>) -> Self {
        self.bootstrap.extend(peers);
        self
    }

    /// Reserves a slot on this relay and advertises it, so peers that cannot reach this
    /// node directly come through it.
    pub fn relay(mut self, relay: NodeAddr) -> Self {
        self.config.relay = Some(relay);
        self
    }

    fn port_file(&self) -> Option<PathBuf> {
        self.key_file.as_ref().map(|k| {
            let mut p = k.clone().into_os_string();
            p.push(".port");
            PathBuf::from(p)
        })
    }

    /// Binds the endpoint, starts the layers, mounts the protocols.
    pub async fn spawn(self) -> Result<Node, NodeError> {
        let key = match (&self.key, &self.key_file) {
            (Some(k), _) => k.clone(),
            (None, Some(path)) => kith_transport::load_or_create_secret_key(path)?,
            (None, None) => SecretKey::generate(&mut rand::rngs::OsRng),
        };
        let endpoint = self.bind_endpoint(key.clone()).await?;
        let transport: Arc<dyn Transport> = Arc::new(endpoint.clone());
        let loopback_only = [self.config.bind_v4, self.config.bind_v6]
            .iter()
            .flatten()
            .all(|a| a.ip().is_loopback());
        let mdns_on = self.mdns.unwrap_or(!loopback_only);
        let mdns = if mdns_on {
            Some(Arc::new(MdnsDiscovery::spawn(
                &endpoint,
                MdnsConfig::default(),
            )?))
        } else {
            None
        };
        let dht = match self.dht {
            Some(cfg) => Some(kith_overlay::dht::Dht::spawn(
                transport.clone(),
                key.clone(),
                cfg,
                self.bootstrap.clone(),
            )?),
            None => None,
        };
        // Discovery: the LAN first (answers at once), then the DHT.
        let mut chain = kith_transport::discovery::Chain::new();
        if let Some(m) = &mdns {
            chain.push(m.clone());
        }
        if let Some(d) = &dht {
            chain.push(Arc::new(d.clone()));
        }
        if !chain.is_empty() {
            endpoint.set_discovery(Arc::new(chain));
        }
        let gossip = match self.gossip {
            Some(cfg) => Some(Gossip::spawn(transport.clone(), key.clone(), cfg)?),
            None => None,
        };
        let store_kind = match (&self.store, &self.share) {
            (None, Some(_)) => Some(StoreKind::Memory(StoreConfig::default())),
            (s, _) => s.clone(),
        };
        let store: Option<SharedStore> = match store_kind {
            Some(StoreKind::Memory(c)) => Some(Arc::new(MemStore::new(c))),
            Some(StoreKind::Path(dir, c)) => Some(Arc::new(FsStore::open(dir, c)?)),
            None => None,
        };
        let share = match (self.share, &store) {
            (Some(cfg), Some(store)) => {
                let s = Share::spawn(transport.clone(), store.clone(), dht.clone(), cfg)?;
                if let Some(m) = mdns.clone() {
                    s.set_lan_peers(move || m.peers());
                }
                Some(s)
            }
            _ => None,
        };
        let search = match self.search {
            Some(cfg) => Some(kith_overlay::search::Search::spawn(
                transport.clone(),
                cfg,
                None,
            )?),
            None => None,
        };
        let neighbours = search
            .clone()
            .map(|s| Arc::new(feed_search(s, dht.clone(), self.bootstrap.clone())));
        for (p, h) in self.protocols {
            endpoint.mount(p, h)?;
        }
        tracing::info!(id = %endpoint.node_id(), addrs = ?endpoint.local_addrs(), "node started");
        Ok(Node {
            endpoint,
            key,
            dht,
            gossip,
            store,
            share,
            search,
            mdns,
            tasks: neighbours.into_iter().collect(),
        })
    }

    /// Binds, on the persisted port when there is one and it is free.
    async fn bind_endpoint(&self, key: SecretKey) -> Result<Endpoint, NodeError> {
        let port_file = self.port_file().filter(|_| !self.loopback);
        let mut config = self.config.clone();
        let saved: Option<u16> = port_file
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|s| s.trim().parse().ok());
        if let (Some(port), Some(v4)) = (saved, config.bind_v4.as_mut()) {
            if v4.port() == 0 {
                v4.set_port(port);
            }
        }
        let endpoint = match Endpoint::bind(key.clone(), config).await {
            Ok(e) => e,
            // The saved port is taken: any port will do.
            Err(_) if saved.is_some() => Endpoint::bind(key, self.config.clone()).await?,
            Err(e) => return Err(e.into()),
        };
        if let (Some(path), Some(addr)) = (port_file, endpoint.local_addrs().first()) {
            if let Err(e) = write_port(&path, addr.port()) {
                tracing::warn!("could not save the port in {}: {e}", path.display());
            }
        }
        Ok(endpoint)
    }
}

/// Aborts its task when the last node handle is dropped (or the node is closed).
#[derive(Debug)]
struct TaskGuard(tokio::task::AbortHandle);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps search's neighbours fed: the bootstrap peers, plus the DHT's nodes closest to
/// this one, every 30 s.
fn feed_search(
    search: SearchHandle,
    dht: Option<DhtHandle>,
    bootstrap: Vec<NodeAddr>,
) -> TaskGuard {
    let task = tokio::spawn(async move {
        let me = search.local_id();
        loop {
            let mut peers = bootstrap.clone();
            if let Some(dht) = &dht {
                if let Ok(found) = dht.find_node(kith_overlay::dht::Key::from_node(&me)).await {
                    for a in found {
                        if a.node_id != me && !peers.iter().any(|p| p.node_id == a.node_id) {
                            peers.push(a);
                        }
                    }
                }
            }
            if search.set_neighbors(peers).await.is_err() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        }
    });
    TaskGuard(task.abort_handle())
}

fn write_port(path: &Path, port: u16) -> std::io::Result<()> {
    std::fs::write(path, format!("{port}\n"))
}

/// A running kith node: one identity, one endpoint, and the layers switched on.
#[derive(Clone)]
pub struct Node {
    endpoint: Endpoint,
    key: SecretKey,
    dht: Option<DhtHandle>,
    gossip: Option<Gossip>,
    store: Option<SharedStore>,
    share: Option<Share>,
    search: Option<SearchHandle>,
    mdns: Option<Arc<MdnsDiscovery>>,
    /// Background tasks of the node (search's neighbour feed), stopped with it.
    tasks: Vec<Arc<TaskGuard>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id())
            .field("dht", &self.dht.is_some())
            .field("gossip", &self.gossip.is_some())
            .field("store", &self.store.is_some())
            .field("share", &self.share.is_some())
            .field("search", &self.search.is_some())
            .field("mdns", &self.mdns.is_some())
            .finish()
    }
}

impl Node {
    /// Starts configuring a node.
    pub fn builder() -> NodeBuilder {
        NodeBuilder::default()
    }

    /// This node's identity.
    pub fn id(&self) -> NodeId {
        self.endpoint.node_id()
    }

    /// The node's secret key (the one every layer signs with).
    pub fn secret_key(&self) -> &SecretKey {
        &self.key
    }

    /// How peers reach this node.
    pub fn addr(&self) -> NodeAddr {
        self.endpoint.node_addr()
    }

    /// The QUIC endpoint, for everything the node does not wrap.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The endpoint as a [`Transport`], for layers started by hand.
    pub fn transport(&self) -> Arc<dyn Transport> {
        Arc::new(self.endpoint.clone())
    }

    /// The DHT.
    pub fn dht(&self) -> Result<&DhtHandle, LayerOff> {
        self.dht.as_ref().ok_or(LayerOff("dht"))
    }

    /// Gossip.
    pub fn gossip(&self) -> Result<&Gossip, LayerOff> {
        self.gossip.as_ref().ok_or(LayerOff("gossip"))
    }

    /// The content store.
    pub fn store(&self) -> Result<&SharedStore, LayerOff> {
        self.store.as_ref().ok_or(LayerOff("store"))
    }

    /// File sharing.
    pub fn share(&self) -> Result<&Share, LayerOff> {
        self.share.as_ref().ok_or(LayerOff("share"))
    }

    /// Keyword search.
    pub fn search(&self) -> Result<&SearchHandle, LayerOff> {
        self.search.as_ref().ok_or(LayerOff("search"))
    }

    /// LAN discovery.
    pub fn mdns(&self) -> Result<&MdnsDiscovery, LayerOff> {
        self.mdns.as_deref().ok_or(LayerOff("mdns"))
    }

    /// Connects to a peer (or returns the live connection to it). A bare node id is
    /// resolved through the LAN and the DHT when they are on.
    pub async fn connect(&self, addr: NodeAddr) -> Result<Arc<QuicConnection>, ConnectError> {
        self.endpoint.connect(addr).await
    }

    /// Mounts a protocol on the running node.
    pub fn mount(
        &self,
        protocol: Protocol,
        handler: Arc<dyn ProtocolHandler>,
    ) -> Result<(), MountError> {
        self.endpoint.mount(protocol, handler)
    }

    /// Closes every connection, telling peers, and releases the sockets.
    pub async fn close(&self) {
        for t in &self.tasks {
            t.0.abort();
        }
        if let Some(m) = &self.mdns {
            m.shutdown().await;
        }
        self.endpoint.close().await;
    }
}
