//! [`DhtCore`]: the sans-IO Kademlia node — routing table, iterative queries, record
//! storage, expiry, republish and refresh. No sockets, no clock, no task spawning.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kith_core::{NodeAddr, NodeId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::config::Config;
use super::key::{Distance, Key, Subnet};
use super::message::{Body, ErrorCode, Message, Request, Response, StoreStatus};
use super::record::{Record, RecordError, RecordKind, RecordStore, StoreLimits};
use super::routing::{RoutingTable, TableConfig};

/// Identifies a query started on a [`DhtCore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueryId(pub u64);

/// The authenticated sender of a message: its id (proven by the transport) and the
/// address it was observed at, if the transport has addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remote {
    /// Authenticated node id.
    pub id: NodeId,
    /// Observed network address (used for the IP diversity caps).
    pub addr: Option<SocketAddr>,
}

/// A message the driver must deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Destination. For a response, the peer that sent the request.
    pub to: NodeAddr,
    /// The message.
    pub msg: Message,
}

/// Counters of one finished query.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueryStats {
    /// Requests sent (lookup and store phases).
    pub requests: u32,
    /// Responses received.
    pub responses: u32,
    /// Hops to the node that produced the result (for a get, the first holder found;
    /// otherwise the closest node that answered).
    pub hops: u32,
    /// Time from start to end.
    pub duration: Duration,
}

/// Why a get found nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GetError {
    /// The lookup converged without finding a valid record.
    #[error("record not found")]
    NotFound,
}

/// Why a put (or provider announcement) stored nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PutError {
    /// The record itself is invalid (bad signature, too large).
    #[error("invalid record: {0}")]
    Invalid(#[from] RecordError),
    /// No peer answered the lookup.
    #[error("no peers to store on")]
    NoPeers,
    /// Every storing node refused because its sequence did not match the CAS value.
    #[error("compare-and-swap failed: stored sequence {current:?}")]
    CasMismatch {
        /// A sequence number some node holds.
        current: Option<u64>,
    },
    /// Every storing node holds a newer record.
    #[error("a newer record is stored (sequence {current})")]
    Stale {
        /// The newer sequence number.
        current: u64,
    },
    /// The storing nodes refused or did not answer.
    #[error("no node accepted the record")]
    Rejected,
}

/// The result of a finished query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryResult {
    /// Closest nodes that answered, closest first.
    FindNode(Vec<NodeAddr>),
    /// The record found (for versioned records, the highest valid sequence seen).
    Get(Result<Record, GetError>),
    /// Number of nodes that stored the record.
    Put(Result<usize, PutError>),
    /// Number of nodes that stored the provider entry.
    AddProvider(Result<usize, PutError>),
    /// Providers found, with their addresses.
    GetProviders(Vec<NodeAddr>),
}

/// What the core reports to its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A query started by a command finished.
    QueryDone {
        /// Which query.
        id: QueryId,
        /// What it found.
        result: QueryResult,
        /// Its counters.
        stats: QueryStats,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CState {
    New,
    Waiting,
    Stalled,
    Ok,
    Failed,
}

#[derive(Debug, Clone)]
struct Cand {
    addr: NodeAddr,
    dist: Distance,
    subnet: Option<Subnet>,
    state: CState,
    hops: u8,
    /// For gets: the sequence (or 0 for immutable) of the record this node returned.
    had: Option<u64>,
}

#[derive(Debug, Default)]
struct Path {
    cands: Vec<Cand>,
    no_progress: usize,
}

#[derive(Debug, Clone)]
enum QKind {
    FindNode,
    Get(RecordKind),
    Put { record: Record, cas: Option<u64> },
    AddProvider,
    GetProviders,
}

#[derive(Debug, Default)]
struct StorePhase {
    outstanding: usize,
    ok: usize,
    statuses: Vec<StoreStatus>,
}

#[derive(Debug)]
struct Query {
    target: Key,
    kind: QKind,
    started: Instant,
    deadline: Instant,
    paths: Vec<Path>,
    used: HashSet<NodeId>,
    requests: u32,
    responses: u32,
    found: Option<(Record, u8)>,
    providers: Vec<NodeAddr>,
    store: Option<StorePhase>,
    /// Emit an event when done (internal refresh and republish queries do not).
    user: bool,
    /// Refresh every bucket when this (bootstrap) lookup ends.
    join: bool,
}

#[derive(Debug, Clone, Copy)]
enum Purpose {
    Lookup { qid: QueryId, path: usize },
    Store { qid: QueryId },
    Ping,
    Cache,
}

#[derive(Debug)]
struct Pending {
    to: NodeId,
    sent: Instant,
    deadline: Instant,
    stall_at: Option<Instant>,
    purpose: Purpose,
}

impl Pending {
    /// When the core must look at this request again.
    fn wake(&self) -> Instant {
        self.stall_at
            .map_or(self.deadline, |s| s.min(self.deadline))
    }
}

#[derive(Debug, Clone)]
enum Published {
    Record(Record),
    Provider,
}

#[derive(Debug, Clone, Copy)]
struct TokenBucket {
    tokens: f64,
    last: Instant,
}

/// Counters over the node's lifetime, for tests and the simulator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Requests sent.
    pub requests_sent: u64,
    /// Requests received.
    pub requests_received: u64,
    /// Requests refused by the rate limiter.
    pub rate_limited: u64,
    /// Records refused (forged, stale, CAS mismatch, too large).
    pub records_rejected: u64,
}

/// The sans-IO DHT node. See the [module docs](super) for the driving contract.
#[derive(Debug)]
pub struct DhtCore {
    cfg: Config,
    local: NodeAddr,
    local_key: Key,
    rng: StdRng,
    table: RoutingTable,
    store: RecordStore,
    queries: BTreeMap<QueryId, Query>,
    next_query: u64,
    pending: BTreeMap<u64, Pending>,
    /// Next wake-up (stall or deadline) of every pending request, earliest first.
    timers: BTreeSet<(Instant, u64)>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    published: BTreeMap<(Key, u8), Published>,
    rate: HashMap<NodeId, TokenBucket>,
    pinging: HashSet<NodeId>,
    seeds: Vec<NodeAddr>,
    next_refresh: Option<Instant>,
    next_republish: Option<Instant>,
    next_expire: Option<Instant>,
    /// When to check again for thin buckets after a join, and the current backoff.
    next_recheck: Option<Instant>,
    recheck_delay: Duration,
    /// Smoothed round-trip time over all answers, for adaptive stall detection.
    srtt: Option<Duration>,
    stats: NodeStats,
}

const EXPIRE_EVERY: Duration = Duration::from_secs(60);
const RECHECK_FIRST: Duration = Duration::from_secs(30);
const RECHECK_MAX: Duration = Duration::from_secs(3600);
const RECHECK_SLACK: usize = 3;
const RECHECK_BUCKETS: usize = 3;
const MIN_STALL: Duration = Duration::from_millis(200);

impl DhtCore {
    /// A node reachable at `local`, with all randomness drawn from `seed`.
    pub fn new(local: NodeAddr, config: Config, seed: u64) -> Self {
        let cfg = config.sanitized();
        let local_key = Key::from_node(&local.node_id);
        let table = RoutingTable::new(
            local_key,
            TableConfig {
                k: cfg.k,
                replacement_cache: cfg.replacement_cache,
                max_per_subnet: cfg.max_per_subnet,
                max_failures: cfg.max_failures,
            },
        );
        let store = RecordStore::new(StoreLimits {
            max_records: cfg.max_records,
            max_provider_keys: cfg.max_provider_keys,
            max_providers_per_key: cfg.max_providers_per_key,
        });
        Self {
            cfg,
            local,
            local_key,
            rng: StdRng::seed_from_u64(seed),
            table,
            store,
            queries: BTreeMap::new(),
            next_query: 1,
            pending: BTreeMap::new(),
            timers: BTreeSet::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            published: BTreeMap::new(),
            rate: HashMap::new(),
            pinging: HashSet::new(),
            seeds: Vec::new(),
            next_refresh: None,
            next_republish: None,
            next_expire: None,
            next_recheck: None,
            recheck_delay: RECHECK_FIRST,
            srtt: None,
            stats: NodeStats::default(),
        }
    }

    /// This node's id.
    pub fn local_id(&self) -> NodeId {
        self.local.node_id
    }

    /// The address this node advertises.
    pub fn local_addr(&self) -> &NodeAddr {
        &self.local
    }

    /// Changes the address this node advertises (for example after a NAT rebinding).
    pub fn set_local_addr(&mut self, addr: NodeAddr) {
        if addr.node_id == self.local.node_id {
            self.local = addr;
        }
    }

    /// The configuration in use (after clamping).
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The routing table.
    pub fn routing_table(&self) -> &RoutingTable {
        &self.table
    }

    /// Number of queries running (user and internal).
    pub fn active_queries(&self) -> usize {
        self.queries.len()
    }

    /// Lifetime counters.
    pub fn stats(&self) -> NodeStats {
        self.stats
    }

    /// Number of records and provider entries stored for others.
    pub fn stored_counts(&self) -> (usize, usize) {
        (self.store.len(), self.store.provider_count())
    }

    /// A record stored locally under `key`, if any (not expired).
    pub fn local_record(&self, now: Instant, key: &Key) -> Option<&Record> {
        self.store.get(now, key)
    }

    fn ensure_timers(&mut self, now: Instant) {
        if self.next_expire.is_none() {
            self.next_expire = Some(now + EXPIRE_EVERY);
            self.next_refresh = self.cfg.refresh_interval.map(|i| now + i);
            self.next_republish = self.cfg.republish_interval.map(|i| now + i);
        }
    }

    // ---------------------------------------------------------------- commands

    /// Joins the network through `seeds` (for example one bootstrap node): looks up the
    /// local id, then (with `refresh_on_join`) refreshes every bucket. The seeds are
    /// kept as a fallback for when the table runs empty.
    pub fn start_bootstrap(&mut self, now: Instant, seeds: Vec<NodeAddr>) -> QueryId {
        self.seeds = seeds
            .into_iter()
            .filter(|s| s.node_id != self.local.node_id)
            .take(64)
            .collect();
        let target = self.local_key;
        let id = self.start_query(now, target, QKind::FindNode, true, 1);
        if let Some(q) = self.queries.get_mut(&id) {
            q.join = true;
        }
        self.step(now, id);
        id
    }

    /// Finds the k nodes closest to `target`.
    pub fn start_find_node(&mut self, now: Instant, target: Key) -> QueryId {
        let paths = self.paths_for(false);
        let id = self.start_query(now, target, QKind::FindNode, true, paths);
        self.step(now, id);
        id
    }

    /// Gets the record of `kind` under `key`. Mutable and node-address gets use
    /// disjoint paths by default and return the highest valid sequence seen.
    pub fn start_get(&mut self, now: Instant, key: Key, kind: RecordKind) -> QueryId {
        let disjoint = kind != RecordKind::Immutable && self.cfg.disjoint_mutable_gets;
        let paths = self.paths_for(disjoint);
        let id = self.start_query(now, key, QKind::Get(kind), true, paths);
        if kind == RecordKind::Immutable {
            if let Some(r) = self.store.get(now, &key).cloned() {
                if let Some(q) = self.queries.get_mut(&id) {
                    q.found = Some((r, 0));
                }
                self.finish(now, id);
                return id;
            }
        } else if let Some(r) = self.store.get(now, &key).cloned() {
            // A copy this node stores counts as the first answer; the lookup still runs
            // for a higher sequence. (Without it, in a network of two, the one node
            // holding a record could never get it.)
            if r.validate_for(&key, kind, &self.cfg.limits).is_ok() {
                if let Some(q) = self.queries.get_mut(&id) {
                    q.found = Some((r, 0));
                }
            }
        }
        self.step(now, id);
        id
    }

    /// Resolves a node id to its signed addresses (a node-address get).
    pub fn start_resolve(&mut self, now: Instant, id: NodeId) -> QueryId {
        self.start_get(now, Key::from_node(&id), RecordKind::NodeAddr)
    }

    /// Stores `record` on the k closest nodes, and republishes it every
    /// `republish_interval` while this node runs. With `cas`, nodes store it only if
    /// their stored sequence equals `cas`.
    pub fn start_put(
        &mut self,
        now: Instant,
        record: Record,
        cas: Option<u64>,
    ) -> Result<QueryId, PutError> {
        record.validate(&self.cfg.limits)?;
        let key = record.key();
        // The publisher keeps a copy too: a lookup that reaches it finds the record even
        // when no other node stored it yet (it published before it had peers).
        let _ = self
            .store
            .put(now, record.clone(), cas, self.cfg.record_ttl);
        self.published.insert(
            (key, kind_tag(record.kind())),
            Published::Record(record.clone()),
        );
        let paths = self.paths_for(false);
        let id = self.start_query(now, key, QKind::Put { record, cas }, true, paths);
        self.step(now, id);
        Ok(id)
    }

    /// Announces this node as a provider of `key` (a content hash) on the k closest
    /// nodes, and re-announces it every `republish_interval`.
    pub fn start_add_provider(&mut self, now: Instant, key: Key) -> QueryId {
        self.published.insert((key, 3), Published::Provider);
        let paths = self.paths_for(false);
        let id = self.start_query(now, key, QKind::AddProvider, true, paths);
        self.step(now, id);
        id
    }

    /// Stops republishing what this node published under `key`.
    pub fn unpublish(&mut self, key: &Key) {
        self.published.retain(|(k, _), _| k != key);
    }

    /// Finds providers of `key`.
    pub fn start_get_providers(&mut self, now: Instant, key: Key) -> QueryId {
        let paths = self.paths_for(false);
        let id = self.start_query(now, key, QKind::GetProviders, true, paths);
        self.step(now, id);
        id
    }

    fn paths_for(&self, disjoint: bool) -> usize {
        if disjoint || self.cfg.disjoint_all {
            self.cfg.disjoint_paths
        } else {
            1
        }
    }

    fn start_query(
        &mut self,
        now: Instant,
        target: Key,
        kind: QKind,
        user: bool,
        paths: usize,
    ) -> QueryId {
        self.ensure_timers(now);
        let id = QueryId(self.next_query);
        self.next_query += 1;
        let mut q = Query {
            target,
            kind,
            started: now,
            deadline: now + self.cfg.query_timeout,
            paths: (0..paths).map(|_| Path::default()).collect(),
            used: HashSet::new(),
            requests: 0,
            responses: 0,
            found: None,
            providers: Vec::new(),
            store: None,
            user,
            join: false,
        };
        let mut seeds: Vec<(NodeAddr, Option<Subnet>)> = self
            .table
            .closest(&target, self.cfg.k)
            .into_iter()
            .map(|e| (e.addr.clone(), e.subnet))
            .collect();
        if seeds.len() < self.cfg.k {
            for s in &self.seeds {
                if !seeds.iter().any(|(a, _)| a.node_id == s.node_id) {
                    let subnet = self.claimed_subnet(s);
                    seeds.push((s.clone(), subnet));
                }
            }
        }
        for (i, (addr, subnet)) in seeds.into_iter().enumerate() {
            let p = i % paths;
            self.add_cand(&mut q, p, addr, subnet, 1);
        }
        self.table.mark_refreshed(&target, now);
        self.queries.insert(id, q);
        id
    }

    fn claimed_subnet(&self, a: &NodeAddr) -> Option<Subnet> {
        a.direct
            .first()
            .and_then(|s| Subnet::of(s.ip(), self.cfg.exempt_loopback))
    }

    /// Adds a candidate to a path unless it is known, is us, or its subnet is full.
    fn add_cand(
        &self,
        q: &mut Query,
        path: usize,
        addr: NodeAddr,
        subnet: Option<Subnet>,
        hops: u8,
    ) -> Option<Distance> {
        if addr.node_id == self.local.node_id || q.used.contains(&addr.node_id) {
            return None;
        }
        let p = &mut q.paths[path];
        if let (Some(s), cap) = (subnet, self.cfg.lookup_max_per_subnet) {
            if cap > 0 && p.cands.iter().filter(|c| c.subnet == Some(s)).count() >= cap {
                return None;
            }
        }
        let dist = Key::from_node(&addr.node_id).distance(&q.target);
        let max = self.cfg.k * 3;
        let at = p.cands.partition_point(|c| c.dist < dist);
        if at >= max {
            return None;
        }
        q.used.insert(addr.node_id);
        p.cands.insert(
            at,
            Cand {
                addr,
                dist,
                subnet,
                state: CState::New,
                hops,
                had: None,
            },
        );
        p.cands.truncate(max);
        Some(dist)
    }

    // ----------------------------------------------------------- query engine

    fn step(&mut self, now: Instant, qid: QueryId) {
        let Some(q) = self.queries.get(&qid) else {
            return;
        };
        if q.store.is_some() {
            return;
        }
        let (k, alpha) = (self.cfg.k, self.cfg.alpha);
        let mut sends: Vec<(usize, NodeAddr)> = Vec::new();
        let mut all_done = true;
        for (pi, p) in q.paths.iter().enumerate() {
            let parallel = if p.no_progress >= alpha { k } else { alpha };
            let mut inflight = p
                .cands
                .iter()
                .filter(|c| c.state == CState::Waiting)
                .count();
            let mut active = false;
            // A stalled peer is passed over like a failed one (the next candidate takes
            // its place among the k closest); a late answer from it still counts.
            let live = |c: &&Cand| !matches!(c.state, CState::Failed | CState::Stalled);
            for c in p.cands.iter().filter(live).take(k) {
                match c.state {
                    CState::New => {
                        active = true;
                        if inflight < parallel {
                            inflight += 1;
                            sends.push((pi, c.addr.clone()));
                        }
                    }
                    CState::Waiting => active = true,
                    CState::Ok | CState::Failed | CState::Stalled => {}
                }
            }
            all_done &= !active;
        }
        if all_done {
            self.finish(now, qid);
            return;
        }
        for (pi, addr) in sends {
            let req = match &self.queries[&qid].kind {
                QKind::FindNode | QKind::Put { .. } | QKind::AddProvider => Request::FindNode {
                    target: self.queries[&qid].target,
                },
                QKind::Get(kind) => Request::Get {
                    key: self.queries[&qid].target,
                    kind: *kind,
                },
                QKind::GetProviders => Request::GetProviders {
                    key: self.queries[&qid].target,
                },
            };
            let id = addr.node_id;
            if let Some(q) = self.queries.get_mut(&qid) {
                q.requests += 1;
                if let Some(c) = q.paths[pi].cands.iter_mut().find(|c| c.addr.node_id == id) {
                    c.state = CState::Waiting;
                }
            }
            self.send_request(now, addr, req, Purpose::Lookup { qid, path: pi });
        }
    }

    fn send_request(&mut self, now: Instant, to: NodeAddr, req: Request, purpose: Purpose) {
        let txid = loop {
            let t: u64 = self.rng.r#gen();
            if !self.pending.contains_key(&t) {
                break t;
            }
        };
        let stall = self.stall_after();
        let stall_at = matches!(purpose, Purpose::Lookup { .. }).then(|| now + stall);
        let p = Pending {
            to: to.node_id,
            sent: now,
            deadline: now + self.cfg.request_timeout,
            stall_at,
            purpose,
        };
        self.timers.insert((p.wake(), txid));
        self.pending.insert(txid, p);
        self.stats.requests_sent += 1;
        let msg = self.message(txid, Body::Request(req));
        self.transmits.push_back(Transmit { to, msg });
    }

    /// How long a lookup request may go unanswered before it stops counting against α:
    /// three smoothed RTTs (enough for a handshake plus the request), at least
    /// `MIN_STALL`, at most `stall_timeout`.
    fn stall_after(&self) -> Duration {
        match self.srtt {
            Some(rtt) => (rtt * 3).clamp(
                MIN_STALL.min(self.cfg.stall_timeout),
                self.cfg.stall_timeout,
            ),
            None => self.cfg.stall_timeout,
        }
    }

    fn message(&self, txid: u64, body: Body) -> Message {
        Message {
            txid,
            sender: Some(self.local.clone()),
            client_mode: self.cfg.client_mode,
            body,
        }
    }

    fn on_lookup_response(
        &mut self,
        now: Instant,
        qid: QueryId,
        path: usize,
        from: NodeId,
        resp: Response,
    ) {
        let limits = self.cfg.limits;
        let providers_wanted = self.cfg.providers_wanted;
        let Some(mut q) = self.queries.remove(&qid) else {
            return;
        };
        q.responses += 1;
        let Some(ci) = q.paths[path]
            .cands
            .iter()
            .position(|c| c.addr.node_id == from)
        else {
            self.queries.insert(qid, q);
            return;
        };
        let hops = q.paths[path].cands[ci].hops;
        let best_ok = q.paths[path]
            .cands
            .iter()
            .find(|c| c.state == CState::Ok)
            .map(|c| c.dist);
        let (closer, record, providers) = match resp {
            Response::Nodes { closer } => (closer, None, Vec::new()),
            Response::Value { record, closer } => (closer, record, Vec::new()),
            Response::Providers { providers, closer } => (closer, None, providers),
            _ => {
                // An error or a mismatched response: the peer is of no help.
                q.paths[path].cands[ci].state = CState::Failed;
                self.queries.insert(qid, q);
                self.step(now, qid);
                return;
            }
        };
        q.paths[path].cands[ci].state = CState::Ok;
        let mut early = false;
        if let (Some(r), QKind::Get(kind)) = (record, &q.kind) {
            match r.validate_for(&q.target, *kind, &limits) {
                Ok(()) => {
                    q.paths[path].cands[ci].had = Some(r.seq().unwrap_or(0));
                    let better = match &q.found {
                        None => true,
                        Some((old, _)) => r.seq() > old.seq(),
                    };
                    if better {
                        q.found = Some((r, hops));
                    }
                    early = *kind == RecordKind::Immutable;
                }
                Err(_) => self.stats.records_rejected += 1,
            }
        }
        if matches!(q.kind, QKind::GetProviders) {
            for p in providers {
                if !q.providers.iter().any(|x| x.node_id == p.node_id)
                    && q.providers.len() < providers_wanted
                {
                    q.providers.push(p);
                }
            }
            early = q.providers.len() >= providers_wanted;
        }
        let mut progress = false;
        for a in closer.into_iter().take(self.cfg.k) {
            let subnet = self.claimed_subnet(&a);
            if let Some(d) = self.add_cand(&mut q, path, a, subnet, hops.saturating_add(1)) {
                progress |= best_ok.is_none_or(|b| d < b);
            }
        }
        let p = &mut q.paths[path];
        p.no_progress = if progress { 0 } else { p.no_progress + 1 };
        self.queries.insert(qid, q);
        if early {
            self.finish(now, qid);
        } else {
            self.step(now, qid);
        }
    }

    fn on_lookup_failure(&mut self, now: Instant, qid: QueryId, path: usize, to: NodeId) {
        if let Some(q) = self.queries.get_mut(&qid) {
            if let Some(c) = q
                .paths
                .get_mut(path)
                .and_then(|p| p.cands.iter_mut().find(|c| c.addr.node_id == to))
            {
                c.state = CState::Failed;
            }
            self.step(now, qid);
        }
    }

    /// The k closest candidates that answered, over all paths, closest first.
    fn answered(q: &Query, k: usize) -> Vec<&Cand> {
        let mut all: Vec<&Cand> = q
            .paths
            .iter()
            .flat_map(|p| p.cands.iter())
            .filter(|c| c.state == CState::Ok)
            .collect();
        all.sort_by_key(|c| c.dist);
        all.truncate(k);
        all
    }

    fn finish(&mut self, now: Instant, qid: QueryId) {
        let Some(mut q) = self.queries.remove(&qid) else {
            return;
        };
        let k = self.cfg.k;
        let hops_closest = Self::answered(&q, 1).first().map_or(0, |c| c.hops);
        let result = match &q.kind {
            QKind::FindNode => QueryResult::FindNode(
                Self::answered(&q, k)
                    .into_iter()
                    .map(|c| c.addr.clone())
                    .collect(),
            ),
            QKind::Get(_) => {
                if let Some((rec, _)) = &q.found {
                    if self.cfg.cache_on_get {
                        let best = rec.seq().unwrap_or(0);
                        let target = Self::answered(&q, k)
                            .into_iter()
                            .find(|c| c.had.is_none_or(|s| s < best))
                            .map(|c| c.addr.clone());
                        if let Some(t) = target {
                            let req = Request::Put {
                                record: rec.clone(),
                                cas: None,
                            };
                            self.send_request(now, t, req, Purpose::Cache);
                        }
                    }
                }
                QueryResult::Get(q.found.clone().map(|(r, _)| r).ok_or(GetError::NotFound))
            }
            QKind::GetProviders => QueryResult::GetProviders(q.providers.clone()),
            QKind::Put { .. } | QKind::AddProvider => {
                if q.store.is_none() {
                    // Lookup done: store on the k closest that answered.
                    let targets: Vec<NodeAddr> = Self::answered(&q, k)
                        .into_iter()
                        .map(|c| c.addr.clone())
                        .collect();
                    if !targets.is_empty() {
                        let req = match &q.kind {
                            QKind::Put { record, cas } => Request::Put {
                                record: record.clone(),
                                cas: *cas,
                            },
                            _ => Request::AddProvider { key: q.target },
                        };
                        q.store = Some(StorePhase {
                            outstanding: targets.len(),
                            ..StorePhase::default()
                        });
                        q.requests += targets.len() as u32;
                        q.deadline = q.deadline.max(now + self.cfg.request_timeout);
                        self.queries.insert(qid, q);
                        for t in targets {
                            self.send_request(now, t, req.clone(), Purpose::Store { qid });
                        }
                        return;
                    }
                }
                let r = store_result(q.store.as_ref());
                if matches!(q.kind, QKind::Put { .. }) {
                    QueryResult::Put(r)
                } else {
                    QueryResult::AddProvider(r)
                }
            }
        };
        if q.join {
            if self.cfg.refresh_on_join {
                self.refresh(now, true);
            }
            self.recheck_delay = RECHECK_FIRST;
            self.next_recheck = Some(now + RECHECK_FIRST);
        }
        if q.user {
            let hops = match &q.found {
                Some((_, h)) => *h,
                None => hops_closest,
            };
            self.events.push_back(Event::QueryDone {
                id: qid,
                result,
                stats: QueryStats {
                    requests: q.requests,
                    responses: q.responses,
                    hops: u32::from(hops),
                    duration: now.saturating_duration_since(q.started),
                },
            });
        }
    }

    fn on_store_done(&mut self, now: Instant, qid: QueryId, status: Option<StoreStatus>) {
        let Some(q) = self.queries.get_mut(&qid) else {
            return;
        };
        if let Some(st) = q.store.as_mut() {
            st.outstanding = st.outstanding.saturating_sub(1);
            if let Some(s) = status {
                q.responses += 1;
                if s == StoreStatus::Ok {
                    st.ok += 1;
                }
                st.statuses.push(s);
            }
            if st.outstanding == 0 {
                self.finish(now, qid);
            }
        }
    }

    fn refresh(&mut self, now: Instant, all: bool) {
        let interval = if all {
            Duration::ZERO
        } else {
            self.cfg.refresh_interval.unwrap_or(Duration::MAX)
        };
        let mut targets = Vec::new();
        if !all {
            targets.push(self.local_key);
        }
        for b in self.table.stale_buckets(now, interval, all) {
            let t = self.local_key.random_with_prefix(b, &mut self.rng);
            targets.push(t);
        }
        for t in targets {
            let id = self.start_query(now, t, QKind::FindNode, false, 1);
            self.step(now, id);
        }
    }

    /// After a join, checks for thin buckets (for example after joining through a node
    /// that knew few peers, or losing answers to packet loss, a node can end up in a
    /// small clique that only knows itself) and refreshes them, backing off while the
    /// network stays too small to fill them.
    fn recheck(&mut self, now: Instant) {
        let thin = if self.table.len() < self.cfg.k {
            self.table.stale_buckets(now, Duration::ZERO, true)
        } else {
            self.table.deficient_buckets(self.cfg.k / 2, RECHECK_SLACK)
        };
        if thin.is_empty() {
            self.next_recheck = None;
            return;
        }
        // The shallowest thin buckets matter most (they cover most of the network);
        // a few per round bound the cost for nodes whose deep buckets are empty by
        // nature, for example ids in a dense cluster.
        let targets: Vec<Key> = thin
            .into_iter()
            .take(RECHECK_BUCKETS)
            .map(|b| self.local_key.random_with_prefix(b, &mut self.rng))
            .collect();
        for t in targets {
            let id = self.start_query(now, t, QKind::FindNode, false, 1);
            self.step(now, id);
        }
        let cap = self
            .cfg
            .refresh_interval
            .unwrap_or(RECHECK_MAX)
            .min(RECHECK_MAX);
        self.recheck_delay = (self.recheck_delay * 2).min(cap);
        self.next_recheck = Some(now + self.recheck_delay);
    }

    fn republish(&mut self, now: Instant) {
        let items: Vec<((Key, u8), Published)> = self
            .published
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        for ((key, _), item) in items {
            let kind = match item {
                Published::Record(record) => QKind::Put { record, cas: None },
                Published::Provider => QKind::AddProvider,
            };
            let id = self.start_query(now, key, kind, false, 1);
            self.step(now, id);
        }
    }

    // --------------------------------------------------------------- inputs

    /// Handles a message from an authenticated peer.
    pub fn handle_message(&mut self, now: Instant, from: Remote, msg: Message) {
        self.ensure_timers(now);
        // The advertised address counts only if it names the authenticated sender.
        let sender = msg.sender.filter(|a| a.node_id == from.id);
        match msg.body {
            Body::Request(req) => {
                self.handle_request(now, from, msg.txid, sender, msg.client_mode, req)
            }
            Body::Response(resp) => {
                let Some(p) = self.pending.get(&msg.txid) else {
                    return;
                };
                if p.to != from.id {
                    return;
                }
                let Some(p) = self.remove_pending(msg.txid) else {
                    return;
                };
                let rate_limited = matches!(resp, Response::Error(ErrorCode::RateLimited));
                let sample = now.saturating_duration_since(p.sent);
                self.srtt = Some(self.srtt.map_or(sample, |s| (s * 7 + sample) / 8));
                if !msg.client_mode && !rate_limited {
                    if let Some(addr) = sender {
                        let subnet = from
                            .addr
                            .and_then(|a| Subnet::of(a.ip(), self.cfg.exempt_loopback));
                        let rtt = now.saturating_duration_since(p.sent);
                        self.table.on_response(now, addr, subnet, rtt);
                    }
                } else if msg.client_mode {
                    self.table.remove(&from.id);
                }
                match p.purpose {
                    Purpose::Lookup { qid, path } => {
                        self.on_lookup_response(now, qid, path, from.id, resp)
                    }
                    Purpose::Store { qid } => {
                        let st = match resp {
                            Response::Stored(s) => s,
                            _ => StoreStatus::Invalid,
                        };
                        self.on_store_done(now, qid, Some(st));
                    }
                    Purpose::Ping => {
                        self.pinging.remove(&from.id);
                    }
                    Purpose::Cache => {}
                }
            }
        }
    }

    fn remove_pending(&mut self, txid: u64) -> Option<Pending> {
        let p = self.pending.remove(&txid)?;
        self.timers.remove(&(p.wake(), txid));
        Some(p)
    }

    /// Tells the core a request could not be delivered (for example the dial failed),
    /// so it need not wait for the timeout.
    pub fn request_failed(&mut self, now: Instant, txid: u64) {
        if let Some(p) = self.remove_pending(txid) {
            self.fail(now, p);
        }
    }

    fn fail(&mut self, now: Instant, p: Pending) {
        self.table.on_failure(&p.to);
        match p.purpose {
            Purpose::Lookup { qid, path } => self.on_lookup_failure(now, qid, path, p.to),
            Purpose::Store { qid } => self.on_store_done(now, qid, None),
            Purpose::Ping => {
                self.pinging.remove(&p.to);
            }
            Purpose::Cache => {}
        }
    }

    fn allow(&mut self, now: Instant, id: NodeId) -> bool {
        let (rate, burst) = (
            f64::from(self.cfg.rate_limit_per_sec),
            f64::from(self.cfg.rate_limit_burst.max(1)),
        );
        if !self.rate.contains_key(&id) && self.rate.len() >= self.cfg.max_tracked_peers {
            // Forget peers whose bucket has refilled: they are back to a full burst anyway.
            let full_after = Duration::from_secs_f64(burst / rate.max(1e-9));
            self.rate
                .retain(|_, b| now.saturating_duration_since(b.last) < full_after);
            if self.rate.len() >= self.cfg.max_tracked_peers {
                return false;
            }
        }
        let b = self.rate.entry(id).or_insert(TokenBucket {
            tokens: burst,
            last: now,
        });
        let dt = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + dt * rate).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn handle_request(
        &mut self,
        now: Instant,
        from: Remote,
        txid: u64,
        sender: Option<NodeAddr>,
        client_mode: bool,
        req: Request,
    ) {
        self.stats.requests_received += 1;
        let reply_to = sender.clone().unwrap_or_else(|| NodeAddr::new(from.id));
        if !self.allow(now, from.id) {
            self.stats.rate_limited += 1;
            let msg = self.message(
                txid,
                Body::Response(Response::Error(ErrorCode::RateLimited)),
            );
            self.transmits.push_back(Transmit { to: reply_to, msg });
            return;
        }
        // A server-mode peer we do not know: check that it answers before adding it.
        if let (false, Some(addr)) = (client_mode, &sender) {
            let subnet = from
                .addr
                .and_then(|a| Subnet::of(a.ip(), self.cfg.exempt_loopback));
            if self.table.get(&from.id).is_none()
                && self.table.has_room_for(&from.id, subnet)
                && !self.pinging.contains(&from.id)
                && self.pinging.len() < self.cfg.max_pending_pings
            {
                self.pinging.insert(from.id);
                self.send_request(now, addr.clone(), Request::Ping, Purpose::Ping);
            }
        }
        let k = self.cfg.k;
        let closer = |t: &RoutingTable, key: &Key| -> Vec<NodeAddr> {
            t.closest(key, k + 1)
                .into_iter()
                .filter(|e| e.addr.node_id != from.id)
                .take(k)
                .map(|e| e.addr.clone())
                .collect()
        };
        let resp = match req {
            Request::Ping => Response::Pong,
            Request::FindNode { target } => Response::Nodes {
                closer: closer(&self.table, &target),
            },
            Request::Get { key, kind } => Response::Value {
                record: self
                    .store
                    .get(now, &key)
                    .filter(|r| r.kind() == kind)
                    .cloned(),
                closer: closer(&self.table, &key),
            },
            Request::GetProviders { key } => Response::Providers {
                providers: self
                    .store
                    .providers(now, &key, super::message::MAX_PROVIDERS),
                closer: closer(&self.table, &key),
            },
            Request::Put { record, cas } => Response::Stored(self.store_record(now, record, cas)),
            Request::AddProvider { key } => match sender {
                Some(addr) => {
                    match self
                        .store
                        .add_provider(now, key, addr, self.cfg.provider_ttl)
                    {
                        Ok(()) => Response::Stored(StoreStatus::Ok),
                        Err(_) => Response::Stored(StoreStatus::Full),
                    }
                }
                None => Response::Error(ErrorCode::BadRequest),
            },
        };
        let msg = self.message(txid, Body::Response(resp));
        self.transmits.push_back(Transmit { to: reply_to, msg });
    }

    fn store_record(&mut self, now: Instant, record: Record, cas: Option<u64>) -> StoreStatus {
        if record.validate(&self.cfg.limits).is_err() {
            self.stats.records_rejected += 1;
            return StoreStatus::Invalid;
        }
        match self.store.put(now, record, cas, self.cfg.record_ttl) {
            Ok(()) => StoreStatus::Ok,
            Err(e) => {
                self.stats.records_rejected += 1;
                match e {
                    RecordError::StaleSequence { stored, .. } => StoreStatus::Stale(stored),
                    RecordError::CasMismatch { current, .. } => StoreStatus::CasMismatch(current),
                    RecordError::StoreFull => StoreStatus::Full,
                    _ => StoreStatus::Invalid,
                }
            }
        }
    }

    /// Advances timers: request timeouts, stalls, query deadlines, refresh, republish
    /// and expiry.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.ensure_timers(now);
        let due: Vec<u64> = self
            .timers
            .iter()
            .take_while(|(t, _)| *t <= now)
            .map(|(_, txid)| *txid)
            .collect();
        for txid in due {
            let Some(p) = self.pending.get(&txid) else {
                continue;
            };
            if p.deadline <= now {
                if let Some(p) = self.remove_pending(txid) {
                    self.fail(now, p);
                }
                continue;
            }
            let (to, purpose, wake) = (p.to, p.purpose, p.wake());
            self.timers.remove(&(wake, txid));
            if let Some(p) = self.pending.get_mut(&txid) {
                p.stall_at = None;
                self.timers.insert((p.wake(), txid));
            }
            if let Purpose::Lookup { qid, path } = purpose {
                if let Some(c) = self
                    .queries
                    .get_mut(&qid)
                    .and_then(|q| q.paths.get_mut(path))
                    .and_then(|p| p.cands.iter_mut().find(|c| c.addr.node_id == to))
                {
                    if c.state == CState::Waiting {
                        c.state = CState::Stalled;
                    }
                }
                self.step(now, qid);
            }
        }
        let late: Vec<QueryId> = self
            .queries
            .iter()
            .filter(|(_, q)| q.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            // A put past its deadline in the lookup phase moves to its store phase in
            // `finish`; one already storing ends with what it has.
            self.finish(now, id);
        }
        if self.next_recheck.is_some_and(|t| t <= now) {
            self.recheck(now);
        }
        if self.next_expire.is_some_and(|t| t <= now) {
            self.store.expire(now);
            self.next_expire = Some(now + EXPIRE_EVERY);
        }
        if let (Some(t), Some(i)) = (self.next_refresh, self.cfg.refresh_interval) {
            if t <= now {
                self.next_refresh = Some(now + i);
                self.refresh(now, false);
            }
        }
        if let (Some(t), Some(i)) = (self.next_republish, self.cfg.republish_interval) {
            if t <= now {
                self.next_republish = Some(now + i);
                self.republish(now);
            }
        }
    }

    // -------------------------------------------------------------- outputs

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let pend = self.timers.first().map(|(t, _)| *t);
        let qs = self.queries.values().map(|q| q.deadline).min();
        [
            pend,
            qs,
            self.next_expire,
            self.next_refresh,
            self.next_republish,
            self.next_recheck,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

fn kind_tag(k: RecordKind) -> u8 {
    match k {
        RecordKind::Immutable => 0,
        RecordKind::Mutable => 1,
        RecordKind::NodeAddr => 2,
    }
}

fn store_result(st: Option<&StorePhase>) -> Result<usize, PutError> {
    let Some(st) = st else {
        return Err(PutError::NoPeers);
    };
    if st.ok > 0 {
        return Ok(st.ok);
    }
    let mut err = PutError::Rejected;
    for s in &st.statuses {
        match *s {
            StoreStatus::CasMismatch(current) => err = PutError::CasMismatch { current },
            StoreStatus::Stale(current) if !matches!(err, PutError::CasMismatch { .. }) => {
                err = PutError::Stale { current }
            }
            _ => {}
        }
    }
    Err(err)
}
