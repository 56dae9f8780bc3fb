//! [`TopicCore`]: the sans-IO state machine of one topic — HyParView membership and
//! Plumtree broadcast.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kith_core::{NodeAddr, NodeId, SecretKey};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::cache::TimedCache;
use super::config::Config;
use super::message::{Body, Gossip, IHaveEntry, MAX_IHAVE, Message, MessageId, Scope, TopicId};

/// A message for the driver to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it (dial the address if there is no connection yet).
    pub to: NodeAddr,
    /// What to send.
    pub msg: Message,
}

/// Something the application should know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A broadcast arrived (once per message id, never for our own broadcasts).
    Received {
        /// The node that wrote and signed it (verified).
        author: NodeId,
        /// The neighbour that handed it to us (authenticated by the transport).
        from: NodeId,
        /// Its id.
        id: MessageId,
        /// The application's bytes.
        payload: Bytes,
        /// Whether it was a swarm or neighbour-only broadcast.
        scope: Scope,
        /// Hops it travelled from its author (1 for a direct neighbour).
        hops: u32,
    },
    /// A peer entered our active view.
    NeighborUp(NodeId),
    /// A peer left our active view (it failed, left, or was replaced).
    NeighborDown(NodeId),
}

/// Error starting a broadcast.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BroadcastError {
    /// The payload is larger than [`Config::max_message_size`].
    #[error("message of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Payload size.
        size: usize,
        /// Configured limit.
        max: usize,
    },
}

/// Counters of one topic core.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Payload (`Gossip`) messages received, duplicates included.
    pub payload_received: u64,
    /// Payload messages received that were already delivered.
    pub duplicates: u64,
    /// Broadcasts delivered to the application.
    pub delivered: u64,
    /// Payload messages sent (eager pushes and graft answers).
    pub payload_sent: u64,
    /// Messages dropped because their signature did not verify.
    pub bad_signature: u64,
    /// Messages dropped because they were over the configured size.
    pub oversize: u64,
    /// Messages dropped because they named another topic or broke a rule (for example a
    /// `Join` whose address is not the sender's).
    pub rejected: u64,
    /// `IHave` messages sent.
    pub ihave_sent: u64,
    /// Grafts sent.
    pub grafts_sent: u64,
    /// Prunes sent.
    pub prunes_sent: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PendingKind {
    Join,
    Neighbor,
}

#[derive(Debug, Clone)]
struct Pending {
    addr: NodeAddr,
    deadline: Instant,
    kind: PendingKind,
    /// The number of a neighbour request (0 for a join).
    request: u64,
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    /// Round of the copy we forward (hops from the author minus one, plus one).
    round: u32,
    /// The neighbour we got it from (`None` for our own broadcasts).
    from: Option<NodeId>,
}

#[derive(Debug, Clone)]
struct Missing {
    deadline: Instant,
    announcers: VecDeque<(NodeId, u32)>,
}

/// The sans-IO state machine of one topic: HyParView membership (active and passive
/// views, joins by random walk, shuffles, repair) and Plumtree broadcast (eager push
/// tree, lazy `IHave`, graft/prune, tree optimisation, bounded duplicate cache).
///
/// See the [module docs](super) for the driving contract.
#[derive(Debug)]
pub struct TopicCore {
    topic: TopicId,
    key: SecretKey,
    local: NodeAddr,
    cfg: Config,
    rng: StdRng,
    nonce: u64,
    // Membership.
    active: Vec<NodeAddr>,
    passive: Vec<NodeAddr>,
    pending: HashMap<NodeId, Pending>,
    next_shuffle: Option<Instant>,
    next_repair: Option<Instant>,
    repair_backoff: Duration,
    last_shuffle_sent: Vec<NodeId>,
    // Broadcast.
    eager: HashSet<NodeId>,
    lazy: HashSet<NodeId>,
    seen: TimedCache<MessageId, Seen>,
    history: HashMap<MessageId, Gossip>,
    history_order: VecDeque<(Instant, MessageId)>,
    missing: HashMap<MessageId, Missing>,
    lazy_queue: HashMap<NodeId, Vec<IHaveEntry>>,
    lazy_flush_at: Option<Instant>,
    /// The number of our last neighbour request (replies are matched by it).
    last_request: u64,
    /// Per peer, the newest history entry already announced to it.
    announced: TimedCache<NodeId, Instant>,
    // Output.
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: Stats,
}

impl TopicCore {
    /// A core for `topic`; `local` is how peers reach us (its id must be `key`'s),
    /// `seed` seeds every random choice.
    pub fn new(topic: TopicId, key: SecretKey, local: NodeAddr, config: Config, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let cfg = config.sanitized();
        let seen = TimedCache::new(cfg.dedup_capacity, cfg.dedup_ttl);
        let announced = TimedCache::new(cfg.active_view + cfg.passive_view, cfg.history_ttl);
        Self {
            topic,
            local: NodeAddr {
                node_id: key.node_id(),
                ..local
            },
            key,
            nonce: rng.r#gen(),
            rng,
            repair_backoff: cfg.repair_interval,
            cfg,
            active: Vec::new(),
            passive: Vec::new(),
            pending: HashMap::new(),
            next_shuffle: None,
            next_repair: None,
            last_shuffle_sent: Vec::new(),
            eager: HashSet::new(),
            lazy: HashSet::new(),
            seen,
            history: HashMap::new(),
            history_order: VecDeque::new(),
            missing: HashMap::new(),
            lazy_queue: HashMap::new(),
            lazy_flush_at: None,
            last_request: 0,
            announced,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// The topic.
    pub fn topic(&self) -> TopicId {
        self.topic
    }

    /// Our node id.
    pub fn local_id(&self) -> NodeId {
        self.local.node_id
    }

    /// How we advertise ourselves.
    pub fn local_addr(&self) -> &NodeAddr {
        &self.local
    }

    /// Updates how we advertise ourselves (for example when the endpoint learns a new
    /// address); the id cannot change.
    pub fn set_local_addr(&mut self, addr: NodeAddr) {
        if addr.node_id == self.local.node_id {
            self.local = addr;
        }
    }

    /// The configuration in use (after clamping).
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The active view: our neighbours.
    pub fn active_view(&self) -> &[NodeAddr] {
        &self.active
    }

    /// The passive view: backup peers.
    pub fn passive_view(&self) -> &[NodeAddr] {
        &self.passive
    }

    /// Neighbours we push payloads to eagerly (the broadcast tree's links).
    pub fn eager_peers(&self) -> impl Iterator<Item = &NodeId> {
        self.eager.iter()
    }

    /// Whether `id` is an active neighbour.
    pub fn is_neighbor(&self, id: &NodeId) -> bool {
        self.active.iter().any(|a| a.node_id == *id)
    }

    // ----- commands -----

    /// Joins the topic through `peers` (bootstrap nodes, or providers found in the DHT
    /// under [`TopicId::dht_key`]). May be called again with more peers at any time.
    pub fn join(&mut self, now: Instant, peers: impl IntoIterator<Item = NodeAddr>) {
        let me = self.local_id();
        let mut sent = 0;
        for p in peers {
            if p.node_id == me || self.is_neighbor(&p.node_id) {
                continue;
            }
            self.add_passive(p.clone());
            if sent < self.cfg.active_view && !self.pending.contains_key(&p.node_id) {
                self.send(
                    p.clone(),
                    Body::Join {
                        sender: self.local.clone(),
                    },
                );
                self.pending.insert(
                    p.node_id,
                    Pending {
                        addr: p,
                        deadline: now + self.cfg.request_timeout,
                        kind: PendingKind::Join,
                        request: 0,
                    },
                );
                sent += 1;
            }
        }
        self.arm_shuffle(now);
        self.schedule_repair(now + self.cfg.request_timeout);
    }

    /// Leaves the topic: tells every neighbour, and forgets all views.
    pub fn leave(&mut self, _now: Instant) {
        for a in std::mem::take(&mut self.active) {
            self.send(a.clone(), Body::Disconnect { alive: false });
            self.events.push_back(Event::NeighborDown(a.node_id));
        }
        self.passive.clear();
        self.pending.clear();
        self.eager.clear();
        self.lazy.clear();
        self.lazy_queue.clear();
        self.missing.clear();
        self.next_repair = None;
        self.next_shuffle = None;
        self.lazy_flush_at = None;
    }

    /// Broadcasts `payload`, signed with our key. Returns its id.
    ///
    /// With [`Scope::Swarm`] it reaches every member; with [`Scope::Neighbors`] only the
    /// current active view. With no neighbour at all it reaches nobody (check
    /// [`TopicCore::active_view`] first if that matters). Our own broadcasts are not
    /// reported back as [`Event::Received`].
    pub fn broadcast(
        &mut self,
        now: Instant,
        payload: Bytes,
        scope: Scope,
    ) -> Result<MessageId, BroadcastError> {
        if payload.len() > self.cfg.max_message_size {
            return Err(BroadcastError::TooLarge {
                size: payload.len(),
                max: self.cfg.max_message_size,
            });
        }
        self.nonce = self.nonce.wrapping_add(1);
        let g = Gossip::sign(&self.key, &self.topic, self.nonce, scope, payload);
        let id = g.id(&self.topic);
        self.remember(
            now,
            id,
            Seen {
                round: 0,
                from: None,
            },
        );
        match scope {
            Scope::Neighbors => {
                for a in self.active.clone() {
                    self.send_payload(a, g.clone());
                }
            }
            Scope::Swarm => self.forward(now, id, g, None),
        }
        Ok(id)
    }

    /// The driver could not reach `peer` (dial failed, connection lost, or its send
    /// queue overflowed): it leaves every view.
    pub fn peer_failed(&mut self, now: Instant, peer: NodeId) {
        self.remove_active(&peer);
        self.pending.remove(&peer);
        self.passive.retain(|p| p.node_id != peer);
        if self.active.len() < self.cfg.active_view {
            self.repair_backoff = self.cfg.repair_interval;
            self.schedule_repair(now);
        }
    }

    // ----- input -----

    /// Handles a message from `from` (the authenticated sender).
    pub fn handle_message(&mut self, now: Instant, from: NodeId, msg: Message) {
        if msg.topic != self.topic || from == self.local_id() {
            self.stats.rejected += 1;
            return;
        }
        match msg.body {
            Body::Join { sender } => {
                if sender.node_id != from {
                    self.stats.rejected += 1;
                    return;
                }
                self.on_join(now, sender);
            }
            Body::ForwardJoin { joiner, ttl } => self.on_forward_join(now, from, joiner, ttl),
            Body::Neighbor {
                sender,
                high_priority,
                request,
            } => {
                if sender.node_id != from {
                    self.stats.rejected += 1;
                    return;
                }
                self.on_neighbor(now, sender, high_priority, request);
            }
            Body::NeighborReply { accepted, request } => {
                self.on_neighbor_reply(now, from, accepted, request)
            }
            Body::Disconnect { alive } => self.on_disconnect(now, from, alive),
            Body::Shuffle { origin, ttl, nodes } => self.on_shuffle(from, origin, ttl, nodes),
            Body::ShuffleReply { nodes } => {
                let sent = std::mem::take(&mut self.last_shuffle_sent);
                self.integrate(nodes, &sent);
            }
            Body::Gossip(g) => self.on_gossip(now, from, g),
            Body::IHave(entries) => self.on_ihave(now, from, entries),
            Body::Graft { id, round } => self.on_graft(from, id, round),
            Body::Prune => {
                if self.eager.remove(&from) {
                    self.lazy.insert(from);
                }
            }
        }
    }

    /// Handles timers; call when the instant from [`TopicCore::poll_timeout`] has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        // Requests without an answer.
        let expired: Vec<NodeId> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(p) = self.pending.remove(&id) {
                if p.kind == PendingKind::Neighbor {
                    self.passive.retain(|a| a.node_id != id);
                }
                self.schedule_repair(now);
            }
        }
        if self.next_repair.is_some_and(|t| t <= now) {
            self.next_repair = None;
            self.repair(now);
        }
        if self.next_shuffle.is_some_and(|t| t <= now) {
            self.next_shuffle = None;
            self.shuffle();
            self.arm_shuffle(now);
        }
        if self.lazy_flush_at.is_some_and(|t| t <= now) {
            self.lazy_flush_at = None;
            self.flush_lazy();
        }
        let due: Vec<MessageId> = self
            .missing
            .iter()
            .filter(|(_, m)| m.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.graft_next(now, id);
        }
        self.expire(now);
    }

    // ----- output -----

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`TopicCore::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = [self.next_repair, self.next_shuffle, self.lazy_flush_at]
            .into_iter()
            .flatten()
            .min();
        let mut consider = |x: Instant| t = Some(t.map_or(x, |t| t.min(x)));
        for p in self.pending.values() {
            consider(p.deadline);
        }
        for m in self.missing.values() {
            consider(m.deadline);
        }
        t
    }

    // ----- membership -----

    fn send(&mut self, to: NodeAddr, body: Body) {
        self.transmits.push_back(Transmit {
            to,
            msg: Message {
                topic: self.topic,
                body,
            },
        });
    }

    fn addr_of(&self, id: &NodeId) -> Option<NodeAddr> {
        self.active.iter().find(|a| a.node_id == *id).cloned()
    }

    fn arm_shuffle(&mut self, now: Instant) {
        if self.next_shuffle.is_none() {
            let f = self.rng.gen_range(0.5..1.5);
            self.next_shuffle = Some(now + self.cfg.shuffle_interval.mul_f64(f));
        }
    }

    fn schedule_repair(&mut self, at: Instant) {
        if self.active.len() < self.cfg.active_view {
            self.next_repair = Some(self.next_repair.map_or(at, |t| t.min(at)));
        }
    }

    /// Adds `addr` to the active view, dropping a random neighbour if it is full.
    fn add_active(&mut self, now: Instant, addr: NodeAddr) {
        let id = addr.node_id;
        if id == self.local_id() || self.is_neighbor(&id) {
            return;
        }
        if self.active.len() >= self.cfg.active_view {
            let i = self.rng.gen_range(0..self.active.len());
            let dropped = self.active[i].node_id;
            if let Some(d) = self.remove_active(&dropped) {
                self.send(d.clone(), Body::Disconnect { alive: true });
                self.add_passive(d);
            }
        }
        self.passive.retain(|p| p.node_id != id);
        self.pending.remove(&id);
        self.active.push(addr.clone());
        self.lazy.remove(&id);
        self.eager.insert(id);
        self.events.push_back(Event::NeighborUp(id));
        self.announce_history(now, addr);
        if self.active.len() >= self.cfg.active_view {
            self.next_repair = None;
        }
    }

    /// Announces every broadcast still in our history (at most `history_capacity`, none
    /// older than `history_ttl`) to a new neighbour, as `IHave`s. A member that was
    /// between neighbours while a broadcast went by (neighbour churn, a healed split)
    /// grafts what it missed from whoever tells it first; a member that has it ignores
    /// the announcement. Each entry is announced to a peer once (while we remember the
    /// peer, for `history_ttl`): a peer that leaves and rejoins again and again gets only
    /// what is new, so it cannot make us send the whole history over and over.
    fn announce_history(&mut self, now: Instant, to: NodeAddr) {
        let since = self.announced.get(&to.node_id).copied();
        let entries: Vec<IHaveEntry> = self
            .history_order
            .iter()
            .filter(|(t, _)| since.is_none_or(|s| *t > s))
            .filter_map(|(_, id)| {
                self.history.get(id).map(|g| IHaveEntry {
                    id: *id,
                    round: g.round,
                })
            })
            .collect();
        if let Some(&(newest, _)) = self.history_order.back() {
            self.announced.insert(now, to.node_id, newest);
        }
        for chunk in entries.chunks(MAX_IHAVE) {
            self.stats.ihave_sent += 1;
            self.send(to.clone(), Body::IHave(chunk.to_vec()));
        }
    }

    fn remove_active(&mut self, id: &NodeId) -> Option<NodeAddr> {
        let i = self.active.iter().position(|a| a.node_id == *id)?;
        let a = self.active.swap_remove(i);
        self.eager.remove(id);
        self.lazy.remove(id);
        self.lazy_queue.remove(id);
        self.events.push_back(Event::NeighborDown(*id));
        Some(a)
    }

    fn add_passive(&mut self, addr: NodeAddr) {
        let id = addr.node_id;
        if id == self.local_id() || self.is_neighbor(&id) {
            return;
        }
        if let Some(p) = self.passive.iter_mut().find(|p| p.node_id == id) {
            *p = addr;
            return;
        }
        if self.passive.len() >= self.cfg.passive_view {
            let i = self.rng.gen_range(0..self.passive.len());
            self.passive.swap_remove(i);
        }
        self.passive.push(addr);
    }

    fn on_join(&mut self, now: Instant, sender: NodeAddr) {
        let joiner = sender.node_id;
        self.admit(now, sender.clone());
        let others: Vec<NodeAddr> = self
            .active
            .iter()
            .filter(|a| a.node_id != joiner)
            .cloned()
            .collect();
        for a in others {
            self.send(
                a,
                Body::ForwardJoin {
                    joiner: sender.clone(),
                    ttl: self.cfg.active_walk,
                },
            );
        }
    }

    /// Makes `addr` a neighbour and asks it (with high priority) to reciprocate.
    fn admit(&mut self, now: Instant, addr: NodeAddr) {
        if self.is_neighbor(&addr.node_id) {
            return;
        }
        self.add_active(now, addr.clone());
        self.send(
            addr,
            Body::Neighbor {
                sender: self.local.clone(),
                high_priority: true,
                request: 0,
            },
        );
    }

    fn on_forward_join(&mut self, now: Instant, from: NodeId, joiner: NodeAddr, ttl: u8) {
        if joiner.node_id == self.local_id() {
            return;
        }
        if ttl == 0 || self.active.len() <= 1 {
            self.admit(now, joiner);
            return;
        }
        if ttl == self.cfg.passive_walk {
            self.add_passive(joiner.clone());
        }
        let next: Vec<NodeAddr> = self
            .active
            .iter()
            .filter(|a| a.node_id != from && a.node_id != joiner.node_id)
            .cloned()
            .collect();
        match next.choose(&mut self.rng) {
            Some(n) => {
                let n = n.clone();
                self.send(
                    n,
                    Body::ForwardJoin {
                        joiner,
                        ttl: ttl - 1,
                    },
                );
            }
            None => self.admit(now, joiner),
        }
    }

    fn on_neighbor(&mut self, now: Instant, sender: NodeAddr, high_priority: bool, request: u64) {
        let id = sender.node_id;
        let accepted = if self.is_neighbor(&id) {
            true
        } else if high_priority || self.active.len() < self.cfg.active_view {
            self.add_active(now, sender.clone());
            true
        } else {
            self.add_passive(sender.clone());
            false
        };
        self.send(sender, Body::NeighborReply { accepted, request });
    }

    fn on_neighbor_reply(&mut self, now: Instant, from: NodeId, accepted: bool, request: u64) {
        let answers_pending = self
            .pending
            .get(&from)
            .is_some_and(|p| p.kind == PendingKind::Neighbor && p.request == request);
        let Some(p) = answers_pending
            .then(|| self.pending.remove(&from))
            .flatten()
        else {
            // An answer we no longer wait for: the request timed out, or the reply
            // answers an earlier request to the same peer (or one sent by `admit`, which
            // awaits none). Matching by number matters: taking an old acceptance for the
            // answer to a newer request would keep a peer that has meanwhile dropped us.
            // If the peer made us its neighbour, undo that so the views stay symmetric;
            // unless a newer request to it is still open: its answer, sent later, says
            // where the peer stands (a disconnect now would cross it and leave the peer
            // dropping us while we take its acceptance).
            if accepted && !self.is_neighbor(&from) && !self.pending.contains_key(&from) {
                // The reply came over a live connection: the id alone reaches the peer.
                let a = self
                    .passive
                    .iter()
                    .find(|a| a.node_id == from)
                    .cloned()
                    .unwrap_or_else(|| NodeAddr::new(from));
                self.send(a, Body::Disconnect { alive: true });
            }
            return;
        };
        if accepted {
            self.add_active(now, p.addr);
            self.repair_backoff = self.cfg.repair_interval;
        } else {
            // Everyone near us may be full: back off before asking again.
            self.repair_backoff = (self.repair_backoff * 2).min(self.cfg.shuffle_interval);
        }
        self.schedule_repair(now + self.repair_backoff);
    }

    fn on_disconnect(&mut self, now: Instant, from: NodeId, alive: bool) {
        if let Some(a) = self.remove_active(&from) {
            if alive {
                self.add_passive(a);
            }
            self.repair_backoff = self.cfg.repair_interval;
            self.schedule_repair(now);
        }
        if !alive {
            self.passive.retain(|p| p.node_id != from);
        }
    }

    /// Whether our next neighbour request must be accepted even by a full peer (which
    /// then drops one of its own neighbours at random): with fewer than half the target
    /// neighbours.
    ///
    /// HyParView proper asks with high priority only with no neighbour at all. A small
    /// group of members that ended up knowing only each other (each with a neighbour or
    /// two, every outside member full and refusing) then stays cut off for good: 4 of
    /// 2,000 seeded runs of 20 members joining at once. Escalating below half heals
    /// every one of them. A group whose members all keep at least half their target
    /// (at least `active_view / 2 + 1` members, well meshed) could still stay apart;
    /// escalating on persistent refusals as well would heal that too, but costs a
    /// neighbour change somewhere every few seconds in a large swarm (steady-state RMR
    /// 0.0007 → 0.07 at 1,000 members), so it is not done.
    fn escalate(&self) -> bool {
        self.active.len() < self.cfg.active_view.div_ceil(2)
    }

    /// Asks one passive peer to become a neighbour.
    fn repair(&mut self, now: Instant) {
        let asking = self
            .pending
            .values()
            .filter(|p| p.kind == PendingKind::Neighbor)
            .count();
        if self.active.len() + asking >= self.cfg.active_view {
            return;
        }
        let candidates: Vec<NodeAddr> = self
            .passive
            .iter()
            .filter(|p| !self.pending.contains_key(&p.node_id))
            .cloned()
            .collect();
        if let Some(c) = candidates.choose(&mut self.rng).cloned() {
            let high_priority = self.escalate();
            self.last_request += 1;
            let request = self.last_request;
            self.send(
                c.clone(),
                Body::Neighbor {
                    sender: self.local.clone(),
                    high_priority,
                    request,
                },
            );
            self.pending.insert(
                c.node_id,
                Pending {
                    addr: c,
                    deadline: now + self.cfg.request_timeout,
                    kind: PendingKind::Neighbor,
                    request,
                },
            );
        }
        let t = now + self.repair_backoff;
        self.schedule_repair(t);
    }

    fn shuffle(&mut self) {
        let Some(target) = self.active.choose(&mut self.rng).cloned() else {
            return;
        };
        let mut nodes = vec![self.local.clone()];
        let act: Vec<NodeAddr> = self
            .active
            .iter()
            .filter(|a| a.node_id != target.node_id)
            .cloned()
            .collect();
        nodes.extend(
            act.choose_multiple(&mut self.rng, self.cfg.shuffle_active)
                .cloned(),
        );
        nodes.extend(
            self.passive
                .choose_multiple(&mut self.rng, self.cfg.shuffle_passive)
                .cloned(),
        );
        self.last_shuffle_sent = nodes.iter().map(|n| n.node_id).collect();
        self.send(
            target,
            Body::Shuffle {
                origin: self.local.clone(),
                ttl: self.cfg.shuffle_walk,
                nodes,
            },
        );
    }

    fn on_shuffle(&mut self, from: NodeId, origin: NodeAddr, ttl: u8, nodes: Vec<NodeAddr>) {
        if origin.node_id == self.local_id() {
            return;
        }
        if ttl > 1 && self.active.len() > 1 {
            let next: Vec<NodeAddr> = self
                .active
                .iter()
                .filter(|a| a.node_id != from && a.node_id != origin.node_id)
                .cloned()
                .collect();
            if let Some(n) = next.choose(&mut self.rng).cloned() {
                self.send(
                    n,
                    Body::Shuffle {
                        origin,
                        ttl: ttl - 1,
                        nodes,
                    },
                );
                return;
            }
        }
        let reply: Vec<NodeAddr> = self
            .passive
            .choose_multiple(&mut self.rng, nodes.len())
            .cloned()
            .collect();
        let sent: Vec<NodeId> = reply.iter().map(|r| r.node_id).collect();
        self.send(origin, Body::ShuffleReply { nodes: reply });
        self.integrate(nodes, &sent);
    }

    /// Adds shuffled peers to the passive view, evicting first the ones in `prefer_evict`.
    fn integrate(&mut self, nodes: Vec<NodeAddr>, prefer_evict: &[NodeId]) {
        let mut evictable: Vec<NodeId> = prefer_evict.to_vec();
        for n in nodes {
            let id = n.node_id;
            if id == self.local_id()
                || self.is_neighbor(&id)
                || self.passive.iter().any(|p| p.node_id == id)
            {
                continue;
            }
            if self.passive.len() >= self.cfg.passive_view {
                let victim = loop {
                    match evictable.pop() {
                        Some(v) => {
                            if let Some(i) = self.passive.iter().position(|p| p.node_id == v) {
                                break Some(i);
                            }
                        }
                        None => break None,
                    }
                };
                let i = victim.unwrap_or_else(|| self.rng.gen_range(0..self.passive.len()));
                self.passive.swap_remove(i);
            }
            self.passive.push(n);
        }
    }

    // ----- broadcast -----

    fn send_payload(&mut self, to: NodeAddr, g: Gossip) {
        self.stats.payload_sent += 1;
        self.send(to, Body::Gossip(g));
    }

    fn remember(&mut self, now: Instant, id: MessageId, seen: Seen) {
        self.expire(now);
        self.seen.insert(now, id, seen);
    }

    fn expire(&mut self, now: Instant) {
        self.seen.expire(now);
        while let Some(&(t, id)) = self.history_order.front() {
            if now.saturating_duration_since(t) < self.cfg.history_ttl
                && self.history.len() <= self.cfg.history_capacity
            {
                break;
            }
            self.history_order.pop_front();
            self.history.remove(&id);
        }
    }

    /// Pushes a swarm broadcast to eager peers and queues announcements for lazy ones.
    /// `g.round` is the round of the copy we send.
    fn forward(&mut self, now: Instant, id: MessageId, g: Gossip, from: Option<NodeId>) {
        let eager: Vec<NodeAddr> = self
            .active
            .iter()
            .filter(|a| Some(a.node_id) != from && self.eager.contains(&a.node_id))
            .cloned()
            .collect();
        for a in eager {
            self.send_payload(a, g.clone());
        }
        let lazy: Vec<NodeId> = self
            .lazy
            .iter()
            .filter(|l| Some(**l) != from)
            .copied()
            .collect();
        for l in lazy {
            self.lazy_queue
                .entry(l)
                .or_default()
                .push(IHaveEntry { id, round: g.round });
        }
        if !self.lazy_queue.is_empty() && self.lazy_flush_at.is_none() {
            self.lazy_flush_at = Some(now + self.cfg.lazy_push_delay);
        }
        self.history.insert(id, g);
        self.history_order.push_back((now, id));
        self.expire(now);
    }

    fn flush_lazy(&mut self) {
        for (peer, entries) in std::mem::take(&mut self.lazy_queue) {
            let Some(addr) = self.addr_of(&peer) else {
                continue;
            };
            for chunk in entries.chunks(MAX_IHAVE) {
                self.stats.ihave_sent += 1;
                self.send(addr.clone(), Body::IHave(chunk.to_vec()));
            }
        }
    }

    fn on_gossip(&mut self, now: Instant, from: NodeId, mut g: Gossip) {
        self.stats.payload_received += 1;
        if g.payload.len() > self.cfg.max_message_size {
            self.stats.oversize += 1;
            return;
        }
        let signed = g.signed_bytes(&self.topic);
        let id = MessageId(*blake3::hash(&signed).as_bytes());
        if self.seen.contains(&id) {
            self.stats.duplicates += 1;
            if g.scope == Scope::Swarm && self.eager.remove(&from) {
                self.lazy.insert(from);
                if let Some(a) = self.addr_of(&from) {
                    self.stats.prunes_sent += 1;
                    self.send(a, Body::Prune);
                }
            }
            return;
        }
        if g.author.verify(&signed, &g.signature).is_err() {
            self.stats.bad_signature += 1;
            return;
        }
        self.missing.remove(&id);
        let hops = g.round.saturating_add(1);
        self.stats.delivered += 1;
        self.events.push_back(Event::Received {
            author: g.author,
            from,
            id,
            payload: g.payload.clone(),
            scope: g.scope,
            hops,
        });
        g.round = hops;
        self.remember(
            now,
            id,
            Seen {
                round: hops,
                from: Some(from),
            },
        );
        if g.scope == Scope::Neighbors {
            return;
        }
        if self.is_neighbor(&from) {
            self.lazy.remove(&from);
            self.eager.insert(from);
        }
        self.forward(now, id, g, Some(from));
    }

    fn on_ihave(&mut self, now: Instant, from: NodeId, entries: Vec<IHaveEntry>) {
        let threshold = self.cfg.optimization_threshold;
        for e in entries {
            if let Some(seen) = self.seen.get_mut(&e.id) {
                // Tree optimisation: the lazy link is much shorter than the eager path.
                let Some(parent) = seen.from else { continue };
                if parent != from
                    && seen.round >= e.round.saturating_add(threshold)
                    && self.lazy.contains(&from)
                {
                    seen.round = e.round;
                    seen.from = Some(from);
                    let (Some(lazy_addr), Some(parent_addr)) =
                        (self.addr_of(&from), self.addr_of(&parent))
                    else {
                        continue;
                    };
                    self.lazy.remove(&from);
                    self.eager.insert(from);
                    self.stats.grafts_sent += 1;
                    self.send(
                        lazy_addr,
                        Body::Graft {
                            id: None,
                            round: e.round,
                        },
                    );
                    if self.eager.remove(&parent) {
                        self.lazy.insert(parent);
                    }
                    self.stats.prunes_sent += 1;
                    self.send(parent_addr, Body::Prune);
                }
                continue;
            }
            if self.missing.len() >= self.cfg.dedup_capacity && !self.missing.contains_key(&e.id) {
                continue;
            }
            let deadline = now + self.cfg.graft_timeout_1;
            let m = self.missing.entry(e.id).or_insert_with(|| Missing {
                deadline,
                announcers: VecDeque::new(),
            });
            if m.announcers.len() < 2 * self.cfg.active_view
                && !m.announcers.iter().any(|(p, _)| *p == from)
            {
                m.announcers.push_back((from, e.round));
            }
        }
    }

    fn graft_next(&mut self, now: Instant, id: MessageId) {
        let Some(m) = self.missing.get_mut(&id) else {
            return;
        };
        while let Some((peer, round)) = m.announcers.pop_front() {
            if let Some(addr) = self.active.iter().find(|a| a.node_id == peer).cloned() {
                m.deadline = now + self.cfg.graft_timeout_2;
                self.lazy.remove(&peer);
                self.eager.insert(peer);
                self.stats.grafts_sent += 1;
                self.send(
                    addr,
                    Body::Graft {
                        id: Some(id),
                        round,
                    },
                );
                return;
            }
        }
        self.missing.remove(&id);
    }

    fn on_graft(&mut self, from: NodeId, id: Option<MessageId>, _round: u32) {
        let Some(addr) = self.addr_of(&from) else {
            return;
        };
        self.lazy.remove(&from);
        self.eager.insert(from);
        if let Some(g) = id.and_then(|id| self.history.get(&id)).cloned() {
            self.send_payload(addr, g);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SecretKey {
        SecretKey::from_bytes(&[n; 32])
    }

    fn core(n: u8, cfg: Config) -> TopicCore {
        let k = key(n);
        TopicCore::new(
            TopicId::from_name("t"),
            k.clone(),
            NodeAddr::new(k.node_id()),
            cfg,
            u64::from(n),
        )
    }

    /// Delivers every message among `cores` until quiet; returns the number delivered.
    fn pump(now: Instant, cores: &mut [TopicCore]) -> usize {
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
                if let Some(c) = cores.iter_mut().find(|c| c.local_id() == t.to.node_id) {
                    c.handle_message(now, from, t.msg);
                    moved += 1;
                }
            }
        }
    }

    fn received(c: &mut TopicCore) -> Vec<Bytes> {
        std::iter::from_fn(|| c.poll_event())
            .filter_map(|e| match e {
                Event::Received { payload, .. } => Some(payload),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn two_nodes_join_and_exchange() {
        let now = Instant::now();
        let mut cores = vec![core(1, Config::default()), core(2, Config::default())];
        let a = cores[0].local_addr().clone();
        cores[1].join(now, [a]);
        pump(now, &mut cores);
        assert!(cores[0].is_neighbor(&cores[1].local_id()));
        assert!(cores[1].is_neighbor(&cores[0].local_id()));
        let id = cores[1].broadcast(now, Bytes::from_static(b"hi"), Scope::Swarm);
        assert!(id.is_ok());
        pump(now, &mut cores);
        assert_eq!(received(&mut cores[0]), vec![Bytes::from_static(b"hi")]);
        assert!(
            received(&mut cores[1]).is_empty(),
            "no echo of own broadcast"
        );
    }

    #[test]
    fn oversize_broadcast_is_refused() {
        let cfg = Config {
            max_message_size: 10,
            ..Config::default()
        };
        let mut c = core(1, cfg);
        assert_eq!(
            c.broadcast(Instant::now(), Bytes::from(vec![0; 11]), Scope::Swarm),
            Err(BroadcastError::TooLarge { size: 11, max: 10 })
        );
        assert!(
            c.broadcast(Instant::now(), Bytes::from(vec![0; 10]), Scope::Swarm)
                .is_ok()
        );
    }

    #[test]
    fn chain_of_nodes_delivers_everything_once() {
        let now = Instant::now();
        let mut cores: Vec<TopicCore> = (1..=12).map(|n| core(n, Config::default())).collect();
        for i in 1..cores.len() {
            let boot = cores[i - 1].local_addr().clone();
            cores[i].join(now, [boot]);
            pump(now, &mut cores);
        }
        for c in &cores {
            assert!(!c.active_view().is_empty());
            assert!(c.active_view().len() <= 5);
        }
        for round in 0..5u8 {
            let src = usize::from(round) % cores.len();
            cores[src]
                .broadcast(now, Bytes::from(vec![round]), Scope::Swarm)
                .ok();
            pump(now, &mut cores);
            for (i, c) in cores.iter_mut().enumerate() {
                let got = received(c);
                if i == src {
                    assert!(got.is_empty());
                } else {
                    assert_eq!(got, vec![Bytes::from(vec![round])], "node {i}");
                }
            }
        }
        // With no timers firing, every duplicate was pruned: the eager links form a tree
        // and the last broadcasts travel without duplicates.
        let before: u64 = cores.iter().map(|c| c.stats().duplicates).sum();
        cores[3]
            .broadcast(now, Bytes::from_static(b"x"), Scope::Swarm)
            .ok();
        pump(now, &mut cores);
        let after: u64 = cores.iter().map(|c| c.stats().duplicates).sum();
        assert_eq!(after, before, "no duplicates once the tree is pruned");
    }

    #[test]
    fn forged_signature_is_dropped() {
        let now = Instant::now();
        let mut c = core(1, Config::default());
        let topic = c.topic();
        let mut g = Gossip::sign(
            &key(2),
            &topic,
            1,
            Scope::Swarm,
            Bytes::from_static(b"real"),
        );
        g.payload = Bytes::from_static(b"fake");
        c.handle_message(
            now,
            key(3).node_id(),
            Message {
                topic,
                body: Body::Gossip(g),
            },
        );
        assert_eq!(c.stats().bad_signature, 1);
        assert!(c.poll_event().is_none());
    }

    #[test]
    fn failed_neighbor_is_replaced_from_passive_view() {
        let now = Instant::now();
        let cfg = Config {
            active_view: 2,
            ..Config::default()
        };
        let mut c = core(1, cfg);
        let peers: Vec<NodeAddr> = (2..6).map(|n| NodeAddr::new(key(n).node_id())).collect();
        for p in &peers {
            c.add_passive(p.clone());
        }
        c.add_active(now, peers[0].clone());
        c.add_active(now, peers[1].clone());
        while c.poll_transmit().is_some() {}
        c.peer_failed(now, peers[0].node_id);
        assert!(!c.is_neighbor(&peers[0].node_id));
        let t = c.poll_timeout();
        assert_eq!(t, Some(now));
        c.handle_timeout(now);
        let asked = c.poll_transmit();
        let Some(Transmit { to, msg }) = asked else {
            panic!("no neighbor request")
        };
        assert!(matches!(
            msg.body,
            Body::Neighbor {
                high_priority: false,
                ..
            }
        ));
        c.handle_message(
            now,
            to.node_id,
            Message {
                topic: c.topic(),
                body: Body::NeighborReply {
                    accepted: true,
                    request: 1,
                },
            },
        );
        assert!(c.is_neighbor(&to.node_id));
        assert_eq!(c.active_view().len(), 2);
    }

    #[test]
    fn missing_message_is_grafted_after_ihave() {
        let now = Instant::now();
        let mut a = core(1, Config::default());
        let mut b = core(2, Config::default());
        a.add_active(now, b.local_addr().clone());
        b.add_active(now, a.local_addr().clone());
        while a.poll_transmit().is_some() {}
        while b.poll_transmit().is_some() {}
        // b is a lazy peer of a.
        a.eager.remove(&b.local_id());
        a.lazy.insert(b.local_id());
        let id = a
            .broadcast(now, Bytes::from_static(b"m"), Scope::Swarm)
            .ok();
        assert!(a.poll_transmit().is_none(), "no eager push to a lazy peer");
        let t = a.poll_timeout().unwrap_or(now);
        a.handle_timeout(t);
        let ihave = a.poll_transmit().map(|t| t.msg);
        assert!(
            matches!(&ihave, Some(Message { body: Body::IHave(e), .. }) if e.len() == 1 && Some(e[0].id) == id)
        );
        b.handle_message(t, a.local_id(), ihave.unwrap_or_else(|| unreachable!()));
        let t2 = b.poll_timeout().unwrap_or(t);
        assert_eq!(t2, t + Config::default().graft_timeout_1);
        b.handle_timeout(t2);
        let graft = b.poll_transmit().map(|t| t.msg);
        assert!(
            matches!(&graft, Some(Message { body: Body::Graft { id: g, .. }, .. }) if *g == id)
        );
        a.handle_message(t2, b.local_id(), graft.unwrap_or_else(|| unreachable!()));
        let gossip = a.poll_transmit().map(|t| t.msg);
        b.handle_message(t2, a.local_id(), gossip.unwrap_or_else(|| unreachable!()));
        assert_eq!(received(&mut b), vec![Bytes::from_static(b"m")]);
        assert!(a.eager.contains(&b.local_id()), "graft made the link eager");
    }

    /// A asked B twice (the first request timed out). B accepted the first and, having
    /// dropped A since, refused the second. Taking the old acceptance for the answer to
    /// the new request would leave A counting B as a neighbour while B does not count A.
    #[test]
    fn an_old_acceptance_does_not_answer_a_newer_request() {
        let now = Instant::now();
        let mut a = core(1, Config::default());
        let b = NodeAddr::new(key(2).node_id());
        let reply = |a: &TopicCore, accepted, request| Message {
            topic: a.topic(),
            body: Body::NeighborReply { accepted, request },
        };
        a.add_passive(b.clone());
        a.repair(now);
        let first = a.pending.get(&b.node_id).map(|p| p.request);
        let later = now + Config::default().request_timeout;
        a.handle_timeout(later);
        a.add_passive(b.clone());
        a.repair(later);
        let second = a.pending.get(&b.node_id).map(|p| p.request);
        assert!(first.is_some() && second.is_some() && first != second);
        while a.poll_transmit().is_some() {}
        let old_yes = reply(&a, true, first.unwrap_or_default());
        a.handle_message(later, b.node_id, old_yes);
        assert!(
            !a.is_neighbor(&b.node_id),
            "an old answer is not the answer"
        );
        assert!(
            a.poll_transmit().is_none(),
            "with a newer request open, its answer decides: no disconnect crosses it"
        );
        let new_no = reply(&a, false, second.unwrap_or_default());
        a.handle_message(later, b.node_id, new_no);
        assert!(!a.is_neighbor(&b.node_id));
        assert!(!a.pending.contains_key(&b.node_id), "the refusal answered");
        // With nothing open, an acceptance we do not want is undone at the peer.
        let stray_yes = reply(&a, true, first.unwrap_or_default());
        a.handle_message(later, b.node_id, stray_yes);
        let undo = a.poll_transmit().map(|t| t.msg.body);
        assert!(
            matches!(undo, Some(Body::Disconnect { alive: true })),
            "B's side of a stray acceptance is undone: {undo:?}"
        );
        assert!(!a.is_neighbor(&b.node_id));
    }

    #[test]
    fn new_neighbor_catches_up_on_recent_broadcasts() {
        let now = Instant::now();
        let mut cores = vec![
            core(1, Config::default()),
            core(2, Config::default()),
            core(3, Config::default()),
        ];
        let a = cores[0].local_addr().clone();
        cores[1].join(now, [a.clone()]);
        pump(now, &mut cores);
        let sent = cores[0]
            .broadcast(now, Bytes::from_static(b"before you came"), Scope::Swarm)
            .is_ok();
        assert!(sent);
        pump(now, &mut cores);
        assert_eq!(
            received(&mut cores[1]),
            vec![Bytes::from_static(b"before you came")]
        );
        // The third member joins afterwards: its new neighbours announce their history
        // and it grafts the broadcast it missed, once.
        cores[2].join(now, [a]);
        pump(now, &mut cores);
        let later = now + Config::default().graft_timeout_1;
        for c in cores.iter_mut() {
            if c.poll_timeout().is_some_and(|d| d <= later) {
                c.handle_timeout(later);
            }
        }
        pump(later, &mut cores);
        assert_eq!(
            received(&mut cores[2]),
            vec![Bytes::from_static(b"before you came")]
        );
        assert!(received(&mut cores[1]).is_empty(), "no second delivery");
        // A neighbour that leaves and comes back is not sent the same history again.
        let c = cores[2].local_id();
        let sent_before = cores[0].stats().ihave_sent;
        cores[0].on_disconnect(later, c, true);
        while cores[0].poll_transmit().is_some() {}
        let c_addr = cores[2].local_addr().clone();
        cores[0].add_active(later, c_addr);
        assert!(cores[0].is_neighbor(&c));
        assert_eq!(
            cores[0].stats().ihave_sent,
            sent_before,
            "nothing new to announce"
        );
    }

    /// Joins `n` members at once (each through a random earlier one), delivers messages
    /// in a seeded random order and runs timers for `secs` of virtual time; returns the
    /// connected components of the final overlay (active views).
    fn settle_concurrent_joins(n: u8, seed: u64, secs: u64) -> Vec<Vec<NodeId>> {
        let mut rng = StdRng::seed_from_u64(seed);
        let start = Instant::now();
        let mut cores: Vec<TopicCore> = (1..=n)
            .map(|i| {
                let k = key(i);
                TopicCore::new(
                    TopicId::from_name("t"),
                    k.clone(),
                    NodeAddr::new(k.node_id()),
                    Config::default(),
                    seed ^ u64::from(i),
                )
            })
            .collect();
        for i in 1..cores.len() {
            let contact = cores[rng.gen_range(0..i)].local_addr().clone();
            cores[i].join(start, [contact]);
        }
        let mut in_flight: Vec<(NodeId, Transmit)> = Vec::new();
        let step = Duration::from_millis(50);
        let mut now = start;
        while now < start + Duration::from_secs(secs) {
            for c in cores.iter_mut() {
                while let Some(t) = c.poll_transmit() {
                    in_flight.push((c.local_id(), t));
                }
            }
            // Deliver a random half of what is in flight; the rest waits a step.
            in_flight.shuffle(&mut rng);
            let keep = in_flight.len() / 2;
            for (from, t) in in_flight.split_off(keep) {
                if let Some(c) = cores.iter_mut().find(|c| c.local_id() == t.to.node_id) {
                    c.handle_message(now, from, t.msg);
                }
            }
            now += step;
            for c in cores.iter_mut() {
                if c.poll_timeout().is_some_and(|d| d <= now) {
                    c.handle_timeout(now);
                }
            }
        }
        let ids: Vec<NodeId> = cores.iter().map(|c| c.local_id()).collect();
        let mut seen: HashSet<NodeId> = HashSet::new();
        let mut components = Vec::new();
        for id in &ids {
            if !seen.insert(*id) {
                continue;
            }
            let mut comp = vec![*id];
            let mut k = 0;
            while k < comp.len() {
                let c = cores.iter().find(|c| c.local_id() == comp[k]);
                for a in c.map(|c| c.active_view()).unwrap_or(&[]) {
                    if seen.insert(a.node_id) {
                        comp.push(a.node_id);
                    }
                }
                k += 1;
            }
            components.push(comp);
        }
        components
    }

    /// 20 members joining at once can leave a small group that knows only itself, every
    /// outside member full and refusing it. With HyParView's plain priority rule (high
    /// only with no neighbour) seeds 1107, 1392, 1572 and 1786 of this range end split
    /// for good (groups of 2–3); escalating below half the target heals every one.
    #[test]
    fn concurrent_joins_end_in_one_connected_overlay() {
        let mut split = Vec::new();
        for seed in 1000..1800 {
            let comps = settle_concurrent_joins(20, seed, 100);
            if comps.len() > 1 {
                split.push((seed, comps.iter().map(Vec::len).collect::<Vec<_>>()));
            }
        }
        assert!(
            split.is_empty(),
            "partitioned overlays (seed, sizes): {split:?}"
        );
    }
}
