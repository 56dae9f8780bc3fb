//! Gnutella-style keyword search over the unstructured overlay.
//!
//! Peers announce what they share ([`Item`]: name, size, BLAKE3 content hash, and an
//! optional opaque payload such as a kith-share ticket) to their own [`SearchCore`]; a
//! query (lowercase keywords, each matching a word of the name, or
//! a 64-character hex content hash) travels over the **membership graph** (the gossip
//! active view: feed [`SearchCore::neighbor_up`] / [`SearchCore::neighbor_down`] from
//! [`crate::gossip::Event`]s) in one of two modes:
//!
//! * [`Mode::Flood`]: every node forwards the query to all its neighbours but the one it
//!   came from, until the TTL (default 7 hops, as in Gnutella) runs out. Finds everything within the
//!   radius; costs about (nodes reached × degree) messages.
//! * [`Mode::Walk`]: k random walkers (default 4), each forwarded to one random
//!   neighbour per hop with a TTL (default 64) and stopping at the first node with a
//!   match. For items replicated on a few percent of nodes this finds them at a small
//!   fraction of a flood's messages (see `docs/benchmarks-gossip.md`).
//!
//! Hits go **straight back to the querier** (the query carries its address), not along
//! the query's path. Flooded queries are suppressed as duplicates by (querier, query id)
//! in a bounded, time-limited cache; a node answers a query once however many walkers
//! reach it. Each neighbour's queries are rate-limited by a token bucket (default 20/s,
//! burst 40); excess queries are dropped and counted.
//!
//! The core is sans-IO like [`crate::gossip::TopicCore`]: `query`/`handle_message`/
//! `handle_timeout` in, `poll_transmit`/`poll_event`/`poll_timeout` out. Its messages
//! ([`message`]) are specified in `docs/proto/search.proto` (messages `SearchMessage`,
//! `QueryMsg`, `HitsMsg`, `ItemMsg`) for the protocol name [`PROTOCOL`]. The tokio
//! driver ([`driver`]: [`Search::spawn`] gives a [`SearchHandle`]) runs a core over any
//! [`kith_core::Transport`]; the application feeds it neighbours from whatever
//! membership it has.
//!
//! ```
//! use std::time::Instant;
//! use kith_core::{NodeAddr, SecretKey};
//! use kith_overlay::search::{Config, Event, Item, Mode, SearchCore};
//!
//! let addr = |n| NodeAddr::new(SecretKey::from_bytes(&[n; 32]).node_id());
//! let mut a = SearchCore::new(addr(1), Config::default(), 1);
//! let mut b = SearchCore::new(addr(2), Config::default(), 2);
//! a.neighbor_up(addr(2));
//! b.neighbor_up(addr(1));
//! b.share(Item::new("Holiday Photos.zip", 1 << 20, [7; 32]));
//!
//! let now = Instant::now();
//! let q = a.query(now, &["holiday"], Mode::Flood)?;
//! let t = a.poll_transmit().unwrap();
//! b.handle_message(now, a.local_id(), t.msg);
//! let hit = b.poll_transmit().unwrap();
//! assert_eq!(hit.to.node_id, a.local_id());
//! a.handle_message(now, b.local_id(), hit.msg);
//! assert!(matches!(a.poll_event(), Some(Event::Hits { query, items, .. }) if query == q && items[0].hash == [7; 32]));
//! # Ok::<(), kith_overlay::search::QueryError>(())
//! ```

mod core;
pub mod driver;
pub mod message;

pub use self::core::{Config, Event, QueryError, QueryId, SearchCore, Stats, Transmit};
pub use self::driver::{Hit, QueryResults, Search, SearchError, SearchHandle, SearchStats};
pub use self::message::{Item, MAX_PAYLOAD_LEN, Message, MessageError, Mode, Query};

/// The protocol the [`driver`] mounts: one search message per unidirectional stream.
pub const PROTOCOL: kith_core::net::Protocol =
    kith_core::net::Protocol::from_static("kith/search/1");
