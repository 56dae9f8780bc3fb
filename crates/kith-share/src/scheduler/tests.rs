//! Scheduler tests in virtual time: fake peers with rates and behaviours serve the
//! scheduler's requests; everything is seeded.

use std::collections::BTreeMap;

use super::*;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Behaviour {
    Honest,
    /// Sends a corrupt piece (the caller's verification fails).
    BadData,
    /// Claims every piece, answers "missing".
    Liar,
    /// Sends nothing at all, ever.
    Silent,
    /// Leaves after this many pieces.
    Vanish(u32),
    /// After this many pieces, ignores the next requests until its stalls add up to a
    /// ban, then serves again (a provider whose disk or link hiccups).
    Hiccup(u32),
    /// Like `Hiccup`, again and again: after every this many pieces, ignores the next
    /// six requests.
    Hiccups(u32),
}

struct FakePeer {
    rate: f64,
    behaviour: Behaviour,
    sent: u32,
    /// When its link is free again.
    busy_until: Instant,
}

struct Harness {
    s: Scheduler<u32>,
    peers: BTreeMap<u32, FakePeer>,
    /// (time, peer, request, piece or None for the end of a request)
    pending: Vec<(Instant, u32, RequestId, Option<u64>, RequestOutcome)>,
    now: Instant,
    from: BTreeMap<u32, u64>,
}

impl Harness {
    fn new(pieces_bytes: u64, have: &RangeSet, cfg: SchedulerConfig) -> Self {
        let now = Instant::now();
        Self {
            s: Scheduler::new(Layout::new(vec![pieces_bytes]), have, cfg, 7),
            peers: BTreeMap::new(),
            pending: Vec::new(),
            now,
            from: BTreeMap::new(),
        }
    }

    fn add(&mut self, id: u32, rate: f64, behaviour: Behaviour) {
        self.peers.insert(
            id,
            FakePeer {
                rate,
                behaviour,
                sent: 0,
                busy_until: self.now,
            },
        );
        self.s.add_peer(self.now, id, Duration::from_millis(20));
        self.s.peer_has_all(self.now, &id);
    }

    fn pump_actions(&mut self) {
        while let Some(a) = self.s.poll_action() {
            match a {
                Action::Request { peer, id, pieces } => {
                    let Some(fp) = self.peers.get_mut(&peer) else {
                        continue;
                    };
                    let mut t = fp.busy_until.max(self.now) + Duration::from_millis(10);
                    match fp.behaviour {
                        Behaviour::Liar => {
                            self.pending
                                .push((t, peer, id, None, RequestOutcome::Missing));
                        }
                        Behaviour::Silent => {}
                        Behaviour::Hiccup(n) if fp.sent >= n && fp.sent < n + 6 => {
                            // Silent for a while: its requests time out.
                            fp.sent += 1;
                        }
                        Behaviour::Hiccups(n) if fp.sent >= n && (fp.sent - n) % (n + 6) < 6 => {
                            fp.sent += 1;
                        }
                        Behaviour::BadData => {
                            self.pending
                                .push((t, peer, id, None, RequestOutcome::BadData));
                        }
                        Behaviour::Honest
                        | Behaviour::Vanish(_)
                        | Behaviour::Hiccup(_)
                        | Behaviour::Hiccups(_) => {
                            for p in pieces {
                                t += Duration::from_secs_f64(
                                    self.s.layout().piece_bytes(p) as f64 / fp.rate,
                                );
                                self.pending
                                    .push((t, peer, id, Some(p), RequestOutcome::Finished));
                            }
                            self.pending
                                .push((t, peer, id, None, RequestOutcome::Finished));
                            fp.busy_until = t;
                        }
                    }
                }
                Action::Cancel { id, .. } => {
                    self.pending.retain(|e| e.2 != id);
                }
            }
        }
    }

    /// Runs until done or `limit` of virtual time.
    fn run(&mut self, limit: Duration) -> bool {
        let end = self.now + limit;
        self.pump_actions();
        while !self.s.is_done() && self.now < end {
            self.pending.sort_by_key(|e| e.0);
            let next_event = self.pending.first().map(|e| e.0);
            let next_timer = self.s.poll_timeout();
            let t = match (next_event, next_timer) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (None, None) => break,
            };
            self.now = self.now.max(t);
            if next_event.is_some_and(|e| e <= t) {
                let (_, peer, id, piece, outcome) = self.pending.remove(0);
                let vanish = match self.peers.get_mut(&peer) {
                    Some(fp) => {
                        if let Behaviour::Vanish(n) = fp.behaviour {
                            fp.sent >= n
                        } else {
                            false
                        }
                    }
                    None => true,
                };
                if vanish {
                    self.peers.remove(&peer);
                    self.pending.retain(|e| e.1 != peer);
                    self.s.remove_peer(self.now, &peer);
                } else if let Some(p) = piece {
                    if let Some(fp) = self.peers.get_mut(&peer) {
                        fp.sent += 1;
                    }
                    if !self.s.has_piece(p) {
                        *self.from.entry(peer).or_default() += 1;
                    }
                    self.s.handle_piece(self.now, &peer, id, p);
                } else {
                    self.s.handle_request_end(self.now, id, outcome);
                }
            } else {
                self.s.handle_timeout(self.now);
            }
            self.s.assert_rarest_in_step();
            self.pump_actions();
        }
        self.s.is_done()
    }
}

const MIB: u64 = 1 << 20;

#[test]
fn one_peer_fetches_everything_once() {
    let mut h = Harness::new(8 * MIB, &RangeSet::new(), SchedulerConfig::default());
    h.add(1, 50e6, Behaviour::Honest);
    assert!(h.run(Duration::from_secs(10)));
    assert_eq!(h.from[&1], 512);
    assert_eq!(h.s.verified_bytes(), 8 * MIB);
    let mut done = 0;
    while let Some(e) = h.s.poll_event() {
        done += usize::from(e == Event::Done);
    }
    assert_eq!(done, 1);
}

#[test]
fn three_peers_share_the_work_by_rate() {
    let mut h = Harness::new(64 * MIB, &RangeSet::new(), SchedulerConfig::default());
    h.add(1, 40e6, Behaviour::Honest);
    h.add(2, 20e6, Behaviour::Honest);
    h.add(3, 4e6, Behaviour::Honest);
    assert!(h.run(Duration::from_secs(60)));
    let (a, b, c) = (h.from[&1], h.from[&2], h.from[&3]);
    assert!(a > b && b > c, "{a} {b} {c}");
    // Ideal split is 4096 pieces by 40:20:4; every peer contributed.
    assert!(c > 0);
}

#[test]
fn resume_fetches_only_what_is_missing() {
    let have = RangeSet::from_range(0..300);
    let mut h = Harness::new(8 * MIB, &have, SchedulerConfig::default());
    h.add(1, 50e6, Behaviour::Honest);
    assert!(h.run(Duration::from_secs(10)));
    assert_eq!(h.from[&1], 512 - 300);
}

#[test]
fn a_bad_peer_is_banned_and_honest_peers_finish() {
    let mut h = Harness::new(8 * MIB, &RangeSet::new(), SchedulerConfig::default());
    h.add(1, 20e6, Behaviour::Honest);
    h.add(2, 20e6, Behaviour::BadData);
    h.add(3, 20e6, Behaviour::Liar);
    h.add(4, 20e6, Behaviour::Silent);
    assert!(h.run(Duration::from_secs(120)));
    assert!(h.s.is_banned(&2));
    assert!(h.s.is_banned(&3));
    assert!(!h.s.is_banned(&1));
    assert_eq!(h.from[&1], 512);
    assert!(!h.from.contains_key(&4));
}

#[test]
fn a_silent_peer_is_banned_after_its_strikes() {
    // Slow enough that the download outlasts three stall timeouts.
    let mut h = Harness::new(8 * MIB, &RangeSet::new(), SchedulerConfig::default());
    h.add(1, 200e3, Behaviour::Honest);
    h.add(4, 20e6, Behaviour::Silent);
    assert!(h.run(Duration::from_secs(300)));
    assert!(h.s.is_banned(&4));
    assert_eq!(h.from[&1], 512);
}

#[test]
fn a_vanishing_peer_loses_its_work_to_others() {
    let mut h = Harness::new(16 * MIB, &RangeSet::new(), SchedulerConfig::default());
    h.add(1, 30e6, Behaviour::Vanish(100));
    h.add(2, 10e6, Behaviour::Honest);
    assert!(h.run(Duration::from_secs(60)));
    assert!(h.from[&1] >= 99 && h.from[&1] <= 100);
    assert_eq!(h.from[&1] + h.from[&2], 1024);
}

#[test]
fn a_trickling_peer_does_not_hold_back_the_end() {
    let mut h = Harness::new(16 * MIB, &RangeSet::new(), SchedulerConfig::default());
    h.add(1, 30e6, Behaviour::Honest);
    h.add(2, 2e3, Behaviour::Honest); // 2 KB/s: 8 s a piece
    let start = h.now;
    assert!(h.run(Duration::from_secs(60)));
    let took = h.now - start;
    // Alone the fast peer needs ~0.56 s; the trickler must not add its 8 s per piece.
    assert!(took < Duration::from_secs(6), "took {took:?}");
}

#[test]
fn sequential_mode_fetches_from_the_playhead_in_order() {
    let mut h = Harness::new(8 * MIB, &RangeSet::new(), SchedulerConfig::default());
    h.s.set_mode(h.now, Mode::Sequential { playhead: 256 });
    h.add(1, 10e6, Behaviour::Honest);
    let mut first = Vec::new();
    while first.len() < 20 {
        if let Some(Action::Request { pieces, .. }) = h.s.poll_action() {
            first.push(pieces.start);
        } else {
            break;
        }
    }
    assert_eq!(first[0], 256);
    assert!(first.windows(2).all(|w| w[0] < w[1]), "{first:?}");
    assert!(h.run(Duration::from_secs(60)));
}

#[test]
fn busy_peers_are_paused_then_asked_again() {
    let mut h = Harness::new(MIB, &RangeSet::new(), SchedulerConfig::default());
    h.add(1, 10e6, Behaviour::Honest);
    // Answer the first request with busy.
    let id = match h.s.poll_action() {
        Some(Action::Request { id, .. }) => id,
        other => panic!("{other:?}"),
    };
    h.s.handle_request_end(
        h.now,
        id,
        RequestOutcome::Busy {
            retry_after: Duration::from_secs(2),
        },
    );
    // No request until the pause ends... (other queued requests from the first fill aside)
    h.pending.clear();
    while h.s.poll_action().is_some() {}
    assert!(h.s.poll_timeout().is_some());
    assert!(h.run(Duration::from_secs(30)));
}

#[test]
fn the_last_source_is_paused_not_banned_for_stalls() {
    // One provider that delivers, then goes silent long enough for three stalls, then
    // serves again: with nobody else to ask, it is paused and the download completes.
    let mut h = Harness::new(8 * MIB, &RangeSet::new(), SchedulerConfig::default());
    h.add(1, 20e6, Behaviour::Hiccup(64));
    assert!(h.run(Duration::from_secs(600)));
    assert!(!h.s.is_banned(&1));
    // A silent peer that never delivered is still banned, even when it is the only one.
    let mut h = Harness::new(MIB, &RangeSet::new(), SchedulerConfig::default());
    h.add(4, 20e6, Behaviour::Silent);
    h.run(Duration::from_secs(60));
    assert!(h.s.is_banned(&4));
}

#[test]
fn hiccups_of_the_last_source_far_apart_do_not_lengthen_its_pauses() {
    // The only provider hiccups again and again over a long download (a disk or link
    // that stops now and then), each time long enough to be paused. Each pause is
    // short: one that delivered whole requests since its last pause starts over, so the
    // pauses do not double up to the 60 s cap over the download.
    let mut h = Harness::new(32 * MIB, &RangeSet::new(), SchedulerConfig::default());
    h.add(1, 20e6, Behaviour::Hiccups(200));
    let start = h.now;
    assert!(h.run(Duration::from_secs(3600)));
    assert!(!h.s.is_banned(&1));
    let took = h.now - start;
    assert!(took < Duration::from_secs(60), "took {took:?}");
}

#[test]
fn a_hiccup_of_the_last_source_costs_seconds_not_minutes() {
    // The only provider ignores several requests in a row (a hiccup on either side):
    // the download pauses it briefly and completes, instead of one doubling of the pause
    // per stalled request (requests queued together stall together; that reached the
    // 60 s cap and froze a gateway's download under load).
    let cfg = SchedulerConfig {
        max_strikes: 1,
        ..SchedulerConfig::default()
    };
    let mut h = Harness::new(8 * MIB, &RangeSet::new(), cfg);
    h.add(1, 20e6, Behaviour::Hiccup(64));
    let start = h.now;
    assert!(h.run(Duration::from_secs(600)));
    assert!(!h.s.is_banned(&1));
    let took = h.now - start;
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

#[test]
fn a_peer_with_everything_is_asked_for_the_rarest_pieces() {
    // 4,096 pieces. Peer 1 has them all, peer 2 the first half, peer 3 from 1,024 on:
    // pieces 1,024..2,048 are held three times, the rest twice.
    let mut s: Scheduler<u32> = Scheduler::new(
        Layout::new(vec![64 * MIB]),
        &RangeSet::new(),
        SchedulerConfig::default(),
        11,
    );
    let now = Instant::now();
    for p in 1..=3 {
        s.add_peer(now, p, Duration::from_millis(20));
    }
    s.peer_has(now, &2, &RangeSet::from_range(0..2048));
    s.peer_has(now, &3, &RangeSet::from_range(1024..4096));
    s.peer_has_all(now, &1);
    s.assert_rarest_in_step();
    let mut asked = 0;
    while let Some(a) = s.poll_action() {
        // (Peers 2 and 3 were asked as each became known, when other pieces were
        // rarest.)
        if let Action::Request {
            peer: 1, pieces, ..
        } = a
        {
            assert!(
                !(1024..2048).contains(&pieces.start),
                "asked for {pieces:?}, which three peers hold"
            );
            asked += 1;
        }
    }
    assert!(asked > 0);
}
