//! The filesystem store.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};

use crate::range::{BlobSource, DecodeError, Piece, WalkError, encode_from, read_into, walk};
use crate::store::{
    PartialSink, check_tag_name, encode_range_from, import_verified, need, read_range_from,
};
use crate::tree::{
    GROUP_SIZE, PAIR_LEN, PairSink, TreeBuilder, group_count, groups_overlapping, outboard_len,
};
use crate::{
    Bitfield, BlobFormat, BlobInfo, BlobStatus, ExternalFault, Hash, ImportError, ImportMode,
    ReadError, SizeProof, Store, StoreConfig, StoreError, Tag, TagError,
};

mod packs;

const BITFIELD_MAGIC: &[u8; 8] = b"kithbf01";
const EXTERNAL_MAGIC: &[u8; 8] = b"kithex01";
/// A record that carries its blob's outboard (a small blob's, see [`SMALL_BLOB`]).
const EXTERNAL_MAGIC_INLINE: &[u8; 8] = b"kithex02";
/// A complete blob of at most this size (4 groups) keeps no outboard file: an owned one
/// computes its outboard from its bytes when opened, an external one carries it in its
/// record. A download of many small files so creates one file per file, not two.
const SMALL_BLOB: u64 = 4 * GROUP_SIZE;
/// Most small outboards kept in memory after their blobs completed (at most 192 bytes
/// each: 12 MiB at worst).
const SMALL_OB_CACHE: usize = 65_536;
/// The longest path an external record holds, in bytes (Linux's `PATH_MAX`). Checked on
/// import, and before allocating when a record is read back.
const MAX_EXTERNAL_PATH: usize = 4096;
/// Fixed part of an external record: magic, size, mtime seconds and nanoseconds, device,
/// inode, path length.
const EXTERNAL_FIXED: usize = 8 + 5 * 8 + 4;
/// The largest external record file: with an inline outboard (its length and at most
/// three pairs).
const MAX_EXTERNAL_RECORD: usize = EXTERNAL_FIXED + MAX_EXTERNAL_PATH + 4 + 3 * PAIR_LEN + 32;
/// Bytes read and written per step of a streaming import.
const IO_BUF: usize = 1 << 20;

/// The length of the outboard file of a complete blob of `size` bytes (see
/// [`SMALL_BLOB`]).
fn ob_file_len(size: u64) -> u64 {
    if size <= SMALL_BLOB {
        0
    } else {
        outboard_len(size)
    }
}

/// Computes the outboard of small complete blob `hash` (`size` at most [`SMALL_BLOB`])
/// from its bytes in `data`; `None` if they do not hash to `hash`.
fn small_outboard(data: &File, size: u64, hash: Hash) -> io::Result<Option<Arc<[u8]>>> {
    let mut buf = vec![0u8; size.min(SMALL_BLOB) as usize];
    data.read_exact_at(&mut buf, 0)?;
    let (root, ob) = crate::tree::outboard(&buf);
    Ok((root == hash && buf.len() as u64 == size).then(|| Arc::from(ob)))
}

/// Errors of [`FsStore::open`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Creating, reading or repairing the store's files failed.
    #[error("I/O error on {1}")]
    Io(#[source] io::Error, PathBuf),
    /// A file of the store does not have the expected format (it was not written by this
    /// store, or the disk corrupted it).
    #[error("corrupt store file {0}")]
    Corrupt(PathBuf),
}

/// A crash-safe [`Store`] in a directory.
///
/// # Layout
///
/// ```text
/// ROOT/blobs/HASH.data       a complete blob
/// ROOT/blobs/HASH.obao       its outboard (blobs of more than 64 KiB, see "Small blobs")
/// ROOT/blobs/HASH.ext        or, instead of HASH.data, the record of an external blob
/// ROOT/partial/HASH.data     a partial blob, written at group offsets
/// ROOT/partial/HASH.obao     its outboard entries received so far (of a small blob: only
///                            once a batch records it before it is complete)
/// ROOT/partial/HASH.bitfield the verified size and the groups that are durable
/// ROOT/refs/ID.pack          the records of many external blobs (see "Record packs")
/// ROOT/refs/ID.dead          which of them were deleted since
/// ROOT/tags                  one line per tag: NAME raw|collection HASH
/// ROOT/tmp/                  imports in progress, emptied on open
/// ```
///
/// # External blobs
///
/// [`ImportMode::Reference`] leaves the bytes in the user's file and writes only the
/// outboard (`HASH.obao`, as for any blob) and a record, `HASH.ext`, whose presence makes
/// the blob complete in place of `HASH.data`:
///
/// ```text
/// magic     8 bytes  "kithex01"
/// size      u64 le   the blob's size = the file's size at import
/// mtime     i64 le   the file's modification time, seconds since the epoch
/// mtime_ns  i64 le   and its nanoseconds
/// dev       u64 le   the device and
/// ino       u64 le   inode of the file (its identity)
/// path_len  u32 le   at most 4096
/// path      path_len bytes: the file's absolute, canonical path
/// [ob_len   u32 le   only with magic "kithex02": a small blob's outboard, inline
///  outboard ob_len bytes, exactly the outboard's length (at most 3 pairs)]
/// check     32 bytes: BLAKE3 of everything above
/// ```
///
/// The import hashes the file through one open handle, checks that its size, mtime and
/// identity did not change meanwhile, syncs outboard and record in `tmp/`, then renames the
/// outboard and, last, the record into `blobs/` (directory synced after each): a crash
/// leaves no blob or a complete one. A record is read back only after its length is
/// checked against the bound above, and its check, magic, path length and size are
/// verified. Every read of an external blob compares the open file's size, mtime and
/// identity with the record, then verifies each group it returns against the outboard and
/// the hash ([`ReadError::ExternalChanged`] otherwise). Deleting an external blob removes
/// the record and the outboard, never the user's file. A copying import of the same
/// content replaces the record with an owned copy (`HASH.data` wins if both exist).
///
/// # Small blobs
///
/// A complete blob of at most 64 KiB (four groups) has no outboard file: it would double
/// the files a folder of small files costs. An owned one is read whole when opened and
/// its outboard computed from the bytes, which must hash to the blob's hash (an
/// `InvalidData` error otherwise: damaged bytes are never served under the hash). An
/// external one carries its outboard in its record, so every read still verifies each
/// group against it. While such a blob is partial, its received outboard entries are
/// kept in memory, and written to `partial/HASH.obao` (before its bitfield file) only if
/// a batch records it before it is complete; a partial small blob found on open without
/// them is fetched again.
///
/// # Record packs
///
/// A batch of at least 16 reference imports, or of blobs handed over by an export
/// ([`Store::export_files_with`]), writes its records as one pack, `refs/ID.pack`, instead
/// of a file each: the records, each with its hash, and a BLAKE3 check of the whole file
/// (at most 16,384 records per pack, so opening reads a bounded amount). The pack is
/// synced in `tmp/` and renamed in after the outboards, like a record. Deleting a packed
/// blob (or replacing it with an owned copy) appends its hash, with a check bound to the
/// pack, to `refs/ID.dead` and syncs it; a torn last entry of that log (a crash during the
/// append) is ignored on open. A pack whose records are all dead is removed with its log.
/// On open a later pack's record of a blob wins over an earlier one, and a record whose
/// blob has an owned `HASH.data` is marked dead. Exporting 50,000 files so costs one
/// created file instead of 50,000 (each created and renamed).
///
/// # Crash safety
///
/// Three invariants hold at every instant, so whatever point a process is killed at,
/// reopening the store finds a consistent state:
///
/// - *Nothing unverified is visible as verified.* A complete import is written and synced
///   in `tmp/`, and only then renamed into `blobs/` (outboard first, then data, the
///   directory synced after each). A `blobs/HASH.data` therefore always holds the whole,
///   hashed blob. A partial blob's groups count as present after a reopen only if the
///   bitfield file says so, and it is rewritten (temporary file, sync, atomic rename,
///   directory sync) only after the groups and their outboard entries are synced.
/// - *Syncs are batched, across imports.* A verified group is present (readable, served)
///   as soon as it is written; the groups of a partial blob are synced and recorded
///   together once [`StoreConfig::sync_every_groups`] of them wait or the oldest has
///   waited [`StoreConfig::sync_interval`], when the blob completes, on
///   [`Store::flush`], and when the store is dropped. Batches are written by the store's
///   own flusher thread, so an import never waits for one (an error of a background
///   batch is returned by the next import that commits groups). A crash loses at most
///   the unrecorded batch, which is simply fetched again.
/// - *Nothing flushed is lost.* Everything stored before [`Store::flush`] returned
///   survives a crash.
/// - *Partial blobs resume.* On open the store reads each bitfield file and continues from
///   it; a blob whose bitfield was complete but whose move into `blobs/` was interrupted
///   is finished on open.
///
/// Only one process may use a store directory at a time.
#[derive(Debug)]
pub struct FsStore {
    core: Arc<Core>,
    /// The thread that writes batches of records (see [`Flusher`]).
    flusher: Option<std::thread::JoinHandle<()>>,
}

/// The store itself; [`FsStore`] adds the background thread that records batches.
#[derive(Debug)]
struct Core {
    root: PathBuf,
    config: StoreConfig,
    inner: Mutex<Inner>,
    tmp_counter: AtomicU64,
    /// Held by the one batch of records being written ([`Core::persist`]).
    persisting: Mutex<()>,
    /// Wakes the background flusher.
    flusher: Flusher,
}

/// What the background flusher is asked to do.
#[derive(Debug, Default)]
struct FlushState {
    /// A batch is due (enough groups wait, or the oldest has waited long enough).
    due: bool,
    /// The store is being dropped: the thread ends.
    stop: bool,
    /// The last background batch failed: the next import that commits returns it (the
    /// groups stay present in memory and are recorded by a later batch or `flush`).
    error: Option<io::Error>,
}

/// Records batches in the background, so that no import waits for a batch of syncs (a
/// sync of the filesystem can take seconds when other programs left much unwritten, and
/// a request that stops for that long looks stalled to the peer-facing scheduler).
#[derive(Debug, Default)]
struct Flusher {
    state: Mutex<FlushState>,
    wake: std::sync::Condvar,
}

impl Flusher {
    fn lock(&self) -> MutexGuard<'_, FlushState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks for a batch now.
    fn request(&self) {
        self.lock().due = true;
        self.wake.notify_one();
    }

    /// Takes the error of the last background batch, if it failed.
    fn take_error(&self) -> Option<io::Error> {
        self.lock().error.take()
    }
}

/// The flusher thread: runs a batch when one is asked for, and every
/// [`StoreConfig::sync_interval`] while groups wait, until the store is dropped.
fn flusher_loop(core: Arc<Core>) {
    let interval = core
        .config
        .sync_interval
        .max(std::time::Duration::from_millis(10));
    loop {
        {
            let mut st = core.flusher.lock();
            while !st.due && !st.stop {
                let (g, timeout) = core
                    .flusher
                    .wake
                    .wait_timeout(st, interval)
                    .unwrap_or_else(|e| e.into_inner());
                st = g;
                if timeout.timed_out() {
                    break;
                }
            }
            if st.stop {
                return;
            }
            st.due = false;
        }
        let waiting = !core.lock().unsynced.is_empty();
        if waiting {
            if let Err(e) = core.persist() {
                core.flusher.lock().error = Some(e);
            }
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Complete blobs, owned and external.
    complete: BTreeMap<Hash, u64>,
    /// The records of the complete blobs that are external (they do not count in `used`).
    external: BTreeMap<Hash, Arc<ExternalRecord>>,
    /// The present groups of each partial blob: recorded on disk, or stored and waiting
    /// for their batch to be synced (see `unsynced`).
    partial: BTreeMap<Hash, Bitfield>,
    partial_size: BTreeMap<Hash, u64>,
    /// Partial blobs with present groups not yet recorded on disk: how many each.
    unsynced: BTreeMap<Hash, u64>,
    /// Groups recorded in each partial blob's bitfield file.
    recorded: BTreeMap<Hash, u64>,
    /// The outboard entries received so far of each partial small blob of more than one
    /// group (see [`SMALL_BLOB`]): written to `partial/HASH.obao` only when a batch
    /// records the blob before it is complete.
    small_pairs: std::collections::HashMap<Hash, Vec<u8>>,
    /// The outboards of small blobs completed by verified imports since the store was
    /// opened (at most [`SMALL_OB_CACHE`]): an export hands them to the records without
    /// reading and hashing each file again.
    small_ob: std::collections::HashMap<Hash, Arc<[u8]>>,
    tags: BTreeMap<String, Tag>,
    used: u64,
    /// Which external blobs have their record in a pack (the others have a record file).
    packs: packs::Packs,
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn remove_if_exists(p: &Path) -> io::Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Writes `bytes` to `path` atomically: temporary file, sync, rename, directory sync.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    sync_dir(dir)
}

fn encode_bitfield(size: u64, b: &Bitfield) -> Vec<u8> {
    let mut out = Vec::with_capacity(48 + (b.len() as usize).div_ceil(8));
    out.extend_from_slice(BITFIELD_MAGIC);
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(&b.to_bytes());
    let check = blake3::hash(&out);
    out.extend_from_slice(check.as_bytes());
    out
}

fn decode_bitfield(bytes: &[u8], limit: u64) -> Option<(u64, Bitfield)> {
    let body_len = bytes.len().checked_sub(32)?;
    let (body, check) = bytes.split_at(body_len);
    if blake3::hash(body).as_bytes() != check || body.get(..8)? != BITFIELD_MAGIC {
        return None;
    }
    let size = u64::from_le_bytes(body.get(8..16)?.try_into().ok()?);
    if size > limit {
        return None;
    }
    Some((size, Bitfield::from_bytes(size, body.get(16..)?)?))
}

/// What the store records of an external blob's file (see [`FsStore`], "External blobs").
#[derive(Debug, Clone, PartialEq, Eq)]
struct ExternalRecord {
    path: PathBuf,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
    dev: u64,
    ino: u64,
    /// The outboard of a small blob of more than one group (see [`SMALL_BLOB`]), which
    /// has no outboard file.
    outboard: Option<Arc<[u8]>>,
}

impl ExternalRecord {
    fn of(path: PathBuf, m: &fs::Metadata) -> Self {
        Self {
            path,
            size: m.len(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
            dev: m.dev(),
            ino: m.ino(),
            outboard: None,
        }
    }

    /// Whether the outboard this record's blob needs is where it should be: in the
    /// record, or in a file of `file_len` bytes (`None`: there is none).
    fn outboard_ok(&self, file_len: Option<u64>) -> bool {
        match &self.outboard {
            Some(ob) => ob.len() as u64 == outboard_len(self.size),
            None => outboard_len(self.size) == 0 || file_len == Some(outboard_len(self.size)),
        }
    }

    /// Compares the file's metadata now with the record.
    fn check(&self, m: &fs::Metadata) -> Result<(), ExternalFault> {
        if (m.dev(), m.ino()) != (self.dev, self.ino) {
            Err(ExternalFault::Replaced)
        } else if m.len() != self.size {
            Err(ExternalFault::SizeChanged {
                expected: self.size,
                actual: m.len(),
            })
        } else if (m.mtime(), m.mtime_nsec()) != (self.mtime, self.mtime_nsec) {
            Err(ExternalFault::Modified)
        } else {
            Ok(())
        }
    }

    fn encode(&self) -> Vec<u8> {
        let path = self.path.as_os_str().as_bytes();
        let mut out = Vec::with_capacity(EXTERNAL_FIXED + path.len() + 4 + 3 * PAIR_LEN + 32);
        out.extend_from_slice(if self.outboard.is_some() {
            EXTERNAL_MAGIC_INLINE
        } else {
            EXTERNAL_MAGIC
        });
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.mtime.to_le_bytes());
        out.extend_from_slice(&self.mtime_nsec.to_le_bytes());
        out.extend_from_slice(&self.dev.to_le_bytes());
        out.extend_from_slice(&self.ino.to_le_bytes());
        // The import refuses longer paths, so this fits.
        out.extend_from_slice(&(path.len() as u32).to_le_bytes());
        out.extend_from_slice(path);
        if let Some(ob) = &self.outboard {
            // At most three pairs (a small blob's).
            out.extend_from_slice(&(ob.len() as u32).to_le_bytes());
            out.extend_from_slice(ob);
        }
        let check = blake3::hash(&out);
        out.extend_from_slice(check.as_bytes());
        out
    }

    /// Parses a record, rejecting anything malformed and sizes above `limit`.
    fn decode(bytes: &[u8], limit: u64) -> Option<Self> {
        if bytes.len() > MAX_EXTERNAL_RECORD {
            return None;
        }
        let body_len = bytes.len().checked_sub(32)?;
        let (body, check) = bytes.split_at(body_len);
        if blake3::hash(body).as_bytes() != check {
            return None;
        }
        let inline = match body.get(..8)? {
            m if m == EXTERNAL_MAGIC => false,
            m if m == EXTERNAL_MAGIC_INLINE => true,
            _ => return None,
        };
        let u64_at = |o: usize| Some(u64::from_le_bytes(body.get(o..o + 8)?.try_into().ok()?));
        let size = u64_at(8)?;
        let mtime = u64_at(16)? as i64;
        let mtime_nsec = u64_at(24)? as i64;
        let dev = u64_at(32)?;
        let ino = u64_at(40)?;
        let path_len = u32::from_le_bytes(body.get(48..52)?.try_into().ok()?) as usize;
        if path_len > MAX_EXTERNAL_PATH || size > limit {
            return None;
        }
        let path = body.get(EXTERNAL_FIXED..EXTERNAL_FIXED + path_len)?;
        let rest = &body[EXTERNAL_FIXED + path_len..];
        let outboard = if inline {
            let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as u64;
            let ob = rest.get(4..)?;
            if size > SMALL_BLOB || len != outboard_len(size) || ob.len() as u64 != len || len == 0
            {
                return None;
            }
            Some(Arc::from(ob))
        } else if rest.is_empty() {
            None
        } else {
            return None;
        };
        let path = PathBuf::from(OsStr::from_bytes(path));
        if !path.is_absolute() {
            return None;
        }
        Some(Self {
            path,
            size,
            mtime,
            mtime_nsec,
            dev,
            ino,
            outboard,
        })
    }
}

/// Reads the file at `p` if it is at most `max` bytes long; `None` if it is longer.
fn read_bounded(p: &Path, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut bytes = Vec::new();
    File::open(p)?
        .take(max as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok((bytes.len() <= max).then_some(bytes))
}

/// Collects outboard entries and writes them to a file in coalesced runs, so a streaming
/// import does not pay one system call per 64-byte entry. Holds at most `cap` entries.
struct PairWriter<'a> {
    file: &'a File,
    pending: Vec<(u64, [u8; PAIR_LEN])>,
    cap: usize,
}

impl<'a> PairWriter<'a> {
    fn new(file: &'a File, cap: usize) -> Self {
        Self {
            file,
            pending: Vec::with_capacity(cap),
            cap,
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        write_pairs(self.file, &mut self.pending)
    }
}

/// Writes outboard entries `(split, pair)` to `file` in coalesced runs (one write per
/// stretch of consecutive entries) and empties `pending`.
fn write_pairs(file: &File, pending: &mut Vec<(u64, [u8; PAIR_LEN])>) -> io::Result<()> {
    pending.sort_unstable_by_key(|(s, _)| *s);
    let mut run: Vec<u8> = Vec::with_capacity(pending.len() * PAIR_LEN);
    let mut run_start = 0;
    let mut next = 0;
    for (split, pair) in pending.drain(..) {
        if run.is_empty() || split != next {
            if !run.is_empty() {
                file.write_all_at(&run, (run_start - 1) * PAIR_LEN as u64)?;
                run.clear();
            }
            run_start = split;
        }
        run.extend_from_slice(&pair);
        next = split + 1;
    }
    if !run.is_empty() {
        file.write_all_at(&run, (run_start - 1) * PAIR_LEN as u64)?;
    }
    Ok(())
}

impl PairSink for PairWriter<'_> {
    fn put_pair(&mut self, split: u64, pair: &[u8; PAIR_LEN]) -> io::Result<()> {
        self.pending.push((split, *pair));
        if self.pending.len() >= self.cap {
            self.flush()?;
        }
        Ok(())
    }
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The most a [`FileSource`] reads ahead of a walk: a system call per 256 KiB rather
/// than per group.
const READ_AHEAD: usize = 256 * 1024;

/// The most outboard bytes a [`FileSource`] reads at once (256 entries): the entries
/// inside a walked range lie side by side, so one read serves many.
const OB_READ_AHEAD: usize = 16 * 1024;

/// A stored blob's files, read for a walk: data and outboard entries are read ahead
/// within the range the walk announced ([`BlobSource::will_read`]), so a walk costs a
/// system call per [`READ_AHEAD`] bytes rather than two per group. A walk still
/// verifies each group it hands on (for an external file), from the very bytes read.
struct FileSource {
    data: File,
    outboard: ObSource,
    /// Data read ahead.
    win: ReadAhead,
    /// Outboard bytes read ahead.
    ob_win: ReadAhead,
    /// The end of the data the current walk reads (see `will_read`).
    read_end: u64,
    /// The outboard bytes of the entries inside the current walk's range.
    ob_range: (u64, u64),
}

impl FileSource {
    fn new(data: File, outboard: ObSource) -> Self {
        Self {
            data,
            outboard,
            win: ReadAhead::default(),
            ob_win: ReadAhead::default(),
            read_end: 0,
            ob_range: (0, 0),
        }
    }
}

/// Bytes of a file read ahead, from `at` on.
#[derive(Default)]
struct ReadAhead {
    buf: Vec<u8>,
    at: u64,
}

impl ReadAhead {
    fn holds(&self, offset: u64, len: usize) -> bool {
        offset >= self.at && offset + len as u64 <= self.at + self.buf.len() as u64
    }

    /// Bytes `[offset, offset + len)` of `file`: from what is held, else from one read of
    /// up to `ahead` bytes from `offset`. `None` if the file ends before them.
    fn get(
        &mut self,
        file: &File,
        offset: u64,
        len: usize,
        ahead: usize,
    ) -> io::Result<Option<&[u8]>> {
        if !self.holds(offset, len) {
            self.buf.resize(ahead.max(len), 0);
            let n = read_at_most(file, &mut self.buf, offset)?;
            self.buf.truncate(n);
            self.at = offset;
        }
        let from = (offset - self.at) as usize;
        Ok(self.buf.get(from..from + len))
    }
}

/// Reads from `f` at `at` into `buf` until it is full or the file ends; how much it read.
fn read_at_most(f: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], at + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Where a blob's outboard is read from.
enum ObSource {
    /// A blob of one group has none.
    None,
    /// Its outboard file.
    File(File),
    /// In memory: a small blob's (see [`SMALL_BLOB`]).
    Mem(Arc<[u8]>),
}

impl BlobSource for FileSource {
    fn read_data(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.data.read_exact_at(buf, offset)
    }

    fn will_read(&mut self, start: u64, end: u64) {
        self.read_end = end;
        // The entries of the nodes inside the groups `[a, b)` split at `a + 1 ..= b - 1`.
        let a = start / GROUP_SIZE;
        let b = end.div_ceil(GROUP_SIZE);
        self.ob_range = (a * PAIR_LEN as u64, b.saturating_sub(1) * PAIR_LEN as u64);
    }

    fn data<'a>(
        &'a mut self,
        offset: u64,
        len: usize,
        scratch: &'a mut [u8],
    ) -> io::Result<&'a [u8]> {
        // Read ahead only within the announced walk: a request for a few groups reads
        // those.
        let ahead = (self.read_end.saturating_sub(offset)).min(READ_AHEAD as u64) as usize;
        if ahead <= len && !self.win.holds(offset, len) {
            let data = &self.data;
            return read_into(scratch, len, |buf| data.read_exact_at(buf, offset));
        }
        self.win
            .get(&self.data, offset, len, ahead)?
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::UnexpectedEof, "failed to fill whole buffer")
            })
    }

    fn read_pair(&mut self, split: u64) -> io::Result<[u8; PAIR_LEN]> {
        let mut pair = [0u8; PAIR_LEN];
        let at = (split - 1) * PAIR_LEN as u64;
        let truncated = || io::Error::other("outboard truncated");
        match &self.outboard {
            ObSource::None => Err(io::Error::new(io::ErrorKind::NotFound, "outboard missing")),
            ObSource::Mem(ob) => {
                let p = usize::try_from(at)
                    .ok()
                    .and_then(|at| ob.get(at..at + PAIR_LEN))
                    .ok_or_else(truncated)?;
                pair.copy_from_slice(p);
                Ok(pair)
            }
            // An entry inside the walked range: read ahead with its neighbours.
            ObSource::File(f)
                if at >= self.ob_range.0 && at + PAIR_LEN as u64 <= self.ob_range.1 =>
            {
                let ahead = (self.ob_range.1 - at).min(OB_READ_AHEAD as u64) as usize;
                let p = self
                    .ob_win
                    .get(f, at, PAIR_LEN, ahead)?
                    .ok_or_else(truncated)?;
                pair.copy_from_slice(p);
                Ok(pair)
            }
            ObSource::File(f) => {
                f.read_exact_at(&mut pair, at).map_err(|e| match e.kind() {
                    // Only the data file ending early means a truncated blob file.
                    io::ErrorKind::UnexpectedEof => truncated(),
                    _ => e,
                })?;
                Ok(pair)
            }
        }
    }
}

impl FsStore {
    /// Opens (creating if needed) the store in directory `root` with the given limits,
    /// clears unfinished imports, finishes interrupted completions of partial blobs, and
    /// loads tags and bitfields. Starts the store's flusher thread (it records batches of
    /// received groups; it ends when the store is dropped).
    pub fn open(root: impl AsRef<Path>, config: StoreConfig) -> Result<Self, OpenError> {
        let root = root.as_ref().to_owned();
        let core = Arc::new(Core {
            root: root.clone(),
            config,
            inner: Mutex::default(),
            tmp_counter: AtomicU64::new(0),
            persisting: Mutex::new(()),
            flusher: Flusher::default(),
        });
        core.load()?;
        let bg = core.clone();
        let flusher = std::thread::Builder::new()
            .name("kith-store-flush".into())
            .spawn(move || flusher_loop(bg))
            .map_err(|e| OpenError::Io(e, root))?;
        Ok(Self {
            core,
            flusher: Some(flusher),
        })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.core.root
    }

    /// The file that external blob `hash` references, or `None` if the store holds no
    /// such external blob (see [`ImportMode::Reference`]).
    pub fn external_path(&self, hash: Hash) -> Option<PathBuf> {
        self.core.external_path(hash)
    }
}

impl Core {
    fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn pack_path(&self, id: u64, ext: &str) -> PathBuf {
        self.dir("refs").join(format!("{id:016x}.{ext}"))
    }

    /// Writes `entries` (hash, encoded record) as packs in `tmp/`, synced, and returns
    /// each pack's temporary path and new id with the entries it holds.
    fn write_packs(
        &self,
        inner: &mut Inner,
        entries: &[(Hash, Vec<u8>)],
    ) -> io::Result<Vec<(PathBuf, u64, Vec<Hash>)>> {
        let mut out = Vec::new();
        for chunk in entries.chunks(packs::MAX_PACK_ENTRIES) {
            let tmp = self.tmp_path("pack");
            File::create(&tmp)?.write_all(&packs::encode_pack(chunk))?;
            let hashes = chunk.iter().map(|(h, _)| *h).collect();
            out.push((tmp, inner.packs.allocate(), hashes));
        }
        let paths: Vec<PathBuf> = out.iter().map(|(p, _, _)| p.clone()).collect();
        self.sync_files(&paths)?;
        Ok(out)
    }

    /// Renames packs written by [`write_packs`](Self::write_packs) into `refs/` and syncs
    /// the directory: their records count from then on.
    fn install_packs(&self, written: &[(PathBuf, u64, Vec<Hash>)]) -> io::Result<()> {
        for (tmp, id, _) in written {
            fs::rename(tmp, self.pack_path(*id, "pack"))?;
        }
        sync_dir(&self.dir("refs"))
    }

    /// Marks packed records dead in their packs' logs (appended and synced), then removes
    /// the packs left without a live record (the pack first, then its log).
    fn mark_dead(&self, inner: &mut Inner, marks: &[(u64, Hash)]) -> io::Result<()> {
        if marks.is_empty() {
            return Ok(());
        }
        let mut logs: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        for (id, hash) in marks {
            logs.entry(*id)
                .or_default()
                .extend_from_slice(&packs::dead_entry(*id, hash));
        }
        for (id, bytes) in &logs {
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.pack_path(*id, "dead"))?;
            f.write_all(bytes)?;
            f.sync_data()?;
        }
        let refs = self.dir("refs");
        // A log may be new: its name must be durable too.
        sync_dir(&refs)?;
        let mut removed = false;
        for id in logs.keys() {
            if !inner.packs.is_live(*id) {
                self.remove_pack(inner, *id)?;
                removed = true;
            }
        }
        if removed {
            sync_dir(&refs)?;
        }
        Ok(())
    }

    /// Removes pack `id`, which has no live record, and its log.
    fn remove_pack(&self, inner: &mut Inner, id: u64) -> io::Result<()> {
        remove_if_exists(&self.pack_path(id, "pack"))?;
        remove_if_exists(&self.pack_path(id, "dead"))?;
        inner.packs.forget(id);
        Ok(())
    }

    /// Drops the record of external blob `hash` (deleted, or replaced by an owned copy):
    /// marks it dead in its pack, or removes its record file.
    fn drop_record(&self, inner: &mut Inner, hash: Hash) -> io::Result<()> {
        match inner.packs.remove(&hash) {
            Some((id, _)) => self.mark_dead(inner, &[(id, hash)]),
            None => {
                remove_if_exists(&self.path("blobs", hash, "ext"))?;
                sync_dir(&self.dir("blobs"))
            }
        }
    }

    fn path(&self, dir: &str, hash: Hash, ext: &str) -> PathBuf {
        self.root.join(dir).join(format!("{hash}.{ext}"))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn load(&self) -> Result<(), OpenError> {
        let at = |p: &Path| {
            let p = p.to_owned();
            move |e| OpenError::Io(e, p)
        };
        for d in ["blobs", "partial", "tmp", "refs"] {
            let p = self.dir(d);
            fs::create_dir_all(&p).map_err(at(&p))?;
        }
        // Unfinished complete imports.
        let tmp = self.dir("tmp");
        for e in fs::read_dir(&tmp).map_err(at(&tmp))? {
            let p = e.map_err(at(&tmp))?.path();
            fs::remove_file(&p).map_err(at(&p))?;
        }
        let mut inner = Inner::default();
        // Complete blobs: HASH.data, with an outboard of the right length.
        let blobs = self.dir("blobs");
        let mut orphans = Vec::new();
        let mut outboards = Vec::new();
        for e in fs::read_dir(&blobs).map_err(at(&blobs))? {
            let p = e.map_err(at(&blobs))?.path();
            let Some((hash, ext)) = parse_name(&p) else {
                orphans.push(p);
                continue;
            };
            match ext {
                "data" => {
                    let size = fs::metadata(&p).map_err(at(&p))?.len();
                    let ob = self.path("blobs", hash, "obao");
                    let ob_ok = ob_file_len(size) == 0
                        || fs::metadata(&ob).is_ok_and(|m| m.len() == ob_file_len(size));
                    if !ob_ok {
                        // A promotion moves the data first, so a crash can leave complete
                        // data without its outboard: rebuild it from the (synced) data,
                        // checked against the hash.
                        self.rebuild_outboard(hash, &p, &ob)?;
                    }
                    inner.complete.insert(hash, size);
                    inner.used += size;
                }
                "ext" => {
                    if self.path("blobs", hash, "data").exists() {
                        // A copy replaced the external blob; removing the record was
                        // interrupted.
                        orphans.push(p);
                        continue;
                    }
                    let rec = read_bounded(&p, MAX_EXTERNAL_RECORD)
                        .map_err(at(&p))?
                        .and_then(|b| ExternalRecord::decode(&b, self.config.blob_limit()))
                        .ok_or_else(|| OpenError::Corrupt(p.clone()))?;
                    let ob = self.path("blobs", hash, "obao");
                    if !self.external_outboard_ok(&rec, &ob) {
                        // The outboard is renamed before the record: not from a crash.
                        return Err(OpenError::Corrupt(ob));
                    }
                    inner.complete.insert(hash, rec.size);
                    inner.external.insert(hash, Arc::new(rec));
                }
                // Whose it is is known once packs and partial blobs are read.
                "obao" => outboards.push((hash, p)),
                _ => orphans.push(p),
            }
        }
        // Partial blobs: driven by their bitfield files.
        let partial = self.dir("partial");
        for e in fs::read_dir(&partial).map_err(at(&partial))? {
            let p = e.map_err(at(&partial))?.path();
            match parse_name(&p) {
                Some((hash, "bitfield")) => {
                    let bytes = fs::read(&p).map_err(at(&p))?;
                    let (size, bf) = decode_bitfield(&bytes, self.config.blob_limit())
                        .ok_or_else(|| OpenError::Corrupt(p.clone()))?;
                    if inner.complete.contains_key(&hash) {
                        self.remove_partial_files(hash).map_err(at(&p))?;
                    } else if bf.is_complete() {
                        self.promote(hash, size).map_err(at(&p))?;
                        inner.complete.entry(hash).or_insert(size);
                        inner.used += size;
                    } else {
                        if size <= SMALL_BLOB && outboard_len(size) > 0 {
                            // A small blob's outboard entries live in memory.
                            let ob = self.path("partial", hash, "obao");
                            let n = outboard_len(size) as usize;
                            match read_bounded(&ob, n) {
                                Ok(Some(pairs)) if pairs.len() == n => {
                                    inner.small_pairs.insert(hash, pairs);
                                }
                                // Not from this store's crashes (the outboard is synced
                                // before the bitfield): fetched again.
                                _ => {
                                    self.remove_partial_files(hash).map_err(at(&p))?;
                                    continue;
                                }
                            }
                        }
                        inner.recorded.insert(hash, bf.count());
                        inner.partial.insert(hash, bf);
                        inner.partial_size.insert(hash, size);
                        inner.used += size;
                    }
                }
                Some((hash, "data" | "obao")) => {
                    if !self.path("partial", hash, "bitfield").exists() {
                        orphans.push(p);
                    }
                }
                _ => orphans.push(p),
            }
        }
        self.load_packs(&mut inner, &mut orphans)?;
        // An outboard without data or record is an interrupted import, unless a complete
        // partial blob is being promoted (finished above).
        for (hash, p) in outboards {
            if !inner.complete.contains_key(&hash) && !inner.partial.contains_key(&hash) {
                orphans.push(p);
            }
        }
        for p in orphans {
            if p.is_file() {
                fs::remove_file(&p).map_err(at(&p))?;
            }
        }
        inner.tags = self.load_tags()?;
        *self.lock() = inner;
        Ok(())
    }

    /// Reads the record packs in `refs/` (in the order they were written: a later record
    /// of a blob wins) and repairs what a crash can leave: a record whose owned copy is
    /// still (or again) in `blobs/` is marked dead, packs without a live record and logs
    /// without a pack are removed.
    fn load_packs(&self, inner: &mut Inner, orphans: &mut Vec<PathBuf>) -> Result<(), OpenError> {
        let at = |p: &Path| {
            let p = p.to_owned();
            move |e| OpenError::Io(e, p)
        };
        let refs = self.dir("refs");
        let mut ids = std::collections::BTreeSet::new();
        let mut logs = std::collections::BTreeSet::new();
        for e in fs::read_dir(&refs).map_err(at(&refs))? {
            let p = e.map_err(at(&refs))?.path();
            // ID: 16 hex digits.
            let parsed = p
                .file_name()
                .and_then(OsStr::to_str)
                .and_then(|n| n.split_once('.'))
                .filter(|(id, _)| id.len() == 16)
                .and_then(|(id, ext)| Some((u64::from_str_radix(id, 16).ok()?, ext)));
            match parsed {
                Some((id, "pack")) => {
                    ids.insert(id);
                }
                Some((id, "dead")) => {
                    logs.insert(id);
                }
                _ => orphans.push(p),
            }
        }
        let mut repair = Vec::new();
        for &id in &ids {
            inner.packs.saw(id);
            let p = self.pack_path(id, "pack");
            let bytes = read_bounded(&p, packs::max_pack_len())
                .map_err(at(&p))?
                .ok_or_else(|| OpenError::Corrupt(p.clone()))?;
            let entries =
                packs::decode_pack(&bytes).ok_or_else(|| OpenError::Corrupt(p.clone()))?;
            let dead = if logs.contains(&id) {
                let d = self.pack_path(id, "dead");
                read_bounded(&d, packs::max_dead_len())
                    .map_err(at(&d))?
                    .and_then(|b| packs::decode_dead(id, &b))
                    .ok_or_else(|| OpenError::Corrupt(d.clone()))?
            } else {
                Default::default()
            };
            for (hash, rec) in entries {
                if dead.contains(&hash) {
                    continue;
                }
                let rec = ExternalRecord::decode(rec, self.config.blob_limit())
                    .ok_or_else(|| OpenError::Corrupt(p.clone()))?;
                if inner.complete.contains_key(&hash) && !inner.external.contains_key(&hash) {
                    // An owned copy wins (a move out cut before its rename, or a copy
                    // that replaced the reference before the record was marked dead).
                    repair.push((id, hash));
                    continue;
                }
                let ob = self.path("blobs", hash, "obao");
                if !self.external_outboard_ok(&rec, &ob) {
                    // The outboard is in place before the pack: not from a crash.
                    return Err(OpenError::Corrupt(ob));
                }
                match inner.packs.insert(hash, id) {
                    Some(old) => repair.push((old, hash)),
                    None if inner.external.contains_key(&hash) => {
                        orphans.push(self.path("blobs", hash, "ext"));
                    }
                    None => {}
                }
                inner.complete.insert(hash, rec.size);
                inner.external.insert(hash, Arc::new(rec));
            }
        }
        for id in logs.difference(&ids) {
            orphans.push(self.pack_path(*id, "dead"));
        }
        self.mark_dead(inner, &repair).map_err(at(&refs))?;
        for id in inner.packs.empty() {
            self.remove_pack(inner, id).map_err(at(&refs))?;
        }
        Ok(())
    }

    /// Whether external blob `rec` has its outboard: inline, or in file `ob`.
    fn external_outboard_ok(&self, rec: &ExternalRecord, ob: &Path) -> bool {
        let file_len = (rec.outboard.is_none() && outboard_len(rec.size) > 0)
            .then(|| fs::metadata(ob).ok().map(|m| m.len()))
            .flatten();
        rec.outboard_ok(file_len)
    }

    fn load_tags(&self) -> Result<BTreeMap<String, Tag>, OpenError> {
        let p = self.dir("tags");
        let text = match fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(OpenError::Io(e, p)),
        };
        let mut tags = BTreeMap::new();
        for line in text.lines() {
            let mut it = line.split(' ');
            let (Some(name), Some(kind), Some(hash), None) =
                (it.next(), it.next(), it.next(), it.next())
            else {
                return Err(OpenError::Corrupt(p));
            };
            let format = match kind {
                "raw" => BlobFormat::Raw,
                "collection" => BlobFormat::Collection,
                _ => return Err(OpenError::Corrupt(p)),
            };
            let hash = hash.parse().map_err(|_| OpenError::Corrupt(p.clone()))?;
            if check_tag_name(name).is_err() {
                return Err(OpenError::Corrupt(p));
            }
            tags.insert(name.to_owned(), Tag { hash, format });
        }
        Ok(tags)
    }

    fn save_tags(&self, tags: &BTreeMap<String, Tag>) -> io::Result<()> {
        let mut text = String::new();
        for (name, tag) in tags {
            let kind = match tag.format {
                BlobFormat::Raw => "raw",
                BlobFormat::Collection => "collection",
            };
            text.push_str(&format!("{name} {kind} {}\n", tag.hash));
        }
        write_atomic(&self.dir("tags"), text.as_bytes())
    }

    fn rebuild_outboard(&self, hash: Hash, data: &Path, ob: &Path) -> Result<(), OpenError> {
        let io_err = |e| OpenError::Io(e, data.to_owned());
        let tmp = self.tmp_path("obao");
        let (got, _) = {
            let mut f = File::open(data).map_err(io_err)?;
            let obf = File::create(&tmp).map_err(io_err)?;
            let r = hash_stream(&mut f, &obf, None, u64::MAX).map_err(|e| match e {
                ImportError::Io(e) => OpenError::Io(e, data.to_owned()),
                _ => OpenError::Corrupt(data.to_owned()),
            })?;
            obf.sync_all().map_err(io_err)?;
            r
        };
        if got != hash {
            return Err(OpenError::Corrupt(data.to_owned()));
        }
        fs::rename(&tmp, ob).map_err(io_err)?;
        sync_dir(&self.dir("blobs")).map_err(io_err)
    }

    fn tmp_path(&self, ext: &str) -> PathBuf {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        self.dir("tmp")
            .join(format!("{}-{n}.{ext}", std::process::id()))
    }

    fn remove_partial_files(&self, hash: Hash) -> io::Result<()> {
        for ext in ["bitfield", "data", "obao"] {
            remove_if_exists(&self.path("partial", hash, ext))?;
        }
        sync_dir(&self.dir("partial"))
    }

    /// Records on disk, in one batch, the present groups of every partial blob that has
    /// unrecorded ones: syncs their data and outboard files, writes their new bitfield
    /// files (synced, then renamed into place), and promotes the complete ones into
    /// `blobs/` (outboards first, then data, then the partial files removed, the
    /// directories synced after each step). Many blobs cost a few syncs of the
    /// filesystem, not several per blob (see [`sync_files`](Self::sync_files)).
    ///
    /// Every group in a snapshot was written before it was marked present, so the sync
    /// that follows the snapshot covers it. One batch runs at a time.
    fn persist(&self) -> io::Result<()> {
        let _one = self.persisting.lock().unwrap_or_else(|e| e.into_inner());
        // Each with the outboard entries of a small blob recorded before it is complete.
        let mut small: Vec<(Hash, Vec<u8>)> = Vec::new();
        let snaps: Vec<(Hash, Bitfield, u64)> = {
            let mut inner = self.lock();
            let waiting: Vec<Hash> = std::mem::take(&mut inner.unsynced).into_keys().collect();
            let snaps: Vec<(Hash, Bitfield, u64)> = waiting
                .into_iter()
                .filter_map(|h| {
                    let bf = inner.partial.get(&h)?;
                    let size = *inner.partial_size.get(&h)?;
                    let recorded = inner.recorded.get(&h).copied().unwrap_or(0);
                    (bf.count() > recorded || bf.is_complete()).then(|| (h, bf.clone(), size))
                })
                .collect();
            for (h, bf, _) in &snaps {
                if let (false, Some(p)) = (bf.is_complete(), inner.small_pairs.get(h)) {
                    small.push((*h, p.clone()));
                }
            }
            snaps
        };
        if snaps.is_empty() {
            return Ok(());
        }
        // A small blob recorded before it is complete gets its outboard file now (every
        // entry in it was verified before its group was marked present).
        for (h, pairs) in &small {
            File::create(self.path("partial", *h, "obao"))?.write_all(pairs)?;
        }
        // 1. The groups' bytes and outboard entries.
        let files: Vec<PathBuf> = snaps
            .iter()
            .flat_map(|(h, _, _)| {
                [
                    self.path("partial", *h, "data"),
                    self.path("partial", *h, "obao"),
                ]
            })
            .collect();
        self.sync_files(&files)?;
        // 2. The records: written and synced beside, then renamed over the old ones.
        let tmp = |h: &Hash| {
            let mut p = self.path("partial", *h, "bitfield").into_os_string();
            p.push(".tmp");
            PathBuf::from(p)
        };
        //    A blob complete in the snapshot gets none: its promotion is its record
        //    (a small blob fetched whole then costs no bitfield file at all).
        let mut tmps = Vec::new();
        for (h, bf, size) in &snaps {
            if bf.is_complete() {
                continue;
            }
            let mut f = File::create(tmp(h))?;
            f.write_all(&encode_bitfield(*size, bf))?;
            tmps.push(tmp(h));
        }
        self.sync_files(&tmps)?;
        let partial_dir = self.dir("partial");
        let mut complete = Vec::new();
        {
            let mut inner = self.lock();
            for (h, bf, size) in &snaps {
                let gone = inner.complete.contains_key(h) || !inner.partial.contains_key(h);
                if bf.is_complete() {
                    if !gone {
                        complete.push((*h, *size));
                    }
                    continue;
                }
                if gone {
                    // Deleted (or completed by another path) meanwhile.
                    remove_if_exists(&tmp(h))?;
                    continue;
                }
                fs::rename(tmp(h), self.path("partial", *h, "bitfield"))?;
                inner.recorded.insert(*h, bf.count());
            }
        }
        if !tmps.is_empty() {
            sync_dir(&partial_dir)?;
        }
        if complete.is_empty() {
            return Ok(());
        }
        // 3. Promotion, outside the lock (imports go on; readers that miss a file in
        //    `partial/` look in `blobs/`); a blob deleted meanwhile is skipped. The data
        //    (synced above, complete) moves first: a crash before its outboard follows
        //    leaves `blobs/HASH.data` without one, which opening rebuilds from the data
        //    and checks against the hash; an outboard never reaches `blobs/` before its
        //    data, so no partial blob loses its outboard to a crash.
        let blobs = self.dir("blobs");
        let moved = |r: io::Result<()>| match r {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        };
        for (h, _) in &complete {
            moved(fs::rename(
                self.path("partial", *h, "data"),
                self.path("blobs", *h, "data"),
            ))?;
        }
        sync_dir(&blobs)?;
        let mut outboards = false;
        for (h, size) in &complete {
            if ob_file_len(*size) > 0 {
                outboards = true;
                moved(fs::rename(
                    self.path("partial", *h, "obao"),
                    self.path("blobs", *h, "obao"),
                ))?;
            }
        }
        if outboards {
            sync_dir(&blobs)?;
        }
        // Blobs an earlier batch recorded: they have a bitfield file to remove.
        let mut recorded = Vec::new();
        {
            let mut inner = self.lock();
            for (h, size) in &complete {
                if inner.partial.remove(h).is_none() {
                    // Deleted meanwhile: what was moved goes too.
                    for ext in ["data", "obao"] {
                        remove_if_exists(&self.path("blobs", *h, ext))?;
                    }
                    continue;
                }
                inner.partial_size.remove(h);
                inner.unsynced.remove(h);
                if let Some(pairs) = inner.small_pairs.remove(h) {
                    if inner.small_ob.len() < SMALL_OB_CACHE {
                        inner.small_ob.insert(*h, Arc::from(pairs));
                    }
                }
                if inner.recorded.remove(h).is_some() {
                    recorded.push((*h, *size));
                }
                inner.complete.insert(*h, *size);
            }
        }
        // The data and outboard have moved: what may be left is the bitfield of an
        // earlier batch, and a small blob's outboard file (it keeps none once complete).
        for (h, size) in &recorded {
            remove_if_exists(&self.path("partial", *h, "bitfield"))?;
            if ob_file_len(*size) == 0 {
                remove_if_exists(&self.path("partial", *h, "obao"))?;
            }
        }
        if !recorded.is_empty() {
            sync_dir(&partial_dir)?;
        }
        Ok(())
    }

    /// Makes `paths` (files of this store) durable: with more than a few, one `syncfs`
    /// of the store's filesystem (Linux) costs less than a sync per file.
    fn sync_files(&self, paths: &[PathBuf]) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        if paths.len() > 8 {
            let root = File::open(&self.root)?;
            return rustix::fs::syncfs(&root).map_err(io::Error::from);
        }
        for p in paths {
            match File::open(p) {
                Ok(f) => f.sync_all()?,
                // An outboard that a small blob does not have.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Moves a partial blob whose bitfield is complete into `blobs/`. Idempotent, so an
    /// interrupted promotion is finished by running it again.
    fn promote(&self, hash: Hash, size: u64) -> io::Result<()> {
        let blobs = self.dir("blobs");
        let p_ob = self.path("partial", hash, "obao");
        let c_ob = self.path("blobs", hash, "obao");
        if ob_file_len(size) > 0 {
            if p_ob.exists() {
                fs::rename(&p_ob, &c_ob)?;
                sync_dir(&blobs)?;
            }
        } else {
            remove_if_exists(&p_ob)?;
        }
        let p_data = self.path("partial", hash, "data");
        if p_data.exists() {
            fs::rename(&p_data, self.path("blobs", hash, "data"))?;
            sync_dir(&blobs)?;
        }
        self.remove_partial_files(hash)
    }

    fn external_path(&self, hash: Hash) -> Option<PathBuf> {
        self.lock().external.get(&hash).map(|r| r.path.clone())
    }

    /// Opens the files of blob `hash` for reading, with its size and (if partial) its
    /// bitfield. An external blob's file is checked against its record.
    fn open_blob(&self, hash: Hash) -> Result<Opened, ReadError> {
        let inner = self.lock();
        if let Some(rec) = inner.external.get(&hash).cloned() {
            drop(inner);
            let fault = |fault| ReadError::ExternalChanged {
                hash,
                path: rec.path.clone(),
                fault,
            };
            let data = match File::open(&rec.path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(fault(ExternalFault::Missing));
                }
                Err(e) => return Err(ReadError::Io(e)),
            };
            // The metadata of the handle that is read, not of the path: no race.
            let m = data.metadata().map_err(ReadError::Io)?;
            rec.check(&m).map_err(fault)?;
            let outboard = match &rec.outboard {
                Some(ob) => ObSource::Mem(ob.clone()),
                None if outboard_len(rec.size) > 0 => ObSource::File(
                    File::open(self.path("blobs", hash, "obao")).map_err(ReadError::Io)?,
                ),
                None => ObSource::None,
            };
            return Ok(Opened {
                src: FileSource::new(data, outboard),
                size: rec.size,
                bf: None,
                external: Some(rec),
            });
        }
        let (dir, size, bf) = if let Some(&size) = inner.complete.get(&hash) {
            ("blobs", size, None)
        } else if let Some(bf) = inner.partial.get(&hash) {
            let size = inner.partial_size.get(&hash).copied().unwrap_or(0);
            ("partial", size, Some(bf.clone()))
        } else {
            return Err(ReadError::NotFound(hash));
        };
        // A partial small blob's outboard entries so far (in memory), or a complete one's
        // outboard if it is still known.
        let pairs = match &bf {
            Some(bf) if !bf.is_complete() => inner
                .small_pairs
                .get(&hash)
                .map(|p| Arc::<[u8]>::from(p.as_slice())),
            _ => inner.small_ob.get(&hash).cloned(),
        };
        drop(inner);
        // A complete partial blob may be moving into `blobs/` right now (a batch promotes
        // outside the lock): a file not found in `partial/` is looked for there.
        let open = |ext: &str| -> io::Result<File> {
            match File::open(self.path(dir, hash, ext)) {
                Err(e) if dir == "partial" && e.kind() == io::ErrorKind::NotFound => {
                    File::open(self.path("blobs", hash, ext))
                }
                r => r,
            }
        };
        let data = open("data").map_err(ReadError::Io)?;
        let outboard = if outboard_len(size) == 0 {
            ObSource::None
        } else if size > SMALL_BLOB {
            ObSource::File(open("obao").map_err(ReadError::Io)?)
        } else if let Some(pairs) = pairs {
            ObSource::Mem(pairs)
        } else {
            // Complete: computed from the bytes, which must hash to the blob's hash.
            match small_outboard(&data, size, hash).map_err(ReadError::Io)? {
                Some(ob) => ObSource::Mem(ob),
                None => {
                    return Err(ReadError::Io(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("the stored bytes of blob {hash} do not match its hash"),
                    )));
                }
            }
        };
        Ok(Opened {
            src: FileSource::new(data, outboard),
            size,
            bf,
            external: None,
        })
    }

    /// Hands the store's own copy of complete blob `hash` over to a new file at `target`
    /// (which must not exist) and keeps the blob as an external blob referencing it there:
    /// the bytes exist once, at `target`, and every later read verifies them (see
    /// [`ImportMode::Reference`]). Returns `Ok(None)` when that is not possible (the blob
    /// is external or partial already, or `target` is on another filesystem): the caller
    /// copies instead.
    ///
    /// Crash safety: the record naming `target` enters `blobs/` before the data file is
    /// renamed to `target`; while both exist the data file wins on open (the record is
    /// dropped as an orphan), so a crash leaves either the owned blob or the external one.
    fn move_out(&self, hash: Hash, target: &Path) -> io::Result<Option<u64>> {
        Ok(self.move_out_many(&[(hash, target)])?.pop().flatten())
    }

    /// [`move_out`](Self::move_out) for many blobs at once, in phases so that the batch
    /// costs a few syncs (one `syncfs` each when there are many files, see
    /// [`sync_files`](Self::sync_files)) instead of four per file: every record is
    /// written and synced, renamed into `blobs/`, the directory synced; then every data
    /// file is renamed to its target, and the directories synced. The crash guarantee is
    /// the single move's: each record is durable before its data file moves. `None`
    /// for a blob that cannot be moved (the caller copies it).
    fn move_out_many(&self, files: &[(Hash, &Path)]) -> io::Result<Vec<Option<u64>>> {
        struct Move {
            at: usize,
            hash: Hash,
            size: u64,
            data: PathBuf,
            abs: PathBuf,
            parent: PathBuf,
            rec: ExternalRecord,
        }
        let mut inner = self.lock();
        let mut out = vec![None; files.len()];
        let mut moves = Vec::new();
        let mut queued = std::collections::BTreeSet::new();
        let mut canonical: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
        for (at, (hash, target)) in files.iter().enumerate() {
            let Some(&size) = inner.complete.get(hash) else {
                continue;
            };
            // A blob listed twice moves once; the caller copies the other (from the
            // moved file, verified).
            if !queued.insert(*hash) {
                continue;
            }
            if inner.external.contains_key(hash) {
                continue;
            }
            let (Some(parent), Some(name)) = (target.parent(), target.file_name()) else {
                continue;
            };
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            // Many files share a directory: each is resolved once per batch.
            let dir = match canonical.get(parent) {
                Some(d) => d,
                None => canonical
                    .entry(parent.to_path_buf())
                    .or_insert(fs::canonicalize(parent)?),
            };
            let abs = dir.join(name);
            if abs.as_os_str().len() > MAX_EXTERNAL_PATH {
                continue;
            }
            if fs::symlink_metadata(&abs).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "export target exists",
                ));
            }
            let data = self.path("blobs", *hash, "data");
            let m = fs::metadata(&data)?;
            // A rename keeps size, modification time, device and inode: the record made
            // from the data file now describes the file at `abs` after the rename.
            let mut rec = ExternalRecord::of(abs.clone(), &m);
            if rec.size != size {
                continue;
            }
            if size <= SMALL_BLOB && outboard_len(size) > 0 {
                // A small blob has no outboard file: its record carries the outboard,
                // known from its import or computed from the bytes (which must hash to
                // the blob's hash).
                let ob = match inner.small_ob.get(hash) {
                    Some(ob) => Some(ob.clone()),
                    None => small_outboard(&File::open(&data)?, size, *hash)?,
                };
                if ob.is_none() {
                    continue;
                }
                rec.outboard = ob;
            }
            moves.push(Move {
                at,
                hash: *hash,
                size,
                data,
                parent: abs.parent().map(Path::to_path_buf).unwrap_or_default(),
                abs,
                rec,
            });
        }
        if moves.is_empty() {
            return Ok(out);
        }
        let blobs = self.dir("blobs");
        // The records: one pack for a big batch, a file each for a few.
        let mut pack_of = vec![None; moves.len()];
        if moves.len() >= packs::MIN_PACK_ENTRIES {
            let entries: Vec<(Hash, Vec<u8>)> =
                moves.iter().map(|m| (m.hash, m.rec.encode())).collect();
            let written = self.write_packs(&mut inner, &entries)?;
            self.install_packs(&written)?;
            // The packs hold the moves in order.
            pack_of = written
                .iter()
                .flat_map(|(_, id, hashes)| std::iter::repeat_n(Some(*id), hashes.len()))
                .collect();
        } else {
            let mut recs = Vec::with_capacity(moves.len());
            for m in &moves {
                let tmp = self.tmp_path("ext");
                File::create(&tmp)?.write_all(&m.rec.encode())?;
                recs.push(tmp);
            }
            self.sync_files(&recs)?;
            for (m, tmp) in moves.iter().zip(&recs) {
                fs::rename(tmp, self.path("blobs", m.hash, "ext"))?;
            }
            sync_dir(&blobs)?;
        }
        let mut parents = BTreeMap::new();
        let mut unmoved = Vec::new();
        let mut failure = None;
        for (m, pack) in moves.into_iter().zip(pack_of) {
            if failure.is_some() {
                if let Some(id) = pack {
                    unmoved.push((id, m.hash));
                }
                continue;
            }
            // Never over a file that appeared at the target meanwhile.
            match rustix::fs::renameat_with(
                rustix::fs::CWD,
                &m.data,
                rustix::fs::CWD,
                &m.abs,
                rustix::fs::RenameFlags::NOREPLACE,
            ) {
                Ok(()) => {}
                Err(e) => {
                    // Another filesystem (or no permission): keep the owned copy.
                    match pack {
                        Some(id) => unmoved.push((id, m.hash)),
                        None => {
                            let _ = fs::remove_file(self.path("blobs", m.hash, "ext"));
                            let _ = sync_dir(&blobs);
                        }
                    }
                    if e != rustix::io::Errno::XDEV {
                        failure = Some(io::Error::from(e));
                    }
                    continue;
                }
            }
            if let Some(id) = pack {
                inner.packs.insert(m.hash, id);
            }
            inner.small_ob.remove(&m.hash);
            parents.insert(m.parent.clone(), ());
            inner.used = inner.used.saturating_sub(m.size);
            inner.external.insert(m.hash, Arc::new(m.rec));
            out[m.at] = Some(m.size);
        }
        // What stayed owned is not referenced: its records are dead (opening the store
        // would find that too, from the data files still in `blobs/`).
        self.mark_dead(&mut inner, &unmoved)?;
        let mut dirs: Vec<PathBuf> = parents.into_keys().collect();
        dirs.push(blobs);
        self.sync_files(&dirs)?;
        match failure {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Imports the file at `path` as an external blob (see [`ImportMode::Reference`]).
    fn import_external(&self, path: &Path) -> Result<Hash, ImportError> {
        let p = self.prepare_external(path)?;
        let hash = p.hash;
        self.commit_external(vec![p]).map_err(ImportError::Io)?;
        Ok(hash)
    }

    /// Imports many files as external blobs with a few syncs for the whole batch (the
    /// files' outboards and records first, then the directory once per step) instead of
    /// four per file. The first failure ends the batch; nothing of it is recorded then.
    fn import_external_many(&self, paths: &[&Path]) -> Result<Vec<Hash>, ImportError> {
        let mut prepared = Vec::with_capacity(paths.len());
        for p in paths {
            prepared.push(self.prepare_external(p)?);
        }
        let hashes = prepared.iter().map(|p| p.hash).collect();
        self.commit_external(prepared).map_err(ImportError::Io)?;
        Ok(hashes)
    }

    /// Hashes the file at `path` and writes its outboard and record to temporary files,
    /// not yet synced nor in place.
    fn prepare_external(&self, path: &Path) -> Result<PreparedExternal, ImportError> {
        let abs = fs::canonicalize(path).map_err(ImportError::Io)?;
        if abs.as_os_str().len() > MAX_EXTERNAL_PATH {
            return Err(ImportError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "path too long to reference",
            )));
        }
        let file = File::open(&abs).map_err(ImportError::Io)?;
        let before = file.metadata().map_err(ImportError::Io)?;
        if !before.is_file() {
            return Err(ImportError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "only a regular file can be referenced",
            )));
        }
        let limit = self.config.blob_limit();
        if before.len() > limit {
            return Err(ImportError::TooLarge {
                size: before.len(),
                limit,
            });
        }
        let mut p = PreparedExternal {
            hash: Hash::from_bytes([0; 32]),
            size: 0,
            rec: None,
            tmp_ob: None,
        };
        let mut inline = None;
        let (hash, size) = if before.len() <= SMALL_BLOB {
            // Small: hashed in memory, and the outboard goes into the record. No outboard
            // file to make (creating and deleting one per small file also slows ext4's
            // inode allocation down for every file created after).
            let mut buf = Vec::new();
            (&file)
                .take(SMALL_BLOB + 1)
                .read_to_end(&mut buf)
                .map_err(ImportError::Io)?;
            let total = buf.len() as u64;
            if total > limit {
                return Err(ImportError::TooLarge { size: total, limit });
            }
            let (root, ob) = crate::tree::outboard(&buf);
            inline = (!ob.is_empty()).then(|| Arc::from(ob));
            (root, total)
        } else {
            let tmp_ob = p.tmp_ob.insert(self.tmp_path("obao"));
            let ob = File::create(tmp_ob).map_err(ImportError::Io)?;
            if before.len() <= IO_BUF as u64 {
                // Small: hashed here, without a reading thread.
                hash_small(&file, &ob, limit)?
            } else {
                hash_file(&file, &ob, limit)?
            }
        };
        let after = file.metadata().map_err(ImportError::Io)?;
        let mut rec = ExternalRecord::of(abs.clone(), &after);
        if rec.check(&before).is_err() || size != rec.size {
            return Err(ImportError::FileChanged(abs));
        }
        rec.outboard = inline;
        (p.hash, p.size, p.rec) = (hash, size, Some(rec));
        Ok(p)
    }

    /// Makes prepared external blobs durable and complete: their outboards synced and
    /// moved into `blobs/`, the directory synced, then their records (whose presence makes
    /// a blob complete) written, synced and moved in likewise: one pack for a big batch
    /// (see [`packs`]), a record file each for a few.
    fn commit_external(&self, prepared: Vec<PreparedExternal>) -> io::Result<()> {
        let obs: Vec<PathBuf> = prepared.iter().filter_map(|p| p.tmp_ob.clone()).collect();
        self.sync_files(&obs)?;
        let mut inner = self.lock();
        // The store owns a copy already: better than a reference. A file listed twice
        // is recorded once, from its last listing.
        let mut last = std::collections::HashMap::new();
        for (i, p) in prepared.iter().enumerate() {
            last.insert(p.hash, i);
        }
        let wanted: Vec<&PreparedExternal> = prepared
            .iter()
            .enumerate()
            .filter(|(i, p)| {
                last.get(&p.hash) == Some(i)
                    && (!inner.complete.contains_key(&p.hash)
                        || inner.external.contains_key(&p.hash))
            })
            .map(|(_, p)| p)
            .collect();
        let blobs = self.dir("blobs");
        let mut moved = false;
        for p in &wanted {
            if let Some(tmp) = &p.tmp_ob {
                fs::rename(tmp, self.path("blobs", p.hash, "obao"))?;
                moved = true;
            }
        }
        if moved {
            sync_dir(&blobs)?;
        }
        // The records last: their presence is what makes a blob complete.
        let records: Vec<(Hash, Vec<u8>)> = wanted
            .iter()
            .filter_map(|p| Some((p.hash, p.rec.as_ref()?.encode())))
            .collect();
        // Records these replace: in a pack (marked dead) or a file (removed).
        let mut replaced = Vec::new();
        let mut replaced_files = Vec::new();
        if records.len() >= packs::MIN_PACK_ENTRIES {
            let written = self.write_packs(&mut inner, &records)?;
            self.install_packs(&written)?;
            for (_, id, hashes) in &written {
                for h in hashes {
                    match inner.packs.insert(*h, *id) {
                        Some(old) => replaced.push((old, *h)),
                        None if inner.external.contains_key(h) => replaced_files.push(*h),
                        None => {}
                    }
                }
            }
        } else {
            let mut tmps = Vec::with_capacity(records.len());
            for (_, rec) in &records {
                let tmp = self.tmp_path("ext");
                // Removed on drop unless renamed (like the outboards).
                let guard = TmpFile(tmp.clone());
                File::create(&tmp)?.write_all(rec)?;
                tmps.push(guard);
            }
            let paths: Vec<PathBuf> = tmps.iter().map(|t| t.0.clone()).collect();
            self.sync_files(&paths)?;
            for ((h, _), tmp) in records.iter().zip(&tmps) {
                fs::rename(&tmp.0, self.path("blobs", *h, "ext"))?;
                if let Some((old, _)) = inner.packs.remove(h) {
                    replaced.push((old, *h));
                }
            }
            sync_dir(&blobs)?;
        }
        self.mark_dead(&mut inner, &replaced)?;
        for h in replaced_files {
            remove_if_exists(&self.path("blobs", h, "ext"))?;
        }
        for p in wanted {
            let Some(rec) = p.rec.clone() else { continue };
            if inner.partial.remove(&p.hash).is_some() {
                let old = inner.partial_size.remove(&p.hash).unwrap_or(0);
                inner.used -= old;
                self.remove_partial_files(p.hash)?;
            }
            inner.complete.insert(p.hash, p.size);
            inner.external.insert(p.hash, Arc::new(rec));
        }
        Ok(())
    }
}

/// An external blob hashed, whose outboard and record wait in temporary files (removed
/// when dropped, unless moved in place).
struct PreparedExternal {
    hash: Hash,
    size: u64,
    rec: Option<ExternalRecord>,
    /// The outboard file (a blob of more than [`SMALL_BLOB`] bytes).
    tmp_ob: Option<PathBuf>,
}

impl Drop for PreparedExternal {
    fn drop(&mut self) {
        if let Some(p) = &self.tmp_ob {
            let _ = remove_if_exists(p);
        }
    }
}

/// A temporary file removed when dropped (a no-op once it was renamed away).
struct TmpFile(PathBuf);

impl Drop for TmpFile {
    fn drop(&mut self) {
        let _ = remove_if_exists(&self.0);
    }
}

/// A blob opened for reading.
struct Opened {
    src: FileSource,
    size: u64,
    /// The bitfield of a partial blob.
    bf: Option<Bitfield>,
    /// The record of an external blob: everything read from it is verified.
    external: Option<Arc<ExternalRecord>>,
}

impl Opened {
    /// Maps an error of a verified walk over external blob `hash` to a read error.
    fn external_error(&self, hash: Hash, rec: &ExternalRecord, e: WalkError) -> ReadError {
        let fault = |fault| ReadError::ExternalChanged {
            hash,
            path: rec.path.clone(),
            fault,
        };
        match e {
            WalkError::Verify(DecodeError::GroupMismatch { index }) => {
                fault(ExternalFault::GroupMismatch { index })
            }
            WalkError::Verify(DecodeError::ParentMismatch { split }) => {
                fault(ExternalFault::OutboardMismatch { split })
            }
            WalkError::Verify(e) => ReadError::Io(io::Error::new(io::ErrorKind::InvalidData, e)),
            WalkError::Source(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                fault(ExternalFault::SizeChanged {
                    expected: rec.size,
                    actual: self.src.data.metadata().map_or(0, |m| m.len()),
                })
            }
            WalkError::Source(e) | WalkError::Visit(e) => ReadError::Io(e),
        }
    }

    /// Walks groups `want` of external blob `hash`, verifying everything.
    fn walk_external(
        &mut self,
        hash: Hash,
        rec: &ExternalRecord,
        want: (u64, u64),
        visit: &mut dyn FnMut(Piece<'_>) -> io::Result<()>,
    ) -> Result<(), ReadError> {
        walk(&mut self.src, self.size, Some(hash), want, visit)
            .map_err(|e| self.external_error(hash, rec, e))
    }
}

/// Buffers in flight between the reading and the hashing thread of a reference import.
const READ_QUEUE: usize = 2;

/// Hashes `file` from its start for a reference import, writing the outboard; returns
/// the hash and the size. A second thread reads [`IO_BUF`]-sized pieces ahead, so the
/// hashing thread does nothing but hash: the copy out of the page cache overlaps with
/// it. Memory use is bounded by `READ_QUEUE + 2` buffers and the entry buffer.
fn hash_file(file: &File, outboard: &File, limit: u64) -> Result<(Hash, u64), ImportError> {
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(READ_QUEUE);
        let (back_tx, back_rx) = mpsc::sync_channel::<Vec<u8>>(READ_QUEUE + 2);
        scope.spawn(move || {
            let mut total = 0u64;
            loop {
                let mut buf = back_rx.try_recv().unwrap_or_else(|_| vec![0u8; IO_BUF]);
                buf.resize(IO_BUF, 0);
                let r = read_full(&mut &*file, &mut buf).map(|n| {
                    buf.truncate(n);
                    buf
                });
                let last = match &r {
                    Ok(b) => {
                        total += b.len() as u64;
                        b.len() < IO_BUF || total > limit
                    }
                    Err(_) => true,
                };
                // A closed channel means the hashing side stopped.
                if tx.send(r).is_err() || last {
                    break;
                }
            }
        });
        let mut tree = TreeBuilder::default();
        let mut pairs = PairWriter::new(outboard, 4096);
        let mut total = 0u64;
        for buf in rx {
            let buf = buf.map_err(ImportError::Io)?;
            total += buf.len() as u64;
            if total > limit {
                return Err(ImportError::TooLarge { size: total, limit });
            }
            if total == 0 {
                // The empty blob.
                tree.push_group(&[], &mut pairs).map_err(ImportError::Io)?;
            }
            for g in buf.chunks(GROUP_SIZE as usize) {
                tree.push_group(g, &mut pairs).map_err(ImportError::Io)?;
            }
            let _ = back_tx.try_send(buf);
        }
        let hash = tree.finish(&mut pairs).map_err(ImportError::Io)?;
        pairs.flush().map_err(ImportError::Io)?;
        Ok((hash, total))
    })
}

/// [`hash_file`] for a file of at most [`IO_BUF`] bytes, on this thread. It reads a
/// byte more than that: a file that grew meanwhile gets a size that differs from its
/// metadata, which the caller refuses as changed.
fn hash_small(file: &File, outboard: &File, limit: u64) -> Result<(Hash, u64), ImportError> {
    let cap = (IO_BUF as u64).min(limit.saturating_add(1)) as usize;
    let mut buf = Vec::new();
    file.take(cap as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(ImportError::Io)?;
    let total = buf.len() as u64;
    if total > limit {
        return Err(ImportError::TooLarge { size: total, limit });
    }
    let mut tree = TreeBuilder::default();
    let mut pairs = PairWriter::new(outboard, 4096);
    if buf.is_empty() {
        tree.push_group(&[], &mut pairs).map_err(ImportError::Io)?;
    }
    for g in buf.chunks(GROUP_SIZE as usize) {
        tree.push_group(g, &mut pairs).map_err(ImportError::Io)?;
    }
    let hash = tree.finish(&mut pairs).map_err(ImportError::Io)?;
    pairs.flush().map_err(ImportError::Io)?;
    Ok((hash, total))
}

fn parse_name(p: &Path) -> Option<(Hash, &str)> {
    let name = p.file_name()?.to_str()?;
    let (stem, ext) = name.split_once('.')?;
    Some((stem.parse().ok()?, ext))
}

/// Buffers queued between the hashing and the writing thread of an import.
const WRITE_QUEUE: usize = 3;
/// The writing thread of an import syncs after this many bytes, so the disk works while
/// the hashing goes on rather than all at the end.
const SYNC_EVERY: u64 = 32 << 20;

/// Writes the buffers received to `file`, syncing as it goes and at the end; hands each
/// buffer back for reuse.
fn write_and_sync(
    mut file: File,
    rx: mpsc::Receiver<Vec<u8>>,
    back: mpsc::SyncSender<Vec<u8>>,
) -> io::Result<()> {
    let mut unsynced = 0u64;
    for buf in rx {
        file.write_all(&buf)?;
        unsynced += buf.len() as u64;
        if unsynced >= SYNC_EVERY {
            file.sync_data()?;
            unsynced = 0;
        }
        let _ = back.try_send(buf);
    }
    file.sync_all()
}

/// Receives each buffer of a streaming import with the running total.
type CopyFn<'a> = &'a mut dyn FnMut(&[u8], u64) -> Result<(), ImportError>;

/// Hashes everything `reader` yields, writing the outboard to `outboard` and (if given)
/// the data to `copy`. Stops with [`ImportError::TooLarge`] past `limit` bytes. Returns
/// the hash and the size. Memory use is bounded by [`IO_BUF`] and the entry buffer.
fn hash_stream(
    reader: &mut dyn Read,
    outboard: &File,
    mut copy: Option<CopyFn<'_>>,
    limit: u64,
) -> Result<(Hash, u64), ImportError> {
    let mut buf = vec![0u8; IO_BUF];
    let mut tree = TreeBuilder::default();
    let mut pairs = PairWriter::new(outboard, 4096);
    let mut total = 0u64;
    loop {
        let n = read_full(reader, &mut buf).map_err(ImportError::Io)?;
        if n == 0 && total > 0 {
            break;
        }
        total += n as u64;
        if total > limit {
            return Err(ImportError::TooLarge { size: total, limit });
        }
        for g in buf[..n].chunks(GROUP_SIZE as usize) {
            tree.push_group(g, &mut pairs).map_err(ImportError::Io)?;
        }
        if n == 0 {
            // The empty blob.
            tree.push_group(&[], &mut pairs).map_err(ImportError::Io)?;
            break;
        }
        if let Some(copy) = copy.as_mut() {
            copy(&buf[..n], total)?;
        }
        if n < buf.len() {
            break;
        }
    }
    let hash = tree.finish(&mut pairs).map_err(ImportError::Io)?;
    pairs.flush().map_err(ImportError::Io)?;
    Ok((hash, total))
}

/// The writer side of a partial blob during [`Store::import_verified`].
struct FsPartial<'a> {
    store: &'a Core,
    hash: Hash,
    size: u64,
    data: File,
    outboard: PairDest,
    /// Verified entries for the outboard file, written together before the next groups
    /// (which need them to be served) are: one write per stretch, not per entry.
    pairs: Vec<(u64, [u8; PAIR_LEN])>,
}

/// The most outboard entries an [`FsPartial`] holds before it writes them.
const PENDING_PAIRS: usize = 1024;

impl FsPartial<'_> {
    /// Writes the pending outboard entries.
    fn write_pairs(&mut self) -> io::Result<()> {
        match &self.outboard {
            PairDest::File(f) if !self.pairs.is_empty() => write_pairs(f, &mut self.pairs),
            _ => Ok(()),
        }
    }
}

/// Where [`FsPartial`] puts outboard entries.
enum PairDest {
    /// A blob of one group has none.
    None,
    /// The partial outboard file.
    File(File),
    /// [`Inner::small_pairs`] (a small blob).
    Mem,
    /// Nowhere: the blob is complete already (what arrives is verified and dropped).
    Discard,
}

impl PartialSink for FsPartial<'_> {
    fn put_pair(&mut self, split: u64, pair: &[u8; PAIR_LEN]) -> io::Result<()> {
        let at = (split - 1) * PAIR_LEN as u64;
        match &self.outboard {
            PairDest::File(_) => {
                self.pairs.push((split, *pair));
                if self.pairs.len() >= PENDING_PAIRS {
                    self.write_pairs()?;
                }
                Ok(())
            }
            PairDest::Mem => {
                let mut inner = self.store.lock();
                let inner = &mut *inner;
                let slot = usize::try_from(at).ok().and_then(|at| {
                    let pairs = inner.small_pairs.get_mut(&self.hash)?;
                    pairs.get_mut(at..at + PAIR_LEN)
                });
                match slot {
                    Some(slot) => slot.copy_from_slice(pair),
                    // Completed meanwhile by another import: nothing more is needed.
                    None if inner.complete.contains_key(&self.hash) => {}
                    None => return Err(io::Error::other("partial blob deleted during import")),
                }
                Ok(())
            }
            PairDest::Discard => Ok(()),
            PairDest::None => Err(io::Error::other(
                "an outboard entry for a blob of one group",
            )),
        }
    }

    fn put_group(&mut self, _index: u64, offset: u64, data: &[u8]) -> io::Result<()> {
        self.data.write_all_at(data, offset)
    }

    fn put_groups(&mut self, _first: u64, offset: u64, data: &[u8]) -> io::Result<()> {
        self.data.write_all_at(data, offset)
    }

    fn commit(&mut self, groups: &[u64]) -> io::Result<()> {
        // The entries above these groups go first: a present group must be servable.
        self.write_pairs()?;
        if groups.is_empty() {
            return Ok(());
        }
        let due = {
            let mut inner = self.store.lock();
            if inner.complete.contains_key(&self.hash) {
                return Ok(());
            }
            let Some(bf) = inner.partial.get_mut(&self.hash) else {
                return Err(io::Error::other("partial blob deleted during import"));
            };
            // Present at once (the bytes are written: readable through the page cache);
            // recorded on disk with the next sync.
            let mut added = 0;
            for &g in groups {
                added += u64::from(bf.set(g));
            }
            if added == 0 {
                return Ok(());
            }
            let waiting = inner.unsynced.entry(self.hash).or_insert(0);
            *waiting += added;
            // A completed blob waits for the batch like any other: many small blobs
            // completing one after another share one batch of syncs. Groups that wait
            // `sync_interval` are recorded by the flusher's timed wake.
            *waiting >= self.store.config.sync_every_groups.max(1)
        };
        if let Some(e) = self.store.flusher.take_error() {
            return Err(e);
        }
        if due {
            self.store.flusher.request();
        }
        Ok(())
    }

    fn status(&self) -> BlobStatus {
        let inner = self.store.lock();
        let bitfield = if inner.complete.contains_key(&self.hash) {
            Bitfield::full(self.size)
        } else {
            inner
                .partial
                .get(&self.hash)
                .cloned()
                .unwrap_or_else(|| Bitfield::new(self.size))
        };
        BlobStatus {
            size: self.size,
            bitfield,
        }
    }
}

impl Drop for FsStore {
    fn drop(&mut self) {
        self.core.flusher.lock().stop = true;
        self.core.flusher.wake.notify_one();
        if let Some(t) = self.flusher.take() {
            let _ = t.join();
        }
        // Best effort: what is not recorded is fetched again after the next open.
        let _ = self.core.persist();
    }
}

impl Store for FsStore {
    fn flush(&self) -> Result<(), StoreError> {
        self.core.flush()
    }

    fn export_files_with(
        &self,
        files: &[(Hash, &Path)],
        mode: ImportMode,
    ) -> Result<Vec<u64>, crate::ExportError> {
        self.core.export_files_with(files, mode)
    }

    fn export_file_with(
        &self,
        hash: Hash,
        path: &Path,
        mode: ImportMode,
    ) -> Result<u64, crate::ExportError> {
        self.core.export_file_with(hash, path, mode)
    }

    fn import_bytes(&self, data: &[u8]) -> Result<Hash, ImportError> {
        self.core.import_bytes(data)
    }

    fn import_reader(&self, reader: &mut dyn Read) -> Result<Hash, ImportError> {
        self.core.import_reader(reader)
    }

    fn import_verified_with(
        &self,
        hash: Hash,
        range: Range<u64>,
        proof: SizeProof,
        encoded: &mut dyn Read,
        on_stored: &mut dyn FnMut(u64),
    ) -> Result<BlobStatus, ImportError> {
        self.core
            .import_verified_with(hash, range, proof, encoded, on_stored)
    }

    fn status(&self, hash: Hash) -> Result<Option<BlobStatus>, StoreError> {
        self.core.status(hash)
    }

    fn import_file_with(&self, path: &Path, mode: ImportMode) -> Result<Hash, ImportError> {
        self.core.import_file_with(path, mode)
    }

    fn import_files_with(
        &self,
        paths: &[&Path],
        mode: ImportMode,
    ) -> Result<Vec<Hash>, ImportError> {
        self.core.import_files_with(paths, mode)
    }

    fn read_range(&self, hash: Hash, range: Range<u64>) -> Result<Vec<u8>, ReadError> {
        self.core.read_range(hash, range)
    }

    fn encode_range_with(
        &self,
        hash: Hash,
        range: Range<u64>,
        proof: SizeProof,
        out: &mut dyn Write,
    ) -> Result<u64, ReadError> {
        self.core.encode_range_with(hash, range, proof, out)
    }

    fn export_writer(&self, hash: Hash, out: &mut dyn Write) -> Result<u64, ReadError> {
        self.core.export_writer(hash, out)
    }

    fn list(&self) -> Result<Vec<BlobInfo>, StoreError> {
        self.core.list()
    }

    fn delete(&self, hash: Hash) -> Result<bool, StoreError> {
        self.core.delete(hash)
    }

    fn set_tag(&self, name: &str, tag: Tag) -> Result<(), TagError> {
        self.core.set_tag(name, tag)
    }

    fn remove_tag(&self, name: &str) -> Result<Option<Tag>, TagError> {
        self.core.remove_tag(name)
    }

    fn tags(&self) -> Result<Vec<(String, Tag)>, StoreError> {
        self.core.tags()
    }
}

impl Store for Core {
    fn flush(&self) -> Result<(), StoreError> {
        self.persist().map_err(StoreError::Io)
    }

    fn export_files_with(
        &self,
        files: &[(Hash, &Path)],
        mode: ImportMode,
    ) -> Result<Vec<u64>, crate::ExportError> {
        let moved = if mode == ImportMode::Reference {
            self.move_out_many(files).map_err(crate::ExportError::Io)?
        } else {
            vec![None; files.len()]
        };
        files
            .iter()
            .zip(moved)
            .map(|((h, p), m)| match m {
                Some(n) => Ok(n),
                None => self.export_file(*h, p),
            })
            .collect()
    }

    fn export_file_with(
        &self,
        hash: Hash,
        path: &Path,
        mode: ImportMode,
    ) -> Result<u64, crate::ExportError> {
        if mode == ImportMode::Reference {
            if let Some(n) = self.move_out(hash, path).map_err(crate::ExportError::Io)? {
                return Ok(n);
            }
        }
        self.export_file(hash, path)
    }

    fn import_bytes(&self, data: &[u8]) -> Result<Hash, ImportError> {
        self.import_reader(&mut &data[..])
    }

    fn import_reader(&self, reader: &mut dyn Read) -> Result<Hash, ImportError> {
        let tmp_data = self.tmp_path("data");
        let tmp_ob = self.tmp_path("obao");
        let result = (|| {
            let data = File::create(&tmp_data).map_err(ImportError::Io)?;
            let ob = File::create(&tmp_ob).map_err(ImportError::Io)?;
            let used = self.lock().used;
            let config = self.config;
            let (hash, size) = std::thread::scope(|scope| {
                // Hash on this thread while another writes and syncs the copy.
                let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(WRITE_QUEUE);
                let (back_tx, back_rx) = mpsc::sync_channel::<Vec<u8>>(WRITE_QUEUE + 2);
                let writer = scope.spawn(move || write_and_sync(data, rx, back_tx));
                let mut copy = |bytes: &[u8], total: u64| {
                    config.check(total, used)?;
                    let mut buf = back_rx.try_recv().unwrap_or_default();
                    buf.clear();
                    buf.extend_from_slice(bytes);
                    // A closed channel means the writer failed: its error is reported below.
                    let _ = tx.send(buf);
                    Ok(())
                };
                let hashed = hash_stream(reader, &ob, Some(&mut copy), config.blob_limit());
                drop(tx);
                let written = writer
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("writer thread panicked")));
                let r = hashed?;
                written.map_err(ImportError::Io)?;
                Ok::<_, ImportError>(r)
            })?;
            ob.sync_all().map_err(ImportError::Io)?;
            let mut inner = self.lock();
            let was_external = inner.external.contains_key(&hash);
            if inner.complete.contains_key(&hash) && !was_external {
                return Ok(hash);
            }
            let old = inner.partial_size.get(&hash).copied().unwrap_or(0);
            self.config.check(size, inner.used - old)?;
            let blobs = self.dir("blobs");
            if ob_file_len(size) > 0 {
                fs::rename(&tmp_ob, self.path("blobs", hash, "obao")).map_err(ImportError::Io)?;
                sync_dir(&blobs).map_err(ImportError::Io)?;
            }
            fs::rename(&tmp_data, self.path("blobs", hash, "data")).map_err(ImportError::Io)?;
            sync_dir(&blobs).map_err(ImportError::Io)?;
            if was_external {
                // The owned copy replaces the reference (HASH.data wins on open).
                self.drop_record(&mut inner, hash)
                    .map_err(ImportError::Io)?;
                inner.external.remove(&hash);
            }
            if inner.partial.remove(&hash).is_some() {
                inner.partial_size.remove(&hash);
                self.remove_partial_files(hash).map_err(ImportError::Io)?;
            }
            inner.used = inner.used - old + size;
            inner.complete.insert(hash, size);
            Ok(hash)
        })();
        let _ = remove_if_exists(&tmp_data);
        let _ = remove_if_exists(&tmp_ob);
        result
    }

    fn import_verified_with(
        &self,
        hash: Hash,
        range: Range<u64>,
        proof: SizeProof,
        encoded: &mut dyn Read,
        on_stored: &mut dyn FnMut(u64),
    ) -> Result<BlobStatus, ImportError> {
        let known = match proof {
            SizeProof::Included => None,
            SizeProof::Omitted => {
                let inner = self.lock();
                let size = inner
                    .complete
                    .get(&hash)
                    .or_else(|| inner.partial_size.get(&hash));
                Some(*size.ok_or(ImportError::SizeUnknown(hash))?)
            }
        };
        import_verified(
            hash,
            range,
            known,
            encoded,
            &self.config,
            on_stored,
            |size| {
                let mut inner = self.lock();
                let known = inner
                    .complete
                    .get(&hash)
                    .or_else(|| inner.partial_size.get(&hash))
                    .copied();
                match known {
                    Some(stored) if stored != size => {
                        return Err(ImportError::SizeConflict {
                            stored,
                            verified: size,
                        });
                    }
                    Some(_) => {}
                    None => {
                        self.config.check(size, inner.used)?;
                        // No sync and no bitfield file yet: until a batch records
                        // groups, the files are orphans that a reopen removes. A blob
                        // of one group has no outboard file.
                        // A small blob's data file is not sized up front: it grows as its
                        // groups are written (it is promoted only once all are).
                        let create = |ext: &str, len: u64| -> io::Result<File> {
                            let f = File::create(self.path("partial", hash, ext))?;
                            if ext != "data" || len > SMALL_BLOB {
                                f.set_len(len)?;
                            }
                            Ok(f)
                        };
                        let data = create("data", size).map_err(ImportError::Io)?;
                        let outboard = match outboard_len(size) {
                            0 => PairDest::None,
                            n if size <= SMALL_BLOB => {
                                inner.small_pairs.insert(hash, vec![0; n as usize]);
                                PairDest::Mem
                            }
                            n => PairDest::File(create("obao", n).map_err(ImportError::Io)?),
                        };
                        inner.partial.insert(hash, Bitfield::new(size));
                        inner.partial_size.insert(hash, size);
                        inner.used += size;
                        return Ok(FsPartial {
                            store: self,
                            hash,
                            size,
                            data,
                            outboard,
                            pairs: Vec::new(),
                        });
                    }
                }
                let dir = if inner.complete.contains_key(&hash) {
                    // Already complete: verify and discard into a scratch pair of files.
                    None
                } else {
                    Some("partial")
                };
                let open = |ext: &str| -> io::Result<File> {
                    match dir {
                        Some(d) => OpenOptions::new().write(true).open(self.path(d, hash, ext)),
                        None => {
                            let p = self.tmp_path(ext);
                            let f = File::create(&p)?;
                            fs::remove_file(&p)?;
                            Ok(f)
                        }
                    }
                };
                let outboard = match outboard_len(size) {
                    0 => PairDest::None,
                    _ if size <= SMALL_BLOB && dir.is_none() => PairDest::Discard,
                    _ if size <= SMALL_BLOB => PairDest::Mem,
                    _ => PairDest::File(open("obao").map_err(ImportError::Io)?),
                };
                Ok(FsPartial {
                    store: self,
                    hash,
                    size,
                    data: open("data").map_err(ImportError::Io)?,
                    outboard,
                    pairs: Vec::new(),
                })
            },
        )
    }

    fn status(&self, hash: Hash) -> Result<Option<BlobStatus>, StoreError> {
        let inner = self.lock();
        if let Some(&size) = inner.complete.get(&hash) {
            return Ok(Some(BlobStatus {
                size,
                bitfield: Bitfield::full(size),
            }));
        }
        Ok(inner.partial.get(&hash).map(|bf| BlobStatus {
            size: inner.partial_size.get(&hash).copied().unwrap_or(0),
            bitfield: bf.clone(),
        }))
    }

    fn import_file_with(&self, path: &Path, mode: ImportMode) -> Result<Hash, ImportError> {
        match mode {
            ImportMode::Copy => self.import_file(path),
            ImportMode::Reference => self.import_external(path),
        }
    }

    fn import_files_with(
        &self,
        paths: &[&Path],
        mode: ImportMode,
    ) -> Result<Vec<Hash>, ImportError> {
        match mode {
            ImportMode::Copy => paths.iter().map(|p| self.import_file(p)).collect(),
            ImportMode::Reference => self.import_external_many(paths),
        }
    }

    fn read_range(&self, hash: Hash, range: Range<u64>) -> Result<Vec<u8>, ReadError> {
        let mut o = self.open_blob(hash)?;
        let size = o.size;
        let Some(rec) = o.external.clone() else {
            return read_range_from(&mut o.src, hash, size, o.bf.as_ref(), range);
        };
        let start = range.start.min(size);
        let end = range.end.min(size).max(start);
        let (first, last) = groups_overlapping(size, start, end);
        let mut out = Vec::with_capacity((end - start) as usize);
        if first < last {
            o.walk_external(hash, &rec, (first, last), &mut |p| {
                if let Piece::Group { offset, data, .. } = p {
                    let lo = start.max(offset) - offset;
                    let hi = end.min(offset + data.len() as u64) - offset;
                    out.extend_from_slice(&data[lo as usize..hi as usize]);
                }
                Ok(())
            })?;
        }
        Ok(out)
    }

    fn encode_range_with(
        &self,
        hash: Hash,
        range: Range<u64>,
        proof: SizeProof,
        out: &mut dyn Write,
    ) -> Result<u64, ReadError> {
        let mut o = self.open_blob(hash)?;
        let size = o.size;
        let Some(rec) = o.external.clone() else {
            return encode_range_from(&mut o.src, hash, size, o.bf.as_ref(), range, proof, out);
        };
        encode_from(
            &mut o.src,
            size,
            Some(hash),
            range.start,
            range.end,
            proof,
            out,
        )
        .map_err(|e| o.external_error(hash, &rec, e))
    }

    fn export_writer(&self, hash: Hash, out: &mut dyn Write) -> Result<u64, ReadError> {
        let mut o = self.open_blob(hash)?;
        let size = o.size;
        if let Some(rec) = o.external.clone() {
            o.walk_external(hash, &rec, (0, group_count(size)), &mut |p| match p {
                Piece::Group { data, .. } => out.write_all(data),
                Piece::Pair { .. } => Ok(()),
            })?;
            return Ok(size);
        }
        let (src, bf) = (o.src, o.bf);
        need(hash, bf.as_ref(), 0, group_count(size))?;
        let mut buf = vec![0u8; IO_BUF];
        let mut pos = 0;
        while pos < size {
            let n = (size - pos).min(IO_BUF as u64) as usize;
            src.data
                .read_exact_at(&mut buf[..n], pos)
                .map_err(ReadError::Io)?;
            out.write_all(&buf[..n]).map_err(ReadError::Io)?;
            pos += n as u64;
        }
        Ok(size)
    }

    fn list(&self) -> Result<Vec<BlobInfo>, StoreError> {
        let inner = self.lock();
        let mut out: Vec<BlobInfo> = inner
            .complete
            .iter()
            .map(|(h, s)| BlobInfo {
                hash: *h,
                size: *s,
                complete: true,
            })
            .chain(inner.partial_size.iter().map(|(h, s)| BlobInfo {
                hash: *h,
                size: *s,
                // Complete but not yet moved into `blobs/` by the next batch.
                complete: inner.partial.get(h).is_some_and(Bitfield::is_complete),
            }))
            .collect();
        out.sort_by_key(|i| i.hash);
        Ok(out)
    }

    fn delete(&self, hash: Hash) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        if let Some(size) = inner.complete.remove(&hash) {
            inner.small_ob.remove(&hash);
            if inner.external.remove(&hash).is_some() {
                // The record first; the user's file is never touched.
                self.drop_record(&mut inner, hash).map_err(StoreError::Io)?;
                remove_if_exists(&self.path("blobs", hash, "obao")).map_err(StoreError::Io)?;
                sync_dir(&self.dir("blobs")).map_err(StoreError::Io)?;
                return Ok(true);
            }
            inner.used -= size;
            // Data first: once it is gone the blob no longer counts as present.
            remove_if_exists(&self.path("blobs", hash, "data")).map_err(StoreError::Io)?;
            remove_if_exists(&self.path("blobs", hash, "obao")).map_err(StoreError::Io)?;
            sync_dir(&self.dir("blobs")).map_err(StoreError::Io)?;
            return Ok(true);
        }
        if inner.partial.remove(&hash).is_some() {
            inner.unsynced.remove(&hash);
            inner.recorded.remove(&hash);
            inner.small_pairs.remove(&hash);
            let size = inner.partial_size.remove(&hash).unwrap_or(0);
            inner.used -= size;
            self.remove_partial_files(hash).map_err(StoreError::Io)?;
            return Ok(true);
        }
        Ok(false)
    }

    fn set_tag(&self, name: &str, tag: Tag) -> Result<(), TagError> {
        check_tag_name(name)?;
        let mut inner = self.lock();
        let mut tags = inner.tags.clone();
        tags.insert(name.to_owned(), tag);
        self.save_tags(&tags).map_err(TagError::Io)?;
        inner.tags = tags;
        Ok(())
    }

    fn remove_tag(&self, name: &str) -> Result<Option<Tag>, TagError> {
        check_tag_name(name)?;
        let mut inner = self.lock();
        let mut tags = inner.tags.clone();
        let old = tags.remove(name);
        if old.is_some() {
            self.save_tags(&tags).map_err(TagError::Io)?;
            inner.tags = tags;
        }
        Ok(old)
    }

    fn tags(&self) -> Result<Vec<(String, Tag)>, StoreError> {
        Ok(self
            .lock()
            .tags
            .iter()
            .map(|(n, t)| (n.clone(), *t))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records with a checksum that matches but a bad path are still refused.
    #[test]
    fn external_records_bound_and_check_the_path() {
        let rec = |path: &[u8]| {
            let mut body = Vec::new();
            body.extend_from_slice(EXTERNAL_MAGIC);
            body.extend_from_slice(&[0u8; 40]);
            body.extend_from_slice(&(path.len() as u32).to_le_bytes());
            body.extend_from_slice(path);
            let check = blake3::hash(&body);
            body.extend_from_slice(check.as_bytes());
            body
        };
        assert!(ExternalRecord::decode(&rec(b"/a"), u64::MAX).is_some());
        assert!(ExternalRecord::decode(&rec(b"relative"), u64::MAX).is_none());
        let mut long = vec![b'/'];
        long.resize(MAX_EXTERNAL_PATH, b'a');
        assert!(ExternalRecord::decode(&rec(&long), u64::MAX).is_some());
        long.push(b'a');
        assert!(ExternalRecord::decode(&rec(&long), u64::MAX).is_none());
        // A path length that disagrees with the bytes present.
        let mut r = rec(b"/abc");
        r[48] = 200;
        let body_len = r.len() - 32;
        let check = blake3::hash(&r[..body_len]);
        r[body_len..].copy_from_slice(check.as_bytes());
        assert!(ExternalRecord::decode(&r, u64::MAX).is_none());
    }

    fn config() -> proptest::test_runner::Config {
        proptest::test_runner::Config {
            cases: 256,
            rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x6269_7466),
            failure_persistence: None,
            ..Default::default()
        }
    }

    proptest::proptest! {
        #![proptest_config(config())]

        #[test]
        fn bitfield_files_roundtrip_and_reject_corruption(
            size in 0u64..(200 * GROUP_SIZE),
            set in proptest::collection::vec(0u64..200, 0..50),
            flip in proptest::prelude::any::<usize>(),
        ) {
            let mut bf = Bitfield::new(size);
            for g in set {
                bf.set(g);
            }
            let bytes = encode_bitfield(size, &bf);
            proptest::prop_assert_eq!(decode_bitfield(&bytes, u64::MAX), Some((size, bf)));
            let mut bad = bytes.clone();
            let bit = flip % (bad.len() * 8);
            bad[bit / 8] ^= 1 << (bit % 8);
            proptest::prop_assert_eq!(decode_bitfield(&bad, u64::MAX), None);
            proptest::prop_assert_eq!(decode_bitfield(&bytes[..bytes.len() - 1], u64::MAX), None);
            if size > 0 {
                proptest::prop_assert_eq!(decode_bitfield(&bytes, size - 1), None);
            }
        }

        #[test]
        fn external_records_roundtrip_and_reject_corruption(
            size in 0u64..(1 << 40),
            mtime in proptest::prelude::any::<i64>(),
            nsec in 0i64..1_000_000_000,
            dev in proptest::prelude::any::<u64>(),
            ino in proptest::prelude::any::<u64>(),
            name in "[a-z0-9 ._-]{1,300}",
            flip in proptest::prelude::any::<usize>(),
            small in proptest::prelude::any::<bool>(),
        ) {
            // Half the records are of small blobs, with their outboard inline.
            let (size, outboard) = if small {
                let size = GROUP_SIZE + 1 + size % (SMALL_BLOB - GROUP_SIZE);
                let ob: Vec<u8> = (0..outboard_len(size)).map(|i| i as u8).collect();
                (size, Some(Arc::from(ob)))
            } else {
                (size, None)
            };
            let rec = ExternalRecord {
                path: PathBuf::from("/data").join(name),
                size,
                mtime,
                mtime_nsec: nsec,
                dev,
                ino,
                outboard,
            };
            let bytes = rec.encode();
            proptest::prop_assert_eq!(ExternalRecord::decode(&bytes, u64::MAX), Some(rec.clone()));
            let mut bad = bytes.clone();
            let bit = flip % (bad.len() * 8);
            bad[bit / 8] ^= 1 << (bit % 8);
            proptest::prop_assert_eq!(ExternalRecord::decode(&bad, u64::MAX), None);
            proptest::prop_assert_eq!(ExternalRecord::decode(&bytes[..bytes.len() - 1], u64::MAX), None);
            if size > 0 {
                proptest::prop_assert_eq!(ExternalRecord::decode(&bytes, size - 1), None);
            }
        }

        #[test]
        fn external_record_garbage_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let _ = ExternalRecord::decode(&bytes, 1 << 30);
        }

        #[test]
        fn bitfield_garbage_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = decode_bitfield(&bytes, 1 << 30);
        }
    }
}
