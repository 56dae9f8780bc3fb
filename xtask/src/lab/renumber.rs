//! The lab's renumbering step: the WAN address of a home router changes under a
//! connection that went direct, and the connection finds the new direct path by
//! itself (the host behind the router is not told anything).
//!
//! 1. starts the relay in `pub1`, coturn (STUN only) in `pub2` when it is installed, a
//!    peer `P` in `pub2` and a peer `H` in the EIM home (`eim-h`, behind `eim-r`), both
//!    with `--relay` (and `--stun`);
//! 2. `P` dials `H` (relayed first) and waits for the direct path, to `eim-r`'s WAN
//!    address;
//! 3. `H` starts a transfer to `P` (128 MiB, hashed end to end) and, while it runs,
//!    `eim-r` is renumbered: a free address of its WAN subnet (203.0.113.40 or the next
//!    free one) replaces the old one (`promote_secondaries`, default route renewed,
//!    conntrack flushed with `conntrack -F` where installed; otherwise the kernel's
//!    masquerade clean-up drops the flows of the removed address);
//! 4. `P` waits (`wait-direct <H> <ms> <new ip>`) for a direct path to the new address;
//!    then the transfer's reply is read and the paths checked.
//!
//! `H` learns its new public address from the relay: the relay's QUIC connection
//! migrates to the new address, the relay sends a new hello, and `H` treats the changed
//! observation as a network change (and from coturn, asked again then).
//!
//! Figures: `lab.renumber.direct_again 1|0`, `lab.renumber.ms <renumbering → direct at
//! the new address>`, `lab.renumber.transfer_intact 1|0`, `lab.renumber.transfer_spanned
//! 1|0` (the transfer was still running when the address changed).
//!
//! `cargo xtask lab renumber`; needs root and network namespaces, says why it skips
//! otherwise.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use super::Options;
use super::matrix::{Coturn, Kith, PathSeen, PeerAddr, STUN_PORT, parse_transfer, parse_wait};
use super::plan::{HomeKind, Plan};
use super::sys::{self, Cmd};
use super::topology::{Lab, state_dir};

/// Deadline for `connect`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `P` waits for the first direct path, ms.
const FIRST_DIRECT_MS: u64 = 10_000;
/// How long `P` waits for the direct path to the new address, ms.
const AGAIN_DIRECT_MS: u64 = 15_000;
/// Bytes of the transfer across the change.
const TRANSFER_BYTES: u64 = 128 << 20;
/// Deadline for the transfer's reply after the renumbering.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(30);
/// The first address tried for the router's new WAN address.
const FIRST_NEW: u8 = 40;

/// What the step saw.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct RenumberOutcome {
    /// The router's WAN address before and after.
    pub(crate) addrs: Option<(Ipv4Addr, Ipv4Addr)>,
    /// `P` had a direct path to the new address in time.
    pub(crate) direct_again: bool,
    /// Time from the renumbering to that direct path, ms.
    pub(crate) ms: Option<u64>,
    /// The transfer across the change arrived intact.
    pub(crate) transfer_intact: bool,
    /// The transfer was still running when the address changed.
    pub(crate) transfer_spanned: bool,
    /// What went wrong.
    pub(crate) problems: Vec<String>,
}

impl RenumberOutcome {
    /// The `figure …` lines.
    pub(crate) fn figures(&self) -> String {
        let mut f = String::new();
        let flag = |b: bool| u8::from(b);
        let _ = writeln!(
            f,
            "figure lab.renumber.direct_again {}",
            flag(self.direct_again)
        );
        let _ = writeln!(
            f,
            "figure lab.renumber.ms {}",
            self.ms.map_or("n/a".into(), |m| m.to_string())
        );
        let _ = writeln!(
            f,
            "figure lab.renumber.transfer_intact {}",
            flag(self.transfer_intact)
        );
        let _ = writeln!(
            f,
            "figure lab.renumber.transfer_spanned {}",
            flag(self.transfer_spanned)
        );
        f
    }
}

/// A free host address in the subnet of `router`'s `wan` interface, from `.FIRST_NEW`
/// on: not used by any interface of the plan.
pub(crate) fn free_wan_addr(plan: &Plan, router: &str) -> Option<(Ipv4Addr, Ipv4Addr, u8)> {
    let wan = plan.node(router)?.ifaces.iter().find(|i| i.name == "wan")?;
    let used: Vec<Ipv4Addr> = plan
        .nodes
        .iter()
        .flat_map(|n| n.ifaces.iter().map(|i| i.addr))
        .collect();
    let base = u32::from(wan.subnet.base);
    (u32::from(FIRST_NEW)..(wan.subnet.size() as u32))
        .map(|k| Ipv4Addr::from(base + k))
        .find(|ip| wan.subnet.is_host(*ip) && !used.contains(ip))
        .map(|ip| (wan.addr, ip, wan.subnet.prefix))
}

/// The commands that move `router`'s WAN address from `old` to `new` (`/prefix`).
pub(crate) fn renumber_cmds(
    ns: &str,
    old: Ipv4Addr,
    new: Ipv4Addr,
    prefix: u8,
    gateway: Option<Ipv4Addr>,
) -> Vec<Cmd> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();
    let mut cmds = vec![
        // Removing the primary address must keep (promote) the new secondary one.
        Cmd::new(
            "ip",
            s(&[
                "netns",
                "exec",
                ns,
                "sysctl",
                "-qw",
                "net.ipv4.conf.wan.promote_secondaries=1",
            ]),
        ),
        Cmd::new(
            "ip",
            s(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{new}/{prefix}"),
                "dev",
                "wan",
            ]),
        ),
        Cmd::new(
            "ip",
            s(&[
                "-n",
                ns,
                "addr",
                "del",
                &format!("{old}/{prefix}"),
                "dev",
                "wan",
            ]),
        ),
    ];
    if let Some(gw) = gateway {
        cmds.push(Cmd::new(
            "ip",
            s(&[
                "-n",
                ns,
                "route",
                "replace",
                "default",
                "via",
                &gw.to_string(),
            ]),
        ));
    }
    cmds
}

fn start_peer(
    lab: &Lab,
    node: &str,
    exe: &Path,
    logs: &Path,
    relay: &str,
    stun: Option<SocketAddr>,
    verbose: bool,
) -> Result<(Kith, PeerAddr), String> {
    let stun = stun.map(|s| s.to_string());
    let mut extra = vec!["--relay", relay];
    if let Some(s) = &stun {
        extra.extend(["--stun", s.as_str()]);
    }
    let log = logs.join(format!("{node}-renumber.log"));
    super::matrix::spawn_peer(lab, node, exe, &extra, &log, "renumber", verbose)
}

/// Runs the step on a lab that is up; never fails, the outcome says what happened.
pub(crate) fn step(lab: &Lab, exe: &Path, logs: &Path, verbose: bool) -> RenumberOutcome {
    let mut out = RenumberOutcome::default();
    if let Err(e) = run_step(lab, exe, logs, verbose, &mut out) {
        out.problems.push(format!("renumber: {e}"));
    }
    out
}

fn run_step(
    lab: &Lab,
    exe: &Path,
    logs: &Path,
    verbose: bool,
    out: &mut RenumberOutcome,
) -> Result<(), String> {
    let plan = &lab.plan;
    let (Some(relay_node), Some(p_node)) = (plan.publics.first(), plan.publics.get(1)) else {
        return Err("the lab needs two public hosts".into());
    };
    let home = plan
        .homes
        .iter()
        .find(|h| h.kind == HomeKind::Eim)
        .ok_or("the lab has no EIM home")?;
    let (old, new, prefix) =
        free_wan_addr(plan, &home.router).ok_or("no free address for the router's WAN")?;
    let gateway = plan.node(&home.router).and_then(|n| n.gateway);
    let ip = |node: &str| {
        plan.primary_addr(node)
            .ok_or_else(|| format!("no address for {node}"))
    };
    let (relay, relay_addr) = super::matrix::spawn_relay(lab, relay_node, exe, logs, verbose)?;
    let coturn = if sys::have("turnserver") {
        Coturn::start(
            lab,
            p_node,
            SocketAddr::new(ip(p_node)?.into(), STUN_PORT),
            logs,
        )
        .map_err(|e| eprintln!("renumber: no STUN server: {e}"))
        .ok()
    } else {
        eprintln!("renumber: turnserver not installed; no STUN (the relay's hello suffices)");
        None
    };
    let stun = coturn.as_ref().map(|c| c.addr);
    let (mut p, p_addr) = start_peer(lab, p_node, exe, logs, &relay_addr, stun, verbose)?;
    let (mut h, h_addr) = start_peer(lab, &home.host, exe, logs, &relay_addr, stun, verbose)?;
    let p_id = p_addr.id;

    // P dials H (through the relay first) and waits for the direct path.
    p.ask(&format!("connect {}", h_addr.hex), CONNECT_TIMEOUT)?
        .map_err(|e| format!("connect: {e}"))?;
    let first = p
        .ask(
            &format!("wait-direct {} {FIRST_DIRECT_MS} {old}", h_addr.id),
            CONNECT_TIMEOUT,
        )?
        .map_err(|e| format!("wait-direct: {e}"))
        .and_then(|b| parse_wait(&b))?;
    if !matches!(first.path, PathSeen::Direct(a) if a.ip() == IpAddr::V4(old)) {
        return Err(format!(
            "no direct path to {old} before renumbering: {:?}",
            first.path
        ));
    }
    eprintln!("renumber: direct to {old} after {:?} ms", first.ms);

    // A transfer from H, and the renumbering while it runs.
    h.send(&format!("transfer {p_id} {TRANSFER_BYTES}"))?;
    let early = h.try_line();
    let ns = lab.ns(&home.router);
    let t0 = Instant::now();
    for c in renumber_cmds(&ns, old, new, prefix, gateway) {
        c.run()?;
    }
    if sys::have("conntrack") {
        // Flows of the old address that the masquerade clean-up left.
        let _ = Cmd::new("ip", ["netns", "exec", &ns, "conntrack", "-F"]).run();
    }
    out.addrs = Some((old, new));
    eprintln!(
        "renumber: {} WAN {old} -> {new} in {} ms",
        home.router,
        t0.elapsed().as_millis()
    );
    let again = p.ask(
        &format!("wait-direct {} {AGAIN_DIRECT_MS} {new}", h_addr.id),
        Duration::from_millis(AGAIN_DIRECT_MS) + CONNECT_TIMEOUT,
    );
    let elapsed = t0.elapsed().as_millis() as u64;
    match again?
        .map_err(|e| format!("wait-direct: {e}"))
        .and_then(|b| parse_wait(&b))
    {
        Ok(w) => match w.path {
            PathSeen::Direct(a) if a.ip() == IpAddr::V4(new) => {
                out.direct_again = true;
                // From the renumbering to the reply (the command's own ms= starts after
                // the renumbering commands).
                out.ms = Some(elapsed);
            }
            other => out.problems.push(format!(
                "not direct to {new} within {AGAIN_DIRECT_MS} ms: {other:?}"
            )),
        },
        Err(e) => out.problems.push(e),
    }

    // The transfer's reply.
    let reply = match early {
        Some(line) => {
            out.problems.push(format!(
                "the transfer ended before the renumbering ({line}); make it longer"
            ));
            super::matrix::parse_reply(&line)?
        }
        None => {
            out.transfer_spanned = true;
            h.reply(TRANSFER_TIMEOUT)?
        }
    };
    match reply
        .map_err(|e| format!("transfer: {e}"))
        .and_then(|b| parse_transfer(&b))
    {
        Ok(t) if t.intact && t.bytes == TRANSFER_BYTES => out.transfer_intact = true,
        Ok(t) => out.problems.push(format!("transfer not intact: {t:?}")),
        Err(e) => out.problems.push(e),
    }
    // The connection is the same one on both sides, now direct from H too.
    match h.ask(&format!("path {p_id}"), CONNECT_TIMEOUT)? {
        Ok(b) => eprintln!("renumber: H's path to P now: {b}"),
        Err(e) => out.problems.push(format!("H lost the connection: {e}")),
    }
    drop(relay);
    Ok(())
}

/// Entry point of `cargo xtask lab renumber`: the lab, the step, the teardown.
pub(crate) fn run(root: &Path, opts: &Options, build: bool) -> Result<(), String> {
    if let Err(e) = sys::require_tools() {
        println!("lab renumber: skipped: {e}");
        return Ok(());
    }
    let exe = super::matrix::kith_ready(root, build)?;
    let lab = Lab::up(root, &opts.lab)?;
    let logs = state_dir(root).join(format!("renumber-{}", lab.id));
    std::fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;
    let outcome = step(&lab, &exe, &logs, opts.lab.verbose);
    print!("{}", outcome.figures());
    println!("peer logs: {}", logs.display());
    if opts.keep {
        lab.keep();
    }
    if outcome.problems.is_empty() && outcome.direct_again && outcome.transfer_intact {
        println!(
            "lab renumber: direct again at the new address after {} ms, transfer intact",
            outcome.ms.unwrap_or_default()
        );
        Ok(())
    } else {
        Err(super::problems_error("renumber", &outcome.problems, &logs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_new_address_is_free_and_in_the_wan_subnet() {
        let plan = Plan::standard();
        let (old, new, prefix) = free_wan_addr(&plan, "eim-r").unwrap();
        assert_eq!(old, Ipv4Addr::new(203, 0, 113, 16));
        assert_eq!(prefix, 26);
        assert!(new.octets()[3] >= FIRST_NEW && new.octets()[3] < 63);
        assert!(
            plan.nodes
                .iter()
                .all(|n| n.ifaces.iter().all(|i| i.addr != new))
        );
        let cmds: Vec<String> = renumber_cmds("ns", old, new, prefix, None)
            .iter()
            .map(Cmd::display)
            .collect();
        assert!(cmds[1].contains(&format!("addr add {new}/26 dev wan")));
        assert!(cmds[2].contains("addr del 203.0.113.16/26 dev wan"));
    }

    #[test]
    fn figures() {
        let o = RenumberOutcome {
            direct_again: true,
            ms: Some(1200),
            transfer_intact: true,
            transfer_spanned: true,
            ..RenumberOutcome::default()
        };
        assert_eq!(
            o.figures(),
            "figure lab.renumber.direct_again 1\nfigure lab.renumber.ms 1200\n\
             figure lab.renumber.transfer_intact 1\nfigure lab.renumber.transfer_spanned 1\n"
        );
        assert!(RenumberOutcome::default().figures().contains("ms n/a"));
    }
}
