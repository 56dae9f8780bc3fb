//! `cargo xtask lab check`: builds the lab and proves with real traffic that each
//! router behaves like the NAT it claims to be.
//!
//! A STUN-like reflector runs on `pub1` and `pub2` (UDP and TCP port 3478). On every
//! host an agent holds ONE UDP socket and, in this order:
//!
//! 1. probes `pub1` → `m1`, the address `pub1` observed;
//! 2. *unsolicited*: `pub2`'s reflector sends a datagram from its port 3478 to `m1`
//!    (a mapping the host made only towards `pub1`); records whether it arrives;
//! 3. probes `pub2` → `m2`; `m1 == m2` is an endpoint-independent mapping, `m1 != m2`
//!    (same address, other port) an endpoint-dependent one;
//! 4. *punch m1*: now that the host has sent to `pub2`, `pub2` sends again to `m1`;
//!    it arrives only if `m1` is the mapping towards `pub2` too (hole punching with an
//!    address learnt from a third party works);
//! 5. *punch m2*: `pub2` sends to `m2` (the mapping towards `pub2` itself: always open);
//! 6. connects over TCP to `pub1` and reads the address `pub1` saw.
//!
//! Step 2 before step 3 also guards the conntrack clash the routers' input rule
//! prevents: had the unsolicited packet left a conntrack entry, step 3 would get a
//! different port and an endpoint-independent NAT would look endpoint-dependent.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::time::{Duration, Instant};

use super::plan::HomeKind;
use super::topology::{Lab, state_dir};
use super::{Options, hygiene};

/// UDP and TCP port of the reflectors.
const SERVER_PORT: u16 = 3478;
/// Lifetime of every tool process (the whole check takes far less).
const TOOL_LIFETIME_SECS: &str = "100";

/// What a host's mapping looks like from the internet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mapping {
    /// No translation: the servers see the host's own address and port.
    Public,
    /// Same mapped address and port towards both servers.
    Eim,
    /// Different mapped ports towards the two servers.
    Edm,
    /// No UDP answer at all.
    None,
}

impl Mapping {
    fn name(self) -> &'static str {
        match self {
            Mapping::Public => "public",
            Mapping::Eim => "eim",
            Mapping::Edm => "edm",
            Mapping::None => "none",
        }
    }

    /// Classifies the addresses two servers observed for one local socket.
    pub(crate) fn classify(
        local: SocketAddr,
        m1: Option<SocketAddr>,
        m2: Option<SocketAddr>,
    ) -> Mapping {
        match (m1, m2) {
            (Some(a), Some(b)) if a == b && a == local => Mapping::Public,
            (Some(a), Some(b)) if a == b => Mapping::Eim,
            (Some(_), Some(_)) => Mapping::Edm,
            _ => Mapping::None,
        }
    }
}

/// What one host should show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Expected {
    /// The mapping behaviour.
    pub(crate) mapping: Mapping,
    /// The address the servers should observe (UDP and TCP).
    pub(crate) ip: Ipv4Addr,
    /// Whether the unsolicited datagram (step 2) should arrive; `None`: not tested.
    pub(crate) unsolicited: Option<bool>,
    /// Whether `pub2 → m1` after the host sent to `pub2` should arrive.
    pub(crate) punch_m1: Option<bool>,
    /// Whether `pub2 → m2` should arrive.
    pub(crate) punch_m2: Option<bool>,
}

impl Expected {
    /// Expectations for a home of `kind` whose internet-facing address is `edge_ip`.
    pub(crate) fn home(kind: HomeKind, edge_ip: Ipv4Addr) -> Expected {
        let (mapping, unsolicited, m1, m2) = match kind {
            HomeKind::Eim | HomeKind::Cgnat => (Mapping::Eim, Some(false), Some(true), Some(true)),
            HomeKind::Edm => (Mapping::Edm, Some(false), Some(false), Some(true)),
            HomeKind::UdpBlock => (Mapping::None, None, None, None),
        };
        Expected {
            mapping,
            ip: edge_ip,
            unsolicited,
            punch_m1: m1,
            punch_m2: m2,
        }
    }

    /// Expectations for a public host with address `ip`: no translation, nothing
    /// filtered.
    pub(crate) fn public(ip: Ipv4Addr) -> Expected {
        Expected {
            mapping: Mapping::Public,
            ip,
            unsolicited: Some(true),
            punch_m1: None,
            punch_m2: None,
        }
    }
}

/// What was measured on one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Observed {
    /// The agent's socket address.
    pub(crate) local: SocketAddr,
    /// Address `pub1` saw.
    pub(crate) m1: Option<SocketAddr>,
    /// Address `pub2` saw.
    pub(crate) m2: Option<SocketAddr>,
    /// Round-trip time of the `pub1` probe, µs.
    pub(crate) rtt_us: Option<u64>,
    /// Step 2: did the unsolicited datagram arrive?
    pub(crate) unsolicited: Option<bool>,
    /// Step 4.
    pub(crate) punch_m1: Option<bool>,
    /// Step 5.
    pub(crate) punch_m2: Option<bool>,
    /// Step 6: address `pub1` saw over TCP, or the error.
    pub(crate) tcp: Result<SocketAddr, String>,
}

impl Observed {
    fn mapping(&self) -> Mapping {
        Mapping::classify(self.local, self.m1, self.m2)
    }
}

/// Everything that differs from the expectation; empty when the host behaves.
pub(crate) fn evaluate(exp: &Expected, obs: &Observed) -> Vec<String> {
    let mut bad = vec![];
    let mapping = obs.mapping();
    if mapping != exp.mapping {
        bad.push(format!(
            "mapping is {} (expected {})",
            mapping.name(),
            exp.mapping.name()
        ));
    }
    for (who, m) in [("pub1", obs.m1), ("pub2", obs.m2)] {
        if let Some(m) = m.filter(|m| m.ip() != IpAddr::V4(exp.ip)) {
            bad.push(format!("{who} saw {m}, expected address {}", exp.ip));
        }
    }
    let flags = [
        ("unsolicited pub2→m1", exp.unsolicited, obs.unsolicited),
        ("pub2→m1 after sending to pub2", exp.punch_m1, obs.punch_m1),
        ("pub2→m2", exp.punch_m2, obs.punch_m2),
    ];
    for (what, want, got) in flags {
        match (want, got) {
            (Some(w), Some(g)) if w != g => {
                bad.push(format!("{what}: {} (expected {})", arrival(g), arrival(w)))
            }
            (Some(_), None) => bad.push(format!("{what}: not measured")),
            _ => {}
        }
    }
    match &obs.tcp {
        Ok(a) if a.ip() == IpAddr::V4(exp.ip) => {}
        Ok(a) => bad.push(format!("tcp: pub1 saw {a}, expected address {}", exp.ip)),
        Err(e) => bad.push(format!("tcp to pub1 failed: {e}")),
    }
    bad
}

fn arrival(arrived: bool) -> &'static str {
    if arrived { "arrived" } else { "dropped" }
}

/// Waits of the checks, derived from the real delay.
#[derive(Debug, Clone, Copy)]
struct Timing {
    /// Per probe attempt.
    probe: Duration,
    /// Probe attempts.
    tries: u32,
    /// How long to wait for a datagram that may (should not) arrive.
    expect: Duration,
}

impl Timing {
    fn new(quick: bool, delay_ms: u32) -> Timing {
        // A host–server round trip crosses two access links twice.
        let rtt = Duration::from_millis(4 * u64::from(delay_ms));
        let base = if quick { 150 } else { 300 };
        Timing {
            probe: Duration::from_millis(base) + 2 * rtt,
            tries: if quick { 2 } else { 3 },
            expect: Duration::from_millis(base) + 2 * rtt,
        }
    }
}

/// A tool process inside a namespace, spoken to line by line. Killed on drop.
#[derive(Debug)]
struct Proc {
    node: String,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Proc {
    fn spawn(lab: &Lab, node: &str, exe: &str, args: &[&str]) -> Result<Proc, String> {
        let mut child = lab
            .command(node, exe)
            .args(["lab", "_tool"])
            .args(args)
            .args(["--lifetime", TOOL_LIFETIME_SECS])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start the lab tool in {node}: {e}"))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("lab tool in {node}: no pipes"));
        };
        Ok(Proc {
            node: node.into(),
            child,
            stdin,
            stdout: BufReader::new(stdout),
        })
    }

    /// Reads one line. Bounded: the tool always answers within its own timeouts and
    /// exits after its lifetime (end of file).
    fn line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(0) => Err(format!("the lab tool in {} exited", self.node)),
            Ok(_) => Ok(line.trim().to_owned()),
            Err(e) => Err(format!("reading the lab tool in {}: {e}", self.node)),
        }
    }

    fn ask(&mut self, command: &str) -> Result<String, String> {
        writeln!(self.stdin, "{command}")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("lab tool in {}: {e}", self.node))?;
        self.line()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An agent plus the context to run the check sequence.
#[derive(Debug)]
struct Prober {
    ctl: Proc,
    servers: [SocketAddr; 2],
    timing: Timing,
    nonce: u64,
}

impl Prober {
    fn next_nonce(&mut self) -> u64 {
        self.nonce += 1;
        self.nonce
    }

    fn probe(
        &mut self,
        agent: &mut Proc,
        server: usize,
    ) -> Result<Option<(SocketAddr, u64)>, String> {
        let n = self.next_nonce();
        let t = self.timing;
        let reply = agent.ask(&format!(
            "probe {n} {} {} {}",
            self.servers[server],
            t.probe.as_millis(),
            t.tries
        ))?;
        let w: Vec<&str> = reply.split_whitespace().collect();
        match w.as_slice() {
            ["mapped", addr, rtt] => {
                let addr = addr.parse().map_err(|e| format!("{reply:?}: {e}"))?;
                Ok(Some((addr, rtt.parse().unwrap_or(0))))
            }
            ["timeout"] => Ok(None),
            _ => Err(format!("{}: unexpected reply {reply:?}", agent.node)),
        }
    }

    /// Has `pub2`'s reflector send a datagram from its port to `target`; returns whether
    /// `agent` received it.
    fn punch(&mut self, agent: &mut Proc, target: SocketAddr) -> Result<bool, String> {
        let n = self.next_nonce();
        let t = self.timing;
        let ok = self.ctl.ask(&format!(
            "punch {n} {} {target} {} {}",
            self.servers[1],
            t.probe.as_millis(),
            t.tries
        ))?;
        if ok != "ok" {
            return Err(format!("pub2's reflector did not confirm a punch: {ok:?}"));
        }
        let got = agent.ask(&format!("expect {n} {}", t.expect.as_millis()))?;
        match got.split_whitespace().next() {
            Some("got") => Ok(true),
            Some("timeout") => Ok(false),
            _ => Err(format!("{}: unexpected reply {got:?}", agent.node)),
        }
    }

    /// Runs the check sequence (module docs) on `agent`.
    fn run(&mut self, agent: &mut Proc, local: SocketAddr) -> Result<Observed, String> {
        let p1 = self.probe(agent, 0)?;
        let m1 = p1.map(|(a, _)| a);
        let unsolicited = match m1 {
            Some(m1) => Some(self.punch(agent, m1)?),
            None => None,
        };
        let m2 = self.probe(agent, 1)?.map(|(a, _)| a);
        let (mut punch_m1, mut punch_m2) = (None, None);
        // A public host (m1 is its own address) has no mapping to punch.
        if let (Some(m1), Some(m2)) = (m1, m2) {
            if m1 != local {
                punch_m1 = Some(self.punch(agent, m1)?);
                punch_m2 = if m1 == m2 {
                    punch_m1
                } else {
                    Some(self.punch(agent, m2)?)
                };
            }
        }
        let t = self.timing;
        let tcp = agent.ask(&format!("tcp {} {}", self.servers[0], t.probe.as_millis()))?;
        let tcp = match tcp.strip_prefix("mapped ") {
            Some(a) => a.parse().map_err(|e| format!("{tcp:?}: {e}")),
            None => Err(tcp.strip_prefix("error ").unwrap_or(&tcp).to_owned()),
        };
        Ok(Observed {
            local,
            m1,
            m2,
            rtt_us: p1.map(|(_, rtt)| rtt),
            unsolicited,
            punch_m1,
            punch_m2,
            tcp,
        })
    }
}

/// One row of the result table.
#[derive(Debug)]
struct Row {
    label: String,
    node: String,
    kind: String,
    expected: Expected,
    observed: Observed,
    failures: Vec<String>,
}

/// Entry point of `cargo xtask lab check`.
pub(crate) fn run(root: &Path, opts: &Options) -> Result<(), String> {
    let start = Instant::now();
    super::sys::require_tools()?;
    let root_before = hygiene::root_links()?;
    let lab = Lab::up(root, &opts.lab)?;
    let result =
        hygiene::audit(&lab, &root_before).and_then(|fences| Ok((fences, check(&lab, opts)?)));
    let seconds = start.elapsed().as_secs_f64();
    let outcome = match result {
        Ok((fences, rows)) => report(root, &lab, &rows, &fences, seconds),
        Err(e) => Err(e),
    };
    if opts.keep {
        eprintln!(
            "lab: --keep: {:?} stays up; `cargo xtask lab topology down --id {}` removes it",
            lab.id, lab.id
        );
        lab.keep();
    }
    outcome
}

/// Starts the reflectors and agents and measures every host.
fn check(lab: &Lab, opts: &Options) -> Result<Vec<Row>, String> {
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot find the xtask binary: {e}"))?
        .to_string_lossy()
        .into_owned();
    let plan = &lab.plan;
    let [pub1, pub2] = plan.publics.as_slice() else {
        return Err("the check needs exactly two public hosts".into());
    };
    let addr = |node: &str| {
        plan.primary_addr(node)
            .ok_or_else(|| format!("no address for {node}"))
    };
    let servers = [
        SocketAddr::new(addr(pub1)?.into(), SERVER_PORT),
        SocketAddr::new(addr(pub2)?.into(), SERVER_PORT),
    ];
    let listen = format!("0.0.0.0:{SERVER_PORT}");
    let mut reflectors = vec![];
    for node in [pub1, pub2] {
        let mut p = Proc::spawn(
            lab,
            node,
            &exe,
            &["server", "--udp", &listen, "--tcp", &listen],
        )?;
        let ready = p.line()?;
        if ready != "ready" {
            return Err(format!("reflector in {node}: {ready:?}"));
        }
        reflectors.push(p);
    }
    let mut ctl = Proc::spawn(lab, pub2, &exe, &["agent"])?;
    ctl.line()?; // "local …"
    let mut prober = Prober {
        ctl,
        servers,
        timing: Timing::new(opts.quick, lab.delay_ms),
        nonce: u64::from(std::process::id()) << 20,
    };
    let mut targets: Vec<(String, String, String, Expected)> = vec![];
    for p in [pub1, pub2] {
        targets.push((
            p.clone(),
            p.clone(),
            "public".into(),
            Expected::public(addr(p)?),
        ));
    }
    for h in &plan.homes {
        let exp = Expected::home(h.kind, addr(&h.edge)?);
        targets.push((h.name.clone(), h.host.clone(), h.kind.name().into(), exp));
    }
    let mut rows = vec![];
    for (label, node, kind, expected) in targets {
        let mut agent = Proc::spawn(lab, &node, &exe, &["agent"])?;
        let local = agent.line()?;
        let local: SocketAddr = local
            .strip_prefix("local ")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("agent in {node}: {local:?}"))?;
        // The agent binds 0.0.0.0; the servers should see the node's own address.
        let local = SocketAddr::new(addr(&node)?.into(), local.port());
        let observed = prober.run(&mut agent, local)?;
        let failures = evaluate(&expected, &observed);
        rows.push(Row {
            label,
            node,
            kind,
            expected,
            observed,
            failures,
        });
    }
    Ok(rows)
}

/// Prints the table and the figures, writes them to `target/kith-lab/check-<id>.txt`,
/// and fails if any host misbehaved.
fn report(
    root: &Path,
    lab: &Lab,
    rows: &[Row],
    fences: &[String],
    seconds: f64,
) -> Result<(), String> {
    let mut table = String::new();
    let _ = writeln!(
        table,
        "{:<10} {:<9} {:<7} {:<7} {:<20} {:<20} {:<11} {:<9} {:<9} {:<20} {:>7}  result",
        "node",
        "kind",
        "expect",
        "mapping",
        "mapped by pub1",
        "mapped by pub2",
        "unsolicited",
        "pub2→m1",
        "pub2→m2",
        "tcp seen by pub1",
        "rtt ms"
    );
    let opt_addr = |a: Option<SocketAddr>| a.map_or("-".to_string(), |a| a.to_string());
    let opt_flag = |f: Option<bool>| f.map_or("-", arrival);
    let fig_flag = |f: Option<bool>| f.map_or("n/a", arrival);
    for r in rows {
        let o = &r.observed;
        let _ = writeln!(
            table,
            "{:<10} {:<9} {:<7} {:<7} {:<20} {:<20} {:<11} {:<9} {:<9} {:<20} {:>7}  {}",
            r.node,
            r.kind,
            r.expected.mapping.name(),
            o.mapping().name(),
            opt_addr(o.m1),
            opt_addr(o.m2),
            opt_flag(o.unsolicited),
            opt_flag(o.punch_m1),
            opt_flag(o.punch_m2),
            o.tcp
                .as_ref()
                .map_or("failed".to_string(), |a| a.to_string()),
            o.rtt_us
                .map_or("-".to_string(), |us| format!("{:.2}", us as f64 / 1000.0)),
            if r.failures.is_empty() { "ok" } else { "FAIL" },
        );
    }
    let mut figures = String::new();
    let passed = rows.iter().filter(|r| r.failures.is_empty()).count();
    for r in rows {
        let o = &r.observed;
        let key = format!("lab.nat.{}", r.label);
        let _ = writeln!(figures, "figure {key}.mapping {}", o.mapping().name());
        let _ = writeln!(
            figures,
            "figure {key}.unsolicited {}",
            fig_flag(o.unsolicited)
        );
        let _ = writeln!(
            figures,
            "figure {key}.punch_after_send {}",
            fig_flag(o.punch_m1)
        );
        let _ = writeln!(
            figures,
            "figure {key}.tcp {}",
            if o.tcp.is_ok() { "ok" } else { "failed" }
        );
        if let Some(us) = o.rtt_us {
            let _ = writeln!(figures, "figure {key}.rtt_ms {:.2}", us as f64 / 1000.0);
        }
        let _ = writeln!(
            figures,
            "figure {key}.ok {}",
            u8::from(r.failures.is_empty())
        );
    }
    let _ = writeln!(figures, "figure lab.delay_ms {}", lab.delay_ms);
    let _ = writeln!(
        figures,
        "figure lab.fences.ok {}",
        u8::from(fences.is_empty())
    );
    let _ = writeln!(figures, "figure lab.check.passed {passed}/{}", rows.len());
    let _ = writeln!(figures, "figure lab.check.seconds {seconds:.1}");
    let mut failures = String::new();
    for f in fences {
        let _ = writeln!(failures, "fences: {f}");
    }
    for r in rows {
        for f in &r.failures {
            let _ = writeln!(failures, "{} ({}): {f}", r.node, r.kind);
        }
    }
    print!("{table}\n{figures}");
    if let Some(e) = &lab.delay_error {
        println!("note: no link delay: {e}");
    }
    let path = state_dir(root).join(format!("check-{}.txt", lab.id));
    let _ = std::fs::write(&path, format!("{table}\n{figures}{failures}"));
    if failures.is_empty() {
        println!(
            "lab check: all {} hosts behave as their NAT type claims; only documentation \
             addresses, no IPv6, root namespace untouched",
            rows.len()
        );
        Ok(())
    } else {
        eprint!("{failures}");
        Err(format!(
            "lab check: {} of {} hosts misbehave, {} fence violations",
            rows.len() - passed,
            rows.len(),
            fences.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn eim_observed() -> Observed {
        Observed {
            local: sa("192.0.2.2:40000"),
            m1: Some(sa("203.0.113.16:40000")),
            m2: Some(sa("203.0.113.16:40000")),
            rtt_us: Some(100),
            unsolicited: Some(false),
            punch_m1: Some(true),
            punch_m2: Some(true),
            tcp: Ok(sa("203.0.113.16:50000")),
        }
    }

    #[test]
    fn classification() {
        let local = sa("192.0.2.2:4000");
        let a = Some(sa("203.0.113.16:4000"));
        let b = Some(sa("203.0.113.16:5000"));
        assert_eq!(Mapping::classify(local, a, a), Mapping::Eim);
        assert_eq!(Mapping::classify(local, a, b), Mapping::Edm);
        assert_eq!(Mapping::classify(local, a, None), Mapping::None);
        assert_eq!(Mapping::classify(local, None, None), Mapping::None);
        assert_eq!(
            Mapping::classify(local, Some(local), Some(local)),
            Mapping::Public
        );
    }

    #[test]
    fn a_good_eim_home_passes_and_deviations_are_named() {
        let ip = Ipv4Addr::new(203, 0, 113, 16);
        let exp = Expected::home(HomeKind::Eim, ip);
        assert!(evaluate(&exp, &eim_observed()).is_empty());

        // The conntrack clash: the mapping towards pub2 got another port.
        let mut o = eim_observed();
        o.m2 = Some(sa("203.0.113.16:40001"));
        o.punch_m1 = Some(false);
        let bad = evaluate(&exp, &o);
        assert!(bad.iter().any(|b| b.contains("mapping is edm")), "{bad:?}");
        assert!(bad.iter().any(|b| b.contains("after sending")), "{bad:?}");

        // Unsolicited traffic got through.
        let mut o = eim_observed();
        o.unsolicited = Some(true);
        assert_eq!(evaluate(&exp, &o).len(), 1);

        // Seen from the wrong address (e.g. the home router instead of the carrier).
        let exp_cg = Expected::home(HomeKind::Cgnat, Ipv4Addr::new(203, 0, 113, 18));
        assert_eq!(evaluate(&exp_cg, &eim_observed()).len(), 3);
    }

    #[test]
    fn udpblock_expects_silence_and_tcp() {
        let ip = Ipv4Addr::new(203, 0, 113, 19);
        let exp = Expected::home(HomeKind::UdpBlock, ip);
        let mut o = Observed {
            local: sa("192.0.2.26:40000"),
            m1: None,
            m2: None,
            rtt_us: None,
            unsolicited: None,
            punch_m1: None,
            punch_m2: None,
            tcp: Ok(sa("203.0.113.19:40001")),
        };
        assert!(evaluate(&exp, &o).is_empty());
        o.tcp = Err("connection timed out".into());
        assert_eq!(evaluate(&exp, &o).len(), 1);
        o.m1 = Some(sa("203.0.113.19:40000"));
        assert!(
            evaluate(&exp, &o)
                .iter()
                .any(|b| b.contains("mapping is none") || b.contains("tcp"))
        );
    }

    #[test]
    fn edm_expects_m1_closed_to_pub2() {
        let exp = Expected::home(HomeKind::Edm, Ipv4Addr::new(203, 0, 113, 17));
        let mut o = eim_observed();
        o.m1 = Some(sa("203.0.113.17:1111"));
        o.m2 = Some(sa("203.0.113.17:2222"));
        o.tcp = Ok(sa("203.0.113.17:3333"));
        o.punch_m1 = Some(false);
        assert!(evaluate(&exp, &o).is_empty());
    }

    #[test]
    fn timing_is_bounded() {
        let t = Timing::new(false, 30);
        assert!(t.probe * t.tries < Duration::from_secs(3));
        assert!(Timing::new(true, 2).expect < Timing::new(false, 2).expect);
    }
}
