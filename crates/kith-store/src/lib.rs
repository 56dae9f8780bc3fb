//! kith-store: BLAKE3 content-addressed blobs with verified streaming.
//!
//! A blob is named by its [`Hash`](struct@Hash), the standard BLAKE3 hash of its bytes (what `b3sum`
//! prints). Beside each blob larger than one 16 KiB chunk group the store keeps an
//! *outboard*: BLAKE3's own hash tree above the groups (1/256 of the data, see [`tree`]).
//! With it any byte range can be sent with a proof ([`range`]) and checked group by group
//! before it is written, so blobs can be fetched in pieces from untrusted peers.
//!
//! The [`Store`] trait has two implementations: [`MemStore`] and the crash-safe
//! [`FsStore`]. Both hold complete and partial blobs (a [`Bitfield`] says which groups
//! are present), tags that pin blobs, and garbage-collect what no tag reaches.
//! [`collection`] stores a directory as a manifest blob plus its files' blobs.
//!
//! [`FsStore`] can also take in a file without copying it ([`ImportMode::Reference`]): it
//! keeps the file's path, size, modification time and identity beside the outboard, and
//! verifies every group of such an *external* blob against the outboard when reading it,
//! failing with [`ReadError::ExternalChanged`] once the file no longer holds the blob.
//!
//! The API is synchronous and does no networking; async callers use `spawn_blocking`.
//!
//! ```
//! use kith_store::{MemStore, Store, StoreConfig, Tag};
//!
//! let store = MemStore::new(StoreConfig::default());
//! let data = vec![42u8; 100_000];
//! let hash = store.import_bytes(&data)?;
//! assert_eq!(hash.to_string(), blake3::hash(&data).to_hex().as_str());
//! store.set_tag("mine", Tag::raw(hash))?;
//!
//! // Send bytes 40 000..40 100 with their proof to a second store, which verifies them.
//! let mut wire = Vec::new();
//! store.encode_range(hash, 40_000..40_100, &mut wire)?;
//! let other = MemStore::new(StoreConfig::default());
//! let status = other.import_verified(hash, 40_000..40_100, &mut &wire[..], &mut |_| {})?;
//! assert!(!status.bitfield.is_complete());
//! assert_eq!(other.read_range(hash, 40_000..40_100)?, &data[40_000..40_100]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

use std::fmt;
use std::io::{Read, Write};
use std::ops::Range;
use std::path::Path;

mod bitfield;
pub mod collection;
mod fs;
mod mem;
pub mod range;
mod store;
pub mod tree;

pub use bitfield::Bitfield;
pub use fs::{FsStore, OpenError};
pub use mem::MemStore;
pub use range::{
    DecodeError, DecodeItem, RangeDecoder, SizeProof, decode_range, encode_range, encode_range_with,
};
pub use store::{
    BlobFormat, BlobInfo, BlobStatus, ExportError, ExternalFault, GcReport, ImportError,
    ImportMode, ReadError, StoreConfig, StoreError, Tag, TagError,
};
pub use tree::{GROUP_SIZE, MAX_BLOB_SIZE, group_count, outboard, outboard_len};

/// Bytes [`Store::read_range_to`] reads at a time: 64 groups (1 MiB).
pub const READ_WINDOW: u64 = 64 * GROUP_SIZE;

/// A content id: the BLAKE3 hash of a blob's bytes. Displays as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash([u8; 32]);

impl Hash {
    /// The hash of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self::from(blake3::hash(data))
    }

    /// Wraps 32 hash bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 hash bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl From<blake3::Hash> for Hash {
    fn from(h: blake3::Hash) -> Self {
        Self(*h.as_bytes())
    }
}

impl From<[u8; 32]> for Hash {
    fn from(b: [u8; 32]) -> Self {
        Self(b)
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(blake3::Hash::from(self.0).to_hex().as_str())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({self})")
    }
}

/// A string that is not 64 hex digits.
#[derive(Debug, Clone, thiserror::Error)]
#[error("a hash is 64 hex digits")]
pub struct ParseHashError;

impl std::str::FromStr for Hash {
    type Err = ParseHashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        blake3::Hash::from_hex(s)
            .map(Self::from)
            .map_err(|_| ParseHashError)
    }
}

/// A content-addressed blob store.
///
/// Implementations take `&self` and lock internally, so a store can be shared between
/// threads. Every method is blocking.
pub trait Store {
    /// Imports `data` as a complete blob and returns its hash.
    fn import_bytes(&self, data: &[u8]) -> Result<Hash, ImportError>;

    /// Imports everything `reader` yields as a complete blob, streaming: the data is
    /// never held in memory at once by the filesystem store.
    fn import_reader(&self, reader: &mut dyn Read) -> Result<Hash, ImportError>;

    /// Imports the file at `path` as a complete blob, streaming, copying its bytes into
    /// the store.
    fn import_file(&self, path: &Path) -> Result<Hash, ImportError> {
        let mut f = std::fs::File::open(path).map_err(ImportError::Io)?;
        self.import_reader(&mut f)
    }

    /// Imports the file at `path` as a complete blob, copying it or referencing it in
    /// place as `mode` asks (see [`ImportMode`] for the trade-off). The default, used by
    /// stores that cannot reference files such as [`MemStore`], copies:
    /// [`import_file`](Self::import_file). [`FsStore`] references.
    fn import_file_with(&self, path: &Path, mode: ImportMode) -> Result<Hash, ImportError> {
        let _ = mode;
        self.import_file(path)
    }

    /// [`import_file_with`](Self::import_file_with) for many files at once; returns
    /// their hashes in order, or the first failure. A store may make the batch durable
    /// together ([`FsStore`] references a batch with a few syncs in all rather than
    /// four per file). The default imports one file after another.
    fn import_files_with(
        &self,
        paths: &[&Path],
        mode: ImportMode,
    ) -> Result<Vec<Hash>, ImportError> {
        paths
            .iter()
            .map(|p| self.import_file_with(p, mode))
            .collect()
    }

    /// Imports an encoded range of blob `hash` (see [`range`]) from `encoded`, adding its
    /// groups to a partial blob (created if needed). Every parent entry and group is
    /// verified before it is written; the first that fails ends the import with
    /// [`ImportError::Decode`], keeping what was verified before. `on_stored` is called
    /// with each group's index once that group is stored and present (readable and
    /// served). Returns the blob's status afterwards.
    ///
    /// Stored is not yet durable: the filesystem store makes groups survive a crash in
    /// batches, across imports (see [`StoreConfig::sync_every_groups`] and
    /// [`StoreConfig::sync_interval`]); [`flush`](Self::flush) makes everything stored
    /// so far durable. A crash loses at most the groups of the last unsynced batch, and
    /// never makes an unverified group present.
    fn import_verified(
        &self,
        hash: Hash,
        range: Range<u64>,
        encoded: &mut dyn Read,
        on_stored: &mut dyn FnMut(u64),
    ) -> Result<BlobStatus, ImportError> {
        self.import_verified_with(hash, range, SizeProof::Included, encoded, on_stored)
    }

    /// [`import_verified`](Self::import_verified) of an encoding made with or without the
    /// size proof. [`SizeProof::Omitted`] is accepted only for a blob the store already
    /// holds (partly or whole): its size was verified when it was first stored, and the
    /// encoding must claim exactly that size ([`ImportError::SizeUnknown`] otherwise, and
    /// [`DecodeError::SizeMismatch`] for another size).
    fn import_verified_with(
        &self,
        hash: Hash,
        range: Range<u64>,
        proof: SizeProof,
        encoded: &mut dyn Read,
        on_stored: &mut dyn FnMut(u64),
    ) -> Result<BlobStatus, ImportError>;

    /// Makes every group stored so far durable (for the filesystem store: synced to
    /// disk and recorded, surviving a crash). The default does nothing: a store in
    /// memory has nothing to make durable.
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Size and present groups of blob `hash`, or `None` if the store has none of it.
    fn status(&self, hash: Hash) -> Result<Option<BlobStatus>, StoreError>;

    /// Reads bytes `range` of blob `hash` (clamped to its size). Every group the range
    /// touches must be present.
    fn read_range(&self, hash: Hash, range: Range<u64>) -> Result<Vec<u8>, ReadError>;

    /// Writes bytes `range` of blob `hash` (clamped to its size) to `out`, a window of at
    /// most [`READ_WINDOW`] bytes at a time, and returns how many it wrote: the streaming
    /// form of [`read_range`](Self::read_range) for large ranges (memory stays bounded
    /// whatever the range). Every group the range touches must be present; they are
    /// checked before anything is written. Windows start on group boundaries, so an
    /// external blob's groups are each verified once.
    fn read_range_to(
        &self,
        hash: Hash,
        range: Range<u64>,
        out: &mut dyn Write,
    ) -> Result<u64, ReadError> {
        let status = self
            .status(hash)
            .map_err(|StoreError::Io(e)| ReadError::Io(e))?
            .ok_or(ReadError::NotFound(hash))?;
        let size = status.size;
        let start = range.start.min(size);
        let end = range.end.min(size).max(start);
        let (first, last) = tree::groups_overlapping(size, start, end);
        if let Some(index) = (first..last).find(|&g| !status.bitfield.get(g)) {
            return Err(ReadError::Missing { hash, index });
        }
        let mut at = start;
        while at < end {
            let next = ((at / READ_WINDOW + 1) * READ_WINDOW).min(end);
            let bytes = self.read_range(hash, at..next)?;
            out.write_all(&bytes).map_err(ReadError::Io)?;
            at = next;
        }
        Ok(end - start)
    }

    /// Writes the encoding of bytes `range` of blob `hash` with its proof (see [`range`])
    /// to `out`; returns the bytes written. Every group the encoding holds must be present.
    fn encode_range(
        &self,
        hash: Hash,
        range: Range<u64>,
        out: &mut dyn Write,
    ) -> Result<u64, ReadError> {
        self.encode_range_with(hash, range, SizeProof::Included, out)
    }

    /// [`encode_range`](Self::encode_range), with or without the size proof: a receiver
    /// that holds the blob's verified size needs none ([`SizeProof::Omitted`]).
    fn encode_range_with(
        &self,
        hash: Hash,
        range: Range<u64>,
        proof: SizeProof,
        out: &mut dyn Write,
    ) -> Result<u64, ReadError>;

    /// Writes the whole of complete blob `hash` to `out`; returns its size.
    fn export_writer(&self, hash: Hash, out: &mut dyn Write) -> Result<u64, ReadError>;

    /// Writes complete blob `hash` to a new file at `path` (which must not exist), synced
    /// to disk; returns its size. If reading the blob fails (for an external blob whose
    /// file changed, say), the new file is removed again.
    fn export_file(&self, hash: Hash, path: &Path) -> Result<u64, ExportError> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(ExportError::Io)?;
        let result = (|| {
            let mut w = std::io::BufWriter::with_capacity(1 << 20, &mut f);
            let n = self.export_writer(hash, &mut w)?;
            w.flush().map_err(ExportError::Io)?;
            drop(w);
            f.sync_all().map_err(ExportError::Io)?;
            Ok(n)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(path);
        }
        result
    }

    /// Like [`export_file`](Self::export_file); with [`ImportMode::Reference`] a store
    /// that can reference files ([`FsStore`]) hands its own copy of an owned blob over to
    /// `path` instead of copying it, and keeps the blob as an external blob there, so the
    /// bytes exist once (reads of it are verified from then on). Stores that cannot, and
    /// blobs that are external already, copy.
    fn export_file_with(
        &self,
        hash: Hash,
        path: &Path,
        mode: ImportMode,
    ) -> Result<u64, ExportError> {
        let _ = mode;
        self.export_file(hash, path)
    }

    /// [`export_file_with`](Self::export_file_with) for many files at once (blob, path);
    /// returns the bytes written per file. A store may make the batch durable together
    /// ([`FsStore`] hands its files over with a few syncs for the whole batch rather
    /// than several per file). The default exports one file after another.
    fn export_files_with(
        &self,
        files: &[(Hash, &Path)],
        mode: ImportMode,
    ) -> Result<Vec<u64>, ExportError> {
        files
            .iter()
            .map(|(h, p)| self.export_file_with(*h, p, mode))
            .collect()
    }

    /// Every blob, complete or partial, sorted by hash.
    fn list(&self) -> Result<Vec<BlobInfo>, StoreError>;

    /// Removes blob `hash` (complete or partial); returns whether it was there. Tags
    /// naming it stay (and name a missing blob).
    fn delete(&self, hash: Hash) -> Result<bool, StoreError>;

    /// Sets tag `name` to `tag`, replacing any previous value. A tag pins its blob (and,
    /// for a collection, the blobs it lists) against [`gc`](Self::gc).
    fn set_tag(&self, name: &str, tag: Tag) -> Result<(), TagError>;

    /// Removes tag `name`; returns its previous value.
    fn remove_tag(&self, name: &str) -> Result<Option<Tag>, TagError>;

    /// Every tag, sorted by name.
    fn tags(&self) -> Result<Vec<(String, Tag)>, StoreError>;

    /// Deletes every blob no tag reaches: a raw tag reaches its blob; a collection tag
    /// reaches its manifest and, once the manifest is complete, every blob it lists.
    /// Import and tag a blob before running `gc` concurrently with other users.
    fn gc(&self) -> Result<GcReport, StoreError> {
        let mut live = std::collections::BTreeSet::new();
        for (_, tag) in self.tags()? {
            live.insert(tag.hash);
            if tag.format == BlobFormat::Collection {
                if let Ok(m) = collection::read_manifest(self, tag.hash) {
                    live.extend(m.entries.iter().filter_map(|e| e.hash().ok()));
                }
            }
        }
        let mut report = GcReport::default();
        for info in self.list()? {
            if !live.contains(&info.hash) && self.delete(info.hash)? {
                report.deleted += 1;
                report.bytes += info.size;
            }
        }
        Ok(report)
    }
}
