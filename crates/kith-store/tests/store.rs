//! The Store trait against both implementations.

mod common;

use std::io::Write;
use std::path::Path;

use kith_store::collection::{self, CollectionError};
use kith_store::{
    BlobFormat, FsStore, GROUP_SIZE, Hash, ImportError, MemStore, ReadError, Store, StoreConfig,
    Tag,
};

const SIZES: [usize; 9] = [0, 1, 1023, 1024, 1025, 16383, 16384, 16385, (1 << 20) + 7];

fn stores(dir: &Path) -> Vec<(&'static str, Box<dyn Store>)> {
    vec![
        ("mem", Box::new(MemStore::new(StoreConfig::default()))),
        (
            "fs",
            Box::new(FsStore::open(dir.join("fs"), StoreConfig::default()).unwrap()),
        ),
    ]
}

fn encode(src: &dyn Store, hash: Hash, range: std::ops::Range<u64>) -> Vec<u8> {
    let mut wire = Vec::new();
    src.encode_range(hash, range, &mut wire).unwrap();
    wire
}

#[test]
fn imports_give_blake3_content_ids() {
    let dir = tempfile::tempdir().unwrap();
    for (name, store) in stores(dir.path()) {
        for size in SIZES {
            let data = common::data(size as u64 + 11, size);
            let want = blake3::hash(&data);
            let h1 = store.import_bytes(&data).unwrap();
            let h2 = store.import_reader(&mut &data[..]).unwrap();
            let file = dir.path().join(format!("in-{name}-{size}"));
            std::fs::write(&file, &data).unwrap();
            let h3 = store.import_file(&file).unwrap();
            for h in [h1, h2, h3] {
                assert_eq!(h.as_bytes(), want.as_bytes(), "{name} size {size}");
            }
            assert_eq!(store.read_range(h1, 0..u64::MAX).unwrap(), data);
            let out = dir.path().join(format!("out-{name}-{size}"));
            assert_eq!(store.export_file(h1, &out).unwrap(), size as u64);
            assert_eq!(std::fs::read(&out).unwrap(), data);
            let st = store.status(h1).unwrap().unwrap();
            assert_eq!(st.size, size as u64);
            assert!(st.bitfield.is_complete());
        }
        assert_eq!(store.list().unwrap().len(), SIZES.len(), "{name}");
    }
}

#[test]
fn a_seeded_100_mib_file_hashes_like_blake3() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big");
    let mut hasher = blake3::Hasher::new();
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let mut rng = common::Rng(100);
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..100 {
            rng.fill(&mut buf);
            hasher.update(&buf);
            f.write_all(&buf).unwrap();
        }
        f.flush().unwrap();
    }
    let store = FsStore::open(dir.path().join("s"), StoreConfig::default()).unwrap();
    let hash = store.import_file(&path).unwrap();
    assert_eq!(hash.as_bytes(), hasher.finalize().as_bytes());
    // The outboard serves a verified range from the middle.
    let wire = encode(&store, hash, 50_000_000..50_000_100);
    let (size, bytes) = kith_store::decode_range(hash, 50_000_000..50_000_100, &wire).unwrap();
    assert_eq!(size, 100 << 20);
    assert_eq!(
        bytes,
        store.read_range(hash, 50_000_000..50_000_100).unwrap()
    );
}

#[test]
fn partial_blobs_fill_up_from_verified_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let src = MemStore::new(StoreConfig::default());
    let data = common::data(21, 10 * GROUP_SIZE as usize + 99);
    let hash = src.import_bytes(&data).unwrap();
    for (name, store) in stores(dir.path()) {
        let g = GROUP_SIZE;
        let mut acked = Vec::new();
        let st = store
            .import_verified(
                hash,
                3 * g..5 * g,
                &mut &encode(&src, hash, 3 * g..5 * g)[..],
                &mut |i| acked.push(i),
            )
            .unwrap();
        // Groups 3 and 4, and the last one (the size proof).
        assert_eq!(st.bitfield.ranges(), vec![3..5, 10..11], "{name}");
        acked.sort();
        assert_eq!(acked, vec![3, 4, 10]);
        assert_eq!(st.size, data.len() as u64);
        assert_eq!(
            store.read_range(hash, 3 * g + 5..4 * g).unwrap(),
            &data[(3 * g + 5) as usize..(4 * g) as usize]
        );
        assert!(matches!(
            store.read_range(hash, 0..10),
            Err(ReadError::Missing { index: 0, .. })
        ));
        // A partial blob serves what it has.
        let wire = encode(store.as_ref(), hash, 3 * g..4 * g);
        let (_, bytes) = kith_store::decode_range(hash, 3 * g..4 * g, &wire).unwrap();
        assert_eq!(bytes, &data[(3 * g) as usize..(4 * g) as usize]);
        let info = store.list().unwrap();
        assert_eq!((info.len(), info[0].complete), (1, false));
        // The rest completes it.
        let st = store
            .import_verified(
                hash,
                0..u64::MAX,
                &mut &encode(&src, hash, 0..u64::MAX)[..],
                &mut |_| {},
            )
            .unwrap();
        assert!(st.bitfield.is_complete(), "{name}");
        assert_eq!(store.read_range(hash, 0..u64::MAX).unwrap(), data);
        assert!(store.list().unwrap()[0].complete);
        let wire = encode(store.as_ref(), hash, 0..u64::MAX);
        assert_eq!(
            kith_store::decode_range(hash, 0..u64::MAX, &wire)
                .unwrap()
                .1,
            data
        );
    }
}

#[test]
fn a_bad_group_is_rejected_before_it_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let src = MemStore::new(StoreConfig::default());
    let data = common::data(22, 6 * GROUP_SIZE as usize);
    let hash = src.import_bytes(&data).unwrap();
    let mut wire = encode(&src, hash, 0..u64::MAX);
    // Full range: size header, then the pre-order walk. Corrupt the last byte of the wire
    // (group 5) and the first data byte after group 2's position.
    let last = wire.len() - 1;
    wire[last] ^= 0x80;
    for (name, store) in stores(dir.path()) {
        let err = store
            .import_verified(hash, 0..u64::MAX, &mut &wire[..], &mut |_| {})
            .unwrap_err();
        assert!(matches!(err, ImportError::Decode(_)), "{name}: {err}");
        let st = store.status(hash).unwrap().unwrap();
        assert_eq!(st.bitfield.ranges(), vec![0..5], "{name}");
        assert!(
            store
                .read_range(hash, 5 * GROUP_SIZE..5 * GROUP_SIZE + 1)
                .is_err()
        );
    }
}

#[test]
fn the_empty_blob_works_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    for (name, store) in stores(dir.path()) {
        let h = store.import_bytes(&[]).unwrap();
        assert_eq!(h.as_bytes(), blake3::hash(&[]).as_bytes());
        assert_eq!(store.read_range(h, 0..10).unwrap(), Vec::<u8>::new());
        let wire = encode(store.as_ref(), h, 0..10);
        assert_eq!(wire.len(), 8);
        let other = MemStore::default();
        let st = other
            .import_verified(h, 0..0, &mut &wire[..], &mut |_| {})
            .unwrap();
        assert!(st.bitfield.is_complete(), "{name}");
        let out = dir.path().join(format!("empty-{name}"));
        assert_eq!(store.export_file(h, &out).unwrap(), 0);
    }
}

#[test]
fn size_limits_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StoreConfig::default();
    config.max_blob_size = 100_000;
    config.max_total_size = 150_000;
    let mem = MemStore::new(config);
    let fs = FsStore::open(dir.path().join("fs"), config).unwrap();
    for store in [&mem as &dyn Store, &fs] {
        let err = store.import_bytes(&vec![1; 100_001]).unwrap_err();
        assert!(
            matches!(err, ImportError::TooLarge { limit: 100_000, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("limit of 100000"));
        let err = store.import_reader(&mut &vec![1; 200_000][..]).unwrap_err();
        assert!(matches!(err, ImportError::TooLarge { .. }), "{err}");
        store.import_bytes(&vec![2; 90_000]).unwrap();
        let err = store.import_bytes(&vec![3; 90_000]).unwrap_err();
        assert!(
            matches!(
                err,
                ImportError::StoreFull {
                    available: 60_000,
                    ..
                }
            ),
            "{err}"
        );
        // A verified stream that claims too much is refused before anything is written.
        let big = MemStore::default();
        let data = vec![4u8; 120_000];
        let h = big.import_bytes(&data).unwrap();
        let err = store
            .import_verified(h, 0..10, &mut &encode(&big, h, 0..10)[..], &mut |_| {})
            .unwrap_err();
        assert!(matches!(err, ImportError::Decode(_)), "{err}");
        assert!(store.status(h).unwrap().is_none());
    }
    assert!(
        dir.path()
            .join("fs/tmp")
            .read_dir()
            .unwrap()
            .next()
            .is_none()
    );
}

#[test]
fn tags_pin_and_gc_collects_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("a.txt"), b"alpha").unwrap();
    std::fs::write(tree.join("sub/b.bin"), common::data(1, 40_000)).unwrap();
    for (name, store) in stores(dir.path()) {
        let keep = store.import_bytes(b"keep me").unwrap();
        let drop1 = store.import_bytes(b"drop me").unwrap();
        let coll = collection::import_dir(store.as_ref(), &tree).unwrap();
        store.set_tag("keep", Tag::raw(keep)).unwrap();
        store.set_tag("tree", Tag::collection(coll)).unwrap();
        store.set_tag("gone", Tag::raw(drop1)).unwrap();
        assert_eq!(store.remove_tag("gone").unwrap(), Some(Tag::raw(drop1)));
        assert!(store.set_tag("../x", Tag::raw(keep)).is_err());
        assert!(store.set_tag("a b", Tag::raw(keep)).is_err());
        let report = store.gc().unwrap();
        assert_eq!(report.deleted, 1, "{name}");
        assert_eq!(report.bytes, 7);
        assert!(store.status(drop1).unwrap().is_none());
        assert_eq!(
            store.list().unwrap().len(),
            4,
            "{name}: keep, manifest, two files"
        );
        assert_eq!(
            store
                .tags()
                .unwrap()
                .iter()
                .map(|(n, t)| (n.as_str(), t.format))
                .collect::<Vec<_>>(),
            vec![("keep", BlobFormat::Raw), ("tree", BlobFormat::Collection)]
        );
        store.remove_tag("tree").unwrap();
        assert_eq!(store.gc().unwrap().deleted, 3);
        assert!(store.delete(keep).unwrap());
        assert!(!store.delete(keep).unwrap());
    }
}

#[test]
fn fs_store_keeps_everything_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    let src = MemStore::default();
    let data = common::data(5, 8 * GROUP_SIZE as usize + 1);
    let hash = src.import_bytes(&data).unwrap();
    let small;
    {
        let store = FsStore::open(&root, StoreConfig::default()).unwrap();
        small = store.import_bytes(b"small").unwrap();
        store.set_tag("s", Tag::raw(small)).unwrap();
        let g = GROUP_SIZE;
        store
            .import_verified(
                hash,
                g..3 * g,
                &mut &encode(&src, hash, g..3 * g)[..],
                &mut |_| {},
            )
            .unwrap();
    }
    let store = FsStore::open(&root, StoreConfig::default()).unwrap();
    assert_eq!(
        store.tags().unwrap(),
        vec![("s".to_owned(), Tag::raw(small))]
    );
    assert_eq!(store.read_range(small, 0..5).unwrap(), b"small");
    let st = store.status(hash).unwrap().unwrap();
    assert_eq!(st.bitfield.ranges(), vec![1..3, 8..9]);
    store
        .import_verified(
            hash,
            0..u64::MAX,
            &mut &encode(&src, hash, 0..u64::MAX)[..],
            &mut |_| {},
        )
        .unwrap();
    drop(store);
    let store = FsStore::open(&root, StoreConfig::default()).unwrap();
    assert_eq!(store.read_range(hash, 0..u64::MAX).unwrap(), data);
    assert!(root.join("partial").read_dir().unwrap().next().is_none());
}

#[cfg(unix)]
#[test]
fn collections_export_an_identical_tree() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("d/e")).unwrap();
    std::fs::write(tree.join("empty"), b"").unwrap();
    std::fs::write(tree.join("d/big"), common::data(2, 300_000)).unwrap();
    std::fs::write(tree.join("d/e/run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(
        tree.join("d/e/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    for (name, store) in stores(dir.path()) {
        let h = collection::import_dir(store.as_ref(), &tree).unwrap();
        let m = collection::read_manifest(store.as_ref(), h).unwrap();
        let paths: Vec<_> = m
            .entries
            .iter()
            .map(|e| (e.path.as_str(), e.executable))
            .collect();
        assert_eq!(
            paths,
            vec![("d/big", false), ("d/e/run.sh", true), ("empty", false)]
        );
        let out = dir.path().join(format!("out-{name}"));
        collection::export_dir(store.as_ref(), h, &out).unwrap();
        for p in ["empty", "d/big", "d/e/run.sh"] {
            assert_eq!(
                std::fs::read(tree.join(p)).unwrap(),
                std::fs::read(out.join(p)).unwrap()
            );
            let mode = |root: &Path| {
                std::fs::metadata(root.join(p))
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o111
                    != 0
            };
            assert_eq!(mode(&tree), mode(&out), "{p}");
        }
        // Exporting over an existing directory is refused.
        assert!(matches!(
            collection::export_dir(store.as_ref(), h, &out),
            Err(CollectionError::Io(..))
        ));
        // A manifest with a hostile path is rejected on export.
        let evil = collection::Manifest {
            entries: vec![collection::Entry {
                path: "../evil".into(),
                hash: h.as_bytes().to_vec(),
                size: 1,
                executable: false,
            }],
        };
        let eh = store.import_bytes(&evil.encode_to_vec()).unwrap();
        assert!(matches!(
            collection::export_dir(store.as_ref(), eh, &dir.path().join(format!("evil-{name}"))),
            Err(CollectionError::Manifest(_))
        ));
    }
}

/// Syncs are batched across imports: stored groups are present at once, recorded on disk
/// once a batch is full (or by flush), and a second import's groups join the first's
/// batch instead of costing a sync of their own.
#[test]
fn fs_store_records_stored_groups_in_batches_across_imports() {
    let dir = tempfile::tempdir().unwrap();
    let src = MemStore::new(StoreConfig::default());
    let data = common::data(23, 12 * GROUP_SIZE as usize);
    let hash = src.import_bytes(&data).unwrap();
    let g = GROUP_SIZE;
    let mut config = StoreConfig::default();
    config.sync_every_groups = 4;
    config.sync_interval = std::time::Duration::from_secs(3600);
    let store = FsStore::open(dir.path(), config).unwrap();
    // What a crash right now would keep: the files as another opener reads them. A copy
    // taken while the flusher moves files may be torn (a file gone between listing and
    // copying): `None` then, and the caller looks again.
    let try_recorded = || -> Option<u64> {
        let copy = tempfile::tempdir().unwrap();
        for sub in ["blobs", "partial", "tmp"] {
            std::fs::create_dir_all(copy.path().join(sub)).unwrap();
            for e in std::fs::read_dir(dir.path().join(sub)).unwrap() {
                let e = e.unwrap();
                std::fs::copy(e.path(), copy.path().join(sub).join(e.file_name())).ok()?;
            }
        }
        let reopened = FsStore::open(copy.path(), config).ok()?;
        Some(
            reopened
                .status(hash)
                .unwrap()
                .map_or(0, |s| s.bitfield.count()),
        )
    };
    // While nothing is due (no batch can be running), the copy is exact.
    let recorded = || try_recorded().expect("no batch is running");
    let import = |r: std::ops::Range<u64>| {
        store
            .import_verified(
                hash,
                r.clone(),
                &mut &encode(&src, hash, r)[..],
                &mut |_| {},
            )
            .unwrap()
    };
    // Groups 0, 1 and the last (the size proof): present, a batch of 3 < 4 waits.
    let st = import(0..2 * g);
    assert_eq!(st.bitfield.count(), 3);
    assert_eq!(
        store.read_range(hash, 0..2 * g).unwrap(),
        &data[..2 * g as usize]
    );
    assert_eq!(recorded(), 0);
    // One more group fills the batch: the store's flusher records all four together,
    // while the import goes on (it does not wait for the batch).
    import(2 * g..3 * g);
    assert_eq!(wait_recorded(&try_recorded, 4), 4);
    // Two more wait; flush records them.
    import(3 * g..5 * g);
    assert_eq!(wait_recorded(&try_recorded, 4), 4);
    store.flush().unwrap();
    assert_eq!(recorded(), 6);
    // Completion waits for its batch like any other group (many small blobs completing
    // one after another share one batch): six more groups fill a batch; the flusher
    // records what is present when it runs (four groups, or all six if the import has
    // gone on meanwhile).
    let st = import(0..u64::MAX);
    assert!(st.bitfield.is_complete());
    assert!(store.list().unwrap()[0].complete);
    assert_eq!(store.read_range(hash, 0..u64::MAX).unwrap(), data);
    assert!(wait_recorded(&try_recorded, 10) >= 10);
    store.flush().unwrap();
    assert_eq!(recorded(), 12);
    drop(store);
    let reopened = FsStore::open(dir.path(), config).unwrap();
    assert_eq!(reopened.read_range(hash, 0..u64::MAX).unwrap(), data);
}

/// Waits (bounded: 30 s) until `recorded()` reaches `want` (the flusher thread writes
/// batches in the background), and returns what it last saw.
fn wait_recorded(recorded: &dyn Fn() -> Option<u64>, want: u64) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let n = recorded().unwrap_or(0);
        if n >= want || std::time::Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// A store that holds a blob's verified size takes ranges without the size proof; one
/// that does not refuses them; a claimed size other than the held one is rejected.
#[test]
fn ranges_without_size_proof_need_a_held_size() {
    use kith_store::{DecodeError, SizeProof};
    let dir = tempfile::tempdir().unwrap();
    let src = MemStore::new(StoreConfig::default());
    let data = common::data(24, 9 * GROUP_SIZE as usize + 7);
    let hash = src.import_bytes(&data).unwrap();
    let g = GROUP_SIZE;
    let bare = |h: Hash, r: std::ops::Range<u64>| {
        let mut wire = Vec::new();
        src.encode_range_with(h, r, SizeProof::Omitted, &mut wire)
            .unwrap();
        wire
    };
    for (name, store) in stores(dir.path()) {
        // Nothing held: no size to check against.
        let r = store.import_verified_with(
            hash,
            2 * g..3 * g,
            SizeProof::Omitted,
            &mut &bare(hash, 2 * g..3 * g)[..],
            &mut |_| {},
        );
        assert!(
            matches!(r, Err(ImportError::SizeUnknown(h)) if h == hash),
            "{name}"
        );
        // The first range proves the size (group 0 and the last group).
        store
            .import_verified(hash, 0..g, &mut &encode(&src, hash, 0..g)[..], &mut |_| {})
            .unwrap();
        // Then a bare range: one group, no second copy of the last.
        let mut stored = Vec::new();
        let wire = bare(hash, 2 * g..3 * g);
        assert!(
            wire.len() < encode(&src, hash, 2 * g..3 * g).len(),
            "{name}"
        );
        let st = store
            .import_verified_with(
                hash,
                2 * g..3 * g,
                SizeProof::Omitted,
                &mut &wire[..],
                &mut |i| stored.push(i),
            )
            .unwrap();
        assert_eq!(stored, vec![2], "{name}");
        assert_eq!(st.bitfield.ranges(), vec![0..1, 2..3, 9..10], "{name}");
        assert_eq!(
            store.read_range(hash, 2 * g..3 * g).unwrap(),
            &data[2 * g as usize..3 * g as usize]
        );
        // A bare encoding that claims another size (a shorter blob's) is refused.
        let mut lie = bare(hash, 3 * g..4 * g);
        lie[..8].copy_from_slice(&(8 * g).to_le_bytes());
        let r = store.import_verified_with(
            hash,
            3 * g..4 * g,
            SizeProof::Omitted,
            &mut &lie[..],
            &mut |_| {},
        );
        assert!(
            matches!(
                r,
                Err(ImportError::Decode(DecodeError::SizeMismatch { .. }))
            ),
            "{name}"
        );
        assert!(!store.status(hash).unwrap().unwrap().bitfield.get(3));
        // Bare ranges come out of the store the same way.
        let mut out = Vec::new();
        store
            .encode_range_with(hash, 2 * g..3 * g, SizeProof::Omitted, &mut out)
            .unwrap();
        assert_eq!(out, wire, "{name}");
    }
}

/// Many small blobs completing one after another share one batch of syncs: none is
/// recorded until the batch runs, all are (complete, in `blobs/`) after it.
#[test]
fn fs_store_records_many_small_blobs_in_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    let src = MemStore::new(StoreConfig::default());
    let mut config = StoreConfig::default();
    config.sync_every_groups = 1000;
    config.sync_interval = std::time::Duration::from_secs(3600);
    let store = FsStore::open(dir.path(), config).unwrap();
    let blobs: Vec<(Hash, Vec<u8>)> = (0..20u64)
        .map(|i| {
            let d = common::data(100 + i, 5000 + i as usize);
            (src.import_bytes(&d).unwrap(), d)
        })
        .collect();
    for (h, _) in &blobs {
        let st = store
            .import_verified(
                *h,
                0..u64::MAX,
                &mut &encode(&src, *h, 0..u64::MAX)[..],
                &mut |_| {},
            )
            .unwrap();
        assert!(st.bitfield.is_complete());
    }
    let reopened = |path: &Path| {
        let copy = tempfile::tempdir().unwrap();
        for sub in ["blobs", "partial", "tmp"] {
            std::fs::create_dir_all(copy.path().join(sub)).unwrap();
            for e in std::fs::read_dir(path.join(sub)).unwrap() {
                let e = e.unwrap();
                std::fs::copy(e.path(), copy.path().join(sub).join(e.file_name())).unwrap();
            }
        }
        let s = FsStore::open(copy.path(), config).unwrap();
        (copy, s)
    };
    // Nothing recorded yet: a crash now keeps nothing (and nothing unverified).
    let (_c, before) = reopened(dir.path());
    assert!(before.list().unwrap().is_empty());
    store.flush().unwrap();
    let (_c, after) = reopened(dir.path());
    let list = after.list().unwrap();
    assert_eq!(list.len(), 20);
    assert!(list.iter().all(|b| b.complete));
    for (h, d) in &blobs {
        assert_eq!(&after.read_range(*h, 0..u64::MAX).unwrap(), d);
    }
    assert_eq!(
        std::fs::read_dir(dir.path().join("partial"))
            .unwrap()
            .count(),
        0
    );
}

/// A crash between a promotion's two renames (the data moved into `blobs/`, its outboard
/// not yet) leaves a store that opens whole: the outboard is rebuilt from the data and
/// checked against the hash, and the leftover partial file goes.
#[test]
fn a_promotion_cut_after_the_data_moved_reopens_whole() {
    let dir = tempfile::tempdir().unwrap();
    let src = MemStore::new(StoreConfig::default());
    let data = common::data(29, 5 * GROUP_SIZE as usize + 7);
    let hash = src.import_bytes(&data).unwrap();
    {
        let store = FsStore::open(dir.path(), StoreConfig::default()).unwrap();
        let enc = encode(&src, hash, 0..u64::MAX);
        store
            .import_verified(hash, 0..u64::MAX, &mut &enc[..], &mut |_| {})
            .unwrap();
        store.flush().unwrap();
    }
    let at = |sub: &str, ext: &str| dir.path().join(sub).join(format!("{hash}.{ext}"));
    assert!(at("blobs", "data").exists() && !at("partial", "bitfield").exists());
    // What the crash leaves: the outboard still in `partial/`, no bitfield file.
    std::fs::rename(at("blobs", "obao"), at("partial", "obao")).unwrap();
    let store = FsStore::open(dir.path(), StoreConfig::default()).unwrap();
    assert!(store.status(hash).unwrap().unwrap().bitfield.is_complete());
    assert_eq!(store.read_range(hash, 0..u64::MAX).unwrap(), data);
    assert!(at("blobs", "obao").exists() && !at("partial", "obao").exists());
    // A range encoded from the rebuilt outboard verifies elsewhere.
    let range = GROUP_SIZE..3 * GROUP_SIZE;
    let enc = encode(&store, hash, range.clone());
    let other = MemStore::new(StoreConfig::default());
    other
        .import_verified(hash, range, &mut &enc[..], &mut |_| {})
        .unwrap();
}

/// A streaming read of a range with a missing group fails before writing anything.
#[test]
fn streaming_reads_check_every_group_first() {
    let src = MemStore::new(StoreConfig::default());
    let data = common::data(31, 8 * GROUP_SIZE as usize);
    let hash = src.import_bytes(&data).unwrap();
    let store = MemStore::new(StoreConfig::default());
    let range = 0..2 * GROUP_SIZE;
    store
        .import_verified(
            hash,
            range.clone(),
            &mut &encode(&src, hash, range)[..],
            &mut |_| {},
        )
        .unwrap();
    let mut out = Vec::new();
    match store.read_range_to(hash, 0..4 * GROUP_SIZE, &mut out) {
        Err(kith_store::ReadError::Missing { index: 2, .. }) => {}
        other => panic!("expected group 2 missing, got {other:?}"),
    }
    assert!(out.is_empty());
    store
        .read_range_to(hash, 0..2 * GROUP_SIZE, &mut out)
        .unwrap();
    assert_eq!(out, &data[..2 * GROUP_SIZE as usize]);
    let unknown = Hash::of(b"nothing");
    assert!(matches!(
        store.read_range_to(unknown, 0..1, &mut out),
        Err(kith_store::ReadError::NotFound(_))
    ));
}

/// A blob of at most four groups keeps no outboard file once complete: while partial its
/// outboard entries are in memory (and in `partial/` once a batch records it), so it
/// serves what it has, resumes after reopening, and once complete computes its outboard
/// from its bytes, which must match its hash.
#[test]
fn a_small_blob_serves_resumes_and_completes_without_an_outboard_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("fs");
    let src = MemStore::new(StoreConfig::default());
    let g = GROUP_SIZE;
    let data = common::data(33, 3 * g as usize + 5);
    let hash = src.import_bytes(&data).unwrap();
    let obao = |d: &str| root.join(d).join(format!("{hash}.obao"));
    let check = |store: &FsStore, r: std::ops::Range<u64>| {
        let wire = encode(store, hash, r.clone());
        let (_, bytes) = kith_store::decode_range(hash, r.clone(), &wire).unwrap();
        assert_eq!(
            bytes,
            &data[r.start as usize..r.end.min(data.len() as u64) as usize]
        );
    };
    {
        let store = FsStore::open(&root, StoreConfig::default()).unwrap();
        let wire = encode(&src, hash, g..2 * g);
        store
            .import_verified(hash, g..2 * g, &mut &wire[..], &mut |_| {})
            .unwrap();
        // Served from memory before any batch.
        check(&store, g..2 * g);
        assert!(!obao("partial").exists());
        store.flush().unwrap();
        // Recorded incomplete: its entries are on disk beside the bitfield.
        assert!(obao("partial").exists());
    }
    let store = FsStore::open(&root, StoreConfig::default()).unwrap();
    let st = store.status(hash).unwrap().unwrap();
    assert_eq!(st.bitfield.ranges(), vec![1..2, 3..4]);
    check(&store, g..2 * g);
    let wire = encode(&src, hash, 0..u64::MAX);
    store
        .import_verified(hash, 0..u64::MAX, &mut &wire[..], &mut |_| {})
        .unwrap();
    store.flush().unwrap();
    assert!(!obao("partial").exists() && !obao("blobs").exists());
    check(&store, 0..u64::MAX);
    check(&store, 2 * g..3 * g);
    drop(store);
    let store = FsStore::open(&root, StoreConfig::default()).unwrap();
    assert_eq!(store.read_range(hash, 0..u64::MAX).unwrap(), data);
    check(&store, 0..g);
    // Damaged bytes are an error, never served under the blob's hash.
    drop(store);
    let path = root.join("blobs").join(format!("{hash}.data"));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[2 * g as usize + 7] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let store = FsStore::open(&root, StoreConfig::default()).unwrap();
    assert!(matches!(
        store.read_range(hash, 0..g),
        Err(ReadError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData
    ));
    assert!(store.encode_range(hash, 0..g, &mut Vec::new()).is_err());
}
