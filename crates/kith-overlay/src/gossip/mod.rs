//! Topic gossip: HyParView membership and Plumtree broadcast, per 32-byte topic.
//!
//! A group of peers that all hear every message fast, without a server: chat rooms,
//! game lobbies, collaboration. [`TopicCore`] is the sans-IO state machine of one topic;
//! [`driver`] runs it over any [`kith_core::net::Transport`] (protocol
//! [`PROTOCOL`] = `kith/gossip/1`); `kith-sim` runs thousands of them.
//!
//! # How it works
//!
//! * **Membership (HyParView).** Each member keeps a small symmetric *active view*
//!   (default 5 neighbours; broadcasts travel only over it) and a larger *passive view*
//!   (default 30 backup peers). A newcomer sends `Join` to a bootstrap peer, which admits
//!   it and starts `ForwardJoin` random walks (6 hops; the joiner enters passive views at
//!   hop 3 and an active view at the end). Every `shuffle_interval` a member sends a
//!   sample of its views on a 4-hop walk and gets a sample back, which keeps passive
//!   views fresh and random. When a neighbour fails (the driver reports it with
//!   [`TopicCore::peer_failed`]) or disconnects, the member asks passive peers to become
//!   neighbours (high priority, which a full peer must accept, when it has fewer than
//!   half its target left) until the active view is full. Requests are numbered and only
//!   the answer to the open one counts, so neighbour links stay two-sided.
//! * **Broadcast (Plumtree).** A broadcast is pushed *eagerly* (full payload) to eager
//!   neighbours and announced *lazily* (`IHave`, batched) to the others. A duplicate
//!   makes the receiver `Prune` the link (it turns lazy on both sides), so eager links
//!   converge to a spanning tree; a message announced but not received within
//!   `graft_timeout_1` is fetched with `Graft`, which also makes that link eager again,
//!   repairing the tree. A lazy peer that announces a message `optimization_threshold`
//!   hops earlier than the eager copy came swaps places with the eager parent. Message
//!   ids are remembered in a bounded, time-limited cache for duplicate suppression;
//!   recent payloads are kept (bounded) to answer grafts, and are announced to every new
//!   neighbour, so a member that was briefly without neighbours (or just joined) gets
//!   the broadcasts of the last `history_ttl` it missed. [`Scope::Neighbors`] sends a
//!   broadcast to the direct neighbours only; they do not forward it.
//!
//! # Authorship
//!
//! Every broadcast is **signed by its author**: the author's Ed25519 key signs a
//! domain-separated encoding ([`message::SIGNING_DOMAIN`], the topic, the author id, a
//! nonce, the scope and the payload), and every receiver verifies it with
//! [`NodeId::verify`](kith_core::NodeId::verify) before delivering or forwarding.
//! [`Event::Received`] carries both the verified `author` (what a chat app shows) and
//! the authenticated neighbour `from` that forwarded it. The [`MessageId`] is the BLAKE3
//! hash of the signed bytes, computed by each receiver, so ids cannot be forged to
//! suppress someone else's message. The hop count is not signed.
//!
//! # Driving the core
//!
//! [`TopicCore`] never does I/O, reads no clock and has no entropy but its seed:
//!
//! * inputs: [`TopicCore::handle_message`] (with the authenticated sender),
//!   [`TopicCore::handle_timeout`] once [`TopicCore::poll_timeout`] has passed,
//!   [`TopicCore::peer_failed`] when a peer cannot be reached, and the commands
//!   [`TopicCore::join`], [`TopicCore::broadcast`], [`TopicCore::leave`];
//! * outputs: [`TopicCore::poll_transmit`], [`TopicCore::poll_event`], then re-read
//!   [`TopicCore::poll_timeout`].
//!
//! # Limits
//!
//! A broadcast over [`Config::max_message_size`] (default 64 KiB) is refused with
//! [`BroadcastError::TooLarge`]; frames are capped at that size plus the envelope before
//! any allocation; every list on the wire is bounded ([`message`]); the driver's send
//! queues are bounded and `broadcast().await` waits when they are full
//! ([`driver::TopicSender::try_broadcast`] fails instead).
//!
//! # Example
//!
//! Three sans-IO cores pumped by hand: `b` and `c` join through `a`; `c`'s broadcast
//! reaches both others, signed by `c`.
//!
//! ```
//! use std::time::Instant;
//! use bytes::Bytes;
//! use kith_core::{NodeAddr, SecretKey};
//! use kith_overlay::gossip::{Config, Event, Scope, TopicCore, TopicId};
//!
//! let topic = TopicId::from_name("lobby");
//! let mut nodes: Vec<TopicCore> = (1..=3u8)
//!     .map(|n| {
//!         let key = SecretKey::from_bytes(&[n; 32]);
//!         let addr = NodeAddr::new(key.node_id());
//!         TopicCore::new(topic, key, addr, Config::default(), u64::from(n))
//!     })
//!     .collect();
//! let now = Instant::now();
//!
//! // Deliver messages until every core is quiet.
//! fn pump(now: Instant, nodes: &mut [TopicCore]) {
//!     loop {
//!         let mut out = Vec::new();
//!         for n in nodes.iter_mut() {
//!             while let Some(t) = n.poll_transmit() {
//!                 out.push((n.local_id(), t));
//!             }
//!         }
//!         if out.is_empty() {
//!             return;
//!         }
//!         for (from, t) in out {
//!             if let Some(n) = nodes.iter_mut().find(|n| n.local_id() == t.to.node_id) {
//!                 n.handle_message(now, from, t.msg);
//!             }
//!         }
//!     }
//! }
//!
//! let a = nodes[0].local_addr().clone();
//! nodes[1].join(now, [a.clone()]);
//! nodes[2].join(now, [a]);
//! pump(now, &mut nodes);
//!
//! let author = nodes[2].local_id();
//! nodes[2].broadcast(now, Bytes::from_static(b"hello"), Scope::Swarm)?;
//! pump(now, &mut nodes);
//! for n in &mut nodes[..2] {
//!     let got: Vec<_> = std::iter::from_fn(|| n.poll_event())
//!         .filter_map(|e| match e {
//!             Event::Received { author, payload, .. } => Some((author, payload)),
//!             _ => None,
//!         })
//!         .collect();
//!     assert_eq!(got, vec![(author, Bytes::from_static(b"hello"))]);
//! }
//! # Ok::<(), kith_overlay::gossip::BroadcastError>(())
//! ```

pub(crate) mod cache;
mod config;
mod core;
pub mod driver;
pub mod message;

pub use self::config::Config;
pub use self::core::{BroadcastError, Event, Stats, TopicCore, Transmit};
pub use self::message::{
    Body, Gossip, IHaveEntry, Message, MessageError, MessageId, Scope, TopicId,
};

/// The protocol name gossip is mounted under on a transport.
pub const PROTOCOL: kith_core::net::Protocol =
    kith_core::net::Protocol::from_static("kith/gossip/1");
