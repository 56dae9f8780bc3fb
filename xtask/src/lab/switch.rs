//! The switch step of `cargo xtask lab matrix`: a stream opened while a connection is
//! relayed survives its move to a direct path with no byte lost.
//!
//! Two extra `kith-lab peer` processes, in the eim and cgnat hosts (both behind
//! endpoint-independent NATs, so the pair goes direct), start with `--probe-delay-ms
//! 1000`: a new relayed connection waits 1 s before probing. The first connects to the
//! second (relayed, asserted), then at once sends 4 MiB on one stream; the relay's
//! per-peer limit (2 MiB/s) makes that take about 2 s, so the path moves to direct in
//! the middle of the transfer. Asserted: `path_before=relayed`, `path_after=direct`, and
//! the receiver's BLAKE3 of the stream equals the sender's (`intact=true`).
//!
//! Figures: `lab.switch.path_before`, `lab.switch.path_after`, `lab.switch.intact`,
//! `lab.switch.ms`.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use super::matrix::{PathSeen, parse_connect, parse_transfer, spawn_peer};
use super::plan::HomeKind;
use super::topology::Lab;

/// Bytes sent across the switch.
const BYTES: u64 = 4 << 20;
/// How long new relayed connections stay on the relay before probing.
const PROBE_DELAY_MS: &str = "1000";

/// What the step found.
#[derive(Debug, Default)]
pub(crate) struct SwitchCheck {
    /// `figure …` lines.
    pub(crate) figures: String,
    /// Failed assertions and breakages.
    pub(crate) problems: Vec<String>,
}

fn host_of(lab: &Lab, kind: HomeKind) -> Option<String> {
    let home = lab.plan.homes.iter().find(|h| h.kind == kind)?;
    Some(home.host.clone())
}

/// Runs the step against the matrix's relay.
pub(crate) fn step(lab: &Lab, exe: &Path, relay: &str, logs: &Path, verbose: bool) -> SwitchCheck {
    let mut out = SwitchCheck::default();
    match run(lab, exe, relay, logs, verbose, &mut out.figures) {
        Ok(problems) => out.problems = problems,
        Err(e) => out.problems.push(format!("switch step: {e}")),
    }
    out
}

fn run(
    lab: &Lab,
    exe: &Path,
    relay: &str,
    logs: &Path,
    verbose: bool,
    f: &mut String,
) -> Result<Vec<String>, String> {
    let a_node = host_of(lab, HomeKind::Eim).ok_or("no eim home")?;
    let b_node = host_of(lab, HomeKind::Cgnat).ok_or("no cgnat home")?;
    let extra = ["--relay", relay, "--probe-delay-ms", PROBE_DELAY_MS];
    let (mut a, _) = spawn_peer(
        lab,
        &a_node,
        exe,
        &extra,
        &logs.join("switch-a.log"),
        "switch",
        verbose,
    )?;
    let (_b, b_addr) = spawn_peer(
        lab,
        &b_node,
        exe,
        &extra,
        &logs.join("switch-b.log"),
        "switch",
        verbose,
    )?;
    let connected = match a.ask(&format!("connect {}", b_addr.hex), Duration::from_secs(25))? {
        Ok(body) => parse_connect(&body)?,
        Err(e) => return Err(format!("connect: {e}")),
    };
    let mut problems = vec![];
    if connected.path != PathSeen::Relayed {
        problems.push(format!(
            "switch step: the connection did not start relayed ({:?})",
            connected.path
        ));
    }
    let start = Instant::now();
    let t = match a.ask(
        &format!("transfer {} {BYTES}", b_addr.id),
        Duration::from_secs(60),
    )? {
        Ok(body) => parse_transfer(&body)?,
        Err(e) => return Err(format!("transfer: {e}")),
    };
    let ms = start.elapsed().as_millis();
    let name = |p: PathSeen| match p {
        PathSeen::Direct(_) => "direct",
        PathSeen::Relayed => "relayed",
        PathSeen::None => "none",
    };
    let _ = writeln!(f, "figure lab.switch.path_before {}", name(t.before));
    let _ = writeln!(f, "figure lab.switch.path_after {}", name(t.after));
    let _ = writeln!(f, "figure lab.switch.intact {}", u8::from(t.intact));
    let _ = writeln!(f, "figure lab.switch.bytes {}", t.bytes);
    let _ = writeln!(f, "figure lab.switch.ms {ms}");
    if t.before != PathSeen::Relayed || !matches!(t.after, PathSeen::Direct(_)) {
        problems.push(format!(
            "switch step: the transfer did not span a relayed→direct move ({} → {})",
            name(t.before),
            name(t.after)
        ));
    }
    if !t.intact || t.bytes != BYTES {
        problems.push(format!(
            "switch step: {} bytes across the switch, intact={}",
            t.bytes, t.intact
        ));
    }
    Ok(problems)
}
