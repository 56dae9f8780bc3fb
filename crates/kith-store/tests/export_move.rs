//! Exporting with `ImportMode::Reference`: the filesystem store hands its copy over to
//! the exported file and references it there, so the bytes exist once.

use kith_store::collection::{export_dir_with, import_dir};
use kith_store::{FsStore, ImportMode, MemStore, ReadError, Store, StoreConfig};

fn data(n: usize) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

fn data_files(root: &std::path::Path) -> usize {
    std::fs::read_dir(root.join("blobs"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "data")
        })
        .count()
}

#[test]
fn a_moved_out_blob_is_stored_once_and_still_verified() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let store = FsStore::open(&root, StoreConfig::default()).unwrap();
    let bytes = data(300_000);
    let hash = store.import_bytes(&bytes).unwrap();
    assert_eq!(data_files(&root), 1);
    let out = tmp.path().join("out.bin");
    assert_eq!(
        store
            .export_file_with(hash, &out, ImportMode::Reference)
            .unwrap(),
        300_000
    );
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
    assert_eq!(data_files(&root), 0, "the store kept a second copy");
    assert_eq!(
        store.external_path(hash),
        Some(std::fs::canonicalize(&out).unwrap())
    );
    assert_eq!(
        store.read_range(hash, 1000..2000).unwrap(),
        &bytes[1000..2000]
    );
    // Survives a reopen.
    drop(store);
    let store = FsStore::open(&root, StoreConfig::default()).unwrap();
    assert!(store.status(hash).unwrap().unwrap().bitfield.is_complete());
    assert_eq!(store.read_range(hash, 0..10).unwrap(), &bytes[..10]);
    // A target that exists is refused and nothing changes.
    let other = store.import_bytes(b"other").unwrap();
    std::fs::write(tmp.path().join("taken"), b"mine").unwrap();
    assert!(
        store
            .export_file_with(other, &tmp.path().join("taken"), ImportMode::Reference)
            .is_err()
    );
    assert_eq!(std::fs::read(tmp.path().join("taken")).unwrap(), b"mine");
    assert_eq!(store.read_range(other, 0..5).unwrap(), b"other");
    // Editing the exported file is caught on the next read.
    std::fs::write(&out, b"changed").unwrap();
    assert!(matches!(
        store.read_range(hash, 0..10),
        Err(ReadError::ExternalChanged { .. })
    ));
}

#[test]
fn a_collection_exported_in_place_leaves_no_second_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("a"), data(100_000)).unwrap();
    std::fs::write(src.join("d/b"), data(40_000)).unwrap();
    std::fs::write(src.join("d/dup"), data(40_000)).unwrap();
    let root = tmp.path().join("store");
    let store = FsStore::open(&root, StoreConfig::default()).unwrap();
    let hash = import_dir(&store, &src).unwrap();
    let out = tmp.path().join("out");
    export_dir_with(&store, hash, &out, ImportMode::Reference).unwrap();
    for f in ["a", "d/b", "d/dup"] {
        assert_eq!(
            std::fs::read(src.join(f)).unwrap(),
            std::fs::read(out.join(f)).unwrap()
        );
    }
    // Only the manifest is still owned by the store; the duplicate file was copied from
    // the first export (verified), the rest moved.
    assert_eq!(data_files(&root), 1);
    // A store that cannot reference files copies.
    let mem = MemStore::new(StoreConfig::default());
    let h = mem.import_bytes(b"x").unwrap();
    mem.export_file_with(h, &tmp.path().join("m"), ImportMode::Reference)
        .unwrap();
    assert_eq!(mem.read_range(h, 0..1).unwrap(), b"x");
}

/// A writer that blocks until it is released.
struct Gate(std::sync::mpsc::Receiver<()>);

impl std::io::Write for Gate {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.recv();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_slow_reader_of_the_memory_store_does_not_block_others() {
    let store = std::sync::Arc::new(MemStore::new(StoreConfig::default()));
    let hash = store.import_bytes(&data(100_000)).unwrap();
    let (release, gate) = std::sync::mpsc::channel();
    let s2 = store.clone();
    let slow = std::thread::spawn(move || s2.encode_range(hash, 0..100_000, &mut Gate(gate)));
    // While the slow encode waits inside its writer, the store keeps answering.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let s3 = store.clone();
    std::thread::spawn(move || {
        let r = s3.read_range(hash, 0..10).map(|v| v.len());
        let _ = done_tx.send(r.ok());
    });
    assert_eq!(
        done_rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .unwrap(),
        Some(10)
    );
    drop(release);
    assert!(slow.join().unwrap().is_ok());
}
