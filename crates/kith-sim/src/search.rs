//! Search scenarios: build a gossip membership graph (HyParView active views) of N
//! members, give items to a fraction of them, and compare flooding with k random walkers
//! on hit rate and messages per query. Used by `kith-sim search` and by the tests.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kith_core::NodeId;
use kith_overlay::search::{Config, Event, Item, Message, Mode, QueryId, SearchCore};
use rand::Rng;

use crate::gossip::{self, GossipParams};
use crate::gossip_net::{Actor, Net, NetConfig};

/// A searcher in the simulator: the core plus the hits its queries got.
#[derive(Debug)]
pub struct Searcher {
    /// The sans-IO core.
    pub core: SearchCore,
    /// Items received per query.
    pub results: HashMap<QueryId, usize>,
}

impl Searcher {
    fn drain(&mut self) {
        while let Some(e) = self.core.poll_event() {
            if let Event::Hits { query, items, .. } = e {
                *self.results.entry(query).or_default() += items.len();
            }
        }
    }
}

impl Actor for Searcher {
    type Msg = Message;

    fn id(&self) -> NodeId {
        self.core.local_id()
    }

    fn handle_message(&mut self, now: Instant, from: NodeId, msg: Message) {
        self.core.handle_message(now, from, msg);
        self.drain();
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.core.handle_timeout(now);
        self.drain();
    }

    fn peer_failed(&mut self, _now: Instant, peer: NodeId) {
        self.core.neighbor_down(&peer);
    }

    fn poll_transmit(&mut self) -> Option<(NodeId, Message)> {
        self.core.poll_transmit().map(|t| (t.to.node_id, t.msg))
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.core.poll_timeout()
    }
}

/// Parameters of a search run.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SearchParams {
    /// Members.
    pub nodes: usize,
    /// Seed of everything.
    pub seed: u64,
    /// Search configuration of every member (TTLs, walkers).
    pub config: Config,
    /// Distinct popular items.
    pub popular_items: usize,
    /// Fraction of members holding each popular item.
    pub popular_replication: f64,
    /// Distinct rare items.
    pub rare_items: usize,
    /// Members holding each rare item.
    pub rare_copies: usize,
    /// Queries per mode and class.
    pub queries: usize,
}

impl SearchParams {
    /// `nodes` members with default settings and `seed`.
    pub fn new(nodes: usize, seed: u64) -> Self {
        Self {
            nodes,
            seed,
            config: Config::default(),
            popular_items: 20,
            popular_replication: 0.02,
            rare_items: 20,
            rare_copies: 2,
            queries: 200,
        }
    }
}

/// Results of one mode on one class of items.
#[derive(Debug, Clone, Copy, Default)]
pub struct ModeReport {
    /// Queries run.
    pub queries: usize,
    /// Queries with at least one hit.
    pub hits: usize,
    /// Messages (queries and hits) sent, in total.
    pub messages: u64,
}

impl ModeReport {
    /// Fraction of queries with at least one hit.
    pub fn hit_rate(&self) -> f64 {
        self.hits as f64 / self.queries.max(1) as f64
    }

    /// Messages per query.
    pub fn msgs_per_query(&self) -> f64 {
        self.messages as f64 / self.queries.max(1) as f64
    }
}

/// Flooding and walking on popular and rare items.
#[derive(Debug, Clone, Copy, Default)]
pub struct SearchReport {
    /// Flooding, popular items.
    pub flood_popular: ModeReport,
    /// Random walks, popular items.
    pub walk_popular: ModeReport,
    /// Flooding, rare items.
    pub flood_rare: ModeReport,
    /// Random walks, rare items.
    pub walk_rare: ModeReport,
    /// Mean degree of the membership graph.
    pub mean_degree: f64,
}

/// Builds the membership with the gossip scenario, then a search network on its graph.
pub fn build(p: &SearchParams) -> (Net<Searcher>, f64) {
    let gp = GossipParams {
        settle: Duration::from_secs(30),
        ..GossipParams::new(p.nodes, p.seed)
    };
    let g = gossip::build(&gp);
    let mut net: Net<Searcher> = Net::new(NetConfig {
        seed: p.seed ^ 0x5ea7c4,
        ..NetConfig::default()
    });
    let mut degree = 0usize;
    for i in 0..p.nodes as u32 {
        let m = &g.net.actor(i).core;
        let seed = net.rng().r#gen();
        let mut core = SearchCore::new(m.local_addr().clone(), p.config.clone(), seed);
        core.set_neighbors(m.active_view().to_vec());
        degree += m.active_view().len();
        net.add(Searcher {
            core,
            results: HashMap::new(),
        });
    }
    let n = p.nodes as u32;
    let place = |net: &mut Net<Searcher>, name: String, copies: usize, h: u32| {
        let mut holders = Vec::new();
        while holders.len() < copies.min(p.nodes) {
            let i = net.rng().gen_range(0..n);
            if !holders.contains(&i) {
                holders.push(i);
            }
        }
        for i in holders {
            let mut hash = [0u8; 32];
            hash[..4].copy_from_slice(&h.to_le_bytes());
            net.actor_mut(i)
                .core
                .share(Item::new(name.clone(), 1 << 20, hash));
        }
    };
    let popular_copies = ((p.nodes as f64) * p.popular_replication).round().max(1.0) as usize;
    for k in 0..p.popular_items {
        place(
            &mut net,
            format!("pop{k} track.ogg"),
            popular_copies,
            k as u32,
        );
    }
    for k in 0..p.rare_items {
        place(
            &mut net,
            format!("rare{k} paper.pdf"),
            p.rare_copies,
            1_000_000 + k as u32,
        );
    }
    (net, degree as f64 / p.nodes.max(1) as f64)
}

/// Runs `queries` queries for random items of a class (`prefix`), each from a random
/// member, one after the other; reports hits and messages.
pub fn run_queries(
    net: &mut Net<Searcher>,
    p: &SearchParams,
    mode: Mode,
    prefix: &str,
    items: usize,
) -> ModeReport {
    let mut r = ModeReport::default();
    let wait = p.config.query_timeout + Duration::from_secs(1);
    for _ in 0..p.queries {
        let Some(src) = net.random_alive() else { break };
        let k = net.rng().gen_range(0..items.max(1));
        let keyword = format!("{prefix}{k}");
        let before = net.stats().sent;
        let q = net.command(src, |s, now| s.core.query(now, &[keyword.as_str()], mode));
        let Ok(q) = q else { continue };
        net.run_for(wait);
        r.queries += 1;
        r.messages += net.stats().sent - before;
        if net.actor(src).results.get(&q).copied().unwrap_or(0) > 0 {
            r.hits += 1;
        }
    }
    r
}

/// The whole comparison.
pub fn run(p: &SearchParams) -> SearchReport {
    let (mut net, mean_degree) = build(p);
    SearchReport {
        flood_popular: run_queries(&mut net, p, Mode::Flood, "pop", p.popular_items),
        walk_popular: run_queries(&mut net, p, Mode::Walk, "pop", p.popular_items),
        flood_rare: run_queries(&mut net, p, Mode::Flood, "rare", p.rare_items),
        walk_rare: run_queries(&mut net, p, Mode::Walk, "rare", p.rare_items),
        mean_degree,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_match_flooding_on_popular_items_at_a_tenth_of_the_messages_at_500_nodes() {
        let p = SearchParams {
            queries: 60,
            ..SearchParams::new(500, 9)
        };
        let r = run(&p);
        assert!(r.flood_popular.hit_rate() >= 0.95, "{r:?}");
        assert!(
            r.walk_popular.hit_rate() >= 0.9 * r.flood_popular.hit_rate(),
            "walk hit rate {} vs flood {}",
            r.walk_popular.hit_rate(),
            r.flood_popular.hit_rate()
        );
        assert!(
            r.walk_popular.msgs_per_query() <= r.flood_popular.msgs_per_query() / 10.0,
            "walk {} msgs/query vs flood {}",
            r.walk_popular.msgs_per_query(),
            r.flood_popular.msgs_per_query()
        );
    }
}
