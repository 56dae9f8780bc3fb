//! DHT scenarios: build a network, store values, look them up without churn, under
//! churn, and under a Sybil (eclipse) attack. Used by the `kith-sim dht` command and by
//! the tests.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use kith_core::{NodeId, SecretKey};
use kith_overlay::dht::{Config, Key, MutableRecord, QueryResult, Record, RecordKind};
use rand::Rng;

use crate::{Role, Sim, SimConfig};

/// How to build the network.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NetParams {
    /// Honest nodes.
    pub nodes: usize,
    /// Simulator settings (seed, loss, latency).
    pub sim: SimConfig,
    /// Configuration of every honest node.
    pub dht: Config,
    /// Time between two joins.
    pub join_interval: Duration,
    /// Time to let the network settle after the last join.
    pub settle: Duration,
}

impl NetParams {
    /// `nodes` honest nodes with default settings and `seed`.
    pub fn new(nodes: usize, seed: u64) -> Self {
        Self {
            nodes,
            sim: SimConfig {
                seed,
                ..SimConfig::default()
            },
            dht: Config::default(),
            join_interval: Duration::from_millis(20),
            settle: Duration::from_secs(60),
        }
    }
}

/// Builds a network: each node joins through a random node already in it.
pub fn build(p: &NetParams) -> Sim {
    let mut sim = Sim::new(p.sim.clone());
    for i in 0..p.nodes {
        let boot = if i == 0 { None } else { sim.random_honest() };
        sim.add_node(p.dht.clone(), boot);
        sim.run_for(p.join_interval);
    }
    sim.run_for(p.settle);
    sim
}

/// Outcomes of a batch of lookups.
#[derive(Debug, Clone, Default)]
pub struct LookupReport {
    /// Lookups started.
    pub attempts: usize,
    /// Lookups that returned the expected record.
    pub successes: usize,
    /// Duration of each successful lookup.
    pub durations: Vec<Duration>,
    /// Hops of each successful lookup.
    pub hops: Vec<u32>,
    /// Requests sent by each lookup (successful or not).
    pub msgs: Vec<u32>,
}

fn median<T: Copy + Ord + Default>(v: &[T]) -> T {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

impl LookupReport {
    /// Fraction of lookups that succeeded (1.0 for none attempted).
    pub fn success(&self) -> f64 {
        if self.attempts == 0 {
            1.0
        } else {
            self.successes as f64 / self.attempts as f64
        }
    }
    /// Median duration of successful lookups.
    pub fn median_duration(&self) -> Duration {
        median(&self.durations)
    }
    /// Median hops.
    pub fn median_hops(&self) -> u32 {
        median(&self.hops)
    }
    /// Median requests per lookup.
    pub fn median_msgs(&self) -> u32 {
        median(&self.msgs)
    }
    /// Duration of the successful lookup at quantile `q` (0..=1).
    pub fn quantile_duration(&self, q: f64) -> Duration {
        let mut v = self.durations.clone();
        v.sort();
        if v.is_empty() {
            return Duration::ZERO;
        }
        let k = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len());
        v[k - 1]
    }
}

/// A value stored in the network and the key to get it by.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Where it lives.
    pub key: Key,
    /// What a get must return.
    pub record: Record,
}

/// Each of `count` random honest nodes puts a random 100-byte immutable value; returns
/// those whose put stored on at least one node.
pub fn put_values(sim: &mut Sim, count: usize) -> Vec<Stored> {
    let mut started = Vec::new();
    for _ in 0..count {
        let Some(node) = sim.random_honest() else {
            break;
        };
        let value: Vec<u8> = (0..100).map(|_| sim.rng().r#gen()).collect();
        let record = Record::Immutable(Bytes::from(value));
        if let Ok(id) = sim.command(node, |c, now| c.start_put(now, record.clone(), None)) {
            started.push((node, id, record));
        }
        sim.run_for(Duration::from_millis(50));
    }
    sim.run_for(Duration::from_secs(70));
    started
        .into_iter()
        .filter_map(
            |(node, id, record)| match sim.take_result(node, id)?.result {
                QueryResult::Put(Ok(n)) if n > 0 => Some(Stored {
                    key: record.key(),
                    record,
                }),
                _ => None,
            },
        )
        .collect()
}

/// Site records (as kith-site publishes them): for each owner key, a signed mutable
/// record under the salt `kith/site/1` with sequence `seq` and a ~100-byte value (a
/// collection root and a provider hint), put from a random honest node. Returns those
/// stored on at least one node.
pub fn put_site_records(sim: &mut Sim, owners: &[kith_core::SecretKey], seq: u64) -> Vec<Stored> {
    let mut started = Vec::new();
    for owner in owners {
        let Some(node) = sim.random_honest() else {
            break;
        };
        let value: Vec<u8> = (0..100).map(|_| sim.rng().r#gen()).collect();
        let Ok(rec) =
            MutableRecord::sign(owner, &b"kith/site/1"[..], seq, value, &Default::default())
        else {
            continue;
        };
        let record = Record::Mutable(rec);
        if let Ok(id) = sim.command(node, |c, now| c.start_put(now, record.clone(), None)) {
            started.push((node, id, record));
        }
        sim.run_for(Duration::from_millis(50));
    }
    sim.run_for(Duration::from_secs(70));
    started
        .into_iter()
        .filter_map(
            |(node, id, record)| match sim.take_result(node, id)?.result {
                QueryResult::Put(Ok(n)) if n > 0 => Some(Stored {
                    key: record.key(),
                    record,
                }),
                _ => None,
            },
        )
        .collect()
}

struct Pending {
    node: u32,
    id: kith_overlay::dht::QueryId,
    expect: Record,
}

fn start_get(sim: &mut Sim, target: &Stored) -> Option<Pending> {
    let node = sim.random_honest()?;
    let kind = target.record.kind();
    let key = target.key;
    let id = sim.command(node, |c, now| c.start_get(now, key, kind));
    Some(Pending {
        node,
        id,
        expect: target.record.clone(),
    })
}

fn collect(sim: &mut Sim, pending: Vec<Pending>, report: &mut LookupReport) {
    for p in pending {
        report.attempts += 1;
        let Some(f) = sim.take_result(p.node, p.id) else {
            continue;
        };
        report.msgs.push(f.stats.requests);
        if let QueryResult::Get(Ok(r)) = &f.result {
            if *r == p.expect {
                report.successes += 1;
                report.durations.push(f.stats.duration);
                report.hops.push(f.stats.hops);
            }
        }
    }
}

/// Runs `count` gets of random stored values from random honest nodes, one every
/// `spacing`, and waits for all of them.
pub fn get_values(
    sim: &mut Sim,
    stored: &[Stored],
    count: usize,
    spacing: Duration,
) -> LookupReport {
    let mut report = LookupReport::default();
    let mut pending = Vec::new();
    for _ in 0..count {
        if stored.is_empty() {
            break;
        }
        let i = sim.rng().gen_range(0..stored.len());
        if let Some(p) = start_get(sim, &stored[i]) {
            pending.push(p);
        }
        sim.run_for(spacing);
    }
    sim.run_for(Duration::from_secs(70));
    collect(sim, pending, &mut report);
    report
}

/// Churn settings.
#[derive(Debug, Clone)]
pub struct ChurnParams {
    /// Fraction of the honest nodes replaced per simulated hour.
    pub replaced_per_hour: f64,
    /// How long to churn.
    pub duration: Duration,
    /// One get of a random stored value every this long, during the churn.
    pub get_every: Duration,
    /// Configuration of joining nodes.
    pub dht: Config,
    /// Nodes never replaced (for example publishers under test).
    pub protect: Vec<u32>,
}

/// Replaces honest nodes at random (Poisson arrivals) while running gets; returns the
/// gets' outcomes. Replacements join through a random running node.
pub fn churn(sim: &mut Sim, stored: &[Stored], p: &ChurnParams) -> LookupReport {
    let n = sim.alive_honest().len().max(1) as f64;
    let per_sec = p.replaced_per_hour * n / 3600.0;
    let step = Duration::from_millis(100);
    let mut t = Duration::ZERO;
    let mut next_churn = exp(sim, per_sec);
    let mut next_get = p.get_every;
    let mut pending = Vec::new();
    while t < p.duration {
        while next_churn <= t {
            let candidates: Vec<u32> = sim
                .alive_honest()
                .into_iter()
                .filter(|i| !p.protect.contains(i))
                .collect();
            if !candidates.is_empty() {
                let victim = candidates[sim.rng().gen_range(0..candidates.len())];
                sim.kill(victim);
            }
            let boot = sim.random_honest();
            sim.add_node(p.dht.clone(), boot);
            next_churn += exp(sim, per_sec);
        }
        while next_get <= t && !stored.is_empty() {
            let i = sim.rng().gen_range(0..stored.len());
            if let Some(g) = start_get(sim, &stored[i]) {
                pending.push(g);
            }
            next_get += p.get_every;
        }
        sim.run_for(step);
        t += step;
    }
    sim.run_for(Duration::from_secs(70));
    let mut report = LookupReport::default();
    collect(sim, pending, &mut report);
    report
}

fn exp(sim: &mut Sim, per_sec: f64) -> Duration {
    if per_sec <= 0.0 {
        return Duration::MAX / 4;
    }
    let u: f64 = sim.rng().gen_range(f64::EPSILON..1.0);
    Duration::from_secs_f64(-u.ln() / per_sec)
}

/// Sybil settings.
#[derive(Debug, Clone)]
pub struct SybilParams {
    /// Attacker identities.
    pub attackers: usize,
    /// Leading bits every attacker id shares with the targeted key.
    pub prefix_bits: usize,
    /// Gets of the targeted record from random honest nodes.
    pub gets: usize,
    /// Configuration of the attacker nodes' cores (their answers are rewritten).
    pub dht: Config,
}

/// An attacker holding `attackers` ids from one /24 (203.0.113.0/24), all closer to the
/// target key than any honest node, tries to eclipse a mutable record: attackers join,
/// an honest node publishes the record, then honest nodes get it. Returns the gets'
/// outcomes.
///
/// Attacker ids are chosen directly next to the key (as if ground offline); the
/// attackers never sign anything, so they need no secret keys in the simulation.
pub fn sybil(sim: &mut Sim, p: &SybilParams) -> LookupReport {
    let mut report = LookupReport::default();
    let Some(publisher) = sim.random_honest() else {
        return report;
    };
    let owner = SecretKey::generate(sim.rng());
    let value = Bytes::from_static(b"the real value");
    let Ok(rec) = MutableRecord::sign(&owner, &b"eclipse-me"[..], 1, value, &Default::default())
    else {
        return report;
    };
    let key = rec.key();
    let record = Record::Mutable(rec);
    let mut made = 0;
    while made < p.attackers {
        let mut b: [u8; 32] = sim.rng().r#gen();
        for bit in 0..p.prefix_bits.min(255) {
            let (i, m) = (bit / 8, 0x80u8 >> (bit % 8));
            b[i] = (b[i] & !m) | (key.0[i] & m);
        }
        let Ok(id) = NodeId::from_bytes(&b) else {
            continue;
        };
        let host = (made % 254 + 1) as u8;
        let addr = SocketAddr::new(
            Ipv4Addr::new(203, 0, 113, host).into(),
            10_000 + made as u16,
        );
        let boot = sim.random_honest();
        sim.add_node_with(id, addr, p.dht.clone(), Role::Attacker, boot);
        sim.run_for(Duration::from_millis(20));
        made += 1;
    }
    sim.run_for(Duration::from_secs(120));
    let put = sim.command(publisher, |c, now| c.start_put(now, record.clone(), None));
    if let Ok(id) = put {
        sim.run_query(publisher, id, Duration::from_secs(70));
    }
    let target = Stored { key, record };
    debug_assert_eq!(target.record.kind(), RecordKind::Mutable);
    let mut pending = Vec::new();
    for _ in 0..p.gets {
        if let Some(g) = start_get(sim, &target) {
            pending.push(g);
        }
        sim.run_for(Duration::from_millis(50));
    }
    sim.run_for(Duration::from_secs(70));
    collect(sim, pending, &mut report);
    report
}
