//! 20 real `kith-lab dht-node` processes on loopback, over the real QUIC transport, store
//! and retrieve values and providers and resolve each other's node ids to addresses.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const NODES: usize = 20;
/// Bound on any single command's answer.
const STEP: Duration = Duration::from_secs(30);

struct Proc {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    addr: String,
}

impl Proc {
    async fn spawn(bootstrap: Option<&str>) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kith-lab"));
        cmd.arg("dht-node");
        if let Some(b) = bootstrap {
            cmd.args(["--bootstrap", b]);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn kith dht-node");
        let stdin = child.stdin.take().expect("stdin");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = tokio::time::timeout(STEP, lines.next_line())
            .await
            .expect("node starts")
            .unwrap()
            .unwrap();
        let addr = first.strip_prefix("addr ").expect("addr line").to_owned();
        Proc {
            child,
            stdin,
            lines,
            addr,
        }
    }

    fn id(&self) -> &str {
        self.addr.split('@').next().unwrap_or_default()
    }

    async fn ask(&mut self, line: &str) -> Result<String, String> {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        self.stdin.flush().await.unwrap();
        let reply = tokio::time::timeout(STEP, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no answer to {line:?}"))
            .unwrap()
            .unwrap_or_default();
        match reply.split_once(' ') {
            Some(("ok", v)) => Ok(v.to_owned()),
            Some(("err", e)) => Err(e.to_owned()),
            _ if reply == "ok" => Ok(String::new()),
            _ => Err(format!("unexpected line {reply:?}")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_processes_store_find_and_resolve() {
    let mut nodes = vec![Proc::spawn(None).await];
    let boot = nodes[0].addr.clone();
    for _ in 1..NODES {
        nodes.push(Proc::spawn(Some(&boot)).await);
    }
    // Everyone bootstraps again now that the network is complete, and publishes its
    // signed address record.
    for n in nodes.iter_mut() {
        n.ask(&format!("bootstrap {boot}")).await.unwrap();
    }
    for n in nodes.iter_mut() {
        let stored: usize = n.ask("publish").await.unwrap().parse().unwrap();
        assert!(stored >= 1, "address record stored somewhere");
    }
    // Every node stores a value; another node reads it back.
    let mut keys = Vec::new();
    for (i, n) in nodes.iter_mut().enumerate() {
        keys.push(n.ask(&format!("put value number {i}")).await.unwrap());
    }
    for (i, key) in keys.iter().enumerate() {
        let reader = (i + 7) % NODES;
        let got = nodes[reader].ask(&format!("get {key}")).await;
        assert_eq!(
            got,
            Ok(format!("value number {i}")),
            "node {reader} reading value {i}"
        );
    }
    // Three nodes provide one content hash; a far node finds all three.
    let content = keys[0].clone();
    let providers: Vec<String> = [3, 9, 15]
        .iter()
        .map(|&i| nodes[i].id().to_owned())
        .collect();
    for i in [3, 9, 15] {
        nodes[i].ask(&format!("provide {content}")).await.unwrap();
    }
    let found = nodes[18]
        .ask(&format!("providers {content}"))
        .await
        .unwrap();
    for p in &providers {
        assert!(
            found.split(',').any(|f| f == p),
            "provider {p} found in {found}"
        );
    }
    // Every node resolves two others' ids to the addresses they listen on.
    for i in 0..NODES {
        for j in [(i + 1) % NODES, (i + 11) % NODES] {
            let id = nodes[j].id().to_owned();
            let resolved = nodes[i].ask(&format!("resolve {id}")).await;
            assert_eq!(
                resolved,
                Ok(nodes[j].addr.clone()),
                "node {i} resolving node {j}"
            );
        }
    }
    for n in nodes.iter_mut() {
        let _ = n.stdin.write_all(b"quit\n").await;
    }
    for mut n in nodes {
        let _ = tokio::time::timeout(STEP, n.child.wait()).await;
        let _ = n.child.kill().await;
    }
}
