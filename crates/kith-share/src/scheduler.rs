//! The multi-source download scheduler: a sans-IO state machine.
//!
//! It decides which pieces (chunk groups, see [`Layout`]) to request from which peer, and
//! reacts to what arrives. It never touches a socket, a clock or an unseeded random
//! source: the caller feeds it `now`, the peers' availability and the outcome of each
//! request, and takes [`Action`]s (requests to send, requests to cancel), [`Event`]s and
//! the next deadline out:
//!
//! ```text
//! add_peer / peer_has / peer_has_all / remove_peer      availability in
//! handle_piece / handle_request_end / handle_timeout    request outcomes in
//! poll_action / poll_event / poll_timeout               decisions out
//! ```
//!
//! # Policy
//!
//! * **Rarest first**: a peer with room gets a run of contiguous pieces starting at one of
//!   the rarest pieces it has (random among equally rare), extended while the following
//!   pieces are needed, unrequested and held by that peer.
//! * **Sized to each peer**: each peer's requests in flight are bounded by its measured
//!   rate × (RTT + slack), its bandwidth-delay product plus room for the request turn-around;
//!   a request is at most half of that, so two are in flight. A peer we know nothing about
//!   starts at [`SchedulerConfig::initial_window`].
//! * **Stalls**: a request that makes no progress within a timeout derived from the
//!   peer's own RTT and rate is cancelled and its pieces go back to the pool; the peer gets
//!   a strike and its rate estimate is halved.
//! * **Endgame**: once every missing piece is requested, idle peers duplicate pieces in
//!   flight elsewhere (at most [`SchedulerConfig::endgame_copies`] copies); when a piece
//!   arrives, requests left with nothing useful are cancelled.
//! * **Deadline mode** ([`Mode::Sequential`]): pieces nearest the playhead first, handed
//!   to the fastest peers first; pieces within [`SchedulerConfig::deadline_window`] of the
//!   playhead that sit with a peer slower than the fastest idle one are duplicated there.
//! * **Bans**: a peer that sends one piece that fails verification is banned for this
//!   download at once; one that collects [`SchedulerConfig::max_strikes`] strikes (stalls,
//!   pieces it claimed and did not send) is banned too. A banned peer is never asked again.
//! * **Resume**: the scheduler starts from the pieces already held, so nothing verified is
//!   fetched twice.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Debug;
use std::ops::Range;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::layout::Layout;
use crate::ranges::RangeSet;

/// Identifies one request the scheduler asked for.
pub type RequestId = u64;

/// Tuning of the [`Scheduler`]. The defaults suit anything from loopback to
/// intercontinental paths.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SchedulerConfig {
    /// Bytes in flight allowed to a peer whose rate is not measured yet. Default 256 KiB.
    pub initial_window: u64,
    /// Least bytes in flight per peer (at least one piece is always allowed). Default 32 KiB.
    pub min_window: u64,
    /// Most bytes in flight per peer. Default 32 MiB.
    pub max_window: u64,
    /// Largest single request, in bytes. Default 4 MiB.
    pub max_request_bytes: u64,
    /// Most requests in flight per peer. Default 16.
    pub max_requests_per_peer: usize,
    /// Time added to the RTT in a peer's window: covers the request turn-around at the
    /// provider (disk, stream set-up). Default 25 ms.
    pub pipeline_slack: Duration,
    /// Stall timeout of a request to a peer whose rate is not measured yet. Default 4 s.
    pub initial_stall: Duration,
    /// Least stall timeout. Default 500 ms.
    pub min_stall: Duration,
    /// Most stall timeout. Default 30 s.
    pub max_stall: Duration,
    /// Copies of a piece that may be in flight at once in endgame and deadline mode
    /// (1 turns duplication off). Default 2.
    pub endgame_copies: u8,
    /// Strikes (stalls, claimed pieces not sent) before a peer is banned. Default 3.
    pub max_strikes: u32,
    /// In [`Mode::Sequential`], pieces after the playhead that count as urgent. Default 64
    /// (1 MiB).
    pub deadline_window: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            initial_window: 256 * 1024,
            min_window: 32 * 1024,
            max_window: 32 << 20,
            max_request_bytes: 4 << 20,
            max_requests_per_peer: 16,
            pipeline_slack: Duration::from_millis(25),
            initial_stall: Duration::from_secs(4),
            min_stall: Duration::from_millis(500),
            max_stall: Duration::from_secs(30),
            endgame_copies: 2,
            max_strikes: 3,
            deadline_window: 64,
        }
    }
}

/// In which order pieces are fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Rarest first, random among equally rare: the best order for a swarm.
    #[default]
    RarestFirst,
    /// Pieces from `playhead` on, in order, nearest first to the fastest peers: for a
    /// reader that streams (a video, a gateway answering a range request). Pieces before
    /// the playhead come after those past it.
    Sequential {
        /// The first piece the reader needs.
        playhead: u64,
    },
}

/// What the caller must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<P> {
    /// Ask `peer` for the pieces `pieces` (contiguous; they may span blobs of the layout).
    Request {
        /// The peer.
        peer: P,
        /// The request's id, to report its pieces and its end with.
        id: RequestId,
        /// The pieces.
        pieces: Range<u64>,
    },
    /// Abandon request `id` to `peer`; do not report its end (the scheduler forgot it).
    /// Pieces of it that still arrive verified may be reported with
    /// [`Scheduler::handle_piece`].
    Cancel {
        /// The peer.
        peer: P,
        /// The request.
        id: RequestId,
    },
}

/// Why a peer was banned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BanReason {
    /// It sent data that failed verification (a bad group, a wrong size).
    BadData,
    /// It collected too many strikes: stalled requests, pieces it claimed and did not send.
    Unreliable,
}

/// Something the caller may want to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<P> {
    /// A piece was verified and stored.
    Piece {
        /// The piece.
        piece: u64,
        /// The peer it came from.
        peer: P,
        /// Its bytes.
        bytes: u64,
    },
    /// A peer was banned for this download.
    Banned {
        /// The peer.
        peer: P,
        /// Why.
        reason: BanReason,
    },
    /// A peer's request made no progress in time and was cancelled.
    Stalled {
        /// The peer.
        peer: P,
    },
    /// Every piece is verified.
    Done,
}

/// How a request ended, as reported by [`Scheduler::handle_request_end`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOutcome {
    /// The response ended normally. Pieces of the request that were not reported are
    /// taken as claimed but not sent (a strike).
    Finished,
    /// The peer said it lacks some of the pieces it advertised (a strike).
    Missing,
    /// The peer is busy; ask again after this long.
    Busy {
        /// The retry-after the peer gave.
        retry_after: Duration,
    },
    /// The peer does not have the content at all.
    NotFound,
    /// The peer sent data that failed verification: it is banned.
    BadData,
    /// The stream or connection failed (a strike).
    Failed,
}

/// What the scheduler knows of a peer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeerStats {
    /// Measured receive rate, bytes per second (0 until measured).
    pub rate: f64,
    /// Bytes verified from this peer.
    pub delivered: u64,
    /// Requests in flight.
    pub requests: usize,
    /// Pieces the peer has that we need.
    pub useful: u64,
    /// Strikes so far.
    pub strikes: u32,
}

#[derive(Debug, Clone)]
struct Bits {
    words: Vec<u64>,
    count: u64,
}

impl Bits {
    fn new(n: u64) -> Self {
        Self {
            words: vec![0; n.div_ceil(64) as usize],
            count: 0,
        }
    }
    fn get(&self, i: u64) -> bool {
        self.words
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    fn set(&mut self, i: u64) -> bool {
        match self.words.get_mut((i / 64) as usize) {
            Some(w) if *w & (1 << (i % 64)) == 0 => {
                *w |= 1 << (i % 64);
                self.count += 1;
                true
            }
            _ => false,
        }
    }
    fn clear(&mut self, i: u64) -> bool {
        match self.words.get_mut((i / 64) as usize) {
            Some(w) if *w & (1 << (i % 64)) != 0 => {
                *w &= !(1 << (i % 64));
                self.count -= 1;
                true
            }
            _ => false,
        }
    }
}

#[derive(Debug)]
struct Peer {
    has: Bits,
    rtt: Duration,
    /// Bytes per second, 0 while unknown.
    rate: f64,
    /// When the rate sample in progress started, and bytes since.
    sample_start: Option<Instant>,
    sample_bytes: u64,
    inflight_bytes: u64,
    /// Bytes allowed in flight: grows by what arrives (doubling per round trip), capped
    /// at a few times the measured bandwidth-delay product; halved on a stall.
    cwnd: u64,
    requests: BTreeSet<RequestId>,
    strikes: u32,
    /// Times this peer escaped a ban as the last source (see `strike`).
    reprieves: u32,
    /// The driver reports bytes as they arrive (`handle_activity`).
    activity: bool,
    paused_until: Option<Instant>,
    delivered: u64,
}

#[derive(Debug)]
struct Request<P> {
    peer: P,
    pieces: Range<u64>,
    got: Vec<bool>,
    outstanding_bytes: u64,
    last_progress: Instant,
    deadline: Instant,
}

/// Adds `bytes` received at `now` to a peer's rate: bytes over time while it had work,
/// in samples of at least 4 RTTs (20 ms), smoothed.
fn sample_rate(p: &mut Peer, now: Instant, bytes: u64) {
    let start = *p.sample_start.get_or_insert(now);
    p.sample_bytes += bytes;
    let span = now.saturating_duration_since(start);
    let min_span = (p.rtt * 4).max(Duration::from_millis(20));
    if span >= min_span {
        let sample = p.sample_bytes as f64 / span.as_secs_f64();
        p.rate = if p.rate == 0.0 {
            sample
        } else {
            0.7 * p.rate + 0.3 * sample
        };
        p.sample_start = Some(now);
        p.sample_bytes = 0;
    }
}

/// The multi-source download scheduler. `P` names a peer (a `NodeId` in the driver, an
/// index in the simulator).
#[derive(Debug)]
pub struct Scheduler<P: Ord + Copy + Debug> {
    cfg: SchedulerConfig,
    layout: Layout,
    rng: StdRng,
    mode: Mode,
    have: Bits,
    /// Copies of each piece in flight.
    inflight: Vec<u8>,
    /// Peers that have each piece.
    avail: Vec<u32>,
    /// Missing pieces with no request in flight.
    unrequested: u64,
    /// The same pieces, a bit each (kept in step with `have` and `inflight`), so a pick
    /// scans a word at a time.
    free: Bits,
    /// Per word of `free`: the lowest availability among its free pieces and how many
    /// free pieces have it (`u32::MAX` and 0 when none is free). A pick for a peer that
    /// has everything reads these instead of every free piece's availability: a pick
    /// costs pieces / 64 steps, not pieces, and a download's picks grow with its size.
    rarest: Vec<(u32, u8)>,
    peers: BTreeMap<P, Peer>,
    banned: BTreeSet<P>,
    requests: BTreeMap<RequestId, Request<P>>,
    next_id: RequestId,
    verified_bytes: u64,
    actions: VecDeque<Action<P>>,
    events: VecDeque<Event<P>>,
    done_reported: bool,
}

impl<P: Ord + Copy + Debug> Scheduler<P> {
    /// A scheduler for `layout`, holding the pieces in `have` already (a resumed
    /// download), with its random choices drawn from `seed`.
    pub fn new(layout: Layout, have: &RangeSet, cfg: SchedulerConfig, seed: u64) -> Self {
        let n = layout.pieces();
        let mut bits = Bits::new(n);
        let mut verified_bytes = 0;
        for p in have.iter().take_while(|&p| p < n) {
            if bits.set(p) {
                verified_bytes += layout.piece_bytes(p);
            }
        }
        let mut free = Bits::new(n);
        for i in 0..n {
            if !bits.get(i) {
                free.set(i);
            }
        }
        let words = free.words.len();
        let mut s = Self {
            cfg,
            free,
            rarest: vec![(u32::MAX, 0); words],
            rng: StdRng::seed_from_u64(seed),
            mode: Mode::RarestFirst,
            unrequested: n - bits.count,
            have: bits,
            inflight: vec![0; n as usize],
            avail: vec![0; n as usize],
            layout,
            peers: BTreeMap::new(),
            banned: BTreeSet::new(),
            requests: BTreeMap::new(),
            next_id: 1,
            verified_bytes,
            actions: VecDeque::new(),
            events: VecDeque::new(),
            done_reported: false,
        };
        for w in 0..words {
            s.sync_rarest(w);
        }
        s.check_done();
        s
    }

    /// The layout being downloaded.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Whether every piece is verified.
    pub fn is_done(&self) -> bool {
        self.have.count == self.layout.pieces()
    }

    /// Pieces verified so far.
    pub fn verified_pieces(&self) -> u64 {
        self.have.count
    }

    /// Bytes verified so far (those held at the start included).
    pub fn verified_bytes(&self) -> u64 {
        self.verified_bytes
    }

    /// Whether piece `piece` is verified.
    pub fn has_piece(&self, piece: u64) -> bool {
        self.have.get(piece)
    }

    /// Whether the download cannot progress with the peers it has: pieces are missing,
    /// nothing is in flight, and no usable peer has any missing piece (paused peers
    /// count as usable).
    pub fn is_stuck(&self) -> bool {
        !self.is_done()
            && self.requests.is_empty()
            && !self.peers.values().any(|p| self.useful(p) > 0)
    }

    /// Peers known and not banned.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Peers with a request in flight.
    pub fn active_peers(&self) -> usize {
        self.peers
            .values()
            .filter(|p| !p.requests.is_empty())
            .count()
    }

    /// Whether `peer` is banned for this download.
    pub fn is_banned(&self, peer: &P) -> bool {
        self.banned.contains(peer)
    }

    /// The banned peers.
    pub fn banned(&self) -> impl Iterator<Item = &P> {
        self.banned.iter()
    }

    /// What is known of `peer`.
    pub fn peer_stats(&self, peer: &P) -> Option<PeerStats> {
        self.peers.get(peer).map(|p| PeerStats {
            rate: p.rate,
            delivered: p.delivered,
            requests: p.requests.len(),
            useful: self.useful(p),
            strikes: p.strikes,
        })
    }

    /// Every known peer and its stats.
    pub fn peers(&self) -> impl Iterator<Item = (P, PeerStats)> + '_ {
        self.peers
            .keys()
            .filter_map(|k| self.peer_stats(k).map(|s| (*k, s)))
    }

    fn useful(&self, p: &Peer) -> u64 {
        // Pieces the peer has that we lack.
        let mut n = 0;
        for (i, (h, m)) in p.has.words.iter().zip(&self.have.words).enumerate() {
            let _ = i;
            n += u64::from((h & !m).count_ones());
        }
        n
    }

    /// Changes the order pieces are fetched in.
    pub fn set_mode(&mut self, now: Instant, mode: Mode) {
        self.mode = mode;
        self.fill(now);
    }

    /// Adds a peer we can ask (it has nothing until [`peer_has`](Self::peer_has)). A
    /// banned or known peer is ignored.
    pub fn add_peer(&mut self, now: Instant, peer: P, rtt: Duration) {
        if self.banned.contains(&peer) || self.peers.contains_key(&peer) {
            return;
        }
        self.peers.insert(
            peer,
            Peer {
                has: Bits::new(self.layout.pieces()),
                rtt,
                rate: 0.0,
                sample_start: None,
                sample_bytes: 0,
                inflight_bytes: 0,
                cwnd: self.cfg.initial_window.max(self.cfg.min_window),
                requests: BTreeSet::new(),
                strikes: 0,
                reprieves: 0,
                activity: false,
                paused_until: None,
                delivered: 0,
            },
        );
        self.fill(now);
    }

    /// Updates a peer's RTT estimate.
    pub fn set_rtt(&mut self, peer: &P, rtt: Duration) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.rtt = rtt;
        }
    }

    /// `peer` has the pieces in `pieces` (added to what it had). Unknown peers are ignored.
    pub fn peer_has(&mut self, now: Instant, peer: &P, pieces: &RangeSet) {
        let n = self.layout.pieces();
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        let mut touched = Vec::new();
        for r in pieces.ranges() {
            let (a, b) = (r.start.min(n), r.end.min(n));
            for i in a..b {
                if p.has.set(i) {
                    self.avail[i as usize] += 1;
                }
            }
            if a < b {
                touched.push((a / 64) as usize..=((b - 1) / 64) as usize);
            }
        }
        for w in touched.into_iter().flatten() {
            self.sync_rarest(w);
        }
        self.fill(now);
    }

    /// `peer` has every piece.
    pub fn peer_has_all(&mut self, now: Instant, peer: &P) {
        let all = RangeSet::from_range(0..self.layout.pieces());
        self.peer_has(now, peer, &all);
    }

    /// Forgets `peer` (it disconnected): its requests' pieces go back to the pool. No
    /// [`Action::Cancel`] is emitted for them.
    pub fn remove_peer(&mut self, now: Instant, peer: &P) {
        self.drop_peer(peer, false);
        self.fill(now);
    }

    fn drop_peer(&mut self, peer: &P, cancel: bool) {
        let Some(p) = self.peers.remove(peer) else {
            return;
        };
        for id in &p.requests {
            if let Some(req) = self.requests.remove(id) {
                self.release(&req);
                if cancel {
                    self.actions.push_back(Action::Cancel {
                        peer: *peer,
                        id: *id,
                    });
                }
            }
        }
        for (w, word) in p.has.words.iter().enumerate() {
            let mut bits = *word;
            while bits != 0 {
                let b = bits.trailing_zeros() as u64;
                bits &= bits - 1;
                let i = w as u64 * 64 + b;
                if let Some(a) = self.avail.get_mut(i as usize) {
                    *a = a.saturating_sub(1);
                }
            }
            if *word != 0 {
                self.sync_rarest(w);
            }
        }
    }

    /// `peer` sent data that failed verification in a request that was cancelled
    /// meanwhile (a request still running reports it through
    /// [`handle_request_end`](Self::handle_request_end)): it is banned all the same.
    pub fn handle_bad_data(&mut self, peer: &P) {
        self.ban(peer, BanReason::BadData);
    }

    fn ban(&mut self, peer: &P, reason: BanReason) {
        if self.banned.insert(*peer) {
            self.drop_peer(peer, true);
            self.events.push_back(Event::Banned {
                peer: *peer,
                reason,
            });
        }
    }

    /// Returns a removed request's undelivered pieces to the pool.
    fn release(&mut self, req: &Request<P>) {
        for (k, p) in req.pieces.clone().enumerate() {
            if req.got[k] {
                continue;
            }
            let slot = &mut self.inflight[p as usize];
            *slot = slot.saturating_sub(1);
            if *slot == 0 && !self.have.get(p) {
                self.unrequested += 1;
            }
            self.sync_free(p);
        }
    }

    fn strike(&mut self, now: Instant, peer: &P) {
        let banned = match self.peers.get_mut(peer) {
            Some(p) => {
                p.strikes += 1;
                p.strikes >= self.cfg.max_strikes
            }
            None => false,
        };
        if !banned {
            return;
        }
        // The last source of what we miss, which has delivered before, is not banned for
        // stalls (our own disk or link may be the cause): it is paused, longer each time.
        // A peer that never delivered anything is banned: it cannot hold a download up.
        let last_source = self.peers.get(peer).is_some_and(|p| {
            p.delivered > 0
                && !self
                    .peers
                    .iter()
                    .any(|(k, q)| k != peer && self.useful(q) > 0)
        });
        if last_source {
            if let Some(p) = self.peers.get_mut(peer) {
                // Requests that stall together (they were queued together) are one
                // hiccup: while paused, another stall does not lengthen the pause.
                if p.paused_until.is_some_and(|t| t > now) {
                    return;
                }
                p.strikes = self.cfg.max_strikes.saturating_sub(1);
                p.reprieves = p.reprieves.saturating_add(1);
                let pause =
                    Duration::from_secs(1 << p.reprieves.min(6)).min(Duration::from_secs(60));
                p.paused_until = Some(now + pause);
            }
            return;
        }
        self.ban(peer, BanReason::Unreliable);
    }

    /// Request `id` is receiving bytes, short of a verified (or durable) piece: it is not
    /// stalled. Drivers whose store reports pieces in batches call this as bytes arrive,
    /// so a stall timeout measures silence, not the batch size.
    /// `bytes` more bytes of it arrived since the last report; they measure the peer's
    /// rate from then on.
    pub fn handle_activity(&mut self, now: Instant, id: RequestId, bytes: u64) {
        let Some(peer) = self.requests.get(&id).map(|r| r.peer) else {
            return;
        };
        if let Some(p) = self.peers.get_mut(&peer) {
            p.activity = true;
            sample_rate(p, now, bytes);
        }
        let stall = self.stall_of(&peer, 0);
        if let Some(r) = self.requests.get_mut(&id) {
            r.deadline = r.deadline.max(now + stall);
        }
    }

    /// Piece `piece` of request `id` from `peer` arrived and verified (the caller stored
    /// it). Also accepted for cancelled requests: the data is verified either way.
    pub fn handle_piece(&mut self, now: Instant, peer: &P, id: RequestId, piece: u64) {
        if piece >= self.layout.pieces() {
            return;
        }
        let bytes = self.layout.piece_bytes(piece);
        let mut counted = false;
        if let Some(req) = self.requests.get_mut(&id) {
            if req.peer == *peer && req.pieces.contains(&piece) {
                let k = (piece - req.pieces.start) as usize;
                if !req.got[k] {
                    req.got[k] = true;
                    counted = true;
                    req.outstanding_bytes = req.outstanding_bytes.saturating_sub(bytes);
                    req.last_progress = now;
                    let slot = &mut self.inflight[piece as usize];
                    *slot = slot.saturating_sub(1);
                    self.sync_free(piece);
                }
            }
        }
        let stall = self.stall_of(peer, 0);
        if let Some(p) = self.peers.get_mut(peer) {
            if counted {
                p.inflight_bytes = p.inflight_bytes.saturating_sub(bytes);
            }
            p.delivered += bytes;
            // Rate from verified pieces, unless the driver reports bytes as they arrive
            // (then those measure it: pieces may come in bursts).
            if !p.activity {
                sample_rate(p, now, bytes);
            }
        }
        if let Some(cap) = self.peers.get(peer).map(|p| self.window_cap(p)) {
            let min = self.cfg.min_window;
            if let Some(p) = self.peers.get_mut(peer) {
                p.cwnd = (p.cwnd + bytes).min(cap).max(min);
            }
        }
        if let Some(req) = self.requests.get_mut(&id) {
            if counted {
                req.deadline = now + stall;
            }
        }
        if self.have.set(piece) {
            self.sync_free(piece);
            self.verified_bytes += bytes;
            if self.inflight[piece as usize] == 0 && !counted {
                // It was unrequested (or only in a cancelled request).
                self.unrequested = self.unrequested.saturating_sub(1);
            }
            self.events.push_back(Event::Piece {
                piece,
                peer: *peer,
                bytes,
            });
            self.cancel_useless(piece);
        }
        if let Some(req) = self.requests.get(&id) {
            if req.got.iter().all(|g| *g) {
                self.finish_request(now, id);
            }
        }
        self.check_done();
        self.fill(now);
    }

    /// Cancels requests whose every undelivered piece is now held (from other peers). A
    /// request whose pieces all came from its own peer is not useless but finished.
    fn cancel_useless(&mut self, piece: u64) {
        let useless: Vec<RequestId> = self
            .requests
            .iter()
            .filter(|(_, r)| r.pieces.contains(&piece))
            .filter(|(_, r)| r.got.iter().any(|g| !*g))
            .filter(|(_, r)| {
                r.pieces
                    .clone()
                    .enumerate()
                    .all(|(k, p)| r.got[k] || self.have.get(p))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in useless {
            if let Some(req) = self.requests.get(&id) {
                let peer = req.peer;
                self.remove_request(id);
                self.actions.push_back(Action::Cancel { peer, id });
            }
        }
    }

    fn remove_request(&mut self, id: RequestId) -> Option<Request<P>> {
        let req = self.requests.remove(&id)?;
        self.release(&req);
        if let Some(p) = self.peers.get_mut(&req.peer) {
            p.requests.remove(&id);
            p.inflight_bytes = p.inflight_bytes.saturating_sub(req.outstanding_bytes);
            if p.requests.is_empty() {
                p.sample_start = None;
                p.sample_bytes = 0;
            }
        }
        Some(req)
    }

    /// A request delivered in full: it also takes back one strike of its peer, so an
    /// honest peer that stalled now and then in a congested swarm is not banned over a
    /// long download (a peer that never delivers a whole request keeps its strikes).
    /// One delivered after its pause has ended also starts its pauses over: hiccups far
    /// apart each cost a short pause, instead of doubling up to the cap.
    fn finish_request(&mut self, now: Instant, id: RequestId) {
        if let Some(req) = self.remove_request(id) {
            if let Some(p) = self.peers.get_mut(&req.peer) {
                p.strikes = p.strikes.saturating_sub(1);
                if p.paused_until.is_none_or(|t| t <= now) {
                    p.reprieves = 0;
                }
            }
        }
    }

    /// Request `id` ended (unless it was cancelled). Undelivered pieces return to the
    /// pool; the outcome may strike, pause or ban the peer.
    pub fn handle_request_end(&mut self, now: Instant, id: RequestId, outcome: RequestOutcome) {
        let Some(req) = self.remove_request(id) else {
            return;
        };
        let peer = req.peer;
        let undelivered: Vec<u64> = req
            .pieces
            .clone()
            .enumerate()
            .filter(|(k, _)| !req.got[*k])
            .map(|(_, p)| p)
            .collect();
        match outcome {
            RequestOutcome::Finished | RequestOutcome::Missing => {
                if !undelivered.is_empty() || outcome == RequestOutcome::Missing {
                    // It claimed these and did not send them: do not ask it again for them.
                    if let Some(p) = self.peers.get_mut(&peer) {
                        for &i in &undelivered {
                            if p.has.clear(i) {
                                let a = &mut self.avail[i as usize];
                                *a = a.saturating_sub(1);
                            }
                        }
                    }
                    // (`undelivered` ascends: each word once.)
                    let mut words: Vec<usize> =
                        undelivered.iter().map(|&i| (i / 64) as usize).collect();
                    words.dedup();
                    for w in words {
                        self.sync_rarest(w);
                    }
                    self.strike(now, &peer);
                }
            }
            RequestOutcome::Busy { retry_after } => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.paused_until = Some(now + retry_after.min(Duration::from_secs(300)));
                }
            }
            RequestOutcome::NotFound => {
                self.drop_peer(&peer, true);
            }
            RequestOutcome::BadData => self.ban(&peer, BanReason::BadData),
            RequestOutcome::Failed => self.strike(now, &peer),
        }
        self.fill(now);
    }

    /// Advances time: cancels stalled requests, ends pauses.
    pub fn handle_timeout(&mut self, now: Instant) {
        let stalled: Vec<RequestId> = self
            .requests
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        // Requests to one peer that stall together are one incident: one strike.
        let mut struck = BTreeSet::new();
        for id in stalled {
            let Some(req) = self.remove_request(id) else {
                continue;
            };
            let peer = req.peer;
            self.actions.push_back(Action::Cancel { peer, id });
            self.events.push_back(Event::Stalled { peer });
            if let Some(p) = self.peers.get_mut(&peer) {
                // What it managed, if anything, is the best guess of its rate now.
                let span = now
                    .saturating_duration_since(req.last_progress)
                    .as_secs_f64();
                let guess = if span > 0.0 {
                    let seen = self.layout.piece_bytes(req.pieces.start) as f64 / span;
                    // Not `min(p.rate)` while the rate is unknown (0): that would make
                    // the guess 0 and the next stall timeout the maximum.
                    if p.rate > 0.0 { seen.min(p.rate) } else { seen }
                } else {
                    p.rate / 2.0
                };
                p.rate = if p.delivered == 0 {
                    // Nothing from it yet: it stays unmeasured, so its next requests
                    // get the initial stall timeout again, not one stretched by a
                    // made-up rate (a silent peer is banned after three of them).
                    0.0
                } else if p.rate == 0.0 {
                    guess.max(1.0)
                } else {
                    (p.rate / 2.0).min(guess).max(1.0)
                };
                p.cwnd = (p.cwnd / 2).max(self.cfg.min_window);
            }
            if struck.insert(peer) {
                self.strike(now, &peer);
            }
        }
        for p in self.peers.values_mut() {
            if p.paused_until.is_some_and(|t| t <= now) {
                p.paused_until = None;
            }
        }
        self.fill(now);
    }

    /// The next instant [`handle_timeout`](Self::handle_timeout) must be called at.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let reqs = self.requests.values().map(|r| r.deadline);
        let pauses = self.peers.values().filter_map(|p| p.paused_until);
        reqs.chain(pauses).min()
    }

    /// The next action to carry out.
    pub fn poll_action(&mut self) -> Option<Action<P>> {
        self.actions.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event<P>> {
        self.events.pop_front()
    }

    fn check_done(&mut self) {
        if self.is_done() && !self.done_reported {
            self.done_reported = true;
            let ids: Vec<RequestId> = self.requests.keys().copied().collect();
            for id in ids {
                if let Some(req) = self.remove_request(id) {
                    self.actions
                        .push_back(Action::Cancel { peer: req.peer, id });
                }
            }
            self.events.push_back(Event::Done);
        }
    }

    fn window(&self, p: &Peer) -> u64 {
        p.cwnd
    }

    /// Upper bound of a peer's window: four times its measured bandwidth-delay product
    /// (room to probe for more), or the maximum while its rate is unknown.
    fn window_cap(&self, p: &Peer) -> u64 {
        let max = self.cfg.max_window.max(self.cfg.min_window);
        if p.rate <= 0.0 {
            return max;
        }
        let secs = (p.rtt + self.cfg.pipeline_slack).as_secs_f64();
        ((p.rate * secs * 4.0) as u64).clamp(self.cfg.min_window, max)
    }

    /// Stall timeout of a request of `bytes` more bytes to `peer`.
    fn stall_of(&self, peer: &P, bytes: u64) -> Duration {
        let Some(p) = self.peers.get(peer) else {
            return self.cfg.initial_stall;
        };
        if p.rate <= 0.0 {
            return self.cfg.initial_stall.max(p.rtt * 4);
        }
        // Time for one piece (progress comes at least that often) or the whole request
        // at the measured rate, twice over, plus round trips.
        let piece = crate::GROUP_SIZE.max(bytes) as f64;
        let expect = Duration::from_secs_f64((piece / p.rate).min(3600.0));
        // Its pieces may also queue behind everything else in flight on our own link:
        // the bytes in flight to every peer at the rate they arrive at together.
        let (inflight, rate) = self
            .peers
            .values()
            .filter(|q| !q.requests.is_empty())
            .fold((0u64, 0.0f64), |(b, r), q| {
                (b + q.inflight_bytes, r + q.rate)
            });
        let queue = if rate > 0.0 {
            Duration::from_secs_f64((inflight as f64 / rate).min(3600.0))
        } else {
            Duration::ZERO
        };
        // Twice the queue: requests to one peer share its rate, so one request's next
        // bytes may wait behind the others'.
        (expect * 2 + p.rtt * 4 + queue * 2).clamp(self.cfg.min_stall, self.cfg.max_stall)
    }

    fn candidate(&self, p: &Peer, i: u64) -> bool {
        self.free.get(i) && p.has.get(i)
    }

    /// Keeps `free` in step after `have` or `inflight` of piece `i` changed.
    fn sync_free(&mut self, i: u64) {
        let free = !self.have.get(i) && self.inflight.get(i as usize) == Some(&0);
        let changed = if free {
            self.free.set(i)
        } else {
            self.free.clear(i)
        };
        // The word's summary follows in O(1) (this runs for every piece requested,
        // received or released); only the last of its rarest pieces leaving the word
        // needs the word read again.
        if !changed {
            return;
        }
        let w = (i / 64) as usize;
        let (Some(&a), Some((low, count))) = (self.avail.get(i as usize), self.rarest.get_mut(w))
        else {
            return;
        };
        if free {
            if a < *low {
                (*low, *count) = (a, 1);
            } else if a == *low {
                *count += 1;
            }
        } else if a == *low {
            *count -= 1;
            if *count == 0 {
                self.sync_rarest(w);
            }
        }
    }

    /// Panics unless every summary in `rarest` matches `free` and `avail` (tests run it
    /// after every step).
    #[cfg(test)]
    fn assert_rarest_in_step(&self) {
        for (w, &word) in self.free.words.iter().enumerate() {
            let pieces = (0..64).filter(|b| word & (1u64 << b) != 0);
            let avails: Vec<u32> = pieces.map(|b| self.avail[w * 64 + b]).collect();
            let low = avails.iter().copied().min().unwrap_or(u32::MAX);
            let count = avails.iter().filter(|&&a| a == low).count();
            assert_eq!(self.rarest[w], (low, count as u8), "word {w}");
        }
    }

    /// Recomputes `rarest` for word `w` of `free` (after its bits or the availability
    /// of one of its pieces changed).
    fn sync_rarest(&mut self, w: usize) {
        let Some(&word) = self.free.words.get(w) else {
            return;
        };
        let (mut low, mut count) = (u32::MAX, 0u8);
        let mut bits = word;
        while bits != 0 {
            let a = self.avail[w * 64 + bits.trailing_zeros() as usize];
            bits &= bits - 1;
            if a < low {
                (low, count) = (a, 1);
            } else if a == low {
                count += 1;
            }
        }
        self.rarest[w] = (low, count);
    }

    /// Picks a run for a peer: `(pieces, duplicate)`.
    fn pick(&mut self, peer: &P, max_pieces: u64) -> Option<Range<u64>> {
        let n = self.layout.pieces();
        let p = self.peers.get(peer)?;
        if self.unrequested > 0 {
            let start = match self.mode {
                Mode::Sequential { playhead } => {
                    let playhead = playhead.min(n);
                    (playhead..n)
                        .chain(0..playhead)
                        .find(|&i| self.candidate(p, i))
                }
                Mode::RarestFirst => {
                    let offset = if n > 0 { self.rng.gen_range(0..n) } else { 0 };
                    // Candidates (held by the peer, missing, not in flight) from the
                    // offset on, wrapping round, a word at a time, so a peer with nothing
                    // useful costs n / 64 steps, not n. The first pass finds the lowest
                    // availability and how many candidates share it, the second takes one
                    // of those at random: one draw per pick, not one per tie.
                    let words = n.div_ceil(64) as usize;
                    let first = (offset / 64) as usize;
                    let low = u64::MAX << (offset % 64);
                    let candidates = |step: usize| -> Option<(usize, u64)> {
                        let w = (first + step) % words.max(1);
                        let (h, f) = (p.has.words.get(w)?, self.free.words.get(w)?);
                        let mut bits = h & f;
                        if step == 0 {
                            bits &= low;
                        } else if step == words {
                            bits &= !low;
                        }
                        Some((w, bits))
                    };
                    // A word other than the offset's (which is split in two) can be
                    // judged by its summary in `rarest`: skipped when its rarest free
                    // piece is commoner than the best so far, and for a peer that has
                    // everything (its candidates are exactly the free pieces) counted
                    // whole.
                    let all = p.has.count == n;
                    let summary = |step: usize| {
                        (step > 0 && step < words).then(|| self.rarest[(first + step) % words])
                    };
                    let (mut best_avail, mut ties) = (u32::MAX, 0u64);
                    for step in 0..=words {
                        if let Some((lo, count)) = summary(step) {
                            if lo > best_avail {
                                continue;
                            }
                            if all {
                                if lo < best_avail {
                                    (best_avail, ties) = (lo, u64::from(count));
                                } else {
                                    ties += u64::from(count);
                                }
                                continue;
                            }
                        }
                        let Some((w, mut bits)) = candidates(step) else {
                            break;
                        };
                        while bits != 0 {
                            let i = w * 64 + bits.trailing_zeros() as usize;
                            bits &= bits - 1;
                            let a = self.avail[i];
                            if a < best_avail {
                                (best_avail, ties) = (a, 1);
                            } else if a == best_avail {
                                ties += 1;
                            }
                        }
                    }
                    let mut skip = if ties > 0 {
                        self.rng.gen_range(0..ties)
                    } else {
                        0
                    };
                    let mut best = None;
                    'scan: for step in 0..=words {
                        if let Some((lo, count)) = summary(step) {
                            if lo > best_avail {
                                continue;
                            }
                            if all && skip >= u64::from(count) {
                                skip -= u64::from(count);
                                continue;
                            }
                        }
                        let Some((w, mut bits)) = candidates(step) else {
                            break;
                        };
                        while bits != 0 {
                            let i = w * 64 + bits.trailing_zeros() as usize;
                            bits &= bits - 1;
                            if self.avail[i] == best_avail {
                                if skip == 0 {
                                    best = Some(i as u64);
                                    break 'scan;
                                }
                                skip -= 1;
                            }
                        }
                    }
                    best
                }
            };
            if let Some(s) = start {
                let mut e = s + 1;
                while e < n && e - s < max_pieces && self.candidate(p, e) {
                    e += 1;
                }
                return Some(s..e);
            }
            if matches!(self.mode, Mode::RarestFirst) {
                return None;
            }
        }
        // Endgame (everything requested) or deadline duplication.
        let copies = self.cfg.endgame_copies;
        if copies <= 1 {
            return None;
        }
        let mine: Vec<Range<u64>> = p
            .requests
            .iter()
            .filter_map(|id| self.requests.get(id))
            .map(|r| r.pieces.clone())
            .collect();
        let dup_ok = |i: u64| {
            !self.have.get(i)
                && self.inflight[i as usize] > 0
                && self.inflight[i as usize] < copies
                && p.has.get(i)
                && !mine.iter().any(|r| r.contains(&i))
        };
        let range: Box<dyn Iterator<Item = u64>> = match self.mode {
            Mode::Sequential { playhead } if self.unrequested > 0 => {
                // Only urgent pieces held by a slower peer.
                let end = playhead.saturating_add(self.cfg.deadline_window).min(n);
                let my_rate = p.rate;
                let slower = |i: u64| {
                    self.requests.values().any(|r| {
                        r.pieces.contains(&i)
                            && self
                                .peers
                                .get(&r.peer)
                                .is_some_and(|q| q.rate < my_rate * 0.5)
                    })
                };
                let v: Vec<u64> = (playhead.min(n)..end)
                    .filter(|&i| dup_ok(i) && slower(i))
                    .collect();
                Box::new(v.into_iter())
            }
            _ => {
                // Endgame: oldest outstanding first is a fine proxy; any order works.
                let mut held = Vec::new();
                missing_held(&p.has, &self.have, 0..n, &mut held);
                let v: Vec<u64> = held.into_iter().filter(|&i| dup_ok(i)).collect();
                Box::new(v.into_iter())
            }
        };
        let mut it = range;
        let s = it.next()?;
        let mut e = s + 1;
        while e < n && e - s < max_pieces && dup_ok(e) {
            e += 1;
        }
        Some(s..e)
    }

    /// Hands out requests to every peer with room.
    fn fill(&mut self, now: Instant) {
        if self.is_done() {
            return;
        }
        let mut order: Vec<P> = self
            .peers
            .iter()
            .filter(|(_, p)| p.paused_until.is_none_or(|t| t <= now))
            .map(|(k, _)| *k)
            .collect();
        match self.mode {
            Mode::RarestFirst => order.shuffle(&mut self.rng),
            Mode::Sequential { .. } => order.sort_by(|a, b| {
                let ra = self.peers.get(a).map_or(0.0, |p| p.rate);
                let rb = self.peers.get(b).map_or(0.0, |p| p.rate);
                rb.total_cmp(&ra)
            }),
        }
        let piece = crate::GROUP_SIZE;
        for peer in order {
            while let Some(p) = self.peers.get(&peer) {
                if p.requests.len() >= self.cfg.max_requests_per_peer {
                    break;
                }
                let window = self.window(p);
                if p.inflight_bytes >= window && !p.requests.is_empty() {
                    break;
                }
                let room = window.saturating_sub(p.inflight_bytes);
                let size = (window / 2)
                    .min(self.cfg.max_request_bytes)
                    .min(room.max(piece));
                let max_pieces = (size / piece).max(1);
                let Some(run) = self.pick(&peer, max_pieces) else {
                    break;
                };
                self.send_request(now, peer, run);
            }
        }
    }

    fn send_request(&mut self, now: Instant, peer: P, pieces: Range<u64>) {
        let id = self.next_id;
        self.next_id += 1;
        let mut bytes = 0;
        for i in pieces.clone() {
            let slot = &mut self.inflight[i as usize];
            if *slot == 0 {
                self.unrequested = self.unrequested.saturating_sub(1);
            }
            *slot = slot.saturating_add(1);
            self.sync_free(i);
            bytes += self.layout.piece_bytes(i).max(1);
        }
        let stall = self.stall_of(&peer, bytes);
        if let Some(p) = self.peers.get_mut(&peer) {
            p.inflight_bytes += bytes;
            p.requests.insert(id);
            if p.sample_start.is_none() {
                p.sample_start = Some(now);
                p.sample_bytes = 0;
            }
        }
        let len = (pieces.end - pieces.start) as usize;
        self.requests.insert(
            id,
            Request {
                peer,
                pieces: pieces.clone(),
                got: vec![false; len],
                outstanding_bytes: bytes,
                last_progress: now,
                deadline: now + stall,
            },
        );
        self.actions.push_back(Action::Request { peer, id, pieces });
    }
}

/// Appends to `out`, in increasing order, the indices in `range` set in `has` and not in
/// `have`, scanning a word at a time.
fn missing_held(has: &Bits, have: &Bits, range: Range<u64>, out: &mut Vec<u64>) {
    if range.start >= range.end {
        return;
    }
    let first = (range.start / 64) as usize;
    let last = ((range.end - 1) / 64) as usize;
    for w in first..=last {
        let (Some(h), Some(m)) = (has.words.get(w), have.words.get(w)) else {
            break;
        };
        let mut bits = h & !m;
        if w == first {
            bits &= u64::MAX << (range.start % 64);
        }
        if w == last && range.end % 64 != 0 {
            bits &= u64::MAX >> (64 - range.end % 64);
        }
        while bits != 0 {
            out.push(w as u64 * 64 + u64::from(bits.trailing_zeros()));
            bits &= bits - 1;
        }
    }
}

#[cfg(test)]
mod tests;
