//! kill -9 at random points of installs: afterwards `current` is always one complete
//! release — the one before or the one being installed — never a mix.
//!
//! The parent re-runs this test binary as a child (`crash_child_installs_forever`, which
//! does nothing unless `KITH_UPDATE_CRASH_DIR` is set); the child installs version after
//! version until the parent kills it at a seeded random moment.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kith_core::SecretKey;
use kith_store::collection;
use kith_store::{MemStore, StoreConfig};
use kith_update::metadata::{FileEntry, Release, ReleaseBody};
use kith_update::{Bundle, ChannelKeys, Installer};
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const RUNS: u64 = 60;

fn keys() -> ChannelKeys {
    ChannelKeys::generate(&mut StdRng::seed_from_u64(5), (1, 1), (1, 1)).expect("keys")
}

/// Release `v`: 24 files of 48 KiB whose bytes depend on `v`, so a mix would show.
fn write_release(dir: &Path, v: u64) {
    for i in 0..24u64 {
        let path = dir.join(format!("lib/part-{i:02}.bin"));
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        let bytes: Vec<u8> = (0..48 * 1024u64)
            .map(|j| (v.wrapping_mul(131) ^ i.wrapping_mul(7) ^ j) as u8)
            .collect();
        std::fs::write(path, bytes).expect("write");
    }
    std::fs::write(dir.join("VERSION"), v.to_string()).expect("write");
}

#[test]
fn crash_child_installs_forever() {
    let Some(target) = std::env::var_os("KITH_UPDATE_CRASH_DIR") else {
        return; // Only the crash test's child process does anything here.
    };
    let keys = keys();
    let store = MemStore::new(StoreConfig::default());
    let installer = Installer::new(&target).expect("installer");
    let mut v = installer.current().unwrap_or(0);
    let src = tempfile::tempdir().expect("tmp");
    loop {
        v += 1;
        let dir = src.path().join(v.to_string());
        write_release(&dir, v);
        let root = collection::import_dir(&store, &dir).expect("import");
        let m = collection::read_manifest(&store, root).expect("manifest");
        let body = ReleaseBody {
            channel: keys.channel().root.as_bytes().to_vec(),
            version: v,
            expires_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock")
                .as_millis() as u64
                + 3_600_000,
            collection: root.as_bytes().to_vec(),
            files: m
                .entries
                .iter()
                .map(|e| FileEntry {
                    path: e.path.clone(),
                    size: e.size,
                    hash: e.hash.clone(),
                    executable: e.executable,
                })
                .collect(),
            label: String::new(),
        };
        let signers: Vec<&SecretKey> = keys.release.iter().collect();
        let bundle = Bundle {
            roots: keys.roots.clone(),
            release: Some(Release::sign(&body, &signers)),
        };
        let bytes = bundle.encode_to_vec();
        let verified = bundle
            .verify(&keys.channel(), 0, installer.current())
            .expect("verify");
        installer
            .install(&store, &verified.release, &bytes)
            .expect("install");
        println!("installed {v}");
    }
}

#[test]
fn kill_9_during_installs_leaves_one_whole_release() {
    let tmp = tempfile::tempdir().expect("tmp");
    let target = tmp.path().join("app");
    let exe = std::env::current_exe().expect("test binary");
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut last: Option<u64> = None;
    let mut distinct = std::collections::BTreeSet::new();
    for run in 0..RUNS {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child_installs_forever",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("KITH_UPDATE_CRASH_DIR", &target)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        // A random moment within the first few installs.
        let at = Duration::from_millis(rng.gen_range(5..400));
        let start = Instant::now();
        while start.elapsed() < at {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("run {run}: the child exited by itself: {status}");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        child.kill().expect("kill -9");
        child.wait().expect("reap");
        let installer = Installer::new(&target).expect("installer");
        let now = installer
            .verify_current()
            .unwrap_or_else(|e| panic!("run {run}: current is not a whole release: {e}"));
        // Versions never go back, and `current`'s files are its own.
        assert!(now >= last, "run {run}: {now:?} after {last:?}");
        if let Some(v) = now {
            let text =
                std::fs::read_to_string(installer.current_path().join("VERSION")).expect("VERSION");
            assert_eq!(text, v.to_string(), "run {run}");
            distinct.insert(v);
        }
        last = now;
    }
    // The kills landed at different points: several versions were reached.
    assert!(distinct.len() > 5, "only {distinct:?} reached");
}
