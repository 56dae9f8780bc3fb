//! Store benchmark: prints `figure <name> <value>` lines.
//!
//! ```text
//! cargo bench -p kith-store --bench store            # 1 GiB
//! KITH_STORE_BENCH_MIB=64 cargo bench -p kith-store --bench store   # quick run
//! ```
//!
//! - `store.import.ratio`: throughput of `FsStore::import_file` (hash, outboard, copy,
//!   fsync) over single-threaded `blake3::Hasher` reading the same file, same run.
//! - `store.import.copy_ratio`: the same import throughput over a plain durable copy of
//!   the file (`std::fs::copy` + fsync): how close the import gets to the disk.
//! - `store.outboard_hash.ratio`: computing hash and outboard of 64 MiB in memory over
//!   `blake3::hash` of the same bytes (the CPU part of an import).
//! - `store.outboard.ratio`: outboard bytes / data bytes.
//! - `store.range_verify.mib_per_s`: verifying 1 MiB encoded ranges at random offsets.
//! - `store.import.peak_rss_mib`: peak resident memory during the import (the peak is
//!   reset through /proc/self/clear_refs first where the kernel allows it).

use std::io::{Read, Write};
use std::time::Instant;

use kith_store::{FsStore, Store, StoreConfig};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn status_kib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn blake3_file(path: &std::path::Path) -> std::io::Result<(blake3::Hash, f64)> {
    let t = Instant::now();
    let mut f = std::fs::File::open(path)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok((h.finalize(), t.elapsed().as_secs_f64()))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.strip_prefix("--mib=").and_then(|v| v.parse().ok()))
        .or_else(|| std::env::var("KITH_STORE_BENCH_MIB").ok()?.parse().ok())
        .unwrap_or(1024);
    let size = mib << 20;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("input");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let mut rng = Rng(0x6b69_7468_2d62_656e);
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..mib {
            for c in buf.chunks_mut(8) {
                c.copy_from_slice(&rng.next().to_le_bytes());
            }
            f.write_all(&buf)?;
        }
        f.flush()?;
        f.get_ref().sync_all()?;
    }
    println!("input: {mib} MiB in {}", dir.path().display());

    // Baseline and import, twice each, interleaved; best of each.
    let mut base = f64::MAX;
    let mut copy = f64::MAX;
    let mut import = f64::MAX;
    let mut peak_mib = 0.0f64;
    let mut outboard_bytes = 0;
    let mut hash = None;
    for round in 0..2 {
        let (want, t) = blake3_file(&path)?;
        base = base.min(t);
        let copy_path = dir.path().join("copy");
        let t = Instant::now();
        std::fs::copy(&path, &copy_path)?;
        std::fs::File::open(&copy_path)?.sync_all()?;
        copy = copy.min(t.elapsed().as_secs_f64());
        std::fs::remove_file(&copy_path)?;
        let root = dir.path().join(format!("store{round}"));
        let store = FsStore::open(&root, StoreConfig::default())?;
        let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
        let before = status_kib("VmRSS:").unwrap_or(0);
        let t = Instant::now();
        let h = store.import_file(&path)?;
        import = import.min(t.elapsed().as_secs_f64());
        let hwm = status_kib("VmHWM:").unwrap_or(0);
        let peak = if reset {
            hwm
        } else {
            hwm.saturating_sub(before)
        };
        peak_mib = peak_mib.max(peak as f64 / 1024.0);
        assert_eq!(
            h.as_bytes(),
            want.as_bytes(),
            "import hash differs from blake3"
        );
        outboard_bytes = std::fs::metadata(root.join("blobs").join(format!("{h}.obao")))
            .map(|m| m.len())
            .unwrap_or(0);
        hash = Some((h, store));
        if round == 0 {
            std::fs::remove_dir_all(&root)?;
            hash = None;
        }
    }
    let (h, store) = hash.ok_or("no store")?;
    let base_tp = size as f64 / base / (1 << 20) as f64;
    let import_tp = size as f64 / import / (1 << 20) as f64;
    let copy_tp = size as f64 / copy / (1 << 20) as f64;
    println!(
        "blake3 (single thread): {base_tp:.0} MiB/s, durable copy: {copy_tp:.0} MiB/s, \
         import: {import_tp:.0} MiB/s"
    );

    // The CPU part alone: hash + outboard in memory against blake3::hash.
    let sample: Vec<u8> = {
        let mut rng = Rng(7);
        (0..(64usize << 20) / 8)
            .flat_map(|_| rng.next().to_le_bytes())
            .collect()
    };
    let mut t_b3 = f64::MAX;
    let mut t_ob = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let a = blake3::hash(&sample);
        t_b3 = t_b3.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let (b, _) = kith_store::outboard(&sample);
        t_ob = t_ob.min(t.elapsed().as_secs_f64());
        assert_eq!(a.as_bytes(), b.as_bytes());
    }
    drop(sample);

    // Range verification: 1 MiB ranges at random offsets, pre-encoded.
    let ranges = 64.min(mib.max(1));
    let mut rng = Rng(42);
    let mut wires = Vec::new();
    for _ in 0..ranges {
        let start = rng.next() % size.saturating_sub(1 << 20).max(1);
        let mut wire = Vec::new();
        store.encode_range(h, start..start + (1 << 20), &mut wire)?;
        wires.push((start, wire));
    }
    let t = Instant::now();
    let mut verified = 0u64;
    for (start, wire) in &wires {
        let (_, bytes) = kith_store::decode_range(h, *start..start + (1 << 20), wire)?;
        verified += bytes.len() as u64;
    }
    let verify_tp = verified as f64 / t.elapsed().as_secs_f64() / (1 << 20) as f64;

    println!("figure store.import.ratio {:.3}", import_tp / base_tp);
    println!("figure store.import.copy_ratio {:.3}", import_tp / copy_tp);
    println!("figure store.outboard_hash.ratio {:.3}", t_b3 / t_ob);
    println!(
        "figure store.outboard.ratio {:.6}",
        outboard_bytes as f64 / size as f64
    );
    println!("figure store.range_verify.mib_per_s {verify_tp:.0}");
    println!("figure store.import.peak_rss_mib {peak_mib:.1}");
    Ok(())
}
