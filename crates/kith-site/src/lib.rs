//! kith-site: web sites from peers.
//!
//! A site is a folder published as a kith-share collection under a signed name: the
//! name is an Ed25519 public key, and a DHT mutable record (sequence number, collection
//! root, a few provider hints) says which collection is its current version. Nothing
//! needs DNS or a central server.
//!
//! * [`Sites`] publishes ([`Sites::publish`]), resolves, opens and pins sites. A node
//!   that opens a site follows it: new versions arrive on a gossip topic per site within
//!   moments of publishing (and from the DHT record, re-read every minute, if a push is
//!   missed). A pinned site is fetched whole and served, so it stays up while its author
//!   is offline.
//! * [`Gateway`] serves sites to a browser on this machine: each site is its own origin,
//!   `http://<name>.localhost:<port>/`, and bytes are streamed as they are verified.
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use kith_core::{mem::MemNetwork, NodeAddr, SecretKey, Transport};
//! use kith_overlay::{dht::Dht, gossip::driver::Gossip};
//! use kith_share::{Share, ShareConfig};
//! use kith_site::{Lookup, Sites, SitesConfig};
//! use kith_store::{MemStore, StoreConfig};
//!
//! // A node with a DHT, gossip and a share service on an in-memory network.
//! async fn node(net: &MemNetwork, seed: u8, boot: Option<NodeAddr>)
//!     -> Result<(Sites, NodeAddr), Box<dyn std::error::Error>> {
//!     let key = SecretKey::from_bytes(&[seed; 32]);
//!     let t: Arc<dyn Transport> = Arc::new(net.node(key.node_id()));
//!     let dht = Dht::spawn(t.clone(), key.clone(), Default::default(), boot.iter().cloned().collect())?;
//!     if boot.is_some() {
//!         dht.bootstrap().await?;
//!     }
//!     let gossip = Gossip::spawn(t.clone(), key, Default::default())?;
//!     let store = Arc::new(MemStore::new(StoreConfig::default()));
//!     let share = Share::spawn(t.clone(), store, Some(dht.clone()), ShareConfig::default())?;
//!     Ok((Sites::new(share, dht, Some(gossip), SitesConfig::default()), t.local_addr()))
//! }
//! let net = MemNetwork::new();
//! let (alice, alice_addr) = node(&net, 1, None).await?;
//! let (_carol, _) = node(&net, 2, Some(alice_addr.clone())).await?;
//! let (bob, _) = node(&net, 3, Some(alice_addr)).await?;
//!
//! // Alice publishes a folder under her site key; the name is the key's public half.
//! let dir = tempfile::tempdir()?;
//! std::fs::write(dir.path().join("index.html"), "<h1>hello</h1>")?;
//! let site_key = SecretKey::from_bytes(&[9; 32]);
//! let published = alice.publish(&site_key, dir.path()).await?;
//!
//! // Bob opens the site by its name alone: the DHT resolves it, share fetches it.
//! let site = bob.open(published.record.name).await?;
//! assert!(matches!(site.lookup("index.html"), Lookup::File(..)));
//! site.wait_complete().await?;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod gateway;
pub mod record;
mod sites;

pub use gateway::{Gateway, GatewayConfig, GatewayError};
pub use record::{SiteName, SiteNameError, SiteRecord, SiteRecordError};
pub use sites::{
    Lookup, OpenError, PublishError, Published, SiteEvent, Sites, SitesConfig, Version,
};
