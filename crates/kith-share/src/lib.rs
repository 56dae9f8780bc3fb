//! kith-share: file sharing between peers.
#![deny(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod layout;
pub mod ranges;
pub mod scheduler;

pub use kith_store::GROUP_SIZE;
pub use layout::Layout;
pub use ranges::{RangeSet, RangeSetError};
