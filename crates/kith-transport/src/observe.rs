//! What observers say our public address is, and how much of it we believe.
//!
//! Observers are the configured STUN servers, the home relay (both *trusted*: the
//! application chose them) and every peer reached at a real address (its hello names the
//! address it sees for us: *untrusted*). A peer can say anything, so what a peer says
//! counts only when independent peers agree:
//!
//! * each observer counts with its latest report only;
//! * untrusted observers vote per network (the /24 of an IPv4 address, the /48 of an
//!   IPv6 one): all peers in one network are one vote, so one host (or one operator's
//!   subnet) with many keys is still one vote;
//! * an address an untrusted observer reports is *accepted* only when at least
//!   [`ObservationConfig::quorum`] networks report it;
//! * an untrusted observer whose report changes more than
//!   [`ObservationConfig::max_changes`] times within [`ObservationConfig::change_window`]
//!   is muted (ignored) for a window;
//! * at most [`ObservationConfig::max_observers`] untrusted observers are tracked (the
//!   oldest report goes first).
//!
//! What comes out: the accepted reflexive addresses (every trusted report, and the
//! agreed untrusted ones), the reports the NAT is classified from (trusted ones, and
//! untrusted ones of accepted addresses), and whether a report indicates that our
//! network changed (a trusted observer's report moved, or an untrusted observer's new
//! address just reached the quorum), at most once per
//! [`ObservationConfig::change_interval`].
//!
//! Sans-IO: a plain struct fed with `now` by its caller; no clock, no socket.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use kith_core::NodeId;

/// Who reported an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Observer {
    /// A STUN server, by address.
    Server(SocketAddr),
    /// A peer (its hello), by node id.
    Peer(NodeId),
}

/// Limits of [`Observations`].
#[derive(Debug, Clone)]
pub(crate) struct ObservationConfig {
    /// Distinct networks of untrusted observers that must report an address before it
    /// is accepted.
    pub(crate) quorum: usize,
    /// Untrusted observers tracked at once.
    pub(crate) max_observers: usize,
    /// Trusted observers tracked at once.
    pub(crate) max_trusted: usize,
    /// Report changes an untrusted observer may make within `change_window` before it
    /// is muted for `change_window`.
    pub(crate) max_changes: usize,
    /// See `max_changes`.
    pub(crate) change_window: Duration,
    /// Shortest time between two network-change indications.
    pub(crate) change_interval: Duration,
}

impl Default for ObservationConfig {
    fn default() -> Self {
        Self {
            quorum: 2,
            max_observers: 64,
            max_trusted: 16,
            max_changes: 3,
            change_window: Duration::from_secs(60),
            change_interval: Duration::from_secs(3),
        }
    }
}

/// The network an observer's address lies in: its /24 (IPv4) or /48 (IPv6) prefix.
/// An IPv4-mapped IPv6 address is taken as the IPv4 address it maps.
pub(crate) fn network_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            Ipv4Addr::new(o[0], o[1], o[2], 0).into()
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => network_of(v4.into()),
            None => {
                let s = v6.segments();
                Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0).into()
            }
        },
    }
}

#[derive(Debug, Clone)]
struct Entry {
    trusted: bool,
    /// Where the observer is (its address as we see it).
    from: SocketAddr,
    network: IpAddr,
    /// The address it sees for us.
    seen: SocketAddr,
    /// When the report arrived (eviction order).
    at: Instant,
    /// When its report changed recently, oldest first (untrusted observers only).
    changes: VecDeque<Instant>,
    /// Ignored until then.
    muted_until: Option<Instant>,
}

impl Entry {
    fn counts(&self, now: Instant) -> bool {
        self.trusted || self.muted_until.is_none_or(|t| now >= t)
    }
}

/// What one report changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Outcome {
    /// The report indicates that our network changed (already rate-limited).
    pub(crate) network_changed: bool,
    /// The observer is muted: it changed its report too often.
    pub(crate) muted: bool,
}

/// The reports of our address, and what we believe of them. See the module docs.
#[derive(Debug)]
pub(crate) struct Observations {
    cfg: ObservationConfig,
    entries: BTreeMap<Observer, Entry>,
    last_change: Option<Instant>,
    changes: u64,
}

impl Observations {
    pub(crate) fn new(cfg: ObservationConfig) -> Self {
        Self {
            cfg,
            entries: BTreeMap::new(),
            last_change: None,
            changes: 0,
        }
    }

    /// Records that `observer`, at `from` (`trusted` if a configured STUN server or the
    /// home relay), sees our socket at `seen`.
    pub(crate) fn report(
        &mut self,
        now: Instant,
        observer: Observer,
        from: SocketAddr,
        trusted: bool,
        seen: SocketAddr,
    ) -> Outcome {
        let before = self.accepted_at(now);
        let prev = self.entries.get(&observer).map(|e| e.seen);
        if prev.is_none() {
            self.make_room(trusted);
        }
        let cfg = &self.cfg;
        let e = self.entries.entry(observer).or_insert_with(|| Entry {
            trusted,
            from,
            network: network_of(from.ip()),
            seen,
            at: now,
            changes: VecDeque::new(),
            muted_until: None,
        });
        e.trusted = trusted;
        e.from = from;
        e.network = network_of(from.ip());
        e.seen = seen;
        e.at = now;
        let moved = prev.is_some_and(|p| p != seen);
        if moved && !trusted {
            while e
                .changes
                .front()
                .is_some_and(|t| now.duration_since(*t) >= cfg.change_window)
            {
                e.changes.pop_front();
            }
            e.changes.push_back(now);
            if e.changes.len() > cfg.max_changes {
                e.muted_until = Some(now + cfg.change_window);
                e.changes.clear();
            }
        }
        let muted = !e.counts(now);
        let after = self.accepted_at(now);
        let indicated =
            moved && !muted && (trusted || (!before.contains(&seen) && after.contains(&seen)));
        let limited = self
            .last_change
            .is_some_and(|t| now.duration_since(t) < self.cfg.change_interval);
        let network_changed = indicated && !limited;
        if network_changed {
            self.last_change = Some(now);
            self.changes += 1;
        }
        Outcome {
            network_changed,
            muted,
        }
    }

    /// Drops the oldest report of the kind about to be added, if that kind is full.
    fn make_room(&mut self, trusted: bool) {
        let cap = if trusted {
            self.cfg.max_trusted
        } else {
            self.cfg.max_observers
        };
        let same: Vec<(Observer, Instant)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.trusted == trusted)
            .map(|(o, e)| (*o, e.at))
            .collect();
        if same.len() >= cap.max(1) {
            if let Some((o, _)) = same.iter().min_by_key(|(_, at)| *at) {
                self.entries.remove(o);
            }
        }
    }

    /// Forgets what `observer` reported (its connection closed, a server stopped
    /// answering).
    pub(crate) fn forget(&mut self, observer: &Observer) {
        self.entries.remove(observer);
    }

    /// The latest address `observer` reported, whether or not it counts.
    #[cfg(test)]
    pub(crate) fn reported(&self, observer: &Observer) -> Option<SocketAddr> {
        self.entries.get(observer).map(|e| e.seen)
    }

    /// Untrusted addresses reported by at least `quorum` networks, and every trusted
    /// report: trusted ones first, in a stable order.
    pub(crate) fn accepted_at(&self, now: Instant) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = Vec::new();
        for e in self.entries.values().filter(|e| e.trusted) {
            if !out.contains(&e.seen) {
                out.push(e.seen);
            }
        }
        let mut votes: BTreeMap<SocketAddr, BTreeSet<IpAddr>> = BTreeMap::new();
        for e in self
            .entries
            .values()
            .filter(|e| !e.trusted && e.counts(now))
        {
            votes.entry(e.seen).or_default().insert(e.network);
        }
        for (addr, nets) in votes {
            if nets.len() >= self.cfg.quorum.max(1) && !out.contains(&addr) {
                out.push(addr);
            }
        }
        out
    }

    /// `(observer, what it sees)` pairs to classify the NAT from: every trusted report,
    /// and the untrusted reports of accepted addresses.
    pub(crate) fn classification_at(&self, now: Instant) -> Vec<(SocketAddr, SocketAddr)> {
        let accepted = self.accepted_at(now);
        self.entries
            .values()
            .filter(|e| e.trusted || (e.counts(now) && accepted.contains(&e.seen)))
            .map(|e| (e.from, e.seen))
            .collect()
    }

    /// Network changes indicated so far.
    #[cfg(test)]
    pub(crate) fn changes(&self) -> u64 {
        self.changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

    fn id(n: u8) -> NodeId {
        kith_core::SecretKey::from_bytes(&[n; 32]).node_id()
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|_| unreachable!())
    }

    fn obs() -> Observations {
        Observations::new(ObservationConfig::default())
    }

    const OURS: &str = "203.0.113.16:40000";

    #[test]
    fn networks_are_slash_24_and_slash_48() {
        assert_eq!(
            network_of("198.51.100.7".parse().unwrap_or_else(|_| unreachable!())),
            "198.51.100.0"
                .parse::<IpAddr>()
                .unwrap_or_else(|_| unreachable!())
        );
        assert_eq!(
            network_of("2001:db8:1:2::9".parse().unwrap_or_else(|_| unreachable!())),
            "2001:db8:1::"
                .parse::<IpAddr>()
                .unwrap_or_else(|_| unreachable!())
        );
        assert_eq!(
            network_of(
                "::ffff:198.51.100.7"
                    .parse()
                    .unwrap_or_else(|_| unreachable!())
            ),
            "198.51.100.0"
                .parse::<IpAddr>()
                .unwrap_or_else(|_| unreachable!())
        );
    }

    #[test]
    fn a_trusted_report_is_accepted_alone() {
        let mut o = obs();
        let t = Instant::now();
        let s = sa("198.51.100.1:3478");
        o.report(t, Observer::Server(s), s, true, sa(OURS));
        assert_eq!(o.accepted_at(t), [sa(OURS)]);
        assert_eq!(o.classification_at(t), [(s, sa(OURS))]);
    }

    #[test]
    fn one_peer_is_not_believed() {
        let mut o = obs();
        let t = Instant::now();
        o.report(
            t,
            Observer::Peer(id(1)),
            sa("198.51.100.9:1"),
            false,
            sa(OURS),
        );
        assert!(o.accepted_at(t).is_empty());
        assert!(o.classification_at(t).is_empty());
    }

    #[test]
    fn many_peers_in_one_network_are_one_vote() {
        let mut o = obs();
        let t = Instant::now();
        for i in 1..=20u8 {
            let from = SocketAddr::new([198, 51, 100, i].into(), 1000 + u16::from(i));
            o.report(t, Observer::Peer(id(i)), from, false, sa(OURS));
        }
        assert!(o.accepted_at(t).is_empty());
    }

    #[test]
    fn peers_in_two_networks_agreeing_are_believed() {
        let mut o = obs();
        let t = Instant::now();
        let (a, b) = (sa("198.51.100.9:1"), sa("192.0.2.9:1"));
        o.report(t, Observer::Peer(id(1)), a, false, sa(OURS));
        o.report(t, Observer::Peer(id(2)), b, false, sa(OURS));
        assert_eq!(o.accepted_at(t), [sa(OURS)]);
        let mut c = o.classification_at(t);
        c.sort();
        let mut want = vec![(a, sa(OURS)), (b, sa(OURS))];
        want.sort();
        assert_eq!(c, want);
        // Disagreeing peers are not believed, even together with agreeing ones.
        o.report(
            t,
            Observer::Peer(id(3)),
            sa("192.0.2.200:1"),
            false,
            sa("203.0.113.16:1"),
        );
        assert_eq!(o.accepted_at(t), [sa(OURS)]);
    }

    #[test]
    fn only_the_latest_report_counts() {
        let mut o = obs();
        let t = Instant::now();
        let (a, b) = (sa("198.51.100.9:1"), sa("192.0.2.9:1"));
        o.report(t, Observer::Peer(id(1)), a, false, sa(OURS));
        o.report(t, Observer::Peer(id(2)), b, false, sa(OURS));
        o.report(t, Observer::Peer(id(2)), b, false, sa("203.0.113.16:2"));
        assert!(o.accepted_at(t).is_empty());
        o.forget(&Observer::Peer(id(1)));
        assert_eq!(o.reported(&Observer::Peer(id(1))), None);
    }

    #[test]
    fn a_trusted_observer_moving_is_a_network_change_rate_limited() {
        let mut o = obs();
        let t = Instant::now();
        let s = sa("198.51.100.1:3478");
        let r = o.report(t, Observer::Server(s), s, true, sa(OURS));
        assert!(!r.network_changed, "a first report is no change");
        let r = o.report(t, Observer::Server(s), s, true, sa(OURS));
        assert!(!r.network_changed, "the same address is no change");
        let r = o.report(t, Observer::Server(s), s, true, sa("203.0.113.40:40000"));
        assert!(r.network_changed);
        let t1 = t + Duration::from_secs(1);
        let r = o.report(t1, Observer::Server(s), s, true, sa(OURS));
        assert!(!r.network_changed, "within the interval");
        let t2 = t + Duration::from_secs(4);
        let r = o.report(t2, Observer::Server(s), s, true, sa("203.0.113.41:40000"));
        assert!(r.network_changed);
        assert_eq!(o.changes(), 2);
    }

    #[test]
    fn a_lying_peer_changes_nothing() {
        let mut o = obs();
        let t = Instant::now();
        let s1 = sa("198.51.100.1:3478");
        let s2 = sa("198.51.100.2:3478");
        o.report(t, Observer::Server(s1), s1, true, sa(OURS));
        o.report(t, Observer::Server(s2), s2, true, sa(OURS));
        let accepted = o.accepted_at(t);
        let class = o.classification_at(t);
        for i in 0..1000u32 {
            let now = t + Duration::from_millis(u64::from(i) * 100);
            let lie = SocketAddr::new([192, 0, 2, (i % 250) as u8].into(), (i % 60000) as u16 + 1);
            let r = o.report(now, Observer::Peer(id(9)), sa("192.0.2.77:5"), false, lie);
            assert!(!r.network_changed);
            assert_eq!(o.accepted_at(now), accepted);
            assert_eq!(o.classification_at(now), class);
        }
        assert_eq!(o.changes(), 0);
    }

    #[test]
    fn an_observer_that_flaps_is_muted_for_a_window() {
        let mut o = obs();
        let t = Instant::now();
        let (a, b) = (sa("198.51.100.9:1"), sa("192.0.2.9:1"));
        let x = sa("203.0.113.16:1");
        let y = sa("203.0.113.16:2");
        o.report(t, Observer::Peer(id(1)), a, false, x);
        // Three changes are allowed, the fourth mutes.
        for (i, s) in [y, x, y].into_iter().enumerate() {
            let r = o.report(t, Observer::Peer(id(1)), a, false, s);
            assert!(!r.muted, "change {i}");
        }
        let r = o.report(t, Observer::Peer(id(1)), a, false, x);
        assert!(r.muted);
        o.report(t, Observer::Peer(id(2)), b, false, x);
        assert!(o.accepted_at(t).is_empty(), "a muted observer has no vote");
        let later = t + Duration::from_secs(61);
        assert_eq!(o.accepted_at(later), [x], "the mute ends");
    }

    #[test]
    fn an_honest_move_seen_by_a_quorum_is_a_network_change() {
        let mut o = obs();
        let t = Instant::now();
        let (a, b) = (sa("198.51.100.9:1"), sa("192.0.2.9:1"));
        let moved = sa("203.0.113.40:40000");
        o.report(t, Observer::Peer(id(1)), a, false, sa(OURS));
        o.report(t, Observer::Peer(id(2)), b, false, sa(OURS));
        let t1 = t + Duration::from_secs(10);
        let r = o.report(t1, Observer::Peer(id(1)), a, false, moved);
        assert!(!r.network_changed, "one peer is not enough");
        let r = o.report(t1, Observer::Peer(id(2)), b, false, moved);
        assert!(r.network_changed);
        assert_eq!(o.accepted_at(t1), [moved]);
    }

    #[test]
    fn tracked_observers_are_bounded() {
        let mut o = obs();
        let t = Instant::now();
        let s = sa("198.51.100.1:3478");
        o.report(t, Observer::Server(s), s, true, sa(OURS));
        for i in 0..200u32 {
            let from = SocketAddr::new([10, (i / 250) as u8, (i % 250) as u8, 1].into(), 1);
            o.report(
                t + Duration::from_millis(u64::from(i)),
                Observer::Peer(
                    kith_core::SecretKey::from_bytes(&{
                        let mut k = [0u8; 32];
                        k[..4].copy_from_slice(&i.to_be_bytes());
                        k
                    })
                    .node_id(),
                ),
                from,
                false,
                sa("203.0.113.99:9"),
            );
        }
        let untrusted = o.entries.values().filter(|e| !e.trusted).count();
        assert_eq!(untrusted, 64);
        assert_eq!(
            o.reported(&Observer::Server(s)),
            Some(sa(OURS)),
            "trusted stay"
        );
    }

    /// One step of a random run: who reports what, and when.
    #[derive(Debug, Clone)]
    struct Step {
        liar: bool,
        who: u8,
        net: u8,
        port: u16,
        dt_ms: u16,
    }

    fn step() -> impl Strategy<Value = Step> {
        (any::<bool>(), 0u8..8, 0u8..4, 1u16..6, 0u16..5000).prop_map(
            |(liar, who, net, port, dt_ms)| Step {
                liar,
                who,
                net,
                port,
                dt_ms,
            },
        )
    }

    /// With a seeded RNG: whatever peers that all live in one network (the liars: one
    /// operator with many keys) report, nothing they say is accepted, classification is
    /// that of the trusted servers, no network change is indicated; and honest peers in
    /// distinct networks that agree are always accepted unless muted.
    #[test]
    fn liars_in_one_network_never_count_seeded() {
        let cfg = Config {
            cases: 256,
            failure_persistence: None,
            rng_algorithm: RngAlgorithm::ChaCha,
            ..Config::default()
        };
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[14u8; 32]);
        let mut runner = TestRunner::new_with_rng(cfg, rng);
        let res = runner.run(&proptest::collection::vec(step(), 1..200), |steps| {
            let mut o = obs();
            let mut now = Instant::now();
            let s1 = sa("198.51.100.1:3478");
            let s2 = sa("198.51.100.2:3478");
            o.report(now, Observer::Server(s1), s1, true, sa(OURS));
            o.report(now, Observer::Server(s2), s2, true, sa(OURS));
            let trusted_class = o.classification_at(now);
            for s in steps {
                now += Duration::from_millis(u64::from(s.dt_ms));
                if s.liar {
                    let from = SocketAddr::new([192, 0, 2, s.net].into(), 7000 + u16::from(s.who));
                    let lie = SocketAddr::new([203, 0, 113, s.net].into(), s.port);
                    let r = o.report(now, Observer::Peer(id(100 + s.who)), from, false, lie);
                    prop_assert!(!r.network_changed);
                } else {
                    // Honest peers each in their own network, all telling the truth.
                    let from = SocketAddr::new([10, s.who, s.net, 1].into(), 9);
                    let r = o.report(now, Observer::Peer(id(1 + s.who)), from, false, sa(OURS));
                    prop_assert!(!r.network_changed);
                }
                prop_assert_eq!(o.accepted_at(now), vec![sa(OURS)]);
                let mut class = o.classification_at(now);
                class.retain(|(_, seen)| *seen != sa(OURS));
                prop_assert!(class.is_empty(), "only the truth classifies");
                prop_assert!(
                    trusted_class
                        .iter()
                        .all(|r| o.classification_at(now).contains(r))
                );
            }
            prop_assert_eq!(o.changes(), 0);
            Ok(())
        });
        if let Err(e) = res {
            panic!("{e}");
        }
    }

    proptest! {
        /// Bounds hold for any sequence of reports: tracked observers never exceed the
        /// caps, the accepted set holds only trusted reports and addresses a quorum of
        /// networks reports, and changes are indicated at most once per interval.
        #[test]
        fn bounds_hold(steps in proptest::collection::vec(
            (any::<bool>(), 0u8..100, 0u8..6, 0u8..3, 0u16..4000, any::<bool>()), 1..300)
        ) {
            let mut o = obs();
            let mut now = Instant::now();
            let mut last: Option<Instant> = None;
            for (trusted, who, net, port, dt, forget) in steps {
                now += Duration::from_millis(u64::from(dt));
                let from = SocketAddr::new([10, net, 0, who].into(), 1);
                let observer = if trusted {
                    Observer::Server(SocketAddr::new([198, 51, 100, who % 20].into(), 3478))
                } else {
                    Observer::Peer(id(who))
                };
                if forget {
                    o.forget(&observer);
                    continue;
                }
                let seen = SocketAddr::new([203, 0, 113, 16].into(), 40000 + u16::from(port));
                let r = o.report(now, observer, from, trusted, seen);
                if r.network_changed {
                    if let Some(l) = last {
                        prop_assert!(now.duration_since(l) >= o.cfg.change_interval);
                    }
                    last = Some(now);
                }
                prop_assert!(o.entries.values().filter(|e| e.trusted).count() <= o.cfg.max_trusted);
                prop_assert!(o.entries.values().filter(|e| !e.trusted).count() <= o.cfg.max_observers);
                for a in o.accepted_at(now) {
                    let trusted_says = o.entries.values().any(|e| e.trusted && e.seen == a);
                    let nets: BTreeSet<IpAddr> = o.entries.values()
                        .filter(|e| !e.trusted && e.counts(now) && e.seen == a)
                        .map(|e| e.network)
                        .collect();
                    prop_assert!(trusted_says || nets.len() >= o.cfg.quorum);
                }
            }
        }
    }
}
