//! [`SearchCore`]: the sans-IO keyword search state machine of one node.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use kith_core::{NodeAddr, NodeId};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::gossip::cache::TimedCache;

use super::message::{
    Item, MAX_HITS, MAX_KEYWORD_LEN, MAX_KEYWORDS, MAX_MESSAGE_LEN, MAX_TTL, MAX_WALKERS, Message,
    Mode, Query,
};

/// Configuration of a [`SearchCore`], with safe defaults.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// TTL of a flooded query: hops from the querier (default 7, as in Gnutella).
    pub flood_ttl: u8,
    /// Random walkers per walk query (default 4).
    pub walkers: u8,
    /// TTL of each walker (default 64).
    pub walk_ttl: u8,
    /// A walker stops at the first node with a match (default on).
    pub stop_on_hit: bool,
    /// A query collects hits for this long, then reports [`Event::Done`] (default 10 s).
    pub query_timeout: Duration,
    /// Most items reported per query; later hits are dropped (default 100).
    pub max_results: usize,
    /// Queries remembered for duplicate suppression (default 8192).
    pub dedup_capacity: usize,
    /// How long queries are remembered (default 60 s).
    pub dedup_ttl: Duration,
    /// Queries accepted per second from one neighbour (default 20).
    pub rate_per_sec: u32,
    /// Burst of queries accepted from one neighbour (default 40).
    pub rate_burst: u32,
    /// Most neighbours the rate limiter tracks (default 1024).
    pub max_tracked_peers: usize,
    /// Most queries of our own in flight (default 64).
    pub max_pending: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            flood_ttl: 7,
            walkers: 4,
            walk_ttl: 64,
            stop_on_hit: true,
            query_timeout: Duration::from_secs(10),
            max_results: 100,
            dedup_capacity: 8192,
            dedup_ttl: Duration::from_secs(60),
            rate_per_sec: 20,
            rate_burst: 40,
            max_tracked_peers: 1024,
            max_pending: 64,
        }
    }
}

/// Identifies one of our queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueryId(pub u64);

/// A message for the driver to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub to: NodeAddr,
    /// What to send.
    pub msg: Message,
}

/// What a query produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Matching items from one node.
    Hits {
        /// The query.
        query: QueryId,
        /// The node that has them (the authenticated sender).
        from: NodeId,
        /// How to reach it: the address it reported for itself, or just `from` when it
        /// reported none.
        provider: NodeAddr,
        /// The items.
        items: Vec<Item>,
    },
    /// The query's time is up.
    Done {
        /// The query.
        query: QueryId,
        /// Items reported in total.
        results: usize,
    },
}

/// Error starting a query.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// No keyword, more than [`MAX_KEYWORDS`], or one longer than [`MAX_KEYWORD_LEN`].
    #[error("1 to {MAX_KEYWORDS} keywords of at most {MAX_KEYWORD_LEN} bytes required")]
    BadKeywords,
    /// We have no neighbour to send the query to.
    #[error("no neighbours")]
    NoNeighbors,
    /// Too many of our queries are in flight.
    #[error("too many queries in flight")]
    TooManyPending,
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Query messages received.
    pub queries_received: u64,
    /// Query messages sent (our own and forwarded).
    pub queries_sent: u64,
    /// Flooded queries dropped as duplicates.
    pub duplicates: u64,
    /// Queries dropped by the per-neighbour rate limit.
    pub rate_limited: u64,
    /// Hits messages sent.
    pub hits_sent: u64,
    /// Hits messages received for our queries.
    pub hits_received: u64,
    /// Hits messages for no query of ours (or over `max_results`, or naming another
    /// node as provider than the sender), dropped.
    pub hits_dropped: u64,
}

#[derive(Debug)]
struct Pending {
    deadline: Instant,
    results: usize,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug)]
struct Shared {
    item: Item,
    words: Vec<String>,
    hex: String,
}

/// Gnutella-style search over the neighbours a membership protocol gives it: flooding
/// with a TTL, or k random walkers; hits go straight back to the querier.
#[derive(Debug)]
pub struct SearchCore {
    local: NodeAddr,
    cfg: Config,
    rng: StdRng,
    neighbors: Vec<NodeAddr>,
    shared: Vec<Shared>,
    seen: TimedCache<(NodeId, u64), bool>,
    pending: BTreeMap<u64, Pending>,
    buckets: BTreeMap<NodeId, Bucket>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: Stats,
}

/// Lowercase words of a name.
fn words(name: &str) -> Vec<String> {
    name.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

impl SearchCore {
    /// A core for the node at `local`; `seed` seeds every random choice.
    pub fn new(local: NodeAddr, config: Config, seed: u64) -> Self {
        let mut cfg = config;
        cfg.flood_ttl = cfg.flood_ttl.clamp(1, MAX_TTL);
        cfg.walk_ttl = cfg.walk_ttl.clamp(1, MAX_TTL);
        cfg.walkers = cfg.walkers.clamp(1, MAX_WALKERS);
        cfg.dedup_capacity = cfg.dedup_capacity.max(16);
        cfg.max_tracked_peers = cfg.max_tracked_peers.max(1);
        let (dedup_capacity, dedup_ttl) = (cfg.dedup_capacity, cfg.dedup_ttl);
        Self {
            local,
            cfg,
            rng: StdRng::seed_from_u64(seed),
            neighbors: Vec::new(),
            shared: Vec::new(),
            seen: TimedCache::new(dedup_capacity, dedup_ttl),
            pending: BTreeMap::new(),
            buckets: BTreeMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// Our node id.
    pub fn local_id(&self) -> NodeId {
        self.local.node_id
    }

    /// Updates how others reach us (carried in our queries and hits), for example when
    /// the transport learns a new address. The node id must stay the same; another one
    /// is ignored.
    pub fn set_local_addr(&mut self, addr: NodeAddr) {
        if addr.node_id == self.local.node_id {
            self.local = addr;
        }
    }

    /// The current neighbours.
    pub fn neighbors(&self) -> &[NodeAddr] {
        &self.neighbors
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Announces an item to searchers.
    pub fn share(&mut self, item: Item) {
        let hex = item.hash.iter().map(|b| format!("{b:02x}")).collect();
        self.shared.push(Shared {
            words: words(&item.name),
            hex,
            item,
        });
    }

    /// Stops announcing the items with this content hash.
    pub fn unshare(&mut self, hash: &[u8; 32]) {
        self.shared.retain(|s| s.item.hash != *hash);
    }

    /// Replaces the neighbour set (the membership's active view).
    pub fn set_neighbors(&mut self, neighbors: Vec<NodeAddr>) {
        self.neighbors = neighbors;
    }

    /// A neighbour came up.
    pub fn neighbor_up(&mut self, addr: NodeAddr) {
        if !self.neighbors.iter().any(|n| n.node_id == addr.node_id) {
            self.neighbors.push(addr);
        }
    }

    /// A neighbour went away.
    pub fn neighbor_down(&mut self, id: &NodeId) {
        self.neighbors.retain(|n| n.node_id != *id);
    }

    /// Starts a query for items whose names contain every keyword as a word (matching
    /// ignores case; a 64-character hex keyword matches a content hash).
    pub fn query(
        &mut self,
        now: Instant,
        keywords: &[&str],
        mode: Mode,
    ) -> Result<QueryId, QueryError> {
        let keywords: Vec<String> = keywords.iter().map(|k| k.trim().to_lowercase()).collect();
        if keywords.is_empty()
            || keywords.len() > MAX_KEYWORDS
            || keywords.iter().any(|k| {
                k.is_empty() || k.len() > MAX_KEYWORD_LEN || k.contains(char::is_whitespace)
            })
        {
            return Err(QueryError::BadKeywords);
        }
        if self.neighbors.is_empty() {
            return Err(QueryError::NoNeighbors);
        }
        if self.pending.len() >= self.cfg.max_pending {
            return Err(QueryError::TooManyPending);
        }
        let id = self.rng.r#gen();
        let q = Query {
            id,
            querier: self.local.clone(),
            keywords,
            mode,
            ttl: 0,
        };
        self.remember(now, (self.local_id(), id), true);
        match mode {
            Mode::Flood => {
                for n in self.neighbors.clone() {
                    self.send_query(
                        n,
                        Query {
                            ttl: self.cfg.flood_ttl,
                            ..q.clone()
                        },
                    );
                }
            }
            Mode::Walk => {
                for _ in 0..self.cfg.walkers {
                    if let Some(n) = self.neighbors.choose(&mut self.rng).cloned() {
                        self.send_query(
                            n,
                            Query {
                                ttl: self.cfg.walk_ttl,
                                ..q.clone()
                            },
                        );
                    }
                }
            }
        }
        self.pending.insert(
            id,
            Pending {
                deadline: now + self.cfg.query_timeout,
                results: 0,
            },
        );
        Ok(QueryId(id))
    }

    /// Handles a message from `from` (the authenticated sender).
    pub fn handle_message(&mut self, now: Instant, from: NodeId, msg: Message) {
        match msg {
            Message::Query(q) => self.on_query(now, from, q),
            Message::Hits {
                id,
                provider,
                items,
            } => {
                let provider = provider.unwrap_or_else(|| NodeAddr::new(from));
                if provider.node_id != from {
                    // A node may only answer for itself.
                    self.stats.hits_dropped += 1;
                    return;
                }
                let Some(p) = self.pending.get_mut(&id) else {
                    self.stats.hits_dropped += 1;
                    return;
                };
                let room = self.cfg.max_results.saturating_sub(p.results);
                if room == 0 || items.is_empty() {
                    self.stats.hits_dropped += 1;
                    return;
                }
                self.stats.hits_received += 1;
                let items: Vec<Item> = items.into_iter().take(room).collect();
                p.results += items.len();
                self.events.push_back(Event::Hits {
                    query: QueryId(id),
                    from,
                    provider,
                    items,
                });
            }
        }
    }

    /// Handles timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        let done: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            if let Some(p) = self.pending.remove(&id) {
                self.events.push_back(Event::Done {
                    query: QueryId(id),
                    results: p.results,
                });
            }
        }
        self.expire(now);
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`SearchCore::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.deadline).min()
    }

    fn send_query(&mut self, to: NodeAddr, q: Query) {
        self.stats.queries_sent += 1;
        self.transmits.push_back(Transmit {
            to,
            msg: Message::Query(q),
        });
    }

    /// Sends `hits` to the querier, in as many messages as it takes to keep each under
    /// [`MAX_MESSAGE_LEN`] (payloads make items up to a few KiB each).
    fn send_hits(&mut self, q: &Query, hits: Vec<Item>) {
        let budget = MAX_MESSAGE_LEN - 64 - self.local.encode().len();
        let mut batch: Vec<Item> = Vec::new();
        let mut used = 0;
        for item in hits {
            let len = item.wire_len_bound();
            if !batch.is_empty() && used + len > budget {
                self.push_hits(q, std::mem::take(&mut batch));
                used = 0;
            }
            used += len;
            batch.push(item);
        }
        if !batch.is_empty() {
            self.push_hits(q, batch);
        }
    }

    fn push_hits(&mut self, q: &Query, items: Vec<Item>) {
        self.stats.hits_sent += 1;
        self.transmits.push_back(Transmit {
            to: q.querier.clone(),
            msg: Message::Hits {
                id: q.id,
                provider: Some(self.local.clone()),
                items,
            },
        });
    }

    fn remember(&mut self, now: Instant, key: (NodeId, u64), answered: bool) {
        self.seen.insert(now, key, answered);
    }

    fn expire(&mut self, now: Instant) {
        self.seen.expire(now);
    }

    /// Token bucket per neighbour; false if `from` is over its query rate.
    fn allow(&mut self, now: Instant, from: NodeId) -> bool {
        if !self.buckets.contains_key(&from) && self.buckets.len() >= self.cfg.max_tracked_peers {
            // Forget the peer heard from longest ago.
            if let Some(old) = self
                .buckets
                .iter()
                .min_by_key(|(_, b)| b.at)
                .map(|(id, _)| *id)
            {
                self.buckets.remove(&old);
            }
        }
        let burst = f64::from(self.cfg.rate_burst.max(1));
        let rate = f64::from(self.cfg.rate_per_sec);
        let b = self.buckets.entry(from).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        b.tokens = (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn matches(&self, keywords: &[String]) -> Vec<Item> {
        self.shared
            .iter()
            .filter(|s| {
                keywords.iter().all(|k| {
                    if k.len() == 64 && k.chars().all(|c| c.is_ascii_hexdigit()) {
                        s.hex == *k
                    } else {
                        s.words.iter().any(|w| w == k)
                    }
                })
            })
            .take(MAX_HITS)
            .map(|s| s.item.clone())
            .collect()
    }

    fn on_query(&mut self, now: Instant, from: NodeId, q: Query) {
        self.stats.queries_received += 1;
        if !self.allow(now, from) {
            self.stats.rate_limited += 1;
            return;
        }
        let key = (q.querier.node_id, q.id);
        let mine = q.querier.node_id == self.local_id();
        let answered = match (q.mode, self.seen.get(&key).copied()) {
            (Mode::Flood, Some(_)) => {
                self.stats.duplicates += 1;
                return;
            }
            (_, a) => a.unwrap_or(false),
        };
        let hits = if mine {
            Vec::new()
        } else {
            self.matches(&q.keywords)
        };
        if !hits.is_empty() && !answered {
            self.send_hits(&q, hits.clone());
        }
        self.remember(now, key, answered || !hits.is_empty());
        if q.ttl <= 1 || (q.mode == Mode::Walk && self.cfg.stop_on_hit && !hits.is_empty()) {
            return;
        }
        let next = Query {
            ttl: q.ttl - 1,
            ..q
        };
        let others: Vec<NodeAddr> = self
            .neighbors
            .iter()
            .filter(|n| n.node_id != from && n.node_id != next.querier.node_id)
            .cloned()
            .collect();
        match next.mode {
            Mode::Flood => {
                for n in others {
                    self.send_query(n, next.clone());
                }
            }
            Mode::Walk => {
                let pick = others
                    .choose(&mut self.rng)
                    .cloned()
                    .or_else(|| self.neighbors.choose(&mut self.rng).cloned());
                if let Some(n) = pick {
                    self.send_query(n, next);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kith_core::SecretKey;

    fn addr(n: u8) -> NodeAddr {
        NodeAddr::new(SecretKey::from_bytes(&[n; 32]).node_id())
    }

    fn item(name: &str, h: u8) -> Item {
        Item::new(name, 100, [h; 32])
    }

    /// A ring of `n` cores, node `i` sharing `items(i)`; delivers until quiet.
    fn ring(n: u8, cfg: &Config) -> Vec<SearchCore> {
        let mut v: Vec<SearchCore> = (0..n)
            .map(|i| SearchCore::new(addr(i + 1), cfg.clone(), u64::from(i)))
            .collect();
        for i in 0..n {
            let prev = addr((i + n - 1) % n + 1);
            let next = addr((i + 1) % n + 1);
            v[usize::from(i)].set_neighbors(vec![prev, next]);
        }
        v
    }

    fn pump(now: Instant, cores: &mut [SearchCore]) -> usize {
        let mut moved = 0;
        loop {
            let mut out = Vec::new();
            for c in cores.iter_mut() {
                while let Some(t) = c.poll_transmit() {
                    out.push((c.local_id(), t));
                }
            }
            if out.is_empty() {
                return moved;
            }
            for (from, t) in out {
                moved += 1;
                if let Some(c) = cores.iter_mut().find(|c| c.local_id() == t.to.node_id) {
                    c.handle_message(now, from, t.msg);
                }
            }
        }
    }

    #[test]
    fn flood_respects_ttl_and_hits_come_straight_back() {
        let cfg = Config {
            flood_ttl: 3,
            ..Config::default()
        };
        let mut cores = ring(20, &cfg);
        cores[3].share(item("Cat Video.mp4", 3));
        cores[10].share(item("cat video.mkv", 10));
        let now = Instant::now();
        let q = cores[0].query(now, &["CAT", "video"], Mode::Flood).unwrap();
        pump(now, &mut cores);
        let events: Vec<Event> = std::iter::from_fn(|| cores[0].poll_event()).collect();
        // Node 3 is 3 hops away (found); node 10 is beyond the TTL.
        assert_eq!(
            events,
            vec![Event::Hits {
                query: q,
                from: cores[3].local_id(),
                provider: addr(4),
                items: vec![item("Cat Video.mp4", 3)]
            }]
        );
        // The hit went straight to the querier, not back along the ring.
        assert_eq!(cores[1].stats().hits_sent + cores[2].stats().hits_sent, 0);
        assert_eq!(cores[3].stats().hits_sent, 1);
        cores[0].handle_timeout(now + cfg.query_timeout);
        assert_eq!(
            cores[0].poll_event(),
            Some(Event::Done {
                query: q,
                results: 1
            })
        );
    }

    #[test]
    fn flood_duplicates_are_suppressed() {
        let mut cores = ring(6, &Config::default());
        let now = Instant::now();
        cores[0].query(now, &["x"], Mode::Flood).unwrap();
        pump(now, &mut cores);
        // Around a ring of 6 with TTL 5 the two directions meet: each node forwards once.
        let dups: u64 = cores.iter().map(|c| c.stats().duplicates).sum();
        assert!(dups >= 1);
        for c in &cores[1..] {
            assert!(c.stats().queries_sent <= 1, "{:?}", c.stats());
        }
    }

    #[test]
    fn walkers_stop_at_a_match_and_answer_once() {
        let cfg = Config {
            walkers: 4,
            walk_ttl: 50,
            ..Config::default()
        };
        let mut cores = ring(10, &cfg);
        cores[5].share(item("song.ogg", 5));
        let now = Instant::now();
        let q = cores[0].query(now, &["song"], Mode::Walk).unwrap();
        pump(now, &mut cores);
        let hits: Vec<Event> = std::iter::from_fn(|| cores[0].poll_event()).collect();
        assert_eq!(
            hits.len(),
            1,
            "one answer however many walkers arrive: {hits:?}"
        );
        assert!(matches!(&hits[0], Event::Hits { query, .. } if *query == q));
        assert_eq!(cores[5].stats().hits_sent, 1);
        // Every walker ended at node 5 (the only match) long before its TTL.
        let sent: u64 = cores.iter().map(|c| c.stats().queries_sent).sum();
        assert!(sent < 4 * 50);
    }

    #[test]
    fn per_neighbor_rate_limit_drops_excess_queries() {
        let cfg = Config {
            rate_per_sec: 1,
            rate_burst: 3,
            ..Config::default()
        };
        let mut c = SearchCore::new(addr(1), cfg, 1);
        let now = Instant::now();
        for i in 0..10u64 {
            c.handle_message(
                now,
                addr(2).node_id,
                Message::Query(Query {
                    id: i,
                    querier: addr(3),
                    keywords: vec!["a".into()],
                    mode: Mode::Flood,
                    ttl: 1,
                }),
            );
        }
        assert_eq!(c.stats().rate_limited, 7);
        // A second later one more token is there.
        c.handle_message(
            now + Duration::from_secs(1),
            addr(2).node_id,
            Message::Query(Query {
                id: 99,
                querier: addr(3),
                keywords: vec!["a".into()],
                mode: Mode::Flood,
                ttl: 1,
            }),
        );
        assert_eq!(c.stats().rate_limited, 7);
    }

    #[test]
    fn bad_queries_are_refused() {
        let mut c = SearchCore::new(addr(1), Config::default(), 1);
        let now = Instant::now();
        assert_eq!(c.query(now, &[], Mode::Flood), Err(QueryError::BadKeywords));
        assert_eq!(
            c.query(now, &["a b"], Mode::Flood),
            Err(QueryError::BadKeywords)
        );
        assert_eq!(
            c.query(now, &["a"], Mode::Flood),
            Err(QueryError::NoNeighbors)
        );
        // Unsolicited hits are dropped.
        c.handle_message(
            now,
            addr(2).node_id,
            Message::Hits {
                id: 5,
                provider: None,
                items: vec![item("a", 1)],
            },
        );
        assert_eq!(c.stats().hits_dropped, 1);
        assert_eq!(c.poll_event(), None);
    }

    #[test]
    fn hash_keyword_matches_content_hash() {
        let mut c = SearchCore::new(addr(1), Config::default(), 1);
        c.share(item("whatever.bin", 0xab));
        let hex: String = std::iter::repeat_n("ab", 32).collect();
        assert_eq!(c.matches(&[hex]), vec![item("whatever.bin", 0xab)]);
        assert!(c.matches(&["ab".repeat(31) + "ac"]).is_empty());
    }
    #[test]
    fn large_hits_are_split_under_the_message_cap() {
        use super::super::message::{MAX_NAME_LEN, MAX_PAYLOAD_LEN};
        let mut b = SearchCore::new(addr(2), Config::default(), 2);
        for h in 0..MAX_HITS as u8 {
            let name = format!("big {h} {}", "x".repeat(MAX_NAME_LEN - 10));
            b.share(item(&name, h).with_payload(vec![h; MAX_PAYLOAD_LEN]));
        }
        let now = Instant::now();
        b.handle_message(
            now,
            addr(1).node_id,
            Message::Query(Query {
                id: 1,
                querier: addr(1),
                keywords: vec!["big".into()],
                mode: Mode::Flood,
                ttl: 1,
            }),
        );
        let sent: Vec<Transmit> = std::iter::from_fn(|| b.poll_transmit()).collect();
        assert!(sent.len() >= 2, "{}", sent.len());
        let mut items = 0;
        for t in sent {
            let bytes = t.msg.encode();
            assert!(bytes.len() <= MAX_MESSAGE_LEN, "{}", bytes.len());
            match Message::decode(&bytes) {
                Ok(Message::Hits {
                    items: i, provider, ..
                }) => {
                    assert_eq!(provider, Some(addr(2)));
                    items += i.len();
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(items, MAX_HITS);
    }

    #[test]
    fn hits_naming_another_provider_are_dropped() {
        let mut a = SearchCore::new(addr(1), Config::default(), 1);
        a.neighbor_up(addr(2));
        let now = Instant::now();
        let q = a.query(now, &["a"], Mode::Flood).unwrap();
        let forged = Message::Hits {
            id: q.0,
            provider: Some(addr(3)),
            items: vec![item("a", 1)],
        };
        a.handle_message(now, addr(2).node_id, forged);
        assert_eq!(a.poll_event(), None);
        assert_eq!(a.stats().hits_dropped, 1);
    }
}
