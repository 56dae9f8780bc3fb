//! Collections: a directory stored as a manifest blob plus one blob per file.
//!
//! The manifest is a protobuf message (schema in `docs/proto/store.proto`):
//!
//! ```text
//! message Manifest { repeated Entry entries = 1; }
//! message Entry {
//!   string path = 1;      // relative, '/'-separated, no '.', '..' or empty components
//!   bytes hash = 2;       // BLAKE3 hash of the file, 32 bytes
//!   uint64 size = 3;      // file size in bytes
//!   bool executable = 4;  // any execute bit set
//! }
//! ```
//!
//! Entries are sorted by path when written. A manifest is rejected when it is larger than
//! [`MAX_MANIFEST_SIZE`], has more than [`MAX_ENTRIES`] entries, a path that is absolute,
//! contains `..`, `.`, an empty component, a backslash or a NUL, is longer than
//! [`MAX_PATH_LEN`], appears twice, or names a file that another path uses as a directory.
//! Empty directories and symbolic links are not represented: importing a tree with a
//! symbolic link or a special file fails.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use crate::{ExportError, Hash, ImportError, ReadError, Store, StoreError};

/// Largest manifest accepted, in bytes (16 MiB).
pub const MAX_MANIFEST_SIZE: u64 = 16 << 20;
/// Most entries a manifest may list.
pub const MAX_ENTRIES: usize = 1 << 20;
/// Longest path accepted, in bytes.
pub const MAX_PATH_LEN: usize = 4096;

/// A collection manifest: relative path → file.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Manifest {
    /// The files, sorted by path.
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<Entry>,
}

/// One file of a [`Manifest`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Entry {
    /// Relative `/`-separated path.
    #[prost(string, tag = "1")]
    pub path: String,
    /// BLAKE3 hash of the file's bytes (32 bytes).
    #[prost(bytes = "vec", tag = "2")]
    pub hash: Vec<u8>,
    /// File size in bytes.
    #[prost(uint64, tag = "3")]
    pub size: u64,
    /// Whether the file is executable.
    #[prost(bool, tag = "4")]
    pub executable: bool,
}

impl Entry {
    /// The entry's hash, if it is 32 bytes.
    pub fn hash(&self) -> Result<Hash, ManifestError> {
        <[u8; 32]>::try_from(self.hash.as_slice())
            .map(Hash::from)
            .map_err(|_| ManifestError::BadHash(self.path.clone()))
    }
}

/// Errors of decoding and validating a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The encoded manifest exceeds [`MAX_MANIFEST_SIZE`].
    #[error("manifest of {0} bytes exceeds the limit")]
    TooLarge(u64),
    /// The manifest lists more than [`MAX_ENTRIES`] entries.
    #[error("manifest lists {0} entries, more than the limit")]
    TooManyEntries(usize),
    /// An entry's length runs past the end of the manifest.
    #[error("manifest entry runs past the end")]
    Truncated,
    /// The bytes are not a valid protobuf `Manifest`.
    #[error("manifest is not valid protobuf")]
    Protobuf(#[from] prost::DecodeError),
    /// A path is empty, absolute, too long, or has a `..`, `.` or empty component, a
    /// backslash or a NUL.
    #[error("invalid path {0:?} in manifest")]
    BadPath(String),
    /// A path is listed twice.
    #[error("duplicate path {0:?} in manifest")]
    Duplicate(String),
    /// A path is listed as a file and used as a directory by another entry.
    #[error("path {0:?} is both a file and a directory")]
    FileDirConflict(String),
    /// An entry's hash is not 32 bytes.
    #[error("entry {0:?} has a hash that is not 32 bytes")]
    BadHash(String),
}

fn check_path(p: &str) -> Result<(), ManifestError> {
    let bad = p.is_empty()
        || p.len() > MAX_PATH_LEN
        || p.starts_with('/')
        || p.contains('\\')
        || p.contains('\0')
        || p.split('/').any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        Err(ManifestError::BadPath(p.to_owned()))
    } else {
        Ok(())
    }
}

impl Manifest {
    /// Decodes and validates a manifest (see the [module docs](self) for what is
    /// rejected).
    pub fn decode_checked(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() as u64 > MAX_MANIFEST_SIZE {
            return Err(ManifestError::TooLarge(bytes.len() as u64));
        }
        // Entry by entry, each checked for its 32-byte hash as it is decoded: an entry
        // thus costs at least 36 bytes of the manifest, and a peer's two-byte empty
        // entries never pile up into whole structures (what decoding the list at once
        // would do: 80 MB for a 2 MiB manifest).
        use prost::encoding::{WireType, decode_key, decode_varint};
        let mut buf = bytes;
        let mut entries = Vec::new();
        while !buf.is_empty() {
            let (tag, wire_type) = decode_key(&mut buf)?;
            if tag != 1 || wire_type != WireType::LengthDelimited {
                prost::encoding::skip_field(
                    wire_type,
                    tag,
                    &mut buf,
                    prost::encoding::DecodeContext::default(),
                )?;
                continue;
            }
            let len = decode_varint(&mut buf)?;
            let len = usize::try_from(len)
                .ok()
                .filter(|&l| l <= buf.len())
                .ok_or(ManifestError::Truncated)?;
            let (one, rest) = buf.split_at(len);
            buf = rest;
            let e = <Entry as prost::Message>::decode(one)?;
            e.hash()?;
            if entries.len() >= MAX_ENTRIES {
                return Err(ManifestError::TooManyEntries(entries.len() + 1));
            }
            entries.push(e);
        }
        let m = Manifest { entries };
        m.validate()?;
        Ok(m)
    }

    /// Checks the rules of the [module docs](self).
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.entries.len() > MAX_ENTRIES {
            return Err(ManifestError::TooManyEntries(self.entries.len()));
        }
        let mut files = BTreeSet::new();
        for e in &self.entries {
            check_path(&e.path)?;
            e.hash()?;
            if !files.insert(e.path.as_str()) {
                return Err(ManifestError::Duplicate(e.path.clone()));
            }
        }
        for e in &self.entries {
            // Every proper prefix directory of a path must not be a file.
            for (i, _) in e.path.match_indices('/') {
                if files.contains(&e.path[..i]) {
                    return Err(ManifestError::FileDirConflict(e.path[..i].to_owned()));
                }
            }
        }
        Ok(())
    }

    /// Encodes the manifest.
    pub fn encode_to_vec(&self) -> Vec<u8> {
        prost::Message::encode_to_vec(self)
    }
}

/// Errors of importing and exporting collections.
#[derive(Debug, thiserror::Error)]
pub enum CollectionError {
    /// The manifest is invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The manifest blob or a listed blob is not (completely) in the store.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Importing a file or the manifest failed.
    #[error(transparent)]
    Import(#[from] ImportError),
    /// Exporting a file failed.
    #[error(transparent)]
    Export(#[from] ExportError),
    /// Querying the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file name is not valid UTF-8, or the tree holds a symbolic link or special file.
    #[error("unsupported file {0}")]
    Unsupported(PathBuf),
    /// An exported file's size differs from the manifest.
    #[error("blob for {path:?} has {actual} bytes, the manifest says {expected}")]
    SizeMismatch {
        /// The entry's path.
        path: String,
        /// Size in the manifest.
        expected: u64,
        /// Size of the blob.
        actual: u64,
    },
    /// Walking or writing the directory failed.
    #[error("I/O error on {1}")]
    Io(#[source] io::Error, PathBuf),
}

fn io_at(p: &Path) -> impl FnOnce(io::Error) -> CollectionError + '_ {
    move |e| CollectionError::Io(e, p.to_owned())
}

#[cfg(unix)]
fn is_executable(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_meta: &std::fs::Metadata) -> bool {
    false
}

fn walk(
    dir: &Path,
    prefix: &str,
    out: &mut Vec<(String, PathBuf, bool)>,
) -> Result<(), CollectionError> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io_at(dir))? {
        let e = e.map_err(io_at(dir))?;
        names.push(e.path());
    }
    names.sort();
    for path in names {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| CollectionError::Unsupported(path.clone()))?
            .to_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let meta = std::fs::symlink_metadata(&path).map_err(io_at(&path))?;
        if meta.is_dir() {
            walk(&path, &rel, out)?;
        } else if meta.is_file() {
            out.push((rel, path, is_executable(&meta)));
        } else {
            return Err(CollectionError::Unsupported(path));
        }
    }
    Ok(())
}

/// Imports every file under `dir` and a manifest listing them; returns the manifest's
/// hash. Tag it with [`Tag::collection`](crate::Tag::collection) to pin the whole tree.
pub fn import_dir<S: Store + ?Sized>(store: &S, dir: &Path) -> Result<Hash, CollectionError> {
    import_dir_with(store, dir, crate::ImportMode::Copy)
}

/// Like [`import_dir`], importing each file as `mode` asks: with
/// [`ImportMode::Reference`](crate::ImportMode::Reference) a filesystem store keeps the
/// files where they are (no copy) and verifies them whenever it reads them.
pub fn import_dir_with<S: Store + ?Sized>(
    store: &S,
    dir: &Path,
    mode: crate::ImportMode,
) -> Result<Hash, CollectionError> {
    let mut files = Vec::new();
    walk(dir, "", &mut files)?;
    let mut m = Manifest::default();
    for (rel, path, executable) in files {
        let size = std::fs::metadata(&path).map_err(io_at(&path))?.len();
        let hash = store.import_file_with(&path, mode)?;
        m.entries.push(Entry {
            path: rel,
            hash: hash.as_bytes().to_vec(),
            size,
            executable,
        });
    }
    m.entries.sort_by(|a, b| a.path.cmp(&b.path));
    m.validate()?;
    let bytes = m.encode_to_vec();
    if bytes.len() as u64 > MAX_MANIFEST_SIZE {
        return Err(ManifestError::TooLarge(bytes.len() as u64).into());
    }
    Ok(store.import_bytes(&bytes)?)
}

/// Reads and validates the manifest blob `hash`.
pub fn read_manifest<S: Store + ?Sized>(
    store: &S,
    hash: Hash,
) -> Result<Manifest, CollectionError> {
    let status = store.status(hash)?.ok_or(ReadError::NotFound(hash))?;
    if status.size > MAX_MANIFEST_SIZE {
        return Err(ManifestError::TooLarge(status.size).into());
    }
    let bytes = store.read_range(hash, 0..status.size)?;
    Ok(Manifest::decode_checked(&bytes)?)
}

/// Writes the collection `hash` as a new directory `target` (which must not exist),
/// restoring every file and its executable bit.
pub fn export_dir<S: Store + ?Sized>(
    store: &S,
    hash: Hash,
    target: &Path,
) -> Result<(), CollectionError> {
    export_dir_with(store, hash, target, crate::ImportMode::Copy)
}

/// Like [`export_dir`]; with [`ImportMode::Reference`](crate::ImportMode::Reference) a
/// filesystem store hands its own copies over to the new files and references them there
/// (see [`Store::export_file_with`]), so the tree is not stored twice.
pub fn export_dir_with<S: Store + ?Sized>(
    store: &S,
    hash: Hash,
    target: &Path,
    mode: crate::ImportMode,
) -> Result<(), CollectionError> {
    let m = read_manifest(store, hash)?;
    std::fs::create_dir(target).map_err(io_at(target))?;
    let mut files = Vec::with_capacity(m.entries.len());
    for e in &m.entries {
        let path = target.join(&e.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_at(parent))?;
        }
        files.push((e.hash()?, path));
    }
    // One batch: a store may make the whole tree durable together.
    let batch: Vec<(Hash, &Path)> = files.iter().map(|(h, p)| (*h, p.as_path())).collect();
    let written = store.export_files_with(&batch, mode)?;
    for ((e, (_, path)), n) in m.entries.iter().zip(&files).zip(written) {
        if n != e.size {
            return Err(CollectionError::SizeMismatch {
                path: e.path.clone(),
                expected: e.size,
                actual: n,
            });
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = if e.executable { 0o755 } else { 0o644 };
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .map_err(io_at(path))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str) -> Entry {
        Entry {
            path: path.into(),
            hash: vec![0; 32],
            size: 0,
            executable: false,
        }
    }

    fn manifest(paths: &[&str]) -> Vec<u8> {
        Manifest {
            entries: paths.iter().map(|p| entry(p)).collect(),
        }
        .encode_to_vec()
    }

    #[test]
    fn rejects_bad_manifests() {
        for bad in [
            &["../x"][..],
            &["/etc/passwd"],
            &["a/../b"],
            &["a//b"],
            &["./a"],
            &[""],
            &["a\\b"],
            &["a", "a"],
            &["a", "a/b"],
        ] {
            assert!(Manifest::decode_checked(&manifest(bad)).is_err(), "{bad:?}");
        }
        assert!(Manifest::decode_checked(&manifest(&["a/b", "a/c", "b"])).is_ok());
        let mut short = Manifest {
            entries: vec![entry("x")],
        };
        short.entries[0].hash = vec![1; 31];
        assert!(Manifest::decode_checked(&short.encode_to_vec()).is_err());
        assert!(Manifest::decode_checked(&[0xff, 0xff]).is_err());
    }

    fn config() -> proptest::test_runner::Config {
        proptest::test_runner::Config {
            cases: 256,
            rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x6d61_6e69),
            failure_persistence: None,
            ..Default::default()
        }
    }

    proptest::proptest! {
        #![proptest_config(config())]

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = Manifest::decode_checked(&bytes);
        }

        #[test]
        fn valid_manifests_roundtrip(
            names in proptest::collection::btree_set("[a-z]{1,8}(/[a-z0-9._-]{1,8}){0,2}", 0..12),
            exec in proptest::prelude::any::<bool>(),
        ) {
            // Drop names that are a directory of another name (a file/dir clash).
            let all: Vec<String> = names.iter().cloned().collect();
            let entries: Vec<Entry> = all
                .iter()
                .filter(|n| !all.iter().any(|o| o.starts_with(&format!("{n}/"))))
                .filter(|n| n.split('/').all(|c| c != "." && c != ".."))
                .map(|n| Entry { path: n.clone(), hash: vec![3; 32], size: 9, executable: exec })
                .collect();
            let m = Manifest { entries };
            let back = Manifest::decode_checked(&m.encode_to_vec());
            proptest::prop_assert_eq!(back.ok(), Some(m));
        }

        #[test]
        fn a_dotdot_anywhere_is_rejected(prefix in "[a-z]{0,3}", suffix in "[a-z]{0,3}") {
            let mut path = String::new();
            if !prefix.is_empty() { path.push_str(&prefix); path.push('/'); }
            path.push_str("..");
            if !suffix.is_empty() { path.push('/'); path.push_str(&suffix); }
            let m = Manifest { entries: vec![entry(&path)] };
            proptest::prop_assert!(Manifest::decode_checked(&m.encode_to_vec()).is_err());
        }
    }
}
