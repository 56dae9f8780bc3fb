//! [`Config`]: every tunable of the DHT core, with safe defaults.

use std::time::Duration;

use super::record::Limits;

/// Configuration of a [`DhtCore`](super::DhtCore). `Config::default()` is what a
/// public node on the internet should use.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Bucket size and replication factor (k, default 20; at most
    /// [`MAX_CLOSER`](super::message::MAX_CLOSER)).
    pub k: usize,
    /// Requests in flight per lookup path (α, default 3).
    pub alpha: usize,
    /// A client-mode node queries and stores but asks others not to add it to their
    /// routing tables (for nodes that are not publicly reachable). Default off.
    pub client_mode: bool,
    /// Number of disjoint lookup paths for disjoint lookups (default 3).
    pub disjoint_paths: usize,
    /// Use disjoint paths for mutable-value and node-address gets (default on).
    pub disjoint_mutable_gets: bool,
    /// Seed of the driver's random choices ([`Dht::spawn`](super::Dht::spawn)); `None`
    /// (the default) draws one from the OS. Tests set it to be reproducible.
    pub seed: Option<u64>,
    /// Use disjoint paths for every lookup (default off).
    pub disjoint_all: bool,
    /// A request without an answer after this long fails (default 5 s).
    pub request_timeout: Duration,
    /// A request without an answer after three smoothed round-trip times (at least
    /// 200 ms, at most this; default 1 s) no longer counts against α and is passed
    /// over, so a slow or dead peer does not hold a lookup back.
    pub stall_timeout: Duration,
    /// A whole query (lookup plus store phase) ends after this long (default 60 s).
    pub query_timeout: Duration,
    /// How long stored records live unless republished (default 2 h).
    pub record_ttl: Duration,
    /// How long provider entries live unless re-announced (default 2 h).
    pub provider_ttl: Duration,
    /// How often a node re-puts the records and provider entries it published
    /// (default 1 h; keep it below the TTLs). `None` disables republishing.
    pub republish_interval: Option<Duration>,
    /// How often stale buckets are refreshed with a random lookup, and the node looks
    /// itself up (default 1 h, as in Kademlia; lookups count as refreshes). `None` disables periodic refresh.
    pub refresh_interval: Option<Duration>,
    /// After the bootstrap self-lookup, refresh every bucket (default on).
    pub refresh_on_join: bool,
    /// Most peers from one IPv4 /24 (IPv6 /48) per bucket (default 2; 0 disables).
    pub max_per_subnet: usize,
    /// Most candidates from one subnet per lookup path (default 2; 0 disables).
    pub lookup_max_per_subnet: usize,
    /// Loopback addresses are exempt from the subnet caps (default on, so many nodes on
    /// one host can form a network).
    pub exempt_loopback: bool,
    /// Size of each bucket's replacement cache (default 8).
    pub replacement_cache: usize,
    /// Consecutive failures that evict a peer without a replacement (default 2).
    pub max_failures: u8,
    /// Record size limits.
    pub limits: Limits,
    /// Most records stored for others (default 16 384).
    pub max_records: usize,
    /// Most content keys with provider entries (default 16 384).
    pub max_provider_keys: usize,
    /// Most providers kept per content key (default 32).
    pub max_providers_per_key: usize,
    /// A get-providers lookup ends once it has this many (default 20).
    pub providers_wanted: usize,
    /// Sustained requests per second accepted from one peer (default 50).
    pub rate_limit_per_sec: u32,
    /// Burst of requests accepted from one peer (default 100).
    pub rate_limit_burst: u32,
    /// Most peers the rate limiter tracks at once (default 4096).
    pub max_tracked_peers: usize,
    /// Most liveness checks of unknown peers in flight (default 16).
    pub max_pending_pings: usize,
    /// After a successful get, store the record at the closest node on the path that
    /// lacked it (default on).
    pub cache_on_get: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            k: 20,
            alpha: 3,
            client_mode: false,
            disjoint_paths: 3,
            disjoint_mutable_gets: true,
            seed: None,
            disjoint_all: false,
            request_timeout: Duration::from_secs(5),
            stall_timeout: Duration::from_secs(1),
            query_timeout: Duration::from_secs(60),
            record_ttl: Duration::from_secs(2 * 3600),
            provider_ttl: Duration::from_secs(2 * 3600),
            republish_interval: Some(Duration::from_secs(3600)),
            refresh_interval: Some(Duration::from_secs(3600)),
            refresh_on_join: true,
            max_per_subnet: 2,
            lookup_max_per_subnet: 2,
            exempt_loopback: true,
            replacement_cache: 8,
            max_failures: 2,
            limits: Limits::default(),
            max_records: 16 * 1024,
            max_provider_keys: 16 * 1024,
            max_providers_per_key: 32,
            providers_wanted: 20,
            rate_limit_per_sec: 50,
            rate_limit_burst: 100,
            max_tracked_peers: 4096,
            max_pending_pings: 16,
            cache_on_get: true,
        }
    }
}

impl Config {
    /// The configuration with every count clamped to a usable range.
    pub(crate) fn sanitized(mut self) -> Self {
        self.k = self.k.clamp(1, super::message::MAX_CLOSER);
        self.alpha = self.alpha.clamp(1, self.k);
        self.disjoint_paths = self.disjoint_paths.clamp(1, 8);
        self.providers_wanted = self
            .providers_wanted
            .clamp(1, super::message::MAX_PROVIDERS);
        self.max_providers_per_key = self.max_providers_per_key.max(1);
        self.max_failures = self.max_failures.max(1);
        self
    }
}
