//! Record packs: big batches of external blobs (an export of a collection, a reference
//! import of a folder) record them in one file, and deletes mark them dead in a log.

mod common;

use std::path::{Path, PathBuf};

use kith_store::collection::{export_dir_with, import_dir};
use kith_store::{FsStore, Hash, ImportMode, OpenError, Store, StoreConfig};

const G: usize = kith_store::GROUP_SIZE as usize;

fn names(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    v.sort();
    v
}

fn open(root: &Path) -> FsStore {
    FsStore::open(root, StoreConfig::default()).unwrap()
}

/// `n` files of assorted sizes (one group, several, empty) under `dir`.
fn tree(dir: &Path, n: usize, seed: u64) -> Vec<(String, Vec<u8>)> {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    (0..n)
        .map(|i| {
            let len = [0, 100, G, G + 1, 3 * G + 7][i % 5] + i;
            let data = common::data(seed + i as u64, len);
            let name = format!("{}f{i}", if i % 2 == 0 { "sub/" } else { "" });
            std::fs::write(dir.join(&name), &data).unwrap();
            (name, data)
        })
        .collect()
}

/// An export of 40 files writes one pack and no record file; the blobs stay verified
/// external blobs across reopens; deletes mark them dead and the last one removes the
/// pack and its log; the user's files are never touched.
#[test]
fn an_exported_collection_is_recorded_in_one_pack() {
    let tmp = tempfile::tempdir().unwrap();
    let files = tree(&tmp.path().join("src"), 40, 100);
    let root = tmp.path().join("store");
    let out = tmp.path().join("out");
    let (hashes, manifest) = {
        let store = open(&root);
        let manifest = import_dir(&store, &tmp.path().join("src")).unwrap();
        export_dir_with(&store, manifest, &out, ImportMode::Reference).unwrap();
        let hashes: Vec<Hash> = files.iter().map(|(_, d)| Hash::of(d)).collect();
        (hashes, manifest)
    };
    assert_eq!(names(&root.join("refs"), "pack").len(), 1);
    assert!(names(&root.join("blobs"), "ext").is_empty());
    let store = open(&root);
    for ((name, data), h) in files.iter().zip(&hashes) {
        let at = std::fs::canonicalize(out.join(name)).unwrap();
        assert_eq!(store.external_path(*h), Some(at));
        assert_eq!(&store.read_range(*h, 0..u64::MAX).unwrap(), data);
    }
    // Half deleted: marked dead, gone after reopening too.
    for h in hashes.iter().step_by(2) {
        assert!(store.delete(*h).unwrap());
    }
    assert_eq!(names(&root.join("refs"), "dead").len(), 1);
    drop(store);
    let store = open(&root);
    for (i, ((name, data), h)) in files.iter().zip(&hashes).enumerate() {
        assert_eq!(&std::fs::read(out.join(name)).unwrap(), data);
        if i % 2 == 0 {
            assert!(store.status(*h).unwrap().is_none(), "{name}");
        } else {
            assert_eq!(&store.read_range(*h, 0..u64::MAX).unwrap(), data);
        }
    }
    for h in hashes.iter().skip(1).step_by(2) {
        assert!(store.delete(*h).unwrap());
    }
    assert!(names(&root.join("refs"), "pack").is_empty());
    assert!(names(&root.join("refs"), "dead").is_empty());
    drop(store);
    let store = open(&root);
    let left: Vec<Hash> = store.list().unwrap().iter().map(|b| b.hash).collect();
    assert_eq!(left, vec![manifest]);
}

/// A reference import of a folder records one pack; a copying import of one of its
/// files replaces that reference with an owned copy, also after reopening.
#[test]
fn a_copy_replaces_a_packed_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let files = tree(&src, 20, 200);
    let root = tmp.path().join("store");
    let store = open(&root);
    let paths: Vec<PathBuf> = files.iter().map(|(n, _)| src.join(n)).collect();
    let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    let hashes = store
        .import_files_with(&refs, ImportMode::Reference)
        .unwrap();
    assert_eq!(names(&root.join("refs"), "pack").len(), 1);
    let (name, data) = &files[3];
    assert_eq!(store.import_bytes(data).unwrap(), hashes[3]);
    assert_eq!(store.external_path(hashes[3]), None);
    drop(store);
    std::fs::remove_file(src.join(name)).unwrap();
    let store = open(&root);
    assert_eq!(store.external_path(hashes[3]), None);
    assert_eq!(&store.read_range(hashes[3], 0..u64::MAX).unwrap(), data);
    for (i, ((_, data), h)) in files.iter().zip(&hashes).enumerate() {
        if i != 3 {
            assert!(store.external_path(*h).is_some());
            assert_eq!(&store.read_range(*h, 0..u64::MAX).unwrap(), data);
        }
    }
}

/// The states a crash can leave around packs reopen consistently; damage is reported.
#[test]
fn packs_cut_by_a_crash_reopen_consistently_and_damage_is_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let files = tree(&src, 30, 300);
    // A: exported (the pack is live).
    let a = tmp.path().join("a");
    let store = open(&a);
    let m = import_dir(&store, &src).unwrap();
    export_dir_with(&store, m, &tmp.path().join("out"), ImportMode::Reference).unwrap();
    let first = Hash::of(&files[1].1);
    assert!(store.delete(first).unwrap());
    drop(store);
    let pack = names(&a.join("refs"), "pack").pop().unwrap();
    let dead = names(&a.join("refs"), "dead").pop().unwrap();

    // B: the same blobs owned, and A's pack installed, as if the export was cut after
    // the pack's rename and before any data file moved: the owned copies win, the pack
    // goes.
    let b = tmp.path().join("b");
    let store = open(&b);
    import_dir(&store, &src).unwrap();
    drop(store);
    std::fs::copy(&pack, b.join("refs").join(pack.file_name().unwrap())).unwrap();
    let store = open(&b);
    for (_, data) in &files {
        let h = Hash::of(data);
        assert_eq!(store.external_path(h), None);
        assert_eq!(&store.read_range(h, 0..u64::MAX).unwrap(), data);
    }
    assert!(names(&b.join("refs"), "pack").is_empty());
    drop(store);

    // A torn append at the end of the log is ignored: the deleted blob stays deleted.
    let mut log = std::fs::read(&dead).unwrap();
    log.extend_from_slice(&[7; 10]);
    std::fs::write(&dead, &log).unwrap();
    let store = open(&a);
    assert!(store.status(first).unwrap().is_none());
    assert!(store.status(Hash::of(&files[2].1)).unwrap().is_some());
    drop(store);
    // A log of a pack that is gone is removed.
    let stray = a.join("refs").join("00000000000000ff.dead");
    std::fs::write(&stray, [0; 36]).unwrap();
    drop(open(&a));
    assert!(!stray.exists());

    // A flipped byte in the pack, or in a log entry before its last, is corruption.
    let good = std::fs::read(&pack).unwrap();
    let mut bad = good.clone();
    bad[40] ^= 1;
    std::fs::write(&pack, &bad).unwrap();
    assert!(matches!(
        FsStore::open(&a, StoreConfig::default()),
        Err(OpenError::Corrupt(_))
    ));
    std::fs::write(&pack, &good).unwrap();
    let mut log = std::fs::read(&dead).unwrap();
    log[0] ^= 1;
    std::fs::write(&dead, &log).unwrap();
    assert!(matches!(
        FsStore::open(&a, StoreConfig::default()),
        Err(OpenError::Corrupt(_))
    ));
}
