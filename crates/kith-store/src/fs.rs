//! The filesystem store.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, mpsc};

use crate::range::BlobSource;
use crate::store::{
    PartialSink, check_tag_name, encode_range_from, import_verified, need, read_range_from,
};
use crate::tree::{GROUP_SIZE, PAIR_LEN, PairSink, TreeBuilder, group_count, outboard_len};
use crate::{
    Bitfield, BlobFormat, BlobInfo, BlobStatus, Hash, ImportError, ReadError, Store, StoreConfig,
    StoreError, Tag, TagError,
};

const BITFIELD_MAGIC: &[u8; 8] = b"kithbf01";
/// Bytes read and written per step of a streaming import.
const IO_BUF: usize = 1 << 20;

/// Errors of [`FsStore::open`].
#[derive(Debug, thiserror::Error)]
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
/// ROOT/blobs/HASH.obao       its outboard (blobs of more than one group)
/// ROOT/partial/HASH.data     a partial blob, written at group offsets
/// ROOT/partial/HASH.obao     its outboard entries received so far
/// ROOT/partial/HASH.bitfield the verified size and the groups that are durable
/// ROOT/tags                  one line per tag: NAME raw|collection HASH
/// ROOT/tmp/                  imports in progress, emptied on open
/// ```
///
/// # Crash safety
///
/// Three invariants hold at every instant, so whatever point a process is killed at,
/// reopening the store finds a consistent state:
///
/// - *Nothing unverified is visible as verified.* A complete import is written and synced
///   in `tmp/`, and only then renamed into `blobs/` (outboard first, then data, the
///   directory synced after each). A `blobs/HASH.data` therefore always holds the whole,
///   hashed blob. A partial blob's groups count as present only once the bitfield file
///   says so, and it is rewritten (temporary file, sync, atomic rename, directory sync)
///   only after the groups and their outboard entries are synced.
/// - *No acknowledged group is lost.* [`Store::import_verified`] reports a group durable
///   only after that bitfield update; groups written but not yet recorded are simply
///   fetched again.
/// - *Partial blobs resume.* On open the store reads each bitfield file and continues from
///   it; a blob whose bitfield was complete but whose move into `blobs/` was interrupted
///   is finished on open.
///
/// Only one process may use a store directory at a time.
#[derive(Debug)]
pub struct FsStore {
    root: PathBuf,
    config: StoreConfig,
    inner: Mutex<Inner>,
    tmp_counter: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    complete: BTreeMap<Hash, u64>,
    partial: BTreeMap<Hash, Bitfield>,
    partial_size: BTreeMap<Hash, u64>,
    tags: BTreeMap<String, Tag>,
    used: u64,
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
        self.pending.sort_unstable_by_key(|(s, _)| *s);
        let mut run: Vec<u8> = Vec::with_capacity(self.pending.len() * PAIR_LEN);
        let mut run_start = 0;
        let mut next = 0;
        for (split, pair) in self.pending.drain(..) {
            if run.is_empty() || split != next {
                if !run.is_empty() {
                    self.file
                        .write_all_at(&run, (run_start - 1) * PAIR_LEN as u64)?;
                    run.clear();
                }
                run_start = split;
            }
            run.extend_from_slice(&pair);
            next = split + 1;
        }
        if !run.is_empty() {
            self.file
                .write_all_at(&run, (run_start - 1) * PAIR_LEN as u64)?;
        }
        Ok(())
    }
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

struct FileSource {
    data: File,
    outboard: Option<File>,
}

impl BlobSource for FileSource {
    fn read_data(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.data.read_exact_at(buf, offset)
    }

    fn read_pair(&mut self, split: u64) -> io::Result<[u8; PAIR_LEN]> {
        let mut pair = [0u8; PAIR_LEN];
        let ob = self
            .outboard
            .as_ref()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "outboard missing"))?;
        ob.read_exact_at(&mut pair, (split - 1) * PAIR_LEN as u64)?;
        Ok(pair)
    }
}

impl FsStore {
    /// Opens (creating if needed) the store in directory `root` with the given limits,
    /// clears unfinished imports, finishes interrupted completions of partial blobs, and
    /// loads tags and bitfields.
    pub fn open(root: impl AsRef<Path>, config: StoreConfig) -> Result<Self, OpenError> {
        let root = root.as_ref().to_owned();
        let store = Self {
            root,
            config,
            inner: Mutex::default(),
            tmp_counter: AtomicU64::new(0),
        };
        store.load()?;
        Ok(store)
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
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
        for d in ["blobs", "partial", "tmp"] {
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
                    let ob_ok = outboard_len(size) == 0
                        || fs::metadata(&ob).is_ok_and(|m| m.len() == outboard_len(size));
                    if !ob_ok {
                        // The outboard is renamed before the data, so this cannot follow
                        // from a crash; rebuild it from the (synced, hashed) data.
                        self.rebuild_outboard(hash, &p, &ob)?;
                    }
                    inner.complete.insert(hash, size);
                    inner.used += size;
                }
                "obao" => {
                    // An outboard without data is an interrupted import, unless a
                    // complete partial blob is being promoted (finished below).
                    if !self.path("blobs", hash, "data").exists()
                        && !self.path("partial", hash, "bitfield").exists()
                    {
                        orphans.push(p);
                    }
                }
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
        for p in orphans {
            if p.is_file() {
                fs::remove_file(&p).map_err(at(&p))?;
            }
        }
        inner.tags = self.load_tags()?;
        *self.lock() = inner;
        Ok(())
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

    /// Moves a partial blob whose bitfield is complete into `blobs/`. Idempotent, so an
    /// interrupted promotion is finished by running it again.
    fn promote(&self, hash: Hash, size: u64) -> io::Result<()> {
        let blobs = self.dir("blobs");
        let p_ob = self.path("partial", hash, "obao");
        let c_ob = self.path("blobs", hash, "obao");
        if outboard_len(size) > 0 {
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

    /// Opens the files of blob `hash` for reading, with its size and (if partial) its
    /// bitfield.
    fn open_blob(&self, hash: Hash) -> Result<(FileSource, u64, Option<Bitfield>), ReadError> {
        let inner = self.lock();
        let (dir, size, bf) = if let Some(&size) = inner.complete.get(&hash) {
            ("blobs", size, None)
        } else if let Some(bf) = inner.partial.get(&hash) {
            let size = inner.partial_size.get(&hash).copied().unwrap_or(0);
            ("partial", size, Some(bf.clone()))
        } else {
            return Err(ReadError::NotFound(hash));
        };
        let data = File::open(self.path(dir, hash, "data")).map_err(ReadError::Io)?;
        let outboard = if outboard_len(size) > 0 {
            Some(File::open(self.path(dir, hash, "obao")).map_err(ReadError::Io)?)
        } else {
            None
        };
        Ok((FileSource { data, outboard }, size, bf))
    }
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
    store: &'a FsStore,
    hash: Hash,
    size: u64,
    data: File,
    outboard: File,
}

impl PartialSink for FsPartial<'_> {
    fn put_pair(&mut self, split: u64, pair: &[u8; PAIR_LEN]) -> io::Result<()> {
        self.outboard
            .write_all_at(pair, (split - 1) * PAIR_LEN as u64)
    }

    fn put_group(&mut self, _index: u64, offset: u64, data: &[u8]) -> io::Result<()> {
        self.data.write_all_at(data, offset)
    }

    fn commit(&mut self, groups: &[u64]) -> io::Result<()> {
        if groups.is_empty() {
            return Ok(());
        }
        // Data and entries first, then the record that they are there.
        self.data.sync_data()?;
        self.outboard.sync_data()?;
        let mut inner = self.store.lock();
        if inner.complete.contains_key(&self.hash) {
            return Ok(());
        }
        let Some(bf) = inner.partial.get_mut(&self.hash) else {
            return Err(io::Error::other("partial blob deleted during import"));
        };
        let mut new = bf.clone();
        for &g in groups {
            new.set(g);
        }
        let bf_path = self.store.path("partial", self.hash, "bitfield");
        write_atomic(&bf_path, &encode_bitfield(self.size, &new))?;
        *bf = new;
        if bf.is_complete() {
            self.store.promote(self.hash, self.size)?;
            inner.partial.remove(&self.hash);
            inner.partial_size.remove(&self.hash);
            inner.complete.insert(self.hash, self.size);
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

impl Store for FsStore {
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
            if inner.complete.contains_key(&hash) {
                return Ok(hash);
            }
            let old = inner.partial_size.get(&hash).copied().unwrap_or(0);
            self.config.check(size, inner.used - old)?;
            let blobs = self.dir("blobs");
            if outboard_len(size) > 0 {
                fs::rename(&tmp_ob, self.path("blobs", hash, "obao")).map_err(ImportError::Io)?;
                sync_dir(&blobs).map_err(ImportError::Io)?;
            }
            fs::rename(&tmp_data, self.path("blobs", hash, "data")).map_err(ImportError::Io)?;
            sync_dir(&blobs).map_err(ImportError::Io)?;
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

    fn import_verified(
        &self,
        hash: Hash,
        range: Range<u64>,
        encoded: &mut dyn Read,
        on_durable: &mut dyn FnMut(u64),
    ) -> Result<BlobStatus, ImportError> {
        import_verified(hash, range, encoded, &self.config, on_durable, |size| {
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
                    let bf = Bitfield::new(size);
                    let create = |ext: &str, len: u64| -> io::Result<()> {
                        let f = File::create(self.path("partial", hash, ext))?;
                        f.set_len(len)?;
                        f.sync_all()
                    };
                    create("data", size).map_err(ImportError::Io)?;
                    create("obao", outboard_len(size)).map_err(ImportError::Io)?;
                    write_atomic(
                        &self.path("partial", hash, "bitfield"),
                        &encode_bitfield(size, &bf),
                    )
                    .map_err(ImportError::Io)?;
                    inner.partial.insert(hash, bf);
                    inner.partial_size.insert(hash, size);
                    inner.used += size;
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
            Ok(FsPartial {
                store: self,
                hash,
                size,
                data: open("data").map_err(ImportError::Io)?,
                outboard: open("obao").map_err(ImportError::Io)?,
            })
        })
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

    fn read_range(&self, hash: Hash, range: Range<u64>) -> Result<Vec<u8>, ReadError> {
        let (mut src, size, bf) = self.open_blob(hash)?;
        read_range_from(&mut src, hash, size, bf.as_ref(), range)
    }

    fn encode_range(
        &self,
        hash: Hash,
        range: Range<u64>,
        out: &mut dyn Write,
    ) -> Result<u64, ReadError> {
        let (mut src, size, bf) = self.open_blob(hash)?;
        encode_range_from(&mut src, hash, size, bf.as_ref(), range, out)
    }

    fn export_writer(&self, hash: Hash, out: &mut dyn Write) -> Result<u64, ReadError> {
        let (src, size, bf) = self.open_blob(hash)?;
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
                complete: false,
            }))
            .collect();
        out.sort_by_key(|i| i.hash);
        Ok(out)
    }

    fn delete(&self, hash: Hash) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        if let Some(size) = inner.complete.remove(&hash) {
            inner.used -= size;
            // Data first: once it is gone the blob no longer counts as present.
            remove_if_exists(&self.path("blobs", hash, "data")).map_err(StoreError::Io)?;
            remove_if_exists(&self.path("blobs", hash, "obao")).map_err(StoreError::Io)?;
            sync_dir(&self.dir("blobs")).map_err(StoreError::Io)?;
            return Ok(true);
        }
        if inner.partial.remove(&hash).is_some() {
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
        fn bitfield_garbage_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = decode_bitfield(&bytes, 1 << 30);
        }
    }
}
