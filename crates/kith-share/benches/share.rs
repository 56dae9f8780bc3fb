//! `cargo xtask bench share`: kith-share over QUIC on loopback (127.0.0.1 only), every
//! figure against a baseline measured in the same run. Prints `figure <name> <value>`.
//!
//! * `share.single.ratio`: one provider, one downloader, a seeded blob (default 1 GiB,
//!   `KITH_BENCH_SINGLE_MIB`) fetched into a filesystem store in a temp dir, over a plain
//!   kith stream of the same file (a bi stream on the same kind of endpoints, with a
//!   handler that streams the file) written to a file on the same disk and synced at the
//!   end. Each round runs both, one after the other (`KITH_BENCH_ROUNDS`, default 5
//!   here); the figure is the median of the rounds' ratios. Each round also prints the
//!   CPU time both took (every thread of the process).
//! * `share.multi.ratio_to_sum`: four providers each paced to R bytes/s per peer
//!   (`ProviderLimits::upload_rate_per_peer`, a user-space limiter in the provider;
//!   default R = 20 MiB/s, `KITH_BENCH_RATE_MIB`), one downloader, 256 MiB
//!   (`KITH_BENCH_MULTI_MIB`): throughput / (4 × R). `share.multi.single_source_mib_s`
//!   is one provider at R, for reference.
//! * `share.small_files.ratio_vs_rsync`: many small seeded files (default 50,000 totalling
//!   1 GiB; `KITH_BENCH_SMALL_FILES` scales count and total alike) shared with
//!   `Share::add_dir`, fetched and written out with `Share::export_dir`, over `rsync -a`
//!   from an rsync daemon on 127.0.0.1 started by the bench: kith time / rsync time,
//!   the median over rounds (`KITH_BENCH_SMALL_ROUNDS`, default 3) that alternate which
//!   goes first. Skipped (and said so) without rsync.
//! * `share.peak_rss_mib`: provider and downloader as separate processes (this binary
//!   re-executed with `KITH_SHARE_BENCH_ROLE`), each reporting its own peak RSS (VmHWM)
//!   for a large blob (default 4 GiB, `KITH_BENCH_RSS_MIB`) and a small one (256 MiB,
//!   `KITH_BENCH_RSS_SMALL_MIB`) to show it does not grow with the size.
//!
//! `KITH_BENCH_SHARE_PARTS` (comma-separated: single, multi, small, rss) picks parts.
//! Diagnostic knobs (defaults otherwise): `KITH_BENCH_SYNC_EVERY` (the stores'
//! `sync_every_groups`), `KITH_BENCH_SLACK_MS` (the downloader's scheduler
//! `pipeline_slack`), `KITH_BENCH_SEND_BUFFER_KIB` (the providers' `send_buffer`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use kith_core::net::{
    BoxFuture, BoxRecvStream, BoxSendStream, Conn, Connection, Protocol, ProtocolHandler,
};
use kith_core::{NodeAddr, SecretKey, Transport};
use kith_share::{
    DownloadEvent, DownloadOptions, DownloadStats, Share, ShareConfig, SharedStore, Ticket,
};
use kith_store::{BlobFormat, FsStore, StoreConfig};
use kith_transport::{Endpoint, EndpointConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FILE_PROTO: Protocol = Protocol::from_static("bench/file/1");
const ROLE_ENV: &str = "KITH_SHARE_BENCH_ROLE";
const PATH_ENV: &str = "KITH_SHARE_BENCH_PATH";
const DIR_ENV: &str = "KITH_SHARE_BENCH_DIR";
const TICKET_ENV: &str = "KITH_SHARE_BENCH_TICKET";
/// Upper bound on any one transfer, process or wait.
const TIMEOUT: Duration = Duration::from_secs(900);
const MIB: u64 = 1 << 20;
const CHUNK: usize = 256 * 1024;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Writes `len` seeded pseudo-random bytes to `path`, synced.
fn gen_file(path: &Path, len: u64, seed: u64) -> std::io::Result<()> {
    let mut rng = Rng::new(seed);
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        for c in buf[..n].chunks_mut(8) {
            let v = rng.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    // On disk before anything is timed: background writeback of the source would
    // otherwise compete with the transfers' syncs.
    f.get_ref().sync_all()
}

fn key(seed: u64) -> SecretKey {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&seed.to_le_bytes());
    b[8] = 0x5b;
    SecretKey::from_bytes(&b)
}

/// CPU time this process has used so far (user and system, every thread), from
/// `/proc/self/stat` (in clock ticks of 10 ms); zero where that cannot be read.
fn cpu_used() -> Duration {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name, which is in parentheses.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: u64 = f.get(11)?.parse().ok()?;
            let stime: u64 = f.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / MIB as f64 / d.as_secs_f64()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// A node: QUIC endpoint on loopback, filesystem store in `dir`, share service.
async fn node(seed: u64, dir: &Path, config: ShareConfig) -> anyhow::Result<(Endpoint, Share)> {
    let ep = Endpoint::bind(key(seed), EndpointConfig::loopback()).await?;
    let store: SharedStore = Arc::new(FsStore::open(dir, store_config())?);
    let t: Arc<dyn Transport> = Arc::new(ep.clone());
    let share = Share::spawn(t, store, None, config)?;
    Ok((ep, share))
}

/// The store configuration: the default, unless `KITH_BENCH_SYNC_EVERY` (groups per
/// sync of a verified import; a diagnostic knob) says otherwise.
fn store_config() -> StoreConfig {
    let mut c = StoreConfig::default();
    if let Some(n) = std::env::var("KITH_BENCH_SYNC_EVERY")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        c.sync_every_groups = n;
    }
    c
}

/// The provider's configuration: the default, unless `KITH_BENCH_SEND_BUFFER_KIB` (the
/// provider's per-response buffer; a diagnostic knob) says otherwise.
fn provider_config() -> ShareConfig {
    let mut c = ShareConfig::default();
    if let Some(kib) = std::env::var("KITH_BENCH_SEND_BUFFER_KIB")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
    {
        c.limits.send_buffer = kib * 1024;
    }
    c
}

/// The downloader's configuration: the default, unless `KITH_BENCH_SLACK_MS` (the
/// scheduler's pipeline slack; a diagnostic knob) says otherwise.
fn downloader_config() -> ShareConfig {
    let mut c = ShareConfig::default();
    if let Some(ms) = std::env::var("KITH_BENCH_SLACK_MS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        c.scheduler.pipeline_slack = Duration::from_millis(ms);
    }
    c
}

fn options() -> DownloadOptions {
    let mut o = DownloadOptions::default();
    o.no_discovery = true;
    o.seed = Some(7);
    o
}

/// Syncs every filesystem (`sync(1)`), so a deletion's deferred work is done before the
/// next timing starts.
fn settle() -> anyhow::Result<()> {
    let st = Command::new("sync").status().context("running sync")?;
    ensure!(st.success(), "sync failed: {st}");
    Ok(())
}

/// Downloads `ticket` with a fresh node (key `seed`) into a fresh store in `dir`.
async fn fetch_into(
    seed: u64,
    dir: &tempfile::TempDir,
    ticket: &Ticket,
) -> anyhow::Result<DownloadStats> {
    let (ep, share) = node(seed, dir.path(), downloader_config()).await?;
    let stats = tokio::time::timeout(TIMEOUT, share.download(ticket, options()).finish())
        .await
        .context("download timed out")??;
    ep.close().await;
    Ok(stats)
}

/// [`fetch_into`] a fresh directory under `base`, removed at the end.
async fn fetch(seed: u64, base: &Path, ticket: &Ticket) -> anyhow::Result<DownloadStats> {
    fetch_into(seed, &tempfile::tempdir_in(base)?, ticket).await
}

// ---------------------------------------------------------------------------------
// Baseline: a plain kith stream carrying a file.

struct FileServer {
    path: PathBuf,
}

impl ProtocolHandler for FileServer {
    fn accept_bi(
        &self,
        _c: Conn,
        mut send: BoxSendStream,
        mut recv: BoxRecvStream,
    ) -> BoxFuture<'static, ()> {
        let path = self.path.clone();
        Box::pin(async move {
            let mut req = [0u8; 1];
            if recv.read_exact(&mut req).await.is_err() {
                return;
            }
            let Ok(mut f) = tokio::fs::File::open(&path).await else {
                return;
            };
            let mut buf = vec![0u8; CHUNK];
            loop {
                match f.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => {
                        if send.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
            let _ = send.finish();
        })
    }
}

/// Fetches the file over a plain stream with a fresh endpoint and writes it to `out`,
/// synced. Returns the bytes received.
async fn baseline(seed: u64, server: &NodeAddr, out: &Path) -> anyhow::Result<u64> {
    let ep = Endpoint::bind(key(seed), EndpointConfig::loopback()).await?;
    let n = tokio::time::timeout(TIMEOUT, async {
        let conn = ep.connect(server.clone()).await?;
        let (mut send, mut recv) = conn.open_bi(&FILE_PROTO).await?;
        send.write_all(b"g").await?;
        send.finish()?;
        let mut f = tokio::fs::File::create(out).await?;
        let mut buf = vec![0u8; CHUNK];
        let mut n = 0u64;
        loop {
            let k = recv.read(&mut buf).await?;
            if k == 0 {
                break;
            }
            f.write_all(&buf[..k]).await?;
            n += k as u64;
        }
        f.flush().await?;
        f.sync_all().await?;
        anyhow::Ok(n)
    })
    .await
    .context("baseline timed out")??;
    ep.close().await;
    Ok(n)
}

// ---------------------------------------------------------------------------------

async fn single(tmp: &Path) -> anyhow::Result<()> {
    let size = env_u64("KITH_BENCH_SINGLE_MIB", 1024) * MIB;
    let rounds = env_u64("KITH_BENCH_ROUNDS", 5).clamp(1, 20);
    let base = tempfile::tempdir_in(tmp)?;
    let file = base.path().join("blob.bin");
    gen_file(&file, size, 1)?;
    let prov_dir = base.path().join("provider");
    let (prov_ep, provider) = node(1, &prov_dir, provider_config()).await?;
    prov_ep.mount(FILE_PROTO, Arc::new(FileServer { path: file.clone() }))?;
    let t = Instant::now();
    let ticket = provider.add_file(&file).await?;
    println!(
        "single: provider imported {} MiB (reference) in {:.2} s",
        size / MIB,
        t.elapsed().as_secs_f64()
    );
    let (mut ts, mut tb, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        // Each side's output is removed after its timing (deleting 1 GiB takes 60-200 ms
        // here), and the filesystem synced, so that neither times the other's deletion
        // (ext4 finishes freeing the blocks in its journal thread, later).
        let dir = tempfile::tempdir_in(base.path())?;
        let (start, cpu, refused) = (Instant::now(), cpu_used(), provider.stats().refused);
        let stats = fetch_into(100 + round, &dir, &ticket).await?;
        let refused = provider.stats().refused - refused;
        let (s, s_cpu) = (start.elapsed(), cpu_used().saturating_sub(cpu));
        drop(dir);
        settle()?;
        ensure!(stats.fetched_bytes == size, "share fetched {stats:?}");
        let out = base.path().join("baseline.bin");
        let (start, cpu) = (Instant::now(), cpu_used());
        let n = baseline(200 + round, &prov_ep.node_addr(), &out).await?;
        let (b, b_cpu) = (start.elapsed(), cpu_used().saturating_sub(cpu));
        ensure!(n == size, "baseline received {n} of {size} bytes");
        std::fs::remove_file(&out)?;
        settle()?;
        // CPU time (both ends, every thread) is steadier than wall time on a shared
        // machine: it shows what a change costs even when the machine's speed drifts.
        println!(
            "single round {round}: share {:.0} MiB/s ({:.2} CPU s, {refused} requests refused), plain stream {:.0} MiB/s ({:.2} CPU s)",
            mib_s(size, s),
            s_cpu.as_secs_f64(),
            mib_s(size, b),
            b_cpu.as_secs_f64()
        );
        ratios.push(b.as_secs_f64() / s.as_secs_f64());
        ts.push(s);
        tb.push(b);
    }
    // The ratio is taken within each round, between two runs seconds apart, and the
    // figure is the median of those: the machine's speed drifts by up to 2x over
    // minutes here, and the two medians of a few rounds each can come from different
    // phases of it.
    ratios.sort_by(f64::total_cmp);
    let (s, b) = (mib_s(size, median(ts)), mib_s(size, median(tb)));
    println!("figure share.single.mib_s {s:.0}");
    println!("figure share.single.baseline_mib_s {b:.0}");
    println!("figure share.single.ratio {:.3}", ratios[ratios.len() / 2]);
    prov_ep.close().await;
    Ok(())
}

async fn multi(tmp: &Path) -> anyhow::Result<()> {
    let size = env_u64("KITH_BENCH_MULTI_MIB", 256) * MIB;
    let rate = env_u64("KITH_BENCH_RATE_MIB", 20) * MIB;
    let rounds = env_u64("KITH_BENCH_ROUNDS", 3).clamp(1, 20);
    let base = tempfile::tempdir_in(tmp)?;
    let file = base.path().join("blob.bin");
    gen_file(&file, size, 2)?;
    let mut config = provider_config();
    config.limits.upload_rate_per_peer = Some(rate);
    let mut providers = Vec::new();
    let mut root = None;
    for i in 0..4u64 {
        let (ep, share) = node(10 + i, &base.path().join(format!("p{i}")), config.clone()).await?;
        let t = share.add_file(&file).await?;
        root = Some(t.root);
        providers.push((ep, share));
    }
    let root = root.context("no provider")?;
    let addrs: Vec<NodeAddr> = providers.iter().map(|(ep, _)| ep.node_addr()).collect();
    let all = Ticket::new(root, BlobFormat::Raw, addrs.clone());
    println!(
        "multi: 4 providers, each paced to {} MiB/s per peer by kith-share's user-space \
         limiter (ProviderLimits::upload_rate_per_peer), not by the network",
        rate / MIB
    );
    let mut times = Vec::new();
    for round in 0..rounds {
        let start = Instant::now();
        let stats = fetch(300 + round, base.path(), &all).await?;
        let d = start.elapsed();
        ensure!(stats.fetched_bytes == size, "multi fetched {stats:?}");
        let shares: Vec<String> = stats
            .per_peer
            .values()
            .map(|b| format!("{:.0}", *b as f64 / MIB as f64))
            .collect();
        println!(
            "multi round {round}: {:.1} MiB/s (MiB per provider: {})",
            mib_s(size, d),
            shares.join(" ")
        );
        times.push(d);
    }
    let got = mib_s(size, median(times));
    let sum = 4.0 * rate as f64 / MIB as f64;
    println!("figure share.multi.mib_s {got:.1}");
    println!("figure share.multi.sum_of_limits_mib_s {sum:.0}");
    println!("figure share.multi.ratio_to_sum {:.3}", got / sum);
    let one = Ticket::new(root, BlobFormat::Raw, vec![addrs[0].clone()]);
    let start = Instant::now();
    let stats = fetch(399, base.path(), &one).await?;
    ensure!(
        stats.fetched_bytes == size,
        "single source fetched {stats:?}"
    );
    println!(
        "figure share.multi.single_source_mib_s {:.1}",
        mib_s(size, start.elapsed())
    );
    for (ep, _) in &providers {
        ep.close().await;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------

/// Writes `count` seeded files totalling about `total` bytes under `dir` (500 per
/// subdirectory). Returns the exact total.
fn gen_tree(dir: &Path, count: u64, total: u64) -> std::io::Result<u64> {
    let avg = (total / count.max(1)).max(2);
    let mut rng = Rng::new(3);
    let mut sum = 0;
    let mut buf = Vec::new();
    for i in 0..count {
        let sub = dir.join(format!("d{:03}", i / 500));
        if i % 500 == 0 {
            std::fs::create_dir_all(&sub)?;
        }
        let len = avg / 2 + rng.next() % avg;
        buf.clear();
        while (buf.len() as u64) < len {
            buf.extend_from_slice(&rng.next().to_le_bytes());
        }
        buf.truncate(len as usize);
        std::fs::write(sub.join(format!("f{i:06}.bin")), &buf)?;
        sum += len;
    }
    Ok(sum)
}

/// Files and bytes under `dir`.
fn tree_size(dir: &Path) -> std::io::Result<(u64, u64)> {
    let (mut files, mut bytes) = (0, 0);
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let m = e.metadata()?;
            if m.is_dir() {
                stack.push(e.path());
            } else {
                files += 1;
                bytes += m.len();
            }
        }
    }
    Ok((files, bytes))
}

fn proc_status_field(pid: &str, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// An rsync daemon on 127.0.0.1 serving `src` as module `data`; killed on drop.
struct RsyncDaemon {
    child: Child,
    port: u16,
}

impl Drop for RsyncDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rsync_daemon(conf_dir: &Path, src: &Path) -> anyhow::Result<RsyncDaemon> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let uid = proc_status_field("self", "Uid:").unwrap_or(0);
    let gid = proc_status_field("self", "Gid:").unwrap_or(0);
    let conf = conf_dir.join("rsyncd.conf");
    std::fs::write(
        &conf,
        format!(
            "address = 127.0.0.1\nuse chroot = no\nuid = {uid}\ngid = {gid}\n\
             log file = {}\n[data]\npath = {}\nread only = yes\n",
            conf_dir.join("rsyncd.log").display(),
            src.display()
        ),
    )?;
    let child = Command::new("rsync")
        .args([
            "--daemon",
            "--no-detach",
            "--address",
            "127.0.0.1",
            "--port",
        ])
        .arg(port.to_string())
        .arg("--config")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the rsync daemon")?;
    let mut d = RsyncDaemon { child, port };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(d);
        }
        if let Some(st) = d.child.try_wait()? {
            bail!("the rsync daemon exited: {st}");
        }
        if Instant::now() > deadline {
            bail!("the rsync daemon did not listen within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn have_rsync() -> bool {
    Command::new("rsync")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

async fn small_files(tmp: &Path) -> anyhow::Result<()> {
    let count = env_u64("KITH_BENCH_SMALL_FILES", 50_000).max(1);
    // 50,000 files make 1 GiB; fewer files make proportionally less, unless
    // `KITH_BENCH_SMALL_MIB` sets the total (a diagnostic knob).
    let total = match std::env::var("KITH_BENCH_SMALL_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        Some(mib) => mib * MIB,
        None => (1u64 << 30) * count / 50_000,
    };
    let base = tempfile::tempdir_in(tmp)?;
    let src = base.path().join("src");
    let t = Instant::now();
    let total = gen_tree(&src, count, total)?;
    println!(
        "small files: {count} files, {:.0} MiB, generated in {:.1} s",
        total as f64 / MIB as f64,
        t.elapsed().as_secs_f64()
    );
    let (prov_ep, provider) =
        node(20, &base.path().join("provider"), ShareConfig::default()).await?;
    let t = Instant::now();
    let ticket = provider.add_dir(&src).await?;
    println!(
        "small files: provider add_dir (reference import, hashing) {:.1} s (not timed below)",
        t.elapsed().as_secs_f64()
    );
    let daemon = if have_rsync() {
        Some(rsync_daemon(base.path(), &src)?)
    } else {
        println!("small files: rsync is not installed: share.small_files.ratio_vs_rsync skipped");
        None
    };
    // Rounds alternate which of kith and rsync goes first: the machine's speed drifts
    // and the previous round's copies are deleted just before (ext4 then allocates new
    // inodes more slowly for a while), so each round's ratio compares like with like
    // and the figure is their median. Each turn starts after a sync (see `settle`).
    let rounds = env_u64("KITH_BENCH_SMALL_ROUNDS", 3).clamp(1, 20);
    let mut ratios = Vec::new();
    let mut kith_times = Vec::new();
    for round in 0..rounds {
        let mut kith = Duration::ZERO;
        let mut rsync = None;
        // The copies of this round stay until the round is over.
        let mut copies = Vec::new();
        let order: [bool; 2] = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for kith_turn in order {
            // What the previous turn left to the kernel (rsync's unsynced writes, the
            // last round's deletions) is done before this turn's timing starts, not
            // during it.
            settle()?;
            if kith_turn {
                // kith: download into a fresh store, then export the directory.
                let dir = tempfile::tempdir_in(base.path())?;
                let (ep, share) = node(
                    21 + 2 * round,
                    &dir.path().join("store"),
                    downloader_config(),
                )
                .await?;
                let out = base.path().join(format!("kith-out-{round}"));
                let start = Instant::now();
                let stats =
                    tokio::time::timeout(TIMEOUT, share.download(&ticket, options()).finish())
                        .await
                        .context("download timed out")??;
                let fetched = start.elapsed();
                share.export_dir(stats.root, &out).await?;
                kith = start.elapsed();
                ep.close().await;
                ensure!(tree_size(&out)? == (count, total), "kith export differs");
                println!(
                    "small files round {round}: kith {:.2} s (download {:.2} s, export_dir {:.2} s), {:.0} MiB/s",
                    kith.as_secs_f64(),
                    fetched.as_secs_f64(),
                    (kith - fetched).as_secs_f64(),
                    mib_s(total, kith)
                );
                copies.push(RemoveOnDrop(out));
                copies.push(RemoveOnDrop(dir.keep()));
            } else if let Some(daemon) = &daemon {
                let dest = base.path().join(format!("rsync-out-{round}"));
                let start = Instant::now();
                let mut c = Command::new("rsync")
                    .arg("-a")
                    .arg(format!("rsync://127.0.0.1:{}/data/", daemon.port))
                    .arg(&dest)
                    .spawn()?;
                let status = wait_timeout(&mut c, TIMEOUT)?;
                let t = start.elapsed();
                ensure!(status.success(), "rsync failed: {status}");
                ensure!(tree_size(&dest)? == (count, total), "rsync copy differs");
                println!(
                    "small files round {round}: rsync -a from an rsync daemon on 127.0.0.1 {:.2} s, {:.0} MiB/s",
                    t.as_secs_f64(),
                    mib_s(total, t)
                );
                copies.push(RemoveOnDrop(dest));
                rsync = Some(t);
            }
        }
        kith_times.push(kith);
        if let Some(r) = rsync {
            let ratio = kith.as_secs_f64() / r.as_secs_f64();
            println!("small files round {round}: ratio {ratio:.3}");
            ratios.push(ratio);
        }
        drop(copies);
    }
    prov_ep.close().await;
    drop(daemon);
    println!(
        "figure share.small_files.kith_s {:.2}",
        median(kith_times).as_secs_f64()
    );
    if !ratios.is_empty() {
        ratios.sort_by(f64::total_cmp);
        println!(
            "figure share.small_files.ratio_vs_rsync {:.3}",
            ratios[ratios.len() / 2]
        );
    }
    Ok(())
}

/// Removes a directory tree when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn wait_timeout(c: &mut Child, limit: Duration) -> anyhow::Result<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = c.try_wait()? {
            return Ok(st);
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            let _ = c.wait();
            bail!("child {} timed out", c.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------
// Peak RSS: provider and downloader in their own processes.

fn vmhwm_kib() -> u64 {
    proc_status_field("self", "VmHWM:").unwrap_or(0)
}

/// Child process body. The provider imports `PATH` into a store in `DIR`, prints
/// `ticket <t>` and serves until its stdin closes, then prints `vmhwm <KiB>`. The
/// downloader fetches `TICKET` into a store in `DIR` and prints `done <bytes> <secs>`
/// and `vmhwm <KiB>`.
fn child_role(role: &str) -> anyhow::Result<()> {
    let dir = PathBuf::from(std::env::var(DIR_ENV)?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match role {
        "provider" => {
            let path = PathBuf::from(std::env::var(PATH_ENV)?);
            let (ep, share, ticket) = rt.block_on(async {
                let (ep, share) = node(30, &dir, provider_config()).await?;
                let ticket = share.add_file(&path).await?;
                anyhow::Ok((ep, share, ticket))
            })?;
            println!("ticket {ticket} {}", vmhwm_kib());
            // Serve until the parent closes stdin (bounded by TIMEOUT through the
            // parent, which kills this process on its own timeout).
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
            println!("vmhwm {}", vmhwm_kib());
            rt.block_on(ep.close());
            drop(share);
        }
        "downloader" => {
            let ticket: Ticket = std::env::var(TICKET_ENV)?.parse()?;
            let (stats, d) = rt.block_on(async {
                let (ep, share) = node(31, &dir, downloader_config()).await?;
                let start = Instant::now();
                let mut dl = share.download(&ticket, options());
                // Report bans as they happen (bounded: the download ends, or TIMEOUT).
                let deadline = tokio::time::Instant::now() + TIMEOUT;
                while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, dl.next_event()).await {
                    if let DownloadEvent::PeerBanned { peer, reason } = ev {
                        println!(
                            "banned {} {reason:?} after {:.1} s",
                            peer.fmt_short(),
                            start.elapsed().as_secs_f64()
                        );
                    }
                }
                let stats = tokio::time::timeout_at(deadline, dl.finish())
                    .await
                    .context("download timed out")??;
                let d = start.elapsed();
                ep.close().await;
                anyhow::Ok((stats, d))
            })?;
            println!("done {} {:.3}", stats.fetched_bytes, d.as_secs_f64());
            println!("vmhwm {}", vmhwm_kib());
        }
        other => bail!("unknown role {other:?}"),
    }
    Ok(())
}

/// A child's stdout lines, forwarded by a thread so they can be awaited with a timeout.
fn lines(c: &mut Child) -> anyhow::Result<mpsc::Receiver<String>> {
    let out = c.stdout.take().context("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

fn expect_line(rx: &mpsc::Receiver<String>, prefix: &str) -> anyhow::Result<Vec<String>> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let l = rx
            .recv_timeout(left)
            .with_context(|| format!("no `{prefix}` line from the child"))?;
        if l.starts_with("banned ") {
            println!("rss: downloader: {l}");
        }
        if let Some(rest) = l.strip_prefix(prefix) {
            return Ok(rest.split_whitespace().map(str::to_owned).collect());
        }
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_role(role: &str, envs: &[(&str, &Path)], ticket: Option<&str>) -> anyhow::Result<Killed> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.env(ROLE_ENV, role)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    if let Some(t) = ticket {
        cmd.env(TICKET_ENV, t);
    }
    Ok(Killed(cmd.spawn()?))
}

/// Peak RSS (MiB) of provider and downloader for a blob of `mib` MiB.
fn rss_for(tmp: &Path, mib: u64) -> anyhow::Result<(f64, f64)> {
    let base = tempfile::tempdir_in(tmp)?;
    let file = base.path().join("blob.bin");
    gen_file(&file, mib * MIB, 4)?;
    let pdir = base.path().join("provider");
    let ddir = base.path().join("downloader");
    let mut p = spawn_role("provider", &[(PATH_ENV, &file), (DIR_ENV, &pdir)], None)?;
    let prx = lines(&mut p.0)?;
    let t = expect_line(&prx, "ticket ")?;
    let ticket = t.first().context("empty ticket line")?.clone();
    let import_kib: u64 = t.get(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut d = spawn_role("downloader", &[(DIR_ENV, &ddir)], Some(&ticket))?;
    let drx = lines(&mut d.0)?;
    let done = expect_line(&drx, "done ")?;
    let dkib: u64 = expect_line(&drx, "vmhwm ")?[0].parse()?;
    ensure!(
        done.first().and_then(|s| s.parse::<u64>().ok()) == Some(mib * MIB),
        "downloader fetched {done:?}"
    );
    let secs: f64 = done.get(1).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    drop(p.0.stdin.take());
    let pkib: u64 = expect_line(&prx, "vmhwm ")?[0].parse()?;
    wait_timeout(&mut p.0, Duration::from_secs(30))?;
    wait_timeout(&mut d.0, Duration::from_secs(30))?;
    println!(
        "rss {mib} MiB: download {:.1} s ({:.0} MiB/s); peak RSS provider {:.1} MiB \
         ({:.1} MiB after its import), downloader {:.1} MiB",
        secs,
        mib as f64 / secs.max(1e-9),
        pkib as f64 / 1024.0,
        import_kib as f64 / 1024.0,
        dkib as f64 / 1024.0
    );
    Ok((pkib as f64 / 1024.0, dkib as f64 / 1024.0))
}

fn rss(tmp: &Path) -> anyhow::Result<()> {
    let big = env_u64("KITH_BENCH_RSS_MIB", 4096);
    let small = env_u64("KITH_BENCH_RSS_SMALL_MIB", 256);
    let (sp, sd) = rss_for(tmp, small)?;
    println!("figure share.peak_rss_small.provider_mib {sp:.1}");
    println!("figure share.peak_rss_small.downloader_mib {sd:.1}");
    println!("figure share.peak_rss_small.blob_mib {small}");
    let (bp, bd) = rss_for(tmp, big)?;
    println!("figure share.peak_rss.provider_mib {bp:.1}");
    println!("figure share.peak_rss.downloader_mib {bd:.1}");
    println!("figure share.peak_rss.blob_mib {big}");
    println!("figure share.peak_rss_mib {:.1}", bp.max(bd));
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // RUST_LOG=kith_share=debug (say) logs to stderr, for a run that misbehaves.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    if let Ok(role) = std::env::var(ROLE_ENV) {
        return child_role(&role);
    }
    let parts =
        std::env::var("KITH_BENCH_SHARE_PARTS").unwrap_or_else(|_| "single,multi,small,rss".into());
    let parts: Vec<&str> = parts.split(',').map(str::trim).collect();
    let tmp = std::env::temp_dir();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if parts.contains(&"single") {
        rt.block_on(single(&tmp)).context("single")?;
    }
    if parts.contains(&"multi") {
        rt.block_on(multi(&tmp)).context("multi")?;
    }
    if parts.contains(&"small") {
        rt.block_on(small_files(&tmp)).context("small files")?;
    }
    if parts.contains(&"rss") {
        rss(&tmp).context("peak rss")?;
    }
    Ok(())
}
