//! A hardened Kademlia DHT: the sans-IO [`DhtCore`], its wire [`message`]s, and the
//! tokio [`driver`] that runs it over a [`kith_core::net::Transport`].
//!
//! # Driving the core
//!
//! [`DhtCore`] never does I/O. Its driver (the tokio [`driver`], or `kith-sim`) loops:
//!
//! * feed inputs: [`DhtCore::handle_message`] for every message received (with the
//!   authenticated sender), [`DhtCore::handle_timeout`] when the instant returned by
//!   [`DhtCore::poll_timeout`] has passed, [`DhtCore::request_failed`] when a request
//!   could not be delivered, and commands (`start_*`) that return a [`QueryId`];
//! * drain outputs: [`DhtCore::poll_transmit`] (messages to send; a response goes back
//!   to the requester on the stream the request came on), [`DhtCore::poll_event`]
//!   (finished queries), then re-read [`DhtCore::poll_timeout`].
//!
//! Time is always passed in; randomness comes from the seed given to [`DhtCore::new`].

mod config;
mod core;
pub mod driver;
pub mod key;
pub mod message;
pub mod record;
pub mod routing;

pub use self::config::Config;
pub use self::core::{
    DhtCore, Event, GetError, NodeStats, PutError, QueryId, QueryResult, QueryStats, Remote,
    Transmit,
};

pub use self::driver::{Dht, DhtError, DhtHandle, Resolve};
pub use self::key::{Distance, Key, Subnet};
pub use self::message::{Message, MessageError};
pub use self::record::{Limits, MutableRecord, Record, RecordError, RecordKind, SignedNodeAddr};

/// The protocol name the DHT is mounted under on a transport.
pub const PROTOCOL: kith_core::net::Protocol = kith_core::net::Protocol::from_static("kith/dht/1");
