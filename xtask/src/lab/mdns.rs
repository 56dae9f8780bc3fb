//! The lab's mDNS step: two `kith-lab peer --mdns` processes on one LAN segment find each
//! other and connect directly, with no relay and no address given.
//!
//! The segment is the lab's internet bridge (`br0`, 203.0.113.0/26): `pub1` and `pub2`
//! sit on it with no NAT between them, like two machines on one switch. mDNS multicast
//! (224.0.0.251) stays on that bridge: the routers on it do not forward link-local
//! multicast, and IPv6 is off in every lab namespace. The step:
//!
//! 1. starts `kith-lab peer --mdns --bind <pub1>:0` and `kith-lab peer --mdns --bind <pub2>:0`
//!    (no `--relay`: their addresses must show no relay hint);
//! 2. on the first, `connect <second's bare node id>`: the address comes from mDNS only;
//! 3. checks the path is `direct=<the second's bound address>`; has the second wait
//!    (`wait-lan`, at most 5 s) until it has seen the first on the LAN; checks that each
//!    side's `lan-peers` lists the other at its bound address;
//! 4. prints `figure lab.mdns.connected 1|0`, `figure lab.mdns.connect_ms N` (from the
//!    `connect` command, discovery included), `figure lab.mdns.seen_ms N` (the second's
//!    wait) and `figure lab.mdns.lan_peers N`.
//!
//! It runs at the end of `cargo xtask lab matrix` (a second or two) and alone as
//! `cargo xtask lab mdns`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use super::Options;
use super::matrix::{Kith, PathSeen, PeerAddr, parse_connect, spawn_peer};
use super::topology::{Lab, state_dir};

/// Deadline for a `connect` reply: discovery waits up to 5 s, the dial up to 10 s.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the dialed side waits to see the dialer on the LAN, ms.
const WAIT_LAN_MS: u64 = 5000;
/// Deadline for `path` and `lan-peers` replies.
const SHORT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the step saw.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct MdnsOutcome {
    /// `connect <bare id>` succeeded with a direct path to the other's bound address.
    pub(crate) connected: bool,
    /// Time of the `connect` command, ms (discovery and handshake).
    pub(crate) connect_ms: Option<u64>,
    /// The path the dialer reported.
    pub(crate) path: Option<PathSeen>,
    /// Time the dialed side waited to see the dialer on the LAN (`wait-lan`), ms.
    pub(crate) seen_ms: Option<u64>,
    /// Peers each side listed (`lan-peers`): (dialer, dialed).
    pub(crate) lan_peers: (Option<usize>, Option<usize>),
    /// What went wrong.
    pub(crate) problems: Vec<String>,
}

impl MdnsOutcome {
    /// The `figure …` lines.
    pub(crate) fn figures(&self) -> String {
        let mut f = String::new();
        let _ = writeln!(f, "figure lab.mdns.connected {}", u8::from(self.connected));
        let _ = writeln!(
            f,
            "figure lab.mdns.connect_ms {}",
            self.connect_ms.map_or("n/a".into(), |m| m.to_string())
        );
        let _ = writeln!(
            f,
            "figure lab.mdns.seen_ms {}",
            self.seen_ms.map_or("n/a".into(), |m| m.to_string())
        );
        let _ = writeln!(
            f,
            "figure lab.mdns.lan_peers {}",
            self.lan_peers.0.map_or("n/a".into(), |n| n.to_string())
        );
        f
    }
}

/// The `ms=` value of a reply body.
fn field_ms(body: &str) -> Option<u64> {
    body.split_whitespace()
        .find_map(|w| w.strip_prefix("ms="))
        .and_then(|v| v.parse().ok())
}

/// Parses a `lan-peers` reply body, `<count> <id>@<addr>,… …`, into (id, addresses).
pub(crate) fn parse_lan_peers(body: &str) -> Result<Vec<(String, Vec<SocketAddr>)>, String> {
    let mut words = body.split_whitespace();
    let count: usize = words
        .next()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad lan-peers reply {body:?}"))?;
    let peers = words
        .map(|w| {
            let (id, addrs) = w.split_once('@').unwrap_or((w, ""));
            let addrs = addrs
                .split(',')
                .filter(|a| !a.is_empty())
                .map(|a| a.parse().map_err(|_| format!("bad address {a:?}")))
                .collect::<Result<_, _>>()?;
            Ok((id.to_owned(), addrs))
        })
        .collect::<Result<Vec<_>, String>>()?;
    if peers.len() != count {
        return Err(format!(
            "lan-peers: count {count} but {} peers",
            peers.len()
        ));
    }
    Ok(peers)
}

/// Starts one `kith-lab peer --mdns` in `node` and reads its address.
fn start(
    lab: &Lab,
    node: &str,
    exe: &Path,
    logs: &Path,
    verbose: bool,
) -> Result<(Kith, PeerAddr), String> {
    let log = logs.join(format!("{node}-mdns.log"));
    spawn_peer(lab, node, exe, &["--mdns"], &log, "mdns", verbose)
}

/// Runs the step on a lab that is up; never fails, the outcome says what happened.
pub(crate) fn step(lab: &Lab, exe: &Path, logs: &Path, verbose: bool) -> MdnsOutcome {
    let mut out = MdnsOutcome::default();
    let (Some(n1), Some(n2)) = (lab.plan.publics.first(), lab.plan.publics.get(1)) else {
        out.problems
            .push("mdns: the lab needs two hosts on one segment".into());
        return out;
    };
    let started = start(lab, n1, exe, logs, verbose)
        .and_then(|a| Ok((a, start(lab, n2, exe, logs, verbose)?)));
    let ((mut k1, a1), (mut k2, a2)) = match started {
        Ok(v) => v,
        Err(e) => {
            out.problems
                .push(format!("mdns: a peer did not start: {e}"));
            return out;
        }
    };
    if a1.relays + a2.relays != 0 {
        out.problems
            .push("mdns: a peer advertises a relay, none was configured".into());
    }
    let start_at = Instant::now();
    match k1.ask(&format!("connect {}", a2.id), CONNECT_TIMEOUT) {
        Ok(Ok(body)) => match parse_connect(&body) {
            Ok(c) => {
                out.connect_ms = Some(c.ms);
                out.path = Some(c.path);
            }
            Err(e) => out.problems.push(format!("mdns: connect: {e}")),
        },
        Ok(Err(e)) => out.problems.push(format!(
            "mdns: connect by bare id failed after {} ms: {e}",
            start_at.elapsed().as_millis()
        )),
        Err(e) => out.problems.push(format!("mdns: {e}")),
    }
    // The path now, from the dialer's side.
    if out.path.is_some() {
        match k1.ask(&format!("path {}", a2.id), SHORT_TIMEOUT) {
            Ok(Ok(body)) => match PathSeen::parse(&body) {
                Ok(p) => out.path = Some(p),
                Err(e) => out.problems.push(format!("mdns: path: {e}")),
            },
            Ok(Err(e)) => out.problems.push(format!("mdns: path: {e}")),
            Err(e) => out.problems.push(format!("mdns: {e}")),
        }
    }
    match out.path {
        Some(PathSeen::Direct(a)) if a2.direct.contains(&a) => out.connected = true,
        Some(p) => out.problems.push(format!(
            "mdns: path {p:?}, expected direct to {:?}",
            a2.direct
        )),
        None => {}
    }
    // The dialed side learns the dialer from its announcement or from the answer to its
    // own query, not from the connection: wait for that (bounded), then each side's list
    // must show the other.
    match k2.ask(
        &format!("wait-lan {} {WAIT_LAN_MS}", a1.id),
        CONNECT_TIMEOUT,
    ) {
        Ok(Ok(body)) => out.seen_ms = field_ms(&body),
        Ok(Err(e)) => out.problems.push(format!(
            "mdns: {n2} did not see {n1} within {WAIT_LAN_MS} ms: {e}"
        )),
        Err(e) => out.problems.push(format!("mdns: {e}")),
    }
    for (k, other, slot) in [
        (&mut k1, &a2, &mut out.lan_peers.0),
        (&mut k2, &a1, &mut out.lan_peers.1),
    ] {
        match k.ask("lan-peers", SHORT_TIMEOUT) {
            Ok(Ok(body)) => match parse_lan_peers(&body) {
                Ok(peers) => {
                    *slot = Some(peers.len());
                    let listed = peers
                        .iter()
                        .any(|(id, addrs)| *id == other.id && addrs == &other.direct);
                    if !listed {
                        out.problems.push(format!(
                            "mdns: lan-peers does not list {} at {:?}: {body}",
                            &other.id[..10],
                            other.direct
                        ));
                    }
                }
                Err(e) => out.problems.push(format!("mdns: {e}")),
            },
            Ok(Err(e)) => out.problems.push(format!("mdns: lan-peers: {e}")),
            Err(e) => out.problems.push(format!("mdns: {e}")),
        }
    }
    // Dropping k1 and k2 closes their stdin (they unregister and exit) and kills them
    // by pid if they do not.
    out
}

/// Entry point of `cargo xtask lab mdns`: the lab, the step, the teardown.
pub(crate) fn run(root: &Path, opts: &Options, build: bool) -> Result<(), String> {
    let exe = super::matrix::kith_ready(root, build)?;
    super::sys::require_tools()?;
    let lab = Lab::up(root, &opts.lab)?;
    let logs = state_dir(root).join(format!("mdns-{}", lab.id));
    std::fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;
    let outcome = step(&lab, &exe, &logs, opts.lab.verbose);
    print!("{}", outcome.figures());
    println!("peer logs: {}", logs.display());
    if opts.keep {
        lab.keep();
    }
    if outcome.problems.is_empty() && outcome.connected {
        println!("lab mdns: connected by bare node id over a direct path, no relay");
        Ok(())
    } else {
        Err(super::problems_error("mdns", &outcome.problems, &logs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lan_peers_replies() {
        assert_eq!(parse_lan_peers("0"), Ok(vec![]));
        let p = parse_lan_peers("2 aa@203.0.113.2:5000 bb@203.0.113.3:1,203.0.113.4:2").unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].0, "aa");
        assert_eq!(p[1].1.len(), 2);
        assert_eq!(parse_lan_peers("1 cc").unwrap()[0].1, vec![]);
        assert!(parse_lan_peers("").is_err());
        assert!(parse_lan_peers("2 aa@203.0.113.2:5000").is_err());
        assert!(parse_lan_peers("1 aa@nonsense").is_err());
    }

    #[test]
    fn figures() {
        let o = MdnsOutcome {
            connected: true,
            connect_ms: Some(12),
            lan_peers: (Some(1), Some(1)),
            ..MdnsOutcome::default()
        };
        assert_eq!(
            o.figures(),
            "figure lab.mdns.connected 1\nfigure lab.mdns.connect_ms 12\n\
             figure lab.mdns.seen_ms n/a\nfigure lab.mdns.lan_peers 1\n"
        );
        assert_eq!(field_ms("abc@203.0.113.2:1 ms=34"), Some(34));
        assert_eq!(field_ms("ms=x"), None);
        assert!(MdnsOutcome::default().figures().contains("connected 0"));
    }
}
