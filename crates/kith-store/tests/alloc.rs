//! The manifest decoder never allocates on a peer's word: entries are decoded one at a
//! time and each must carry its 32-byte hash, so the worst manifests (the largest
//! allowed, packed with the cheapest entries) make it hold at most 4× their bytes.

use kith_store::collection::{MAX_MANIFEST_SIZE, Manifest};

/// Field `field`, length-delimited, holding `inner`.
fn field(field: u8, inner: &[u8]) -> Vec<u8> {
    let mut out = vec![field << 3 | 2];
    let mut len = inner.len();
    while len >= 0x80 {
        out.push((len as u8) | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.extend_from_slice(inner);
    out
}

fn check(name: &str, bytes: &[u8]) {
    let info = allocation_counter::measure(|| {
        let _ = Manifest::decode_checked(bytes);
    });
    let bound = 4 * bytes.len() as u64 + 4096;
    assert!(
        info.bytes_max <= bound,
        "{name}: a {}-byte manifest made the decoder hold {} bytes (bound {bound})",
        bytes.len(),
        info.bytes_max
    );
}

#[test]
fn manifest_decoding_is_bounded_by_its_bytes() {
    let size = (MAX_MANIFEST_SIZE / 8) as usize;
    // Empty entries: two bytes each.
    check("empty entries", &field(1, &[]).repeat(size / 2));
    // Entries with a hash and nothing else (valid up to their paths).
    let hashed = field(1, &field(2, &[7; 32]));
    check("hash-only entries", &hashed.repeat(size / hashed.len()));
    // The cheapest valid entries: one-byte distinct paths need many; use numbered ones.
    let mut valid = Vec::new();
    let mut n = 0u32;
    while valid.len() < size {
        let mut e = field(1, n.to_string().as_bytes());
        e.extend(field(2, &[7; 32]));
        valid.extend(field(1, &e));
        n += 1;
    }
    check("valid entries", &valid);
}

/// A writer that keeps only a count and a running hash of what it is given.
struct Sink {
    n: u64,
    hasher: blake3::Hasher,
}

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.n += buf.len() as u64;
        self.hasher.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `read_range_to` streams: reading all 32 MiB of a blob holds about one window
/// (`READ_WINDOW`, 1 MiB), not the range, in the memory and the filesystem stores alike,
/// and writes exactly the blob's bytes.
#[test]
fn streaming_reads_hold_a_window_not_the_range() {
    use kith_store::{FsStore, MemStore, READ_WINDOW, Store, StoreConfig};
    let data: Vec<u8> = (0..32u64 << 20).map(|i| (i * 31 % 251) as u8).collect();
    let dir = tempfile::tempdir().unwrap();
    let fs = FsStore::open(dir.path(), StoreConfig::default()).unwrap();
    let mem = MemStore::new(StoreConfig::default());
    for store in [&fs as &dyn Store, &mem] {
        let hash = store.import_bytes(&data).unwrap();
        let mut sink = Sink {
            n: 0,
            hasher: blake3::Hasher::new(),
        };
        let info = allocation_counter::measure(|| {
            let n = store.read_range_to(hash, 0..u64::MAX, &mut sink).unwrap();
            assert_eq!(n, data.len() as u64);
        });
        assert_eq!(sink.n, data.len() as u64);
        assert_eq!(sink.hasher.finalize(), blake3::hash(&data));
        let bound = 2 * READ_WINDOW + (1 << 16);
        assert!(
            info.bytes_max <= bound,
            "held {} bytes (bound {bound})",
            info.bytes_max
        );
        // A range that starts and ends inside groups comes out exact too.
        let mut part = Vec::new();
        store
            .read_range_to(hash, 12_345..3 * READ_WINDOW + 77, &mut part)
            .unwrap();
        assert_eq!(part, &data[12_345..3 * READ_WINDOW as usize + 77]);
    }
}
