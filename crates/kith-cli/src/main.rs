//! `kith`: share files, fetch them, chat, and run a node — peer to peer.
//!
//! Every command keeps its state in a data directory (`--dir`, `$KITH_DIR`, or
//! `$XDG_DATA_HOME/kith`, `~/.local/share/kith`): the node's key (`key`, with the UDP port
//! beside it in `key.port`), the content store (`store/`) and the configuration
//! (`bootstrap`: one `NodeAddr` per line, peers to join the network through).
//!
//! Output for scripts goes to stdout (the ticket of `kith share`, alone on the first
//! line); everything for people goes to stderr.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use kith::gossip::Event as GossipEvent;
use kith::{
    DownloadEvent, DownloadOptions, EndpointConfig, Node, NodeAddr, ShareConfig, Ticket, TopicId,
};
use tokio::io::AsyncBufReadExt;

mod site;
mod update;

/// Peer-to-peer file sharing and chat. No server needed: every node is client and server.
#[derive(Parser, Debug)]
#[command(name = "kith", version, about, long_about = None)]
struct Cli {
    /// Data directory: key, store and configuration [default: $KITH_DIR, else
    /// $XDG_DATA_HOME/kith or ~/.local/share/kith]
    #[arg(long, global = true, env = "KITH_DIR")]
    dir: Option<PathBuf>,
    /// Log more (repeat for more detail).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print this node's id (creating its key on first use).
    Id,
    /// Share a file or a folder: print its ticket and serve it until Ctrl-C.
    Share(ShareArgs),
    /// Fetch what a ticket names, verifying every byte; resumes where it stopped.
    Get(GetArgs),
    /// Find shares by the words of their names, across the network.
    Search(SearchArgs),
    /// Chat on a topic with everyone who joins it.
    Chat(ChatArgs),
    /// Run a long-lived node: a DHT server that serves its store (and relays, with --relay).
    Node(NodeArgs),
    /// Run a relay for peers that cannot reach each other directly.
    Relay(NetArgs),
    /// Publish or pin a web site served by peers.
    #[command(subcommand)]
    Site(site::SiteCommand),
    /// Serve sites to this machine's browser at http://<name>.localhost:<port>/.
    Gateway(site::GatewayArgs),
    /// Software update channels: signed releases delivered through the swarm.
    #[command(subcommand)]
    Update(update::UpdateCommand),
}

#[derive(Args, Debug, Clone)]
pub(crate) struct NetArgs {
    /// Address to bind [default: 0.0.0.0 on the port saved in the data directory].
    #[arg(long)]
    bind: Option<SocketAddr>,
    /// A peer to join the network through (NodeAddr: <node id>@<ip:port>); repeatable.
    /// Added to the data directory's `bootstrap` file.
    #[arg(long = "bootstrap", value_name = "NODEADDR")]
    bootstrap: Vec<NodeAddr>,
    /// A relay to stay reachable through (NodeAddr of a `kith relay` or `kith node --relay`).
    #[arg(long = "home-relay", value_name = "NODEADDR")]
    relay: Option<NodeAddr>,
}

#[derive(Args, Debug)]
struct ShareArgs {
    /// The file or folder to share. It is read in place: nothing is copied.
    path: PathBuf,
    #[command(flatten)]
    net: NetArgs,
    /// Limit the upload to each peer, in bytes per second.
    #[arg(long, value_name = "BYTES_PER_SEC")]
    upload_rate: Option<u64>,
}

#[derive(Args, Debug)]
struct GetArgs {
    /// The ticket `kith share` printed.
    ticket: String,
    /// Where to write it: a new file (raw blob) or a new folder (collection)
    /// [default: ./<first 12 characters of the hash>].
    #[arg(short, long)]
    output: Option<PathBuf>,
    #[command(flatten)]
    net: NetArgs,
    /// Keep serving what was fetched until Ctrl-C instead of exiting.
    #[arg(long)]
    seed: bool,
}

#[derive(Args, Debug)]
struct SearchArgs {
    /// Words that must all appear in a share's name.
    #[arg(required = true)]
    words: Vec<String>,
    /// Send random walkers instead of flooding (cheaper, finds popular shares).
    #[arg(long)]
    walk: bool,
    /// How long to collect answers, in seconds.
    #[arg(long, default_value_t = 3)]
    wait: u64,
    #[command(flatten)]
    net: NetArgs,
}

#[derive(Args, Debug)]
struct ChatArgs {
    /// The topic: anyone who joins the same name meets here.
    topic: String,
    /// Your nickname [default: the start of your node id].
    #[arg(long)]
    nick: Option<String>,
    /// A peer already on the topic (NodeAddr); repeatable.
    #[arg(long = "peer", value_name = "NODEADDR")]
    peers: Vec<NodeAddr>,
    #[command(flatten)]
    net: NetArgs,
}

#[derive(Args, Debug)]
struct NodeArgs {
    #[command(flatten)]
    net: NetArgs,
    /// Also offer relaying to other peers (with per-peer rate and byte limits).
    #[arg(long = "relay")]
    relay_server: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = format!("error: {e}");
            for cause in e.chain().skip(1) {
                msg.push_str(&format!(": {cause}"));
            }
            eprintln!("{msg}");
            if let Some(hint) = hint_for(&e) {
                eprintln!("hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info,kith=info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// A hint for the errors people run into.
fn hint_for(e: &anyhow::Error) -> Option<&'static str> {
    if e.downcast_ref::<kith::share::TicketError>().is_some() {
        return Some(
            "copy the whole ticket: the line `kith share` printed, starting with \"kith\"",
        );
    }
    match e.downcast_ref::<kith::share::DownloadError>() {
        Some(kith::share::DownloadError::Unreachable { .. }) => Some(
            "is `kith share` still running there? Peers behind NATs need a relay (--home-relay) or a common bootstrap peer",
        ),
        Some(kith::share::DownloadError::NoProviders(_)) => {
            Some("the ticket names no provider: ask for a ticket with one, or pass --bootstrap")
        }
        _ => None,
    }
}

fn data_dir(cli_dir: &Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(d) = cli_dir {
        return Ok(d.clone());
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("kith"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("no data directory: set --dir or KITH_DIR (HOME is not set)")?;
    Ok(PathBuf::from(home).join(".local/share/kith"))
}

/// The data directory's bootstrap list, plus `extra` (which is saved into it).
fn bootstrap(dir: &Path, extra: &[NodeAddr]) -> anyhow::Result<Vec<NodeAddr>> {
    let file = dir.join("bootstrap");
    let mut peers: Vec<NodeAddr> = match std::fs::read_to_string(&file) {
        Ok(text) => text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| match l.parse() {
                Ok(a) => Some(a),
                Err(e) => {
                    eprintln!("warning: {}: ignoring {l:?}: {e}", file.display());
                    None
                }
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    let mut changed = false;
    for a in extra {
        if !peers.iter().any(|p| p.node_id == a.node_id) {
            peers.push(a.clone());
            changed = true;
        }
    }
    if changed {
        let text: String = peers.iter().map(|p| format!("{p}\n")).collect();
        std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
    }
    Ok(peers)
}

pub(crate) struct Layers {
    dht: bool,
    gossip: bool,
    share: Option<ShareConfig>,
    relay_server: bool,
    /// Keyword search, with this query timeout.
    search: Option<Duration>,
}

pub(crate) async fn start(
    dir: &Path,
    net: &NetArgs,
    layers: Layers,
    extra_bootstrap: &[NodeAddr],
) -> anyhow::Result<Node> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut peers = bootstrap(dir, &net.bootstrap)?;
    for p in extra_bootstrap {
        if !peers.iter().any(|q| q.node_id == p.node_id) {
            peers.push(p.clone());
        }
    }
    let mut config = EndpointConfig::default();
    config.relay = net.relay.clone();
    if layers.relay_server {
        config.relay_server = Some(kith::layers::transport::relay::RelayConfig::default());
    }
    let mut b = Node::builder()
        .key_file(dir.join("key"))
        .config(config)
        .bootstrap(peers.clone());
    if let Some(bind) = net.bind {
        b = b.bind(bind);
    }
    if layers.dht {
        b = b.dht(Default::default());
    }
    if layers.gossip {
        b = b.gossip(Default::default());
    }
    if let Some(sc) = layers.share {
        b = b.store(dir.join("store")).share(sc);
    }
    if let Some(wait) = layers.search {
        b = b.search(search_config(wait));
    }
    let node = b.spawn().await.context("starting the node")?;
    if layers.dht && !peers.is_empty() {
        if let Ok(dht) = node.dht() {
            match tokio::time::timeout(Duration::from_secs(10), dht.bootstrap()).await {
                Ok(Ok(n)) => tracing::info!("joined the DHT: {n} peers near us"),
                Ok(Err(e)) => eprintln!("warning: joining the DHT failed: {e}"),
                Err(_) => eprintln!("warning: joining the DHT timed out"),
            }
            let _ = dht.publish_addr().await;
        }
    }
    Ok(node)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let dir = data_dir(&cli.dir)?;
    match cli.command {
        Command::Id => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let key = kith::layers::transport::load_or_create_secret_key(&dir.join("key"))?;
            println!("{}", key.node_id());
            Ok(())
        }
        Command::Share(a) => share(&dir, a).await,
        Command::Site(c) => site::run(&dir, c).await,
        Command::Gateway(a) => site::gateway(&dir, a).await,
        Command::Update(c) => update::run(&dir, c).await,
        Command::Get(a) => get(&dir, a).await,
        Command::Chat(a) => chat(&dir, a).await,
        Command::Search(a) => search(&dir, a).await,
        Command::Node(a) => {
            let node = start(
                &dir,
                &a.net,
                Layers {
                    dht: true,
                    gossip: false,
                    share: Some(ShareConfig::default()),
                    relay_server: a.relay_server,
                    search: Some(Duration::from_secs(3)),
                },
                &[],
            )
            .await?;
            println!("{}", node.addr());
            eprintln!(
                "node {} running{}; Ctrl-C to stop",
                node.id().fmt_short(),
                if a.relay_server { ", relaying" } else { "" }
            );
            wait_ctrl_c().await;
            node.close().await;
            Ok(())
        }
        Command::Relay(net) => {
            let node = start(
                &dir,
                &net,
                Layers {
                    dht: false,
                    gossip: false,
                    share: None,
                    relay_server: true,
                    search: None,
                },
                &[],
            )
            .await?;
            println!("{}", node.addr());
            eprintln!("relay {} running; Ctrl-C to stop", node.id().fmt_short());
            wait_ctrl_c().await;
            node.close().await;
            Ok(())
        }
    }
}

/// Waits for Ctrl-C (SIGINT) or, on Unix, SIGTERM: both end a serving command cleanly.
pub(crate) async fn wait_ctrl_c() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

async fn share(dir: &Path, a: ShareArgs) -> anyhow::Result<()> {
    let meta =
        std::fs::metadata(&a.path).with_context(|| format!("cannot share {}", a.path.display()))?;
    let mut sc = ShareConfig::default();
    if let Some(rate) = a.upload_rate {
        let mut limits = kith::share::ProviderLimits::default();
        limits.upload_rate_per_peer = Some(rate);
        sc.limits = limits;
    }
    let node = start(
        dir,
        &a.net,
        Layers {
            dht: true,
            gossip: false,
            share: Some(sc),
            relay_server: false,
            search: Some(Duration::from_secs(3)),
        },
        &[],
    )
    .await?;
    let share = node.share()?;
    let started = Instant::now();
    let ticket = if meta.is_dir() {
        share.add_dir(&a.path).await?
    } else {
        share.add_file(&a.path).await?
    };
    // The ticket alone on stdout's first line, for scripts.
    let mut out = std::io::stdout();
    writeln!(out, "{ticket}")?;
    out.flush()?;
    eprintln!(
        "sharing {} ({}) as {}, imported in place in {:.1?}; serving until Ctrl-C",
        a.path.display(),
        if meta.is_dir() { "folder" } else { "file" },
        ticket.root,
        started.elapsed()
    );
    eprintln!("fetch it with: kith get {ticket}");
    eprintln!("this node: {}", node.addr());
    // Findable by the words of its name.
    let name = a
        .path
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| a.path.display().to_string());
    let size = if meta.is_dir() {
        dir_size(&a.path)
    } else {
        meta.len()
    };
    if let Ok(search) = node.search() {
        let item = kith::search::Item::new(name, size, *ticket.root.as_bytes())
            .with_payload(ticket.to_string().into_bytes());
        if let Err(e) = search.share(item).await {
            eprintln!("warning: not announced to search: {e}");
        }
    }
    wait_ctrl_c().await;
    node.close().await;
    Ok(())
}

/// Bytes of the regular files under `dir` (for the search listing).
fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map_or(0, |m| m.len()),
                _ => {}
            }
        }
    }
    total
}

async fn search(dir: &Path, a: SearchArgs) -> anyhow::Result<()> {
    let node = start(
        dir,
        &a.net,
        Layers {
            dht: true,
            gossip: false,
            share: None,
            relay_server: false,
            search: Some(Duration::from_secs(a.wait.clamp(1, 60))),
        },
        &[],
    )
    .await?;
    let search = node.search()?;
    // The neighbour feed runs at start; make sure the bootstrap peers are in.
    for p in bootstrap(dir, &[])? {
        let _ = search.add_neighbor(p).await;
    }
    if search.neighbors().await?.is_empty() {
        bail!(
            "no peer to ask: pass --bootstrap <NodeAddr> (a `kith node` or `kith share` prints one)"
        );
    }
    let words = a.words.join(" ");
    let mode = if a.walk {
        kith::search::Mode::Walk
    } else {
        kith::search::Mode::Flood
    };
    let hits = search.query_all(&words, mode).await?;
    let mut seen = std::collections::HashSet::new();
    let mut n = 0;
    for h in hits {
        if !seen.insert(h.item.hash) {
            continue;
        }
        n += 1;
        let ticket = String::from_utf8_lossy(&h.item.payload);
        println!("{}\t{}\t{}", h.item.name, h.item.size, ticket);
        eprintln!(
            "  {} ({}) from {}",
            h.item.name,
            human(h.item.size as f64),
            h.provider.node_id.fmt_short()
        );
    }
    eprintln!("{n} result(s) for {words:?}");
    node.close().await;
    if n == 0 {
        bail!("nothing found for {words:?}");
    }
    Ok(())
}

fn human(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes.max(0.0);
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

async fn get(dir: &Path, a: GetArgs) -> anyhow::Result<()> {
    let ticket: Ticket = a.ticket.parse().context("invalid ticket")?;
    let node = start(
        dir,
        &a.net,
        Layers {
            dht: true,
            gossip: false,
            share: Some(ShareConfig::default()),
            relay_server: false,
            search: None,
        },
        // The ticket's providers double as entry points to the DHT.
        &[],
    )
    .await?;
    if let Ok(dht) = node.dht() {
        if !ticket.providers.is_empty() {
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                dht.bootstrap_with(ticket.providers.clone()),
            )
            .await;
        }
    }
    let share = node.share()?;
    let mut dl = share.download(&ticket, DownloadOptions::default());
    let tty = std::io::stderr().is_terminal();
    let bar = if tty {
        let bar = indicatif::ProgressBar::new(0);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.enable_steady_tick(Duration::from_millis(200));
        Some(bar)
    } else {
        None
    };
    let mut last_line = Instant::now() - Duration::from_secs(10);
    while let Some(ev) = dl.next_event().await {
        match ev {
            DownloadEvent::Started {
                total_bytes,
                resumed_bytes,
                blobs,
            } => {
                if let Some(bar) = &bar {
                    bar.set_length(total_bytes);
                    bar.set_position(resumed_bytes);
                }
                eprintln!(
                    "fetching {} in {} blob(s){}",
                    human(total_bytes as f64),
                    blobs,
                    if resumed_bytes > 0 {
                        format!(", {} already here", human(resumed_bytes as f64))
                    } else {
                        String::new()
                    }
                );
            }
            DownloadEvent::Progress(p) => {
                if let Some(bar) = &bar {
                    bar.set_length(p.total_bytes);
                    bar.set_position(p.verified_bytes);
                    bar.set_message(format!(
                        "{} peers ({} active)",
                        p.peers_known, p.peers_active
                    ));
                } else if last_line.elapsed() >= Duration::from_millis(500)
                    || p.verified_bytes == p.total_bytes
                {
                    last_line = Instant::now();
                    eprintln!(
                        "progress {}/{} bytes, {}/s, {} peers, eta {}",
                        p.verified_bytes,
                        p.total_bytes,
                        human(p.rate),
                        p.peers_known,
                        p.eta.map_or("?".into(), |d| format!("{:.0?}", d)),
                    );
                }
            }
            DownloadEvent::PeerConnected(id) => {
                tracing::info!("provider {} connected", id.fmt_short())
            }
            DownloadEvent::PeerBanned { peer, reason } => {
                eprintln!("provider {} banned: {reason:?}", peer.fmt_short());
            }
        }
    }
    let stats = dl.finish().await?;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let short: String = ticket.root.to_string().chars().take(12).collect();
    let out = a.output.unwrap_or_else(|| PathBuf::from(short));
    match ticket.format {
        kith::store::BlobFormat::Collection => share
            .export_dir(ticket.root, &out)
            .await
            .with_context(|| format!("writing {}", out.display()))?,
        kith::store::BlobFormat::Raw => {
            let store = node.store()?.clone();
            let root = ticket.root;
            let target = out.clone();
            tokio::task::spawn_blocking(move || {
                store.export_file_with(root, &target, kith::store::ImportMode::Reference)
            })
            .await
            .map_err(|e| anyhow!("export: {e}"))?
            .with_context(|| format!("writing {}", out.display()))?;
        }
    }
    eprintln!(
        "verified {} in {:.1?}: fetched {} this run, {} were already here; written to {}",
        human(stats.total_bytes as f64),
        stats.elapsed,
        human(stats.fetched_bytes as f64),
        human(stats.resumed_bytes as f64),
        out.display()
    );
    for (peer, bytes) in &stats.per_peer {
        eprintln!("  {} from {}", human(*bytes as f64), peer.fmt_short());
    }
    println!(
        "fetched {} resumed {}",
        stats.fetched_bytes, stats.resumed_bytes
    );
    if a.seed {
        eprintln!("seeding until Ctrl-C");
        wait_ctrl_c().await;
    }
    node.close().await;
    Ok(())
}

/// Chat payloads: a kind byte, the nickname, a NUL, the text.
fn chat_msg(kind: u8, nick: &str, text: &str) -> Vec<u8> {
    let mut v = vec![kind];
    v.extend_from_slice(nick.as_bytes());
    v.push(0);
    v.extend_from_slice(text.as_bytes());
    v
}

fn parse_chat(payload: &[u8]) -> Option<(u8, String, String)> {
    let (&kind, rest) = payload.split_first()?;
    let nul = rest.iter().position(|b| *b == 0)?;
    let nick: String = String::from_utf8_lossy(&rest[..nul])
        .chars()
        .filter(|c| !c.is_control())
        .take(32)
        .collect();
    let text: String = String::from_utf8_lossy(&rest[nul + 1..])
        .chars()
        .filter(|c| !c.is_control())
        .take(2000)
        .collect();
    Some((kind, nick, text))
}

async fn chat(dir: &Path, a: ChatArgs) -> anyhow::Result<()> {
    let node = start(
        dir,
        &a.net,
        Layers {
            dht: false,
            gossip: true,
            share: None,
            relay_server: false,
            search: None,
        },
        &[],
    )
    .await?;
    let nick = a.nick.clone().unwrap_or_else(|| node.id().fmt_short());
    if nick.is_empty() || nick.len() > 32 || nick.contains('\0') {
        bail!("a nickname is 1 to 32 bytes");
    }
    let mut peers = a.peers.clone();
    peers.extend(bootstrap(dir, &[])?);
    let topic = node
        .gossip()?
        .join(TopicId::from_name(&a.topic), peers)
        .await
        .context("joining the topic")?;
    println!("joined #{} as {nick}; others join with:", a.topic);
    println!("  kith chat {} --peer {}", a.topic, node.addr());
    let (sender, mut events) = topic.split();
    sender.broadcast(chat_msg(b'J', &nick, "")).await?;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut nicks: std::collections::HashMap<kith::NodeId, String> = Default::default();
    loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(l)) => {
                    let l = l.trim_end().to_owned();
                    if l.is_empty() { continue; }
                    println!("{nick}: {l}");
                    if let Err(e) = sender.broadcast(chat_msg(b'M', &nick, &l)).await {
                        eprintln!("not sent: {e}");
                    }
                }
                _ => break,
            },
            ev = events.next_event() => match ev {
                Some(GossipEvent::Received { payload, author, .. }) => match parse_chat(&payload) {
                    Some((b'J', who, _)) if nicks.insert(author, who.clone()).is_none() => {
                        println!("* {who} joined");
                    }
                    Some((b'L', who, _)) if nicks.remove(&author).is_some() => {
                        println!("* {who} left");
                    }
                    Some((b'M', who, text)) => {
                        if nicks.insert(author, who.clone()).is_none() {
                            println!("* {who} joined");
                        }
                        println!("{who}: {text}");
                    }
                    _ => {}
                },
                // A direct neighbour that went away without saying goodbye (or whose
                // goodbye was lost).
                Some(GossipEvent::NeighborDown(id)) => {
                    if let Some(who) = nicks.remove(&id) {
                        println!("* {who} left");
                    }
                }
                Some(_) => {}
                None => break,
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        sender.broadcast(chat_msg(b'L', &nick, "")),
    )
    .await;
    node.close().await;
    Ok(())
}

/// The search layer's configuration with `wait` as the query timeout.
fn search_config(wait: Duration) -> kith::search::Config {
    let mut c = kith::search::Config::default();
    c.query_timeout = wait;
    c
}
