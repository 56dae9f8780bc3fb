//! A small generic discrete-event network for the unstructured-overlay cores (gossip
//! membership and broadcast, search).
//!
//! It follows the DHT simulator's model ([`crate::Sim`]) — virtual time, one seeded RNG,
//! latency from node coordinates plus access-link delays, optional loss, a handshake
//! round trip on the first message to a peer — and adds what membership protocols need:
//! a **connection-based failure detector**. When a node crashes, every peer with a
//! connection to it learns of the failure after a random delay in
//! [`NetConfig::detect_min`]..[`NetConfig::detect_max`] (what QUIC keep-alives and idle
//! timeouts give a real driver), and a message to a dead node fails back to its sender
//! after the same kind of delay.
//!
//! Any sans-IO core plugs in through the [`Actor`] trait.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kith_core::NodeId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::engine::{Clock, EventQueue, Place, nanos};

/// A sans-IO core as the network sees it.
pub trait Actor {
    /// The message type it exchanges.
    type Msg;
    /// Its node id.
    fn id(&self) -> NodeId;
    /// A message arrived from `from`.
    fn handle_message(&mut self, now: Instant, from: NodeId, msg: Self::Msg);
    /// Its timer fired.
    fn handle_timeout(&mut self, now: Instant);
    /// The connection to `peer` failed (or a message to it could not be delivered).
    fn peer_failed(&mut self, now: Instant, peer: NodeId);
    /// The next message to send.
    fn poll_transmit(&mut self) -> Option<(NodeId, Self::Msg)>;
    /// When its timer must fire next.
    fn poll_timeout(&self) -> Option<Instant>;
}

/// Network parameters.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NetConfig {
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
    /// Shortest time for a node to notice that a connected peer crashed.
    pub detect_min: Duration,
    /// Longest time for a node to notice that a connected peer crashed.
    pub detect_max: Duration,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            loss: 0.0,
            max_path_delay: Duration::from_millis(100),
            max_access_delay: Duration::from_millis(10),
            handshake: true,
            conn_idle: Duration::from_secs(120),
            detect_min: Duration::from_secs(1),
            detect_max: Duration::from_secs(10),
        }
    }
}

/// Network-wide counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Messages handed to the network.
    pub sent: u64,
    /// Messages delivered.
    pub delivered: u64,
    /// Messages lost to the loss model.
    pub lost: u64,
    /// Messages addressed to dead or unknown nodes.
    pub undeliverable: u64,
    /// Failures reported to nodes.
    pub failures_reported: u64,
}

#[derive(Debug)]
struct Slot<A> {
    actor: A,
    alive: bool,
    place: Place,
    timer_at: Option<u64>,
    /// Peer index → virtual time the connection was last used.
    conns: HashMap<u32, u64>,
}

#[derive(Debug)]
enum Kind<M> {
    Deliver { to: u32, from: u32, msg: Box<M> },
    Timer { node: u32 },
    Failed { node: u32, peer: NodeId },
}

/// The network. See the [module docs](self).
#[derive(Debug)]
pub struct Net<A: Actor> {
    cfg: NetConfig,
    clock: Clock,
    rng: StdRng,
    nodes: Vec<Slot<A>>,
    index: HashMap<NodeId, u32>,
    queue: EventQueue<Kind<A::Msg>>,
    stats: NetStats,
}

impl<A: Actor> Net<A> {
    /// An empty network.
    pub fn new(cfg: NetConfig) -> Self {
        Self {
            rng: StdRng::seed_from_u64(cfg.seed),
            cfg,
            clock: Clock::new(),
            nodes: Vec::new(),
            index: HashMap::new(),
            queue: EventQueue::new(),
            stats: NetStats::default(),
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
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// The network's random source (for scenario choices).
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

    /// Indexes of running nodes.
    pub fn alive(&self) -> Vec<u32> {
        (0..self.nodes.len() as u32)
            .filter(|&i| self.nodes[i as usize].alive)
            .collect()
    }

    /// A random running node.
    pub fn random_alive(&mut self) -> Option<u32> {
        let alive = self.alive();
        if alive.is_empty() {
            return None;
        }
        Some(alive[self.rng.gen_range(0..alive.len())])
    }

    /// Node `i`'s actor.
    pub fn actor(&self, i: u32) -> &A {
        &self.nodes[i as usize].actor
    }

    /// Node `i`'s actor, mutably (call [`Net::command`] instead if it may send).
    pub fn actor_mut(&mut self, i: u32) -> &mut A {
        &mut self.nodes[i as usize].actor
    }

    /// Index of the node with id `id`.
    pub fn index_of(&self, id: &NodeId) -> Option<u32> {
        self.index.get(id).copied()
    }

    /// Adds a node at a random position.
    pub fn add(&mut self, actor: A) -> u32 {
        let i = self.nodes.len() as u32;
        self.index.insert(actor.id(), i);
        let slot = Slot {
            actor,
            alive: true,
            place: Place::random(&mut self.rng, self.cfg.max_access_delay),
            timer_at: None,
            conns: HashMap::new(),
        };
        self.nodes.push(slot);
        self.flush(i);
        i
    }

    /// Crashes node `i`: it never runs again, and its connected peers learn of the
    /// failure after the detection delay.
    pub fn kill(&mut self, i: u32) {
        let Some(n) = self.nodes.get_mut(i as usize) else {
            return;
        };
        if !n.alive {
            return;
        }
        n.alive = false;
        n.conns.clear();
        let dead = n.actor.id();
        let idle = nanos(self.cfg.conn_idle);
        for j in 0..self.nodes.len() as u32 {
            let now = self.clock.ticks();
            let s = &mut self.nodes[j as usize];
            if !s.alive {
                continue;
            }
            if let Some(t) = s.conns.remove(&i) {
                if now.saturating_sub(t) < idle {
                    let d = self.detect_delay();
                    self.push(
                        now + d,
                        Kind::Failed {
                            node: j,
                            peer: dead,
                        },
                    );
                }
            }
        }
    }

    fn detect_delay(&mut self) -> u64 {
        let lo = nanos(self.cfg.detect_min);
        let hi = nanos(self.cfg.detect_max).max(lo + 1);
        self.rng.gen_range(lo..hi)
    }

    /// Runs a command on node `i`'s actor at the current time and sends its output.
    pub fn command<R>(&mut self, i: u32, f: impl FnOnce(&mut A, Instant) -> R) -> R {
        let now = self.now();
        let r = f(&mut self.nodes[i as usize].actor, now);
        self.flush(i);
        r
    }

    /// One-way delay between two nodes.
    pub fn one_way(&self, a: u32, b: u32) -> Duration {
        self.nodes[a as usize]
            .place
            .one_way(&self.nodes[b as usize].place, self.cfg.max_path_delay)
    }

    fn push(&mut self, at: u64, kind: Kind<A::Msg>) {
        self.queue.push(at, kind);
    }

    fn flush(&mut self, i: u32) {
        while let Some((to, msg)) = self.nodes[i as usize].actor.poll_transmit() {
            self.transmit(i, to, msg);
        }
        let node = &mut self.nodes[i as usize];
        if !node.alive {
            return;
        }
        if let Some(t) = node.actor.poll_timeout() {
            let at = self.clock.ticks_at(t);
            if node.timer_at != Some(at) {
                node.timer_at = Some(at);
                self.push(at, Kind::Timer { node: i });
            }
        }
    }

    fn transmit(&mut self, from: u32, to: NodeId, msg: A::Msg) {
        self.stats.sent += 1;
        let now = self.clock.ticks();
        let Some(&dst) = self.index.get(&to) else {
            self.stats.undeliverable += 1;
            let d = self.detect_delay();
            self.push(
                now + d,
                Kind::Failed {
                    node: from,
                    peer: to,
                },
            );
            return;
        };
        if self.cfg.loss > 0.0 && self.rng.gen_bool(self.cfg.loss.clamp(0.0, 1.0)) {
            self.stats.lost += 1;
            return;
        }
        let one_way = nanos(self.one_way(from, dst));
        let mut delay = one_way;
        if self.cfg.handshake {
            let idle = nanos(self.cfg.conn_idle);
            let warm = self.nodes[from as usize]
                .conns
                .get(&dst)
                .is_some_and(|&t| now.saturating_sub(t) < idle);
            if !warm {
                delay += 2 * one_way;
            }
        }
        if self.nodes[dst as usize].alive {
            self.nodes[from as usize].conns.insert(dst, now + delay);
            self.nodes[dst as usize].conns.insert(from, now + delay);
        }
        self.push(
            now + delay,
            Kind::Deliver {
                to: dst,
                from,
                msg: Box::new(msg),
            },
        );
    }

    /// Processes events up to `now + d`, then sets the clock there.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.clock.ticks() + nanos(d);
        while let Some((at, kind)) = self.queue.pop_until(end) {
            self.clock.advance_to(at);
            match kind {
                Kind::Deliver { to, from, msg } => {
                    if !self.nodes[to as usize].alive {
                        self.stats.undeliverable += 1;
                        if self.nodes[from as usize].alive {
                            let peer = self.nodes[to as usize].actor.id();
                            let d = self.detect_delay();
                            self.push(self.clock.ticks() + d, Kind::Failed { node: from, peer });
                        }
                        continue;
                    }
                    self.stats.delivered += 1;
                    let now = self.now();
                    let sender = self.nodes[from as usize].actor.id();
                    self.nodes[to as usize]
                        .actor
                        .handle_message(now, sender, *msg);
                    self.flush(to);
                }
                Kind::Timer { node } => {
                    let n = &mut self.nodes[node as usize];
                    if !n.alive || n.timer_at != Some(at) {
                        continue;
                    }
                    n.timer_at = None;
                    let now = self.clock.now();
                    n.actor.handle_timeout(now);
                    self.flush(node);
                }
                Kind::Failed { node, peer } => {
                    if !self.nodes[node as usize].alive {
                        continue;
                    }
                    self.stats.failures_reported += 1;
                    let now = self.now();
                    self.nodes[node as usize].actor.peer_failed(now, peer);
                    self.flush(node);
                }
            }
        }
        self.clock.advance_to(end);
    }
}
