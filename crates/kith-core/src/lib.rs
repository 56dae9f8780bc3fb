//! kith-core: the base types every kith layer shares.
//!
//! * [`SecretKey`] / [`NodeId`]: Ed25519 identity; a peer *is* its public key.
//! * [`NodeAddr`]: a node id plus direct addresses and relay hints.
//! * [`frame`]: length-delimited prost framing with a hard cap checked before allocation.
//! * [`net`]: the traits higher layers use to dial, open streams and send datagrams
//!   without naming a QUIC library; `mem` (feature `mem`) implements them in memory.
//!
//! This crate has no sockets, no clock and no async runtime.
//!
//! ```
//! use kith_core::{NodeId, SecretKey};
//! use rand::SeedableRng;
//!
//! let key = SecretKey::generate(&mut rand::rngs::StdRng::seed_from_u64(7));
//! let id: NodeId = key.node_id().to_string().parse()?;
//! let sig = key.sign(b"hello");
//! assert!(id.verify(b"hello", &sig).is_ok());
//! # Ok::<(), kith_core::NodeIdError>(())
//! ```
#![deny(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod addr;
pub mod frame;
mod id;
#[cfg(feature = "mem")]
pub mod mem;
pub mod net;
pub mod scan;

pub use addr::{NodeAddr, NodeAddrError, RelayHint};
pub use id::{NODE_ID_TEXT_LEN, NodeId, NodeIdError, SecretKey, Signature, SignatureError};
pub use net::Transport;
