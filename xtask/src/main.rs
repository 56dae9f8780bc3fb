//! kith's automation: `cargo xtask <command>`.
//!
//! ```text
//! cargo xtask ci                  codegen --check, fmt --check, clippy -D warnings, tests,
//!                                 rustdoc -D warnings, fuzz targets compile, cargo deny
//!                                 (licenses, bans, sources)
//! cargo xtask codegen [--check]   prost structs from docs/proto/*.proto into each crate's
//!                                 src/gen/ (--check: fail if the committed ones differ)
//! cargo xtask test                the whole test suite (cargo test --workspace)
//! cargo xtask demo                the out-of-the-box demo
//! cargo xtask bench <transport|store|share|site|update|all>
//! cargo xtask sim <dht|gossip|search|share|update|site> [args…]   e.g. `cargo xtask sim dht --nodes 10000`
//! cargo xtask fuzz [SECONDS] [TARGET…]           run fuzz targets briefly (default 30 s each)
//! ```

mod codegen;
mod lab;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(&root),
        Some("codegen") => codegen::run(&root, &args[1..]),
        Some("test") => test(&root),
        Some("demo") => cargo(
            &root,
            &["run", "--release", "-p", "kith", "--example", "demo"],
        ),
        Some("bench") => bench(&root, args.get(1).map(String::as_str).unwrap_or("all")),
        Some("sim") => sim(&root, &args[1..]),
        Some("fuzz") => fuzz(&root, &args[1..]),
        Some("lab") => lab::run(&root, &args[1..]),
        _ => {
            eprintln!("{}", USAGE);
            Err("unknown or missing command".into())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "usage: cargo xtask <ci|codegen [--check]|test|demo|bench <transport|store|share|site|update|all>|sim <dht|gossip|search|share|update|site> [args]|fuzz [secs] [targets]>";

type Result<T = ()> = std::result::Result<T, String>;

fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

fn run(root: &Path, program: &str, args: &[&str], envs: &[(&str, &str)]) -> Result {
    let start = Instant::now();
    eprintln!("$ {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(root)
        .status()
        .map_err(|e| format!("could not run {program}: {e}"))?;
    eprintln!("  ({:.1} s)", start.elapsed().as_secs_f64());
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{program} {}` failed: {status}", args.join(" ")))
    }
}

fn cargo(root: &Path, args: &[&str]) -> Result {
    run(root, "cargo", args, &[])
}

fn test(root: &Path) -> Result {
    // `kith-cli/lab`: kith-lab with kith-transport's test hooks, for the tests that use them.
    cargo(
        root,
        &[
            "test",
            "--workspace",
            "--locked",
            "--features",
            "kith-cli/lab",
        ],
    )
}

fn ci(root: &Path) -> Result {
    // The committed prost structs are what docs/proto/*.proto generates.
    eprintln!("$ cargo xtask codegen --check");
    codegen::run(root, &["--check".to_owned()])?;
    cargo(root, &["fmt", "--all", "--", "--check"])?;
    cargo(
        root,
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--features",
            "kith-cli/lab",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    test(root)?;
    run(
        root,
        "cargo",
        &["doc", "--workspace", "--no-deps", "--locked"],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;
    // The fuzz crate lives outside the workspace; make sure its targets still build.
    cargo(
        root,
        &["check", "--manifest-path", "fuzz/Cargo.toml", "--bins"],
    )?;
    deny(root)
}

fn deny(root: &Path) -> Result {
    let have = Command::new("cargo")
        .args(["deny", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        cargo(root, &["install", "cargo-deny", "--locked"])?;
    }
    cargo(
        root,
        &[
            "deny",
            "--all-features",
            "check",
            "licenses",
            "bans",
            "sources",
        ],
    )
}

fn bench(root: &Path, which: &str) -> Result {
    let transport = || {
        cargo(
            root,
            &["bench", "-p", "kith-transport", "--bench", "transport"],
        )
    };
    let store = || cargo(root, &["bench", "-p", "kith-store", "--bench", "store"]);
    let share = || cargo(root, &["bench", "-p", "kith-share", "--bench", "share"]);
    let site = || cargo(root, &["bench", "-p", "kith-site", "--bench", "site"]);
    let update = || cargo(root, &["bench", "-p", "kith-cli", "--bench", "update"]);
    match which {
        "transport" => transport(),
        "store" => store(),
        "share" => share(),
        "site" => site(),
        "update" => update(),
        "all" => transport()
            .and_then(|_| store())
            .and_then(|_| share())
            .and_then(|_| site())
            .and_then(|_| update()),
        other => Err(format!(
            "unknown benchmark {other:?}: transport, store, share, site, update or all"
        )),
    }
}

fn sim(root: &Path, args: &[String]) -> Result {
    let Some(kind) = args.first() else {
        return Err("usage: cargo xtask sim <dht|gossip|search|share|update|site> [args]".into());
    };
    if !["dht", "gossip", "search", "share", "update", "site"].contains(&kind.as_str()) {
        return Err(format!("unknown simulation {kind:?}"));
    }
    let mut cmd: Vec<&str> = vec!["run", "--release", "-p", "kith-sim", "--"];
    cmd.extend(args.iter().map(String::as_str));
    cargo(root, &cmd)
}

/// Builds the libFuzzer targets with coverage instrumentation and runs each for a while.
/// Uses `cargo fuzz` if installed; otherwise builds with the same flags directly (works
/// on a stable toolchain through RUSTC_BOOTSTRAP, as no nightly can be fetched here).
fn fuzz(root: &Path, args: &[String]) -> Result {
    let secs: u64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(30);
    let skip = usize::from(args.first().is_some_and(|s| s.parse::<u64>().is_ok()));
    let mut targets: Vec<String> = args[skip..].to_vec();
    let fuzz_dir = root.join("fuzz");
    if targets.is_empty() {
        let dir = fuzz_dir.join("fuzz_targets");
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for e in entries.flatten() {
            if let Some(stem) = e.path().file_stem().and_then(|s| s.to_str()) {
                targets.push(stem.to_owned());
            }
        }
        targets.sort();
    }
    let flags = [
        "-Cpasses=sancov-module",
        "-Cllvm-args=-sanitizer-coverage-level=4",
        "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
        "-Cllvm-args=-sanitizer-coverage-pc-table",
        "-Cllvm-args=-sanitizer-coverage-trace-compares",
        "-Cdebug-assertions",
        "-Coverflow-checks",
        "--cfg fuzzing",
    ]
    .join(" ");
    // An explicit --target keeps RUSTFLAGS off build scripts and proc macros.
    let host = host_triple()?;
    let mut build = vec![
        "build",
        "--release",
        "--target-dir",
        "target",
        "--target",
        host.as_str(),
    ];
    for t in &targets {
        build.extend(["--bin", t.as_str()]);
    }
    run(
        &fuzz_dir,
        "cargo",
        &build,
        &[("RUSTFLAGS", &flags), ("RUSTC_BOOTSTRAP", "1")],
    )?;
    let max_time = format!("-max_total_time={secs}");
    for t in &targets {
        let corpus = fuzz_dir.join("corpus").join(t);
        std::fs::create_dir_all(&corpus).map_err(|e| e.to_string())?;
        let bin = fuzz_dir.join("target").join(&host).join("release").join(t);
        let corpus = corpus.to_string_lossy().into_owned();
        run(
            &fuzz_dir,
            &bin.to_string_lossy(),
            &[
                &corpus,
                &max_time,
                "-rss_limit_mb=2048",
                "-print_final_stats=1",
            ],
            &[],
        )?;
    }
    eprintln!("fuzzed {} targets for {secs} s each", targets.len());
    Ok(())
}

fn host_triple() -> Result<String> {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .map_err(|e| format!("rustc -vV: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .ok_or_else(|| "rustc -vV printed no host triple".into())
}
