//! Building and tearing down the lab: namespaces, veth pairs, addresses, routes,
//! nftables rules and netem delays, plus the state file that lets `down` find
//! everything from another process.
//!
//! Safety rules kept here:
//! * every command is namespaced (`ip -n`, `tc -n`, `ip netns exec`); the root
//!   namespace's links, routes and nft tables are never touched;
//! * veth pairs are created inside a lab namespace with the peer placed directly into
//!   another lab namespace, so no interface ever exists in the root namespace;
//! * IPv6 is switched off in each namespace before any interface is created, so the
//!   only addresses are the plan's documentation-range IPv4 addresses;
//! * cleanup removes exactly the namespaces named `kithlab-<id>-…` (and kills the
//!   processes inside them, which only the lab starts).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use super::nft::{self, RuleOptions};
use super::plan::{BRIDGE, INTERNET_NODE, NS_PREFIX, Plan, Role};
use super::sys::Cmd;

/// Settings of one lab run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LabConfig {
    /// Run id: namespaces are `kithlab-<id>-<node>`, the state file `<id>.state`.
    pub(crate) id: String,
    /// One-way netem delay added on each access link, each direction (0: none).
    pub(crate) delay_ms: u32,
    /// Fail instead of warning when the kernel has no netem.
    pub(crate) require_delay: bool,
    /// Per cent of IPv4 packets the internet drops at random (each packet crossing the
    /// internet bridge, nftables `numgen random`; 0: none).
    pub(crate) loss_pct: u32,
    /// nftables switches.
    pub(crate) rules: RuleOptions,
    /// Print every command.
    pub(crate) verbose: bool,
}

/// One command of the build, and whether it only adds delay (allowed to fail when the
/// kernel lacks netem).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Step {
    /// The command.
    pub(crate) cmd: Cmd,
    /// A `tc … netem` step.
    pub(crate) delay: bool,
}

/// Directory of the state files: `<root>/target/kith-lab`.
pub(crate) fn state_dir(root: &Path) -> PathBuf {
    root.join("target").join("kith-lab")
}

fn state_file(root: &Path, id: &str) -> PathBuf {
    state_dir(root).join(format!("{id}.state"))
}

/// Checks that a run id is short and made of `[a-z0-9]`.
pub(crate) fn validate_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 12
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(format!("bad lab id {id:?}: 1–12 characters of [a-z0-9]"))
    }
}

/// All commands that build `plan` as run `id`, in order. `exe` is the xtask binary
/// (used for writing sysctls inside a namespace without needing procps).
pub(crate) fn up_steps(plan: &Plan, id: &str, exe: &str, cfg: &LabConfig) -> Vec<Step> {
    let ns = |node: &str| Plan::namespace(id, node);
    let mut steps = vec![];
    let mut push = |program: &str, args: Vec<String>| {
        steps.push(Step {
            cmd: Cmd::new(program, args),
            delay: false,
        })
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();
    let sysctl = |node: &str, key: &str, value: &str| {
        s(&[
            "netns",
            "exec",
            &ns(node),
            exe,
            "lab",
            "_tool",
            "sysctl",
            key,
            value,
        ])
    };
    // 1. Namespaces, with IPv6 off before any interface exists.
    for n in &plan.nodes {
        push("ip", s(&["netns", "add", &ns(&n.name)]));
        push(
            "ip",
            sysctl(&n.name, "net.ipv6.conf.default.disable_ipv6", "1"),
        );
        push("ip", sysctl(&n.name, "net.ipv6.conf.all.disable_ipv6", "1"));
        push("ip", s(&["-n", &ns(&n.name), "link", "set", "lo", "up"]));
        if matches!(n.role, Role::Router(_)) {
            push("ip", sysctl(&n.name, "net.ipv4.ip_forward", "1"));
        }
    }
    // 2. The internet bridge.
    let inet = ns(INTERNET_NODE);
    push(
        "ip",
        s(&["-n", &inet, "link", "add", BRIDGE, "type", "bridge"]),
    );
    push("ip", s(&["-n", &inet, "link", "set", BRIDGE, "up"]));
    // 3. veth pairs, created in one lab namespace with the peer put straight into the
    //    other.
    for l in &plan.links {
        let (a, b) = (ns(&l.a), ns(&l.b));
        push(
            "ip",
            s(&[
                "-n", &a, "link", "add", &l.a_if, "type", "veth", "peer", "name", &l.b_if, "netns",
                &b,
            ]),
        );
        if l.access {
            push(
                "ip",
                s(&["-n", &a, "link", "set", &l.a_if, "master", BRIDGE]),
            );
        }
        push("ip", s(&["-n", &a, "link", "set", &l.a_if, "up"]));
        push("ip", s(&["-n", &b, "link", "set", &l.b_if, "up"]));
    }
    // 4. Addresses and default routes.
    for n in &plan.nodes {
        for i in &n.ifaces {
            let cidr = format!("{}/{}", i.addr, i.subnet.prefix);
            push(
                "ip",
                s(&["-n", &ns(&n.name), "addr", "add", &cidr, "dev", &i.name]),
            );
        }
        if let Some(gw) = n.gateway {
            let gw = gw.to_string();
            push(
                "ip",
                s(&["-n", &ns(&n.name), "route", "add", "default", "via", &gw]),
            );
        }
    }
    // 5. nftables rule sets.
    for n in &plan.nodes {
        if let Role::Router(nat) = n.role {
            steps.push(Step {
                cmd: Cmd::new("ip", s(&["netns", "exec", &ns(&n.name), "nft", "-f", "-"]))
                    .input(nft::ruleset(nat, cfg.rules)),
                delay: false,
            });
        }
    }
    // 6. Random loss on the internet: every IPv4 packet crossing its bridge (from one
    //    access link to another) is dropped with probability `loss_pct` %.
    if cfg.loss_pct > 0 {
        steps.push(Step {
            cmd: Cmd::new("ip", s(&["netns", "exec", &inet, "nft", "-f", "-"]))
                .input(loss_ruleset(cfg.loss_pct)),
            delay: false,
        });
    }
    // 7. Delay on both ends of every access link.
    if cfg.delay_ms > 0 {
        let delay = format!("{}ms", cfg.delay_ms);
        for l in plan.links.iter().filter(|l| l.access) {
            for (node, dev) in [(&l.a, &l.a_if), (&l.b, &l.b_if)] {
                steps.push(Step {
                    cmd: Cmd::new(
                        "tc",
                        s(&[
                            "-n",
                            &ns(node),
                            "qdisc",
                            "replace",
                            "dev",
                            dev,
                            "root",
                            "netem",
                            "delay",
                            &delay,
                        ]),
                    ),
                    delay: true,
                });
            }
        }
    }
    steps
}

/// The internet's loss rule: a bridge-family table, so it sees every frame the bridge
/// forwards between access links; only IPv4 is dropped (ARP is left alone).
pub(crate) fn loss_ruleset(pct: u32) -> String {
    format!(
        "table bridge kithlab_loss {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    ether type ip numgen random mod 100 < {pct} drop\n  }}\n}}\n"
    )
}

/// A built lab. Dropping it tears the topology down unless [`Lab::keep`] was called.
#[derive(Debug)]
pub(crate) struct Lab {
    /// The layout.
    pub(crate) plan: Plan,
    /// Run id.
    pub(crate) id: String,
    /// Delay that is really in place (0 when netem is unavailable).
    pub(crate) delay_ms: u32,
    /// Why the configured delay could not be applied, if it could not.
    pub(crate) delay_error: Option<String>,
    root: PathBuf,
    armed: bool,
    reaper: Option<Reaper>,
    /// The NFQUEUE delay daemons (when the kernel has no netem).
    delayers: Vec<Child>,
}

impl Lab {
    /// Builds the standard lab ([`Plan::standard`]). Removes a stale lab with the same id first; on any
    /// failure removes what it created.
    pub(crate) fn up(root: &Path, cfg: &LabConfig) -> Result<Lab, String> {
        Lab::up_with(root, cfg, Plan::standard())
    }

    /// Builds the lab of `plan` (like [`Lab::up`], which builds the standard one).
    pub(crate) fn up_with(root: &Path, cfg: &LabConfig, plan: Plan) -> Result<Lab, String> {
        validate_id(&cfg.id)?;
        super::sys::require_tools()?;
        let removed = teardown(root, &cfg.id)?;
        if !removed.is_empty() {
            eprintln!(
                "lab: removed a stale lab {:?} ({} namespaces)",
                cfg.id,
                removed.len()
            );
        }
        plan.validate()?;
        let exe = std::env::current_exe()
            .map_err(|e| format!("cannot find the xtask binary: {e}"))?
            .to_string_lossy()
            .into_owned();
        write_state(root, &cfg.id, &plan, cfg.delay_ms)?;
        let mut lab = Lab {
            plan,
            id: cfg.id.clone(),
            delay_ms: cfg.delay_ms,
            delay_error: None,
            root: root.to_path_buf(),
            armed: true,
            reaper: Reaper::spawn(&exe, root, &cfg.id),
            delayers: Vec::new(),
        };
        let start = Instant::now();
        let steps = up_steps(&lab.plan, &cfg.id, &exe, cfg);
        for step in &steps {
            if step.delay && lab.delay_error.is_some() {
                continue;
            }
            if cfg.verbose {
                eprintln!("$ {}", step.cmd.display());
            }
            match step.cmd.run() {
                Ok(_) => {}
                Err(e) if step.delay => {
                    lab.delay_error = Some(e);
                    lab.delay_ms = 0;
                }
                Err(e) => return Err(e), // `lab` drops here and tears down
            }
        }
        if let Some(netem_error) = lab.delay_error.take() {
            // No netem (CONFIG_NET_SCH_NETEM): delay in user space through NFQUEUE.
            match lab.delay_by_queue(&exe, cfg.delay_ms) {
                Ok(()) => {
                    lab.delay_ms = cfg.delay_ms;
                    eprintln!(
                        "lab: no netem in this kernel; {} ms per access link and direction \
                         through NFQUEUE instead",
                        cfg.delay_ms
                    );
                }
                Err(e) if !cfg.require_delay => {
                    // Stop the daemons already started: their rules bypass from then on,
                    // so no link is left delayed while the lab reports no delay.
                    lab.stop_delayers();
                    eprintln!("lab: warning: no link delay: netem: {netem_error}; NFQUEUE: {e}");
                    eprintln!(
                        "lab: (links run without added delay; --require-delay makes this an \
                         error)"
                    );
                    lab.delay_error = Some(e);
                }
                Err(e) => return Err(format!("no link delay: netem: {netem_error}; NFQUEUE: {e}")),
            }
        }
        eprintln!(
            "lab: {:?} up: {} namespaces, {} links, {} commands in {:.1} s",
            cfg.id,
            lab.plan.nodes.len(),
            lab.plan.links.len(),
            steps.len(),
            start.elapsed().as_secs_f64()
        );
        Ok(lab)
    }

    /// Namespace of `node`.
    pub(crate) fn ns(&self, node: &str) -> String {
        Plan::namespace(&self.id, node)
    }

    /// A command that runs `program` inside `node`'s namespace.
    pub(crate) fn command(&self, node: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(node), program]);
        c
    }

    /// Delays both directions of every access link at its node end with an NFQUEUE
    /// daemon (see [`super::delay`]).
    fn delay_by_queue(&mut self, exe: &str, delay_ms: u32) -> Result<(), String> {
        use std::io::BufRead;
        let ends: Vec<(String, String)> = self
            .plan
            .links
            .iter()
            .filter(|l| l.access)
            .map(|l| (l.b.clone(), l.b_if.clone()))
            .collect();
        for (node, dev) in ends {
            let mut child = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &self.ns(&node),
                    exe,
                    "lab",
                    "delayd",
                    "--ms",
                ])
                .arg(delay_ms.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|e| format!("delay daemon in {node}: {e}"))?;
            let ready = child.stdout.take().map(|out| {
                let mut line = String::new();
                // Ends at the first line or when the daemon exits: bounded.
                let _ = std::io::BufReader::new(out).read_line(&mut line);
                line.trim() == super::delay::READY
            });
            self.delayers.push(child);
            if ready != Some(true) {
                return Err(format!("delay daemon in {node} did not start"));
            }
            for rule in super::delay::rules(&dev) {
                let mut args = ["netns", "exec", &self.ns(&node), "iptables"]
                    .map(String::from)
                    .to_vec();
                args.extend(rule);
                Cmd::new("ip", args).run()?;
            }
        }
        Ok(())
    }

    /// Stops (and reaps) the NFQUEUE delay daemons.
    fn stop_delayers(&mut self) {
        for mut c in self.delayers.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Leaves the topology in place (for `topology up`); `down` removes it later.
    pub(crate) fn keep(mut self) {
        self.armed = false;
        if let Some(r) = self.reaper.take() {
            r.disarm();
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        match teardown(&self.root, &self.id) {
            Ok(removed) => eprintln!(
                "lab: {:?} down ({} namespaces removed)",
                self.id,
                removed.len()
            ),
            Err(e) => eprintln!("lab: teardown of {:?} incomplete: {e}", self.id),
        }
        if let Some(r) = self.reaper.take() {
            r.disarm();
        }
        // The teardown killed them with the rest of the namespaces' processes.
        self.stop_delayers();
    }
}

/// A helper process in its own process group that tears the lab down if xtask dies
/// without doing so itself (Ctrl-C kills the foreground process group, not the reaper).
/// It waits for a line on its standard input: `disarm` means "nothing to do"; end of
/// file without it means the parent died.
#[derive(Debug)]
struct Reaper {
    child: Child,
    stdin: ChildStdin,
}

impl Reaper {
    fn spawn(exe: &str, root: &Path, id: &str) -> Option<Reaper> {
        use std::os::unix::process::CommandExt;
        let mut child = Command::new(exe)
            .args(["lab", "_reaper", &root.to_string_lossy(), id])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| eprintln!("lab: warning: no cleanup helper: {e}"))
            .ok()?;
        let stdin = child.stdin.take()?;
        Some(Reaper { child, stdin })
    }

    fn disarm(mut self) {
        let _ = self.stdin.write_all(b"disarm\n");
        drop(self.stdin);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Body of the hidden `lab _reaper ROOT ID` command.
pub(crate) fn reaper_main(args: &[String]) -> Result<(), String> {
    let [root, id] = args else {
        return Err("usage: lab _reaper ROOT ID".into());
    };
    validate_id(id)?;
    let mut line = String::new();
    // Blocks until the parent writes or exits; a single bounded read.
    let _ = std::io::stdin().read_line(&mut line);
    if line.trim() == "disarm" {
        return Ok(());
    }
    let removed = teardown(Path::new(root), id)?;
    if !removed.is_empty() {
        eprintln!(
            "lab: xtask exited early; removed lab {id:?} ({} namespaces)",
            removed.len()
        );
    }
    Ok(())
}

fn write_state(root: &Path, id: &str, plan: &Plan, delay_ms: u32) -> Result<(), String> {
    let dir = state_dir(root);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut text = format!(
        "# kith NAT lab state: `cargo xtask lab topology down --id {id}` removes these\nid {id}\ndelay_ms {delay_ms}\n"
    );
    for n in &plan.nodes {
        text.push_str(&format!("ns {}\n", Plan::namespace(id, &n.name)));
    }
    let path = state_file(root, id);
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Namespaces listed in the state file of run `id` (only names with the run's prefix).
fn state_namespaces(root: &Path, id: &str) -> Vec<String> {
    let prefix = format!("{NS_PREFIX}{id}-");
    std::fs::read_to_string(state_file(root, id))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("ns "))
        .filter(|n| n.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

/// Names of all network namespaces (`ip netns list`).
pub(crate) fn list_namespaces() -> Result<Vec<String>, String> {
    let out = Cmd::new("ip", ["netns", "list"]).run()?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Removes every namespace of run `id` (from its state file and by prefix), after
/// killing the processes inside them; removes the state file. Returns what it removed.
pub(crate) fn teardown(root: &Path, id: &str) -> Result<Vec<String>, String> {
    validate_id(id)?;
    let prefix = format!("{NS_PREFIX}{id}-");
    let existing = list_namespaces()?;
    let mut names: Vec<String> = existing
        .iter()
        .filter(|n| n.starts_with(&prefix))
        .cloned()
        .collect();
    for n in state_namespaces(root, id) {
        if existing.contains(&n) && !names.contains(&n) {
            names.push(n);
        }
    }
    let errors = remove_namespaces(&names);
    let path = state_file(root, id);
    if path.exists() {
        std::fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if errors.is_empty() {
        Ok(names)
    } else {
        Err(errors.join("; "))
    }
}

/// Removes all lab namespaces of every run, and all state files.
pub(crate) fn teardown_all(root: &Path) -> Result<Vec<String>, String> {
    let names: Vec<String> = list_namespaces()?
        .into_iter()
        .filter(|n| n.starts_with(NS_PREFIX))
        .collect();
    let errors = remove_namespaces(&names);
    if let Ok(entries) = std::fs::read_dir(state_dir(root)) {
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "state") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    if errors.is_empty() {
        Ok(names)
    } else {
        Err(errors.join("; "))
    }
}

/// Kills the processes in each namespace (by pid; only the lab runs processes there),
/// then deletes the namespaces. Returns the errors.
fn remove_namespaces(names: &[String]) -> Vec<String> {
    let mut errors = vec![];
    for ns in names {
        if let Ok(pids) = Cmd::new("ip", ["netns", "pids", ns.as_str()]).run() {
            for pid in pids.split_whitespace().filter(|p| p.parse::<u32>().is_ok()) {
                let _ = Cmd::new("kill", ["-KILL", pid]).run();
            }
        }
        if let Err(e) = Cmd::new("ip", ["netns", "del", ns.as_str()]).run() {
            errors.push(e);
        }
    }
    errors
}

/// Text for `topology status`.
pub(crate) fn status(root: &Path, id: &str) -> Result<String, String> {
    validate_id(id)?;
    let prefix = format!("{NS_PREFIX}{id}-");
    let existing: Vec<String> = list_namespaces()?
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    let path = state_file(root, id);
    let state = std::fs::read_to_string(&path).ok();
    let mut out = String::new();
    match (&state, existing.is_empty()) {
        (None, true) => {
            out.push_str(&format!("lab {id:?}: down\n"));
            return Ok(out);
        }
        (None, false) => out.push_str(&format!(
            "lab {id:?}: {} namespaces but no state file (stale; `down` removes them)\n",
            existing.len()
        )),
        (Some(_), _) => out.push_str(&format!(
            "lab {id:?}: {} of {} namespaces present (state: {})\n",
            existing.len(),
            state_namespaces(root, id).len(),
            path.display()
        )),
    }
    if let Some(d) = state
        .as_deref()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("delay_ms ")))
    {
        out.push_str(&format!(
            "configured delay: {d} ms per access link direction\n"
        ));
    }
    for ns in &existing {
        let addrs = Cmd::new("ip", ["-n", ns.as_str(), "-br", "-4", "addr"])
            .run()
            .unwrap_or_else(|e| e);
        out.push_str(&format!("{ns}\n"));
        for l in addrs.lines().filter(|l| !l.starts_with("lo ")) {
            out.push_str(&format!("    {l}\n"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> LabConfig {
        LabConfig {
            id: "t1".into(),
            delay_ms: 20,
            require_delay: false,
            loss_pct: 0,
            rules: RuleOptions::default(),
            verbose: false,
        }
    }

    #[test]
    fn loss_is_one_rule_on_the_internet_bridge_only_when_asked() {
        let plan = Plan::standard();
        let none = up_steps(&plan, "t1", "x", &cfg());
        assert!(
            !none
                .iter()
                .any(|s| s.cmd.stdin.as_deref().is_some_and(|t| t.contains("numgen")))
        );
        let lossy = LabConfig {
            loss_pct: 20,
            ..cfg()
        };
        let steps = up_steps(&plan, "t1", "x", &lossy);
        let rules: Vec<&Step> = steps
            .iter()
            .filter(|s| s.cmd.stdin.as_deref().is_some_and(|t| t.contains("numgen")))
            .collect();
        assert_eq!(rules.len(), 1);
        assert!(
            rules[0]
                .cmd
                .display()
                .contains(&Plan::namespace("t1", INTERNET_NODE))
        );
        let text = loss_ruleset(20);
        assert!(text.contains("table bridge kithlab_loss"));
        assert!(text.contains("ether type ip numgen random mod 100 < 20 drop"));
    }

    #[test]
    fn every_command_stays_inside_lab_namespaces() {
        let plan = Plan::standard();
        let steps = up_steps(&plan, "t1", "/x/xtask", &cfg());
        for step in &steps {
            let a: Vec<&str> = step.cmd.args.iter().map(String::as_str).collect();
            let namespaced = match (step.cmd.program.as_str(), a.as_slice()) {
                ("ip", ["netns", "add", ns]) => ns.starts_with("kithlab-t1-"),
                ("ip", ["netns", "exec", ns, ..]) => ns.starts_with("kithlab-t1-"),
                ("ip" | "tc", ["-n", ns, ..]) => ns.starts_with("kithlab-t1-"),
                _ => false,
            };
            assert!(namespaced, "{}", step.cmd.display());
            // A veth peer always goes straight into a lab namespace.
            if let Some(p) = a.iter().position(|x| *x == "peer") {
                assert_eq!(a[p + 3], "netns");
                assert!(a[p + 4].starts_with("kithlab-t1-"));
            }
            assert!(!a.contains(&"0.0.0.0/0"));
        }
    }

    #[test]
    fn ipv6_is_off_before_interfaces_exist_and_delays_come_last() {
        let plan = Plan::standard();
        let steps = up_steps(&plan, "t1", "/x/xtask", &cfg());
        let first_link = steps
            .iter()
            .position(|s| s.cmd.args.contains(&"veth".to_string()))
            .unwrap();
        let v6_off = steps
            .iter()
            .rposition(|s| s.cmd.args.iter().any(|a| a.contains("disable_ipv6")))
            .unwrap();
        assert!(v6_off < first_link);
        let first_delay = steps.iter().position(|s| s.delay).unwrap();
        assert!(steps[first_delay..].iter().all(|s| s.delay));
        // Both ends of each of the 7 access links.
        assert_eq!(steps.iter().filter(|s| s.delay).count(), 14);
        let no_delay = LabConfig {
            delay_ms: 0,
            ..cfg()
        };
        assert!(
            !up_steps(&plan, "t1", "x", &no_delay)
                .iter()
                .any(|s| s.delay)
        );
    }

    #[test]
    fn every_router_gets_a_rule_set() {
        let plan = Plan::standard();
        let steps = up_steps(&plan, "t1", "x", &cfg());
        let nft = steps.iter().filter(|s| s.cmd.stdin.is_some()).count();
        let routers = plan
            .nodes
            .iter()
            .filter(|n| matches!(n.role, Role::Router(_)))
            .count();
        assert_eq!(nft, routers);
        assert_eq!(routers, 6);
    }

    #[test]
    fn ids_are_validated() {
        assert!(validate_id("main").is_ok());
        assert!(validate_id("c42").is_ok());
        for bad in ["", "Main", "a-b", "../x", "thirteenchars"] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }
}
