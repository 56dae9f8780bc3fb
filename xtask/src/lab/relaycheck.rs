//! The relay step of `cargo xtask lab matrix`: the relay never sees plaintext, and its
//! per-peer rate limit holds while one peer floods while another peer's relayed
//! traffic keeps flowing.
//!
//! 1. `tcpdump` captures everything on the relay host's interface (`pub1`, full
//!    packets) while two relayed pairs move data through the relay: `edm → edm2` (both
//!    endpoint-dependent: relayed over QUIC) floods 8 MiB made of a known marker, and
//!    at the same time `eim → udpblock` (relayed over TLS/TCP) sends 1 MiB of the same
//!    marker. Then a **positive control**: a plain UDP datagram carrying a control text
//!    is sent to the relay host, so the capture is shown to find plaintext when there
//!    is some.
//! 2. Assertions: the marker never appears in what the relay saw (the control does);
//!    the capture holds at least the bytes of both transfers (it saw them); the flood's
//!    throughput stays within the relay's default per-peer limit (2 MiB/s, 256 KiB
//!    burst) with 25 % slack; the other pair's 1 MiB arrives intact.
//!
//! Figures: `lab.relay.capture_bytes`, `lab.relay.marker_hits` (goal 0),
//! `lab.relay.control_hits` (≥ 1), `lab.relay.flood_mib_per_s`,
//! `lab.relay.victim_ms`, `lab.relay.victim_intact`.
//!
//! Without `tcpdump` the capture part is skipped with a printed reason; the flood part
//! still runs.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::matrix::{Class, Peer};
use super::topology::Lab;

/// Bytes the flooding peer sends through the relay.
const FLOOD_BYTES: u64 = 8 << 20;
/// Bytes the other pair sends meanwhile.
const VICTIM_BYTES: u64 = 1 << 20;
/// The relay's default per-peer rate (`RelayConfig::default`), and its burst.
const RELAY_RATE: f64 = 2.0 * 1024.0 * 1024.0;
const RELAY_BURST: f64 = 256.0 * 1024.0;
/// Longest a transfer may take before the step gives up on it.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(60);

/// What the step found.
#[derive(Debug, Default)]
pub(crate) struct RelayCheck {
    /// `figure …` lines.
    pub(crate) figures: String,
    /// Failed assertions and breakages.
    pub(crate) problems: Vec<String>,
}

/// A capture running in a namespace, stopped (SIGTERM, then kill) by its pid.
struct Capture {
    child: Child,
    file: std::path::PathBuf,
}

impl Capture {
    fn start(lab: &Lab, node: &str, file: &Path, log: &Path) -> Result<Capture, String> {
        let err = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut cmd = lab.command(node, "tcpdump");
        cmd.args(["-i", "eth0", "-s", "0", "-U", "-n", "-w"])
            .arg(file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(err));
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start tcpdump in {node}: {e}"))?;
        let mut cap = Capture {
            child,
            file: file.to_owned(),
        };
        // Ready once it prints "listening on" (bounded: 5 s).
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if std::fs::read_to_string(log).is_ok_and(|t| t.contains("listening on")) {
                return Ok(cap);
            }
            if let Ok(Some(status)) = cap.child.try_wait() {
                return Err(format!(
                    "tcpdump exited at start ({status}); see {}",
                    log.display()
                ));
            }
            if Instant::now() > deadline {
                cap.stop();
                return Err("tcpdump did not start listening within 5 s".into());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the capture and returns what it wrote.
    fn stop(&mut self) -> Vec<u8> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::read(&self.file).unwrap_or_default()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bytes of `file` from `*seen - overlap` on, advancing `*seen` to its end.
fn written_since(file: &Path, seen: &mut usize, overlap: usize) -> Option<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(file).ok()?;
    let from = seen.saturating_sub(overlap);
    f.seek(SeekFrom::Start(from as u64)).ok()?;
    let mut new = Vec::new();
    f.read_to_end(&mut new).ok()?;
    *seen = from + new.len();
    Some(new)
}

/// Non-overlapping occurrences of `needle` in `hay`.
pub(crate) fn count(hay: &[u8], needle: &[u8]) -> usize {
    if needle.is_empty() || hay.len() < needle.len() {
        return 0;
    }
    let mut n = 0;
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        if &hay[i..i + needle.len()] == needle {
            n += 1;
            i += needle.len();
        } else {
            i += 1;
        }
    }
    n
}

/// Highest throughput a peer limited to `rate` with `burst` can show over `bytes`,
/// with 25 % slack for timing.
pub(crate) fn flood_ceiling(bytes: u64, rate: f64, burst: f64) -> f64 {
    let secs = ((bytes as f64 - burst).max(0.0)) / rate;
    if secs <= 0.0 {
        return f64::INFINITY;
    }
    bytes as f64 / secs * 1.25
}

fn find(peers: &[Peer], class: Class, nth: usize) -> Option<usize> {
    peers
        .iter()
        .enumerate()
        .filter(|(_, p)| p.class == class)
        .nth(nth)
        .map(|(i, _)| i)
}

/// Runs the step with the matrix's running peers (their relayed connections exist from
/// the pairs already measured).
pub(crate) fn step(lab: &Lab, relay_node: &str, peers: &mut [Peer], logs: &Path) -> RelayCheck {
    let mut out = RelayCheck::default();
    let (Some(flooder), Some(flooded), Some(sender), Some(receiver)) = (
        find(peers, Class::Edm, 0),
        find(peers, Class::Edm, 1),
        find(peers, Class::Eim, 0),
        find(peers, Class::UdpBlock, 0),
    ) else {
        out.problems
            .push("relay step: the lab lacks the edm, edm2, eim or udpblock host".into());
        return out;
    };
    let id = |i: usize, peers: &[Peer]| peers[i].addr.as_ref().map(|a| a.id.clone());
    let (Some(flooded_id), Some(receiver_id)) = (id(flooded, peers), id(receiver, peers)) else {
        out.problems.push("relay step: a peer did not start".into());
        return out;
    };
    // A marker nobody else sends: the step's own pid and the time.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let marker = format!("KITHLAB-PLAINTEXT-MARKER-{}-{nanos}", std::process::id());
    // The control carries a different text, so its copies (the datagram, and the ICMP
    // error quoting it) never count as the marker.
    let control = format!("KITHLAB-PLAINTEXT-CONTROL-{}-{nanos}", std::process::id());
    let capture = if super::sys::have("tcpdump") {
        match Capture::start(
            lab,
            relay_node,
            &logs.join("relay.pcap"),
            &logs.join("tcpdump.log"),
        ) {
            Ok(c) => Some(c),
            Err(e) => {
                out.problems.push(format!("relay step: {e}"));
                None
            }
        }
    } else {
        eprintln!("matrix: relay step: `tcpdump` not installed; no capture (flood part only)");
        None
    };
    let mlen = marker.len() as u64;
    let flood_cmd = format!("marker {flooded_id} {marker} {}", FLOOD_BYTES / mlen);
    let victim_cmd = format!("marker {receiver_id} {marker} {}", VICTIM_BYTES / mlen);
    // Start the flood, then the other pair's transfer while it runs.
    let flood_start = Instant::now();
    let sent = peers[flooder].proc.as_mut().map(|k| k.send(&flood_cmd));
    if !matches!(sent, Some(Ok(()))) {
        out.problems
            .push(format!("relay step: could not start the flood: {sent:?}"));
        return out;
    }
    let victim_start = Instant::now();
    let victim = peers[sender]
        .proc
        .as_mut()
        .map(|k| k.ask(&victim_cmd, TRANSFER_TIMEOUT));
    let victim_ms = victim_start.elapsed().as_millis();
    let flood = peers[flooder]
        .proc
        .as_mut()
        .map(|k| k.reply(TRANSFER_TIMEOUT));
    let flood_secs = flood_start.elapsed().as_secs_f64();

    let intact = |r: &Option<Result<Result<String, String>, String>>| matches!(r, Some(Ok(Ok(body))) if body.contains("intact=true"));
    let victim_intact = intact(&victim);
    let flood_intact = intact(&flood);
    if !victim_intact {
        out.problems.push(format!(
            "relay step: the other pair's transfer did not arrive intact: {victim:?}"
        ));
    }
    if !flood_intact {
        out.problems
            .push(format!("relay step: the flood did not complete: {flood:?}"));
    }
    let sent_bytes = (FLOOD_BYTES / mlen) * mlen;
    let flood_rate = sent_bytes as f64 / flood_secs;
    let ceiling = flood_ceiling(sent_bytes, RELAY_RATE, RELAY_BURST);
    if flood_intact && flood_rate > ceiling {
        out.problems.push(format!(
            "relay step: the flood ran at {:.2} MiB/s, above the relay's limit ({:.2} MiB/s with slack)",
            flood_rate / 1048576.0,
            ceiling / 1048576.0
        ));
    }
    let f = &mut out.figures;
    let _ = writeln!(
        f,
        "figure lab.relay.flood_mib_per_s {:.2}",
        flood_rate / 1048576.0
    );
    let _ = writeln!(
        f,
        "figure lab.relay.limit_mib_per_s {:.2}",
        RELAY_RATE / 1048576.0
    );
    let _ = writeln!(f, "figure lab.relay.victim_ms {victim_ms}");
    let _ = writeln!(
        f,
        "figure lab.relay.victim_intact {}",
        u8::from(victim_intact)
    );

    if let Some(mut cap) = capture {
        // Positive control: the marker in a plain datagram to the relay host.
        let relay_ip = lab.plan.primary_addr(relay_node);
        let control_from = peers
            .iter()
            .find(|p| p.class == Class::Public)
            .map(|p| p.node.clone());
        let mut control_sent = false;
        if let (Some(ip), Some(from), Ok(xtask)) = (relay_ip, control_from, std::env::current_exe())
        {
            let target = format!("{ip}:9");
            control_sent = lab
                .command(&from, &xtask.to_string_lossy())
                .args(["lab", "_tool", "send", &target, &control])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        }
        // Wait until the capture has written the control (it may lag behind the relayed
        // megabytes), bounded: 10 s.
        // Only what was written since the last look is read (with an overlap of one
        // control length, for a control split across two reads).
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = 0usize;
        while control_sent && Instant::now() < deadline {
            if written_since(&cap.file, &mut seen, control.len())
                .is_some_and(|new| count(&new, control.as_bytes()) > 0)
            {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        let pcap = cap.stop();
        let total = if victim_intact { VICTIM_BYTES } else { 0 }
            + if flood_intact { sent_bytes } else { 0 };
        let relayed_hits = count(&pcap, marker.as_bytes());
        let control_hits = count(&pcap, control.as_bytes());
        let _ = writeln!(f, "figure lab.relay.capture_bytes {}", pcap.len());
        let _ = writeln!(f, "figure lab.relay.marker_hits {relayed_hits}");
        let _ = writeln!(f, "figure lab.relay.control_hits {control_hits}");
        if relayed_hits > 0 {
            out.problems.push(format!(
                "relay step: the relay saw the marker in plaintext {relayed_hits} times"
            ));
        }
        if !control_sent || control_hits == 0 {
            out.problems.push(
                "relay step: the positive control (a plaintext datagram) was not found in the \
                 capture, so the capture proves nothing"
                    .into(),
            );
        }
        if (pcap.len() as u64) < total {
            out.problems.push(format!(
                "relay step: the capture holds {} bytes, less than the {total} relayed",
                pcap.len()
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_markers() {
        assert_eq!(count(b"xxMARKxMARKMARK", b"MARK"), 3);
        assert_eq!(count(b"MAR", b"MARK"), 0);
        assert_eq!(count(b"", b"MARK"), 0);
        assert_eq!(count(b"AAAA", b"AA"), 2);
    }

    #[test]
    fn the_flood_ceiling_follows_rate_and_burst() {
        let c = flood_ceiling(8 << 20, RELAY_RATE, RELAY_BURST);
        // 8 MiB at 2 MiB/s after a 256 KiB burst: 3.875 s, so 2.06 MiB/s, ×1.25.
        assert!((c / 1048576.0 - 2.58).abs() < 0.01, "{c}");
        assert!(flood_ceiling(100, RELAY_RATE, RELAY_BURST).is_infinite());
    }
}
