//! Gossip scenarios: build a topic of N members (HyParView joins), broadcast from random
//! members (Plumtree), crash half of them at once, and measure delivery, relative message
//! redundancy and last delivery hop. Used by `kith-sim gossip` and by the tests.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kith_core::{NodeAddr, NodeId, SecretKey};
use kith_overlay::gossip::{Config, Event, Message, MessageId, Scope, TopicCore, TopicId};
use rand::Rng;

use crate::gossip_net::{Actor, Net, NetConfig};

/// A topic member in the simulator: the core plus a log of what it delivered.
#[derive(Debug)]
pub struct Member {
    /// The sans-IO core.
    pub core: TopicCore,
    /// Message id → (hops, virtual time) of each delivery.
    pub delivered: HashMap<MessageId, (u32, Instant)>,
}

impl Member {
    fn drain(&mut self, now: Instant) {
        while let Some(e) = self.core.poll_event() {
            if let Event::Received { id, hops, .. } = e {
                self.delivered.insert(id, (hops, now));
            }
        }
    }
}

impl Actor for Member {
    type Msg = Message;

    fn id(&self) -> NodeId {
        self.core.local_id()
    }

    fn handle_message(&mut self, now: Instant, from: NodeId, msg: Message) {
        self.core.handle_message(now, from, msg);
        self.drain(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.core.handle_timeout(now);
        self.drain(now);
    }

    fn peer_failed(&mut self, now: Instant, peer: NodeId) {
        self.core.peer_failed(now, peer);
        self.drain(now);
    }

    fn poll_transmit(&mut self) -> Option<(NodeId, Message)> {
        self.core.poll_transmit().map(|t| (t.to.node_id, t.msg))
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.core.poll_timeout()
    }
}

/// Parameters of a gossip run.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GossipParams {
    /// Members.
    pub nodes: usize,
    /// Network model (its seed seeds everything).
    pub net: NetConfig,
    /// Configuration of every member.
    pub config: Config,
    /// Time between two joins.
    pub join_interval: Duration,
    /// Time to let views settle after the last join.
    pub settle: Duration,
    /// Broadcasts before measuring redundancy (the tree forms during these).
    pub warmup: usize,
    /// Broadcasts measured in steady state.
    pub measured: usize,
    /// Time between two broadcasts.
    pub interval: Duration,
    /// Fraction of members crashed at once.
    pub crash_fraction: f64,
    /// Time given to views to repair after the crash.
    pub repair: Duration,
    /// Broadcasts after the repair.
    pub after_crash: usize,
    /// Payload size.
    pub payload: usize,
}

impl GossipParams {
    /// `nodes` members with default settings and `seed`.
    pub fn new(nodes: usize, seed: u64) -> Self {
        Self {
            nodes,
            net: NetConfig {
                seed,
                ..NetConfig::default()
            },
            config: Config::default(),
            join_interval: Duration::from_millis(20),
            settle: Duration::from_secs(60),
            warmup: 10,
            measured: 40,
            interval: Duration::from_secs(2),
            crash_fraction: 0.5,
            repair: Duration::from_secs(60),
            after_crash: 20,
            payload: 256,
        }
    }
}

/// Outcome of a batch of broadcasts.
#[derive(Debug, Clone, Default)]
pub struct BatchReport {
    /// Broadcasts sent.
    pub broadcasts: usize,
    /// Σ receivers that delivered.
    pub deliveries: u64,
    /// Σ receivers that should have delivered (members alive at the send, minus the author).
    pub expected: u64,
    /// Payload messages received during the batch (duplicates included).
    pub payload_received: u64,
    /// Largest hop count of each broadcast.
    pub last_hops: Vec<u32>,
    /// Time until the last delivery of each broadcast.
    pub last_delivery: Vec<Duration>,
}

impl BatchReport {
    /// Deliveries / expected deliveries.
    pub fn delivery(&self) -> f64 {
        if self.expected == 0 {
            return 0.0;
        }
        self.deliveries as f64 / self.expected as f64
    }

    /// Relative message redundancy: payload messages received / (nodes that delivered − 1)
    /// − 1, summed over the batch (per broadcast, nodes that delivered − 1 = receivers).
    pub fn rmr(&self) -> f64 {
        if self.deliveries == 0 {
            return 0.0;
        }
        self.payload_received as f64 / self.deliveries as f64 - 1.0
    }

    /// Median over broadcasts of the last delivery hop.
    pub fn last_hop_median(&self) -> u32 {
        median(&self.last_hops)
    }

    /// Median over broadcasts of the time to the last delivery.
    pub fn last_delivery_median(&self) -> Duration {
        median(&self.last_delivery)
    }
}

fn median<T: Copy + Ord + Default>(v: &[T]) -> T {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// The network plus the topic.
#[derive(Debug)]
pub struct GossipSim {
    /// The simulated network of members.
    pub net: Net<Member>,
    /// The topic every member joined.
    pub topic: TopicId,
}

/// Builds the topic: each member joins through a random member already in it.
pub fn build(p: &GossipParams) -> GossipSim {
    let mut net: Net<Member> = Net::new(p.net.clone());
    let topic = TopicId::from_name("kith-sim");
    for i in 0..p.nodes {
        let key = SecretKey::generate(net.rng());
        let seed = net.rng().r#gen();
        let core = TopicCore::new(
            topic,
            key.clone(),
            NodeAddr::new(key.node_id()),
            p.config.clone(),
            seed,
        );
        let boot = if i == 0 { None } else { net.random_alive() };
        let boot_addr = boot.map(|b| net.actor(b).core.local_addr().clone());
        let idx = net.add(Member {
            core,
            delivered: HashMap::new(),
        });
        net.command(idx, |m, now| m.core.join(now, boot_addr));
        net.run_for(p.join_interval);
    }
    net.run_for(p.settle);
    GossipSim { net, topic }
}

impl GossipSim {
    /// Σ payload messages received so far by running members.
    fn payload_received(&self) -> u64 {
        self.net
            .alive()
            .iter()
            .map(|&i| self.net.actor(i).core.stats().payload_received)
            .sum()
    }

    /// Sends `count` broadcasts from random running members, `interval` apart, lets the
    /// last one finish, and reports.
    pub fn broadcasts(&mut self, count: usize, interval: Duration, payload: usize) -> BatchReport {
        let start_payload = self.payload_received();
        let mut sent: Vec<(MessageId, u32, Vec<u32>, Instant)> = Vec::new();
        for n in 0..count {
            let Some(src) = self.net.random_alive() else {
                break;
            };
            let alive = self.net.alive();
            let mut body = vec![0u8; payload.max(8)];
            body[..8].copy_from_slice(&(n as u64).to_le_bytes());
            let now = self.net.now();
            let id = self.net.command(src, |m, now| {
                m.core.broadcast(now, Bytes::from(body), Scope::Swarm)
            });
            if let Ok(id) = id {
                sent.push((id, src, alive, now));
            }
            self.net.run_for(interval);
        }
        self.net.run_for(Duration::from_secs(10));
        let mut r = BatchReport {
            broadcasts: sent.len(),
            payload_received: self.payload_received() - start_payload,
            ..BatchReport::default()
        };
        for (id, src, alive, at) in sent {
            let mut last = 0;
            let mut last_t = Duration::ZERO;
            for &i in &alive {
                if i == src || !self.net.is_alive(i) {
                    continue;
                }
                r.expected += 1;
                if let Some(&(hops, t)) = self.net.actor(i).delivered.get(&id) {
                    r.deliveries += 1;
                    last = last.max(hops);
                    last_t = last_t.max(t.saturating_duration_since(at));
                }
            }
            r.last_hops.push(last);
            r.last_delivery.push(last_t);
        }
        r
    }

    /// Crashes `fraction` of the running members at once, chosen at random.
    pub fn crash(&mut self, fraction: f64) -> usize {
        let mut alive = self.net.alive();
        let n = ((alive.len() as f64) * fraction).round() as usize;
        let mut killed = 0;
        while killed < n && !alive.is_empty() {
            let i = self.net.rng().gen_range(0..alive.len());
            let victim = alive.swap_remove(i);
            self.net.kill(victim);
            killed += 1;
        }
        killed
    }

    /// Running members whose active view is empty.
    pub fn isolated(&self) -> usize {
        self.net
            .alive()
            .iter()
            .filter(|&&i| self.net.actor(i).core.active_view().is_empty())
            .count()
    }

    /// Mean active-view size of running members.
    pub fn mean_active(&self) -> f64 {
        let alive = self.net.alive();
        let sum: usize = alive
            .iter()
            .map(|&i| self.net.actor(i).core.active_view().len())
            .sum();
        sum as f64 / alive.len().max(1) as f64
    }
}

/// What a full gossip run measured.
#[derive(Debug, Clone)]
pub struct GossipReport {
    /// Warm-up broadcasts (tree forming).
    pub warmup: BatchReport,
    /// Steady-state broadcasts.
    pub steady: BatchReport,
    /// Broadcasts after the crash and repair.
    pub after_crash: BatchReport,
    /// Members crashed.
    pub crashed: usize,
    /// Mean active view before the crash.
    pub mean_active: f64,
    /// Mean active view after the repair.
    pub mean_active_after: f64,
    /// Running members with no neighbour after the repair.
    pub isolated_after: usize,
}

impl GossipReport {
    /// Delivery ratio over all broadcasts before the crash.
    pub fn delivery(&self) -> f64 {
        let d = self.warmup.deliveries + self.steady.deliveries;
        let e = self.warmup.expected + self.steady.expected;
        if e == 0 { 0.0 } else { d as f64 / e as f64 }
    }
}

/// The whole scenario: build, warm up, measure, crash, repair, measure again.
pub fn run(p: &GossipParams) -> GossipReport {
    let mut sim = build(p);
    let mean_active = sim.mean_active();
    let warmup = sim.broadcasts(p.warmup, p.interval, p.payload);
    let steady = sim.broadcasts(p.measured, p.interval, p.payload);
    let crashed = sim.crash(p.crash_fraction);
    sim.net.run_for(p.repair);
    let mean_active_after = sim.mean_active();
    let isolated_after = sim.isolated();
    let after_crash = sim.broadcasts(p.after_crash, p.interval, p.payload);
    GossipReport {
        warmup,
        steady,
        after_crash,
        crashed,
        mean_active,
        mean_active_after,
        isolated_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lean(nodes: usize, seed: u64) -> GossipParams {
        GossipParams {
            settle: Duration::from_secs(30),
            warmup: 5,
            measured: 15,
            after_crash: 10,
            repair: Duration::from_secs(40),
            ..GossipParams::new(nodes, seed)
        }
    }

    #[test]
    fn broadcast_reaches_all_500_members_with_low_redundancy_and_survives_half_crashing() {
        let p = lean(500, 3);
        let r = run(&p);
        assert_eq!(r.delivery(), 1.0, "{r:?}");
        assert!(r.steady.rmr() <= 0.1, "steady-state rmr {}", r.steady.rmr());
        assert_eq!(r.crashed, 250);
        assert_eq!(r.isolated_after, 0);
        assert!(
            r.after_crash.delivery() >= 0.99,
            "delivery after crash {}",
            r.after_crash.delivery()
        );
    }

    #[test]
    fn views_stay_bounded_and_symmetric_enough_at_500_members() {
        let p = lean(500, 5);
        let sim = build(&p);
        let cfg = Config::default();
        for i in sim.net.alive() {
            let c = &sim.net.actor(i).core;
            assert!(!c.active_view().is_empty(), "member {i} isolated");
            assert!(c.active_view().len() <= cfg.active_view);
            assert!(c.passive_view().len() <= cfg.passive_view);
        }
        // Active views are symmetric: nearly every link is known at both ends.
        let (mut links, mut mutual) = (0, 0);
        for i in sim.net.alive() {
            let me = sim.net.actor(i).core.local_id();
            for a in sim.net.actor(i).core.active_view() {
                links += 1;
                let j = sim.net.index_of(&a.node_id).unwrap_or(i);
                if sim.net.actor(j).core.is_neighbor(&me) {
                    mutual += 1;
                }
            }
        }
        assert!(
            mutual as f64 >= 0.95 * links as f64,
            "{mutual} of {links} links mutual"
        );
    }
}
