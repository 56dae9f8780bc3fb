//! The `kith-sim share` command: run the swarm download scenarios and print their
//! `figure` lines.

use std::process::ExitCode;
use std::time::Instant;

use crate::share::{self, ShareParams, ShareReport};

const USAGE: &str = "usage: kith-sim share [--nodes N] [--seed S] [--mib M] [--slots K] [--busy-retry-ms T] [--scenario flash|hetero|malicious|all]";

#[derive(Debug)]
struct Args {
    nodes: usize,
    seed: u64,
    mib: u64,
    slots: Option<usize>,
    busy_retry_ms: Option<u64>,
    scenario: String,
}

fn parse(args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut a = Args {
        nodes: 1000,
        seed: 1,
        mib: 64,
        slots: None,
        busy_retry_ms: None,
        scenario: "all".into(),
    };
    let mut it = args;
    while let Some(flag) = it.next() {
        let val = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = || val.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--nodes" => a.nodes = num()? as usize,
            "--seed" => a.seed = num()?,
            "--mib" => a.mib = num()?,
            "--slots" => a.slots = Some(num()? as usize),
            "--busy-retry-ms" => a.busy_retry_ms = Some(num()?),
            "--scenario" => a.scenario = val.clone(),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if a.nodes < 2 {
        return Err("--nodes must be at least 2".into());
    }
    if a.mib == 0 {
        return Err("--mib must be at least 1".into());
    }
    if !["flash", "hetero", "malicious", "all"].contains(&a.scenario.as_str()) {
        return Err(format!("unknown scenario {:?}", a.scenario));
    }
    Ok(a)
}

fn describe(name: &str, p: &ShareParams, r: &ShareReport, wall: Instant) {
    println!(
        "# {name}: {} downloaders ({} honest, {} malicious), {} MiB in {} files, seed {}; {} upload slots, busy retry {} ms, {} neighbours",
        p.downloaders,
        r.honest,
        r.malicious,
        p.bytes >> 20,
        p.files,
        p.seed,
        p.upload_slots,
        p.busy_retry.as_millis(),
        p.neighbours
    );
    println!(
        "# {name}: fluid bound {:.2}s; last finished {}, median {:.2}s; {}/{} remaining finished ({} left midway)",
        r.bound.as_secs_f64(),
        r.last_finish
            .map_or("never".to_string(), |t| format!("{:.2}s", t.as_secs_f64())),
        r.median_finish.as_secs_f64(),
        r.completed,
        r.honest - r.left,
        r.left
    );
    println!(
        "# {name}: seeder uploaded {:.3} F; all uploads {:.3} F per honest downloader; duplicate bytes {:.4} F per downloader; {} requests, {} busy, {} stalls, {} honest peers and {} times the seeder banned",
        r.seed_upload_ratio(),
        r.uploaded as f64 / r.bytes.max(1) as f64 / r.honest.max(1) as f64,
        r.duplicate_bytes as f64 / r.bytes.max(1) as f64 / r.honest.max(1) as f64,
        r.requests,
        r.busy,
        r.stalls,
        r.honest_banned,
        r.seeder_banned
    );
    let util: Vec<String> = r
        .uploaded_per_second
        .iter()
        .map(|&b| format!("{:.0}", 100.0 * b as f64 / r.upload_capacity.max(1.0)))
        .collect();
    println!(
        "# {name}: upload use per second, % of capacity: {}",
        util.join(" ")
    );
    println!(
        "# {name}: {} events, {:.1}s virtual, {:.1}s wall",
        r.events,
        r.elapsed.as_secs_f64(),
        wall.elapsed().as_secs_f64()
    );
}

/// `kith-sim share [--nodes N] [--seed S] [--mib M] [--slots K] [--busy-retry-ms T] [--scenario …]`
/// (arguments after the command name).
pub fn share(args: impl Iterator<Item = String>) -> ExitCode {
    let a = match parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let all = a.scenario == "all";
    let tune = |mut p: ShareParams| {
        if let Some(k) = a.slots {
            p.upload_slots = k;
        }
        if let Some(ms) = a.busy_retry_ms {
            p.busy_retry = std::time::Duration::from_millis(ms);
        }
        p
    };
    let mut ok = true;
    if all || a.scenario == "flash" {
        let wall = Instant::now();
        let p = tune(ShareParams::flash(a.nodes, a.mib, a.seed));
        let r = share::run(&p);
        describe("flash", &p, &r, wall);
        println!(
            "figure share.flash.ratio_to_bound {:.3}",
            r.ratio_to_bound()
        );
        println!(
            "figure share.flash.seed_upload_ratio {:.3}",
            r.seed_upload_ratio()
        );
        println!("figure share.flash.completed {:.4}", r.completed_fraction());
        ok &= r.completed_fraction() == 1.0;
    }
    if all || a.scenario == "hetero" {
        let wall = Instant::now();
        let p = tune(ShareParams::hetero(a.nodes, a.mib, a.seed));
        let r = share::run(&p);
        describe("hetero", &p, &r, wall);
        println!(
            "figure share.hetero.completed {:.4}",
            r.completed_fraction()
        );
        println!(
            "figure share.hetero.ratio_to_bound {:.3}",
            r.ratio_to_bound()
        );
        ok &= r.completed_fraction() == 1.0;
    }
    if all || a.scenario == "malicious" {
        let wall = Instant::now();
        let p = tune(ShareParams::malicious(a.nodes, a.mib, a.seed));
        let r = share::run(&p);
        describe("malicious", &p, &r, wall);
        println!(
            "# malicious: {} of {} malicious providers contacted, {} banned by every honest peer that contacted them; {}/{} contacted pairs banned; bad pieces accepted {}; wasted {:.0} B per contacted malicious provider over the swarm",
            r.malicious_contacted,
            r.malicious,
            r.malicious_banned_by_all,
            r.banned_pairs,
            r.contacted_pairs,
            r.bad_accepted,
            r.wasted_per_malicious
        );
        let [c, l, t] = r.by_malice;
        println!(
            "# malicious: banned/contacted pairs: corrupt {}/{}, liars {}/{}, tricklers {}/{}",
            c.1, c.0, l.1, l.0, t.1, t.0
        );
        println!(
            "figure share.malicious.completed {:.4}",
            r.completed_fraction()
        );
        println!(
            "figure share.malicious.banned_ratio {:.4}",
            r.banned_ratio()
        );
        println!(
            "figure share.malicious.wasted_bytes_per_bad_peer {}",
            r.wasted_max
        );
        ok &= r.completed_fraction() == 1.0 && r.bad_accepted == 0;
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `kith-sim update [--nodes N] [--seed S] [--mib M]`: a release channel's swarm. One
/// origin (the publisher) with the upload capacity of a follower (4 MiB/s), N followers
/// fetching an M MiB release at once (default 1,000 and 100 MiB). Prints the share of
/// bytes that did not come from the origin and when 99 % of the followers had the
/// release, over the fluid lower bound.
pub fn update(args: impl Iterator<Item = String>) -> ExitCode {
    let mut args: Vec<String> = args.collect();
    if !args.iter().any(|a| a == "--mib") {
        args.extend(["--mib".into(), "100".into()]);
    }
    let a = match parse(args.into_iter()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}\nusage: kith-sim update [--nodes N] [--seed S] [--mib M]");
            return ExitCode::from(2);
        }
    };
    let wall = Instant::now();
    let p = ShareParams::flash(a.nodes, a.mib, a.seed);
    let r = share::run(&p);
    describe("update", &p, &r, wall);
    println!("figure update.followers {}", r.honest);
    println!("figure update.completed {:.4}", r.completed_fraction());
    println!("figure update.origin_offload {:.4}", r.origin_offload());
    println!(
        "figure update.origin_upload_ratio {:.3}",
        r.seed_upload_ratio()
    );
    println!(
        "figure update.p99_ratio_to_bound {:.3}",
        r.quantile_ratio_to_bound(0.99)
    );
    println!(
        "figure update.last_ratio_to_bound {:.3}",
        r.ratio_to_bound()
    );
    println!("figure update.bound_s {:.1}", r.bound.as_secs_f64());
    if r.completed_fraction() < 1.0 {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
