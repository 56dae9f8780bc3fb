//! kith-share: file sharing between peers — tickets, provider discovery, and a
//! multi-source swarm download that verifies every 16 KiB chunk group before it is
//! written.
//!
//! * [`Share`] is the service a node runs: [`Share::add_dir`] / [`Share::add_file`]
//!   import and serve content and return a [`Ticket`]; [`Share::download`] fetches what a
//!   ticket names from every provider it can find, verifying as it goes, and serves what
//!   it has verified while it downloads.
//! * [`scheduler::Scheduler`] is the sans-IO core that decides what to ask whom: rarest
//!   first, requests sized to each peer's bandwidth-delay product, stall timeouts, endgame,
//!   a deadline mode for streaming readers, bans for bad data. `kith-sim` runs it at
//!   thousands of nodes.
//! * [`wire`] is the `kith/share/1` protocol (`docs/share.md`, `docs/proto/share.proto`).
//!
//! The crate reaches the network only through kith-core's [`Transport`] trait, so it runs
//! over QUIC (kith-transport) or the in-memory transport used in tests.
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use kith_core::{mem::MemNetwork, SecretKey, Transport};
//! use kith_share::{DownloadOptions, Share, ShareConfig};
//! use kith_store::{MemStore, Store, StoreConfig};
//!
//! let net = MemNetwork::new();
//! let node = |seed: u8| -> Result<Share, kith_share::ShareError> {
//!     let transport: Arc<dyn Transport> = Arc::new(net.node(SecretKey::from_bytes(&[seed; 32]).node_id()));
//!     let store: kith_share::SharedStore = Arc::new(MemStore::new(StoreConfig::default()));
//!     Share::spawn(transport, store, None, ShareConfig::default())
//! };
//! let (alice, bob) = (node(1)?, node(2)?);
//!
//! // Alice shares 1 MiB; the ticket is one string she can send to Bob.
//! let data = vec![7u8; 1 << 20];
//! let ticket = alice.add_bytes(data.clone().into()).await?.to_string();
//!
//! // Bob fetches it: every chunk group is verified against the hash before it is stored.
//! let stats = bob.download(&ticket.parse()?, DownloadOptions::default()).finish().await?;
//! assert_eq!(stats.fetched_bytes, 1 << 20);
//! assert_eq!(bob.store().read_range(stats.root, 0..(1 << 20))?, data);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod bridge;
pub mod download;
pub mod layout;
pub mod ranges;
pub mod scheduler;
mod service;
mod superseed;
pub mod ticket;
pub mod wire;

use std::sync::Arc;

pub use download::{
    Download, DownloadError, DownloadEvent, DownloadOptions, DownloadStats, ModeHandle, Progress,
    ProviderFailure,
};
pub use kith_core::Transport;
pub use kith_store::GROUP_SIZE;
pub use layout::Layout;
pub use ranges::{RangeSet, RangeSetError};
pub use scheduler::{Mode, SchedulerConfig};
pub use service::{ProviderLimits, ServiceStats, Share, ShareConfig, ShareError, tag_name};
pub use ticket::{Ticket, TicketError};

/// The protocol name: `kith/share/1`.
pub const PROTOCOL: kith_core::net::Protocol =
    kith_core::net::Protocol::from_static("kith/share/1");

/// A store shared between the service, its downloads and the application.
pub type SharedStore = Arc<dyn kith_store::Store + Send + Sync>;
