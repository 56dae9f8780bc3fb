//! `cargo xtask bench update`: a release channel delivered by the swarm, in real
//! processes on loopback.
//!
//! One `kith update publish` and N `kith update follow` processes (default 20). Every
//! node, the publisher included, has the same upload capacity (`--upload-limit`, default
//! 8 MiB/s): the publisher is one machine among its followers, as in `kith-sim update`.
//! All followers start at once. The benchmark waits until every follower has installed
//! the release, checks every installed file byte for byte against the published folder,
//! stops the processes (SIGTERM) and reads what each one uploaded (`uploaded: N bytes`).
//!
//! Prints, one `key value` per line:
//! * `update.origin_upload_ratio`: the publisher's upload over the release's size (goal
//!   ≤ 1.5): the baseline is the release itself, what one follower needs;
//! * `update.single_origin_ratio`: what the publisher would have sent with no swarm (N);
//! * `update.followers_upload_ratio`: what the followers sent each other, over N × size;
//! * `update.all_installed_s` and `update.ratio_to_bound`: time until the last follower
//!   installed, against the fluid lower bound max(S/C, N·S/((N+1)·C)) for size S and
//!   per-node capacity C (start-up of the processes included).
//!
//! Sizes: `KITH_BENCH_FOLLOWERS` (20), `KITH_BENCH_MIB` (32), `KITH_BENCH_RATE_MIB` (8).
//! `KITH_BENCH_VERBOSE=1` passes on every line the processes log (set `RUST_LOG` too).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const KITH: &str = env!("CARGO_BIN_EXE_kith");

/// What a process printed, line by line.
enum Line {
    Out(usize, String),
    Err(usize, String),
}

struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Starts `kith --dir DIR ARGS…`; its output lines go to `tx` tagged with `id`.
fn spawn(id: usize, dir: &Path, args: &[String], tx: &mpsc::Sender<Line>) -> Proc {
    let mut child = Command::new(KITH)
        .arg("--dir")
        .arg(dir)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kith");
    let out = BufReader::new(child.stdout.take().expect("stdout"));
    let err = BufReader::new(child.stderr.take().expect("stderr"));
    let t = tx.clone();
    std::thread::spawn(move || {
        for l in out.lines().map_while(Result::ok) {
            let _ = t.send(Line::Out(id, l));
        }
    });
    let t = tx.clone();
    std::thread::spawn(move || {
        for l in err.lines().map_while(Result::ok) {
            let _ = t.send(Line::Err(id, l));
        }
    });
    Proc { child }
}

/// A release folder of about `bytes` bytes: one large program, a data file, small files.
fn write_release(dir: &Path, bytes: u64) {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut noise = |n: u64| -> Vec<u8> {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    };
    let data = bytes / 8;
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("bin/app", noise(bytes - data - 3 * 1024)),
        ("share/data.pak", noise(data)),
        ("README", noise(1024)),
        ("etc/app.toml", noise(1024)),
        ("VERSION", noise(1024)),
    ];
    for (p, b) in files {
        let path = dir.join(p);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, b).expect("write");
    }
}

/// Every file under `dir`, relative path → BLAKE3 hash.
fn tree(dir: &Path) -> BTreeMap<PathBuf, blake3::Hash> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).expect("prefix").to_path_buf();
                out.insert(rel, blake3::hash(&std::fs::read(&p).expect("read")));
            }
        }
    }
    out
}

fn terminate(p: &Proc) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(p.child.id().to_string())
        .status();
}

fn main() {
    let n = env_num("KITH_BENCH_FOLLOWERS", 20) as usize;
    let mib = env_num("KITH_BENCH_MIB", 32);
    let rate = env_num("KITH_BENCH_RATE_MIB", 8) << 20;
    let tmp = tempfile::tempdir().expect("tmp");
    let release = tmp.path().join("release");
    write_release(&release, mib << 20);
    let want = tree(&release);
    let size: u64 = want
        .keys()
        .map(|p| std::fs::metadata(release.join(p)).expect("meta").len())
        .sum();

    let keys = tmp.path().join("keys");
    let init = Command::new(KITH)
        .args(["update", "init"])
        .arg(&keys)
        .output()
        .expect("kith update init");
    assert!(init.status.success(), "init failed");
    let channel = String::from_utf8(init.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();

    let (tx, rx) = mpsc::channel();
    let rate_arg = rate.to_string();
    let publisher = spawn(
        0,
        &tmp.path().join("publisher"),
        &[
            "update".into(),
            "publish".into(),
            "--channel".into(),
            keys.display().to_string(),
            release.display().to_string(),
            "--version".into(),
            "1".into(),
            "--upload-limit".into(),
            rate_arg.clone(),
            "--bind".into(),
            "127.0.0.1:0".into(),
        ],
        &tx,
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut publisher_addr = None;
    while publisher_addr.is_none() {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Line::Err(0, l)) => {
                publisher_addr = l.strip_prefix("this node: ").map(|a| a.trim().to_owned())
            }
            Ok(_) => {}
            Err(_) => panic!("the publisher did not start"),
        }
    }
    let publisher_addr = publisher_addr.expect("address");
    eprintln!("publisher up at {publisher_addr}; starting {n} followers");

    let started = Instant::now();
    let followers: Vec<Proc> = (1..=n)
        .map(|i| {
            let dir = tmp.path().join(format!("f{i}"));
            spawn(
                i,
                &dir,
                &[
                    "update".into(),
                    "follow".into(),
                    channel.clone(),
                    "--into".into(),
                    dir.join("app").display().to_string(),
                    "--upload-limit".into(),
                    rate_arg.clone(),
                    "--bind".into(),
                    "127.0.0.1:0".into(),
                    "--bootstrap".into(),
                    publisher_addr.clone(),
                ],
                &tx,
            )
        })
        .collect();
    // KITH_BENCH_VERBOSE=1 shows every line the processes log (with RUST_LOG).
    let verbose = std::env::var_os("KITH_BENCH_VERBOSE").is_some();
    let mut installed: BTreeMap<usize, Duration> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    while installed.len() < n {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Line::Out(i, l)) if i > 0 && l.trim() == "installed 1" => {
                installed.insert(i, started.elapsed());
            }
            Ok(Line::Err(i, l)) if verbose || l.contains("refused") || l.contains("Error") => {
                eprintln!("[{i}] {l}")
            }
            Ok(_) => {}
            Err(_) => panic!(
                "only {} of {n} followers installed the release within 600 s",
                installed.len()
            ),
        }
    }
    let all_installed = started.elapsed();
    for i in 1..=n {
        let got = tree(&tmp.path().join(format!("f{i}")).join("app").join("current"));
        assert_eq!(got, want, "follower {i} installed something else");
    }
    eprintln!("all {n} followers installed release 1, byte-identical");

    // Stop everyone and collect what each uploaded.
    terminate(&publisher);
    for f in &followers {
        terminate(f);
    }
    let mut uploaded: BTreeMap<usize, u64> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while uploaded.len() < n + 1 {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Line::Err(i, l)) => {
                if let Some(v) = l.strip_prefix("uploaded: ") {
                    let b = v.trim_end_matches(" bytes").parse().expect("a number");
                    uploaded.insert(i, b);
                }
            }
            Ok(_) => {}
            Err(_) => panic!(
                "{} of {} processes reported their upload",
                uploaded.len(),
                n + 1
            ),
        }
    }
    drop(followers);
    drop(publisher);

    let origin = uploaded[&0];
    let swarm: u64 = uploaded
        .iter()
        .filter(|(i, _)| **i > 0)
        .map(|(_, b)| *b)
        .sum();
    let s = size as f64;
    let c = rate as f64;
    let bound = (s / c).max(n as f64 * s / ((n as f64 + 1.0) * c));
    let mut fin: Vec<f64> = installed.values().map(Duration::as_secs_f64).collect();
    fin.sort_by(f64::total_cmp);
    println!("update.followers {n}");
    println!("update.release_bytes {size}");
    println!("update.rate_per_node_bytes_per_s {rate}");
    println!("update.origin_uploaded_bytes {origin}");
    println!("update.origin_upload_ratio {:.3}", origin as f64 / s);
    println!("update.single_origin_ratio {n}");
    println!(
        "update.followers_upload_ratio {:.3}",
        swarm as f64 / (n as f64 * s)
    );
    println!("update.first_installed_s {:.2}", fin[0]);
    println!("update.median_installed_s {:.2}", fin[fin.len() / 2]);
    println!("update.all_installed_s {:.2}", all_installed.as_secs_f64());
    println!("update.fluid_bound_s {bound:.2}");
    println!(
        "update.ratio_to_bound {:.2}",
        all_installed.as_secs_f64() / bound
    );
}
