//! `cargo xtask lab matrix`: runs the real `kith` binary in the lab and writes the
//! connectivity matrix (issue 3).
//!
//! 1. builds `kith` and `kith-lab` (`cargo build --release -p kith-cli --features lab`)
//!    unless `--no-build`;
//! 2. brings the standard lab up (the [`Lab`] guard and its cleanup helper tear it down
//!    on every path);
//! 3. starts `kith relay --bind <pub1>:7000` in `pub1` and one `kith-lab peer --bind
//!    <host>:0 --relay <relay>` in every other host (pub2 and each home's host);
//! 4. for every unordered pair (a, b), a < b: `connect`, `wait-direct`, `transfer`
//!    1 MiB, `probes` and `path` on a, then `wait-direct` on b (the commands are documented at
//!    the top of `crates/kith-cli/src/peer.rs`);
//! 5. runs the mDNS step ([`super::mdns`]): two relay-less peers on one segment connect
//!    by bare node id over a direct path;
//! 6. prints the table and `figure …` lines, writes them to
//!    `target/kith-lab/matrix-<id>.txt` (peer logs next to it), and compares each pair
//!    with what the current implementation is expected to do ([`expected`]).
//!
//! Every read from a `kith` process has a deadline; a process that misses it is killed
//! by its pid and the pair is recorded as failed. The command fails only if the lab
//! breaks (topology, a process that does not start or hangs where it should work) or a
//! pair expected to go direct does not connect at all: the expectations are the
//! issue's targets, not a gate.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use super::plan::HomeKind;
use super::topology::{Lab, state_dir};
use super::{Options, hygiene};

/// Port of the STUN server (coturn) in `pub2`.
pub(crate) const STUN_PORT: u16 = 3478;
/// Port of the relay in `pub1`.
pub(crate) const RELAY_PORT: u16 = 7000;
/// Bytes per transfer.
const TRANSFER_BYTES: u64 = 1 << 20;
/// How long `wait-direct` waits inside the peer, ms.
const WAIT_DIRECT_MS: u64 = 5000;
/// The same with `--quick`.
const QUICK_WAIT_DIRECT_MS: u64 = 3000;
/// How long the dialed side waits for its own direct path after the dialer's steps, ms.
const B_WAIT_MS: u64 = 2000;
/// The same with `--quick`.
const QUICK_B_WAIT_MS: u64 = 1000;
/// Deadline for a process's `addr` line. A peer whose relay is unreachable first waits
/// for the QUIC handshake timeout (10 s).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline for a `connect` reply (the dial itself gives up after 10 s).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(25);
/// Deadline for a `transfer` reply.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline for quick replies (`probes`, `path`).
const SHORT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after its start a peer's NAT kind must be known (the bound under
/// 20 % loss).
const NAT_DEADLINE: Duration = Duration::from_secs(10);
/// Slack on top of the `wait-direct` time.
const WAIT_SLACK: Duration = Duration::from_secs(10);
/// Most lines read from one process's stdout.
const MAX_LINES: usize = 100_000;
/// Most non-`addr` lines skipped before the `addr` line.
const MAX_PREAMBLE: usize = 16;
/// How long a whole `cargo build` may take.
const BUILD_TIMEOUT: Duration = Duration::from_secs(3600);
/// Log filter for the `kith` processes unless `KITH_LOG` is set.
const DEFAULT_LOG: &str = "info,kith_transport=debug";

/// What kind of host a peer runs on, for the expectations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// A public address, no NAT.
    Public,
    /// Behind an endpoint-independent-mapping NAT.
    Eim,
    /// Behind an endpoint-dependent-mapping NAT.
    Edm,
    /// Behind a carrier-grade NAT and a home NAT, both endpoint-independent.
    Cgnat,
    /// Behind a firewall that drops all outbound UDP.
    UdpBlock,
}

impl Class {
    fn of(kind: HomeKind) -> Class {
        match kind {
            HomeKind::Eim => Class::Eim,
            HomeKind::Edm => Class::Edm,
            HomeKind::Cgnat => Class::Cgnat,
            HomeKind::UdpBlock => Class::UdpBlock,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Class::Public => "public",
            Class::Eim => "eim",
            Class::Edm => "edm",
            Class::Cgnat => "cgnat",
            Class::UdpBlock => "udpblock",
        }
    }

    /// Mapping independent of the destination: one mapping serves every peer.
    fn endpoint_independent(self) -> bool {
        matches!(self, Class::Public | Class::Eim | Class::Cgnat)
    }
}

/// Where a pair ends up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Connected over a direct UDP path.
    Direct,
    /// Connected through the relay.
    Relayed,
    /// Not connected (or no usable path).
    None,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Direct => "direct",
            Outcome::Relayed => "relayed",
            Outcome::None => "none",
        }
    }
}

/// What the current implementation should achieve for a pair, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Expect {
    /// The final path.
    pub(crate) outcome: Outcome,
    /// Short reason, printed as a note.
    pub(crate) why: &'static str,
}

/// Expectation for a pair with the current implementation: direct when both mappings
/// are endpoint-independent or one side is public (the other side's ping opens its own
/// mapping towards the public address); an endpoint-dependent NAT against an
/// endpoint-independent one goes direct by birthday-paradox probing, which needs both
/// sides to know their NAT kind (`stun`: the lab's STUN server runs, so the peers can
/// classify); two endpoint-dependent NATs stay relayed; a UDP-blocked host stays relayed
/// (its reservation runs over TLS/TCP to the relay).
pub(crate) fn expected(a: Class, b: Class, stun: bool) -> Expect {
    use Class::*;
    if a == UdpBlock || b == UdpBlock {
        return Expect {
            outcome: Outcome::Relayed,
            why: "UDP blocked: through the relay over TLS/TCP",
        };
    }
    if a.endpoint_independent() && b.endpoint_independent() {
        return Expect {
            outcome: Outcome::Direct,
            why: "endpoint-independent mappings on both sides",
        };
    }
    if a == Public || b == Public {
        return Expect {
            outcome: Outcome::Direct,
            why: "public side; the NATed side's ping opens the way",
        };
    }
    if a == Edm && b == Edm {
        return Expect {
            outcome: Outcome::Relayed,
            why: "both NATs endpoint-dependent: no predictable mapping, stays relayed",
        };
    }
    if stun {
        Expect {
            outcome: Outcome::Direct,
            why: "endpoint-dependent vs endpoint-independent NAT: birthday-paradox probing",
        }
    } else {
        Expect {
            outcome: Outcome::Relayed,
            why: "endpoint-dependent NAT vs NAT without a STUN server: \
                  the NAT kinds are unknown, so no birthday probing",
        }
    }
}

/// The NAT kind `kith-lab peer`'s `nat` command should report for a class.
pub(crate) fn expected_nat(c: Class) -> &'static str {
    match c {
        Class::Public => "public",
        Class::Eim | Class::Cgnat => "endpoint-independent",
        Class::Edm => "endpoint-dependent",
        // Its STUN requests never leave.
        Class::UdpBlock => "unknown",
    }
}

/// Verdict of a pair against its expectation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// As expected.
    Pass,
    /// Better than expected (direct where relayed was expected, or connected where no
    /// connection was expected).
    Better,
    /// Worse than expected.
    Fail,
}

impl Verdict {
    fn name(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Better => "better",
            Verdict::Fail => "FAIL",
        }
    }
}

fn rank(o: Outcome) -> u8 {
    match o {
        Outcome::None => 0,
        Outcome::Relayed => 1,
        Outcome::Direct => 2,
    }
}

/// Compares an observed outcome with the expected one.
pub(crate) fn verdict(expected: Outcome, observed: Outcome) -> Verdict {
    match rank(observed).cmp(&rank(expected)) {
        std::cmp::Ordering::Equal => Verdict::Pass,
        std::cmp::Ordering::Greater => Verdict::Better,
        std::cmp::Ordering::Less => Verdict::Fail,
    }
}

// ---------------------------------------------------------------------------------------
// Reply parsing (pure).

/// A path as `kith-lab peer` prints it: `direct=<addr>`, `relayed` or `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathSeen {
    /// `direct=<addr>`.
    Direct(SocketAddr),
    /// `relayed`.
    Relayed,
    /// `none`.
    None,
}

impl PathSeen {
    pub(crate) fn parse(s: &str) -> Result<PathSeen, String> {
        match s {
            "relayed" => Ok(PathSeen::Relayed),
            "none" => Ok(PathSeen::None),
            _ => s
                .strip_prefix("direct=")
                .and_then(|a| a.parse().ok())
                .map(PathSeen::Direct)
                .ok_or_else(|| format!("bad path {s:?}")),
        }
    }

    fn outcome(self) -> Outcome {
        match self {
            PathSeen::Direct(_) => Outcome::Direct,
            PathSeen::Relayed => Outcome::Relayed,
            PathSeen::None => Outcome::None,
        }
    }

    fn text(self) -> String {
        match self {
            PathSeen::Direct(a) => format!("direct={a}"),
            PathSeen::Relayed => "relayed".into(),
            PathSeen::None => "none".into(),
        }
    }
}

/// Splits a reply line into its body: `ok <body>` → `Ok(body)`, `err <msg>` →
/// `Err(msg)`; anything else is a protocol error (outer `Err`).
pub(crate) fn parse_reply(line: &str) -> Result<Result<String, String>, String> {
    let line = line.trim();
    let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
    match word {
        "ok" => Ok(Ok(rest.trim().to_owned())),
        "err" => Ok(Err(rest.trim().to_owned())),
        _ => Err(format!("unexpected reply {line:?}")),
    }
}

/// The value of `key=` in a body of space-separated `key=value` words.
fn field<'a>(body: &'a str, key: &str) -> Option<&'a str> {
    body.split_whitespace()
        .find_map(|w| w.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v))
}

fn need<'a>(body: &'a str, key: &str) -> Result<&'a str, String> {
    field(body, key).ok_or_else(|| format!("no {key}= in {body:?}"))
}

fn number(body: &str, key: &str) -> Result<u64, String> {
    let v = need(body, key)?;
    v.parse().map_err(|_| format!("bad {key}={v:?}"))
}

/// `connect` → `ms=<n> path=<path>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Connected {
    /// Time the dial took, ms.
    pub(crate) ms: u64,
    /// The path right after connecting.
    pub(crate) path: PathSeen,
}

pub(crate) fn parse_connect(body: &str) -> Result<Connected, String> {
    Ok(Connected {
        ms: number(body, "ms")?,
        path: PathSeen::parse(need(body, "path")?)?,
    })
}

/// `wait-direct` → `direct=<addr> ms=<n>` | `relayed` | `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Waited {
    /// The path when the wait ended.
    pub(crate) path: PathSeen,
    /// Time waited until direct, ms (only when direct).
    pub(crate) ms: Option<u64>,
}

pub(crate) fn parse_wait(body: &str) -> Result<Waited, String> {
    let first = body.split_whitespace().next().unwrap_or_default();
    let path = PathSeen::parse(first)?;
    let ms = match (path, field(body, "ms")) {
        (PathSeen::Direct(_), Some(v)) => Some(v.parse().map_err(|_| format!("bad ms={v:?}"))?),
        (PathSeen::Direct(_), None) => return Err(format!("no ms= in {body:?}")),
        _ => None,
    };
    Ok(Waited { path, ms })
}

/// `transfer` → `bytes=<n> intact=<bool> path_before=<p> path_after=<p>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Transfer {
    /// Bytes sent.
    pub(crate) bytes: u64,
    /// The receiver's hash and length matched.
    pub(crate) intact: bool,
    /// Path when the transfer started.
    pub(crate) before: PathSeen,
    /// Path when it ended.
    pub(crate) after: PathSeen,
}

pub(crate) fn parse_transfer(body: &str) -> Result<Transfer, String> {
    let intact = match need(body, "intact")? {
        "true" => true,
        "false" => false,
        v => return Err(format!("bad intact={v:?}")),
    };
    Ok(Transfer {
        bytes: number(body, "bytes")?,
        intact,
        before: PathSeen::parse(need(body, "path_before")?)?,
        after: PathSeen::parse(need(body, "path_after")?)?,
    })
}

/// `probes` → `<n>`.
pub(crate) fn parse_probes(body: &str) -> Result<u64, String> {
    body.trim()
        .parse()
        .map_err(|_| format!("bad probe count {body:?}"))
}

// ---------------------------------------------------------------------------------------
// NodeAddr wire form (protobuf `kith.core.NodeAddr`), decoded std-only.

/// What the matrix needs from a peer's `addr <hex>` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerAddr {
    /// The hex text, passed to `connect` as is.
    pub(crate) hex: String,
    /// Node id in its text form (lowercase base32, 52 characters).
    pub(crate) id: String,
    /// Direct addresses (only IPv4 ones are listed; the lab has no IPv6).
    pub(crate) direct: Vec<SocketAddr>,
    /// Number of relay hints (0: no home relay).
    pub(crate) relays: usize,
}

fn unhex(s: &str) -> Result<Vec<u8>, String> {
    if s.len() % 2 != 0 || s.len() > 4096 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("bad hex {s:?}"));
    }
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|e| e.to_string()))
        .collect()
}

/// Lowercase RFC 4648 base32 without padding (kith's text form of ids).
pub(crate) fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
        acc &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn varint(b: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint too long".into())
}

/// The length-delimited fields of a protobuf message, as (field number, bytes).
fn fields(b: &[u8]) -> Result<Vec<(u64, &[u8])>, String> {
    let mut out = vec![];
    let mut pos = 0;
    while pos < b.len() && out.len() < 64 {
        let key = varint(b, &mut pos)?;
        if key & 7 != 2 {
            return Err(format!("unexpected wire type {} in NodeAddr", key & 7));
        }
        let len = usize::try_from(varint(b, &mut pos)?).map_err(|e| e.to_string())?;
        let end = pos.checked_add(len).filter(|&e| e <= b.len());
        let end = end.ok_or("truncated field")?;
        out.push((key >> 3, &b[pos..end]));
        pos = end;
    }
    Ok(out)
}

/// Decodes `addr <hex>`'s hex: field 1 node id (32 bytes), 2 direct addresses (6 bytes
/// for IPv4), 3 relay hints.
pub(crate) fn decode_peer_addr(hex: &str) -> Result<PeerAddr, String> {
    let bytes = unhex(hex.trim())?;
    let mut id = None;
    let mut direct = vec![];
    let mut relays = 0;
    for (n, v) in fields(&bytes)? {
        match n {
            1 if v.len() == 32 => id = Some(base32(v)),
            1 => return Err(format!("node id of {} bytes", v.len())),
            2 if v.len() == 6 => direct.push(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::new(v[0], v[1], v[2], v[3]),
                u16::from_be_bytes([v[4], v[5]]),
            ))),
            2 => {} // IPv6
            3 => relays += 1,
            _ => {}
        }
    }
    Ok(PeerAddr {
        hex: hex.trim().to_owned(),
        id: id.ok_or("NodeAddr without a node id")?,
        direct,
        relays,
    })
}

// ---------------------------------------------------------------------------------------
// Processes.

/// A `kith` process inside a namespace, spoken to line by line. Every read has a
/// deadline; on a missed deadline the process is killed by its pid. Killed on drop.
pub(crate) struct Kith {
    node: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// Why the process is no longer usable.
    dead: Option<String>,
    verbose: bool,
}

impl Kith {
    pub(crate) fn spawn(
        lab: &Lab,
        node: &str,
        exe: &Path,
        args: &[String],
        log: &Path,
        verbose: bool,
    ) -> Result<Kith, String> {
        let log_file = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let filter = std::env::var("KITH_LOG").unwrap_or_else(|_| DEFAULT_LOG.into());
        let mut cmd = lab.command(node, &exe.to_string_lossy());
        cmd.args(args)
            .env("KITH_LOG", filter)
            .env("RUST_BACKTRACE", "1")
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        if verbose {
            eprintln!("matrix: [{node}] $ kith {}", args.join(" "));
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start kith in {node}: {e}"))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("kith in {node}: no pipes"));
        };
        let (tx, lines) = mpsc::channel();
        // Ends at end of file (the process exited or was killed) or after MAX_LINES.
        thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            for _ in 0..MAX_LINES {
                let mut line = String::new();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if tx.send(line.trim().to_owned()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Ok(Kith {
            node: node.into(),
            child,
            stdin: Some(stdin),
            lines,
            dead: None,
            verbose,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process (by its pid) and remembers why.
    fn kill(&mut self, why: String) {
        if self.dead.is_none() {
            self.dead = Some(why);
        }
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The next stdout line within `timeout`; kills the process on a missed deadline.
    fn line(&mut self, timeout: Duration) -> Result<String, String> {
        if let Some(d) = &self.dead {
            return Err(format!("not asked (earlier: {d})"));
        }
        match self.lines.recv_timeout(timeout) {
            Ok(l) => {
                if self.verbose {
                    eprintln!("matrix: [{}] < {l}", self.node);
                }
                Ok(l)
            }
            Err(RecvTimeoutError::Timeout) => {
                let why = format!(
                    "kith in {} (pid {}) gave no answer within {} s; killed",
                    self.node,
                    self.pid(),
                    timeout.as_secs()
                );
                self.kill(why.clone());
                Err(why)
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.try_wait().ok().flatten();
                let why = format!(
                    "kith in {} exited ({})",
                    self.node,
                    status.map_or("status unknown".into(), |s| s.to_string())
                );
                self.kill(why.clone());
                Err(why)
            }
        }
    }

    /// The first line starting with `addr `, without that prefix.
    pub(crate) fn addr_line(&mut self) -> Result<String, String> {
        let deadline = Instant::now() + START_TIMEOUT;
        for _ in 0..MAX_PREAMBLE {
            let left = deadline.saturating_duration_since(Instant::now());
            let l = self.line(left.max(Duration::from_millis(1)))?;
            if let Some(a) = l.strip_prefix("addr ") {
                return Ok(a.trim().to_owned());
            }
        }
        Err(format!("kith in {}: no addr line", self.node))
    }

    /// Sends a command and parses the reply: outer `Err` is a process or protocol
    /// failure, inner `Err` the command's own `err …`.
    pub(crate) fn ask(
        &mut self,
        command: &str,
        timeout: Duration,
    ) -> Result<Result<String, String>, String> {
        self.send(command)?;
        self.reply(timeout)
    }

    /// The reply to a command sent with [`send`](Self::send), within `timeout`.
    pub(crate) fn reply(&mut self, timeout: Duration) -> Result<Result<String, String>, String> {
        parse_reply(&self.line(timeout)?)
    }

    /// A line (a reply) that is already waiting, taken from the queue; `None` if none.
    pub(crate) fn try_line(&mut self) -> Option<String> {
        self.lines.try_recv().ok()
    }

    /// Sends a command without waiting for its reply (read it with
    /// [`reply`](Self::reply)), so a long command can span something else.
    pub(crate) fn send(&mut self, command: &str) -> Result<(), String> {
        if let Some(d) = &self.dead {
            return Err(format!("not asked (earlier: {d})"));
        }
        if self.verbose {
            eprintln!("matrix: [{}] > {command}", self.node);
        }
        let sent = match self.stdin.as_mut() {
            Some(s) => writeln!(s, "{command}").and_then(|()| s.flush()),
            None => Err(std::io::Error::other("stdin closed")),
        };
        if let Err(e) = sent {
            let why = format!("kith in {}: writing a command: {e}", self.node);
            self.kill(why.clone());
            return Err(why);
        }
        Ok(())
    }
}

impl Kith {
    /// The exit status if the process has exited (by itself or killed), else `None`.
    pub(crate) fn exited(&mut self) -> Option<String> {
        self.child.try_wait().ok().flatten().map(|s| s.to_string())
    }

    /// Closes stdin (the process's cue to exit) and waits up to `timeout` for it to
    /// exit; kills it by its pid if it does not. True if it exited by itself.
    pub(crate) fn quit(&mut self, timeout: Duration) -> bool {
        self.stdin = None;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            thread::sleep(Duration::from_millis(10));
        }
        self.kill(format!("kith in {} did not exit in time", self.node));
        false
    }
}

/// Starts `kith-lab peer --bind <node's address>:0 <extra…>` in `node`, logging to `log`,
/// and reads its `addr` line; prints `<what>: peer in <node> (pid …): id … direct …`.
pub(crate) fn spawn_peer(
    lab: &Lab,
    node: &str,
    exe: &Path,
    extra: &[&str],
    log: &Path,
    what: &str,
    verbose: bool,
) -> Result<(Kith, PeerAddr), String> {
    let ip = lab
        .plan
        .primary_addr(node)
        .ok_or_else(|| format!("no address for {node}"))?;
    let bind = SocketAddr::new(ip.into(), 0).to_string();
    let mut args = vec!["peer".to_string(), "--bind".into(), bind];
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut k = Kith::spawn(lab, node, exe, &args, log, verbose)?;
    let addr = k.addr_line().and_then(|a| decode_peer_addr(&a))?;
    eprintln!(
        "{what}: peer in {node} (pid {}): id {} direct {:?}",
        k.pid(),
        &addr.id[..10],
        addr.direct
    );
    Ok((k, addr))
}

/// Starts `kith relay --bind <node's address>:RELAY_PORT` in `node`, logging to
/// `<logs>/<node>-relay.log`, and returns it with its address line.
pub(crate) fn spawn_relay(
    lab: &Lab,
    node: &str,
    exe: &Path,
    logs: &Path,
    verbose: bool,
) -> Result<(Kith, String), String> {
    let ip = lab
        .plan
        .primary_addr(node)
        .ok_or_else(|| format!("no address for {node}"))?;
    let bind = SocketAddr::new(ip.into(), RELAY_PORT).to_string();
    let mut relay = Kith::spawn(
        lab,
        node,
        exe,
        &["relay".to_string(), "--bind".into(), bind],
        &logs.join(format!("{node}-relay.log")),
        verbose,
    )?;
    let addr = relay
        .addr_line()
        .map_err(|e| format!("the relay did not start: {e}"))?;
    Ok((relay, addr))
}

impl Drop for Kith {
    fn drop(&mut self) {
        // Closing stdin asks the process to exit; give it a moment, then kill by pid.
        self.stdin = None;
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// coturn (`turnserver`) as a STUN-only server in a lab namespace; killed by its pid on
/// drop (and with its namespace when the lab goes down).
pub(crate) struct Coturn {
    pub(crate) node: String,
    pub(crate) addr: SocketAddr,
    child: Child,
}

impl Coturn {
    pub(crate) fn start(
        lab: &Lab,
        node: &str,
        addr: SocketAddr,
        logs: &Path,
    ) -> Result<Coturn, String> {
        if !super::sys::have("turnserver") {
            return Err("`turnserver` (Debian package coturn) is not installed".into());
        }
        let log = logs.join("coturn.log");
        let ip = addr.ip().to_string();
        let port = addr.port().to_string();
        let mut cmd = lab.command(node, "turnserver");
        cmd.args([
            "-n",
            "--stun-only",
            "--no-cli",
            "--no-tls",
            "--no-dtls",
            "--no-rfc5780",
            "--listening-ip",
            &ip,
            "--relay-ip",
            &ip,
            "--listening-port",
            &port,
            "--no-stdout-log",
            "--simple-log",
            "--log-file",
        ])
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start turnserver in {node}: {e}"))?;
        // Ready when its UDP listener is open (bounded: 5 s).
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "turnserver exited at start ({status}); see {}",
                    log.display()
                ));
            }
            let listening = lab
                .command(node, "ss")
                .args(["-Hlun", "sport", "=", &format!(":{port}")])
                .output()
                .map(|o| !o.stdout.is_empty())
                .unwrap_or(false);
            if listening {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("turnserver did not open its port within 5 s".into());
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(Coturn {
            node: node.into(),
            addr,
            child,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// The run.

/// A host running `kith-lab peer`.
pub(crate) struct Peer {
    /// Label in tables and figures (`pub2`, `eim`, …).
    pub(crate) label: String,
    /// Namespace node (`pub2`, `eim-h`, …).
    pub(crate) node: String,
    pub(crate) class: Class,
    pub(crate) proc: Option<Kith>,
    pub(crate) addr: Option<PeerAddr>,
    /// Why this peer is not fully usable (no home relay, did not start).
    note: Option<String>,
    /// Its NAT kind as it classified it (`nat` command), with the lab's STUN server.
    nat: Option<String>,
}

/// Measurements of one pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PairResult {
    /// Label of the side that dials.
    pub(crate) a: String,
    /// Label of the side dialed.
    pub(crate) b: String,
    pub(crate) expect: Expect,
    /// `connect` result (or the error).
    pub(crate) connect: Result<Connected, String>,
    pub(crate) wait: Option<Result<Waited, String>>,
    pub(crate) transfer: Option<Result<Transfer, String>>,
    pub(crate) probes: Option<Result<u64, String>>,
    /// Birthday-paradox probes both sides spent (`punch` on a and on b).
    pub(crate) birthday: Option<u64>,
    /// `path` on a at the end.
    pub(crate) final_path: Option<PathSeen>,
    /// `wait-direct` on b towards a at the end: b's own view of the connection (each
    /// side adopts a direct path only when a pong answers one of its own pings, so b
    /// may lag a by a probe round).
    pub(crate) b_path: Option<Waited>,
    /// A process hung or died during this pair.
    pub(crate) broke: Option<String>,
    pub(crate) notes: Vec<String>,
}

impl PairResult {
    fn connected(&self) -> bool {
        self.connect.is_ok()
    }

    /// The final outcome: the path a reports at the end.
    pub(crate) fn outcome(&self) -> Outcome {
        if !self.connected() {
            return Outcome::None;
        }
        self.final_path
            .or(self
                .transfer
                .as_ref()
                .and_then(|t| t.as_ref().ok())
                .map(|t| t.after))
            .map_or(Outcome::None, PathSeen::outcome)
    }

    /// Time from the start of `connect` to the direct path: 0 extra when the dial went
    /// direct at once, else the dial plus the `wait-direct` time.
    pub(crate) fn time_to_direct_ms(&self) -> Option<u64> {
        let c = self.connect.as_ref().ok()?;
        if matches!(c.path, PathSeen::Direct(_)) {
            return Some(c.ms);
        }
        let w = self.wait.as_ref()?.as_ref().ok()?;
        w.ms.map(|ms| c.ms + ms)
    }

    fn intact(&self) -> Option<bool> {
        self.transfer
            .as_ref()
            .and_then(|t| t.as_ref().ok())
            .map(|t| t.intact && t.bytes == TRANSFER_BYTES)
    }

    pub(crate) fn verdict(&self) -> Verdict {
        let v = verdict(self.expect.outcome, self.outcome());
        // A connection whose transfer broke is not a pass.
        if self.connected() && self.intact() != Some(true) && v != Verdict::Fail {
            return Verdict::Fail;
        }
        v
    }
}

/// Median of `v` (mean of the two middle values for an even count).
pub(crate) fn median(v: &[u64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_unstable();
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2] as f64),
        _ => Some((v[n / 2 - 1] + v[n / 2]) as f64 / 2.0),
    }
}

/// Entry point of `cargo xtask lab matrix`.
pub(crate) fn run(root: &Path, opts: &Options, build: bool) -> Result<(), String> {
    let start = Instant::now();
    let exe = kith_ready(root, build)?;
    super::sys::require_tools()?;
    let root_before = hygiene::root_links()?;
    let lab = Lab::up(root, &opts.lab)?;
    let fences = hygiene::audit(&lab, &root_before)?;
    let logs = state_dir(root).join(format!("matrix-{}", lab.id));
    std::fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;
    // The processes live in `matrix`'s frame and are dropped (killed by pid) before `lab`.
    let outcome = matrix(&lab, opts, &exe, &logs).and_then(|(pairs, peers, mut broken, relay)| {
        // Two peers on one segment find each other with mDNS (docs/nat-lab.md).
        let lan = super::mdns::step(&lab, &exe, &logs, opts.lab.verbose);
        broken.extend(lan.problems.iter().cloned());
        if !lan.connected && lan.problems.is_empty() {
            broken.push("mdns: not connected".into());
        }
        report(
            root,
            &lab,
            &pairs,
            &peers,
            &broken,
            &fences,
            &logs,
            &format!("{relay}{}", lan.figures()),
            start.elapsed().as_secs_f64(),
        )
    });
    if opts.keep {
        eprintln!(
            "lab: --keep: {:?} stays up (kith processes stopped); \
             `cargo xtask lab topology down --id {}` removes it",
            lab.id, lab.id
        );
        lab.keep();
    }
    outcome
}

/// The release `kith` binary, built first when `build`; an error if it does not exist.
pub(crate) fn kith_ready(root: &Path, build: bool) -> Result<PathBuf, String> {
    let exe = kith_binary(root);
    if build {
        build_kith(root)?;
    }
    if !exe.is_file() {
        return Err(format!(
            "{} does not exist; run `cargo build --release -p kith-cli --features lab`",
            exe.display()
        ));
    }
    Ok(exe)
}

fn kith_binary(root: &Path) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_absolute() { t } else { root.join(t) })
        .unwrap_or_else(|| root.join("target"));
    target.join("release").join("kith-lab")
}

pub(crate) fn build_kith(root: &Path) -> Result<(), String> {
    // `lab`: kith-lab's `--probe-delay-ms` (kith-transport's test hooks).
    let args = ["build", "--release", "-p", "kith-cli", "--features", "lab"];
    eprintln!("$ cargo {}", args.join(" "));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = Command::new(cargo)
        .args(args)
        .current_dir(root)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    let deadline = Instant::now() + BUILD_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(s)) if s.success() => return Ok(()),
            Ok(Some(s)) => return Err(format!("`cargo {}` failed: {s}", args.join(" "))),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("`cargo {}` took over an hour", args.join(" ")));
            }
            Ok(None) => thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(format!("waiting for cargo: {e}")),
        }
    }
}

/// A peer in the report: label, class, note, the NAT kind it classified.
type PeerSummary = (String, Class, Option<String>, Option<String>);

/// Per-pair results, the peers' summary, and lab breakages.
type MatrixResult = (Vec<PairResult>, Vec<PeerSummary>, Vec<String>, String);

/// Starts the relay and the peers and measures every pair.
fn matrix(lab: &Lab, opts: &Options, exe: &Path, logs: &Path) -> Result<MatrixResult, String> {
    let plan = &lab.plan;
    let verbose = opts.lab.verbose;
    let relay_node = plan
        .publics
        .first()
        .ok_or("the matrix needs a public host")?;
    let ip = |node: &str| {
        plan.primary_addr(node)
            .ok_or_else(|| format!("no address for {node}"))
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();
    let (mut relay, relay_addr) = spawn_relay(lab, relay_node, exe, logs, verbose)?;
    eprintln!(
        "matrix: relay in {relay_node} (pid {}): {relay_addr}",
        relay.pid()
    );

    // A standard STUN server (coturn, STUN only) on the second public host, so the peers
    // classify their NATs against a server that is not kith.
    let stun_node = plan.publics.get(1).cloned();
    let mut coturn = match &stun_node {
        Some(node) => Coturn::start(
            lab,
            node,
            SocketAddr::new(ip(node)?.into(), STUN_PORT),
            logs,
        ),
        None => Err("no second public host".into()),
    };
    let stun_addr = match &mut coturn {
        Ok(c) => {
            eprintln!(
                "matrix: coturn (STUN) in {} (pid {}) on {}",
                c.node,
                c.pid(),
                c.addr
            );
            Some(c.addr)
        }
        Err(e) => {
            eprintln!("matrix: no STUN server: {e}; NAT kinds stay unknown, no birthday probing");
            None
        }
    };

    let mut peers: Vec<Peer> = vec![];
    for p in &plan.publics[1..] {
        peers.push(Peer {
            label: p.clone(),
            node: p.clone(),
            class: Class::Public,
            proc: None,
            addr: None,
            note: None,
            nat: None,
        });
    }
    for h in &plan.homes {
        peers.push(Peer {
            label: h.name.clone(),
            node: h.host.clone(),
            class: Class::of(h.kind),
            proc: None,
            addr: None,
            note: None,
            nat: None,
        });
    }
    let mut broken = vec![];
    let mut nat_ms: Vec<u64> = vec![];
    for p in &mut peers {
        let started = std::time::Instant::now();
        let bind = SocketAddr::new(ip(&p.node)?.into(), 0);
        let log = logs.join(format!("{}.log", p.node));
        let mut args = s(&["peer", "--bind", &bind.to_string(), "--relay", &relay_addr]);
        if let Some(stun) = stun_addr {
            args.extend(s(&["--stun", &stun.to_string()]));
        }
        let mut k = Kith::spawn(lab, &p.node, exe, &args, &log, verbose)?;
        match k.addr_line().and_then(|a| decode_peer_addr(&a)) {
            Ok(a) => {
                eprintln!(
                    "matrix: peer {} in {} (pid {}): id {} direct {:?} relays {}",
                    p.label,
                    p.node,
                    k.pid(),
                    &a.id[..10],
                    a.direct,
                    a.relays
                );
                if a.relays == 0 {
                    let why = if p.class == Class::UdpBlock {
                        "no home relay: the relay over TLS/TCP was unreachable"
                    } else {
                        "no home relay: the relay was unreachable"
                    };
                    p.note = Some(why.into());
                    broken.push(format!("{}: {why}", p.label));
                }
                p.addr = Some(a);
                if stun_addr.is_some() {
                    // Observers: the STUN server and the relay (its hello). Under loss
                    // the first answers may be lost: asked again every 250 ms until
                    // the kind is known, at most NAT_DEADLINE after the peer started.
                    loop {
                        match k.ask("nat", SHORT_TIMEOUT) {
                            Ok(Ok(kind)) => p.nat = Some(kind),
                            Ok(Err(e)) | Err(e) => p.nat = Some(format!("error: {e}")),
                        }
                        let unknown = p.nat.as_deref() != Some(expected_nat(p.class))
                            && p.nat.as_deref().is_some_and(|n| n == "unknown");
                        if !unknown || started.elapsed() >= NAT_DEADLINE {
                            break;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(250));
                    }
                    nat_ms.push(started.elapsed().as_millis() as u64);
                }
                p.proc = Some(k);
            }
            Err(e) => {
                p.note = Some(format!("did not start: {e}"));
                if p.class != Class::UdpBlock {
                    broken.push(format!("{}: did not start: {e}", p.label));
                }
            }
        }
    }

    let wait_ms = if opts.quick {
        QUICK_WAIT_DIRECT_MS
    } else {
        WAIT_DIRECT_MS
    };
    let b_wait_ms = if opts.quick {
        QUICK_B_WAIT_MS
    } else {
        B_WAIT_MS
    };
    let mut pairs = vec![];
    for i in 0..peers.len() {
        for j in i + 1..peers.len() {
            let (left, right) = peers.split_at_mut(j);
            let (a, b) = (&mut left[i], &mut right[0]);
            let r = measure_pair(a, b, wait_ms, b_wait_ms, stun_addr.is_some());
            eprintln!(
                "matrix: {} × {}: {} (expected {}) {}",
                r.a,
                r.b,
                r.outcome().name(),
                r.expect.outcome.name(),
                r.verdict().name()
            );
            if let Some(e) = &r.broke {
                if r.expect.outcome != Outcome::None {
                    broken.push(format!("{} × {}: {e}", r.a, r.b));
                }
            }
            pairs.push(r);
        }
    }
    // The relay never sees plaintext, and its limits hold while a peer floods.
    let check = super::relaycheck::step(lab, relay_node, &mut peers, logs);
    broken.extend(check.problems.iter().cloned());
    // A stream opened while relayed survives the move to direct.
    let switch = super::switch::step(lab, exe, &relay_addr, logs, verbose);
    broken.extend(switch.problems.iter().cloned());
    // The relay must have survived the whole run.
    if let Ok(Some(status)) = relay.child.try_wait() {
        broken.push(format!("the relay exited during the run ({status})"));
    }
    let summary = peers
        .iter()
        .map(|p| (p.label.clone(), p.class, p.note.clone(), p.nat.clone()))
        .collect();
    let mut figures = check.figures + &switch.figures;
    if let Some(max) = nat_ms.iter().max() {
        // From a peer's start until its NAT kind was known (or the deadline).
        let _ = writeln!(figures, "figure lab.nat.classified_max_ms {max}");
    }
    if opts.lab.loss_pct > 0 {
        let _ = writeln!(figures, "figure lab.loss_pct {}", opts.lab.loss_pct);
    }
    Ok((pairs, summary, broken, figures))
}

/// Runs the command sequence for one pair; a hung or dead process ends it early.
fn measure_pair(
    a: &mut Peer,
    b: &mut Peer,
    wait_ms: u64,
    b_wait_ms: u64,
    stun: bool,
) -> PairResult {
    let mut r = PairResult {
        a: a.label.clone(),
        b: b.label.clone(),
        expect: expected(a.class, b.class, stun),
        connect: Err("not attempted".into()),
        wait: None,
        transfer: None,
        probes: None,
        birthday: None,
        final_path: None,
        b_path: None,
        broke: None,
        notes: vec![],
    };
    if r.expect.outcome != Outcome::Direct {
        r.notes.push(r.expect.why.into());
    }
    let (Some(ka), Some(b_addr)) = (a.proc.as_mut(), b.addr.as_ref()) else {
        r.connect = Err("a peer did not start".into());
        return r;
    };
    let b_id = b_addr.id.clone();
    // Outer error: the process hung or died (it has been killed).
    let step = |r: &mut PairResult, e: String| {
        r.broke = Some(e.clone());
        e
    };
    r.connect = match ka.ask(&format!("connect {}", b_addr.hex), CONNECT_TIMEOUT) {
        Ok(Ok(body)) => parse_connect(&body),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(step(&mut r, e)),
    };
    if r.connect.is_err() {
        return r;
    }
    let wait_timeout = Duration::from_millis(wait_ms) + WAIT_SLACK;
    r.wait = Some(
        match ka.ask(&format!("wait-direct {b_id} {wait_ms}"), wait_timeout) {
            Ok(Ok(body)) => parse_wait(&body),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(step(&mut r, e)),
        },
    );
    if r.broke.is_some() {
        return r;
    }
    let cmd = format!("transfer {b_id} {TRANSFER_BYTES}");
    r.transfer = Some(match ka.ask(&cmd, TRANSFER_TIMEOUT) {
        Ok(Ok(body)) => parse_transfer(&body),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(step(&mut r, e)),
    });
    if r.broke.is_some() {
        return r;
    }
    r.probes = Some(match ka.ask(&format!("probes {b_id}"), SHORT_TIMEOUT) {
        Ok(Ok(body)) => parse_probes(&body),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(step(&mut r, e)),
    });
    if r.broke.is_some() {
        return r;
    }
    match ka.ask(&format!("path {b_id}"), SHORT_TIMEOUT) {
        Ok(Ok(body)) => match PathSeen::parse(&body) {
            Ok(p) => r.final_path = Some(p),
            Err(e) => r.notes.push(format!("path on {}: {e}", r.a)),
        },
        Ok(Err(e)) => r.notes.push(format!("path on {}: {e}", r.a)),
        Err(e) => {
            step(&mut r, e);
            return r;
        }
    }
    let mut birthday = 0;
    match ka.ask(&format!("punch {b_id}"), SHORT_TIMEOUT) {
        Ok(Ok(body)) => match number(&body, "birthday_probes") {
            Ok(n) => birthday += n,
            Err(e) => r.notes.push(format!("punch on {}: {e}", r.a)),
        },
        Ok(Err(e)) => r.notes.push(format!("punch on {}: {e}", r.a)),
        Err(e) => {
            step(&mut r, e);
            return r;
        }
    }
    // The other side's view of the same connection.
    let Some(a_id) = a.addr.as_ref().map(|x| x.id.clone()) else {
        return r;
    };
    if let Some(kb) = b.proc.as_mut() {
        let cmd = format!("wait-direct {a_id} {b_wait_ms}");
        let timeout = Duration::from_millis(b_wait_ms) + WAIT_SLACK;
        match kb.ask(&cmd, timeout) {
            Ok(Ok(body)) => match parse_wait(&body) {
                Ok(p) => r.b_path = Some(p),
                Err(e) => r.notes.push(format!("wait-direct on {}: {e}", r.b)),
            },
            Ok(Err(e)) => r.notes.push(format!("wait-direct on {}: {e}", r.b)),
            Err(e) => {
                step(&mut r, e);
            }
        }
    }
    if let Some(kb) = b.proc.as_mut() {
        if let Ok(Ok(body)) = kb.ask(&format!("punch {a_id}"), SHORT_TIMEOUT) {
            if let Ok(n) = number(&body, "birthday_probes") {
                birthday += n;
            }
        }
    }
    if birthday > 0 {
        r.birthday = Some(birthday);
    }
    if let (Some(fa), Some(fb)) = (r.final_path, r.b_path.map(|w| w.path)) {
        if fa.outcome() != fb.outcome() {
            r.notes.push(format!(
                "asymmetric: {} sees {}, {} sees {}",
                r.a,
                fa.outcome().name(),
                r.b,
                fb.outcome().name()
            ));
        }
    }
    r
}

/// The matrix table (also pasted into `docs/nat-matrix.md`).
pub(crate) fn table(pairs: &[PairResult]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| pair | expected | connected | connect ms | path at connect | final path | \
         direct after ms | transfer 1 MiB | probes | birthday probes | b's path (+ms) | result | note |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in pairs {
        let (connected, ms, at_connect) = match &r.connect {
            Ok(c) => ("yes".to_string(), c.ms.to_string(), c.path.text()),
            Err(_) => ("no".to_string(), "-".into(), "-".into()),
        };
        let final_path = match (r.connected(), r.final_path) {
            (false, _) => "-".to_string(),
            (true, Some(p)) => p.text(),
            (true, None) => r.outcome().name().to_string(),
        };
        let tt = r
            .time_to_direct_ms()
            .map_or("-".to_string(), |m| m.to_string());
        let transfer = match &r.transfer {
            None => "-".to_string(),
            Some(Ok(t)) if t.intact && t.bytes == TRANSFER_BYTES => {
                format!("intact ({}→{})", short(t.before), short(t.after))
            }
            Some(Ok(t)) => format!("CORRUPT ({} B)", t.bytes),
            Some(Err(e)) => format!("error: {e}"),
        };
        let probes = match &r.probes {
            Some(Ok(n)) => n.to_string(),
            _ => "-".into(),
        };
        let birthday = r.birthday.map_or("-".to_string(), |n| n.to_string());
        let b_path = match r.b_path {
            None => "-".to_string(),
            Some(Waited { path, ms: Some(ms) }) => format!("{} (+{ms})", short(path)),
            Some(w) => short(w.path).to_string(),
        };
        let mut notes = r.notes.clone();
        if let Err(e) = &r.connect {
            notes.push(format!("connect: {e}"));
        }
        if let Some(Err(e)) = &r.wait {
            notes.push(format!("wait-direct: {e}"));
        }
        if let Some(e) = r
            .broke
            .as_ref()
            .filter(|e| !notes.iter().any(|n| n.contains(*e)))
        {
            notes.push(e.clone());
        }
        let _ = writeln!(
            t,
            "| {} × {} | {} | {connected} | {ms} | {at_connect} | {final_path} | {tt} | \
             {transfer} | {probes} | {birthday} | {b_path} | {} | {} |",
            r.a,
            r.b,
            r.expect.outcome.name(),
            r.verdict().name(),
            notes.join("; ").replace('|', "/"),
        );
    }
    t
}

fn short(p: PathSeen) -> &'static str {
    p.outcome().name()
}

/// The `figure …` lines.
pub(crate) fn figures(pairs: &[PairResult]) -> String {
    let mut f = String::new();
    let all = pairs.len();
    let connected = pairs.iter().filter(|r| r.connected()).count();
    let expect_direct: Vec<&PairResult> = pairs
        .iter()
        .filter(|r| r.expect.outcome == Outcome::Direct)
        .collect();
    let direct_ok = expect_direct
        .iter()
        .filter(|r| r.outcome() == Outcome::Direct)
        .count();
    let ratio = |n: usize, d: usize| {
        if d == 0 {
            "n/a".to_string()
        } else {
            format!("{:.2}", n as f64 / d as f64)
        }
    };
    let times: Vec<u64> = pairs
        .iter()
        .filter(|r| r.outcome() == Outcome::Direct)
        .filter_map(PairResult::time_to_direct_ms)
        .collect();
    let _ = writeln!(f, "figure lab.connected.ratio {}", ratio(connected, all));
    let _ = writeln!(f, "figure lab.connected.pairs {connected}/{all}");
    let _ = writeln!(
        f,
        "figure lab.direct.ratio {}",
        ratio(direct_ok, expect_direct.len())
    );
    let _ = writeln!(
        f,
        "figure lab.direct.pairs {direct_ok}/{}",
        expect_direct.len()
    );
    let _ = writeln!(
        f,
        "figure lab.time_to_direct.median_ms {}",
        median(&times).map_or("n/a".to_string(), |m| format!("{m:.0}"))
    );
    let passed = pairs
        .iter()
        .filter(|r| r.verdict() != Verdict::Fail)
        .count();
    let _ = writeln!(f, "figure lab.matrix.as_expected {passed}/{all}");
    let birthday: Vec<u64> = pairs
        .iter()
        .filter(|r| r.outcome() == Outcome::Direct)
        .filter_map(|r| r.birthday)
        .collect();
    if !birthday.is_empty() {
        let _ = writeln!(
            f,
            "figure lab.birthday.probes.median {}",
            median(&birthday).map_or("n/a".to_string(), |m| format!("{m:.0}"))
        );
    }
    for r in pairs {
        if let Some(n) = r.birthday {
            let _ = writeln!(f, "figure lab.pair.{}.{}.birthday_probes {n}", r.a, r.b);
        }
    }
    for r in pairs {
        let _ = writeln!(
            f,
            "figure lab.pair.{}.{}.path {}",
            r.a,
            r.b,
            r.outcome().name()
        );
    }
    f
}

/// Pairs that make the command fail: expected to connect (directly or through the
/// relay) but not connected at all, or worse than expected (relayed where direct was
/// expected, a transfer not intact).
pub(crate) fn gate_failures(pairs: &[PairResult]) -> Vec<String> {
    pairs
        .iter()
        .filter_map(|r| {
            if r.expect.outcome != Outcome::None && !r.connected() {
                Some(format!(
                    "{} × {}: expected to connect but did not: {}",
                    r.a,
                    r.b,
                    r.connect.as_ref().err().map_or("", String::as_str)
                ))
            } else if r.verdict() == Verdict::Fail {
                Some(format!(
                    "{} × {}: expected {}, got {} (transfer intact: {:?})",
                    r.a,
                    r.b,
                    r.expect.outcome.name(),
                    r.outcome().name(),
                    r.intact()
                ))
            } else {
                None
            }
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn report(
    root: &Path,
    lab: &Lab,
    pairs: &[PairResult],
    peers: &[PeerSummary],
    broken: &[String],
    fences: &[String],
    logs: &Path,
    more_figures: &str,
    seconds: f64,
) -> Result<(), String> {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "peers (NAT kind: as classified with the STUN server and the relay / as built):"
    );
    let mut nat_ok = 0;
    for (label, class, note, nat) in peers {
        let nat = nat.as_deref().unwrap_or("-");
        nat_ok += usize::from(nat == expected_nat(*class));
        let _ = writeln!(
            out,
            "  {label:<9} {:<9} nat {nat} / {}  {}",
            class.name(),
            expected_nat(*class),
            note.as_deref().unwrap_or("ok")
        );
    }
    out.push('\n');
    out.push_str(&table(pairs));
    out.push('\n');
    out.push_str(&figures(pairs));
    let _ = writeln!(out, "figure lab.nat.as_expected {nat_ok}/{}", peers.len());
    for (label, _, _, nat) in peers {
        if let Some(nat) = nat {
            let _ = writeln!(out, "figure lab.nat.{label} {nat}");
        }
    }
    out.push_str(more_figures);
    let _ = writeln!(out, "figure lab.fences.ok {}", u8::from(fences.is_empty()));
    let _ = writeln!(out, "figure lab.matrix.seconds {seconds:.1}");
    print!("{out}");
    println!("peer logs: {}", logs.display());
    let path = state_dir(root).join(format!("matrix-{}.txt", lab.id));
    let _ = std::fs::write(&path, &out);
    let mut failures: Vec<String> = broken.to_vec();
    failures.extend(fences.iter().map(|f| format!("fences: {f}")));
    failures.extend(gate_failures(pairs));
    if failures.is_empty() {
        println!(
            "lab matrix: {} pairs measured; every pair connected \
             (results in {})",
            pairs.len(),
            path.display()
        );
        Ok(())
    } else {
        Err(super::problems_error("matrix", &failures, logs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn replies() {
        assert_eq!(
            parse_reply("ok ms=3 path=relayed"),
            Ok(Ok("ms=3 path=relayed".into()))
        );
        assert_eq!(parse_reply("err timed out\n"), Ok(Err("timed out".into())));
        assert_eq!(parse_reply("ok"), Ok(Ok(String::new())));
        assert!(parse_reply("addr abc").is_err());
        assert!(parse_reply("").is_err());

        let c = parse_connect("ms=12 path=relayed").unwrap();
        assert_eq!(
            c,
            Connected {
                ms: 12,
                path: PathSeen::Relayed
            }
        );
        let c = parse_connect("ms=4 path=direct=203.0.113.3:4000").unwrap();
        assert_eq!(c.path, PathSeen::Direct(sa("203.0.113.3:4000")));
        assert!(parse_connect("ms=x path=relayed").is_err());
        assert!(parse_connect("path=relayed").is_err());
        assert!(parse_connect("ms=1 path=sideways").is_err());

        let w = parse_wait("direct=203.0.113.16:5000 ms=250").unwrap();
        assert_eq!(w.path, PathSeen::Direct(sa("203.0.113.16:5000")));
        assert_eq!(w.ms, Some(250));
        assert_eq!(
            parse_wait("relayed").unwrap(),
            Waited {
                path: PathSeen::Relayed,
                ms: None
            }
        );
        assert_eq!(parse_wait("none").unwrap().path, PathSeen::None);
        assert!(parse_wait("direct=203.0.113.16:5000").is_err());
        assert!(parse_wait("").is_err());

        let t = parse_transfer(
            "bytes=1048576 intact=true path_before=relayed path_after=direct=203.0.113.17:9",
        )
        .unwrap();
        assert_eq!(t.bytes, 1 << 20);
        assert!(t.intact);
        assert_eq!(t.before, PathSeen::Relayed);
        assert_eq!(t.after, PathSeen::Direct(sa("203.0.113.17:9")));
        assert!(
            !parse_transfer("bytes=1 intact=false path_before=none path_after=none")
                .unwrap()
                .intact
        );
        assert!(parse_transfer("bytes=1 intact=maybe path_before=none path_after=none").is_err());

        assert_eq!(parse_probes("17"), Ok(17));
        assert!(parse_probes("-1").is_err());
    }

    #[test]
    fn expectations() {
        use Class::*;
        let e = |a, b| expected(a, b, true).outcome;
        for (a, b) in [
            (Public, Eim),
            (Public, Cgnat),
            (Eim, Cgnat),
            (Eim, Eim),
            (Public, Edm),
        ] {
            assert_eq!(e(a, b), Outcome::Direct, "{a:?} {b:?}");
            assert_eq!(e(b, a), Outcome::Direct, "{b:?} {a:?}");
        }
        for (a, b) in [(Edm, Eim), (Edm, Cgnat)] {
            assert_eq!(e(a, b), Outcome::Direct);
            assert_eq!(e(b, a), Outcome::Direct);
            // Without a STUN server nobody knows the NAT kinds.
            assert_eq!(expected(a, b, false).outcome, Outcome::Relayed);
        }
        assert!(expected(Edm, Eim, true).why.contains("birthday"));
        assert_eq!(e(Edm, Edm), Outcome::Relayed);
        assert!(expected(Edm, Edm, true).why.contains("both"));
        for c in [Public, Eim, Edm, Cgnat, UdpBlock] {
            assert_eq!(e(c, UdpBlock), Outcome::Relayed);
            assert_eq!(e(UdpBlock, c), Outcome::Relayed);
        }
        assert!(expected(Eim, UdpBlock, true).why.contains("TCP"));

        assert_eq!(verdict(Outcome::Direct, Outcome::Direct), Verdict::Pass);
        assert_eq!(verdict(Outcome::Direct, Outcome::Relayed), Verdict::Fail);
        assert_eq!(verdict(Outcome::Relayed, Outcome::Direct), Verdict::Better);
        assert_eq!(verdict(Outcome::None, Outcome::None), Verdict::Pass);
        assert_eq!(verdict(Outcome::Relayed, Outcome::None), Verdict::Fail);
    }

    fn pair(expect: Outcome, connect: Option<&str>, wait: &str, after: &str) -> PairResult {
        let connect = connect.map_or(Err("timed out".to_string()), parse_connect);
        let ok = connect.is_ok();
        PairResult {
            a: "eim".into(),
            b: "cgnat".into(),
            expect: Expect {
                outcome: expect,
                why: "",
            },
            connect,
            wait: ok.then(|| parse_wait(wait)),
            transfer: ok.then(|| {
                parse_transfer(&format!(
                    "bytes=1048576 intact=true path_before=relayed path_after={after}"
                ))
            }),
            probes: ok.then_some(Ok(3)),
            birthday: None,
            final_path: ok.then(|| PathSeen::parse(after).unwrap()),
            b_path: None,
            broke: None,
            notes: vec![],
        }
    }

    #[test]
    fn outcomes_figures_and_gate() {
        let d = "direct=203.0.113.18:1000";
        let pairs = vec![
            pair(
                Outcome::Direct,
                Some("ms=10 path=relayed"),
                &format!("{d} ms=200"),
                d,
            ),
            pair(Outcome::Direct, Some(&format!("ms=30 path={d}")), d, d),
            pair(
                Outcome::Direct,
                Some("ms=10 path=relayed"),
                "relayed",
                "relayed",
            ),
            pair(
                Outcome::Relayed,
                Some("ms=10 path=relayed"),
                "relayed",
                "relayed",
            ),
            pair(Outcome::None, None, "", ""),
        ];
        assert_eq!(pairs[0].time_to_direct_ms(), Some(210));
        assert_eq!(pairs[1].time_to_direct_ms(), Some(30));
        assert_eq!(pairs[2].time_to_direct_ms(), None);
        let v: Vec<Verdict> = pairs.iter().map(PairResult::verdict).collect();
        use Verdict::*;
        assert_eq!(v, [Pass, Pass, Fail, Pass, Pass]);
        let f = figures(&pairs);
        let lines: Vec<&str> = f.lines().collect();
        assert!(lines.contains(&"figure lab.connected.ratio 0.80"), "{f}");
        assert!(lines.contains(&"figure lab.direct.ratio 0.67"), "{f}");
        assert!(
            lines.contains(&"figure lab.time_to_direct.median_ms 120"),
            "{f}"
        );
        assert!(
            lines.contains(&"figure lab.pair.eim.cgnat.path none"),
            "{f}"
        );
        // Only the pair that stayed relayed where direct was expected fails the gate.
        let gate = gate_failures(&pairs);
        assert_eq!(gate.len(), 1, "{gate:?}");
        assert!(gate[0].contains("expected direct, got relayed"), "{gate:?}");
        let mut broken = pairs[2].clone();
        broken.connect = Err("timed out".into());
        assert_eq!(broken.verdict(), Fail);
        assert_eq!(gate_failures(&[broken]).len(), 1);
        // A corrupt transfer is never a pass.
        let mut corrupt = pairs[0].clone();
        corrupt.transfer = Some(parse_transfer(&format!(
            "bytes=1048576 intact=false path_before=relayed path_after={d}"
        )));
        assert_eq!(corrupt.verdict(), Fail);
        let t = table(&pairs);
        assert_eq!(t.lines().count(), 2 + pairs.len());
        assert!(
            t.contains(
                "| eim × cgnat | direct | yes | 10 | relayed | direct=203.0.113.18:1000 | 210 |"
            ),
            "{t}"
        );
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[5]), Some(5.0));
        assert_eq!(median(&[9, 1, 5]), Some(5.0));
        assert_eq!(median(&[4, 1, 3, 2]), Some(2.5));
    }

    #[test]
    fn node_addr_wire_form() {
        // RFC 4648 test vectors, lowercase and unpadded.
        assert_eq!(base32(b"foobar"), "mzxw6ytboi");
        assert_eq!(base32(b"f"), "my");
        assert_eq!(base32(&[0u8; 32]).len(), 52);

        let id: Vec<u8> = (0u8..32).collect();
        let mut b = vec![0x0a, 32];
        b.extend_from_slice(&id);
        b.extend_from_slice(&[0x12, 6, 192, 0, 2, 2, 0x9c, 0x40]); // 192.0.2.2:40000
        let mut relay = vec![0x0a, 32];
        relay.extend_from_slice(&[7u8; 32]);
        relay.extend_from_slice(&[0x12, 6, 203, 0, 113, 2, 0x1b, 0x58]);
        b.push(0x1a);
        b.push(relay.len() as u8);
        b.extend_from_slice(&relay);
        let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
        let a = decode_peer_addr(&hex).unwrap();
        assert_eq!(a.id, base32(&id));
        assert_eq!(a.id.len(), 52);
        assert_eq!(a.direct, vec![sa("192.0.2.2:40000")]);
        assert_eq!(a.relays, 1);
        assert_eq!(a.hex, hex);

        assert!(decode_peer_addr("0a").is_err());
        assert!(decode_peer_addr("zz").is_err());
        assert!(decode_peer_addr("0a05aabb").is_err()); // truncated
        assert!(decode_peer_addr("1206c000020200ff").is_err()); // no id
        assert!(decode_peer_addr("08ff").is_err()); // varint field
    }
}
