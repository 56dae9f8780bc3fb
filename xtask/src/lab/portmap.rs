//! `cargo xtask lab portmap`: `kith-lab peer --port-map` against a real miniupnpd.
//!
//! A lab of its own (id `portmap` by default): the two public hosts and one home,
//! `upnp`, behind an **endpoint-dependent** NAT (`masquerade random,fully-random`), the
//! kind that makes hole punching fail. miniupnpd (Debian `miniupnpd-nftables`) runs in
//! the home router's namespace with NAT-PMP/PCP and UPnP-IGD on the LAN side. Then:
//!
//! 1. `kith-lab peer --port-map` in the home host obtains a mapping (PCP is tried first:
//!    `figure lab.portmap.protocol pcp`);
//! 2. the mapping is on the router: a `dnat` rule in miniupnpd's nftables table and a
//!    line in its lease file;
//! 3. `kith-lab peer` on `pub2` (the internet) dials the host **at the mapped address only**
//!    (a NodeAddr with no relay and no other address) and gets a direct connection and
//!    an intact transfer: the mapping made the host reachable;
//! 4. after the peer exits, the rule and the lease are gone; without `--quick`, a
//!    control: a peer on the same host and port without a mapping is *not* reachable
//!    at that address;
//! 5. the same map/remove cycle with NAT-PMP only and with UPnP-IGD only.
//!
//! miniupnpd refuses to forward when its WAN address is private or reserved (the lab's
//! are documentation addresses) unless a STUN check finds it "behind an unrestricted
//! NAT": so `pub1` gets a second address and runs a small RFC 5780 STUN responder
//! ([`stun_reply`]) that answers CHANGE-REQUEST from the other address/port, and the
//! router accepts those replies on its WAN input. The router's masquerade is limited to
//! LAN sources so its own STUN traffic keeps its ports. Inbound mapped traffic passes the
//! lab's forward chain with `ct status dnat accept`. Skipped (with a message, exit 0)
//! when miniupnpd is not installed.

use std::fmt::Write as _;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::matrix::{self, Kith, PathSeen};
use super::plan::{HomeKind, Plan};
use super::sys::Cmd;
use super::topology::{Lab, state_dir};
use super::{Options, hygiene};

/// The home's name: nodes `upnp-r` (router) and `upnp-h` (host).
const HOME: &str = "upnp";
const ROUTER: &str = "upnp-r";
const HOST: &str = "upnp-h";
/// The second address of `pub1` for the STUN responder's CHANGE-REQUEST replies
/// (free in a plan with two public hosts).
const STUN_ALT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 4);
const STUN_PORTS: [u16; 2] = [3478, 3479];
/// miniupnpd's nftables table in the router (family inet, as miniupnpd 2.3 uses).
const UPNP_TABLE: &str = "kithlab-upnp";
/// miniupnpd's HTTP port on the LAN side.
const UPNP_HTTP_PORT: u16 = 5000;
/// How long miniupnpd may take to start (its STUN check waits up to 3 s per round).
const DAEMON_START: Duration = Duration::from_secs(20);
/// Deadlines for `kith` replies.
const REPLY: Duration = Duration::from_secs(20);
/// How long `mapping` waits inside the peer, ms.
const MAPPING_WAIT_MS: u64 = 10_000;
/// Bytes sent over the direct connection.
const TRANSFER_BYTES: u64 = 256 * 1024;
/// Most STUN requests the responder answers; it also exits after its lifetime.
const STUN_MAX_REQUESTS: usize = 10_000;

/// Entry point of `cargo xtask lab portmap`.
pub(crate) fn run(root: &Path, opts: &Options, build: bool) -> Result<(), String> {
    let Some(daemon) = find_miniupnpd() else {
        println!(
            "lab portmap skipped: miniupnpd is not installed \
             (Debian: apt-get install miniupnpd-nftables)"
        );
        println!("figure lab.portmap.skipped 1");
        return Ok(());
    };
    let start = Instant::now();
    let exe = matrix::kith_ready(root, build)?;
    super::sys::require_tools()?;
    let root_before = hygiene::root_links()?;
    let plan = Plan::new(2, &[(HOME, HomeKind::Edm)])?;
    let lab = Lab::up_with(root, &opts.lab, plan)?;
    let dir = state_dir(root).join(format!("portmap-{}", lab.id));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // Daemons and peers live in `scenario`'s frame and are killed by pid before `lab`
    // drops (which would kill them anyway with the namespaces).
    let outcome = scenario(&lab, opts, &exe, &daemon, &dir).and_then(|mut figures| {
        let fences = hygiene::audit(&lab, &root_before)?;
        figures.push(("fences.ok".into(), u8::from(fences.is_empty()).to_string()));
        figures.push((
            "seconds".into(),
            format!("{:.1}", start.elapsed().as_secs_f64()),
        ));
        report(root, &lab.id, &figures, &fences, &dir)
    });
    if opts.keep {
        eprintln!(
            "lab: --keep: {:?} stays up (kith and miniupnpd stopped); \
             `cargo xtask lab topology down --id {}` removes it",
            lab.id, lab.id
        );
        lab.keep();
    }
    outcome
}

fn find_miniupnpd() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join("miniupnpd"))
        .find(|p| p.is_file())
}

/// A background process in a namespace, killed by its pid on drop.
struct Daemon {
    name: &'static str,
    child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("portmap: {} (pid {}) stopped", self.name, self.child.id());
    }
}

fn spawn(
    lab: &Lab,
    node: &str,
    name: &'static str,
    program: &str,
    args: &[&str],
    log: &Path,
) -> Result<Daemon, String> {
    let out = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let child = lab
        .command(node, program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .map_err(|e| format!("cannot start {name} in {node}: {e}"))?;
    Ok(Daemon { name, child })
}

fn ip4(plan: &Plan, node: &str, iface: &str) -> Result<Ipv4Addr, String> {
    plan.addr(node, iface)
        .ok_or_else(|| format!("plan: no {node}/{iface}"))
}

/// The router's extra rules: masquerade only LAN sources (so the router's own STUN
/// check keeps its ports), accept the STUN server's replies on the WAN input, let
/// miniupnpd's DNATed flows through the forward chain, and miniupnpd's own table.
pub(crate) fn router_rules(lan: &str, stun: [Ipv4Addr; 2]) -> String {
    format!(
        "flush chain ip kithlab postrouting\n\
         add rule ip kithlab postrouting oifname \"wan\" ip saddr {lan} masquerade random,fully-random\n\
         insert rule ip kithlab input iifname \"wan\" ip saddr {{ {}, {} }} udp sport {{ {}, {} }} accept\n\
         insert rule ip kithlab forward ct status dnat accept\n\
         table inet {UPNP_TABLE} {{\n\
         \tchain prerouting {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\tjump prerouting_miniupnpd\n\t}}\n\
         \tchain prerouting_miniupnpd {{\n\t}}\n\
         \tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat - 1; policy accept;\n\t\tjump postrouting_miniupnpd\n\t}}\n\
         \tchain postrouting_miniupnpd {{\n\t}}\n\
         \tchain forward {{\n\t\ttype filter hook forward priority filter; policy accept;\n\t\tjump miniupnpd\n\t}}\n\
         \tchain miniupnpd {{\n\t}}\n\
         }}\n",
        stun[0], stun[1], STUN_PORTS[0], STUN_PORTS[1]
    )
}

/// miniupnpd's configuration for the router.
pub(crate) fn miniupnpd_conf(stun: Ipv4Addr, lan: &str, lease_file: &Path) -> String {
    format!(
        "ext_ifname=wan\n\
         listening_ip=lan\n\
         http_port={UPNP_HTTP_PORT}\n\
         enable_natpmp=yes\n\
         enable_upnp=yes\n\
         secure_mode=yes\n\
         system_uptime=yes\n\
         ext_perform_stun=yes\n\
         ext_stun_host={stun}\n\
         ext_stun_port={}\n\
         lease_file={}\n\
         uuid=6b697468-6c61-4200-8000-000000000001\n\
         upnp_table_name={UPNP_TABLE}\n\
         upnp_nat_table_name={UPNP_TABLE}\n\
         allow 1024-65535 {lan} 1024-65535\n\
         deny 0-65535 0.0.0.0/0 0-65535\n",
        STUN_PORTS[0],
        lease_file.display()
    )
}

/// Waits (bounded) until `log` shows miniupnpd ready with port forwarding enabled.
fn wait_ready(daemon: &mut Daemon, log: &Path) -> Result<(), String> {
    let deadline = Instant::now() + DAEMON_START;
    while Instant::now() < deadline {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains("Port forwarding is now disabled")
            || text.contains("Port forwarding is impossible")
        {
            return Err(format!(
                "miniupnpd disabled port forwarding (see {})",
                log.display()
            ));
        }
        if text.contains("Port forwarding is now enabled")
            && text.contains("Listening for NAT-PMP/PCP traffic")
        {
            return Ok(());
        }
        if let Ok(Some(s)) = daemon.child.try_wait() {
            return Err(format!("miniupnpd exited ({s}); see {}", log.display()));
        }
        thread::sleep(Duration::from_millis(20));
    }
    Err(format!(
        "miniupnpd not ready within {} s; see {}",
        DAEMON_START.as_secs(),
        log.display()
    ))
}

/// What the router holds for `host:port`: (nft rule present, lease line present).
fn on_router(lab: &Lab, lease_file: &Path, host: SocketAddr) -> Result<(bool, bool), String> {
    let rules = Cmd::new(
        "ip",
        [
            "netns",
            "exec",
            &lab.ns(ROUTER),
            "nft",
            "list",
            "table",
            "inet",
            UPNP_TABLE,
        ],
    )
    .run()?;
    let rule = rules.contains(&format!("dnat ip to {host}"));
    let leases = std::fs::read_to_string(lease_file).unwrap_or_default();
    let lease = leases
        .lines()
        .any(|l| l.starts_with("UDP:") && l.contains(&format!(":{}:{}:", host.ip(), host.port())));
    Ok((rule, lease))
}

type Figures = Vec<(String, String)>;

fn scenario(
    lab: &Lab,
    opts: &Options,
    exe: &Path,
    daemon_exe: &Path,
    dir: &Path,
) -> Result<Figures, String> {
    let plan = &lab.plan;
    let pub1 = ip4(plan, "pub1", "eth0")?;
    let pub2 = ip4(plan, "pub2", "eth0")?;
    let host = ip4(plan, HOST, "eth0")?;
    let wan = ip4(plan, ROUTER, "wan")?;
    let lan = plan
        .node(ROUTER)
        .and_then(|n| n.ifaces.iter().find(|i| i.name == "lan"))
        .map(|i| format!("{}/{}", i.subnet.base, i.subnet.prefix))
        .ok_or("plan: router without lan")?;
    let v = opts.lab.verbose;

    // The STUN responder in pub1, on two addresses.
    Cmd::new(
        "ip",
        [
            "-n",
            &lab.ns("pub1"),
            "addr",
            "add",
            &format!("{STUN_ALT}/26"),
            "dev",
            "eth0",
        ],
    )
    .run()?;
    let xtask = std::env::current_exe().map_err(|e| e.to_string())?;
    let _stun = spawn(
        lab,
        "pub1",
        "stun responder",
        &xtask.to_string_lossy(),
        &[
            "lab",
            "_tool",
            "stun",
            &pub1.to_string(),
            &STUN_ALT.to_string(),
            "100",
        ],
        &dir.join("stun.log"),
    )?;

    // miniupnpd in the router.
    let rules = router_rules(&lan, [pub1, STUN_ALT]);
    if v {
        eprintln!("portmap: router rules:\n{rules}");
    }
    Cmd::new("ip", ["netns", "exec", &lab.ns(ROUTER), "nft", "-f", "-"])
        .input(rules)
        .run()?;
    let lease_file = dir.join("miniupnpd.leases");
    let _ = std::fs::remove_file(&lease_file);
    let conf = dir.join("miniupnpd.conf");
    std::fs::write(&conf, miniupnpd_conf(pub1, &lan, &lease_file))
        .map_err(|e| format!("{}: {e}", conf.display()))?;
    let daemon_log = dir.join("miniupnpd.log");
    let mut daemon = spawn(
        lab,
        ROUTER,
        "miniupnpd",
        &daemon_exe.to_string_lossy(),
        &["-f", &conf.to_string_lossy(), "-d"],
        &daemon_log,
    )?;
    let t = Instant::now();
    wait_ready(&mut daemon, &daemon_log)?;
    let mut figures: Figures = vec![(
        "miniupnpd_start_ms".into(),
        t.elapsed().as_millis().to_string(),
    )];
    eprintln!(
        "portmap: miniupnpd (pid {}) up in {} ms",
        daemon.child.id(),
        t.elapsed().as_millis()
    );
    let mut failures = Vec::new();

    // 1-4: default protocols, reached from the internet, removed at exit.
    let mut peer = start_peer(
        lab,
        HOST,
        exe,
        &["peer", "--bind", &format!("{host}:0"), "--port-map"],
        &dir.join("upnp-h.log"),
        v,
    )?;
    let mapping = peer.ask(&format!("mapping {MAPPING_WAIT_MS}"), REPLY)?;
    let (protocol, external) = parse_mapping(&mapping)?;
    figures.push(("protocol".into(), protocol.clone()));
    figures.push(("external".into(), external.to_string()));
    if protocol != "pcp" {
        failures.push(format!(
            "mapped with {protocol}, expected pcp (tried first)"
        ));
    }
    if external.ip() != std::net::IpAddr::V4(wan) {
        failures.push(format!(
            "external address {external} is not the router's {wan}"
        ));
    }
    let local = SocketAddr::new(host.into(), external.port());
    let (rule, lease) = on_router(lab, &lease_file, local)?;
    figures.push(("router_rule".into(), u8::from(rule).to_string()));
    figures.push(("router_lease".into(), u8::from(lease).to_string()));
    if !(rule && lease) {
        failures.push(format!("router: rule {rule}, lease {lease} for {local}"));
    }
    let hex = peer
        .ask("mapped-addr", REPLY)?
        .map_err(|e| format!("mapped-addr: {e}"))?;
    let target = matrix::decode_peer_addr(&hex)?;
    let mut outside = start_peer(
        lab,
        "pub2",
        exe,
        &["peer", "--bind", &format!("{pub2}:0")],
        &dir.join("pub2.log"),
        v,
    )?;
    let direct = match outside.ask(&format!("connect {}", target.hex), REPLY)? {
        Ok(body) => {
            let c = matrix::parse_connect(&body)?;
            figures.push(("connect_ms".into(), c.ms.to_string()));
            let transfer = outside
                .ask(&format!("transfer {} {TRANSFER_BYTES}", target.id), REPLY)?
                .map_err(|e| format!("transfer: {e}"))
                .and_then(|b| matrix::parse_transfer(&b))?;
            figures.push((
                "transfer_intact".into(),
                u8::from(transfer.intact).to_string(),
            ));
            matches!(c.path, PathSeen::Direct(a) if a == external) && transfer.intact
        }
        Err(e) => {
            failures.push(format!("pub2 could not reach {external}: {e}"));
            false
        }
    };
    figures.push(("direct_from_internet".into(), u8::from(direct).to_string()));
    if !direct {
        failures.push(format!(
            "pub2 → {external}: not a direct, intact connection"
        ));
    }
    drop(outside);
    let exited = peer.quit(Duration::from_secs(10));
    let (rule, lease) = on_router(lab, &lease_file, local)?;
    let removed = exited && !rule && !lease;
    figures.push(("removed".into(), u8::from(removed).to_string()));
    if !removed {
        failures.push(format!(
            "after exit (clean exit {exited}): rule {rule}, lease {lease} still on the router"
        ));
    }

    // Control (not with --quick: the dial waits for its 10 s handshake timeout): the
    // same host and port without a mapping cannot be reached from the internet.
    if !opts.quick {
        let mut bare = start_peer(
            lab,
            HOST,
            exe,
            &["peer", "--bind", &local.to_string()],
            &dir.join("upnp-h-unmapped.log"),
            v,
        )?;
        let hex = bare
            .ask(&format!("addr-with {external}"), REPLY)?
            .map_err(|e| format!("addr-with: {e}"))?;
        let mut outside = start_peer(
            lab,
            "pub2",
            exe,
            &["peer", "--bind", &format!("{pub2}:0")],
            &dir.join("pub2-control.log"),
            v,
        )?;
        let reached = outside.ask(&format!("connect {hex}"), REPLY)?.is_ok();
        figures.push((
            "control.unmapped_reachable".into(),
            u8::from(reached).to_string(),
        ));
        if reached {
            failures.push(format!("control: {external} reachable without a mapping"));
        }
    }

    // 5: each other protocol on its own.
    for proto in ["natpmp", "upnp"] {
        let mut p = start_peer(
            lab,
            HOST,
            exe,
            &[
                "peer",
                "--bind",
                &format!("{host}:0"),
                "--port-map-protocols",
                proto,
            ],
            &dir.join(format!("upnp-h-{proto}.log")),
            v,
        )?;
        let got = parse_mapping(&p.ask(&format!("mapping {MAPPING_WAIT_MS}"), REPLY)?);
        let (mapped, removed) = match got {
            Ok((pr, ext)) if pr == proto => {
                let local = SocketAddr::new(host.into(), ext.port());
                let (rule, lease) = on_router(lab, &lease_file, local)?;
                let exited = p.quit(Duration::from_secs(10));
                let after = on_router(lab, &lease_file, local)?;
                (rule && lease, exited && after == (false, false))
            }
            other => {
                failures.push(format!("{proto} only: {other:?}"));
                (false, false)
            }
        };
        figures.push((format!("{proto}.mapped"), u8::from(mapped).to_string()));
        figures.push((format!("{proto}.removed"), u8::from(removed).to_string()));
        if !(mapped && removed) {
            failures.push(format!("{proto}: mapped {mapped}, removed {removed}"));
        }
    }
    figures.push(("ok".into(), u8::from(failures.is_empty()).to_string()));
    drop(daemon);
    if failures.is_empty() {
        Ok(figures)
    } else {
        for (k, v) in &figures {
            println!("figure lab.portmap.{k} {v}");
        }
        Err(format!("lab portmap failed:\n  {}", failures.join("\n  ")))
    }
}

/// Starts `kith <args>` in `node` and waits for its `addr` line.
fn start_peer(
    lab: &Lab,
    node: &str,
    exe: &Path,
    args: &[&str],
    log: &Path,
    verbose: bool,
) -> Result<Kith, String> {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    let mut k = Kith::spawn(lab, node, exe, &args, log, verbose)?;
    k.addr_line()?;
    Ok(k)
}

/// `mapping` reply: `Ok("<protocol> <addr>")`.
fn parse_mapping(reply: &Result<String, String>) -> Result<(String, SocketAddr), String> {
    let body = reply.as_ref().map_err(|e| format!("no mapping: {e}"))?;
    let mut w = body.split_whitespace();
    let proto = w.next().ok_or("empty mapping reply")?.to_owned();
    let addr = w
        .next()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("bad mapping reply {body:?}"))?;
    Ok((proto, addr))
}

fn report(
    root: &Path,
    id: &str,
    figures: &Figures,
    fences: &[String],
    dir: &Path,
) -> Result<(), String> {
    let mut out = String::new();
    for f in fences {
        let _ = writeln!(out, "fence: {f}");
    }
    for (k, v) in figures {
        let _ = writeln!(out, "figure lab.portmap.{k} {v}");
    }
    print!("{out}");
    println!("logs: {}", dir.display());
    let path = state_dir(root).join(format!("portmap-{id}.txt"));
    std::fs::write(&path, &out).map_err(|e| format!("{}: {e}", path.display()))?;
    if fences.is_empty() {
        Ok(())
    } else {
        Err("the lab left its fences".into())
    }
}

// ---------------------------------------------------------------------------------------
// The STUN responder (`lab _tool stun A B LIFETIME`): RFC 5389 Binding with RFC 5780's
// CHANGE-REQUEST, on A:3478, A:3479, B:3478, B:3479.

const MAGIC_COOKIE: u32 = 0x2112_a442;
const CHANGE_REQUEST: u16 = 0x0003;
const CHANGE_IP: u32 = 0x4;
const CHANGE_PORT: u32 = 0x2;

/// The answer to a Binding request `req` from `from` received on socket `on` (index
/// into A:3478, A:3479, B:3478, B:3479): the socket to answer from and the bytes.
/// `None` for anything that is not a well-formed Binding request.
pub(crate) fn stun_reply(req: &[u8], from: SocketAddr, on: usize) -> Option<(usize, Vec<u8>)> {
    if req.len() < 20 || req.len() > 548 || req[0..2] != [0, 1] {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([req[2], req[3]]));
    if 20 + len != req.len() || on > 3 {
        return None;
    }
    let mut flags = 0u32;
    let mut i = 20;
    // Each round advances by at least 4 bytes.
    while i + 4 <= req.len() {
        let kind = u16::from_be_bytes([req[i], req[i + 1]]);
        let alen = usize::from(u16::from_be_bytes([req[i + 2], req[i + 3]]));
        let value = req.get(i + 4..i + 4 + alen)?;
        if kind == CHANGE_REQUEST && alen == 4 {
            flags = u32::from_be_bytes([value[0], value[1], value[2], value[3]]);
        }
        i += 4 + alen.div_ceil(4) * 4;
    }
    let SocketAddr::V4(from) = from else {
        return None;
    };
    let mut answer_on = on;
    if flags & CHANGE_IP != 0 {
        answer_on ^= 2;
    }
    if flags & CHANGE_PORT != 0 {
        answer_on ^= 1;
    }
    let ip = from.ip().octets();
    let port = from.port();
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let mut body = Vec::with_capacity(24);
    // MAPPED-ADDRESS (RFC 3489 clients) and XOR-MAPPED-ADDRESS.
    body.extend_from_slice(&[0, 1, 0, 8, 0, 1]);
    body.extend_from_slice(&port.to_be_bytes());
    body.extend_from_slice(&ip);
    body.extend_from_slice(&[0, 0x20, 0, 8, 0, 1]);
    body.extend_from_slice(&(port ^ 0x2112).to_be_bytes());
    body.extend(ip.iter().zip(cookie).map(|(a, c)| a ^ c));
    let mut out = vec![0x01, 0x01];
    out.extend_from_slice(&u16::try_from(body.len()).ok()?.to_be_bytes());
    out.extend_from_slice(&req[4..20]);
    out.extend_from_slice(&body);
    Some((answer_on, out))
}

/// Body of `lab _tool stun A B LIFETIME_SECS`.
pub(crate) fn stun_main(args: &[String]) -> Result<(), String> {
    let [a, b, lifetime] = args else {
        return Err("usage: lab _tool stun ADDR_A ADDR_B LIFETIME_SECS".into());
    };
    let a: Ipv4Addr = a.parse().map_err(|e| format!("bad address {a:?}: {e}"))?;
    let b: Ipv4Addr = b.parse().map_err(|e| format!("bad address {b:?}: {e}"))?;
    let lifetime = Duration::from_secs(lifetime.parse().map_err(|_| "bad lifetime")?);
    let mut socks = Vec::new();
    for ip in [a, b] {
        for port in STUN_PORTS {
            let s = UdpSocket::bind((ip, port)).map_err(|e| format!("{ip}:{port}: {e}"))?;
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .map_err(|e| e.to_string())?;
            socks.push(s);
        }
    }
    let socks = Arc::new(socks);
    let deadline = Instant::now() + lifetime;
    let threads: Vec<_> = (0..socks.len())
        .map(|on| {
            let socks = socks.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 1024];
                let mut answered = 0;
                while Instant::now() < deadline && answered < STUN_MAX_REQUESTS {
                    let Ok((n, from)) = socks[on].recv_from(&mut buf) else {
                        continue;
                    };
                    if let Some((via, reply)) = stun_reply(&buf[..n], from, on) {
                        let _ = socks[via].send_to(&reply, from);
                        answered += 1;
                        println!("stun {from} on {on} answered via {via}");
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(flags: Option<u32>) -> Vec<u8> {
        let mut r = vec![0, 1, 0, 0];
        r.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        r.extend_from_slice(&[9; 12]);
        if let Some(f) = flags {
            r.extend_from_slice(&[0, 3, 0, 4]);
            r.extend_from_slice(&f.to_be_bytes());
            r[3] = 8;
        }
        r
    }

    #[test]
    fn stun_change_request() {
        let from: SocketAddr = "203.0.113.16:40000".parse().unwrap();
        let (via, reply) = stun_reply(&request(None), from, 0).unwrap();
        assert_eq!(via, 0);
        assert_eq!(&reply[..2], &[1, 1]);
        assert_eq!(&reply[8..20], &[9; 12]);
        // MAPPED-ADDRESS carries the source in clear.
        assert_eq!(&reply[26..28], &40000u16.to_be_bytes());
        assert_eq!(&reply[28..32], &[203, 0, 113, 16]);
        assert_eq!(
            stun_reply(&request(Some(CHANGE_PORT)), from, 0).unwrap().0,
            1
        );
        assert_eq!(stun_reply(&request(Some(CHANGE_IP)), from, 0).unwrap().0, 2);
        assert_eq!(
            stun_reply(&request(Some(CHANGE_IP | CHANGE_PORT)), from, 1)
                .unwrap()
                .0,
            2
        );
        assert!(stun_reply(&[0, 1, 0, 0], from, 0).is_none());
        let mut truncated = request(Some(CHANGE_IP));
        truncated[3] = 12; // claims more than it has
        assert!(stun_reply(&truncated, from, 0).is_none());
    }

    #[test]
    fn router_rules_and_conf_are_namespaced_text() {
        let r = router_rules("192.0.2.0/29", [Ipv4Addr::new(203, 0, 113, 2), STUN_ALT]);
        assert!(r.contains("ip saddr 192.0.2.0/29 masquerade random,fully-random"));
        assert!(r.contains("ct status dnat accept"));
        assert!(r.contains(&format!("table inet {UPNP_TABLE}")));
        let c = miniupnpd_conf(
            Ipv4Addr::new(203, 0, 113, 2),
            "192.0.2.0/29",
            Path::new("/x/l"),
        );
        assert!(c.contains("ext_ifname=wan\n") && c.contains("enable_natpmp=yes\n"));
        assert!(c.contains("allow 1024-65535 192.0.2.0/29 1024-65535\n"));
        assert!(c.ends_with("deny 0-65535 0.0.0.0/0 0-65535\n"));
    }
}
