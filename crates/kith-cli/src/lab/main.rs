//! `kith-lab`: the NAT lab's tool (not the user's `kith`).
//!
//! ```text
//! kith-lab id [--key-file PATH]                 print this node's id (creating the key file)
//! kith-lab relay [--bind ADDR] [--key-file PATH]  offer relaying; prints its address
//! kith-lab peer [--bind ADDR] [--relay NODEADDR] [--stun ADDR]… [--mdns]
//!           [--port-map] [--port-map-protocols pcp,natpmp,upnp]
//!                                           connectivity experiments (see peer.rs);
//!                                           --mdns: find and be found on the LAN
//! kith-lab dht-node [--bind ADDR] [--key-file PATH] [--bootstrap NODEADDR]…
//!                                           run a DHT node controlled by lines on stdin
//! ```
//!
//! `dht-node` prints `addr <NodeAddr>` once it listens, then reads commands, one per
//! line, and answers each with one line (`ok …` or `err …`):
//!
//! ```text
//! bootstrap <NodeAddr>      join through that node; ok <routing table size>
//! put <text>                store an immutable value; ok <key hex>
//! get <key hex>             ok <text>
//! provide <key hex>         announce this node as a provider; ok <stored count>
//! providers <key hex>       ok <node id>,<node id>,…
//! publish                   publish this node's signed address; ok <stored count>
//! resolve <node id>         ok <NodeAddr>
//! table                     ok <routing table size>
//! quit                      exit
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use kith::{EndpointConfig, Node, NodeAddr, NodeId, SecretKey};
use kith_overlay::dht::{Config as DhtConfig, Dht, DhtHandle, Key};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

mod peer;

const USAGE: &str = "usage: kith-lab <id|relay|peer|dht-node> [--key-file PATH] [--bind ADDR] [--bootstrap NODEADDR]...";

struct Args {
    command: String,
    key_file: Option<PathBuf>,
    bind: Option<SocketAddr>,
    bootstrap: Vec<NodeAddr>,
    relay: Option<NodeAddr>,
    stun: Vec<SocketAddr>,
    /// Hidden `--probe-delay-ms`: hold relayed connections on the relay this long before
    /// probing (tests that must see a connection start relayed). Only with the `lab`
    /// feature (kith-transport's `test-util` hooks).
    probe_delay_ms: u64,
    /// `--mdns`: announce on the LAN and resolve bare node ids there (`peer`).
    mdns: bool,
    /// Map the IPv4 socket on the gateway (PCP, NAT-PMP, UPnP-IGD).
    port_map: bool,
    /// Which port-mapping protocols to try (default all).
    port_map_protocols: Option<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut it = std::env::args().skip(1);
    let command = it.next().context(USAGE)?;
    let mut args = Args {
        command,
        key_file: None,
        bind: None,
        bootstrap: Vec::new(),
        relay: None,
        stun: Vec::new(),
        probe_delay_ms: 0,
        mdns: false,
        port_map: false,
        port_map_protocols: None,
    };
    while let Some(flag) = it.next() {
        if flag == "--mdns" {
            args.mdns = true;
            continue;
        }
        if flag == "--port-map" {
            args.port_map = true;
            continue;
        }
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--key-file" => args.key_file = Some(value.into()),
            "--bind" => args.bind = Some(value.parse().context("--bind takes ip:port")?),
            "--bootstrap" => args
                .bootstrap
                .push(value.parse().context("--bootstrap takes a NodeAddr")?),
            "--port-map-protocols" => {
                args.port_map = true;
                args.port_map_protocols = Some(value);
            }
            "--relay" => args.relay = Some(value.parse().context("--relay takes a NodeAddr")?),
            "--stun" => args
                .stun
                .push(value.parse().context("--stun takes ip:port")?),
            "--probe-delay-ms" => {
                args.probe_delay_ms = value.parse().context("--probe-delay-ms takes ms")?
            }
            other => bail!("unknown flag {other}\n{USAGE}"),
        }
    }
    Ok(args)
}

async fn start_node(args: &Args) -> anyhow::Result<(Node, SecretKey)> {
    let key = match &args.key_file {
        Some(path) => kith::layers::transport::load_or_create_secret_key(path)?,
        None => SecretKey::generate(&mut rand::rngs::OsRng),
    };
    let mut config = EndpointConfig::loopback();
    if let Some(bind) = args.bind {
        config.bind_v4 = bind.is_ipv4().then_some(bind);
        config.bind_v6 = bind.is_ipv6().then_some(bind);
    }
    config.relay = args.relay.clone();
    config.stun_servers = args.stun.clone();
    // A test hook of kith-transport (`test-util`), there only with the `lab` feature.
    #[cfg(feature = "lab")]
    {
        config.path_probe_delay = std::time::Duration::from_millis(args.probe_delay_ms);
    }
    #[cfg(not(feature = "lab"))]
    if args.probe_delay_ms != 0 {
        bail!(
            "--probe-delay-ms needs kith-lab built with `--features lab` (`cargo xtask lab` does)"
        );
    }
    if args.port_map {
        let mut pm = kith::layers::transport::portmap::Config::default();
        if let Some(list) = &args.port_map_protocols {
            let names: Vec<&str> = list.split(',').map(str::trim).collect();
            if let Some(bad) = names
                .iter()
                .find(|n| !["pcp", "natpmp", "upnp"].contains(n))
            {
                bail!("--port-map-protocols: unknown protocol {bad:?} (pcp, natpmp, upnp)");
            }
            pm.pcp = names.contains(&"pcp");
            pm.nat_pmp = names.contains(&"natpmp");
            pm.upnp = names.contains(&"upnp");
        }
        config.port_mapping = Some(pm);
    }
    if args.command == "relay" {
        config.relay_server = Some(kith::layers::transport::relay::RelayConfig::default());
    }
    let node = Node::builder()
        .secret_key(key.clone())
        .config(config)
        .spawn()
        .await?;
    Ok((node, key))
}

fn parse_key(hex: &str) -> anyhow::Result<Key> {
    let hex = hex.trim();
    if hex.len() != 64 {
        bail!("a key is 64 hex characters");
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).context("bad hex")?;
    }
    Ok(Key(out))
}

fn hex(key: &Key) -> String {
    key.0.iter().map(|b| format!("{b:02x}")).collect()
}

async fn dht_command(dht: &DhtHandle, line: &str) -> anyhow::Result<String> {
    let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
    Ok(match cmd {
        "bootstrap" => {
            let seed: NodeAddr = rest.parse()?;
            dht.bootstrap_with(vec![seed]).await?;
            dht.routing_table_len().await?.to_string()
        }
        "put" => hex(&dht
            .put_immutable(bytes::Bytes::copy_from_slice(rest.as_bytes()))
            .await?),
        "get" => {
            let v = dht.get_immutable(parse_key(rest)?).await?;
            String::from_utf8_lossy(&v).into_owned()
        }
        "provide" => dht.announce_provider(parse_key(rest)?).await?.to_string(),
        "providers" => {
            let ps = dht.find_providers(parse_key(rest)?).await?;
            ps.iter()
                .map(|p| p.node_id.to_string())
                .collect::<Vec<_>>()
                .join(",")
        }
        "publish" => dht.publish_addr().await?.to_string(),
        "resolve" => {
            let id: NodeId = rest.trim().parse()?;
            dht.resolve_addr(id).await?.to_string()
        }
        "table" => dht.routing_table_len().await?.to_string(),
        other => bail!("unknown command {other:?}"),
    })
}

async fn dht_node(args: Args) -> anyhow::Result<()> {
    let (node, key) = start_node(&args).await?;
    let transport: Arc<dyn kith::Transport> = Arc::new(node.endpoint().clone());
    let dht = Dht::spawn(transport, key, DhtConfig::default(), args.bootstrap.clone())?;
    let mut out = tokio::io::stdout();
    out.write_all(format!("addr {}\n", node.addr()).as_bytes())
        .await?;
    out.flush().await?;
    if !args.bootstrap.is_empty() {
        dht.bootstrap().await?;
    }
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line == "quit" {
            break;
        }
        let reply = match dht_command(&dht, line).await {
            Ok(v) => format!("ok {v}\n"),
            Err(e) => format!("err {}\n", e.to_string().replace('\n', " ")),
        };
        out.write_all(reply.as_bytes()).await?;
        out.flush().await?;
    }
    node.close().await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("KITH_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let args = parse_args()?;
    match args.command.as_str() {
        "id" => {
            let (node, _) = start_node(&args).await?;
            println!("{}", node.id());
            node.close().await;
            Ok(())
        }
        "dht-node" => dht_node(args).await,
        "relay" => relay(args).await,
        "peer" => peer::run(args).await,
        _ => bail!("{USAGE}"),
    }
}

/// `kith relay`: a node that offers relaying; prints its address, runs until stdin closes.
async fn relay(args: Args) -> anyhow::Result<()> {
    let (node, _) = start_node(&args).await?;
    let mut out = tokio::io::stdout();
    out.write_all(format!("addr {}\n", node.addr()).as_bytes())
        .await?;
    out.flush().await?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        if line.trim() == "quit" {
            break;
        }
    }
    node.close().await;
    Ok(())
}
