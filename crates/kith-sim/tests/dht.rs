//! Seeded DHT simulations at 1,000+ nodes, asserting success ratios.

use std::time::Duration;

use bytes::Bytes;
use kith_core::SecretKey;
use kith_overlay::dht::message::{Body, Request};
use kith_overlay::dht::{Message, MutableRecord, QueryResult, Record, RecordKind};
use kith_sim::scenario::{self, ChurnParams, NetParams, Stored, SybilParams};

fn lean(nodes: usize, seed: u64) -> NetParams {
    let mut p = NetParams::new(nodes, seed);
    p.join_interval = Duration::from_millis(10);
    p.settle = Duration::from_secs(30);
    // Lean joins keep debug-build tests fast: a node joins with one self-lookup, and
    // its far buckets fill from traffic (the 10,000-node run uses the defaults).
    p.dht.refresh_on_join = false;
    p
}

#[test]
fn lookups_succeed_at_1000_nodes_without_churn() {
    let mut sim = scenario::build(&lean(1000, 11));
    let stored = scenario::put_values(&mut sim, 20);
    assert_eq!(stored.len(), 20, "every put stored");
    let r = scenario::get_values(&mut sim, &stored, 200, Duration::from_millis(20));
    assert_eq!(r.attempts, 200);
    assert_eq!(r.success(), 1.0, "{r:?}");
    assert!(r.median_hops() <= 4, "median hops {}", r.median_hops());
    let min = sim
        .alive_honest()
        .iter()
        .map(|&i| sim.core(i).routing_table().len())
        .min()
        .unwrap_or(0);
    assert!(min >= 20, "smallest routing table has {min} peers");
}

/// Storers drop records after 10 minutes; after 20 minutes of 50 %/h churn the values
/// whose publishers republish every 3 minutes are all found, the others are gone.
#[test]
fn records_survive_churn_through_republish() {
    let mut p = lean(1000, 12);
    p.dht.record_ttl = Duration::from_secs(600);
    p.dht.republish_interval = Some(Duration::from_secs(180));
    let mut sim = scenario::build(&p);
    let mut lazy_cfg = p.dht.clone();
    lazy_cfg.republish_interval = None;
    let mut publishers = Vec::new();
    for i in 0..20 {
        let cfg = if i % 2 == 0 {
            p.dht.clone()
        } else {
            lazy_cfg.clone()
        };
        let boot = sim.random_honest();
        publishers.push(sim.add_node(cfg, boot));
    }
    sim.run_for(Duration::from_secs(30));
    let mut stored: Vec<(bool, Stored)> = Vec::new();
    for (i, &node) in publishers.iter().enumerate() {
        let record = Record::Immutable(Bytes::from(format!("value {i}")));
        let id = sim
            .command(node, |c, now| c.start_put(now, record.clone(), None))
            .unwrap_or_else(|e| panic!("{e}"));
        let f = sim.run_query(node, id, Duration::from_secs(70));
        assert!(matches!(f.map(|f| f.result), Some(QueryResult::Put(Ok(n))) if n > 0));
        let key = record.key();
        stored.push((i % 2 == 0, Stored { key, record }));
    }
    let duration = Duration::from_secs(1200);
    scenario::churn(
        &mut sim,
        &[],
        &ChurnParams {
            replaced_per_hour: 0.5,
            duration,
            get_every: duration,
            dht: p.dht.clone(),
            protect: publishers.clone(),
        },
    );
    let (kept, lost): (Vec<_>, Vec<_>) = stored.into_iter().partition(|(r, _)| *r);
    let kept: Vec<Stored> = kept.into_iter().map(|(_, s)| s).collect();
    let lost: Vec<Stored> = lost.into_iter().map(|(_, s)| s).collect();
    let r = scenario::get_values(&mut sim, &kept, 100, Duration::from_millis(20));
    assert!(r.success() >= 0.99, "republished values: {r:?}");
    let r = scenario::get_values(&mut sim, &lost, 50, Duration::from_millis(20));
    assert_eq!(r.successes, 0, "values that were not republished expired");
}

/// 200 attackers next to a mutable record's key, then 100 gets of it.
fn sybil_attack(p: NetParams) -> scenario::LookupReport {
    let mut sim = scenario::build(&p);
    scenario::sybil(
        &mut sim,
        &SybilParams {
            attackers: 200,
            prefix_bits: 24,
            gets: 100,
            dht: p.dht.clone(),
        },
    )
}

/// 200 attacker ids from one /24, all closer to a mutable record's key than any honest
/// node, answer lookups with each other only and hide the record. The per-bucket and
/// per-path subnet caps plus disjoint paths keep gets succeeding.
#[test]
fn sybil_ids_from_one_subnet_do_not_eclipse_a_key() {
    let r = sybil_attack(lean(1000, 13));
    assert_eq!(r.attempts, 100);
    assert!(r.success() >= 0.99, "{r:?}");
}

/// Forged and stale records sent straight to storing nodes are refused, and gets keep
/// returning the genuine, newest record.
#[test]
fn forged_and_stale_records_are_rejected() {
    let mut sim = scenario::build(&lean(300, 14));
    let owner = SecretKey::from_bytes(&[9; 32]);
    let limits = Default::default();
    let publisher = sim.random_honest().unwrap_or(0);
    let v2 = MutableRecord::sign(&owner, &b"s"[..], 2, &b"genuine"[..], &limits)
        .unwrap_or_else(|e| panic!("{e}"));
    let key = v2.key();
    let id = sim
        .command(publisher, |c, now| {
            c.start_put(now, Record::Mutable(v2.clone()), None)
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let f = sim.run_query(publisher, id, Duration::from_secs(70));
    assert!(matches!(f.map(|f| f.result), Some(QueryResult::Put(Ok(n))) if n >= 10));

    let holders: Vec<u32> = sim
        .alive_honest()
        .into_iter()
        .filter(|&i| sim.core(i).local_record(sim.now(), &key).is_some())
        .collect();
    assert!(holders.len() >= 10);

    let mut forged = v2.clone();
    forged.value = Bytes::from_static(b"forged");
    forged.seq = 3;
    let stale = MutableRecord::sign(&owner, &b"s"[..], 1, &b"old"[..], &limits)
        .unwrap_or_else(|e| panic!("{e}"));
    let attacker = sim.random_honest().unwrap_or(0);
    let before: u64 = holders
        .iter()
        .map(|&h| sim.core(h).stats().records_rejected)
        .sum();
    for &h in &holders {
        for rec in [forged.clone(), stale.clone()] {
            let msg = Message {
                txid: 1,
                sender: None,
                client_mode: true,
                body: Body::Request(Request::Put {
                    record: Record::Mutable(rec),
                    cas: None,
                }),
            };
            sim.send_raw(attacker, h, msg);
        }
    }
    sim.run_for(Duration::from_secs(5));
    let after: u64 = holders
        .iter()
        .map(|&h| sim.core(h).stats().records_rejected)
        .sum();
    assert_eq!(after - before, 2 * holders.len() as u64);
    for &h in &holders {
        assert_eq!(
            sim.core(h).local_record(sim.now(), &key),
            Some(&Record::Mutable(v2.clone()))
        );
    }
    let mut ok = 0;
    for _ in 0..20 {
        let node = sim.random_honest().unwrap_or(0);
        let id = sim.command(node, |c, now| c.start_get(now, key, RecordKind::Mutable));
        if let Some(f) = sim.run_query(node, id, Duration::from_secs(70)) {
            ok += usize::from(f.result == QueryResult::Get(Ok(Record::Mutable(v2.clone()))));
        }
    }
    assert_eq!(ok, 20);
}

/// The control for the test above: with the subnet caps off and a single lookup path,
/// the same attack hides the record from most gets, so the defences are what holds.
#[test]
fn sybil_attack_succeeds_without_the_defences() {
    let mut p = lean(1000, 13);
    p.dht.max_per_subnet = 0;
    p.dht.lookup_max_per_subnet = 0;
    p.dht.disjoint_mutable_gets = false;
    let r = sybil_attack(p);
    assert_eq!(r.attempts, 100);
    eprintln!("success without defences: {}", r.success());
    assert!(r.success() < 0.5, "{r:?}");
}

/// With 2 % of messages lost, parallel lookups still find every value. Joins use the
/// default full bucket refresh here: with lean joins, loss can leave a few nodes
/// unknown to everyone until their periodic refresh.
#[test]
fn lookups_survive_message_loss() {
    let mut p = lean(1000, 15);
    p.dht.refresh_on_join = true;
    p.sim.loss = 0.02;
    let mut sim = scenario::build(&p);
    let stored = scenario::put_values(&mut sim, 20);
    assert_eq!(stored.len(), 20);
    let r = scenario::get_values(&mut sim, &stored, 200, Duration::from_millis(20));
    assert!(r.success() >= 0.99, "{r:?}");
    assert!(sim.stats().lost > 0);
}

#[test]
fn site_names_resolve_and_newer_versions_win() {
    // The site scenario at small scale (the full run is `cargo xtask sim site`).
    let r = kith_sim::site_cli::run(300, 11, 5, 50);
    assert_eq!(r.stored, 5, "{r:?}");
    assert_eq!(r.first.success(), 1.0, "{r:?}");
    assert_eq!(
        r.update.success(),
        1.0,
        "every resolve after the update saw it: {r:?}"
    );
    assert!(r.rtts(0.5) > 0.0 && r.rtts(0.99) >= r.rtts(0.5));
}
