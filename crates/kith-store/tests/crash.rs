//! Crash safety of the filesystem store: a child process writes to a store and is killed
//! with SIGKILL at a random point; the parent reopens the store and checks that nothing
//! unverified is visible, that no acknowledged group (stored, then flushed) or import is
//! lost, and that the partial blob resumes from its persisted bitfield.
//!
//! Some imports reference a file in place (external blobs) instead of copying it: a kill
//! during one must leave no blob or a complete one, and never touch the file.
//!
//! Odd runs also give the child a random byte budget after which it aborts itself, so
//! deaths land at random byte counts as well as at random acknowledgements.
//!
//! The child is this same test binary, re-executed with `KITH_STORE_CRASH_CHILD` set,
//! running [`child_writer_process`]. Everything is seeded by the run number.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use common::Rng;
use kith_store::{FsStore, GROUP_SIZE, Hash, ImportMode, MemStore, Store, StoreConfig};

const CHILD_ENV: &str = "KITH_STORE_CRASH_CHILD";
const DIR_ENV: &str = "KITH_STORE_CRASH_DIR";
const BUDGET_ENV: &str = "KITH_STORE_CRASH_BYTES";
const RUNS: u64 = 60;

/// The blobs the child writes: one fetched piecewise as a partial blob, and some imported
/// whole. Fixed, so the parent knows what every hash must contain.
fn blobs() -> Vec<Vec<u8>> {
    vec![
        common::data(77, 24 * GROUP_SIZE as usize + 555),
        common::data(78, 50_000),
        common::data(79, 700_000),
        common::data(80, 1),
    ]
}

/// Bytes the child may still read before it dies on its own (`u64::MAX`: no limit).
static BYTE_BUDGET: AtomicU64 = AtomicU64::new(u64::MAX);

/// Hands out its bytes in small random pieces, so a kill lands mid-stream, and aborts
/// the process (as abruptly as SIGKILL: no destructors, no flushing) once the byte
/// budget is spent.
struct Trickle<'a> {
    data: &'a [u8],
    rng: Rng,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (1 + self.rng.below(6000) as usize)
            .min(buf.len())
            .min(self.data.len());
        if BYTE_BUDGET.fetch_sub(n as u64, Ordering::SeqCst) < n as u64 {
            std::process::abort();
        }
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// Not a test of its own: the body of the child process. Without the environment
/// variable it does nothing.
#[test]
fn child_writer_process() {
    let (Ok(seed), Ok(dir)) = (std::env::var(CHILD_ENV), std::env::var(DIR_ENV)) else {
        return;
    };
    let mut rng = Rng(seed.parse().unwrap());
    if let Ok(budget) = std::env::var(BUDGET_ENV) {
        BYTE_BUDGET.store(budget.parse().unwrap(), Ordering::SeqCst);
    }
    // Automatic syncs every few groups, by time in some runs; acknowledgements come
    // from explicit flushes.
    let mut config = StoreConfig::default();
    config.sync_every_groups = 1 + rng.below(8);
    config.sync_interval =
        std::time::Duration::from_millis(if rng.below(2) == 0 { 1 } else { 3_600_000 });
    let store = FsStore::open(&dir, config).unwrap();
    let blobs = blobs();
    let src = MemStore::default();
    let partial = src.import_bytes(&blobs[0]).unwrap();
    let groups = kith_store::group_count(blobs[0].len() as u64);
    let mut out = std::io::stdout().lock();
    let mut stored = Vec::new();
    for _ in 0..14 {
        let pick = rng.below(8);
        if pick == 0 {
            // A reference import of one of the files beside the store.
            let i = 1 + rng.below(3) as usize;
            let file = std::path::Path::new(&dir).with_file_name(format!("external-{i}"));
            let h = store
                .import_file_with(&file, ImportMode::Reference)
                .unwrap();
            writeln!(out, "ref {h}").unwrap();
            out.flush().unwrap();
        } else if pick < 3 {
            let data = &blobs[1 + rng.below(3) as usize];
            let mut reader = Trickle {
                data,
                rng: Rng(rng.next_u64()),
            };
            let h = store.import_reader(&mut reader).unwrap();
            writeln!(out, "done {h}").unwrap();
            out.flush().unwrap();
        } else {
            let a = rng.below(groups);
            let b = a + 1 + rng.below(6);
            let range = a * GROUP_SIZE..b * GROUP_SIZE;
            let mut wire = Vec::new();
            src.encode_range(partial, range.clone(), &mut wire).unwrap();
            let mut reader = Trickle {
                data: &wire,
                rng: Rng(rng.next_u64()),
            };
            store
                .import_verified(partial, range, &mut reader, &mut |g| {
                    stored.push(g);
                    writeln!(out, "stored {g}").unwrap();
                    out.flush().unwrap();
                })
                .unwrap();
            if rng.below(2) == 0 {
                // Durable once flush returns: only then is a group acknowledged.
                store.flush().unwrap();
                for g in stored.drain(..) {
                    writeln!(out, "ack {g}").unwrap();
                }
                out.flush().unwrap();
            }
        }
    }
    writeln!(out, "finished").unwrap();
}

#[test]
fn killed_writers_leave_a_consistent_store() {
    let blobs = blobs();
    let by_hash: BTreeMap<Hash, &Vec<u8>> = blobs.iter().map(|b| (Hash::of(b), b)).collect();
    let partial = Hash::of(&blobs[0]);
    let exe = std::env::current_exe().unwrap();
    let mut finished_runs = 0;
    let mut acked_total = 0;
    let mut external_done = 0;
    for run in 0..RUNS {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        for (i, b) in blobs.iter().enumerate().skip(1) {
            std::fs::write(dir.path().join(format!("external-{i}")), b).unwrap();
        }
        let mut rng = Rng(0xc4a5_0000 + run);
        // Kill after this many reported events (some runs finish first).
        // Every other run, the child also dies by itself after a random number of bytes.
        let kill_after = rng.below(40);
        let budget = if run % 2 == 1 {
            rng.below(2_000_000)
        } else {
            u64::MAX
        };
        let mut child = Command::new(&exe)
            .env(BUDGET_ENV, budget.to_string())
            .args([
                "child_writer_process",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, (run * 7919 + 1).to_string())
            .env(DIR_ENV, &root)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut acked = BTreeSet::new();
        let mut done = BTreeSet::new();
        let mut events = 0;
        let mut killed = false;
        for line in stdout.lines() {
            let line = line.unwrap();
            if let Some(g) = line.strip_prefix("ack ") {
                acked.insert(g.parse::<u64>().unwrap());
            } else if line.starts_with("stored ") {
                // Present, not yet acknowledged: a kill here may lose it.
            } else if let Some(h) = line.strip_prefix("done ") {
                done.insert(h.parse::<Hash>().unwrap());
            } else if let Some(h) = line.strip_prefix("ref ") {
                done.insert(h.parse::<Hash>().unwrap());
                external_done += 1;
            } else if line == "finished" {
                finished_runs += 1;
            } else {
                continue;
            }
            events += 1;
            if events == kill_after && !killed {
                // SIGKILL: the child gets no chance to clean up.
                child.kill().unwrap();
                killed = true;
            }
        }
        child.wait().unwrap();
        acked_total += acked.len();

        let store = FsStore::open(&root, StoreConfig::default()).unwrap();
        assert!(
            root.join("tmp").read_dir().unwrap().next().is_none(),
            "run {run}"
        );
        // 1. Nothing unverified is visible as verified.
        for info in store.list().unwrap() {
            let data = by_hash
                .get(&info.hash)
                .unwrap_or_else(|| panic!("run {run}: unknown blob"));
            assert_eq!(info.size, data.len() as u64, "run {run}");
            let st = store.status(info.hash).unwrap().unwrap();
            assert_eq!(info.complete, st.bitfield.is_complete());
            for r in st.bitfield.ranges() {
                let (lo, hi) = (r.start * GROUP_SIZE, (r.end * GROUP_SIZE).min(info.size));
                let got = store.read_range(info.hash, lo..hi).unwrap();
                assert_eq!(
                    got,
                    &data[lo as usize..hi as usize],
                    "run {run}: groups {r:?}"
                );
                let mut wire = Vec::new();
                store.encode_range(info.hash, lo..hi, &mut wire).unwrap();
                let (_, bytes) = kith_store::decode_range(info.hash, lo..hi, &wire).unwrap();
                assert_eq!(bytes, got);
            }
        }
        // 2. Nothing acknowledged is lost.
        for h in &done {
            assert!(
                store.status(*h).unwrap().unwrap().bitfield.is_complete(),
                "run {run}"
            );
        }
        let before = store.status(partial).unwrap();
        for g in &acked {
            let st = before
                .as_ref()
                .unwrap_or_else(|| panic!("run {run}: acked blob lost"));
            assert!(
                st.bitfield.get(*g),
                "run {run}: acknowledged group {g} lost"
            );
        }
        // External files are never written to or removed.
        for (i, b) in blobs.iter().enumerate().skip(1) {
            let file = dir.path().join(format!("external-{i}"));
            assert_eq!(&std::fs::read(&file).unwrap(), b, "run {run}");
        }
        // 3. The partial blob resumes: fetch only what the bitfield says is missing.
        let src = MemStore::default();
        src.import_bytes(&blobs[0]).unwrap();
        let n = kith_store::group_count(blobs[0].len() as u64);
        let present = before.as_ref().map_or(0, |s| s.bitfield.count());
        let missing: Vec<u64> = (0..n)
            .filter(|&g| !before.as_ref().is_some_and(|s| s.bitfield.get(g)))
            .collect();
        let mut fetched = BTreeSet::new();
        for g in missing {
            let range = g * GROUP_SIZE..(g + 1) * GROUP_SIZE;
            let mut wire = Vec::new();
            src.encode_range(partial, range.clone(), &mut wire).unwrap();
            store
                .import_verified(partial, range, &mut &wire[..], &mut |g| {
                    fetched.insert(g);
                })
                .unwrap();
        }
        assert!(fetched.len() as u64 >= n - present);
        let st = store.status(partial).unwrap().unwrap();
        assert!(st.bitfield.is_complete(), "run {run}");
        assert_eq!(store.read_range(partial, 0..u64::MAX).unwrap(), blobs[0]);
    }
    // The runs must have exercised both kills and acknowledgements.
    assert!(
        finished_runs < RUNS as usize,
        "every child finished before its kill"
    );
    assert!(acked_total > 0);
    assert!(external_done > 0, "no reference import completed");
}
