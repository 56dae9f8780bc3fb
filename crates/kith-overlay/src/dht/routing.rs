//! The Kademlia routing table: k-buckets by common prefix length, a replacement cache
//! per bucket, RTT-aware replacement and an IP diversity cap per bucket.

use std::time::{Duration, Instant};

use kith_core::{NodeAddr, NodeId};

use super::key::{Distance, Key, Subnet};

/// Appends the entries of `entries` closest to `target`, at most `n - out.len()` of
/// them, sorted by distance among themselves.
fn take<'a>(
    entries: impl Iterator<Item = &'a Entry>,
    target: &Key,
    n: usize,
    out: &mut Vec<(Distance, &'a Entry)>,
) {
    let start = out.len();
    let need = n.saturating_sub(start);
    out.extend(entries.map(|e| (e.key().distance(target), e)));
    let group = &mut out[start..];
    if need > 0 && group.len() > need {
        group.select_nth_unstable_by_key(need - 1, |a| a.0);
        out.truncate(start + need);
    }
    out[start..].sort_unstable_by_key(|a| a.0);
}

/// Spare capacity reserved when collecting the closest peers.
const KEEP_SLACK: usize = 4;

/// One peer in the routing table.
#[derive(Debug, Clone)]
pub struct Entry {
    /// How to reach the peer (as it last advertised itself).
    pub addr: NodeAddr,
    /// The subnet of the address we observed it at (`None`: exempt from diversity caps).
    pub subnet: Option<Subnet>,
    /// Smoothed round-trip time.
    pub rtt: Duration,
    /// When it last answered.
    pub last_seen: Instant,
    /// Consecutive requests it failed to answer.
    pub failures: u8,
}

impl Entry {
    fn key(&self) -> Key {
        Key::from_node(&self.addr.node_id)
    }
}

#[derive(Debug, Default)]
struct Bucket {
    entries: Vec<Entry>,
    /// Candidates for when an entry fails, best RTT first.
    replacements: Vec<Entry>,
    last_refresh: Option<Instant>,
}

/// What happened to a peer offered to the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOutcome {
    /// Already present; its data was refreshed.
    Updated,
    /// Added to a bucket.
    Inserted,
    /// Replaced a failing entry.
    Replaced,
    /// The bucket is full; kept in the replacement cache.
    Cached,
    /// Refused by the diversity cap (or it is the local node).
    Refused,
}

/// Routing-table parameters.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TableConfig {
    pub(crate) k: usize,
    pub(crate) replacement_cache: usize,
    pub(crate) max_per_subnet: usize,
    pub(crate) max_failures: u8,
}

/// The routing table. Bucket `i` holds peers sharing exactly `i` leading bits with us.
#[derive(Debug)]
pub struct RoutingTable {
    local: Key,
    cfg: TableConfig,
    /// Grown on demand up to the deepest bucket used, so an idle table stays small.
    buckets: Vec<Bucket>,
}

impl RoutingTable {
    pub(crate) fn new(local: Key, cfg: TableConfig) -> Self {
        Self {
            local,
            cfg,
            buckets: Vec::new(),
        }
    }

    fn index(&self, key: &Key) -> Option<usize> {
        let cpl = self.local.common_prefix_len(key);
        (cpl < 256).then_some(cpl)
    }

    fn bucket_mut(&mut self, i: usize) -> &mut Bucket {
        if self.buckets.len() <= i {
            self.buckets.resize_with(i + 1, Bucket::default);
        }
        &mut self.buckets[i]
    }

    /// Number of peers in buckets (replacements not counted).
    pub fn len(&self) -> usize {
        self.buckets.iter().map(|b| b.entries.len()).sum()
    }

    /// Whether the table has no peers.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Iterates over all peers in buckets.
    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.buckets.iter().flat_map(|b| b.entries.iter())
    }

    /// The entry for `id`, if present.
    pub fn get(&self, id: &NodeId) -> Option<&Entry> {
        let i = self.index(&Key::from_node(id))?;
        self.buckets
            .get(i)?
            .entries
            .iter()
            .find(|e| e.addr.node_id == *id)
    }

    /// Records that `addr` answered a request after `rtt`. Only peers that answered are
    /// ever offered to the table.
    pub(crate) fn on_response(
        &mut self,
        now: Instant,
        addr: NodeAddr,
        subnet: Option<Subnet>,
        rtt: Duration,
    ) -> InsertOutcome {
        let key = Key::from_node(&addr.node_id);
        let Some(i) = self.index(&key) else {
            return InsertOutcome::Refused;
        };
        let cfg = self.cfg;
        let b = self.bucket_mut(i);
        if let Some(e) = b
            .entries
            .iter_mut()
            .find(|e| e.addr.node_id == addr.node_id)
        {
            e.rtt = (e.rtt * 7 + rtt) / 8;
            e.last_seen = now;
            e.failures = 0;
            e.subnet = subnet;
            e.addr = addr;
            return InsertOutcome::Updated;
        }
        let entry = Entry {
            addr,
            subnet,
            rtt,
            last_seen: now,
            failures: 0,
        };
        if let Some(s) = subnet {
            let same = b.entries.iter().filter(|e| e.subnet == Some(s)).count();
            if cfg.max_per_subnet > 0 && same >= cfg.max_per_subnet {
                return InsertOutcome::Refused;
            }
        }
        if b.entries.len() < cfg.k {
            b.replacements
                .retain(|r| r.addr.node_id != entry.addr.node_id);
            b.entries.push(entry);
            return InsertOutcome::Inserted;
        }
        // RTT-aware replacement: a failing entry makes room at once.
        if let Some(pos) = b.entries.iter().position(|e| e.failures > 0) {
            b.entries[pos] = entry;
            return InsertOutcome::Replaced;
        }
        b.replacements
            .retain(|r| r.addr.node_id != entry.addr.node_id);
        let at = b.replacements.partition_point(|r| r.rtt <= entry.rtt);
        b.replacements.insert(at, entry);
        b.replacements.truncate(cfg.replacement_cache);
        InsertOutcome::Cached
    }

    /// Whether a peer that answers would get a bucket slot now (the bucket has room or a
    /// failing entry, and the subnet cap allows it). Used to skip pointless pings.
    pub(crate) fn has_room_for(&self, id: &NodeId, subnet: Option<Subnet>) -> bool {
        let Some(i) = self.index(&Key::from_node(id)) else {
            return false;
        };
        let Some(b) = self.buckets.get(i) else {
            return true;
        };
        if let (Some(s), cap) = (subnet, self.cfg.max_per_subnet) {
            if cap > 0 && b.entries.iter().filter(|e| e.subnet == Some(s)).count() >= cap {
                return false;
            }
        }
        b.entries.len() < self.cfg.k || b.entries.iter().any(|e| e.failures > 0)
    }

    /// Records that `id` did not answer. It is evicted after `max_failures` consecutive
    /// failures, or at once when the replacement cache has a candidate, which then
    /// takes its place (lowest RTT first, within the diversity cap).
    pub(crate) fn on_failure(&mut self, id: &NodeId) {
        let Some(i) = self.index(&Key::from_node(id)) else {
            return;
        };
        let cfg = self.cfg;
        let Some(b) = self.buckets.get_mut(i) else {
            return;
        };
        b.replacements.retain(|r| r.addr.node_id != *id);
        let Some(pos) = b.entries.iter().position(|e| e.addr.node_id == *id) else {
            return;
        };
        let e = &mut b.entries[pos];
        e.failures = e.failures.saturating_add(1);
        if e.failures < cfg.max_failures && b.replacements.is_empty() {
            return;
        }
        b.entries.swap_remove(pos);
        let fits = |c: &Entry, entries: &[Entry]| match c.subnet {
            Some(s) if cfg.max_per_subnet > 0 => {
                entries.iter().filter(|e| e.subnet == Some(s)).count() < cfg.max_per_subnet
            }
            _ => true,
        };
        if let Some(j) = b.replacements.iter().position(|c| fits(c, &b.entries)) {
            let c = b.replacements.remove(j);
            b.entries.push(c);
        }
    }

    /// Removes a peer (for example one that turned out to be in client mode).
    pub(crate) fn remove(&mut self, id: &NodeId) {
        if let Some(i) = self.index(&Key::from_node(id)) {
            if let Some(b) = self.buckets.get_mut(i) {
                b.entries.retain(|e| e.addr.node_id != *id);
                b.replacements.retain(|e| e.addr.node_id != *id);
            }
        }
    }

    /// The `n` peers closest to `target`, closest first.
    ///
    /// Buckets are visited in XOR order, so only the buckets needed are sorted: with
    /// `c` the prefix `target` shares with us, bucket `c` holds the closest peers, then
    /// all deeper buckets together, then buckets `c - 1` down to 0.
    pub fn closest(&self, target: &Key, n: usize) -> Vec<&Entry> {
        let c = self.local.common_prefix_len(target);
        let len = self.buckets.len();
        let mut out: Vec<(Distance, &Entry)> = Vec::with_capacity(n + KEEP_SLACK);
        if c < len {
            take(self.buckets[c].entries.iter(), target, n, &mut out);
        }
        if out.len() < n && c + 1 < len {
            take(
                self.buckets[c + 1..].iter().flat_map(|b| b.entries.iter()),
                target,
                n,
                &mut out,
            );
        }
        for b in (0..c.min(len)).rev() {
            if out.len() >= n {
                break;
            }
            take(self.buckets[b].entries.iter(), target, n, &mut out);
        }
        out.truncate(n);
        out.into_iter().map(|(_, e)| e).collect()
    }

    /// Marks the bucket `target` falls in as refreshed at `now`.
    pub(crate) fn mark_refreshed(&mut self, target: &Key, now: Instant) {
        if let Some(i) = self.index(target) {
            if i < self.buckets.len() {
                self.buckets[i].last_refresh = Some(now);
            }
        }
    }

    /// Bucket indexes due for a refresh: every bucket up to one past the deepest
    /// non-empty one that was not refreshed within `interval` (and is not full, with
    /// `skip_full`).
    pub(crate) fn stale_buckets(
        &self,
        now: Instant,
        interval: Duration,
        skip_full: bool,
    ) -> Vec<usize> {
        let deepest = self
            .buckets
            .iter()
            .rposition(|b| !b.entries.is_empty())
            .map_or(0, |d| d + 1);
        (0..=deepest.min(255))
            .filter(|&i| {
                !(skip_full
                    && self
                        .buckets
                        .get(i)
                        .is_some_and(|b| b.entries.len() >= self.cfg.k))
            })
            .filter(|&i| {
                self.buckets
                    .get(i)
                    .and_then(|b| b.last_refresh)
                    .is_none_or(|t| now.saturating_duration_since(t) >= interval)
            })
            .collect()
    }

    /// Buckets that should be well filled but hold fewer than `min` peers: every bucket
    /// shallower than the deepest non-empty one minus `slack` (deep buckets are sparse
    /// by nature: few nodes share a long prefix with us).
    pub(crate) fn deficient_buckets(&self, min: usize, slack: usize) -> Vec<usize> {
        let Some(deepest) = self.buckets.iter().rposition(|b| !b.entries.is_empty()) else {
            return Vec::new();
        };
        (0..deepest.saturating_sub(slack))
            .filter(|&i| self.buckets[i].entries.len() < min)
            .collect()
    }

    /// The local key.
    pub fn local_key(&self) -> Key {
        self.local
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kith_core::SecretKey;
    use std::net::{IpAddr, Ipv4Addr};

    fn cfg(k: usize) -> TableConfig {
        TableConfig {
            k,
            replacement_cache: 3,
            max_per_subnet: 2,
            max_failures: 2,
        }
    }

    fn ids(n: usize) -> Vec<NodeId> {
        (0..n)
            .map(|i| {
                let mut b = [7u8; 32];
                b[..8].copy_from_slice(&(i as u64).to_le_bytes());
                SecretKey::from_bytes(&b).node_id()
            })
            .collect()
    }

    fn subnet(a: u8, b: u8) -> Option<Subnet> {
        Subnet::of(IpAddr::V4(Ipv4Addr::new(a, b, 0, 1)), true)
    }

    /// Local key of all zeros, so bucket 0 holds every id whose first bit is 1.
    fn table(k: usize) -> RoutingTable {
        RoutingTable::new(Key([0; 32]), cfg(k))
    }

    fn bucket0(ids: &[NodeId]) -> Vec<NodeId> {
        ids.iter()
            .copied()
            .filter(|id| id.as_bytes()[0] & 0x80 != 0)
            .collect()
    }

    #[test]
    fn diversity_cap_per_bucket() {
        let now = Instant::now();
        let mut t = table(20);
        let ids = bucket0(&ids(40));
        let ms = Duration::from_millis(10);
        let out: Vec<_> = ids[..4]
            .iter()
            .map(|id| t.on_response(now, NodeAddr::new(*id), subnet(192, 0), ms))
            .collect();
        assert_eq!(
            out,
            [
                InsertOutcome::Inserted,
                InsertOutcome::Inserted,
                InsertOutcome::Refused,
                InsertOutcome::Refused
            ]
        );
        // Address-less (or loopback) peers are exempt.
        for id in &ids[4..8] {
            assert_eq!(
                t.on_response(now, NodeAddr::new(*id), None, ms),
                InsertOutcome::Inserted
            );
        }
        assert_eq!(t.len(), 6);
    }

    #[test]
    fn replacement_cache_promotes_lowest_rtt_on_failure() {
        let now = Instant::now();
        let mut t = table(2);
        let ids = bucket0(&ids(40));
        let ms = Duration::from_millis;
        for (i, id) in ids[..2].iter().enumerate() {
            t.on_response(now, NodeAddr::new(*id), subnet(1, i as u8), ms(50));
        }
        assert_eq!(
            t.on_response(now, NodeAddr::new(ids[2]), subnet(2, 0), ms(90)),
            InsertOutcome::Cached
        );
        assert_eq!(
            t.on_response(now, NodeAddr::new(ids[3]), subnet(2, 1), ms(20)),
            InsertOutcome::Cached
        );
        t.on_failure(&ids[0]);
        assert!(
            t.get(&ids[0]).is_none(),
            "evicted at once: a replacement exists"
        );
        assert!(
            t.get(&ids[3]).is_some(),
            "the lowest-RTT replacement is promoted"
        );
        assert!(t.get(&ids[2]).is_none());
        // Without replacements, an entry survives one failure and goes after two.
        t.on_failure(&ids[1]);
        t.on_failure(&ids[3]);
        assert!(t.get(&ids[3]).is_some());
        t.on_failure(&ids[3]);
        assert!(t.get(&ids[3]).is_none());
        // A failing entry is replaced by a newcomer that answered.
        assert_eq!(t.len(), 1);
        t.on_response(now, NodeAddr::new(ids[4]), subnet(3, 0), ms(5));
        t.on_failure(&ids[4]);
        assert_eq!(
            t.on_response(now, NodeAddr::new(ids[5]), subnet(3, 1), ms(5)),
            InsertOutcome::Replaced
        );
    }

    #[test]
    fn closest_is_sorted_and_bounded() {
        let now = Instant::now();
        let mut t = RoutingTable::new(Key([0x55; 32]), cfg(20));
        let all = ids(200);
        for id in &all {
            t.on_response(now, NodeAddr::new(*id), None, Duration::ZERO);
        }
        let target = Key([0xaa; 32]);
        let c = t.closest(&target, 10);
        assert_eq!(c.len(), 10);
        for w in c.windows(2) {
            assert!(w[0].key().distance(&target) < w[1].key().distance(&target));
        }
        let best = t.iter().map(|e| e.key().distance(&target)).min();
        assert_eq!(Some(c[0].key().distance(&target)), best);
        // Bucket-ordered selection equals a brute-force sort, for targets at every depth.
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(3);
        for cpl in 0..12 {
            let target = t.local_key().random_with_prefix(cpl, &mut rng);
            for n in [1, 5, 21, 500] {
                let mut all: Vec<_> = t.iter().map(|e| e.key().distance(&target)).collect();
                all.sort();
                all.truncate(n);
                let got: Vec<_> = t
                    .closest(&target, n)
                    .iter()
                    .map(|e| e.key().distance(&target))
                    .collect();
                assert_eq!(got, all, "cpl {cpl} n {n}");
            }
        }
        let own: Vec<_> = t
            .closest(&t.local_key(), 3)
            .iter()
            .map(|e| e.key())
            .collect();
        assert_eq!(own.len(), 3);
        assert!(
            !t.stale_buckets(now, Duration::from_secs(1), false)
                .is_empty()
        );
    }
}
