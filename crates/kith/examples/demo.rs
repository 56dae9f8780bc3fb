//! kith's out-of-the-box demo: a small swarm on loopback does kith's main job.
//!
//! Six nodes form a Kademlia DHT. One shares a generated folder; the others find its
//! providers through the DHT (their tickets name nobody) and fetch it, every 16 KiB
//! verified against the folder's BLAKE3 hash. The first two to finish provide in turn, so
//! the last three fetch from several sources at once. Uploads are paced (8 MiB/s per peer)
//! so the sharing is visible. Then a chat line crosses a gossip topic, and a summary says
//! what was verified and how many bytes came from each source.
//!
//! Run: `cargo run --release -p kith --example demo`

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kith::gossip::Event;
use kith::share::ProviderLimits;
use kith::{DownloadEvent, DownloadOptions, Node, NodeId, ShareConfig, Ticket, TopicId};

const NODES: usize = 6;
const FILES: usize = 12;
const FILE_SIZE: usize = 2 << 20;
const UPLOAD_RATE: u64 = 8 << 20;

fn generated_folder(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir.join("videos"))?;
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for i in 0..FILES {
        let bytes: Vec<u8> = (0..FILE_SIZE)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(dir.join("videos").join(format!("clip{i:02}.bin")), bytes)?;
    }
    std::fs::write(dir.join("README.txt"), b"shared with kith\n")?;
    Ok(())
}

fn name(nodes: &[Node], id: &NodeId) -> String {
    nodes
        .iter()
        .position(|n| n.id() == *id)
        .map_or_else(|| id.fmt_short(), |i| format!("node{i}"))
}

/// Fetches `ticket` on `node`, printing progress lines; returns bytes per source.
async fn fetch(nodes: &[Node], i: usize, ticket: &Ticket) -> anyhow::Result<BTreeMap<NodeId, u64>> {
    let share = nodes[i].share()?;
    let mut dl = share.download(ticket, DownloadOptions::default());
    let mut last = Instant::now();
    while let Some(ev) = dl.next_event().await {
        if let DownloadEvent::Progress(p) = ev {
            if last.elapsed() >= Duration::from_millis(700) && p.verified_bytes < p.total_bytes {
                last = Instant::now();
                println!(
                    "  node{i}: {:>5.1} / {:.1} MiB  {:>5.1} MiB/s from {} source(s)",
                    p.verified_bytes as f64 / 1048576.0,
                    p.total_bytes as f64 / 1048576.0,
                    p.rate.max(0.0) / 1048576.0,
                    p.peers_active.max(1)
                );
            }
        }
    }
    let stats = dl.finish().await?;
    Ok(stats.per_peer)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // RUST_LOG=kith_share=debug shows the scheduler at work.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let started = Instant::now();
    println!("== kith demo: {NODES} nodes on loopback, a DHT, a shared folder, a chat topic ==");
    let mut limits = ProviderLimits::default();
    limits.upload_rate_per_peer = Some(UPLOAD_RATE);
    let mut config = ShareConfig::default();
    config.limits = limits;
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..NODES {
        let mut b = Node::builder()
            .loopback()
            .dht(Default::default())
            .gossip(Default::default())
            .share(config.clone());
        if let Some(first) = nodes.first() {
            b = b.bootstrap([first.addr()]);
        }
        let n = b.spawn().await?;
        if i > 0 {
            n.dht()?.bootstrap().await?;
        }
        nodes.push(n);
    }
    for n in &nodes {
        n.dht()?.bootstrap().await?;
    }
    println!("dht: {NODES} nodes joined; node ids:");
    for (i, n) in nodes.iter().enumerate() {
        println!("  node{i} {}", n.id());
    }

    let tmp = tempfile::tempdir()?;
    let folder = tmp.path().join("folder");
    generated_folder(&folder)?;
    let ticket = nodes[0].share()?.add_dir(&folder).await?;
    nodes[0].share()?.announce(ticket.root).await?;
    let total = (FILES * FILE_SIZE) as f64 / 1048576.0;
    println!(
        "node0 shares {FILES} files ({total:.0} MiB) as {}\n  ticket: {ticket}",
        ticket.root
    );
    // Everyone else gets a ticket that names no provider: the DHT finds them.
    let bare = Ticket::new(ticket.root, ticket.format, vec![]);

    let mut per_node: BTreeMap<usize, BTreeMap<NodeId, u64>> = BTreeMap::new();
    println!("-- wave 1: node1 and node2 fetch (node0 is the only provider) --");
    let (a, b) = tokio::join!(fetch(&nodes, 1, &bare), fetch(&nodes, 2, &bare));
    per_node.insert(1, a?);
    per_node.insert(2, b?);
    println!("-- wave 2: node3, node4 and node5 fetch from every provider the DHT knows --");
    let (c, d, e) = tokio::join!(
        fetch(&nodes, 3, &bare),
        fetch(&nodes, 4, &bare),
        fetch(&nodes, 5, &bare)
    );
    per_node.insert(3, c?);
    per_node.insert(4, d?);
    per_node.insert(5, e?);
    for (i, node) in nodes.iter().enumerate().skip(1) {
        let out = tmp.path().join(format!("copy{i}"));
        node.share()?.export_dir(ticket.root, &out).await?;
        for f in 0..FILES {
            let rel = format!("videos/clip{f:02}.bin");
            if std::fs::read(folder.join(&rel))? != std::fs::read(out.join(&rel))? {
                anyhow::bail!("node{i}: {rel} differs");
            }
        }
    }

    println!("-- chat: node5 says thanks on topic \"demo\" --");
    let topic = TopicId::from_name("demo");
    let mut listeners = Vec::new();
    for n in &nodes[..NODES - 1] {
        listeners.push(n.gossip()?.join(topic, vec![nodes[0].addr()]).await?);
    }
    let speaker = nodes[NODES - 1]
        .gossip()?
        .join(topic, vec![nodes[0].addr()])
        .await?;
    speaker.broadcast("thanks for the files!").await?;
    for (i, l) in listeners.iter_mut().enumerate() {
        let got = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match l.next_event().await {
                    Some(Event::Received {
                        payload, author, ..
                    }) => return Some((payload, author)),
                    Some(_) => continue,
                    None => return None,
                }
            }
        })
        .await;
        match got {
            Ok(Some((payload, author))) => println!(
                "  node{i} got from {}: {}",
                name(&nodes, &author),
                String::from_utf8_lossy(&payload)
            ),
            _ => anyhow::bail!("node{i} did not hear the chat line"),
        }
    }

    println!("== summary: every copy verified (BLAKE3) and identical to the original ==");
    for (i, sources) in &per_node {
        let parts: Vec<String> = sources
            .iter()
            .map(|(id, b)| format!("{:.1} MiB from {}", *b as f64 / 1048576.0, name(&nodes, id)))
            .collect();
        println!("  node{i}: {}", parts.join(", "));
    }
    let multi = per_node.values().filter(|s| s.len() > 1).count();
    println!(
        "{multi} of {} downloads used several sources; finished in {:.1?}",
        NODES - 1,
        started.elapsed()
    );
    for n in &nodes {
        n.close().await;
    }
    Ok(())
}
