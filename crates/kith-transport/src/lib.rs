//! kith-transport: QUIC between peers named by Ed25519 keys.
//!
//! An [`Endpoint`] binds UDP sockets (IPv4 and, where available, IPv6), authenticates
//! every connection with mutual TLS 1.3 bound to [`NodeId`](kith_core::NodeId)s (raw
//! public keys, RFC 7250), keeps one connection per peer pair, and routes each
//! incoming stream or datagram to the [`ProtocolHandler`](kith_core::net::ProtocolHandler)
//! mounted for the protocol it names. It implements kith-core's
//! [`Transport`](kith_core::Transport) trait, so the overlay, store and share layers use it
//! without naming quinn.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> anyhow::Result<()> {
//! use std::sync::Arc;
//! use kith_core::net::{BoxFuture, BoxRecvStream, BoxSendStream, Conn, Protocol, ProtocolHandler};
//! use kith_core::{SecretKey, net::Connection};
//! use kith_transport::{Endpoint, EndpointConfig};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! const ECHO: Protocol = Protocol::from_static("example/echo/1");
//! struct Echo;
//! impl ProtocolHandler for Echo {
//!     fn accept_bi(&self, _c: Conn, mut send: BoxSendStream, mut recv: BoxRecvStream) -> BoxFuture<'static, ()> {
//!         Box::pin(async move {
//!             let _ = tokio::io::copy(&mut recv, &mut send).await;
//!             let _ = send.finish();
//!         })
//!     }
//! }
//!
//! let rng = &mut rand::rngs::OsRng;
//! let server = Endpoint::bind(SecretKey::generate(rng), EndpointConfig::loopback()).await?;
//! server.mount(ECHO, Arc::new(Echo))?;
//! let client = Endpoint::bind(SecretKey::generate(rng), EndpointConfig::loopback()).await?;
//!
//! let conn = client.connect(server.node_addr()).await?;
//! let (mut send, mut recv) = conn.open_bi(&ECHO).await?;
//! send.write_all(b"hello").await?;
//! send.finish()?;
//! let mut reply = Vec::new();
//! recv.read_to_end(&mut reply).await?;
//! assert_eq!(reply, b"hello");
//! client.close().await;
//! server.close().await;
//! # Ok(()) }
//! ```
//!
//! # Connection rules
//!
//! * A dial to a node id fails with `ConnectError::Authentication` unless the peer proves
//!   that key; a client that proves no key is refused during the handshake.
//! * Peers that dial each other at the same moment end with one connection: the one
//!   dialed by the smaller node id. The larger side's dial waits for the acceptor's
//!   hello (a control stream that also reports the address the acceptor observes) and
//!   resolves to the surviving connection.
//! * Limits ([`Limits`]) bound connections, streams, stream headers, datagram buffers and
//!   the handshake rate; every refusal is a typed error on the other side.
#![deny(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod config;
mod conn;
pub mod discovery;
mod endpoint;
mod identity;
pub mod mdns;
mod observe;
mod paths;
pub mod portmap;
mod punch;
mod punch_state;
pub mod relay;
pub mod stun;
mod sync;
mod tls;

pub use config::{EndpointConfig, HolePunchConfig, Limits};
pub use conn::{ConnectionStats, QuicConnection, ZeroRtt};
pub use endpoint::{BindError, Endpoint};
pub use identity::{IdentityError, load_or_create_secret_key};
pub use paths::PathKind;
pub use punch_state::HolePunch;
pub use tls::KITH_ALPN;

/// quinn configurations identical to the ones an [`Endpoint`] uses (same TLS, same
/// transport parameters), so a benchmark can compare kith with raw quinn configured
/// alike. Not part of the stable API.
#[doc(hidden)]
pub fn raw_quinn_configs(
    key: &kith_core::SecretKey,
    config: &EndpointConfig,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), BindError> {
    endpoint::quinn_configs(key, config, KITH_ALPN)
}

/// The TLS server name a raw quinn client must use to reach `id`. Not part of the
/// stable API.
#[doc(hidden)]
pub fn raw_server_name(id: &kith_core::NodeId) -> String {
    tls::server_name(id)
}

/// Entry points for the fuzz targets (`fuzz/`): the decoders that are not public API.
#[doc(hidden)]
pub mod fuzzing {
    /// Parses and verifies a path probe; never panics.
    pub fn probe(data: &[u8]) {
        if let Some(p) = crate::paths::parse_probe(data) {
            let _ = crate::paths::verify_probe(data, &[0u8; 32]);
            let _ = p;
        }
    }

    /// Decodes NAT-PMP and PCP replies (port mapping); never panics.
    pub fn portmap_pcp(data: &[u8]) {
        use crate::portmap::wire;
        let _ = wire::decode_natpmp_external(data);
        let _ = wire::decode_natpmp_map(data, 4000);
        let _ = wire::decode_pcp_map(data, &[7; 12], 4000);
    }

    /// Parses UPnP answers (SSDP reply, HTTP response, device description); never panics.
    pub fn portmap_upnp(data: &[u8]) {
        crate::portmap::fuzz_upnp(data);
    }

    /// Parses a path-candidate message; never panics.
    pub fn paths_message(data: &[u8]) {
        let _ = crate::punch_state::parse_paths(data);
    }
}
