//! kith: peer-to-peer networking libraries for Rust.
//!
//! Every peer is client and server at once and is named by its Ed25519 public key
//! ([`NodeId`]). A [`Node`] owns a QUIC endpoint (from `kith-transport`) and the
//! protocols mounted on it; the layers underneath are usable on their own:
//!
//! | crate | what it does |
//! |---|---|
//! | `kith-core` | identity, addresses, framing, the transport traits |
//! | `kith-transport` | QUIC endpoint, mutual TLS bound to node ids, protocol routing |
//! | `kith-overlay` | Kademlia DHT, membership and gossip |
//! | `kith-store` | BLAKE3 content-addressed store with verified streaming |
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

use std::path::PathBuf;
use std::sync::Arc;

pub use kith_core::net::{
    BoxFuture, BoxRecvStream, BoxSendStream, Conn, ConnectError, Connection, ConnectionError,
    DatagramError, MountError, Protocol, ProtocolHandler, RecvStream, SendStream, StreamError,
    Transport,
};
pub use kith_core::{NodeAddr, NodeId, RelayHint, SecretKey, frame};
pub use kith_transport::stun::NatKind;
pub use kith_transport::{
    BindError, ConnectionStats, Endpoint, EndpointConfig, HolePunch, HolePunchConfig,
    IdentityError, Limits, PathKind, QuicConnection, ZeroRtt,
};

/// The layers, for code that wants them by name.
pub mod layers {
    pub use kith_core as core;
    pub use kith_transport as transport;
}

/// Error starting a [`Node`].
#[derive(Debug, thiserror::Error)]
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
}

/// Configures and starts a [`Node`].
#[derive(Default)]
pub struct NodeBuilder {
    key: Option<SecretKey>,
    key_file: Option<PathBuf>,
    config: EndpointConfig,
    protocols: Vec<(Protocol, Arc<dyn ProtocolHandler>)>,
}

impl std::fmt::Debug for NodeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeBuilder")
            .field("key_file", &self.key_file)
            .field("config", &self.config)
            .field(
                "protocols",
                &self.protocols.iter().map(|p| &p.0).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl NodeBuilder {
    /// Uses this identity (default: a fresh random one, unless [`key_file`](Self::key_file)).
    pub fn secret_key(mut self, key: SecretKey) -> Self {
        self.key = Some(key);
        self
    }

    /// Loads the identity from this file, creating it (mode 0600) on first run.
    pub fn key_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.key_file = Some(path.into());
        self
    }

    /// Uses this endpoint configuration.
    pub fn config(mut self, config: EndpointConfig) -> Self {
        self.config = config;
        self
    }

    /// Binds IPv4 loopback only on an ephemeral port (tests, local demos).
    pub fn loopback(mut self) -> Self {
        let limits = self.config.limits.clone();
        self.config = EndpointConfig {
            limits,
            ..EndpointConfig::loopback()
        };
        self
    }

    /// Mounts `handler` for `protocol`.
    pub fn protocol(mut self, protocol: Protocol, handler: Arc<dyn ProtocolHandler>) -> Self {
        self.protocols.push((protocol, handler));
        self
    }

    /// Binds the endpoint, mounts the protocols and starts serving.
    pub async fn spawn(self) -> Result<Node, NodeError> {
        let key = match (self.key, self.key_file) {
            (Some(k), _) => k,
            (None, Some(path)) => kith_transport::load_or_create_secret_key(&path)?,
            (None, None) => SecretKey::generate(&mut rand::rngs::OsRng),
        };
        let endpoint = Endpoint::bind(key, self.config).await?;
        for (p, h) in self.protocols {
            endpoint.mount(p, h)?;
        }
        tracing::info!(id = %endpoint.node_id(), addrs = ?endpoint.local_addrs(), "node started");
        Ok(Node { endpoint })
    }
}

/// A running kith node: an endpoint and the protocols mounted on it.
#[derive(Debug, Clone)]
pub struct Node {
    endpoint: Endpoint,
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

    /// How peers reach this node.
    pub fn addr(&self) -> NodeAddr {
        self.endpoint.node_addr()
    }

    /// The QUIC endpoint, for everything the node does not wrap.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Connects to a peer (or returns the live connection to it).
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
        self.endpoint.close().await;
    }
}
