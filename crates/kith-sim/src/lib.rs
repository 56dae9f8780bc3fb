//! kith-sim: a deterministic discrete-event simulator for kith's sans-IO cores.
//!
//! [`Sim`] runs thousands of unmodified [`DhtCore`]s on a modelled network:
//!
//! * **virtual time**: a fixed base `Instant` plus a virtual offset; events sit in a
//!   binary heap ordered by (time, sequence number), so runs are reproducible;
//! * **seeded randomness**: one `StdRng` seeds every node, the topology and losses;
//! * **latency** from a coordinate model (each node has a point in a plane plus an
//!   access-link delay), so no N×N matrix is needed;
//! * **loss** per message, **churn** (nodes killed and replaced), and a **handshake
//!   cost** of one extra round trip on the first message to a peer without a warm
//!   connection (idle connections expire).
//!
//! Messages are passed as the domain [`Message`] type (the drivers' encoding is tested
//! separately). An optional adversary rewrites the responses of attacker nodes.
//!
//! ```
//! use std::time::Duration;
//! use kith_sim::{Sim, SimConfig};
//! use kith_overlay::dht::Config;
//!
//! let mut config = SimConfig::default();
//! config.seed = 7;
//! let mut sim = Sim::new(config);
//! let first = sim.add_node(Config::default(), None);
//! for _ in 0..20 {
//!     sim.add_node(Config::default(), Some(first));
//!     sim.run_for(Duration::from_millis(100));
//! }
//! sim.run_for(Duration::from_secs(30));
//! assert!(sim.core(first).routing_table().len() >= 15);
//! ```
#![deny(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod engine;
pub mod gossip;
pub mod gossip_cli;
pub mod gossip_net;
pub mod scenario;
pub mod search;
pub mod share;
pub mod share_cli;
pub mod site_cli;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use kith_core::{NodeAddr, NodeId, SecretKey};
use kith_overlay::dht::message::{Body, Response};
use kith_overlay::dht::{
    Config, DhtCore, Event, Key, Message, QueryId, QueryResult, QueryStats, Remote,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::engine::{Clock, EventQueue, Place, nanos};

/// Simulator parameters.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SimConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// Probability that a message is lost.
    pub loss: f64,
    /// One-way delay across the whole plane of coordinates.
    pub max_path_delay: Duration,
    /// Largest access-link delay added at each end (uniform from 1 ms).
    pub max_access_delay: Duration,
    /// Model a handshake round trip on the first message to a peer.
    pub handshake: bool,
    /// A connection unused for this long is closed (the next message pays a handshake).
    pub conn_idle: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            loss: 0.0,
            max_path_delay: Duration::from_millis(100),
            max_access_delay: Duration::from_millis(10),
            handshake: true,
            conn_idle: Duration::from_secs(120),
        }
    }
}

/// A node's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Follows the protocol.
    Honest,
    /// Answers every lookup with other attackers only and never returns a record.
    Attacker,
}

#[derive(Debug)]
struct SimNode {
    core: DhtCore,
    alive: bool,
    role: Role,
    place: Place,
    addr: SocketAddr,
    timer_at: Option<u64>,
    conns: HashMap<u32, u64>,
}

#[derive(Debug)]
enum EvKind {
    Deliver {
        to: u32,
        from: u32,
        msg: Box<Message>,
    },
    Timer {
        node: u32,
    },
}

/// A finished query, as reported by a node.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The node that ran it.
    pub node: u32,
    /// Its id on that node.
    pub id: QueryId,
    /// What it found.
    pub result: QueryResult,
    /// Its counters.
    pub stats: QueryStats,
}

/// Network-wide counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimStats {
    /// Messages handed to the network.
    pub sent: u64,
    /// Messages delivered.
    pub delivered: u64,
    /// Messages lost to the loss model.
    pub lost: u64,
    /// Messages addressed to dead or unknown nodes.
    pub undeliverable: u64,
    /// Handshakes paid.
    pub handshakes: u64,
}

/// The simulator. See the [crate docs](crate).
#[derive(Debug)]
pub struct Sim {
    cfg: SimConfig,
    clock: Clock,
    rng: StdRng,
    nodes: Vec<SimNode>,
    index: HashMap<NodeId, u32>,
    queue: EventQueue<EvKind>,
    finished: HashMap<(u32, QueryId), Finished>,
    attackers: Vec<NodeAddr>,
    stats: SimStats,
}

impl Sim {
    /// An empty network.
    pub fn new(cfg: SimConfig) -> Self {
        Self {
            rng: StdRng::seed_from_u64(cfg.seed),
            cfg,
            clock: Clock::new(),
            nodes: Vec::new(),
            index: HashMap::new(),
            queue: EventQueue::new(),
            finished: HashMap::new(),
            attackers: Vec::new(),
            stats: SimStats::default(),
        }
    }

    /// Current virtual time as an `Instant`.
    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    /// Virtual time elapsed since the start.
    pub fn elapsed(&self) -> Duration {
        self.clock.elapsed()
    }

    /// Network counters.
    pub fn stats(&self) -> SimStats {
        self.stats
    }

    /// The simulator's random source (for scenario choices).
    pub fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }

    /// Number of nodes ever added.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node was ever added.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Whether node `i` is running.
    pub fn is_alive(&self, i: u32) -> bool {
        self.nodes.get(i as usize).is_some_and(|n| n.alive)
    }

    /// The role of node `i`.
    pub fn role(&self, i: u32) -> Role {
        self.nodes[i as usize].role
    }

    /// Indexes of running honest nodes.
    pub fn alive_honest(&self) -> Vec<u32> {
        (0..self.nodes.len() as u32)
            .filter(|&i| {
                self.nodes[i as usize].alive && self.nodes[i as usize].role == Role::Honest
            })
            .collect()
    }

    /// A random running honest node.
    pub fn random_honest(&mut self) -> Option<u32> {
        let alive = self.alive_honest();
        if alive.is_empty() {
            return None;
        }
        Some(alive[self.rng.gen_range(0..alive.len())])
    }

    /// Node `i`'s core.
    pub fn core(&self, i: u32) -> &DhtCore {
        &self.nodes[i as usize].core
    }

    /// Adds an honest node with a fresh key and a random public IPv4 address, joining
    /// through `bootstrap` if given.
    pub fn add_node(&mut self, config: Config, bootstrap: Option<u32>) -> u32 {
        let id = SecretKey::generate(&mut self.rng).node_id();
        let ip = Ipv4Addr::from(self.rng.r#gen::<u32>() | 0x0100_0000);
        let addr = SocketAddr::new(ip.into(), 4433);
        self.add_node_with(id, addr, config, Role::Honest, bootstrap)
    }

    /// Adds a node with a given identity, address and role.
    pub fn add_node_with(
        &mut self,
        id: NodeId,
        addr: SocketAddr,
        config: Config,
        role: Role,
        bootstrap: Option<u32>,
    ) -> u32 {
        let i = self.nodes.len() as u32;
        let local = NodeAddr::new(id).with_direct([addr]);
        if role == Role::Attacker {
            self.attackers.push(local.clone());
        }
        let seed = self.rng.r#gen();
        let node = SimNode {
            core: DhtCore::new(local, config, seed),
            alive: true,
            role,
            place: Place::random(&mut self.rng, self.cfg.max_access_delay),
            addr,
            timer_at: None,
            conns: HashMap::new(),
        };
        self.nodes.push(node);
        self.index.insert(id, i);
        if let Some(b) = bootstrap {
            let seed_addr = self.nodes[b as usize].core.local_addr().clone();
            let now = self.now();
            self.nodes[i as usize]
                .core
                .start_bootstrap(now, vec![seed_addr]);
        }
        self.flush(i);
        i
    }

    /// Stops node `i` for good: messages to it are lost, its timers never fire.
    pub fn kill(&mut self, i: u32) {
        if let Some(n) = self.nodes.get_mut(i as usize) {
            n.alive = false;
            n.conns.clear();
        }
    }

    /// Runs a command on node `i`'s core at the current time and sends its output.
    pub fn command<R>(&mut self, i: u32, f: impl FnOnce(&mut DhtCore, Instant) -> R) -> R {
        let now = self.now();
        let r = f(&mut self.nodes[i as usize].core, now);
        self.flush(i);
        r
    }

    /// Sends `msg` from node `from` to node `to` as if `from`'s core had produced it
    /// (for injecting hostile or malformed-but-decodable traffic in tests).
    pub fn send_raw(&mut self, from: u32, to: u32, msg: Message) {
        let addr = self.nodes[to as usize].core.local_addr().clone();
        self.transmit(from, addr, msg);
    }

    /// Takes the result of query `id` on node `i`, if it finished.
    pub fn take_result(&mut self, i: u32, id: QueryId) -> Option<Finished> {
        self.finished.remove(&(i, id))
    }

    /// One-way delay between two nodes.
    pub fn one_way(&self, a: u32, b: u32) -> Duration {
        self.nodes[a as usize]
            .place
            .one_way(&self.nodes[b as usize].place, self.cfg.max_path_delay)
    }

    /// Median round-trip time over `samples` random pairs of nodes.
    pub fn median_rtt(&mut self, samples: usize) -> Duration {
        let n = self.nodes.len() as u32;
        if n < 2 {
            return Duration::ZERO;
        }
        let mut v: Vec<Duration> = (0..samples)
            .map(|_| {
                let a = self.rng.gen_range(0..n);
                let b = (a + self.rng.gen_range(1..n)) % n;
                self.one_way(a, b) * 2
            })
            .collect();
        v.sort();
        v[v.len() / 2]
    }

    fn push(&mut self, at: u64, kind: EvKind) {
        self.queue.push(at, kind);
    }

    /// Sends node `i`'s pending output into the network and re-arms its timer.
    fn flush(&mut self, i: u32) {
        while let Some(t) = self.nodes[i as usize].core.poll_transmit() {
            self.transmit(i, t.to, t.msg);
        }
        let now = self.now();
        while let Some(Event::QueryDone { id, result, stats }) =
            self.nodes[i as usize].core.poll_event()
        {
            let _ = now;
            self.finished.insert(
                (i, id),
                Finished {
                    node: i,
                    id,
                    result,
                    stats,
                },
            );
        }
        let node = &mut self.nodes[i as usize];
        if !node.alive {
            return;
        }
        if let Some(t) = node.core.poll_timeout() {
            let at = self.clock.ticks_at(t);
            if node.timer_at != Some(at) {
                node.timer_at = Some(at);
                self.push(at, EvKind::Timer { node: i });
            }
        }
    }

    fn transmit(&mut self, from: u32, to: NodeAddr, mut msg: Message) {
        self.stats.sent += 1;
        let Some(&dst) = self.index.get(&to.node_id) else {
            self.stats.undeliverable += 1;
            return;
        };
        if self.nodes[from as usize].role == Role::Attacker {
            self.adversary(&mut msg);
        }
        if self.cfg.loss > 0.0 && self.rng.gen_bool(self.cfg.loss.clamp(0.0, 1.0)) {
            self.stats.lost += 1;
            return;
        }
        let one_way = nanos(self.one_way(from, dst));
        let mut delay = one_way;
        if self.cfg.handshake {
            let idle = nanos(self.cfg.conn_idle);
            let now = self.clock.ticks();
            let warm = self.nodes[from as usize]
                .conns
                .get(&dst)
                .is_some_and(|&t| now.saturating_sub(t) < idle);
            if !warm {
                delay += 2 * one_way;
                self.stats.handshakes += 1;
            }
            let src = &mut self.nodes[from as usize];
            if src.conns.len() > 512 {
                src.conns.retain(|_, t| now.saturating_sub(*t) < idle);
            }
            src.conns.insert(dst, now + delay);
            let d = &mut self.nodes[dst as usize];
            if d.alive {
                d.conns.insert(from, now + delay);
            }
        }
        self.push(
            self.clock.ticks() + delay,
            EvKind::Deliver {
                to: dst,
                from,
                msg: Box::new(msg),
            },
        );
    }

    /// Attackers answer lookups with attackers only and never return records.
    fn adversary(&self, msg: &mut Message) {
        let fake: Vec<NodeAddr> = self.attackers.iter().take(20).cloned().collect();
        if let Body::Response(r) = &mut msg.body {
            match r {
                Response::Nodes { closer } => *closer = fake,
                Response::Value { record, closer } => {
                    *record = None;
                    *closer = fake;
                }
                Response::Providers { providers, closer } => {
                    providers.clear();
                    *closer = fake;
                }
                _ => {}
            }
        }
    }

    /// Processes events up to `now + d`, then sets the clock there.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.clock.ticks() + nanos(d);
        while let Some((at, kind)) = self.queue.pop_until(end) {
            self.clock.advance_to(at);
            match kind {
                EvKind::Deliver { to, from, msg } => {
                    if !self.nodes[to as usize].alive {
                        self.stats.undeliverable += 1;
                        continue;
                    }
                    self.stats.delivered += 1;
                    let now = self.now();
                    let remote = Remote {
                        id: self.nodes[from as usize].core.local_id(),
                        addr: Some(self.nodes[from as usize].addr),
                    };
                    self.nodes[to as usize]
                        .core
                        .handle_message(now, remote, *msg);
                    self.flush(to);
                }
                EvKind::Timer { node } => {
                    let n = &mut self.nodes[node as usize];
                    if !n.alive || n.timer_at != Some(at) {
                        continue;
                    }
                    n.timer_at = None;
                    let now = self.clock.now();
                    n.core.handle_timeout(now);
                    self.flush(node);
                }
            }
        }
        self.clock.advance_to(end);
    }

    /// Runs until query `id` on node `i` finishes or `limit` passes; returns its result.
    pub fn run_query(&mut self, i: u32, id: QueryId, limit: Duration) -> Option<Finished> {
        let step = Duration::from_millis(50);
        let mut waited = Duration::ZERO;
        loop {
            if let Some(f) = self.take_result(i, id) {
                return Some(f);
            }
            if waited >= limit {
                return None;
            }
            self.run_for(step);
            waited += step;
        }
    }

    /// Key of node `i`.
    pub fn key_of(&self, i: u32) -> Key {
        Key::from_node(&self.nodes[i as usize].core.local_id())
    }
}
