//! Link delay without netem: packets crossing a node's uplink are queued to user space
//! with nftables' `queue` statement (NFQUEUE) and accepted again after the delay.
//!
//! Used when the kernel has no `sch_netem` (as on the machine this lab was built on).
//! Each node with an access link runs one `lab delayd` process in its namespace; its
//! rules (`iptables -t mangle … -j NFQUEUE`) queue packets leaving by the uplink
//! (postrouting) and packets coming in by it (prerouting), so each direction of the
//! access link gets the delay once, as netem on both ends would. The rules use `bypass`: with no daemon
//! listening, packets pass undelayed rather than being dropped, and the queue fails open
//! when full. The lab's teardown kills the daemons with everything else in its
//! namespaces; a daemon never outlives [`MAX_LIFETIME`] in any case.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The NFQUEUE queue number the rules and the daemon use (queues are per namespace).
pub(crate) const QUEUE: u16 = 0;
/// Most packets the kernel holds for the daemon; beyond that the queue fails open.
const QUEUE_MAX_LEN: u32 = 16 * 1024;
/// Most packets the daemon holds back at once (beyond that, they go out early).
const MAX_HELD: usize = 16 * 1024;
/// Longest poll sleep: the delay's resolution.
const TICK: Duration = Duration::from_micros(500);
/// A daemon never outlives this, whatever happens to the lab.
pub(crate) const MAX_LIFETIME: Duration = Duration::from_secs(3 * 3600);
/// The line the daemon prints once its queue is bound.
pub(crate) const READY: &str = "delayd ready";

/// The `iptables` commands (arguments) that queue `uplink`'s traffic in both
/// directions. nftables' own `queue` expression needs `nft_queue`, which kernels without
/// netem tend to lack too; the `NFQUEUE` target through iptables' nftables backend
/// (`nft_compat`) is built in more often.
pub(crate) fn rules(uplink: &str) -> [Vec<String>; 2] {
    let q = QUEUE.to_string();
    let rule = |chain: &str, dir: &str| {
        [
            "-t",
            "mangle",
            "-A",
            chain,
            dir,
            uplink,
            "-j",
            "NFQUEUE",
            "--queue-num",
            &q,
            "--queue-bypass",
        ]
        .map(String::from)
        .to_vec()
    };
    [rule("PREROUTING", "-i"), rule("POSTROUTING", "-o")]
}

/// `xtask lab delayd --ms N`: holds every queued packet for N ms, then accepts it.
pub(crate) fn daemon(args: &[String]) -> Result<(), String> {
    let ms: u64 = match args {
        [flag, v] if flag == "--ms" => v.parse().map_err(|e| format!("bad --ms {v:?}: {e}"))?,
        _ => return Err("usage: xtask lab delayd --ms N".into()),
    };
    if ms > 1000 {
        return Err("--ms: at most 1000".into());
    }
    let delay = Duration::from_millis(ms);
    let mut q = nfq::Queue::open().map_err(|e| format!("NFQUEUE socket: {e}"))?;
    q.bind(QUEUE)
        .map_err(|e| format!("bind queue {QUEUE}: {e}"))?;
    q.set_copy_range(QUEUE, 0)
        .map_err(|e| format!("copy range: {e}"))?;
    q.set_queue_max_len(QUEUE, QUEUE_MAX_LEN)
        .map_err(|e| format!("queue length: {e}"))?;
    q.set_fail_open(QUEUE, true)
        .map_err(|e| format!("fail open: {e}"))?;
    q.set_recv_gso(QUEUE, true)
        .map_err(|e| format!("gso: {e}"))?;
    q.set_nonblocking(true);
    // Ready: the parent waits for this line before it installs the rules.
    println!("{READY}");
    let start = Instant::now();
    let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
    while start.elapsed() < MAX_LIFETIME {
        // Take everything waiting.
        loop {
            match q.recv() {
                Ok(mut m) => {
                    if held.len() >= MAX_HELD {
                        m.set_verdict(nfq::Verdict::Accept);
                        q.verdict(m).map_err(|e| format!("verdict: {e}"))?;
                    } else {
                        held.push_back((Instant::now() + delay, m));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("recv: {e}")),
            }
        }
        // Release what is due (held in arrival order, so due times are sorted).
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            if let Some((_, mut m)) = held.pop_front() {
                m.set_verdict(nfq::Verdict::Accept);
                q.verdict(m).map_err(|e| format!("verdict: {e}"))?;
            }
        }
        let sleep = held.front().map_or(TICK, |(due, _)| {
            due.saturating_duration_since(now).min(TICK)
        });
        std::thread::sleep(sleep);
    }
    // Let the held packets go before leaving (the rules bypass from then on).
    while let Some((_, mut m)) = held.pop_front() {
        m.set_verdict(nfq::Verdict::Accept);
        let _ = q.verdict(m);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_queue_both_directions_of_the_uplink() {
        let [inbound, outbound] = rules("wan0");
        assert_eq!(inbound[3..6], ["PREROUTING", "-i", "wan0"]);
        assert_eq!(outbound[3..6], ["POSTROUTING", "-o", "wan0"]);
        for r in [&inbound, &outbound] {
            assert!(
                r.ends_with(&["NFQUEUE", "--queue-num", "0", "--queue-bypass"].map(String::from))
            );
        }
    }
}
