//! `kith relay` and two `kith-lab peer` processes on loopback: a connection starts on the
//! relay, moves to the direct path, and a transfer across it arrives intact.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const STEP: Duration = Duration::from_secs(30);

struct Proc {
    _child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    addr: String,
}

impl Proc {
    async fn spawn(args: &[&str]) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kith-lab"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn kith");
        let stdin = child.stdin.take().expect("stdin");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = tokio::time::timeout(STEP, lines.next_line())
            .await
            .expect("starts")
            .unwrap()
            .unwrap();
        let addr = first.strip_prefix("addr ").expect("addr line").to_owned();
        Proc {
            _child: child,
            stdin,
            lines,
            addr,
        }
    }

    async fn ask(&mut self, line: &str) -> String {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        self.stdin.flush().await.unwrap();
        let reply = tokio::time::timeout(STEP, self.lines.next_line())
            .await
            .expect("answer")
            .unwrap()
            .unwrap();
        reply
            .strip_prefix("ok ")
            .unwrap_or_else(|| panic!("{line:?} failed: {reply}"))
            .to_owned()
    }
}

/// The node id inside a hex NodeAddr (first field: tag 0x0a, length 32, id bytes).
fn id_of(hex_addr: &str) -> String {
    let bytes: Vec<u8> = (0..hex_addr.len() / 2)
        .map(|i| u8::from_str_radix(&hex_addr[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    kith::NodeAddr::decode(&bytes).unwrap().node_id.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_then_direct_between_processes() {
    let relay = Proc::spawn(&["relay", "--bind", "127.0.0.1:0"]).await;
    // Both hold a new connection on the relay for 300 ms before probing, so it is seen
    // relayed first (on loopback the first probe round can finish inside the dial).
    let peer = |relay: &str| {
        [
            "peer",
            "--bind",
            "127.0.0.1:0",
            "--relay",
            relay,
            "--probe-delay-ms",
            "300",
        ]
        .map(String::from)
    };
    let a_args = peer(&relay.addr);
    let b_args = peer(&relay.addr);
    let mut a = Proc::spawn(&a_args.each_ref().map(String::as_str)).await;
    let b = Proc::spawn(&b_args.each_ref().map(String::as_str)).await;
    let b_id = id_of(&b.addr);
    let connected = a.ask(&format!("connect {}", b.addr)).await;
    assert!(connected.contains("path=relayed"), "{connected}");
    let direct = a.ask(&format!("wait-direct {b_id} 10000")).await;
    assert!(direct.starts_with("direct=127.0.0.1:"), "{direct}");
    let t = a.ask(&format!("transfer {b_id} 1048576")).await;
    assert!(t.contains("intact=true"), "{t}");
    assert!(t.contains("path_after=direct"), "{t}");
    let probes: u64 = a.ask(&format!("probes {b_id}")).await.parse().unwrap();
    assert!(probes >= 1);
}
