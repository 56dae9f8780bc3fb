//! `kith-sim site`: resolving site names (kith-site's signed mutable records) in a
//! Kademlia network of 10,000 simulated nodes.
//!
//! Owners put signed site records (salt `kith/site/1`, ~100-byte values); random nodes
//! resolve them with the DHT's mutable get (disjoint paths, the highest sequence wins).
//! Then every owner publishes a new version (sequence + 1) and random nodes resolve again:
//! a resolve counts only if it returns the newest record.
//!
//! `site.resolve.median_rtts` and `site.resolve.p99_rtts` are a resolve's duration over
//! the network's median round-trip time (as `dht.lookup.median_rtts` is for immutable
//! gets): how many round trips of waiting a browser's first visit costs.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use rand::SeedableRng;

use crate::scenario::{self, NetParams};

const USAGE: &str = "usage: kith-sim site [--nodes N] [--seed S] [--sites K] [--resolves R]";

/// `kith-sim site [--nodes N] [--seed S] [--sites K] [--resolves R]` (arguments after the
/// command name).
pub fn site(args: impl Iterator<Item = String>) -> ExitCode {
    let (mut nodes, mut seed, mut sites, mut resolves) = (10_000usize, 1u64, 20usize, 1000usize);
    let mut it = args;
    while let Some(flag) = it.next() {
        let Some(val) = it.next() else {
            eprintln!("error: {flag} needs a value\n{USAGE}");
            return ExitCode::from(2);
        };
        let Ok(n) = val.parse::<u64>() else {
            eprintln!("error: {flag}: not a number\n{USAGE}");
            return ExitCode::from(2);
        };
        match flag.as_str() {
            "--nodes" => nodes = n as usize,
            "--seed" => seed = n,
            "--sites" => sites = n as usize,
            "--resolves" => resolves = n as usize,
            _ => {
                eprintln!("error: unknown flag {flag}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let r = run(nodes, seed, sites, resolves);
    println!(
        "# {} nodes; median RTT {:?}; {} sites stored; {:.1}s wall",
        nodes, r.rtt, r.stored, r.wall_s
    );
    println!("figure site.resolve.success {:.4}", r.first.success());
    println!("figure site.resolve.median_rtts {:.2}", r.rtts(0.5));
    println!("figure site.resolve.p99_rtts {:.2}", r.rtts(0.99));
    println!(
        "figure site.resolve.update_success {:.4}",
        r.update.success()
    );
    println!(
        "# resolves: {}/{} ok, then {}/{} of the newer version",
        r.first.successes, r.first.attempts, r.update.successes, r.update.attempts
    );
    if r.first.success() < 1.0 || r.update.success() < 1.0 {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// What a site-resolution run measured.
#[derive(Debug, Clone)]
pub struct SiteReport {
    /// The network's median round-trip time.
    pub rtt: Duration,
    /// Sites whose first version was stored.
    pub stored: usize,
    /// Resolves of the first versions.
    pub first: scenario::LookupReport,
    /// Resolves after every site published a newer version (success = the newer one).
    pub update: scenario::LookupReport,
    /// Wall-clock seconds.
    pub wall_s: f64,
}

impl SiteReport {
    /// Quantile `q` of the first resolves' durations, in median RTTs.
    pub fn rtts(&self, q: f64) -> f64 {
        self.first.quantile_duration(q).as_secs_f64() / self.rtt.as_secs_f64().max(1e-9)
    }
}

/// Builds `nodes` nodes, stores `sites` site records, resolves them `resolves` times,
/// publishes a newer version of each and resolves `resolves` times again.
pub fn run(nodes: usize, seed: u64, sites: usize, resolves: usize) -> SiteReport {
    let wall = Instant::now();
    let params = NetParams::new(nodes, seed);
    let mut sim = scenario::build(&params);
    let rtt = sim.median_rtt(10_000);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x517e);
    let owners: Vec<kith_core::SecretKey> = (0..sites)
        .map(|_| kith_core::SecretKey::generate(&mut rng))
        .collect();
    let v1 = scenario::put_site_records(&mut sim, &owners, 1);
    let first = scenario::get_values(&mut sim, &v1, resolves, Duration::from_millis(100));
    let v2 = scenario::put_site_records(&mut sim, &owners, 2);
    let update = scenario::get_values(&mut sim, &v2, resolves, Duration::from_millis(100));
    SiteReport {
        rtt,
        stored: v1.len(),
        first,
        update,
        wall_s: wall.elapsed().as_secs_f64(),
    }
}
