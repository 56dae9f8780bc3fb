//! kith-update: software update channels delivered through the swarm.
//!
//! A channel is named by its root of trust ([`ChannelId`]): `n` root keys with a
//! threshold, which name the release keys (with their own threshold) and an announce key.
//! A release is a folder published as a kith-share collection with signed metadata that
//! names every file with its size and BLAKE3 hash, a version that only goes up and an
//! expiry. Followers fetch it from every peer that has it, check every byte and every
//! signature, install it atomically (a new directory, then one symlink switch), keep the
//! previous release for rollback, optionally run a health check, and then serve it.
//! The roles and the attacks they answer follow The Update Framework; see
//! `docs/updates.md`.
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use kith_core::{mem::MemNetwork, NodeAddr, SecretKey, Transport};
//! use kith_overlay::dht::Dht;
//! use kith_share::{Share, ShareConfig};
//! use kith_store::{MemStore, StoreConfig};
//! use kith_update::{ChannelKeys, Installer, Outcome, UpdateConfig, Updates};
//! use rand::SeedableRng;
//!
//! async fn node(net: &MemNetwork, seed: u8, boot: Option<NodeAddr>)
//!     -> Result<(Updates, NodeAddr), Box<dyn std::error::Error>> {
//!     let key = SecretKey::from_bytes(&[seed; 32]);
//!     let t: Arc<dyn Transport> = Arc::new(net.node(key.node_id()));
//!     let dht = Dht::spawn(t.clone(), key, Default::default(), boot.iter().cloned().collect())?;
//!     if boot.is_some() {
//!         dht.bootstrap().await?;
//!     }
//!     let store = Arc::new(MemStore::new(StoreConfig::default()));
//!     let share = Share::spawn(t.clone(), store, Some(dht.clone()), ShareConfig::default())?;
//!     Ok((Updates::new(share, dht, None, UpdateConfig::default()), t.local_addr()))
//! }
//! let net = MemNetwork::new();
//! let (publisher, first) = node(&net, 1, None).await?;
//! let (_other, _) = node(&net, 2, Some(first.clone())).await?;
//! let (follower, _) = node(&net, 3, Some(first)).await?;
//!
//! // A channel with 3 root keys (2 must sign) and 2 release keys (1 must sign).
//! let mut rng = rand::rngs::StdRng::seed_from_u64(7);
//! let keys = ChannelKeys::generate(&mut rng, (3, 2), (2, 1))?;
//! let release = tempfile::tempdir()?;
//! std::fs::write(release.path().join("app.txt"), "version 1")?;
//! publisher.publish(&keys, release.path(), 1, "1.0.0").await?;
//!
//! // The follower checks every signature and byte, then installs atomically.
//! let target = tempfile::tempdir()?;
//! let installer = Installer::new(target.path())?;
//! let outcome = follower.update_once(keys.channel(), &installer, None, None).await?;
//! assert_eq!(outcome, Outcome::Installed { version: 1, label: "1.0.0".into() });
//! assert_eq!(std::fs::read_to_string(installer.current_path().join("app.txt"))?, "version 1");
//! # Ok(()) }
//! ```
#![deny(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod channel;
pub mod install;
pub mod keys;
pub mod metadata;

pub use channel::{
    FollowEvent, Following, HealthCheck, Outcome, PublishError, Published, UpdateConfig,
    UpdateError, Updates,
};
pub use install::{InstallError, Installer};
pub use keys::{ChannelKeys, KeysError};
pub use metadata::{Bundle, ChannelId, MetadataError};
