//! Swarm download scenarios: one seeder and many downloaders, each downloader running the
//! unmodified [`kith_share::scheduler::Scheduler`], on a modelled network with latency
//! **and bandwidth**. Used by `kith-sim share` and by the tests.
//!
//! # The model
//!
//! * **Latency**: the coordinate model of the other simulators (a point in a plane plus
//!   an access-link delay per node, `Place` in `engine.rs`); a message or piece takes the one-way delay
//!   of the pair.
//! * **Bandwidth**: every node has an upload and a download capacity (bytes per second).
//!   The *upload link* sends one piece (a 16 KiB chunk group) at a time at the full
//!   upload capacity, taking the requests it serves in round robin, a piece each: piece-
//!   level processor sharing between its concurrent requests. The *download link* is a
//!   FIFO bottleneck queue: a piece whose last bit reaches the receiver's access link
//!   waits until the pieces ahead of it have crossed at the download capacity (a piece
//!   never crosses faster than it was sent). Both are O(1) per piece, so 1,000 nodes ×
//!   4,096 pieces run in minutes. There is no congestion control: a sender does not slow
//!   down for a full download queue; the receiver's windows bound that queue instead.
//! * **Providers** model `kith/share/1`: a provider serves at most
//!   [`ShareParams::upload_slots`] requests at once; a request that finds them full is
//!   refused as busy with [`ShareParams::busy_retry`] (the refusal costs one round trip
//!   and no data bandwidth). Both default to the real provider's
//!   [`ProviderLimits`] defaults (32 slots, 250 ms). A cancel reaches the provider after the one-way delay; pieces
//!   already sent still arrive.
//! * **Discovery**: every downloader knows the seeder (the ticket names it) and a random
//!   set of other downloaders, as a DHT provider lookup of downloaders that announce
//!   while downloading, or peers met on the seeder, would give: each downloader draws
//!   [`ShareParams::neighbours`]` / 2` others and links are made symmetric (about
//!   [`ShareParams::neighbours`] each). A downloader opens a watch on each peer it knows
//!   (two round trips: handshake and watch) and learns its availability; from then on
//!   the peer sends what it verified, batched every [`ShareParams::have_interval`] (the
//!   real watch stream publishes verified batches). The receiver calls
//!   [`Scheduler::peer_has`]. Everyone seeds what it has verified while it downloads and
//!   after it finishes.
//! * **Malicious providers** claim every piece; a *corrupt* one sends bad data (the first
//!   bad piece to arrive bans it; bytes of bad pieces that crossed the link are wasted), a
//!   *liar* answers every request as missing, a *trickler* sends bad data at a few
//!   hundred bytes a second (its requests stall). None of them refuses a request as
//!   busy: each wants to hold as many requests as it can.
//! * **Churn**: chosen downloaders leave once the swarm holds half of what it needs; their
//!   peers learn it after the one-way delay ([`Scheduler::remove_peer`]), pieces in flight
//!   from or to them are lost.
//!
//! Everything random comes from one `StdRng` seeded with [`ShareParams::seed`], time is
//! virtual: a seed gives the same figures every run.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Range;
use std::time::{Duration, Instant};

use kith_share::scheduler::{Action, Event, RequestId, RequestOutcome, Scheduler, SchedulerConfig};
use kith_share::{Layout, ProviderLimits, RangeSet};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::engine::{Clock, EventQueue, Place, nanos};

const MIB: f64 = 1024.0 * 1024.0;

/// A class of downloaders with the same capacities.
#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    /// Share of the downloaders in this class (the last class takes the rest).
    pub fraction: f64,
    /// Upload capacity, bytes per second.
    pub up: f64,
    /// Download capacity, bytes per second.
    pub down: f64,
}

/// What a malicious provider does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malice {
    /// Claims everything, sends data that fails verification at its full upload rate.
    Corrupt,
    /// Claims everything, answers every request with "missing".
    Liar,
    /// Claims everything, sends bad data at [`ShareParams::trickle_rate`].
    Trickler,
}

/// Parameters of a swarm run.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ShareParams {
    /// Seed of every random choice.
    pub seed: u64,
    /// Downloaders (malicious providers included), besides the one seeder.
    pub downloaders: usize,
    /// Size of the collection in bytes.
    pub bytes: u64,
    /// Files in the collection (equal sizes).
    pub files: usize,
    /// The seeder's upload capacity, bytes per second.
    pub seed_up: f64,
    /// The seeder's download capacity, bytes per second.
    pub seed_down: f64,
    /// Capacity classes of the downloaders.
    pub classes: Vec<Capacity>,
    /// Share of the downloaders that are malicious providers (they download nothing).
    pub malicious: f64,
    /// Share of the honest downloaders that leave once the swarm holds half of what it
    /// needs.
    pub leave_fraction: f64,
    /// Downloaders each one knows (besides the seeder), on average.
    pub neighbours: usize,
    /// Requests a provider serves at once. Default: the real provider's
    /// ([`ProviderLimits::upload_slots`]).
    pub upload_slots: usize,
    /// Retry-after of a busy refusal. Default: the real provider's
    /// ([`ProviderLimits::busy_retry`]).
    pub busy_retry: Duration,
    /// How often a node sends what it verified to its watchers.
    pub have_interval: Duration,
    /// Upload rate of a trickler, bytes per second.
    pub trickle_rate: f64,
    /// One-way delay across the whole plane of coordinates.
    pub max_path_delay: Duration,
    /// Largest access-link delay at each end.
    pub max_access_delay: Duration,
    /// Configuration of every downloader's scheduler.
    pub scheduler: SchedulerConfig,
    /// The run stops at this many times the fluid lower bound (plus a minute).
    pub time_limit_factor: f64,
}

impl ShareParams {
    /// Flash crowd: one seeder and `downloaders` downloaders with equal capacities (4 MiB/s
    /// up and down each), all starting at once, fetching a `mib` MiB collection.
    pub fn flash(downloaders: usize, mib: u64, seed: u64) -> Self {
        let cap = 4.0 * MIB;
        Self {
            seed,
            downloaders,
            bytes: mib << 20,
            files: 16,
            seed_up: cap,
            seed_down: cap,
            classes: vec![Capacity {
                fraction: 1.0,
                up: cap,
                down: cap,
            }],
            malicious: 0.0,
            leave_fraction: 0.0,
            neighbours: 40,
            upload_slots: ProviderLimits::default().upload_slots,
            busy_retry: ProviderLimits::default().busy_retry,
            have_interval: Duration::from_millis(100),
            trickle_rate: 512.0,
            max_path_delay: Duration::from_millis(100),
            max_access_delay: Duration::from_millis(10),
            scheduler: SchedulerConfig::default(),
            time_limit_factor: 20.0,
        }
    }

    /// Heterogeneous capacities: 10 % fast downloaders (16 MiB/s up, 32 down), 90 % slow
    /// ones (1 MiB/s up, 4 down), a seeder at 8 MiB/s; 20 % of the downloaders leave
    /// midway.
    pub fn hetero(downloaders: usize, mib: u64, seed: u64) -> Self {
        Self {
            seed_up: 8.0 * MIB,
            seed_down: 8.0 * MIB,
            classes: vec![
                Capacity {
                    fraction: 0.1,
                    up: 16.0 * MIB,
                    down: 32.0 * MIB,
                },
                Capacity {
                    fraction: 0.9,
                    up: MIB,
                    down: 4.0 * MIB,
                },
            ],
            leave_fraction: 0.2,
            ..Self::flash(downloaders, mib, seed)
        }
    }

    /// Flash crowd where 10 % of the downloaders are malicious providers (a third each
    /// corrupt, liars, tricklers).
    pub fn malicious(downloaders: usize, mib: u64, seed: u64) -> Self {
        Self {
            malicious: 0.1,
            ..Self::flash(downloaders, mib, seed)
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone, Default)]
pub struct ShareReport {
    /// Bytes of the collection (F).
    pub bytes: u64,
    /// Honest downloaders.
    pub honest: usize,
    /// Honest downloaders that left midway.
    pub left: usize,
    /// Honest downloaders that stayed and finished.
    pub completed: usize,
    /// The fluid lower bound `max(F/u_seed, F/d_min, N·F/(u_seed + Σu))` over the honest
    /// downloaders.
    pub bound: Duration,
    /// When the last remaining downloader finished (None if one did not).
    pub last_finish: Option<Duration>,
    /// Median finishing time of those that finished.
    pub median_finish: Duration,
    /// Finishing time of every downloader that finished, earliest first.
    pub finish_times: Vec<Duration>,
    /// Bytes the seeder uploaded.
    pub seed_uploaded: u64,
    /// Bytes every node uploaded, together.
    pub uploaded: u64,
    /// Good bytes that arrived at a downloader that already had them (endgame copies,
    /// cancelled requests).
    pub duplicate_bytes: u64,
    /// Malicious providers.
    pub malicious: usize,
    /// (honest downloader, malicious provider) pairs where the downloader asked the
    /// provider for something.
    pub contacted_pairs: usize,
    /// Of those, pairs where the downloader banned the provider.
    pub banned_pairs: usize,
    /// Contacted and banned pairs per kind of malicious provider: corrupt, liar,
    /// trickler.
    pub by_malice: [(usize, usize); 3],
    /// Malicious providers contacted by an honest downloader.
    pub malicious_contacted: usize,
    /// Malicious providers banned by every honest downloader that contacted them.
    pub malicious_banned_by_all: usize,
    /// Most bad bytes one honest downloader received from one malicious provider.
    pub wasted_max: u64,
    /// Bad bytes over all honest downloaders, per malicious provider contacted.
    pub wasted_per_malicious: f64,
    /// Pieces an honest downloader accepted from a malicious provider (must be 0).
    pub bad_accepted: u64,
    /// Requests sent.
    pub requests: u64,
    /// Busy refusals.
    pub busy: u64,
    /// Stalled requests.
    pub stalls: u64,
    /// Bans of honest peers by honest downloaders.
    pub honest_banned: u64,
    /// Bans of the seeder.
    pub seeder_banned: u64,
    /// Events processed.
    pub events: u64,
    /// Virtual time simulated.
    pub elapsed: Duration,
    /// Bytes every node uploaded, per second of virtual time.
    pub uploaded_per_second: Vec<u64>,
    /// Upload capacity of the seeder and the honest downloaders together, bytes per
    /// second.
    pub upload_capacity: f64,
}

impl ShareReport {
    /// Remaining honest downloaders that finished, as a fraction.
    pub fn completed_fraction(&self) -> f64 {
        let remaining = self.honest - self.left;
        if remaining == 0 {
            return 1.0;
        }
        self.completed as f64 / remaining as f64
    }

    /// Finishing time of the last downloader over the fluid lower bound (infinite if one
    /// did not finish).
    pub fn ratio_to_bound(&self) -> f64 {
        match self.last_finish {
            Some(t) => t.as_secs_f64() / self.bound.as_secs_f64().max(1e-9),
            None => f64::INFINITY,
        }
    }

    /// Bytes the seeder uploaded over F.
    pub fn seed_upload_ratio(&self) -> f64 {
        self.seed_uploaded as f64 / self.bytes.max(1) as f64
    }

    /// When fraction `q` of the remaining honest downloaders had finished, over the
    /// fluid lower bound (infinite if fewer finished).
    pub fn quantile_ratio_to_bound(&self, q: f64) -> f64 {
        let remaining = self.honest - self.left;
        let k = ((remaining as f64 * q).ceil() as usize).max(1);
        match self.finish_times.get(k - 1) {
            Some(t) => t.as_secs_f64() / self.bound.as_secs_f64().max(1e-9),
            None => f64::INFINITY,
        }
    }

    /// Share of the bytes the finished downloaders hold that did not come from the
    /// seeder (the origin).
    pub fn origin_offload(&self) -> f64 {
        let held = self.bytes as f64 * self.completed as f64;
        if held == 0.0 {
            return 0.0;
        }
        1.0 - self.seed_uploaded as f64 / held
    }

    /// Contacted (honest, malicious) pairs where the malicious one was banned.
    pub fn banned_ratio(&self) -> f64 {
        if self.contacted_pairs == 0 {
            return 1.0;
        }
        self.banned_pairs as f64 / self.contacted_pairs as f64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Seeder,
    Honest,
    Bad(Malice),
}

#[derive(Debug)]
struct Serve {
    to: u32,
    id: RequestId,
    next: u64,
    end: u64,
}

#[derive(Debug)]
struct Node {
    kind: Kind,
    up: f64,
    down: f64,
    sched: Option<Scheduler<u32>>,
    /// Peers it downloads from (the seeder included).
    knows: Vec<u32>,
    /// Peers it tells what it verified.
    watchers: Vec<u32>,
    pending_have: RangeSet,
    flush_scheduled: bool,
    /// Requests in flight to each provider: id → provider.
    live: BTreeMap<RequestId, u32>,
    serving: VecDeque<Serve>,
    link_busy: bool,
    /// The piece on the upload link is the last of its request (its slot is still taken).
    busy_last: bool,
    dl_free: u64,
    timer_at: Option<u64>,
    left: bool,
    leaves: bool,
    done_at: Option<u64>,
    uploaded: u64,
}

#[derive(Debug)]
enum Ev {
    /// `node`'s watch on `peer` is answered: it learns the peer and its availability.
    Watch { node: u32, peer: u32 },
    /// A request reaches `provider`.
    Request {
        provider: u32,
        from: u32,
        id: RequestId,
        pieces: Range<u64>,
    },
    /// A refusal or an empty answer reaches `node`.
    Answer {
        node: u32,
        id: RequestId,
        outcome: RequestOutcome,
    },
    /// `provider`'s upload link finished sending a piece.
    Uploaded {
        provider: u32,
        to: u32,
        id: RequestId,
        piece: u64,
        started: u64,
        last: bool,
    },
    /// The last bit of a piece reaches `node`'s download link.
    Reach {
        node: u32,
        from: u32,
        id: RequestId,
        piece: u64,
        first_bit: u64,
        last: bool,
    },
    /// A piece has crossed `node`'s download link.
    Deliver {
        node: u32,
        from: u32,
        id: RequestId,
        piece: u64,
        last: bool,
    },
    /// A cancel reaches `provider`.
    Cancel {
        provider: u32,
        from: u32,
        id: RequestId,
    },
    /// An availability update reaches `node`.
    Have {
        node: u32,
        from: u32,
        pieces: RangeSet,
    },
    /// `node` sends what it verified since the last flush.
    Flush { node: u32 },
    /// `node`'s scheduler timer.
    Timer { node: u32 },
    /// `node` learns that `peer` is gone.
    Gone { node: u32, peer: u32 },
}

struct Swarm<'a> {
    p: &'a ShareParams,
    layout: Layout,
    clock: Clock,
    q: EventQueue<Ev>,
    nodes: Vec<Node>,
    places: Vec<Place>,
    /// Honest downloaders that stay and have not finished.
    unfinished: usize,
    /// Pieces verified over all honest downloaders, and half of what they need.
    verified: u64,
    midway: Option<u64>,
    contacted: BTreeSet<(u32, u32)>,
    wasted: BTreeMap<(u32, u32), u64>,
    rep: ShareReport,
}

/// Runs one swarm download and reports what it measured.
pub fn run(p: &ShareParams) -> ShareReport {
    let mut s = Swarm::build(p);
    s.run();
    s.report()
}

fn ticks(secs: f64) -> u64 {
    (secs * 1e9).round().max(0.0) as u64
}

impl<'a> Swarm<'a> {
    fn build(p: &'a ShareParams) -> Self {
        let mut rng = StdRng::seed_from_u64(p.seed);
        let files = p.files.max(1) as u64;
        let mut sizes = vec![p.bytes / files; files as usize];
        if let Some(last) = sizes.last_mut() {
            *last += p.bytes % files;
        }
        let layout = Layout::new(sizes);
        let n = p.downloaders;
        let total = n + 1;
        let places: Vec<Place> = (0..total)
            .map(|_| Place::random(&mut rng, p.max_access_delay))
            .collect();
        // Roles: malicious providers and capacity classes drawn at random.
        let bad = ((n as f64) * p.malicious).round() as usize;
        let mut ids: Vec<u32> = (1..=n as u32).collect();
        shuffle(&mut ids, &mut rng);
        let mut kind = vec![Kind::Honest; total];
        kind[0] = Kind::Seeder;
        for (k, &i) in ids.iter().take(bad).enumerate() {
            kind[i as usize] = Kind::Bad(match k % 3 {
                0 => Malice::Corrupt,
                1 => Malice::Liar,
                _ => Malice::Trickler,
            });
        }
        let honest: Vec<u32> = ids[bad..].to_vec();
        let mut caps = vec![(p.seed_up, p.seed_down); total];
        {
            let mut order = ids.clone();
            shuffle(&mut order, &mut rng);
            let mut at = 0usize;
            for (c, class) in p.classes.iter().enumerate() {
                let count = if c + 1 == p.classes.len() {
                    n - at
                } else {
                    ((n as f64) * class.fraction).round() as usize
                };
                for &i in order.iter().skip(at).take(count) {
                    caps[i as usize] = (class.up, class.down);
                }
                at = (at + count).min(n);
            }
        }
        for (i, k) in kind.iter().enumerate() {
            if *k == Kind::Bad(Malice::Trickler) {
                caps[i].0 = p.trickle_rate;
            }
        }
        // Who knows whom: symmetric random links between downloaders; honest ones
        // download from every peer they are linked with and the seeder, and tell their
        // honest peers what they verify.
        let mut knows: Vec<Vec<u32>> = vec![Vec::new(); total];
        let mut watchers: Vec<Vec<u32>> = vec![Vec::new(); total];
        let draws = (p.neighbours / 2).min(n.saturating_sub(1));
        for &i in &honest {
            for j in rand::seq::index::sample(&mut rng, n - 1, draws) {
                // Index among the other downloaders (1..=n without i).
                let mut j = j as u32 + 1;
                if j >= i {
                    j += 1;
                }
                knows[i as usize].push(j);
                if kind[j as usize] == Kind::Honest {
                    knows[j as usize].push(i);
                    watchers[i as usize].push(j);
                    watchers[j as usize].push(i);
                }
            }
        }
        for &i in &honest {
            let k = &mut knows[i as usize];
            k.sort_unstable();
            k.dedup();
            k.insert(0, 0);
            let w = &mut watchers[i as usize];
            w.sort_unstable();
            w.dedup();
        }
        let leavers = ((honest.len() as f64) * p.leave_fraction).round() as usize;
        let leaving: BTreeSet<u32> =
            rand::seq::index::sample(&mut rng, honest.len(), leavers.min(honest.len()))
                .into_iter()
                .map(|k| honest[k])
                .collect();
        let mut nodes = Vec::with_capacity(total);
        for i in 0..total {
            let sched = (kind[i] == Kind::Honest).then(|| {
                Scheduler::new(
                    layout.clone(),
                    &RangeSet::new(),
                    p.scheduler.clone(),
                    rng.r#gen(),
                )
            });
            nodes.push(Node {
                kind: kind[i],
                up: caps[i].0,
                down: caps[i].1,
                sched,
                knows: std::mem::take(&mut knows[i]),
                watchers: std::mem::take(&mut watchers[i]),
                pending_have: RangeSet::new(),
                flush_scheduled: false,
                live: BTreeMap::new(),
                serving: VecDeque::new(),
                link_busy: false,
                busy_last: false,
                dl_free: 0,
                timer_at: None,
                left: false,
                leaves: leaving.contains(&(i as u32)),
                done_at: None,
                uploaded: 0,
            });
        }
        // The fluid lower bound over the honest downloaders.
        let f = p.bytes as f64;
        let d_min = honest
            .iter()
            .map(|&i| caps[i as usize].1)
            .fold(f64::INFINITY, f64::min);
        let sum_u: f64 = honest.iter().map(|&i| caps[i as usize].0).sum();
        let bound = (f / p.seed_up)
            .max(if d_min.is_finite() { f / d_min } else { 0.0 })
            .max(honest.len() as f64 * f / (p.seed_up + sum_u));
        let rep = ShareReport {
            bytes: p.bytes,
            honest: honest.len(),
            malicious: bad,
            bound: Duration::from_secs_f64(bound),
            upload_capacity: p.seed_up + sum_u,
            ..ShareReport::default()
        };
        let mut s = Self {
            p,
            layout,
            clock: Clock::new(),
            q: EventQueue::new(),
            nodes,
            places,
            unfinished: honest.len(),
            verified: 0,
            midway: (leavers > 0).then_some(honest.len() as u64 * layout_half(p)),
            contacted: BTreeSet::new(),
            wasted: BTreeMap::new(),
            rep,
        };
        // Everyone starts at once: connect and open a watch on every peer it knows (two
        // round trips).
        for &i in &honest {
            for k in 0..s.nodes[i as usize].knows.len() {
                let peer = s.nodes[i as usize].knows[k];
                let at = 4 * s.lat(i, peer);
                s.q.push(at, Ev::Watch { node: i, peer });
            }
        }
        s
    }

    fn lat(&self, a: u32, b: u32) -> u64 {
        nanos(self.places[a as usize].one_way(&self.places[b as usize], self.p.max_path_delay))
    }

    fn now(&self) -> Instant {
        self.clock.now()
    }

    fn run(&mut self) {
        let limit = ticks(self.rep.bound.as_secs_f64() * self.p.time_limit_factor + 60.0);
        while self.unfinished > 0 {
            let Some((at, ev)) = self.q.pop_until(limit) else {
                break;
            };
            self.clock.advance_to(at);
            self.rep.events += 1;
            self.handle(at, ev);
        }
    }

    fn handle(&mut self, at: u64, ev: Ev) {
        match ev {
            Ev::Watch { node, peer } => self.on_watch(node, peer),
            Ev::Request {
                provider,
                from,
                id,
                pieces,
            } => self.on_request(provider, from, id, pieces),
            Ev::Answer { node, id, outcome } => {
                if self.nodes[node as usize].left {
                    return;
                }
                if self.nodes[node as usize].live.remove(&id).is_some() {
                    let now = self.now();
                    if let Some(s) = self.nodes[node as usize].sched.as_mut() {
                        s.handle_request_end(now, id, outcome);
                    }
                    self.drain(node);
                }
            }
            Ev::Uploaded {
                provider,
                to,
                id,
                piece,
                started,
                last,
            } => {
                let bytes = self.layout.piece_bytes(piece);
                let pn = &mut self.nodes[provider as usize];
                pn.link_busy = false;
                pn.busy_last = false;
                if pn.left {
                    return;
                }
                pn.uploaded += bytes;
                self.rep.uploaded += bytes;
                let sec = (at / 1_000_000_000) as usize;
                let bins = &mut self.rep.uploaded_per_second;
                if bins.len() <= sec {
                    bins.resize(sec + 1, 0);
                }
                bins[sec] += bytes;
                if provider == 0 {
                    self.rep.seed_uploaded += bytes;
                }
                let lat = self.lat(provider, to);
                self.q.push(
                    at + lat,
                    Ev::Reach {
                        node: to,
                        from: provider,
                        id,
                        piece,
                        first_bit: started + lat,
                        last,
                    },
                );
                self.start_upload(provider);
            }
            Ev::Reach {
                node,
                from,
                id,
                piece,
                first_bit,
                last,
            } => {
                let n = &mut self.nodes[node as usize];
                if n.left {
                    return;
                }
                let bytes = self.layout.piece_bytes(piece) as f64;
                let start = first_bit.max(n.dl_free);
                let end = (start + ticks(bytes / n.down)).max(at);
                n.dl_free = end;
                let ev = Ev::Deliver {
                    node,
                    from,
                    id,
                    piece,
                    last,
                };
                if end > at {
                    self.q.push(end, ev);
                } else {
                    self.handle(at, ev);
                }
            }
            Ev::Deliver {
                node,
                from,
                id,
                piece,
                last,
            } => self.on_deliver(node, from, id, piece, last),
            Ev::Cancel { provider, from, id } => {
                self.nodes[provider as usize]
                    .serving
                    .retain(|s| !(s.to == from && s.id == id));
            }
            Ev::Have { node, from, pieces } => {
                let now = self.now();
                if self.nodes[node as usize].left || self.nodes[from as usize].left {
                    return;
                }
                let Some(s) = self.nodes[node as usize].sched.as_mut() else {
                    return;
                };
                if s.is_done() {
                    return;
                }
                s.peer_has(now, &from, &pieces);
                self.drain(node);
            }
            Ev::Flush { node } => self.on_flush(node),
            Ev::Timer { node } => {
                let now = self.now();
                let n = &mut self.nodes[node as usize];
                if n.timer_at != Some(at) || n.left {
                    return;
                }
                n.timer_at = None;
                if let Some(s) = n.sched.as_mut() {
                    s.handle_timeout(now);
                }
                self.drain(node);
            }
            Ev::Gone { node, peer } => {
                let now = self.now();
                let n = &mut self.nodes[node as usize];
                if n.left {
                    return;
                }
                n.live.retain(|_, p| *p != peer);
                if let Some(s) = n.sched.as_mut() {
                    s.remove_peer(now, &peer);
                }
                self.drain(node);
            }
        }
    }

    fn on_watch(&mut self, node: u32, peer: u32) {
        if self.nodes[node as usize].left || self.nodes[peer as usize].left {
            return;
        }
        let now = self.now();
        let rtt = Duration::from_nanos(2 * self.lat(node, peer));
        let have = match self.nodes[peer as usize].kind {
            Kind::Honest => self.nodes[peer as usize]
                .sched
                .as_ref()
                .map(verified_set)
                .unwrap_or_default(),
            Kind::Seeder | Kind::Bad(_) => RangeSet::from_range(0..self.layout.pieces()),
        };
        if let Some(s) = self.nodes[node as usize].sched.as_mut() {
            s.add_peer(now, peer, rtt);
            if !have.is_empty() {
                s.peer_has(now, &peer, &have);
            }
        }
        self.drain(node);
    }

    fn on_request(&mut self, provider: u32, from: u32, id: RequestId, pieces: Range<u64>) {
        if self.nodes[provider as usize].left || self.nodes[from as usize].left {
            return;
        }
        let back = self.clock.ticks() + self.lat(provider, from);
        let pn = &self.nodes[provider as usize];
        let refuse = |outcome| Ev::Answer {
            node: from,
            id,
            outcome,
        };
        if pn.kind == Kind::Bad(Malice::Liar) {
            self.q.push(back, refuse(RequestOutcome::Missing));
            return;
        }
        if pn.kind == Kind::Honest {
            let has = pn
                .sched
                .as_ref()
                .is_some_and(|s| pieces.clone().all(|i| s.has_piece(i)));
            if !has {
                self.q.push(back, refuse(RequestOutcome::Missing));
                return;
            }
        }
        // A malicious provider never refuses: it wants to hold every request it can.
        let used = pn.serving.len() + usize::from(pn.busy_last);
        if used >= self.p.upload_slots.max(1) && !matches!(pn.kind, Kind::Bad(_)) {
            self.rep.busy += 1;
            let retry_after = self.p.busy_retry;
            self.q
                .push(back, refuse(RequestOutcome::Busy { retry_after }));
            return;
        }
        self.nodes[provider as usize].serving.push_back(Serve {
            to: from,
            id,
            next: pieces.start,
            end: pieces.end,
        });
        self.start_upload(provider);
    }

    /// Puts the next piece on `provider`'s upload link if it is idle (round robin over the
    /// requests it serves).
    fn start_upload(&mut self, provider: u32) {
        let now = self.clock.ticks();
        loop {
            let pn = &mut self.nodes[provider as usize];
            if pn.link_busy || pn.left {
                return;
            }
            let Some(mut s) = pn.serving.pop_front() else {
                return;
            };
            if self.nodes[s.to as usize].left || s.next >= s.end {
                continue;
            }
            let piece = s.next;
            s.next += 1;
            let last = s.next >= s.end;
            let (to, id) = (s.to, s.id);
            let pn = &mut self.nodes[provider as usize];
            if !last {
                pn.serving.push_back(s);
            }
            pn.link_busy = true;
            pn.busy_last = last;
            let bytes = self.layout.piece_bytes(piece).max(1) as f64;
            let done = now + ticks(bytes / pn.up).max(1);
            self.q.push(
                done,
                Ev::Uploaded {
                    provider,
                    to,
                    id,
                    piece,
                    started: now,
                    last,
                },
            );
            return;
        }
    }

    fn on_deliver(&mut self, node: u32, from: u32, id: RequestId, piece: u64, last: bool) {
        if self.nodes[node as usize].left || self.nodes[from as usize].left {
            return;
        }
        let now = self.now();
        let bytes = self.layout.piece_bytes(piece);
        let bad = matches!(self.nodes[from as usize].kind, Kind::Bad(_));
        let n = &mut self.nodes[node as usize];
        let Some(s) = n.sched.as_mut() else {
            return;
        };
        if bad {
            // Verification fails: the bytes crossed the link for nothing.
            *self.wasted.entry((node, from)).or_default() += bytes;
            if n.live.remove(&id).is_some() {
                s.handle_request_end(now, id, RequestOutcome::BadData);
                // The stream is reset.
                let lat = self.lat(node, from);
                self.q.push(
                    self.clock.ticks() + lat,
                    Ev::Cancel {
                        provider: from,
                        from: node,
                        id,
                    },
                );
            }
        } else {
            if s.has_piece(piece) {
                self.rep.duplicate_bytes += bytes;
            }
            s.handle_piece(now, &from, id, piece);
            if last && n.live.remove(&id).is_some() {
                s.handle_request_end(now, id, RequestOutcome::Finished);
            }
        }
        self.drain(node);
    }

    fn on_flush(&mut self, node: u32) {
        let n = &mut self.nodes[node as usize];
        n.flush_scheduled = false;
        if n.left || n.pending_have.is_empty() {
            return;
        }
        let pieces = std::mem::take(&mut n.pending_have);
        let now = self.clock.ticks();
        for k in 0..self.nodes[node as usize].watchers.len() {
            let w = self.nodes[node as usize].watchers[k];
            if self.nodes[w as usize].left || self.nodes[w as usize].done_at.is_some() {
                continue;
            }
            let at = now + self.lat(node, w);
            self.q.push(
                at,
                Ev::Have {
                    node: w,
                    from: node,
                    pieces: pieces.clone(),
                },
            );
        }
    }

    /// Carries out what `node`'s scheduler decided, takes its events, re-arms its timer.
    fn drain(&mut self, node: u32) {
        let now = self.clock.ticks();
        while let Some(a) = self.nodes[node as usize]
            .sched
            .as_mut()
            .and_then(Scheduler::poll_action)
        {
            match a {
                Action::Request { peer, id, pieces } => {
                    self.rep.requests += 1;
                    self.nodes[node as usize].live.insert(id, peer);
                    if matches!(self.nodes[peer as usize].kind, Kind::Bad(_)) {
                        self.contacted.insert((node, peer));
                    }
                    let at = now + self.lat(node, peer);
                    self.q.push(
                        at,
                        Ev::Request {
                            provider: peer,
                            from: node,
                            id,
                            pieces,
                        },
                    );
                }
                Action::Cancel { peer, id } => {
                    self.nodes[node as usize].live.remove(&id);
                    let at = now + self.lat(node, peer);
                    self.q.push(
                        at,
                        Ev::Cancel {
                            provider: peer,
                            from: node,
                            id,
                        },
                    );
                }
            }
        }
        let mut gained = 0u64;
        let mut done = false;
        while let Some(e) = self.nodes[node as usize]
            .sched
            .as_mut()
            .and_then(Scheduler::poll_event)
        {
            match e {
                Event::Piece { piece, peer, .. } => {
                    if matches!(self.nodes[peer as usize].kind, Kind::Bad(_)) {
                        self.rep.bad_accepted += 1;
                    }
                    self.nodes[node as usize].pending_have.insert(piece);
                    gained += 1;
                }
                Event::Banned { peer, .. } => match self.nodes[peer as usize].kind {
                    Kind::Bad(_) => {}
                    Kind::Honest => self.rep.honest_banned += 1,
                    Kind::Seeder => self.rep.seeder_banned += 1,
                },
                Event::Stalled { .. } => self.rep.stalls += 1,
                Event::Done => done = true,
            }
        }
        if gained > 0 {
            self.verified += gained;
            let n = &mut self.nodes[node as usize];
            if !n.flush_scheduled {
                n.flush_scheduled = true;
                let at = now + nanos(self.p.have_interval);
                self.q.push(at, Ev::Flush { node });
            }
            if self.midway.is_some_and(|m| self.verified >= m) {
                self.midway = None;
                self.churn();
            }
        }
        if done && self.nodes[node as usize].done_at.is_none() {
            self.nodes[node as usize].done_at = Some(now);
            if !self.nodes[node as usize].left {
                self.unfinished -= 1;
            }
        }
        // Re-arm the timer if the scheduler wants an earlier one.
        let n = &mut self.nodes[node as usize];
        if n.left {
            return;
        }
        if let Some(t) = n.sched.as_ref().and_then(Scheduler::poll_timeout) {
            let t = self.clock.ticks_at(t);
            if n.timer_at.is_none_or(|a| t < a) {
                n.timer_at = Some(t);
                self.q.push(t, Ev::Timer { node });
            }
        }
    }

    /// The chosen downloaders leave now.
    fn churn(&mut self) {
        let now = self.clock.ticks();
        let leaving: Vec<u32> = (0..self.nodes.len() as u32)
            .filter(|&i| self.nodes[i as usize].leaves)
            .collect();
        for &i in &leaving {
            let n = &mut self.nodes[i as usize];
            n.left = true;
            n.serving.clear();
            n.live.clear();
            if n.done_at.is_none() {
                self.unfinished -= 1;
            }
            self.rep.left += 1;
        }
        for &i in &leaving {
            // Everyone that downloads from it notices the connection close.
            for k in 0..self.nodes[i as usize].watchers.len() {
                let w = self.nodes[i as usize].watchers[k];
                let at = now + self.lat(i, w);
                self.q.push(at, Ev::Gone { node: w, peer: i });
            }
            self.nodes[i as usize].sched = None;
        }
    }

    fn report(mut self) -> ShareReport {
        let mut finish: Vec<u64> = Vec::new();
        for n in &self.nodes {
            if n.kind == Kind::Honest && !n.left {
                if let Some(t) = n.done_at {
                    finish.push(t);
                }
            }
        }
        finish.sort_unstable();
        self.rep.completed = finish.len();
        let remaining = self.rep.honest - self.rep.left;
        self.rep.last_finish = (finish.len() == remaining).then(|| {
            finish
                .last()
                .map_or(Duration::ZERO, |&t| Duration::from_nanos(t))
        });
        self.rep.median_finish = finish
            .get(finish.len() / 2)
            .map_or(Duration::ZERO, |&t| Duration::from_nanos(t));
        self.rep.finish_times = finish.iter().map(|&t| Duration::from_nanos(t)).collect();
        // Malicious providers: who banned them, what they cost.
        let mut per_bad: BTreeMap<u32, (usize, usize)> = BTreeMap::new();
        for &(h, m) in &self.contacted {
            let banned = self.nodes[h as usize]
                .sched
                .as_ref()
                .is_some_and(|s| s.is_banned(&m));
            let k = match self.nodes[m as usize].kind {
                Kind::Bad(Malice::Corrupt) => 0,
                Kind::Bad(Malice::Liar) => 1,
                _ => 2,
            };
            self.rep.by_malice[k].0 += 1;
            self.rep.by_malice[k].1 += usize::from(banned);
            let e = per_bad.entry(m).or_default();
            e.0 += 1;
            if banned {
                e.1 += 1;
                self.rep.banned_pairs += 1;
            }
        }
        self.rep.contacted_pairs = self.contacted.len();
        self.rep.malicious_contacted = per_bad.len();
        self.rep.malicious_banned_by_all = per_bad.values().filter(|(c, b)| c == b).count();
        self.rep.wasted_max = self.wasted.values().copied().max().unwrap_or(0);
        let total: u64 = self.wasted.values().sum();
        self.rep.wasted_per_malicious = if per_bad.is_empty() {
            0.0
        } else {
            total as f64 / per_bad.len() as f64
        };
        self.rep.elapsed = self.clock.elapsed();
        self.rep
    }
}

/// Half of the pieces one downloader needs.
fn layout_half(p: &ShareParams) -> u64 {
    let files = p.files.max(1) as u64;
    let mut sizes = vec![p.bytes / files; files as usize];
    if let Some(last) = sizes.last_mut() {
        *last += p.bytes % files;
    }
    Layout::new(sizes).pieces() / 2
}

/// The pieces a downloader has verified.
fn verified_set(s: &Scheduler<u32>) -> RangeSet {
    let mut set = RangeSet::new();
    let n = s.layout().pieces();
    let mut i = 0;
    while i < n {
        if s.has_piece(i) {
            let start = i;
            while i < n && s.has_piece(i) {
                i += 1;
            }
            set.insert_range(start..i);
        } else {
            i += 1;
        }
    }
    set
}

fn shuffle(v: &mut [u32], rng: &mut StdRng) {
    for i in (1..v.len()).rev() {
        let j = rng.gen_range(0..=i);
        v.swap(i, j);
    }
}
