//! Resume after kill -9: a child process downloads a blob over QUIC on loopback into a
//! filesystem store and is killed with SIGKILL at a random point; a second child resumes
//! from what the store verified. Nothing verified is fetched twice, nothing unverified is
//! kept, and the result equals the original.
//!
//! The child is this same test binary, re-executed with `KITH_SHARE_RESUME_CHILD` set,
//! running [`child_download_process`]. Kill points are drawn from a seeded generator.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kith_core::{SecretKey, Transport};
use kith_share::{DownloadOptions, ProviderLimits, Share, ShareConfig, SharedStore, Ticket};
use kith_store::{FsStore, MemStore, Store, StoreConfig};
use kith_transport::{Endpoint, EndpointConfig};

const CHILD_ENV: &str = "KITH_SHARE_RESUME_CHILD";
const DIR_ENV: &str = "KITH_SHARE_RESUME_DIR";
const TICKET_ENV: &str = "KITH_SHARE_RESUME_TICKET";
const RUNS: u64 = 50;
const SIZE: usize = 3 << 20;

fn data(len: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Not a test of its own: the body of the child process. Without the environment
/// variable it does nothing.
#[test]
fn child_download_process() {
    let (Ok(seed), Ok(dir), Ok(ticket)) = (
        std::env::var(CHILD_ENV),
        std::env::var(DIR_ENV),
        std::env::var(TICKET_ENV),
    ) else {
        return;
    };
    let ticket: Ticket = ticket.parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let key = SecretKey::from_bytes(&[seed.parse::<u8>().unwrap(); 32]);
        let ep = Endpoint::bind(key, EndpointConfig::loopback())
            .await
            .unwrap();
        // Batches far smaller than the blob, so most kills land after some were recorded.
        let mut config = StoreConfig::default();
        config.sync_every_groups = 16;
        let store: SharedStore = Arc::new(FsStore::open(&dir, config).unwrap());
        let t: Arc<dyn Transport> = Arc::new(ep.clone());
        let share = Share::spawn(t, store, None, ShareConfig::default()).unwrap();
        println!("started");
        let stats = share
            .download(&ticket, DownloadOptions::default())
            .finish()
            .await
            .unwrap();
        println!("done {} {}", stats.fetched_bytes, stats.resumed_bytes);
        ep.close().await;
    });
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn child(dir: &std::path::Path, ticket: &str, seed: u64) -> std::process::Child {
    let log = std::fs::File::create(dir.with_extension(format!("{seed}.log"))).unwrap();
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_download_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, (seed % 200 + 30).to_string())
        .env(DIR_ENV, dir)
        .env(TICKET_ENV, ticket)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Reads the child's stdout until a line starting with `prefix`, returning it.
fn wait_line(out: &mut impl BufRead, prefix: &str) -> Option<String> {
    let mut line = String::new();
    loop {
        line.clear();
        if out.read_line(&mut line).ok()? == 0 {
            return None;
        }
        // libtest may print "test name ... " before the child's own output.
        if let Some(at) = line.find(prefix) {
            return Some(line[at..].trim().to_owned());
        }
    }
}

#[test]
fn a_download_killed_at_random_points_resumes_without_refetching() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let blob = data(SIZE);
    // The provider: QUIC on loopback, paced so a download takes about half a second.
    let (ep, ticket) = rt.block_on(async {
        let ep = Endpoint::bind(SecretKey::from_bytes(&[1; 32]), EndpointConfig::loopback())
            .await
            .unwrap();
        let store: SharedStore = Arc::new(MemStore::new(StoreConfig::default()));
        let mut config = ShareConfig::default();
        let mut limits = ProviderLimits::default();
        limits.upload_rate_per_peer = Some(6 << 20);
        config.limits = limits;
        let t: Arc<dyn Transport> = Arc::new(ep.clone());
        let share = Share::spawn(t, store, None, config).unwrap();
        let ticket = share.add_bytes(Bytes::from(blob.clone())).await.unwrap();
        std::mem::forget(share);
        (ep, ticket)
    });
    let ticket_s = ticket.to_string();
    let mut rng = Rng(0x5eed_0001);
    let mut resumed_runs = 0;
    for run in 0..RUNS {
        let base = tempfile::tempdir().unwrap();
        let tmp_path = base.path().join("store");
        let tmp = &tmp_path;
        // First child: killed at a random point after it started.
        let mut c = child(tmp, &ticket_s, run);
        let mut out = BufReader::new(c.stdout.take().unwrap());
        assert!(
            wait_line(&mut out, "started").is_some(),
            "run {run}: child did not start"
        );
        let delay = Duration::from_millis(rng.below(600));
        std::thread::sleep(delay); // the kill point, not a synchronisation
        let finished_first = c.try_wait().unwrap().is_some();
        c.kill().unwrap();
        c.wait().unwrap();
        // Second child: resumes to the end.
        let mut c2 = child(tmp, &ticket_s, run + 1000);
        let mut out2 = BufReader::new(c2.stdout.take().unwrap());
        let done = wait_line(&mut out2, "done").unwrap_or_else(|| {
            let log = std::fs::read_to_string(tmp.with_extension(format!("{}.log", run + 1000)));
            panic!("run {run}: resume failed: {log:?}")
        });
        c2.wait().unwrap();
        let nums: Vec<u64> = done
            .split(' ')
            .skip(1)
            .map(|n| n.parse().unwrap())
            .collect();
        let (fetched, resumed) = (nums[0], nums[1]);
        assert_eq!(fetched + resumed, SIZE as u64, "run {run}: {done}");
        if resumed > 0 {
            resumed_runs += 1;
        }
        let _ = finished_first;
        let store = FsStore::open(tmp, StoreConfig::default()).unwrap();
        assert_eq!(
            store.read_range(ticket.root, 0..SIZE as u64).unwrap(),
            blob,
            "run {run}"
        );
    }
    // Most kill points land mid-download: the resume must have kept verified bytes.
    assert!(
        resumed_runs >= RUNS / 3,
        "only {resumed_runs} of {RUNS} runs resumed anything"
    );
    rt.block_on(ep.close());
}
