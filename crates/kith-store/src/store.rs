//! Types shared by the store implementations: configuration, blob and tag descriptions,
//! errors, and the verified-import driver.

use std::io::{self, Read, Write};
use std::ops::Range;
use std::path::PathBuf;

use crate::range::{BlobSource, DecodeError, GrowBuf, RangeDecoder, SizeProof, Step, encode_from};
use crate::tree::{GROUP_SIZE, MAX_BLOB_SIZE, PAIR_LEN, group_count, groups_overlapping};
use crate::{Bitfield, Hash};

/// Limits of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreConfig {
    /// Largest blob the store accepts, in bytes (at most [`MAX_BLOB_SIZE`]). A partial
    /// blob counts with its full size. Default: 1 TiB.
    pub max_blob_size: u64,
    /// Largest sum of blob sizes the store holds, in bytes. External blobs
    /// ([`ImportMode::Reference`]) do not count: the store does not hold their bytes.
    /// Default: unlimited.
    pub max_total_size: u64,
    /// For the filesystem store: how many groups of one partial blob, stored by
    /// [`Store::import_verified`] (in one import or several), may wait before they are
    /// synced and recorded in the persisted bitfield. Larger batches cost fewer syncs; a
    /// crash loses at most one batch (or [`sync_interval`](Self::sync_interval) of
    /// imports, whichever is less), which is fetched again. Default: 4096 (64 MiB): at
    /// hundreds of MiB/s a batch then comes a few times a second, where 4 MiB batches
    /// cost a download about 5 % of its CPU time in syncs.
    ///
    /// [`Store::import_verified`]: crate::Store::import_verified
    pub sync_every_groups: u64,
    /// For the filesystem store: how often its flusher thread records the groups that
    /// wait, whatever their number (so a stored group waits about this long, plus the
    /// batch's own time; [`Store::flush`] and dropping the store sync at once).
    /// Default: 1 s.
    ///
    /// [`Store::flush`]: crate::Store::flush
    pub sync_interval: std::time::Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_blob_size: 1 << 40,
            max_total_size: u64::MAX,
            sync_every_groups: 4096,
            sync_interval: std::time::Duration::from_secs(1),
        }
    }
}

impl StoreConfig {
    pub(crate) fn blob_limit(&self) -> u64 {
        self.max_blob_size.min(MAX_BLOB_SIZE)
    }

    /// Checks that a blob of `size` bytes fits, given `used` bytes already held.
    pub(crate) fn check(&self, size: u64, used: u64) -> Result<(), ImportError> {
        let limit = self.blob_limit();
        if size > limit {
            return Err(ImportError::TooLarge { size, limit });
        }
        let available = self.max_total_size.saturating_sub(used);
        if size > available {
            return Err(ImportError::StoreFull {
                size,
                available,
                limit: self.max_total_size,
            });
        }
        Ok(())
    }
}

/// What a tag's blob is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BlobFormat {
    /// A plain blob.
    Raw,
    /// A collection manifest (see [`collection`](crate::collection)): its listed blobs are
    /// pinned too.
    Collection,
}

/// The target of a tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tag {
    /// The tagged blob.
    pub hash: Hash,
    /// How to read it.
    pub format: BlobFormat,
}

impl Tag {
    /// A tag for a plain blob.
    pub fn raw(hash: Hash) -> Self {
        Self {
            hash,
            format: BlobFormat::Raw,
        }
    }

    /// A tag for a collection manifest.
    pub fn collection(hash: Hash) -> Self {
        Self {
            hash,
            format: BlobFormat::Collection,
        }
    }
}

/// Size and present groups of a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobStatus {
    /// Verified size in bytes.
    pub size: u64,
    /// Present groups.
    pub bitfield: Bitfield,
}

/// One entry of [`Store::list`](crate::Store::list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    /// The blob's hash.
    pub hash: Hash,
    /// Its size in bytes.
    pub size: u64,
    /// Whether every group is present.
    pub complete: bool,
}

/// What [`Store::gc`](crate::Store::gc) removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs deleted.
    pub deleted: u64,
    /// Sum of their sizes.
    pub bytes: u64,
}

/// How [`Store::import_file_with`](crate::Store::import_file_with) takes in a file.
///
/// # Trade-off
///
/// A copy belongs to the store: it stays readable whatever happens to the original, and
/// reading it costs a disk read. A reference costs no disk space and no copy: importing a
/// 50 GB file only hashes it and writes its outboard (1/256 of its size), so it runs at
/// hashing speed instead of disk-write speed. In exchange the store depends on the user's
/// file staying as it was:
///
/// - every read, export and range encoding of an external blob hashes the bytes it returns
///   and checks each 16 KiB group against the outboard and the root hash first, so an
///   external blob is never served unverified, and reads cost about one BLAKE3 pass over
///   what they return;
/// - before each read the file's size, modification time and identity (device and inode)
///   are compared with those recorded at import, a cheap early error for ordinary edits;
/// - if the file was modified, truncated, replaced or deleted, reads fail with
///   [`ReadError::ExternalChanged`] and the store cannot repair the blob: import it again
///   (a changed file is a different blob) or import a copy while the file is still intact.
///   A change that leaves the metadata alone is caught group by group: groups that still
///   verify keep reading, the changed ones fail.
///
/// [`status`](crate::Store::status) and [`list`](crate::Store::list) do not touch the
/// file: they report an external blob complete even after its file changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ImportMode {
    /// Copy the file's bytes into the store.
    #[default]
    Copy,
    /// Reference the file in place by its absolute path (an *external* blob). Stores that
    /// cannot reference files ([`MemStore`](crate::MemStore)) copy instead.
    Reference,
}

/// Why an external blob's file no longer holds the blob (see
/// [`ReadError::ExternalChanged`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ExternalFault {
    /// The file is gone: nothing exists at its path any more (deleted or renamed).
    #[error("the file is missing")]
    Missing,
    /// The path names a different file than at import (another device or inode): it was
    /// replaced, for example by an editor that saves through a rename.
    #[error("the path names a different file")]
    Replaced,
    /// The file's size differs from the blob's: it was truncated or extended (found
    /// before reading, or by a read that ended early).
    #[error("the file's size is {actual} bytes, the blob's {expected}")]
    SizeChanged {
        /// The blob's size.
        expected: u64,
        /// The file's size now.
        actual: u64,
    },
    /// The file's modification time differs from the one recorded at import.
    #[error("the file was modified")]
    Modified,
    /// A group's bytes do not hash to the value the outboard and the root hash commit to:
    /// the content changed while size, modification time and identity did not.
    #[error("group {index} does not verify")]
    GroupMismatch {
        /// Index of the group.
        index: u64,
    },
    /// The store's own outboard for the blob does not verify against its hash at the
    /// parent node splitting at `split`: the store's files were damaged.
    #[error("the outboard does not verify at split {split}")]
    OutboardMismatch {
        /// Split point of the node that failed.
        split: u64,
    },
}

/// Errors of the import operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// The blob is larger than [`StoreConfig::max_blob_size`].
    #[error("blob of {size} bytes exceeds the store's blob size limit of {limit} bytes")]
    TooLarge {
        /// Size of the blob (for a streamed import: bytes read so far).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The store would exceed [`StoreConfig::max_total_size`].
    #[error("blob of {size} bytes does not fit: {available} of {limit} bytes left in the store")]
    StoreFull {
        /// Size of the blob.
        size: u64,
        /// Bytes still available.
        available: u64,
        /// The store's total size limit.
        limit: u64,
    },
    /// An encoded range did not verify or was truncated; what verified before is kept.
    #[error("encoded range rejected")]
    Decode(#[source] DecodeError),
    /// The store already holds blob `hash` with a different verified size (only possible
    /// if BLAKE3 had a collision, or the store's files were tampered with).
    #[error("stored size {stored} disagrees with the verified size {verified}")]
    SizeConflict {
        /// Size on record.
        stored: u64,
        /// Size the stream proved.
        verified: u64,
    },
    /// An encoding without a size proof ([`SizeProof::Omitted`]) was offered for a blob
    /// the store does not hold, so it has no verified size to check it against.
    ///
    /// [`SizeProof::Omitted`]: crate::SizeProof::Omitted
    #[error("no verified size held for {0}: the encoding needs its size proof")]
    SizeUnknown(Hash),
    /// A reference import ([`ImportMode::Reference`]) saw the file's size, modification
    /// time or identity change while it was hashing it; nothing was recorded.
    #[error("{0} changed while it was being imported")]
    FileChanged(PathBuf),
    /// An I/O error reading the input or writing the store (for a reference import, also:
    /// the path is not a regular file).
    #[error("I/O error during import")]
    Io(#[source] io::Error),
}

/// Errors of reading from a store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The store has no part of the blob.
    #[error("blob {0} not found")]
    NotFound(Hash),
    /// A group the read needs is missing from a partial blob.
    #[error("group {index} of blob {hash} is not present")]
    Missing {
        /// The blob.
        hash: Hash,
        /// First missing group needed.
        index: u64,
    },
    /// The file an external blob references ([`ImportMode::Reference`]) no longer holds
    /// the blob's bytes. Nothing unverified was returned: a read returns nothing, while a
    /// writer (export, range encoding) may have received the verified bytes that precede
    /// the failing group.
    #[error("external file {path} of blob {hash} no longer holds it: {fault}")]
    ExternalChanged {
        /// The blob.
        hash: Hash,
        /// The file it references.
        path: PathBuf,
        /// What is wrong with the file.
        fault: ExternalFault,
    },
    /// An I/O error reading the store or writing the output.
    #[error("I/O error during read")]
    Io(#[source] io::Error),
}

/// Errors of [`Store::export_file`](crate::Store::export_file).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// Reading the blob failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Creating or syncing the target file failed (it may exist already).
    #[error("I/O error writing the exported file")]
    Io(#[source] io::Error),
}

/// Errors of the tag operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TagError {
    /// Tag names are 1 to 255 bytes of ASCII letters, digits, `-`, `_` and `.`, not
    /// starting with `.`.
    #[error("invalid tag name {0:?}")]
    InvalidName(String),
    /// An I/O error persisting tags.
    #[error("I/O error writing tags")]
    Io(#[source] io::Error),
}

/// Errors of listing, deleting and garbage collection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An I/O error on the store's files.
    #[error("store I/O error")]
    Io(#[source] io::Error),
}

pub(crate) fn check_tag_name(name: &str) -> Result<(), TagError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(TagError::InvalidName(name.to_owned()))
    }
}

/// Fails with [`ReadError::Missing`] unless groups `[first, end)` are present; `None`
/// stands for a complete blob.
pub(crate) fn need(
    hash: Hash,
    bitfield: Option<&Bitfield>,
    first: u64,
    end: u64,
) -> Result<(), ReadError> {
    if let Some(bf) = bitfield {
        if let Some(index) = (first..end).find(|&i| !bf.get(i)) {
            return Err(ReadError::Missing { hash, index });
        }
    }
    Ok(())
}

/// [`Store::read_range`](crate::Store::read_range) over any blob source.
pub(crate) fn read_range_from(
    src: &mut dyn BlobSource,
    hash: Hash,
    size: u64,
    bitfield: Option<&Bitfield>,
    range: Range<u64>,
) -> Result<Vec<u8>, ReadError> {
    let start = range.start.min(size);
    let end = range.end.min(size).max(start);
    let (first, last) = groups_overlapping(size, start, end);
    need(hash, bitfield, first, last)?;
    let mut out = vec![0u8; (end - start) as usize];
    src.read_data(start, &mut out).map_err(ReadError::Io)?;
    Ok(out)
}

/// [`Store::encode_range_with`](crate::Store::encode_range_with) over any blob source:
/// checks that every group the encoding holds (the requested ones, and the last one if
/// the size proof is included) is present.
pub(crate) fn encode_range_from(
    src: &mut dyn BlobSource,
    hash: Hash,
    size: u64,
    bitfield: Option<&Bitfield>,
    range: Range<u64>,
    proof: SizeProof,
    out: &mut dyn Write,
) -> Result<u64, ReadError> {
    let n = group_count(size);
    let (first, last) = groups_overlapping(size, range.start, range.end);
    need(hash, bitfield, first, last)?;
    if proof == SizeProof::Included {
        need(hash, bitfield, n - 1, n)?;
    }
    encode_from(src, size, None, range.start, range.end, proof, out)
        .map_err(|e| ReadError::Io(e.into()))
}

/// Where [`import_verified`] writes verified pieces of one partial blob.
pub(crate) trait PartialSink {
    /// Stores a verified outboard entry.
    fn put_pair(&mut self, split: u64, pair: &[u8; PAIR_LEN]) -> io::Result<()>;
    /// Stores a verified group (not yet marked present).
    fn put_group(&mut self, index: u64, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Stores consecutive verified groups from `first` on, whose bytes start at
    /// `offset` (not yet marked present). By default one [`put_group`](Self::put_group)
    /// per group; a file-backed sink writes them at once.
    fn put_groups(&mut self, first: u64, offset: u64, data: &[u8]) -> io::Result<()> {
        for (i, g) in data.chunks(GROUP_SIZE as usize).enumerate() {
            let at = i as u64;
            self.put_group(first + at, offset + at * GROUP_SIZE, g)?;
        }
        Ok(())
    }
    /// Marks the groups written since the last commit present (the sink decides when
    /// they are made durable).
    fn commit(&mut self, groups: &[u64]) -> io::Result<()>;
    /// The current status.
    fn status(&self) -> BlobStatus;
}

/// Verified bytes gathered into one write ([`Run`]): at most 256 KiB, 16 groups.
const WRITE_RUN: usize = 256 * 1024;

/// A run is stored once its first group waited this long, whatever its length: on a
/// slow stream a full run would hold back groups that peers could be served and that
/// the downloader counts to keep its requests flowing.
const RUN_WAIT: std::time::Duration = std::time::Duration::from_millis(1);

/// Consecutive verified groups not yet handed to the sink: one write and one commit
/// for many groups, instead of a write and a store-wide lock per 16 KiB. The decoder
/// appends each group's bytes to `data` itself, so each byte is copied once.
struct Run {
    offset: u64,
    data: GrowBuf,
    groups: Vec<u64>,
    /// When the first group arrived.
    started: std::time::Instant,
}

impl Default for Run {
    fn default() -> Self {
        Self {
            offset: 0,
            data: GrowBuf::with_capacity(WRITE_RUN + GROUP_SIZE as usize),
            groups: Vec::new(),
            started: std::time::Instant::now(),
        }
    }
}

impl Run {
    /// Takes group `index` at `offset`, whose bytes the decoder appended to `data` at
    /// `at`. If it does not continue the run, the groups before it are stored first.
    fn took<S: PartialSink>(
        &mut self,
        index: u64,
        offset: u64,
        at: usize,
        sink: &mut S,
        on_stored: &mut dyn FnMut(u64),
    ) -> io::Result<()> {
        if !self.groups.is_empty() && self.offset + at as u64 != offset {
            self.store_first(at, sink, on_stored)?;
        }
        if self.groups.is_empty() {
            self.offset = offset;
            self.started = std::time::Instant::now();
        }
        self.groups.push(index);
        Ok(())
    }

    /// Writes the run, marks its groups present (peers may be served them while the
    /// rest arrives) and reports them; empties it.
    fn store<S: PartialSink>(
        &mut self,
        sink: &mut S,
        on_stored: &mut dyn FnMut(u64),
    ) -> io::Result<()> {
        self.store_first(self.data.len(), sink, on_stored)
    }

    /// [`store`](Self::store) of the run's groups, which fill the first `len` bytes
    /// of `data`; what follows them stays.
    fn store_first<S: PartialSink>(
        &mut self,
        len: usize,
        sink: &mut S,
        on_stored: &mut dyn FnMut(u64),
    ) -> io::Result<()> {
        let Some(&first) = self.groups.first() else {
            return Ok(());
        };
        sink.put_groups(first, self.offset, &self.data.as_slice()[..len])?;
        sink.commit(&self.groups)?;
        for &g in &self.groups {
            on_stored(g);
        }
        self.data.drain_front(len);
        self.groups.clear();
        Ok(())
    }
}

/// Decodes `encoded` and feeds what verifies to the sink that `open` returns for the
/// verified size. Parent entries that precede the first group (whose arrival proves the
/// size) are held back in a bounded buffer. With `known`, the encoding carries no size
/// proof and must claim exactly that size, which the caller holds verified.
pub(crate) fn import_verified<S: PartialSink>(
    hash: Hash,
    range: Range<u64>,
    known: Option<u64>,
    encoded: &mut dyn Read,
    config: &StoreConfig,
    on_stored: &mut dyn FnMut(u64),
    open: impl FnOnce(u64) -> Result<S, ImportError>,
) -> Result<BlobStatus, ImportError> {
    let mut dec = match known {
        None => RangeDecoder::new(encoded, hash, range, config.blob_limit()),
        Some(size) => RangeDecoder::with_known_size(encoded, hash, range, size),
    }
    .map_err(ImportError::Decode)?;
    let mut open = Some(open);
    let mut sink: Option<S> = None;
    let mut held: Vec<(u64, [u8; PAIR_LEN])> = Vec::new();
    let size = dec.size();
    let mut failure = None;
    let mut run = Run::default();
    loop {
        let at = run.data.len();
        let item = match dec.next_into(&mut run.data) {
            None => break,
            Some(Ok(i)) => i,
            Some(Err(e)) => {
                failure = Some(ImportError::Decode(e));
                break;
            }
        };
        match item {
            Step::Parent { split, pair } => match sink.as_mut() {
                Some(s) => s.put_pair(split, &pair).map_err(ImportError::Io)?,
                // The size proof is a single root-to-leaf path: at most 64 entries.
                None => held.push((split, pair)),
            },
            Step::Group { index, offset } => {
                if sink.is_none() {
                    let Some(open) = open.take() else {
                        break;
                    };
                    let mut s = open(size)?;
                    for (split, pair) in held.drain(..) {
                        s.put_pair(split, &pair).map_err(ImportError::Io)?;
                    }
                    sink = Some(s);
                }
                let Some(s) = sink.as_mut() else { break };
                run.took(index, offset, at, s, on_stored)
                    .map_err(ImportError::Io)?;
                if run.data.len() >= WRITE_RUN || run.started.elapsed() >= RUN_WAIT {
                    run.store(s, on_stored).map_err(ImportError::Io)?;
                }
            }
        }
    }
    // What verified before a failure is kept.
    if let Some(s) = sink.as_mut() {
        run.store(s, on_stored).map_err(ImportError::Io)?;
    }
    let Some(s) = sink else {
        return match failure {
            Some(e) => Err(e),
            // An encoding without groups cannot exist: the size proof is always present.
            None => Err(ImportError::Decode(DecodeError::Truncated)),
        };
    };
    match failure {
        Some(e) => Err(e),
        None => Ok(s.status()),
    }
}
