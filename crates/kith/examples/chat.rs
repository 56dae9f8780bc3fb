//! A chat room on kith gossip: every terminal that joins the same topic name sees every
//! line, with the author's short id. No server: the first terminal is the room's first
//! member, the others join through any member's address.
//!
//! ```text
//! terminal 1:  cargo run -p kith --example chat -- lobby
//!              (prints: joined lobby as <id>; others join with: ... <NodeAddr>)
//! terminal 2:  cargo run -p kith --example chat -- lobby <NodeAddr from terminal 1>
//! ```
//!
//! Type lines and press enter; each is signed with your key and broadcast. Each received
//! line shows `<author short id>: text` (the author is verified from the signature, not
//! just the neighbour that forwarded it).
//!
//! Non-interactive use (scripts, tests):
//!
//! * `--send N`: broadcast N generated lines (once a neighbour is up), then leave;
//! * `--expect M`: exit after receiving M lines (with `--send`, after both);
//! * `--addr-file PATH`: also write this node's address to PATH;
//! * `--timeout SECS`: give up (exit code 1) after this long (default: never).
//!
//! ```text
//! chat lobby --expect 3 --addr-file /tmp/a &        # waits for 3 lines
//! chat lobby "$(cat /tmp/a)" --send 3 --expect 0    # sends them
//! ```

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kith::{Node, NodeAddr, SecretKey, Transport};
use kith_overlay::gossip::driver::Gossip;
use kith_overlay::gossip::{Config, Event, TopicId};

#[derive(Debug, Default)]
struct Args {
    topic: String,
    bootstrap: Option<NodeAddr>,
    send: Option<usize>,
    expect: Option<usize>,
    addr_file: Option<String>,
    timeout: Option<u64>,
}

fn parse() -> anyhow::Result<Args> {
    let mut a = Args::default();
    let mut it = std::env::args().skip(1);
    let mut positional = Vec::new();
    while let Some(arg) = it.next() {
        let mut val = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--send" => a.send = Some(val()?.parse()?),
            "--expect" => a.expect = Some(val()?.parse()?),
            "--addr-file" => a.addr_file = Some(val()?),
            "--timeout" => a.timeout = Some(val()?.parse()?),
            _ => positional.push(arg),
        }
    }
    let mut pos = positional.into_iter();
    a.topic = pos
        .next()
        .context("usage: chat <topic> [bootstrap NodeAddr] [--send N] [--expect M] [--addr-file PATH] [--timeout SECS]")?;
    if let Some(b) = pos.next() {
        a.bootstrap = Some(
            b.parse()
                .context("bootstrap must be a NodeAddr (id@ip:port)")?,
        );
    }
    Ok(a)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let key = SecretKey::generate(&mut rand::rngs::OsRng);
    let node = Node::builder().secret_key(key.clone()).spawn().await?;
    let transport: Arc<dyn Transport> = Arc::new(node.endpoint().clone());
    let gossip = Gossip::spawn(transport, key, Config::default())?;
    let me = node.addr();
    println!(
        "joined {} as {}; others join with:",
        args.topic,
        me.node_id.fmt_short()
    );
    println!("  cargo run -p kith --example chat -- {} {me}", args.topic);
    if let Some(path) = &args.addr_file {
        std::fs::write(path, me.to_string())?;
    }
    let topic = gossip
        .join(
            TopicId::from_name(&args.topic),
            args.bootstrap.into_iter().collect(),
        )
        .await?;
    let (sender, mut events) = topic.split();

    let mut neighbors = 0usize;
    let mut received = 0usize;
    let mut to_send = args.send;
    let expect = args.expect;
    let done = |received: usize, to_send: Option<usize>| {
        to_send.is_none_or(|n| n == 0)
            && expect.is_some_and(|m| received >= m)
            && (args.send.is_some() || expect.is_some())
    };
    let interactive = args.send.is_none() && args.expect.is_none();
    // Stdin is read on a plain thread (blocking reads) and handed over a channel.
    let (line_tx, mut lines) = tokio::sync::mpsc::channel::<String>(16);
    if interactive {
        std::thread::spawn(move || {
            for line in std::io::stdin().lines() {
                let Ok(line) = line else { break };
                if line_tx.blocking_send(line).is_err() {
                    break;
                }
            }
        });
    } else {
        drop(line_tx);
    }
    loop {
        if let Some(n) = to_send.filter(|&n| n > 0 && neighbors > 0) {
            for i in 0..n {
                let line = format!("line {} of {n} from {}", i + 1, me.node_id.fmt_short());
                sender.broadcast(line.clone()).await?;
                println!("me: {line}");
            }
            to_send = Some(0);
        }
        if done(received, to_send) {
            break;
        }
        tokio::select! {
            e = events.next_event() => match e {
                Some(Event::Received { author, payload, .. }) => {
                    received += 1;
                    println!("{}: {}", author.fmt_short(), String::from_utf8_lossy(&payload));
                }
                Some(Event::NeighborUp(p)) => {
                    neighbors += 1;
                    println!("* {} is a neighbour", p.fmt_short());
                }
                Some(Event::NeighborDown(p)) => {
                    neighbors = neighbors.saturating_sub(1);
                    println!("* {} left the neighbourhood", p.fmt_short());
                }
                None => break,
            },
            line = lines.recv(), if interactive => match line {
                Some(line) if !line.trim().is_empty() => match sender.broadcast(line).await {
                    Ok(_) => {}
                    Err(e) => println!("! not sent: {e}"),
                },
                Some(_) => {}
                None => break,
            },
        }
    }
    if args.send.is_some() {
        // Let the last frames leave the send queues before closing the connections.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(events);
    node.close().await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse()?;
    match args.timeout {
        Some(s) => tokio::time::timeout(Duration::from_secs(s), run(args))
            .await
            .context("timed out")?,
        None => run(args).await,
    }
}
