//! The `kith-sim gossip` and `kith-sim search` commands: run the scenarios and print
//! their `figure` lines.

use std::process::ExitCode;
use std::time::Instant;

/// Parsed `--flag value` pairs.
#[derive(Debug, Clone, Copy)]
struct Args {
    nodes: Option<usize>,
    seed: u64,
}

fn parse(args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut a = Args {
        nodes: None,
        seed: 1,
    };
    let mut it = args;
    while let Some(flag) = it.next() {
        let val = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = || val.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--nodes" => a.nodes = Some(num()? as usize),
            "--seed" => a.seed = num()?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if a.nodes.is_some_and(|n| n < 2) {
        return Err("--nodes must be at least 2".into());
    }
    Ok(a)
}

/// `kith-sim gossip --nodes N [--seed S]` (arguments after the command name).
pub fn gossip(args: impl Iterator<Item = String>) -> ExitCode {
    let a = match parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}\nusage: kith-sim gossip --nodes N [--seed S]");
            return ExitCode::from(2);
        }
    };
    let wall = Instant::now();
    let p = crate::gossip::GossipParams::new(a.nodes.unwrap_or(1000), a.seed);
    let r = crate::gossip::run(&p);
    println!(
        "# {} members, seed {}; mean active view {:.2}; {} warm-up + {} measured broadcasts of {} B, {:?} apart",
        p.nodes, a.seed, r.mean_active, p.warmup, p.measured, p.payload, p.interval
    );
    println!(
        "# warm-up: delivery {:.4}, rmr {:.4}; steady: delivery {:.4}, rmr {:.4}, last hop median {}, last delivery median {:?}",
        r.warmup.delivery(),
        r.warmup.rmr(),
        r.steady.delivery(),
        r.steady.rmr(),
        r.steady.last_hop_median(),
        r.steady.last_delivery_median()
    );
    println!(
        "# crash: {} of {} members at once; after {:?}: mean active view {:.2}, {} isolated; {} broadcasts: rmr {:.4}, last hop median {}",
        r.crashed,
        p.nodes,
        p.repair,
        r.mean_active_after,
        r.isolated_after,
        r.after_crash.broadcasts,
        r.after_crash.rmr(),
        r.after_crash.last_hop_median()
    );
    println!("figure gossip.delivery {:.4}", r.delivery());
    println!("figure gossip.rmr {:.4}", r.steady.rmr());
    println!(
        "figure gossip.delivery_after_crash {:.4}",
        r.after_crash.delivery()
    );
    println!(
        "figure gossip.last_hop_median {}",
        r.steady.last_hop_median()
    );
    println!("# {:.1}s wall", wall.elapsed().as_secs_f64());
    ExitCode::SUCCESS
}

/// `kith-sim search [--nodes N] [--seed S]` (arguments after the command name).
pub fn search(args: impl Iterator<Item = String>) -> ExitCode {
    let a = match parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}\nusage: kith-sim search [--nodes N] [--seed S]");
            return ExitCode::from(2);
        }
    };
    let wall = Instant::now();
    let p = crate::search::SearchParams::new(a.nodes.unwrap_or(1000), a.seed);
    let r = crate::search::run(&p);
    println!(
        "# {} members, seed {}, mean degree {:.2}; {} popular items on {:.1} % of members each, {} rare items on {} members each; {} queries per mode and class",
        p.nodes,
        a.seed,
        r.mean_degree,
        p.popular_items,
        p.popular_replication * 100.0,
        p.rare_items,
        p.rare_copies,
        p.queries
    );
    println!(
        "# flood ttl {}; walk: {} walkers, ttl {}, stop at first match",
        p.config.flood_ttl, p.config.walkers, p.config.walk_ttl
    );
    println!("# mode   class    hit rate  msgs/query");
    for (mode, class, m) in [
        ("flood", "popular", r.flood_popular),
        ("walk", "popular", r.walk_popular),
        ("flood", "rare", r.flood_rare),
        ("walk", "rare", r.walk_rare),
    ] {
        println!(
            "# {mode:<6} {class:<8} {:>8.4}  {:>10.1}",
            m.hit_rate(),
            m.msgs_per_query()
        );
    }
    for (name, m) in [
        ("flood.popular", r.flood_popular),
        ("walk.popular", r.walk_popular),
        ("flood.rare", r.flood_rare),
        ("walk.rare", r.walk_rare),
    ] {
        println!("figure search.{name}.hit_rate {:.4}", m.hit_rate());
        println!(
            "figure search.{name}.msgs_per_query {:.1}",
            m.msgs_per_query()
        );
    }
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    println!(
        "figure search.popular.walk_vs_flood_hit_rate {:.4}",
        ratio(r.walk_popular.hit_rate(), r.flood_popular.hit_rate())
    );
    println!(
        "figure search.popular.walk_vs_flood_msgs {:.4}",
        ratio(
            r.walk_popular.msgs_per_query(),
            r.flood_popular.msgs_per_query()
        )
    );
    println!("# {:.1}s wall", wall.elapsed().as_secs_f64());
    ExitCode::SUCCESS
}
