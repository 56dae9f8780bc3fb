//! `cargo xtask bench site`: sites served through the HTTP gateway, on loopback over real
//! QUIC (every socket on 127.0.0.1). Prints `figure <name> <value>`.
//!
//! A swarm of 20 kith nodes (`kith::Node` with DHT, gossip, an in-memory store and
//! share; mDNS off, as `loopback()` does), each joined to the DHT through node 0, then
//! re-bootstrapped once so the first nodes know the last. Node 1 publishes a small site
//! (`index.html`, `style.css`, a ~200 KiB image-like `img/photo.jpg` of seeded bytes).
//!
//! * `site.cold_ttfb_ms`: a gateway (`Gateway::bind` on 127.0.0.1:0) on a node whose
//!   `Sites` has never seen the site; the time from sending `GET /` (Host
//!   `<name>.localhost:<port>`, over a raw HTTP/1.1 client on a tokio `TcpStream`) to
//!   the first body byte. It covers resolving the name in the DHT, starting to follow
//!   the site (joining its gossip topic does not wait), fetching the manifest and the
//!   first group of `index.html`. A fresh node per run (default 5 runs); median and max.
//!   `site.cold_full_page_ms`: until `index.html`, then `style.css` and the image (asked
//!   for at once, as a browser does after reading the page) are whole.
//! * `site.baseline_share_fetch_ms`: the same `index.html` bytes fetched by another
//!   fresh node with a plain kith-share download by ticket (the publisher also shares the
//!   file alone with `Share::add_file`; the ticket names its hash, raw, with the
//!   publisher as the only provider; no DHT discovery) — the least a cold gateway has to
//!   do. Median over as many runs, alternating with the gateway runs (each on its own
//!   node). `site.cold_ttfb.ratio`: the medians' ratio.
//! * `site.update_visible_ms`: the first gateway serves v1, and the publisher publishes
//!   v2, v3… (`Sites::publish` with the same key, a changed `index.html`); the time from
//!   calling `publish` until a `GET /` through the gateway returns the new bytes, polling
//!   with a 5 ms sleep between GETs (bounded to 30 s). Median and max over 5 updates;
//!   each update's line also says when the publisher and the gateway switched
//!   (`Sites::events`).
//! * For reference: `site.cold_resolve_ms` (`Sites::resolve` alone on more fresh nodes)
//!   and `site.warm_ttfb_ms` (`GET /` on the warm gateway).
//!
//! Knobs: `KITH_BENCH_SITE_NODES` (default 20), `KITH_BENCH_SITE_RUNS` (cold runs,
//! default 5; needs nodes ≥ 2 + 2 × runs), `KITH_BENCH_SITE_UPDATES` (default 5).
//! `RUST_LOG` turns on tracing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kith::store::BlobFormat;
use kith::{DownloadOptions, Node, SecretKey, ShareConfig, Ticket};
use kith_site::{Gateway, GatewayConfig, Lookup, SiteEvent, SiteName, Sites, SitesConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::broadcast;

type Error = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, Error>;

/// Bound on one HTTP request, download or wait for a site to be whole.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Gateway polling period while waiting for an update.
const POLL: Duration = Duration::from_millis(5);
/// Bound on one update becoming visible.
const UPDATE_LIMIT: Duration = Duration::from_secs(30);
const IMAGE_BYTES: usize = 200 * 1024;
const CSS: &[u8] = b"body { font-family: sans-serif; margin: 2em }\nh1 { color: #235 }\n";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn err(msg: impl Into<String>) -> Error {
    msg.into().into()
}

fn key(tag: u8, i: usize) -> SecretKey {
    let mut b = [0u8; 32];
    b[0] = tag;
    b[1..9].copy_from_slice(&(i as u64).to_le_bytes());
    SecretKey::from_bytes(&b)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn max(v: &[Duration]) -> Duration {
    v.iter().copied().max().unwrap_or_default()
}

/// Seeded bytes that do not compress (like a JPEG's).
fn image_bytes() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(IMAGE_BYTES + 8);
    while out.len() < IMAGE_BYTES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(IMAGE_BYTES);
    out
}

fn index_html(version: usize) -> Vec<u8> {
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>kith bench site</title>\
         <link rel=\"stylesheet\" href=\"/style.css\"></head>\n<body><h1>A site from peers</h1>\
         <p>version {version}</p><img src=\"/img/photo.jpg\" alt=\"photo\"></body></html>\n"
    )
    .into_bytes()
}

/// Writes version `version` of the site to a fresh folder under `base` (each version its
/// own folder: a published folder is imported in place and must not change).
fn write_site(base: &Path, version: usize, image: &[u8]) -> Res<PathBuf> {
    let dir = base.join(format!("v{version}"));
    std::fs::create_dir_all(dir.join("img"))?;
    std::fs::write(dir.join("index.html"), index_html(version))?;
    std::fs::write(dir.join("style.css"), CSS)?;
    std::fs::write(dir.join("img/photo.jpg"), image)?;
    Ok(dir)
}

struct Peer {
    node: Node,
    sites: Sites,
}

/// `n` nodes on loopback, each joined to the DHT through the first.
async fn swarm(n: usize) -> Res<Vec<Peer>> {
    let mut peers: Vec<Peer> = Vec::with_capacity(n);
    for i in 0..n {
        let mut b = Node::builder()
            .secret_key(key(0x51, i))
            .loopback()
            .dht(Default::default())
            .gossip(Default::default())
            .memory_store()
            .share(ShareConfig::default());
        if let Some(first) = peers.first() {
            b = b.bootstrap([first.node.addr()]);
        }
        let node = b.spawn().await?;
        if i > 0 {
            node.dht()?.bootstrap().await?;
        }
        let sites = Sites::new(
            node.share()?.clone(),
            node.dht()?.clone(),
            Some(node.gossip()?.clone()),
            SitesConfig::default(),
        );
        peers.push(Peer { node, sites });
    }
    // The first nodes joined a small network: let them meet the rest.
    for p in &peers[1..] {
        p.node.dht()?.bootstrap().await?;
    }
    Ok(peers)
}

/// One answer of the gateway, timed from sending the request.
struct Answer {
    status: u16,
    body: Vec<u8>,
    /// Until the first body byte (or the end, for an empty body).
    ttfb: Duration,
    /// Until the connection closed.
    total: Duration,
}

/// `GET path` with Host `host` over a fresh connection (`Connection: close`), read to
/// the end.
async fn get(addr: SocketAddr, host: &str, path: &str) -> Res<Answer> {
    tokio::time::timeout(TIMEOUT, get_inner(addr, host, path))
        .await
        .map_err(|_| err(format!("GET {path}: no answer within {TIMEOUT:?}")))?
}

async fn get_inner(addr: SocketAddr, host: &str, path: &str) -> Res<Answer> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let start = Instant::now();
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut head_end = None;
    let mut ttfb = None;
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if head_end.is_none() {
            head_end = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
        }
        if ttfb.is_none() && head_end.is_some_and(|h| buf.len() > h) {
            ttfb = Some(start.elapsed());
        }
    }
    let total = start.elapsed();
    let head_end = head_end.ok_or_else(|| err(format!("GET {path}: no complete head")))?;
    let head = std::str::from_utf8(&buf[..head_end])?;
    let status = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| err(format!("GET {path}: bad status line {head:?}")))?;
    let body = buf[head_end..].to_vec();
    if let Some(len) = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    }) {
        if len != body.len() {
            return Err(err(format!(
                "GET {path}: body of {} bytes, Content-Length {len}",
                body.len()
            )));
        }
    }
    Ok(Answer {
        status,
        body,
        ttfb: ttfb.unwrap_or(total),
        total,
    })
}

fn expect_ok(a: &Answer, want: &[u8], what: &str) -> Res<()> {
    if a.status != 200 || a.body != want {
        return Err(err(format!(
            "{what}: status {}, {} bytes (want 200 and {} bytes)",
            a.status,
            a.body.len(),
            want.len()
        )));
    }
    Ok(())
}

struct Cold {
    gateway: Gateway,
    ttfb: Duration,
    index_whole: Duration,
    page: Duration,
}

/// A gateway on `peer` (never saw the site): `GET /`, then the CSS and the image at once.
async fn cold_gateway(peer: &Peer, name: SiteName, image: &[u8]) -> Res<Cold> {
    let gateway = Gateway::bind(
        peer.sites.clone(),
        SocketAddr::from(([127, 0, 0, 1], 0)),
        GatewayConfig::default(),
    )
    .await?;
    let addr = gateway.local_addr();
    let host = format!("{name}.localhost:{}", addr.port());
    let index = get(addr, &host, "/").await?;
    expect_ok(&index, &index_html(1), "cold GET /")?;
    let (css, img) = tokio::join!(
        get(addr, &host, "/style.css"),
        get(addr, &host, "/img/photo.jpg")
    );
    let (css, img) = (css?, img?);
    expect_ok(&css, CSS, "GET /style.css")?;
    expect_ok(&img, image, "GET /img/photo.jpg")?;
    let page = index.total + css.total.max(img.total);
    // Let the gateway's background fetch of the rest end before anything else is timed.
    if let Some(v) = peer.sites.current(name) {
        tokio::time::timeout(TIMEOUT, v.wait_complete())
            .await
            .map_err(|_| err("the gateway's copy did not complete"))?
            .map_err(err)?;
    }
    Ok(Cold {
        gateway,
        ttfb: index.ttfb,
        index_whole: index.total,
        page,
    })
}

/// A plain kith-share download of `ticket` by `peer`; checks the bytes.
async fn baseline(peer: &Peer, ticket: &Ticket, want: &[u8]) -> Res<Duration> {
    let share = peer.node.share()?;
    let mut o = DownloadOptions::default();
    o.no_discovery = true;
    let start = Instant::now();
    let stats = tokio::time::timeout(TIMEOUT, share.download(ticket, o).finish())
        .await
        .map_err(|_| err("baseline download timed out"))??;
    let d = start.elapsed();
    let got = share
        .store()
        .read_range(ticket.root, 0..want.len() as u64)?;
    if got != want || stats.fetched_bytes != want.len() as u64 {
        return Err(err(format!(
            "baseline fetched {} bytes, read {} (want {})",
            stats.fetched_bytes,
            got.len(),
            want.len()
        )));
    }
    Ok(d)
}

/// When (after `start`) the first `Switched` event arrives on `events`, if within
/// [`UPDATE_LIMIT`].
async fn switched(mut events: broadcast::Receiver<SiteEvent>, start: Instant) -> Option<Duration> {
    let deadline = tokio::time::Instant::from_std(start + UPDATE_LIMIT);
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(SiteEvent::Switched { .. })) => return Some(start.elapsed()),
            Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            _ => return None,
        }
    }
}

fn opt_ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_owned(), |d| format!("{:.1} ms", ms(d)))
}

async fn run() -> Res<()> {
    let nodes = env_usize("KITH_BENCH_SITE_NODES", 20);
    let runs = env_usize("KITH_BENCH_SITE_RUNS", 5).max(1);
    let updates = env_usize("KITH_BENCH_SITE_UPDATES", 5).max(1);
    if nodes < 2 + 2 * runs {
        return Err(err(format!(
            "{runs} cold runs need at least {} nodes (have {nodes})",
            2 + 2 * runs
        )));
    }
    let tmp = tempfile::tempdir()?;
    let image = image_bytes();

    let t = Instant::now();
    let peers = swarm(nodes).await?;
    println!(
        "swarm: {nodes} nodes on 127.0.0.1 (QUIC), DHT + gossip + share, joined in {:.2} s",
        t.elapsed().as_secs_f64()
    );

    // Node 1 publishes v1.
    let publisher = &peers[1];
    let site_key = key(0x5e, 0);
    let v1 = write_site(tmp.path(), 1, &image)?;
    let t = Instant::now();
    let published = publisher.sites.publish(&site_key, &v1).await?;
    let name = published.record.name;
    println!(
        "publish v1: {:.1} ms, record stored on {} DHT nodes; site {name} ({} + {} + {} bytes)",
        ms(t.elapsed()),
        published.stored_on,
        index_html(1).len(),
        CSS.len(),
        image.len()
    );
    let index_hash = {
        let v = publisher
            .sites
            .current(name)
            .ok_or_else(|| err("the publisher does not serve its site"))?;
        match v.lookup("index.html") {
            Lookup::File(_, e) => e.hash()?,
            _ => return Err(err("index.html is not in the published manifest")),
        }
    };
    // The baseline's ticket: the publisher shares the same index.html file on its own (a
    // provider serves only the roots it shares; the site's root is the collection).
    let shared = publisher
        .node
        .share()?
        .add_file(&v1.join("index.html"))
        .await?;
    if shared.root != index_hash || shared.format != BlobFormat::Raw {
        return Err(err("index.html shared alone has another hash"));
    }
    let ticket = Ticket::new(index_hash, BlobFormat::Raw, vec![publisher.node.addr()]);

    // Cold gateways (nodes 2..2+runs) against plain downloads (the next `runs` nodes),
    // alternating which goes first.
    let (mut ttfbs, mut wholes, mut pages, mut bases) = (vec![], vec![], vec![], vec![]);
    let mut gateways = Vec::new();
    for r in 0..runs {
        let gw_peer = &peers[2 + r];
        let base_peer = &peers[2 + runs + r];
        let (cold, base) = if r % 2 == 0 {
            let c = cold_gateway(gw_peer, name, &image).await?;
            (c, baseline(base_peer, &ticket, &index_html(1)).await?)
        } else {
            let b = baseline(base_peer, &ticket, &index_html(1)).await?;
            (cold_gateway(gw_peer, name, &image).await?, b)
        };
        println!(
            "cold run {r}: gateway on node {}: first body byte {:.1} ms, index.html whole \
             {:.1} ms, page with CSS and image {:.1} ms; plain share download on node {}: {:.1} ms",
            2 + r,
            ms(cold.ttfb),
            ms(cold.index_whole),
            ms(cold.page),
            2 + runs + r,
            ms(base)
        );
        ttfbs.push(cold.ttfb);
        wholes.push(cold.index_whole);
        pages.push(cold.page);
        bases.push(base);
        gateways.push(cold.gateway);
    }
    let (ttfb, base) = (median(ttfbs.clone()), median(bases.clone()));
    println!("figure site.cold_ttfb_ms {:.1}", ms(ttfb));
    println!("figure site.cold_ttfb_max_ms {:.1}", ms(max(&ttfbs)));
    println!(
        "figure site.cold_index_whole_ms {:.1}",
        ms(median(wholes.clone()))
    );
    println!(
        "figure site.cold_full_page_ms {:.1}",
        ms(median(pages.clone()))
    );
    println!("figure site.baseline_share_fetch_ms {:.1}", ms(base));
    println!(
        "figure site.baseline_share_fetch_max_ms {:.1}",
        ms(max(&bases))
    );
    println!(
        "figure site.cold_ttfb.ratio {:.2}",
        ttfb.as_secs_f64() / base.as_secs_f64()
    );

    // For reference: resolving the name alone, on nodes that never saw the site.
    let spare = &peers[(2 + 2 * runs).min(peers.len())..];
    let mut resolves = Vec::new();
    for p in spare.iter().take(runs) {
        let start = Instant::now();
        p.sites.resolve(name).await?;
        resolves.push(start.elapsed());
    }
    if !resolves.is_empty() {
        let list: Vec<String> = resolves.iter().map(|d| format!("{:.1}", ms(*d))).collect();
        println!(
            "resolve only (Sites::resolve, a DHT mutable get) on fresh nodes: {} ms",
            list.join(", ")
        );
        println!("figure site.cold_resolve_ms {:.1}", ms(median(resolves)));
    }

    // Updates, watched through the first gateway (it serves v1 already).
    let gw = gateways
        .first()
        .ok_or_else(|| err("no gateway"))?
        .local_addr();
    let gw_sites = &peers[2].sites;
    let host = format!("{name}.localhost:{}", gw.port());
    let before = get(gw, &host, "/").await?;
    expect_ok(&before, &index_html(1), "the gateway before the updates")?;
    // For reference: a warm GET / (the gateway serves the site from its store).
    let mut warm = Vec::new();
    for _ in 0..20 {
        let a = get(gw, &host, "/").await?;
        expect_ok(&a, &index_html(1), "warm GET /")?;
        warm.push(a.ttfb);
    }
    println!("figure site.warm_ttfb_ms {:.2}", ms(median(warm)));
    let mut visible = Vec::new();
    for u in 0..updates {
        let version = 2 + u;
        let dir = write_site(tmp.path(), version, &image)?;
        let want = index_html(version);
        let (sites, k) = (publisher.sites.clone(), site_key.clone());
        let pub_events = publisher
            .sites
            .events(name)
            .ok_or_else(|| err("not followed"))?;
        let gw_events = gw_sites.events(name).ok_or_else(|| err("not followed"))?;
        let start = Instant::now();
        let pub_switch = tokio::spawn(switched(pub_events, start));
        let gw_switch = tokio::spawn(switched(gw_events, start));
        let publish = tokio::spawn(async move {
            let r = sites.publish(&k, &dir).await;
            (r, start.elapsed())
        });
        let (mut polls, mut seen) = (0u32, None);
        while start.elapsed() < UPDATE_LIMIT {
            polls += 1;
            match get(gw, &host, "/").await {
                Ok(a) if a.status == 200 && a.body == want => {
                    seen = Some(start.elapsed());
                    break;
                }
                _ => tokio::time::sleep(POLL).await,
            }
        }
        let (published, publish_took) = publish.await?;
        let published = published?;
        let (pub_switch, gw_switch) = (pub_switch.await?, gw_switch.await?);
        let seen = seen.ok_or_else(|| {
            err(format!(
                "update to v{version} not visible through the gateway within {UPDATE_LIMIT:?}"
            ))
        })?;
        println!(
            "update v{version} (seq {}): visible through the gateway after {:.1} ms ({polls} \
             GETs); publisher switched (imported, DHT read, signed) at {}, gateway switched \
             (pushed, manifest fetched) at {}; publish returned after {:.1} ms",
            published.record.seq,
            ms(seen),
            opt_ms(pub_switch),
            opt_ms(gw_switch),
            ms(publish_took)
        );
        visible.push(seen);
    }
    println!(
        "figure site.update_visible_ms {:.1}",
        ms(median(visible.clone()))
    );
    println!("figure site.update_visible_max_ms {:.1}", ms(max(&visible)));

    drop(gateways);
    for p in &peers {
        p.node.close().await;
    }
    Ok(())
}

fn main() -> Res<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let start = Instant::now();
    rt.block_on(run())?;
    println!("site bench: {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}
