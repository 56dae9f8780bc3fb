//! `cargo xtask lab`: the NAT lab. Linux network namespaces, veth pairs and nftables
//! NAT routers build a small internet on one machine: public hosts, a home network
//! behind each kind of NAT, a carrier-grade double NAT and a UDP-blocking firewall.
//! `check` proves with real traffic that each router behaves like the NAT it claims
//! to be. See `docs/nat-lab.md`.
//!
//! ```text
//! cargo xtask lab topology up [--id ID] [--delay-ms N] [--require-delay] [-v]
//! cargo xtask lab topology down [--id ID | --all]
//! cargo xtask lab topology status [--id ID]
//! cargo xtask lab plan                      print the address plan
//! cargo xtask lab check [--quick] [--id ID] [--delay-ms N] [--keep] [--no-input-drop]
//! cargo xtask lab matrix [--quick] [--loss PCT] [--id ID] [--keep] [--no-build] [-v]
//! cargo xtask lab mdns [--id ID] [--keep] [--no-build] [-v]
//! cargo xtask lab portmap [--quick] [--id ID] [--keep] [--no-build] [-v]
//! cargo xtask lab spoof [--quick] [--id ID] [--keep] [--no-build] [-v]
//! cargo xtask lab renumber [--id ID] [--keep] [--no-build] [-v]
//! ```
//!
//! Needs root, `ip`/`tc` (iproute2) and `nft` (nftables). Uses only std: it shells out
//! to those tools and re-executes itself (`lab _tool …`) inside namespaces for the
//! UDP/TCP probes.
//!
//! Module map: [`plan`] (addresses, pure), [`nft`] (rule text, pure), [`sys`] (running
//! tools with timeouts), [`topology`] (build/teardown/state file), [`tool`] (the probe
//! tool), [`check`] (the behaviour checks), [`hygiene`] (the lab stays in its fences),
//! [`matrix`] (the real `kith` binaries, pair by pair; `docs/nat-matrix.md`), [`mdns`]
//! (two peers on one segment find each other with mDNS), [`portmap`]
//! (`kith-lab peer --port-map` against miniupnpd on a home router), [`spoof`] (forged and
//! replayed path probes do not move a path), [`renumber`] (a home
//! router's WAN address changes under a direct connection).

mod check;
mod delay;
mod hygiene;
mod matrix;
mod mdns;
mod nft;
mod plan;
mod portmap;
mod relaycheck;
mod renumber;
mod spoof;
mod switch;
mod sys;
mod tool;
mod topology;

use std::path::Path;

use nft::RuleOptions;
use topology::{Lab, LabConfig};

const USAGE: &str = "usage:
  cargo xtask lab topology up [--id ID] [--delay-ms N] [--require-delay] [-v]
  cargo xtask lab topology down [--id ID | --all]
  cargo xtask lab topology status [--id ID]
  cargo xtask lab plan
  cargo xtask lab check [--quick] [--id ID] [--delay-ms N] [--require-delay] [--keep]
                        [--no-input-drop] [-v]
  cargo xtask lab matrix [--quick] [--loss PCT] [--id ID] [--keep] [--no-build] [-v]
  cargo xtask lab mdns [--id ID] [--keep] [--no-build] [-v]

  cargo xtask lab portmap [--quick] [--id ID] [--keep] [--no-build] [-v]
  cargo xtask lab spoof [--quick] [--id ID] [--keep] [--no-build] [-v]

  cargo xtask lab renumber [--id ID] [--keep] [--no-build] [-v]";

/// Default one-way delay per access link and direction, in ms.
const DEFAULT_DELAY_MS: u32 = 10;
/// Delay with `--quick`.
const QUICK_DELAY_MS: u32 = 2;

/// Parsed command-line options shared by the subcommands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Options {
    /// Lab settings.
    pub(crate) lab: LabConfig,
    /// `--quick`: less delay, shorter negative timeouts.
    pub(crate) quick: bool,
    /// `--keep`: leave the topology up after `check`.
    pub(crate) keep: bool,
    /// `--all` (for `down`).
    pub(crate) all: bool,
}

fn parse_options(args: &[String], default_id: &str) -> Result<Options, String> {
    let mut o = Options {
        lab: LabConfig {
            id: default_id.into(),
            delay_ms: DEFAULT_DELAY_MS,
            require_delay: false,
            loss_pct: 0,
            rules: RuleOptions::default(),
            verbose: false,
        },
        quick: false,
        keep: false,
        all: false,
    };
    let mut delay = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--id" => o.lab.id = it.next().ok_or("--id needs a value")?.clone(),
            "--delay-ms" => {
                let v = it.next().ok_or("--delay-ms needs a value")?;
                let ms: u32 = v
                    .parse()
                    .map_err(|e| format!("bad --delay-ms {v:?}: {e}"))?;
                if ms > 200 {
                    return Err("--delay-ms: at most 200".into());
                }
                delay = Some(ms);
            }
            "--loss" => {
                let v = it.next().ok_or("--loss needs a value")?;
                let pct: u32 = v.parse().map_err(|e| format!("bad --loss {v:?}: {e}"))?;
                if pct > 50 {
                    return Err("--loss: at most 50 (per cent)".into());
                }
                o.lab.loss_pct = pct;
            }
            "--quick" => o.quick = true,
            "--keep" => o.keep = true,
            "--all" => o.all = true,
            "--require-delay" => o.lab.require_delay = true,
            "--no-input-drop" => o.lab.rules.input_drop = false,
            "-v" | "--verbose" => o.lab.verbose = true,
            other => return Err(format!("unknown option {other:?}\n{USAGE}")),
        }
    }
    o.lab.delay_ms = delay.unwrap_or(if o.quick {
        QUICK_DELAY_MS
    } else {
        DEFAULT_DELAY_MS
    });
    topology::validate_id(&o.lab.id)?;
    Ok(o)
}

/// Takes `--no-build` out of `args`: (whether to build `kith`, the other arguments).
fn no_build(args: &[String]) -> (bool, Vec<String>) {
    let rest: Vec<String> = args
        .iter()
        .filter(|a| *a != "--no-build")
        .cloned()
        .collect();
    (rest.len() == args.len(), rest)
}

/// Prints each problem a lab step found on stderr and returns the step's error,
/// `lab <step>: N problem(s) (logs in DIR)` (at least 1: a step may fail without a
/// listed problem).
pub(crate) fn problems_error(step: &str, problems: &[String], logs: &Path) -> String {
    for p in problems {
        eprintln!("{p}");
    }
    format!(
        "lab {step}: {} problem(s) (logs in {})",
        problems.len().max(1),
        logs.display()
    )
}

/// Entry point of `cargo xtask lab [args]`.
pub(crate) fn run(root: &Path, args: &[String]) -> Result<(), String> {
    let (cmd, rest) = match args.split_first() {
        Some((c, r)) => (c.as_str(), r),
        None => return Err(USAGE.into()),
    };
    match cmd {
        "topology" => topology_command(root, rest),
        "check" => check::run(root, &parse_options(rest, "check")?),
        "matrix" | "portmap" => {
            let build = !rest.iter().any(|a| a == "--no-build");
            let rest: Vec<String> = rest
                .iter()
                .filter(|a| *a != "--no-build")
                .cloned()
                .collect();
            let opts = parse_options(&rest, cmd)?;
            if cmd == "matrix" {
                matrix::run(root, &opts, build)
            } else {
                portmap::run(root, &opts, build)
            }
        }
        "spoof" => {
            let (build, rest) = no_build(rest);
            spoof::run(root, &parse_options(&rest, "spoof")?, build)
        }
        "mdns" => {
            let (build, rest) = no_build(rest);
            mdns::run(root, &parse_options(&rest, "mdns")?, build)
        }
        "renumber" => {
            let (build, rest) = no_build(rest);
            renumber::run(root, &parse_options(&rest, "renumber")?, build)
        }
        "plan" => {
            print!("{}", plan::Plan::standard().describe());
            Ok(())
        }
        // Hidden: re-executed inside namespaces and as the cleanup helper.
        "_tool" => tool::main(rest),
        "_reaper" => topology::reaper_main(rest),
        "delayd" => delay::daemon(rest),
        _ => Err(USAGE.into()),
    }
}

fn topology_command(root: &Path, args: &[String]) -> Result<(), String> {
    let (cmd, rest) = args.split_first().ok_or(USAGE)?;
    let o = parse_options(rest, "main")?;
    match cmd.as_str() {
        "up" => {
            let lab = Lab::up(root, &o.lab)?;
            println!("figure lab.topology.namespaces {}", lab.plan.nodes.len());
            println!("figure lab.delay_ms {}", lab.delay_ms);
            println!(
                "lab {:?} is up; enter a node with `ip netns exec {} <command>`; \
                 `cargo xtask lab topology down --id {}` removes it",
                lab.id,
                lab.ns("eim-h"),
                lab.id
            );
            lab.keep();
            Ok(())
        }
        "down" => {
            sys::require_tools()?;
            let removed = if o.all {
                topology::teardown_all(root)?
            } else {
                topology::teardown(root, &o.lab.id)?
            };
            println!("removed {} namespaces", removed.len());
            Ok(())
        }
        "status" => {
            print!("{}", topology::status(root, &o.lab.id)?);
            Ok(())
        }
        other => Err(format!("unknown topology command {other:?}\n{USAGE}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn options() {
        let o = parse_options(&args("--quick --id c1 --no-input-drop"), "check").unwrap();
        assert!(o.quick && !o.lab.rules.input_drop);
        assert_eq!(o.lab.id, "c1");
        assert_eq!(o.lab.delay_ms, QUICK_DELAY_MS);
        let o = parse_options(&args("--delay-ms 25"), "main").unwrap();
        assert_eq!((o.lab.id.as_str(), o.lab.delay_ms), ("main", 25));
        assert!(parse_options(&args("--delay-ms 999"), "x").is_err());
        assert!(parse_options(&args("--id ../etc"), "x").is_err());
        assert!(parse_options(&args("--bogus"), "x").is_err());
    }
}
