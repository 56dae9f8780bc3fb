//! External blobs: `FsStore` importing a file by reference ([`ImportMode::Reference`]),
//! verifying every read against the outboard, and failing with a typed error when the
//! user's file changes.

mod common;

use std::fs::{File, FileTimes};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use kith_store::{
    ExternalFault, FsStore, GROUP_SIZE, Hash, ImportError, ImportMode, MemStore, OpenError,
    ReadError, Store, StoreConfig, Tag,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, RngSeed};

const G: u64 = GROUP_SIZE;
const SIZES: [usize; 8] = [
    0,
    1,
    16383,
    16384,
    16385,
    (3 << 20) + 5,
    4 << 20,
    (5 << 20) - 1,
];

fn write(path: &Path, data: &[u8]) -> PathBuf {
    std::fs::write(path, data).unwrap();
    path.canonicalize().unwrap()
}

fn import_ref(store: &FsStore, path: &Path) -> Hash {
    store.import_file_with(path, ImportMode::Reference).unwrap()
}

fn fault(r: Result<impl std::fmt::Debug, ReadError>) -> ExternalFault {
    match r {
        Err(ReadError::ExternalChanged { fault, .. }) => fault,
        other => panic!("expected ExternalChanged, got {other:?}"),
    }
}

/// Overwrites one byte of the file at `path` and restores its modification time: a
/// change its metadata does not show (a tool that restores mtimes, a disk error).
fn flip_byte_silently(path: &Path, offset: u64) {
    let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, offset).unwrap();
    f.write_all_at(&[b[0] ^ 0x5a], offset).unwrap();
    f.set_times(FileTimes::new().set_modified(mtime)).unwrap();
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn reference_imports_give_blake3_content_ids_and_copy_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path().join("s"), StoreConfig::default()).unwrap();
    let mut rng = common::Rng(9);
    for size in SIZES {
        let data = common::data(size as u64 + 3, size);
        let path = write(&dir.path().join(format!("in-{size}")), &data);
        let hash = import_ref(&store, &path);
        assert_eq!(
            hash.as_bytes(),
            blake3::hash(&data).as_bytes(),
            "size {size}"
        );
        assert_eq!(store.external_path(hash), Some(path.clone()));
        // Only the record and the outboard are in the store; a blob of at most four
        // groups carries its outboard in the record.
        let blobs = dir.path().join("s").join("blobs");
        assert!(!blobs.join(format!("{hash}.data")).exists());
        assert!(blobs.join(format!("{hash}.ext")).exists());
        assert_eq!(
            blobs.join(format!("{hash}.obao")).exists(),
            size as u64 > 4 * G,
            "size {size}"
        );
        let st = store.status(hash).unwrap().unwrap();
        assert_eq!(st.size, size as u64);
        assert!(st.bitfield.is_complete());
        assert_eq!(store.read_range(hash, 0..u64::MAX).unwrap(), data);
        let out = dir.path().join(format!("out-{size}"));
        assert_eq!(store.export_file(hash, &out).unwrap(), size as u64);
        assert_eq!(std::fs::read(&out).unwrap(), data);
        // Random ranges read back and encode to what a receiver verifies.
        for _ in 0..8 {
            let a = rng.below(size as u64 + 1);
            let b = a + rng.below(3 * G);
            let got = store.read_range(hash, a..b).unwrap();
            let (lo, hi) = (a.min(size as u64) as usize, b.min(size as u64) as usize);
            assert_eq!(got, &data[lo..hi], "size {size} range {a}..{b}");
            let mut wire = Vec::new();
            store.encode_range(hash, a..b, &mut wire).unwrap();
            let (vsize, bytes) = kith_store::decode_range(hash, a..b, &wire).unwrap();
            assert_eq!((vsize, &bytes[..]), (size as u64, &data[lo..hi]));
            // The same encoding as from a copy of the blob.
            let mem = MemStore::default();
            mem.import_bytes(&data).unwrap();
            let mut want = Vec::new();
            mem.encode_range(hash, a..b, &mut want).unwrap();
            assert_eq!(wire, want);
        }
    }
    assert_eq!(store.list().unwrap().len(), SIZES.len());
    assert!(files_in(&dir.path().join("s").join("tmp")).is_empty());
}

#[test]
fn a_silently_changed_byte_fails_only_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path().join("s"), StoreConfig::default()).unwrap();
    let size = 129 * G + 123;
    let data = common::data(5, size as usize);
    let path = write(&dir.path().join("in"), &data);
    let hash = import_ref(&store, &path);
    flip_byte_silently(&path, 37 * G + 999);

    // Reads touching group 37 fail with the group; nothing else is returned.
    for r in [
        37 * G..37 * G + 1,
        36 * G..38 * G,
        0..size,
        37 * G + 999..37 * G + 1000,
    ] {
        assert_eq!(
            fault(store.read_range(hash, r.clone())),
            ExternalFault::GroupMismatch { index: 37 },
            "{r:?}"
        );
        assert!(store.encode_range(hash, r, &mut Vec::new()).is_err());
    }
    // Every other group still reads, verified.
    for g in (0..130).filter(|&g| g != 37) {
        let (lo, hi) = (g * G, ((g + 1) * G).min(size));
        let got = store.read_range(hash, lo..hi).unwrap();
        assert_eq!(got, &data[lo as usize..hi as usize], "group {g}");
    }
    let mut wire = Vec::new();
    store.encode_range(hash, 0..37 * G, &mut wire).unwrap();
    let (_, bytes) = kith_store::decode_range(hash, 0..37 * G, &wire).unwrap();
    assert_eq!(bytes, &data[..37 * G as usize]);

    // An export stops before the bad group: the writer got exactly the verified prefix.
    let mut out = Vec::new();
    assert_eq!(
        fault(store.export_writer(hash, &mut out)),
        ExternalFault::GroupMismatch { index: 37 }
    );
    assert_eq!(out, &data[..37 * G as usize]);
    // export_file removes its partial output.
    let target = dir.path().join("out");
    match store.export_file(hash, &target) {
        Err(kith_store::ExportError::Read(ReadError::ExternalChanged {
            fault, path: p, ..
        })) => {
            assert_eq!(fault, ExternalFault::GroupMismatch { index: 37 });
            assert_eq!(p, path);
        }
        other => panic!("{other:?}"),
    }
    assert!(!target.exists());

    // The last group changed: ranges that need the size proof fail too.
    flip_byte_silently(&path, size - 1);
    assert_eq!(
        fault(store.encode_range(hash, 0..G, &mut Vec::new())),
        ExternalFault::GroupMismatch { index: 129 }
    );
    assert_eq!(store.read_range(hash, 0..G).unwrap(), &data[..G as usize]);
}

#[test]
fn an_ordinary_edit_fails_every_read_early() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path().join("s"), StoreConfig::default()).unwrap();
    let data = common::data(6, 10 * G as usize);
    let path = write(&dir.path().join("in"), &data);
    let hash = import_ref(&store, &path);
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(b"x", 5).unwrap();
    // Timestamps can be coarser than a test is fast: make the edit's mtime visible.
    f.set_times(FileTimes::new().set_modified(mtime + Duration::from_secs(1)))
        .unwrap();
    assert_eq!(
        fault(store.read_range(hash, 9 * G..10 * G)),
        ExternalFault::Modified
    );
    assert_eq!(
        fault(store.export_writer(hash, &mut Vec::new())),
        ExternalFault::Modified
    );
    // Status and list do not look at the file.
    assert!(store.status(hash).unwrap().unwrap().bitfield.is_complete());
}

#[test]
fn truncated_extended_replaced_or_deleted_files_fail_typed() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path().join("s"), StoreConfig::default()).unwrap();
    let size = 7 * G + 5;
    let data = common::data(7, size as usize);
    let path = write(&dir.path().join("in"), &data);
    let hash = import_ref(&store, &path);

    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(size - 1).unwrap();
    assert_eq!(
        fault(store.read_range(hash, 0..1)),
        ExternalFault::SizeChanged {
            expected: size,
            actual: size - 1
        }
    );
    f.set_len(size + G).unwrap();
    assert_eq!(
        fault(store.encode_range(hash, 0..1, &mut Vec::new())),
        ExternalFault::SizeChanged {
            expected: size,
            actual: size + G
        }
    );
    drop(f);

    // Same bytes, but a different file (save-by-rename).
    std::fs::write(&path, &data).unwrap();
    let copy = dir.path().join("in.new");
    std::fs::write(&copy, &data).unwrap();
    std::fs::rename(&copy, &path).unwrap();
    assert_eq!(fault(store.read_range(hash, 0..1)), ExternalFault::Replaced);

    std::fs::remove_file(&path).unwrap();
    let err = store.read_range(hash, 0..1).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
    assert_eq!(fault(Err::<(), _>(err)), ExternalFault::Missing);
    assert_eq!(
        fault(store.export_writer(hash, &mut Vec::new())),
        ExternalFault::Missing
    );
}

#[test]
fn external_blobs_survive_reopen_and_do_not_count_as_held() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    // A store too small to hold any copy can still reference.
    let mut config = StoreConfig::default();
    config.max_total_size = 1000;
    let data = common::data(8, 3 * G as usize + 17);
    let path = write(&dir.path().join("in"), &data);
    let hash = {
        let store = FsStore::open(&root, config).unwrap();
        assert!(matches!(
            store.import_file(&path),
            Err(ImportError::StoreFull { .. })
        ));
        let hash = import_ref(&store, &path);
        store.set_tag("shared", Tag::raw(hash)).unwrap();
        // A small owned blob still fits next to it.
        store.import_bytes(&[1u8; 900]).unwrap();
        hash
    };
    let store = FsStore::open(&root, config).unwrap();
    assert_eq!(store.external_path(hash), Some(path.clone()));
    assert!(store.status(hash).unwrap().unwrap().bitfield.is_complete());
    assert_eq!(store.read_range(hash, 0..u64::MAX).unwrap(), data);
    assert_eq!(store.gc().unwrap().deleted, 1);
    assert_eq!(store.list().unwrap().len(), 1);
    assert_eq!(
        store.read_range(hash, G..2 * G).unwrap(),
        &data[G as usize..2 * G as usize]
    );
}

#[test]
fn delete_and_gc_keep_the_users_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    let store = FsStore::open(&root, StoreConfig::default()).unwrap();
    let a = common::data(10, 4 * G as usize);
    let b = common::data(11, 40 * G as usize + 1);
    let pa = write(&dir.path().join("a"), &a);
    let pb = write(&dir.path().join("b"), &b);
    let mtime_a = std::fs::metadata(&pa).unwrap().modified().unwrap();
    let ha = import_ref(&store, &pa);
    let hb = import_ref(&store, &pb);

    assert!(store.delete(ha).unwrap());
    assert!(!store.delete(ha).unwrap());
    assert_eq!(std::fs::read(&pa).unwrap(), a);
    assert_eq!(std::fs::metadata(&pa).unwrap().modified().unwrap(), mtime_a);
    assert!(matches!(
        store.read_range(ha, 0..1),
        Err(ReadError::NotFound(_))
    ));
    assert_eq!(store.external_path(ha), None);

    let report = store.gc().unwrap();
    assert_eq!((report.deleted, report.bytes), (1, b.len() as u64));
    assert_eq!(std::fs::read(&pb).unwrap(), b);
    // Only the directory's own files are left, and nothing comes back on reopen.
    assert!(files_in(&root.join("blobs")).is_empty());
    drop(store);
    let store = FsStore::open(&root, StoreConfig::default()).unwrap();
    assert!(store.list().unwrap().is_empty());
    // The files can be imported again.
    assert_eq!(import_ref(&store, &pb), hb);
}

#[test]
fn a_copy_replaces_a_reference_and_not_the_other_way() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    let store = FsStore::open(&root, StoreConfig::default()).unwrap();
    let data = common::data(12, 9 * G as usize + 4);
    let path = write(&dir.path().join("in"), &data);
    let hash = import_ref(&store, &path);
    assert_eq!(store.import_file(&path).unwrap(), hash);
    assert_eq!(store.external_path(hash), None);
    assert!(!root.join("blobs").join(format!("{hash}.ext")).exists());
    // Referencing the content again keeps the owned copy.
    assert_eq!(import_ref(&store, &path), hash);
    assert_eq!(store.external_path(hash), None);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(store.read_range(hash, 0..u64::MAX).unwrap(), data);
    drop(store);
    let store = FsStore::open(&root, StoreConfig::default()).unwrap();
    assert_eq!(store.read_range(hash, 0..u64::MAX).unwrap(), data);

    // A reference completes a partial blob of the same content.
    let other = common::data(13, 6 * G as usize);
    let oh = Hash::of(&other);
    let mem = MemStore::default();
    mem.import_bytes(&other).unwrap();
    let mut wire = Vec::new();
    mem.encode_range(oh, 0..G, &mut wire).unwrap();
    store
        .import_verified(oh, 0..G, &mut &wire[..], &mut |_| {})
        .unwrap();
    assert!(!store.status(oh).unwrap().unwrap().bitfield.is_complete());
    let opath = write(&dir.path().join("other"), &other);
    assert_eq!(import_ref(&store, &opath), oh);
    assert!(store.status(oh).unwrap().unwrap().bitfield.is_complete());
    assert!(files_in(&root.join("partial")).is_empty());
    assert_eq!(store.read_range(oh, 0..u64::MAX).unwrap(), other);
}

#[test]
fn mem_store_copies_on_reference() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::data(14, 3 * G as usize);
    let path = write(&dir.path().join("in"), &data);
    let store = MemStore::default();
    let hash = store
        .import_file_with(&path, ImportMode::Reference)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(store.read_range(hash, 0..u64::MAX).unwrap(), data);
}

#[test]
fn only_regular_files_are_referenced() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path().join("s"), StoreConfig::default()).unwrap();
    assert!(matches!(
        store.import_file_with(dir.path(), ImportMode::Reference),
        Err(ImportError::Io(_))
    ));
    assert!(matches!(
        store.import_file_with(&dir.path().join("nope"), ImportMode::Reference),
        Err(ImportError::Io(_))
    ));
    // A relative path is recorded absolute.
    let data = common::data(15, 100);
    let path = write(&dir.path().join("rel"), &data);
    let cwd = std::env::current_dir().unwrap();
    let rel = pathdiff(&path, &cwd);
    let hash = import_ref(&store, &rel);
    assert_eq!(store.external_path(hash), Some(path));
}

/// `path` relative to `base` (both absolute), through `..` as needed.
fn pathdiff(path: &Path, base: &Path) -> PathBuf {
    let base = base.canonicalize().unwrap();
    let mut up = PathBuf::new();
    let mut b = base.as_path();
    loop {
        if let Ok(rest) = path.strip_prefix(b) {
            return up.join(rest);
        }
        up.push("..");
        b = b.parent().unwrap();
    }
}

/// The states a killed reference import can leave, rebuilt file by file, reopen to no
/// blob or a complete one.
#[test]
fn interrupted_reference_imports_leave_no_blob_or_a_complete_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::data(16, 20 * G as usize + 9);
    let path = write(&dir.path().join("in"), &data);
    let good = dir.path().join("good");
    let hash = import_ref(
        &FsStore::open(&good, StoreConfig::default()).unwrap(),
        &path,
    );
    let rec = std::fs::read(good.join("blobs").join(format!("{hash}.ext"))).unwrap();
    let ob = std::fs::read(good.join("blobs").join(format!("{hash}.obao"))).unwrap();

    let state = |name: &str, files: &[(&str, &[u8])]| -> FsStore {
        let root = dir.path().join(name);
        for d in ["blobs", "partial", "tmp"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for (rel, bytes) in files {
            std::fs::write(root.join(rel), bytes).unwrap();
        }
        FsStore::open(&root, StoreConfig::default()).unwrap()
    };
    let ext = format!("blobs/{hash}.ext");
    let obao = format!("blobs/{hash}.obao");
    // Killed while hashing or syncing in tmp/.
    let s = state("a", &[("tmp/1-0.obao", &ob), ("tmp/1-1.ext", &rec)]);
    assert!(s.list().unwrap().is_empty());
    assert!(files_in(&s.root().join("tmp")).is_empty());
    // Killed after the outboard's rename, before the record's.
    let s = state("b", &[(&obao, &ob), ("tmp/1-1.ext", &rec)]);
    assert!(s.list().unwrap().is_empty());
    assert!(files_in(&s.root().join("blobs")).is_empty());
    // Both renamed: complete.
    let s = state("c", &[(&obao, &ob), (&ext, &rec)]);
    assert_eq!(s.read_range(hash, 0..u64::MAX).unwrap(), data);
    // A copy replacing it, killed before the record was removed: the copy wins.
    let data_name = format!("blobs/{hash}.data");
    let s = state("d", &[(&obao, &ob), (&ext, &rec), (&data_name, &data)]);
    assert_eq!(s.external_path(hash), None);
    assert_eq!(files_in(&s.root().join("blobs")).len(), 2);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(s.read_range(hash, 0..u64::MAX).unwrap(), data);
}

#[test]
fn damaged_records_are_rejected_on_open() {
    let dir = tempfile::tempdir().unwrap();
    // More than four groups: the outboard is a file of its own.
    let data = common::data(17, 5 * G as usize);
    let path = write(&dir.path().join("in"), &data);
    let root = dir.path().join("s");
    let hash = import_ref(
        &FsStore::open(&root, StoreConfig::default()).unwrap(),
        &path,
    );
    let rec_path = root.join("blobs").join(format!("{hash}.ext"));
    let rec = std::fs::read(&rec_path).unwrap();
    let corrupt = |bytes: &[u8]| {
        std::fs::write(&rec_path, bytes).unwrap();
        matches!(
            FsStore::open(&root, StoreConfig::default()),
            Err(OpenError::Corrupt(_))
        )
    };
    let mut flipped = rec.clone();
    flipped[60] ^= 1;
    assert!(corrupt(&flipped));
    assert!(corrupt(&rec[..rec.len() - 1]));
    // Far longer than any record: rejected without reading it all.
    assert!(corrupt(&vec![0u8; 1 << 20]));
    // A blob larger than the store's limit.
    std::fs::write(&rec_path, &rec).unwrap();
    let mut small = StoreConfig::default();
    small.max_blob_size = G;
    assert!(matches!(
        FsStore::open(&root, small),
        Err(OpenError::Corrupt(_))
    ));
    let store = FsStore::open(&root, StoreConfig::default()).unwrap();
    assert_eq!(store.read_range(hash, 0..u64::MAX).unwrap(), data);
    // An outboard of the wrong length is corruption, not a crash state.
    drop(store);
    let ob = root.join("blobs").join(format!("{hash}.obao"));
    let f = File::options().write(true).open(&ob).unwrap();
    f.set_len(64).unwrap();
    assert!(matches!(
        FsStore::open(&root, StoreConfig::default()),
        Err(OpenError::Corrupt(_))
    ));
}

#[test]
fn a_file_changed_during_import_is_refused() {
    // Simulated: the import compares the handle's metadata before and after hashing; a
    // file whose mtime moves under it must not be recorded. A concurrent writer bumps
    // the mtime while a large file is hashed.
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path().join("s"), StoreConfig::default()).unwrap();
    // Large enough that hashing spans many scheduler slices of the writer thread.
    let data = common::data(18, 192 << 20);
    let path = write(&dir.path().join("in"), &data);
    drop(data);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            let f = File::options().write(true).open(&path).unwrap();
            let mut t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                t += Duration::from_secs(1);
                f.set_times(FileTimes::new().set_modified(t)).unwrap();
                std::thread::yield_now();
            }
        });
        let r = store.import_file_with(&path, ImportMode::Reference);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        r
    });
    match result {
        Err(ImportError::FileChanged(p)) => assert_eq!(p, path),
        other => panic!("{other:?}"),
    }
    assert!(store.list().unwrap().is_empty());
    assert!(files_in(&store.root().join("tmp")).is_empty());
    assert!(files_in(&store.root().join("blobs")).is_empty());
}

fn prop_config() -> Config {
    Config {
        cases: 48,
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(0x6578_7465),
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(prop_config())]

    /// After one silent byte change, exactly the groups holding it fail to read.
    #[test]
    fn exactly_the_changed_group_fails(
        size in 1u64..(40 * G),
        at in any::<u64>(),
        seed in any::<u64>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path().join("s"), StoreConfig::default()).unwrap();
        let data = common::data(seed, size as usize);
        let path = write(&dir.path().join("in"), &data);
        let hash = import_ref(&store, &path);
        let at = at % size;
        flip_byte_silently(&path, at);
        let n = kith_store::group_count(size);
        for g in 0..n {
            let (lo, hi) = (g * G, ((g + 1) * G).min(size));
            let r = store.read_range(hash, lo..hi);
            if g == at / G {
                prop_assert_eq!(fault(r), ExternalFault::GroupMismatch { index: g });
            } else {
                prop_assert_eq!(r.unwrap(), &data[lo as usize..hi as usize]);
            }
        }
    }
}

/// A batch of reference imports (what `import_dir` does): every file referenced in
/// place, readable and verified, also after reopening; duplicates in one batch agree.
#[test]
fn a_batch_of_reference_imports_is_recorded_together() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    let files: Vec<(PathBuf, Vec<u8>)> = SIZES
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let data = common::data(40 + i as u64, n);
            (write(&dir.path().join(format!("f{i}")), &data), data)
        })
        .collect();
    // The same bytes as f1 under another name.
    let dup = write(&dir.path().join("dup"), &files[1].1);
    let mut paths: Vec<&Path> = files.iter().map(|(p, _)| p.as_path()).collect();
    paths.push(&dup);
    let hashes = {
        let store = FsStore::open(&root, StoreConfig::default()).unwrap();
        let hashes = store
            .import_files_with(&paths, ImportMode::Reference)
            .unwrap();
        assert_eq!(hashes.len(), paths.len());
        assert_eq!(hashes[1], hashes[paths.len() - 1]);
        for ((_, data), hash) in files.iter().zip(&hashes) {
            assert_eq!(*hash, Hash::from(blake3::hash(data)));
            assert_eq!(&store.read_range(*hash, 0..u64::MAX).unwrap(), data);
        }
        hashes
    };
    // Nothing copied, nothing left behind in tmp.
    assert!(files_in(&root.join("tmp")).is_empty());
    let store = FsStore::open(&root, StoreConfig::default()).unwrap();
    for ((path, data), hash) in files.iter().zip(&hashes) {
        let at = store.external_path(*hash).unwrap();
        assert!(at == *path || (at == dup && *hash == hashes[1]), "{at:?}");
        assert_eq!(&store.read_range(*hash, 0..u64::MAX).unwrap(), data);
    }
}

/// A batch with one file that cannot be referenced fails as a whole: nothing of it is
/// recorded and no temporary file stays.
#[test]
fn a_failed_batch_of_reference_imports_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    let a = write(&dir.path().join("a"), &common::data(50, 3 * G as usize));
    let missing = dir.path().join("missing");
    let b = write(&dir.path().join("b"), &common::data(51, 100));
    let store = FsStore::open(&root, StoreConfig::default()).unwrap();
    let r = store.import_files_with(&[&a, &missing, &b], ImportMode::Reference);
    assert!(matches!(r, Err(ImportError::Io(_))), "{r:?}");
    assert!(store.list().unwrap().is_empty());
    assert!(files_in(&root.join("tmp")).is_empty());
    drop(store);
    let store = FsStore::open(&root, StoreConfig::default()).unwrap();
    assert!(store.list().unwrap().is_empty());
}
