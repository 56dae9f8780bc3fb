//! `kith-sim dht --nodes N [--seed S] [--churn-minutes M] [--attackers A] [--gets G]
//! [--loss PERCENT]`: builds an N-node DHT in the
//! simulator and prints its `figure` lines (lookup success without churn, under 30 %
//! per hour churn, and under a 1,000-id Sybil attack from one /24).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use kith_overlay::dht::Config;
use kith_sim::scenario::{self, ChurnParams, NetParams, SybilParams};

struct Args {
    nodes: usize,
    seed: u64,
    churn_minutes: u64,
    attackers: usize,
    gets: usize,
    loss_percent: f64,
}

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    match it.next().as_deref() {
        Some("dht") => {}
        other => return Err(format!("unknown command {other:?}; expected `dht`")),
    }
    let mut a = Args {
        nodes: 10_000,
        seed: 1,
        churn_minutes: 60,
        attackers: 1000,
        gets: 1000,
        loss_percent: 0.0,
    };
    while let Some(flag) = it.next() {
        let val = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = || val.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--nodes" => a.nodes = num()? as usize,
            "--seed" => a.seed = num()?,
            "--churn-minutes" => a.churn_minutes = num()?,
            "--attackers" => a.attackers = num()? as usize,
            "--gets" => a.gets = num()? as usize,
            "--loss" => {
                a.loss_percent = val.parse::<f64>().map_err(|e| format!("{flag}: {e}"))?;
                if !(0.0..=50.0).contains(&a.loss_percent) {
                    return Err("--loss must be a percentage from 0 to 50".into());
                }
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if a.nodes < 2 {
        return Err("--nodes must be at least 2".into());
    }
    Ok(a)
}

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("gossip") => return kith_sim::gossip_cli::gossip(std::env::args().skip(2)),
        Some("search") => return kith_sim::gossip_cli::search(std::env::args().skip(2)),
        Some("share") => return kith_sim::share_cli::share(std::env::args().skip(2)),
        Some("update") => return kith_sim::share_cli::update(std::env::args().skip(2)),
        Some("site") => return kith_sim::site_cli::site(std::env::args().skip(2)),
        _ => {}
    }
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "error: {e}\nusage: kith-sim dht --nodes N [--seed S] [--churn-minutes M] [--attackers A] [--gets G] [--loss PERCENT]"
            );
            return ExitCode::from(2);
        }
    };
    let wall = Instant::now();
    let mut params = NetParams::new(args.nodes, args.seed);
    params.sim.loss = args.loss_percent / 100.0;
    let mut sim = scenario::build(&params);
    let rtt = sim.median_rtt(10_000);
    println!(
        "# built {} nodes in {:.1}s wall, {:?} virtual; median RTT {:?}; {} messages",
        args.nodes,
        wall.elapsed().as_secs_f64(),
        sim.elapsed(),
        rtt,
        sim.stats().sent
    );
    let stored = scenario::put_values(&mut sim, 100);
    println!("# stored {} values", stored.len());
    let r = scenario::get_values(&mut sim, &stored, args.gets, Duration::from_millis(100));
    let ratio = r.median_duration().as_secs_f64() / rtt.as_secs_f64().max(1e-9);
    println!("figure dht.lookup.success {:.4}", r.success());
    println!("figure dht.lookup.median_rtts {ratio:.2}");
    println!("figure dht.lookup.hops_median {}", r.median_hops());
    println!("figure dht.lookup.msgs_median {}", r.median_msgs());
    println!(
        "# lookups: {}/{} ok, median {:?}; {:.1}s wall",
        r.successes,
        r.attempts,
        r.median_duration(),
        wall.elapsed().as_secs_f64()
    );
    let churn_for = Duration::from_secs(args.churn_minutes * 60);
    let c = scenario::churn(
        &mut sim,
        &stored,
        &ChurnParams {
            replaced_per_hour: 0.3,
            duration: churn_for,
            get_every: churn_for / args.gets.max(1) as u32,
            dht: Config::default(),
            protect: Vec::new(),
        },
    );
    println!("figure dht.lookup.success_churn {:.4}", c.success());
    println!(
        "# churn: {}/{} ok over {:?} at 30 %/h, median {:?}, msgs median {}; {:.1}s wall",
        c.successes,
        c.attempts,
        churn_for,
        c.median_duration(),
        c.median_msgs(),
        wall.elapsed().as_secs_f64()
    );
    let s = scenario::sybil(
        &mut sim,
        &SybilParams {
            attackers: args.attackers,
            prefix_bits: 24,
            gets: args.gets,
            dht: Config::default(),
        },
    );
    println!("figure dht.sybil.success {:.4}", s.success());
    println!(
        "# sybil: {}/{} ok against {} ids in 203.0.113.0/24, median {:?}, msgs median {}; {:.1}s wall",
        s.successes,
        s.attempts,
        args.attackers,
        s.median_duration(),
        s.median_msgs(),
        wall.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}
