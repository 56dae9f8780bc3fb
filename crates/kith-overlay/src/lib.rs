//! kith-overlay: structured overlay networking for kith.
//!
//! The [`dht`] module is a Kademlia DHT hardened for the open internet. Its state
//! machine, [`dht::DhtCore`], is sans-IO: the same code runs under the tokio driver
//! ([`dht::Dht::spawn`], over any [`kith_core::net::Transport`]) and in the
//! deterministic simulator `kith-sim`.
//!
//! The unstructured overlay lives beside it: [`gossip`] (HyParView membership and
//! Plumtree broadcast per 32-byte topic, author-signed messages, for chat rooms and game
//! lobbies; sans-IO [`gossip::TopicCore`] plus a tokio driver mounted as `kith/gossip/1`)
//! and [`search`] (Gnutella-style keyword search by TTL flooding or k random walkers over
//! the membership graph; sans-IO [`search::SearchCore`] plus a tokio driver,
//! [`search::Search`], mounted as `kith/search/1`).
//!
//! # How the DHT works
//!
//! * **Key space.** 256-bit XOR metric. A node sits at its [`NodeId`](kith_core::NodeId)
//!   bytes; an immutable value at its BLAKE3 hash; a mutable value at
//!   BLAKE3(public key ‖ salt); a provider entry at the content hash; a node-address
//!   record at the node's own position.
//! * **Routing table.** Bucket *i* holds up to k (20) peers sharing *i* leading bits with
//!   us, plus a replacement cache ordered by RTT. A full bucket keeps its old peers;
//!   when one fails, the lowest-RTT replacement takes its place (a peer is evicted at
//!   once if a replacement waits, else after `max_failures`).
//! * **Joining and refresh.** A node joins from any one bootstrap address with a lookup
//!   of its own id, then refreshes every non-full bucket with a random lookup in it.
//!   After the join it rechecks for thin buckets (backing off from 30 s), and every
//!   `refresh_interval` (1 h) it looks itself up and refreshes buckets no lookup
//!   touched.
//! * **Lookups.** Iterative, α (3) requests in flight per path; a request unanswered
//!   after three smoothed RTTs (at most `stall_timeout`) stops counting against α and
//!   is passed over; when α responses bring nothing closer, all of the k closest are
//!   queried at once. Mutable and node-address gets run `disjoint_paths` (3) paths that
//!   never share a node, and return the highest valid sequence seen.
//! * **Records.** Puts go to the k closest nodes that answered the lookup; the
//!   publisher republishes every `republish_interval`, storers drop records after
//!   `record_ttl`. Gets cache the record at the closest node on the path that lacked it.
//!
//! # Invariants
//!
//! * Only a peer that **answered a request** of ours enters the routing table; a peer
//!   that merely sent us something is pinged first. Client-mode peers never enter it.
//! * No bucket holds more than `max_per_subnet` (2) peers of one IPv4 /24 or IPv6 /48
//!   (the address we observed, not the one claimed); no lookup path holds more than
//!   `lookup_max_per_subnet` candidates of one subnet.
//! * No record is stored or returned to the user without validation: immutable values
//!   match their hash, mutable and node-address records carry a valid Ed25519 signature
//!   over a domain-separated encoding, a lower (or equal but different) sequence never
//!   replaces a higher one, and a compare-and-swap put stores only over the expected
//!   sequence.
//! * Nothing read from the network panics or allocates beyond a bound: frames are capped
//!   at [`dht::message::MAX_MESSAGE_LEN`], lists and values are bounded, each peer is
//!   rate-limited, and the record store has a capacity.
//! * The core owns no clock, socket, task or entropy source.
//!
//! # Running it on a transport
//!
//! [`dht::Dht::spawn`] mounts `kith/dht/1` on any [`kith_core::net::Transport`] and
//! returns a cloneable [`dht::DhtHandle`] with async operations (`bootstrap`,
//! `put_immutable`, `get_mutable`, `announce_provider`, `publish_addr`, …). The handle
//! implements [`dht::Resolve`], the discovery hook that turns a bare `NodeId` into the
//! addresses the node published. See `tests/mem_network.rs` for 24 nodes on the
//! in-memory transport.
//!
//! # Example
//!
//! Two sans-IO nodes, pumped by hand: `b` joins through `a`, stores a value, and `a`
//! finds it.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use kith_core::{NodeAddr, SecretKey};
//! use kith_overlay::dht::{Config, DhtCore, Event, Key, QueryResult, Record, RecordKind, Remote};
//!
//! let id = |n| SecretKey::from_bytes(&[n; 32]).node_id();
//! let mut a = DhtCore::new(NodeAddr::new(id(1)), Config::default(), 1);
//! let mut b = DhtCore::new(NodeAddr::new(id(2)), Config::default(), 2);
//! let now = Instant::now();
//!
//! // Deliver messages between the two until both are quiet.
//! fn pump(now: Instant, a: &mut DhtCore, b: &mut DhtCore) -> Vec<Event> {
//!     fn deliver(now: Instant, x: &mut DhtCore, y: &mut DhtCore) -> bool {
//!         let mut moved = false;
//!         while let Some(t) = x.poll_transmit() {
//!             y.handle_message(now, Remote { id: x.local_id(), addr: None }, t.msg);
//!             moved = true;
//!         }
//!         moved
//!     }
//!     let mut events = Vec::new();
//!     while deliver(now, a, b) | deliver(now, b, a) {}
//!     events.extend(std::iter::from_fn(|| a.poll_event()));
//!     events.extend(std::iter::from_fn(|| b.poll_event()));
//!     events
//! }
//!
//! b.start_bootstrap(now, vec![a.local_addr().clone()]);
//! pump(now, &mut a, &mut b);
//! assert_eq!(a.routing_table().len(), 1);
//!
//! let value = Record::Immutable(bytes::Bytes::from_static(b"hello"));
//! b.start_put(now, value.clone(), None)?;
//! pump(now, &mut a, &mut b);
//!
//! let q = b.start_get(now, Key::for_immutable(b"hello"), RecordKind::Immutable);
//! let events = pump(now, &mut a, &mut b);
//! assert!(events.iter().any(|e| matches!(e,
//!     Event::QueryDone { id, result: QueryResult::Get(Ok(r)), .. } if *id == q && *r == value)));
//! # Ok::<(), kith_overlay::dht::PutError>(())
//! ```
#![deny(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod dht;
pub mod gossip;
pub mod search;
