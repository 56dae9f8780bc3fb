//! `cargo xtask lab spoof`: forged and replayed path probes, sent by an attacker on real
//! `kith` binaries, do not move a path.
//!
//! The lab (id `spoof`) is `pub1`, `pub2` and one home behind an endpoint-independent
//! NAT (`eim-r`/`eim-h`). A `kith relay` runs in `pub1`, `kith-lab peer`s in `pub2` and
//! `eim-h`; `eim-h` connects to `pub2` and both wait for the direct path (`D` on `pub2`:
//! eim-r's mapping; `D'` on `eim-h`: pub2's bound address). Then two attackers send
//! probes with `xtask lab _tool spray` (a plain UDP socket, no raw sockets, no spoofed
//! source addresses):
//!
//! * **internet**: `pub1` (the relay's host, on the internet segment), from its own
//!   address, to `pub2`'s address and to eim-r's mapping of `eim-h`;
//! * **LAN**: the home router's LAN address (192.0.2.1; it stands for another device on
//!   the victim's LAN, the plan has one host per home), to `eim-h`'s bound address. The
//!   internet attacker cannot reach `eim-h`: the NAT filters its packets (counted).
//!
//! 1. **forged**: pings and pongs claiming the other peer's node id, random tx ids and
//!    random MACs (200 per target, 50 with `--quick`, 1 ms apart). Each must reach kith
//!    (the victim's log has `probe with a bad MAC dropped from=<attacker>`), none may be
//!    answered, paths stay, a 256 KiB transfer is intact.
//! 2. **replayed** (needs tcpdump): the probes the two peers exchanged while going
//!    direct, captured on eim-r's WAN interface, are re-sent verbatim (3 rounds) from
//!    both attackers to both peers. A replayed ping passes the MAC but its tx id was
//!    seen before (`replayed ping dropped`), so the victim answers each captured ping
//!    at most once — only one it never received itself (the NAT dropped it before the
//!    mapping opened) is fresh to it (`replay_answered` ≤ captured pings, over 3
//!    rounds); a replayed pong answers no outstanding ping
//!    (`pong answering no outstanding ping dropped`), so where the victim *sends* does
//!    not change. Paths are checked right after, and again after a
//!    keep-alive round; then a second transfer.
//!
//! A replay from the *peer's own* address is not attempted: from another host it needs IP
//! source spoofing (raw sockets), and an attacker that can do that on-path can drop the
//! traffic anyway. Prints `figure lab.spoof.*`; exits non-zero if a path moved, a
//! transfer broke, or the attack traffic did not demonstrably reach the peers.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::Options;
use super::hygiene;
use super::matrix::{self, Kith, PathSeen, PeerAddr, parse_transfer};
use super::plan::{HomeKind, Plan};
use super::sys::Cmd;
use super::topology::{Lab, state_dir};

/// The home behind the endpoint-independent NAT.
const HOME: &str = "eim";
const HOST: &str = "eim-h";
const ROUTER: &str = "eim-r";
/// The relay's UDP port in `pub1`.
const RELAY_PORT: u16 = 7000;
/// Probe datagram length and magic (docs/transport.md).
const PROBE_LEN: usize = 66;
const PROBE_MAGIC: &[u8; 4] = b"kPRB";
/// tcpdump filter for probes: UDP payload byte 0 is 0, bytes 1..5 are "kPRB", 66 bytes.
const PROBE_FILTER: &str = "udp and udp[4:2] = 74 and udp[8] = 0 and udp[9:4] = 0x6b505242";
/// Forged probes per target, and with `--quick`.
const FORGED_PER_TARGET: usize = 200;
const QUICK_FORGED_PER_TARGET: usize = 50;
/// Times each captured probe is replayed to each target.
const REPLAY_ROUNDS: usize = 3;
/// Most distinct captured probes replayed.
const MAX_REPLAYED: usize = 64;
/// Gap between two attack datagrams, µs.
const PACE_US: u64 = 1000;
/// How long the attack tool listens for answers after its last datagram, ms.
const LISTEN_MS: u64 = 500;
/// How long the peers may take to go direct.
const WAIT_DIRECT_MS: u64 = 5000;
/// Pause after the replays before the last path check: longer than a keep-alive round
/// (2 s), in which the victims ping every candidate, the attacker's address included.
const SETTLE: Duration = Duration::from_millis(2500);
const TRANSFER_BYTES: u64 = 256 * 1024;
const SHORT_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(25);
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(30);
/// Most packets a capture keeps; tcpdump exits by itself after that many.
const CAPTURE_MAX: usize = 2000;
/// Lifetime of an attack tool process, s.
const TOOL_LIFETIME: &str = "30";
/// Share of the forged probes sent to a reachable victim that its log must show dropped.
const MIN_SEEN_PERCENT: usize = 90;

const BAD_MAC: &str = "probe with a bad MAC dropped";
const PONG_UNMATCHED: &str = "pong answering no outstanding ping dropped";
/// paths.rs's debug line for a ping whose tx id it has seen before.
const PING_REPLAYED: &str = "replayed ping dropped";
const PONG_OTHER_ADDR: &str = "pong from another address dropped";

// ---------------------------------------------------------------------------------------
// Pure helpers.

/// A probe datagram with arbitrary fields: `0x00 ‖ "kPRB" ‖ kind ‖ tx ‖ sender ‖ mac`.
pub(crate) fn probe(pong: bool, tx: [u8; 12], sender: &[u8; 32], mac: [u8; 16]) -> Vec<u8> {
    let mut p = Vec::with_capacity(PROBE_LEN);
    p.push(0);
    p.extend_from_slice(PROBE_MAGIC);
    p.push(if pong { 2 } else { 1 });
    p.extend_from_slice(&tx);
    p.extend_from_slice(sender);
    p.extend_from_slice(&mac);
    p
}

/// `Some(true)` for a pong, `Some(false)` for a ping, `None` if `d` is no probe.
pub(crate) fn probe_kind(d: &[u8]) -> Option<bool> {
    if d.len() != PROBE_LEN || d[0] != 0 || &d[1..5] != PROBE_MAGIC {
        return None;
    }
    match d[5] {
        1 => Some(false),
        2 => Some(true),
        _ => None,
    }
}

/// Decodes kith's lowercase base32 text form of a node id (inverse of
/// [`matrix::base32`]).
pub(crate) fn base32_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = vec![];
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'a'..=b'z' => c - b'a',
            b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        acc = (acc << 5) | u32::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

fn node_id(a: &PeerAddr) -> Result<[u8; 32], String> {
    base32_decode(&a.id)
        .and_then(|v| <[u8; 32]>::try_from(v).ok())
        .ok_or_else(|| format!("bad node id {:?}", a.id))
}

/// A small PRNG (splitmix64), seeded from the OS.
struct Rng(u64);

impl Rng {
    fn from_os() -> Rng {
        let mut seed = [0u8; 8];
        let ok = File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut seed));
        let mut s = u64::from_le_bytes(seed);
        if ok.is_err() {
            s = u64::from(std::process::id())
                ^ std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
        }
        Rng(s)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// `n` forged probes claiming `sender`, alternating ping and pong, random tx and MAC.
fn forged(rng: &mut Rng, sender: &[u8; 32], n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let (mut tx, mut mac) = ([0u8; 12], [0u8; 16]);
            rng.fill(&mut tx);
            rng.fill(&mut mac);
            probe(i % 2 == 1, tx, sender, mac)
        })
        .collect()
}

/// A UDP datagram from a capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Captured {
    pub(crate) src: SocketAddrV4,
    pub(crate) dst: SocketAddrV4,
    pub(crate) payload: Vec<u8>,
}

/// The IPv4 UDP datagrams of a pcap file (Ethernet or Linux cooked link type, either
/// byte order, micro- or nanosecond stamps). A truncated last record is ignored (the
/// capture is killed, not stopped).
pub(crate) fn pcap_udp(b: &[u8]) -> Result<Vec<Captured>, String> {
    if b.len() < 24 {
        return Err("pcap: no header".into());
    }
    let magic = [b[0], b[1], b[2], b[3]];
    let le = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => return Err(format!("pcap: bad magic {magic:02x?}")),
    };
    let u32_at = |p: usize| {
        let w = [b[p], b[p + 1], b[p + 2], b[p + 3]];
        if le {
            u32::from_le_bytes(w)
        } else {
            u32::from_be_bytes(w)
        }
    };
    let link = u32_at(20);
    let l2 = match link {
        1 => 14,   // Ethernet
        113 => 16, // Linux cooked (SLL)
        other => return Err(format!("pcap: link type {other} not supported")),
    };
    let mut out = vec![];
    let mut pos = 24;
    while pos + 16 <= b.len() {
        let len = u32_at(pos + 8) as usize;
        let start = pos + 16;
        let Some(frame) = b.get(start..start + len) else {
            break;
        };
        pos = start + len;
        if frame.len() < l2 || frame[l2 - 2..l2] != [0x08, 0x00] {
            continue;
        }
        let ip = &frame[l2..];
        if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 17 {
            continue;
        }
        let ihl = usize::from(ip[0] & 0xf) * 4;
        let Some(udp) = ip.get(ihl..) else { continue };
        if udp.len() < 8 {
            continue;
        }
        let ulen = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
        let Some(payload) = udp.get(8..ulen.max(8)) else {
            continue;
        };
        let a = |o: usize| Ipv4Addr::new(ip[o], ip[o + 1], ip[o + 2], ip[o + 3]);
        let port = |o: usize| u16::from_be_bytes([udp[o], udp[o + 1]]);
        out.push(Captured {
            src: SocketAddrV4::new(a(12), port(0)),
            dst: SocketAddrV4::new(a(16), port(2)),
            payload: payload.to_vec(),
        });
    }
    Ok(out)
}

/// Lines of a kith log that contain `message` and `from=<ip>:`.
pub(crate) fn count_log(log: &str, message: &str, from: Ipv4Addr) -> usize {
    let needle = format!("from={from}:");
    log.lines()
        .filter(|l| l.contains(message) && l.contains(&needle))
        .count()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

// ---------------------------------------------------------------------------------------
// The attack tool: `xtask lab _tool spray --bind ADDR --file PATH [--pace-us N]
// [--listen-ms N] [--lifetime S]`. Each line of the file is `<to> <hex datagram>`; it
// sends them in order from one socket and counts what comes back.

/// What the attack tool reports (`sent=… failed=… received=… pongs=… pings=…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct SendReport {
    pub(crate) sent: usize,
    pub(crate) failed: usize,
    pub(crate) received: usize,
    pub(crate) pongs: usize,
    pub(crate) pings: usize,
}

impl SendReport {
    /// Datagrams received that were not probes.
    fn data(&self) -> usize {
        self.received - self.pongs - self.pings
    }

    fn line(&self) -> String {
        format!(
            "sent={} failed={} received={} pongs={} pings={}",
            self.sent, self.failed, self.received, self.pongs, self.pings
        )
    }

    pub(crate) fn parse(s: &str) -> Result<SendReport, String> {
        let get = |k: &str| -> Result<usize, String> {
            s.split_whitespace()
                .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("attack tool: no {k} in {s:?}"))
        };
        Ok(SendReport {
            sent: get("sent")?,
            failed: get("failed")?,
            received: get("received")?,
            pongs: get("pongs")?,
            pings: get("pings")?,
        })
    }
}

/// Entry point of `lab _tool spray`.
pub(crate) fn spray_main(args: &[String]) -> Result<(), String> {
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let num = |name: &str, default: u64| -> Result<u64, String> {
        flag(name).map_or(Ok(default), |v| {
            v.parse().map_err(|e| format!("bad {name} {v:?}: {e}"))
        })
    };
    let lifetime = Duration::from_secs(num("--lifetime", 30)?.clamp(1, 600));
    thread::spawn(move || {
        thread::sleep(lifetime);
        eprintln!("lab tool spray: lifetime over, exiting");
        std::process::exit(3);
    });
    let bind: SocketAddr = flag("--bind")
        .ok_or("spray: missing --bind")?
        .parse()
        .map_err(|e| format!("spray: bad --bind: {e}"))?;
    let file = flag("--file").ok_or("spray: missing --file")?;
    let pace = Duration::from_micros(num("--pace-us", PACE_US)?.min(1_000_000));
    let listen = Duration::from_millis(num("--listen-ms", LISTEN_MS)?.min(10_000));
    let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
    let mut jobs = vec![];
    for (i, line) in text.lines().enumerate().take(100_000) {
        let (to, data) = line
            .split_once(' ')
            .ok_or_else(|| format!("{file}:{}: expected `<to> <hex>`", i + 1))?;
        let to: SocketAddr = to.parse().map_err(|e| format!("{file}:{}: {e}", i + 1))?;
        let data = unhex(data.trim()).ok_or_else(|| format!("{file}:{}: bad hex", i + 1))?;
        jobs.push((to, data));
    }
    let sock = UdpSocket::bind(bind).map_err(|e| format!("spray: bind {bind}: {e}"))?;
    let rx = sock.try_clone().map_err(|e| e.to_string())?;
    rx.set_read_timeout(Some(Duration::from_millis(20)))
        .map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop_rx = stop.clone();
    let listener = thread::spawn(move || {
        let mut r = SendReport::default();
        let mut buf = [0u8; 2048];
        while !stop_rx.load(Ordering::Relaxed) && r.received < 1_000_000 {
            if let Ok((n, _)) = rx.recv_from(&mut buf) {
                r.received += 1;
                match probe_kind(&buf[..n]) {
                    Some(true) => r.pongs += 1,
                    Some(false) => r.pings += 1,
                    None => {}
                }
            }
        }
        r
    });
    let (mut sent, mut failed) = (0, 0);
    for (to, data) in &jobs {
        match sock.send_to(data, to) {
            Ok(_) => sent += 1,
            Err(_) => failed += 1,
        }
        thread::sleep(pace);
    }
    thread::sleep(listen);
    stop.store(true, Ordering::Relaxed);
    let mut r = listener.join().map_err(|_| "spray: listener panicked")?;
    r.sent = sent;
    r.failed = failed;
    println!("{}", r.line());
    Ok(())
}

// ---------------------------------------------------------------------------------------
// tcpdump.

/// A tcpdump process writing a pcap file; killed by its pid on drop.
struct Capture {
    child: Child,
    file: PathBuf,
    what: String,
    /// tcpdump's standard error, line by line (its statistics at the end).
    stderr: mpsc::Receiver<String>,
}

impl Capture {
    /// Starts tcpdump in `node` on `iface` and waits (up to 5 s) until it listens.
    fn start(
        lab: &Lab,
        node: &str,
        iface: &str,
        filter: &str,
        file: PathBuf,
    ) -> Result<Capture, String> {
        let _ = std::fs::remove_file(&file);
        let mut child = lab
            .command(node, "tcpdump")
            .args([
                "-i",
                iface,
                "-n",
                "-U",
                "--immediate-mode",
                "-Z",
                "root",
                "-s",
                "128",
            ])
            .arg("-c")
            .arg(CAPTURE_MAX.to_string())
            .arg("-w")
            .arg(&file)
            .arg(filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start tcpdump in {node}: {e}"))?;
        let what = format!("tcpdump in {node} on {iface} (pid {})", child.id());
        let Some(stderr) = child.stderr.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{what}: no stderr"));
        };
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().take(1000) {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let cap = Capture {
            child,
            file,
            what,
            stderr: rx,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match cap.stderr.recv_timeout(left) {
                Ok(l) if l.contains("listening on") => return Ok(cap),
                Ok(_) => {}
                Err(_) => return Err(format!("{}: not listening within 5 s", cap.what)),
            }
        }
    }

    /// Stops the capture (SIGINT to tcpdump's pid, so it writes out what it holds;
    /// SIGKILL if it is still there after 2 s) and returns the UDP datagrams it holds.
    fn stop(mut self) -> Result<Vec<Captured>, String> {
        let pid = self.child.id().to_string();
        let _ = Cmd::new("kill", ["-INT", pid.as_str()]).run();
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let stats: Vec<String> = self.stderr.try_iter().collect();
        eprintln!("spoof: {}: {}", self.what, stats.join("; "));
        let bytes =
            std::fs::read(&self.file).map_err(|e| format!("{}: {e}", self.file.display()))?;
        pcap_udp(&bytes).map_err(|e| format!("{}: {e}", self.what))
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// The scenario.

/// `figure lab.spoof.<name> <value>` lines, in order.
type Figures = Vec<(String, String)>;

struct Peers {
    /// (process, its address) in pub2 and in eim-h.
    pub2: (Kith, PeerAddr),
    home: (Kith, PeerAddr),
}

/// An attacker: a node and the address its tool binds.
struct Attacker {
    node: String,
    ip: Ipv4Addr,
}

/// Runs the attack tool in `a.node` on `jobs` (target, datagram).
fn attack(
    lab: &Lab,
    dir: &Path,
    a: &Attacker,
    name: &str,
    jobs: &[(SocketAddr, Vec<u8>)],
) -> Result<SendReport, String> {
    let file = dir.join(format!("{name}.txt"));
    let mut text = String::new();
    for (to, d) in jobs {
        let _ = writeln!(text, "{to} {}", hex(d));
    }
    std::fs::write(&file, text).map_err(|e| format!("{}: {e}", file.display()))?;
    let xtask = std::env::current_exe().map_err(|e| e.to_string())?;
    let bind = SocketAddr::new(a.ip.into(), 0).to_string();
    let file_s = file.to_string_lossy().into_owned();
    let out = Cmd::new(
        "ip",
        [
            "netns",
            "exec",
            &lab.ns(&a.node),
            &xtask.to_string_lossy(),
            "lab",
            "_tool",
            "spray",
            "--bind",
            &bind,
            "--file",
            &file_s,
            "--pace-us",
            &PACE_US.to_string(),
            "--listen-ms",
            &LISTEN_MS.to_string(),
            "--lifetime",
            TOOL_LIFETIME,
        ],
    )
    .run()?;
    let r = SendReport::parse(out.trim())?;
    eprintln!("spoof: {name} from {} ({}): {}", a.node, a.ip, r.line());
    Ok(r)
}

fn ask(k: &mut Kith, cmd: &str, timeout: Duration) -> Result<String, String> {
    match k.ask(cmd, timeout) {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(e)) => Err(format!("`{cmd}`: {e}")),
        Err(e) => Err(e),
    }
}

fn path_of(k: &mut Kith, id: &str) -> Result<PathSeen, String> {
    PathSeen::parse(&ask(k, &format!("path {id}"), SHORT_TIMEOUT)?)
}

fn wait_direct(k: &mut Kith, id: &str) -> Result<SocketAddr, String> {
    let timeout = Duration::from_millis(WAIT_DIRECT_MS) + SHORT_TIMEOUT;
    let body = ask(k, &format!("wait-direct {id} {WAIT_DIRECT_MS}"), timeout)?;
    let word = body.split_whitespace().next().unwrap_or("");
    match PathSeen::parse(word)? {
        PathSeen::Direct(a) => Ok(a),
        p => Err(format!("no direct path within {WAIT_DIRECT_MS} ms ({p:?})")),
    }
}

/// What a check of both paths found: problems (a path that is not the one it was).
fn check_paths(
    peers: &mut Peers,
    d_pub2: SocketAddr,
    d_home: SocketAddr,
    when: &str,
) -> Result<Vec<String>, String> {
    let mut moved = vec![];
    let home_id = peers.home.1.id.clone();
    let pub2_id = peers.pub2.1.id.clone();
    let p = path_of(&mut peers.pub2.0, &home_id)?;
    if p != PathSeen::Direct(d_pub2) {
        moved.push(format!(
            "{when}: pub2's path to {HOST} is {p:?}, was direct={d_pub2}"
        ));
    }
    let p = path_of(&mut peers.home.0, &pub2_id)?;
    if p != PathSeen::Direct(d_home) {
        moved.push(format!(
            "{when}: {HOST}'s path to pub2 is {p:?}, was direct={d_home}"
        ));
    }
    eprintln!(
        "spoof: {when}: paths {}",
        if moved.is_empty() {
            "unchanged"
        } else {
            "MOVED"
        }
    );
    Ok(moved)
}

/// A transfer from eim-h to pub2: intact and direct before and after.
fn transfer(peers: &mut Peers) -> Result<bool, String> {
    let id = peers.pub2.1.id.clone();
    let body = ask(
        &mut peers.home.0,
        &format!("transfer {id} {TRANSFER_BYTES}"),
        TRANSFER_TIMEOUT,
    )?;
    let t = parse_transfer(&body)?;
    eprintln!("spoof: transfer {body}");
    Ok(t.intact && t.bytes == TRANSFER_BYTES)
}

fn start_peer(
    lab: &Lab,
    node: &str,
    exe: &Path,
    relay: &str,
    dir: &Path,
    v: bool,
) -> Result<(Kith, PeerAddr), String> {
    let log = dir.join(format!("{node}.log"));
    matrix::spawn_peer(lab, node, exe, &["--relay", relay], &log, "spoof", v)
}

fn read_log(dir: &Path, node: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{node}.log"))).unwrap_or_default()
}

/// Runs the scenario; the processes live in this frame and are killed by pid when it
/// returns, whatever the path.
fn scenario(
    lab: &Lab,
    opts: &Options,
    exe: &Path,
    dir: &Path,
) -> Result<(Figures, Vec<String>), String> {
    let v = opts.lab.verbose;
    let mut figs: Figures = vec![];
    let mut problems = vec![];
    let ip = |n: &str| {
        lab.plan
            .primary_addr(n)
            .ok_or_else(|| format!("no address for {n}"))
    };
    let (mut relay, relay_addr) = matrix::spawn_relay(lab, "pub1", exe, dir, v)?;
    eprintln!("spoof: relay in pub1 (pid {})", relay.pid());
    let mut peers = Peers {
        pub2: start_peer(lab, "pub2", exe, &relay_addr, dir, v)?,
        home: start_peer(lab, HOST, exe, &relay_addr, dir, v)?,
    };
    let pub2_id = peers.pub2.1.id.clone();
    let home_id = peers.home.1.id.clone();
    let pub2_bound = *peers
        .pub2
        .1
        .direct
        .first()
        .ok_or("pub2 lists no direct address")?;
    let host_ip = std::net::IpAddr::V4(ip(HOST)?);
    let home_bound = *peers
        .home
        .1
        .direct
        .iter()
        .find(|a| a.ip() == host_ip)
        .ok_or("eim-h lists no bound address")?;

    // Capture the probes the peers exchange while they go direct.
    let tcpdump = super::sys::have("tcpdump");
    let wire = if tcpdump {
        Some(Capture::start(
            lab,
            ROUTER,
            "wan",
            PROBE_FILTER,
            dir.join("wire.pcap"),
        )?)
    } else {
        println!(
            "lab spoof: tcpdump is not installed (Debian package tcpdump): replays skipped, forged probes only"
        );
        None
    };
    let body = ask(
        &mut peers.home.0,
        &format!("connect {}", peers.pub2.1.hex),
        CONNECT_TIMEOUT,
    )?;
    eprintln!("spoof: {HOST} connect: {body}");
    let d_home = wait_direct(&mut peers.home.0, &pub2_id)?;
    let d_pub2 = wait_direct(&mut peers.pub2.0, &home_id)?;
    eprintln!("spoof: direct: pub2 → {d_pub2}, {HOST} → {d_home}");
    figs.push(("direct.pub2".into(), d_pub2.to_string()));
    figs.push(("direct.eim".into(), d_home.to_string()));
    let captured = match wire {
        Some(c) => {
            // Both sides have pinged and ponged by now (the fast probe phase).
            thread::sleep(Duration::from_millis(300));
            let all = c.stop()?;
            let mut probes: Vec<Captured> = vec![];
            for p in all.into_iter().filter(|p| probe_kind(&p.payload).is_some()) {
                if !probes.iter().any(|q| q.payload == p.payload) && probes.len() < MAX_REPLAYED {
                    probes.push(p);
                }
            }
            Some(probes)
        }
        None => None,
    };

    // Counters on the victims' side: what reaches their hosts from the attackers.
    let internet = Attacker {
        node: "pub1".into(),
        ip: ip("pub1")?,
    };
    let lan_ip = lab.plan.addr(ROUTER, "lan").ok_or("plan: no eim-r lan")?;
    let lan = Attacker {
        node: ROUTER.into(),
        ip: lan_ip,
    };
    let victim_filter = |srcs: &[Ipv4Addr]| {
        let hosts: Vec<String> = srcs.iter().map(|s| format!("src host {s}")).collect();
        format!(
            "{PROBE_FILTER} and not src port {RELAY_PORT} and ({})",
            hosts.join(" or ")
        )
    };
    let counters = if tcpdump {
        Some((
            Capture::start(
                lab,
                "pub2",
                "eth0",
                &victim_filter(&[internet.ip]),
                dir.join("at-pub2.pcap"),
            )?,
            Capture::start(
                lab,
                HOST,
                "eth0",
                &victim_filter(&[internet.ip, lan.ip]),
                dir.join("at-eim-h.pcap"),
            )?,
        ))
    } else {
        None
    };

    // 1. Forged probes.
    let mut rng = Rng::from_os();
    let n = if opts.quick {
        QUICK_FORGED_PER_TARGET
    } else {
        FORGED_PER_TARGET
    };
    let claim_home = node_id(&peers.home.1)?;
    let claim_pub2 = node_id(&peers.pub2.1)?;
    let mut jobs: Vec<(SocketAddr, Vec<u8>)> = vec![];
    jobs.extend(
        forged(&mut rng, &claim_home, n)
            .into_iter()
            .map(|d| (pub2_bound, d)),
    );
    jobs.extend(
        forged(&mut rng, &claim_pub2, n)
            .into_iter()
            .map(|d| (d_pub2, d)),
    );
    let r_inet = attack(lab, dir, &internet, "forged-internet", &jobs)?;
    let jobs: Vec<_> = forged(&mut rng, &claim_pub2, n)
        .into_iter()
        .map(|d| (home_bound, d))
        .collect();
    let r_lan = attack(lab, dir, &lan, "forged-lan", &jobs)?;
    let forged_sent = r_inet.sent + r_lan.sent;
    figs.push(("forged_sent".into(), forged_sent.to_string()));
    if r_inet.failed + r_lan.failed > 0 {
        problems.push(format!(
            "forged: {} datagrams could not be sent",
            r_inet.failed + r_lan.failed
        ));
    }
    let answered = r_inet.received + r_lan.received;
    figs.push(("forged_answered".into(), answered.to_string()));
    if answered > 0 {
        problems.push(format!(
            "forged: {answered} datagrams came back to the attackers (expected none)"
        ));
    }
    thread::sleep(Duration::from_millis(200));
    let (pub2_log, home_log) = (read_log(dir, "pub2"), read_log(dir, HOST));
    let seen_pub2 = count_log(&pub2_log, BAD_MAC, internet.ip);
    let seen_home_lan = count_log(&home_log, BAD_MAC, lan.ip);
    let seen_home_inet = count_log(&home_log, BAD_MAC, internet.ip);
    figs.push(("forged_dropped_bad_mac.pub2".into(), seen_pub2.to_string()));
    figs.push((
        "forged_dropped_bad_mac.eim_lan".into(),
        seen_home_lan.to_string(),
    ));
    figs.push((
        "forged_dropped_bad_mac.eim_internet".into(),
        seen_home_inet.to_string(),
    ));
    for (who, seen) in [
        ("pub2 (from pub1)", seen_pub2),
        ("eim-h (from its LAN)", seen_home_lan),
    ] {
        if seen * 100 < n * MIN_SEEN_PERCENT {
            problems.push(format!(
                "forged: {who}: only {seen} of {n} logged as `{BAD_MAC}`; the attack did not reach kith"
            ));
        }
    }
    let mut moved = check_paths(&mut peers, d_pub2, d_home, "after the forged probes")?;
    let mut intact = transfer(&mut peers)?;

    // 2. Replays.
    let mut replayed_sent = 0;
    if let Some(probes) = &captured {
        let pings = probes
            .iter()
            .filter(|p| probe_kind(&p.payload) == Some(false))
            .count();
        figs.push(("captured_pings".into(), pings.to_string()));
        figs.push(("captured_pongs".into(), (probes.len() - pings).to_string()));
        if pings == 0 || pings == probes.len() {
            problems.push(format!(
                "replay: the capture holds {pings} pings of {} probes; need both kinds",
                probes.len()
            ));
        }
        let mut inet_jobs = vec![];
        let mut lan_jobs = vec![];
        for _ in 0..REPLAY_ROUNDS {
            for p in probes {
                inet_jobs.push((pub2_bound, p.payload.clone()));
                inet_jobs.push((d_pub2, p.payload.clone()));
                lan_jobs.push((home_bound, p.payload.clone()));
            }
        }
        let r_inet = attack(lab, dir, &internet, "replay-internet", &inet_jobs)?;
        let r_lan = attack(lab, dir, &lan, "replay-lan", &lan_jobs)?;
        replayed_sent = r_inet.sent + r_lan.sent;
        figs.push(("replay_answered.pub2".into(), r_inet.pongs.to_string()));
        figs.push(("replay_answered.eim_lan".into(), r_lan.pongs.to_string()));
        figs.push((
            "replay_pinged_back".into(),
            (r_inet.pings + r_lan.pings).to_string(),
        ));
        // Anything but a probe coming back is QUIC: a victim sending its connection
        // to the attacker, i.e. a path that moved (perhaps only for a moment).
        let data = r_inet.data() + r_lan.data();
        figs.push(("replay_data_to_attacker".into(), data.to_string()));
        if data > 0 {
            problems.push(format!(
                "replay: {data} non-probe datagrams (QUIC) reached the attackers"
            ));
        }
        thread::sleep(Duration::from_millis(200));
        let (pub2_log, home_log) = (read_log(dir, "pub2"), read_log(dir, HOST));
        let unmatched_pub2 = count_log(&pub2_log, PONG_UNMATCHED, internet.ip);
        let unmatched_home = count_log(&home_log, PONG_UNMATCHED, lan.ip);
        let other_addr = count_log(&pub2_log, PONG_OTHER_ADDR, internet.ip)
            + count_log(&home_log, PONG_OTHER_ADDR, lan.ip);
        figs.push((
            "replay_pong_dropped.pub2".into(),
            unmatched_pub2.to_string(),
        ));
        figs.push((
            "replay_pong_dropped.eim_lan".into(),
            unmatched_home.to_string(),
        ));
        figs.push(("replay_pong_other_addr".into(), other_addr.to_string()));
        let replayed_pub2 = count_log(&pub2_log, PING_REPLAYED, internet.ip);
        let replayed_home = count_log(&home_log, PING_REPLAYED, lan.ip);
        figs.push(("replay_ping_dropped.pub2".into(), replayed_pub2.to_string()));
        figs.push((
            "replay_ping_dropped.eim_lan".into(),
            replayed_home.to_string(),
        ));
        // Evidence that the replays reached kith and were recognised: the victims
        // dropped replayed pings as replays (and answered none: answering would reflect
        // traffic to the attacker), and dropped replayed pongs as unmatched.
        for (who, answered, replayed, dropped) in [
            ("pub2", r_inet.pongs, replayed_pub2, unmatched_pub2),
            (
                "eim-h (from its LAN)",
                r_lan.pongs,
                replayed_home,
                unmatched_home,
            ),
        ] {
            // A captured ping the NAT dropped before it reached the victim is fresh to
            // the victim and answered once; a ping answered again is a replay answered.
            if answered > pings {
                problems.push(format!(
                    "replay: {who} answered {answered} replayed pings, more than the \
                     {pings} distinct pings captured: replays were answered"
                ));
            }
            if replayed == 0 {
                problems.push(format!(
                    "replay: {who} logged no replayed ping as `{PING_REPLAYED}`; \
                     the replays did not reach kith"
                ));
            }
            if dropped == 0 {
                problems.push(format!(
                    "replay: {who} logged no replayed pong as `{PONG_UNMATCHED}`"
                ));
            }
        }
        moved.extend(check_paths(
            &mut peers,
            d_pub2,
            d_home,
            "right after the replays",
        )?);
    } else {
        figs.push(("replay_skipped".into(), "1".into()));
    }
    figs.push(("replayed_sent".into(), replayed_sent.to_string()));

    // A keep-alive round later (the victims now also ping the attackers' addresses).
    thread::sleep(SETTLE);
    moved.extend(check_paths(
        &mut peers,
        d_pub2,
        d_home,
        "after a keep-alive round",
    )?);
    intact &= transfer(&mut peers)?;

    if let Some((c_pub2, c_home)) = counters {
        let at_pub2 = c_pub2.stop()?;
        let at_home = c_home.stop()?;
        let from = |v: &[Captured], ip: Ipv4Addr| v.iter().filter(|c| *c.src.ip() == ip).count();
        figs.push((
            "arrived.pub2".into(),
            from(&at_pub2, internet.ip).to_string(),
        ));
        figs.push(("arrived.eim_lan".into(), from(&at_home, lan.ip).to_string()));
        let through_nat = from(&at_home, internet.ip);
        figs.push(("arrived.eim_from_internet".into(), through_nat.to_string()));
        eprintln!(
            "spoof: the NAT let {through_nat} of the internet attacker's datagrams through to {HOST} \
             (expected 0: address-and-port-dependent filtering)"
        );
    }
    for m in &moved {
        problems.push(m.clone());
    }
    figs.push(("path_moved".into(), u8::from(!moved.is_empty()).to_string()));
    figs.push(("transfer_intact".into(), u8::from(intact).to_string()));
    if !intact {
        problems.push("a transfer was not intact".into());
    }
    if let Some(status) = relay.exited() {
        problems.push(format!("the relay exited during the run ({status})"));
    }
    Ok((figs, problems))
}

/// Entry point of `cargo xtask lab spoof`.
pub(crate) fn run(root: &Path, opts: &Options, build: bool) -> Result<(), String> {
    let start = Instant::now();
    let exe = matrix::kith_ready(root, build)?;
    if let Err(e) = super::sys::require_tools() {
        println!("lab spoof skipped: {e}");
        println!("figure lab.spoof.skipped 1");
        return Err(e);
    }
    let root_before = hygiene::root_links()?;
    let plan = Plan::new(2, &[(HOME, HomeKind::Eim)])?;
    let lab = Lab::up_with(root, &opts.lab, plan)?;
    let dir = state_dir(root).join(format!("spoof-{}", lab.id));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let outcome = scenario(&lab, opts, &exe, &dir).and_then(|(mut figs, mut problems)| {
        let fences = hygiene::audit(&lab, &root_before)?;
        problems.extend(fences.iter().map(|f| format!("fence: {f}")));
        figs.push(("fences.ok".into(), u8::from(fences.is_empty()).to_string()));
        figs.push((
            "seconds".into(),
            format!("{:.1}", start.elapsed().as_secs_f64()),
        ));
        Ok((figs, problems))
    });
    if opts.keep {
        eprintln!(
            "lab: --keep: {:?} stays up (kith stopped); `cargo xtask lab topology down --id {}` removes it",
            lab.id, lab.id
        );
        lab.keep();
    }
    let (figs, problems) = outcome?;
    let mut out = String::new();
    for (k, v) in &figs {
        let _ = writeln!(out, "figure lab.spoof.{k} {v}");
    }
    print!("{out}");
    println!("logs and captures: {}", dir.display());
    let path = state_dir(root).join(format!("spoof-{}.txt", opts.lab.id));
    let _ = std::fs::write(&path, &out);
    if problems.is_empty() {
        if figs.iter().any(|(k, _)| k == "replay_skipped") {
            println!(
                "lab spoof: forged probes did not move a path \
                 (replays skipped: tcpdump is not installed)"
            );
        } else {
            println!("lab spoof: forged and replayed probes did not move a path");
        }
        Ok(())
    } else {
        Err(super::problems_error("spoof", &problems, &dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_and_ids() {
        let id = [7u8; 32];
        let p = probe(true, [1; 12], &id, [2; 16]);
        assert_eq!(p.len(), PROBE_LEN);
        assert_eq!(&p[..6], b"\0kPRB\x02");
        assert_eq!(probe_kind(&p), Some(true));
        assert_eq!(
            probe_kind(&probe(false, [1; 12], &id, [2; 16])),
            Some(false)
        );
        assert_eq!(probe_kind(&p[..65]), None);
        let mut bad = p.clone();
        bad[5] = 3;
        assert_eq!(probe_kind(&bad), None);
        let text = matrix::base32(&[0xab; 32]);
        assert_eq!(base32_decode(&text), Some(vec![0xab; 32]));
        assert_eq!(base32_decode("A"), None);
        let mut rng = Rng(1);
        let f = forged(&mut rng, &id, 4);
        assert_eq!(
            f.iter()
                .filter_map(|d| probe_kind(d))
                .filter(|&k| k)
                .count(),
            2
        );
        assert_ne!(f[0][6..18], f[2][6..18], "tx ids differ");
    }

    #[test]
    fn pcap_parsing() {
        // One Ethernet frame with an IPv4/UDP probe, then a truncated record.
        let payload = probe(false, [3; 12], &[4; 32], [5; 16]);
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&[0x08, 0x00]);
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 203, 0, 113, 3, 203, 0, 113, 16,
        ];
        let ulen = (8 + payload.len()) as u16;
        ip.extend_from_slice(&[0x1f, 0x40, 0x9c, 0x40]);
        ip.extend_from_slice(&ulen.to_be_bytes());
        ip.extend_from_slice(&[0, 0]);
        ip.extend_from_slice(&payload);
        frame.extend_from_slice(&ip);
        let mut file = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
        file.extend_from_slice(&[0; 8]);
        file.extend_from_slice(&128u32.to_le_bytes());
        file.extend_from_slice(&1u32.to_le_bytes());
        file.extend_from_slice(&[0; 8]);
        file.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        file.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        file.extend_from_slice(&frame);
        file.extend_from_slice(&[0; 10]);
        let c = pcap_udp(&file).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].src, "203.0.113.3:8000".parse().unwrap());
        assert_eq!(c[0].dst, "203.0.113.16:40000".parse().unwrap());
        assert_eq!(c[0].payload, payload);
        assert!(pcap_udp(&file[..10]).is_err());
        assert!(pcap_udp(&[0u8; 24]).is_err());
    }

    #[test]
    fn logs_and_reports() {
        let log = "2026 DEBUG kith_transport::paths: probe with a bad MAC dropped from=203.0.113.2:4000\n\
                   2026 DEBUG kith_transport::paths: probe with a bad MAC dropped from=203.0.113.20:4000\n\
                   2026 DEBUG other from=203.0.113.2:1";
        assert_eq!(count_log(log, BAD_MAC, Ipv4Addr::new(203, 0, 113, 2)), 1);
        let r = SendReport {
            sent: 5,
            failed: 0,
            received: 2,
            pongs: 1,
            pings: 1,
        };
        assert_eq!(SendReport::parse(&r.line()), Ok(r));
        assert!(SendReport::parse("sent=1").is_err());
        assert_eq!(unhex(&hex(&[0, 1, 254])), Some(vec![0, 1, 254]));
        assert_eq!(unhex("0"), None);
    }
}
