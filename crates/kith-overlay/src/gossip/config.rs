//! [`Config`]: every tunable of a topic's membership and broadcast, with safe defaults.

use std::time::Duration;

use super::message::{MAX_PAYLOAD_LEN, MAX_SHUFFLE_NODES, MAX_WALK_TTL};

/// Configuration of a [`TopicCore`](super::TopicCore) (and of the driver's queues).
/// `Config::default()` suits a chat room or a game lobby on the internet.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Largest payload [`broadcast`](super::TopicCore::broadcast) accepts (default
    /// 64 KiB, at most [`MAX_PAYLOAD_LEN`]). Larger payloads are refused with
    /// [`BroadcastError::TooLarge`](super::BroadcastError::TooLarge); received broadcasts
    /// over it are dropped and counted.
    pub max_message_size: usize,
    /// Target size of the active view: the neighbours broadcasts travel over (default 5).
    pub active_view: usize,
    /// Size of the passive view: backup peers that replace failed neighbours (default 30).
    pub passive_view: usize,
    /// Length of the forward-join random walk (ARWL, default 6).
    pub active_walk: u8,
    /// Hop of the forward-join walk at which the joiner enters passive views (PRWL,
    /// default 3).
    pub passive_walk: u8,
    /// Period of the view shuffle (default 30 s, jittered by up to 50 %).
    pub shuffle_interval: Duration,
    /// Active-view peers in a shuffle sample (default 3).
    pub shuffle_active: usize,
    /// Passive-view peers in a shuffle sample (default 4).
    pub shuffle_passive: usize,
    /// Length of the shuffle random walk (default 4).
    pub shuffle_walk: u8,
    /// While the active view is below target, ask a passive peer to become a neighbour
    /// this often (default 500 ms).
    pub repair_interval: Duration,
    /// A neighbour or join request without an answer after this long fails (default 5 s).
    pub request_timeout: Duration,
    /// Wait this long after an `IHave` for the eager copy before grafting (default 500 ms).
    pub graft_timeout_1: Duration,
    /// Wait this long after a graft before grafting the next announcer (default 250 ms).
    pub graft_timeout_2: Duration,
    /// `IHave` announcements are batched for this long (default 50 ms).
    pub lazy_push_delay: Duration,
    /// Tree optimisation: when a lazy peer announces a message at least this many hops
    /// closer to its author than the eager copy came, swap the two links (default 7).
    pub optimization_threshold: u32,
    /// How many message ids are remembered for duplicate suppression (default 16 384).
    pub dedup_capacity: usize,
    /// How long message ids are remembered (default 5 min).
    pub dedup_ttl: Duration,
    /// How many recent payloads are kept to answer grafts (default 512).
    pub history_capacity: usize,
    /// How long payloads are kept to answer grafts (default 30 s).
    pub history_ttl: Duration,
    /// Driver: frames queued per peer before the peer counts as too slow and is dropped
    /// from the active view (default 256).
    pub peer_queue: usize,
    /// Driver: broadcasts queued between the application and the driver task; when full,
    /// `broadcast().await` waits and `try_broadcast` fails (default 64).
    pub command_queue: usize,
    /// Driver: events queued for the application; when full the driver waits, which
    /// pauses reading from peers (default 1024).
    pub event_queue: usize,
    /// Driver: seed of every random choice (view sampling, shuffles, message nonces);
    /// `None` (the default) draws one from the OS. Tests set it to be reproducible.
    pub seed: Option<u64>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_message_size: 64 * 1024,
            active_view: 5,
            passive_view: 30,
            active_walk: 6,
            passive_walk: 3,
            shuffle_interval: Duration::from_secs(30),
            shuffle_active: 3,
            shuffle_passive: 4,
            shuffle_walk: 4,
            repair_interval: Duration::from_millis(500),
            request_timeout: Duration::from_secs(5),
            graft_timeout_1: Duration::from_millis(500),
            graft_timeout_2: Duration::from_millis(250),
            lazy_push_delay: Duration::from_millis(50),
            optimization_threshold: 7,
            dedup_capacity: 16 * 1024,
            dedup_ttl: Duration::from_secs(300),
            history_capacity: 512,
            history_ttl: Duration::from_secs(30),
            peer_queue: 256,
            command_queue: 64,
            event_queue: 1024,
            seed: None,
        }
    }
}

impl Config {
    /// The configuration with every value clamped to a usable range.
    pub(crate) fn sanitized(mut self) -> Self {
        self.max_message_size = self.max_message_size.min(MAX_PAYLOAD_LEN);
        self.active_view = self.active_view.clamp(1, 64);
        self.passive_view = self.passive_view.clamp(1, 1024);
        self.active_walk = self.active_walk.min(MAX_WALK_TTL);
        self.passive_walk = self.passive_walk.min(self.active_walk);
        self.shuffle_walk = self.shuffle_walk.min(MAX_WALK_TTL);
        self.shuffle_active = self.shuffle_active.min(MAX_SHUFFLE_NODES / 2);
        self.shuffle_passive = self.shuffle_passive.min(MAX_SHUFFLE_NODES / 2 - 1);
        self.shuffle_interval = self.shuffle_interval.max(Duration::from_millis(10));
        self.repair_interval = self.repair_interval.max(Duration::from_millis(1));
        self.dedup_capacity = self.dedup_capacity.max(16);
        self.peer_queue = self.peer_queue.max(1);
        self.command_queue = self.command_queue.max(1);
        self.event_queue = self.event_queue.max(1);
        self
    }
}
