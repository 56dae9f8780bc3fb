//! The in-memory store.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::ops::Range;
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;

use crate::range::BlobSource;
use crate::store::{
    PartialSink, check_tag_name, encode_range_from, import_verified, need, read_range_from,
};
use crate::tree::{GROUP_SIZE, PAIR_LEN, group_bytes, group_count, outboard};
use crate::{
    Bitfield, BlobInfo, BlobStatus, Hash, ImportError, ReadError, SizeProof, Store, StoreConfig,
    StoreError, Tag, TagError,
};

/// A [`Store`] that keeps everything in memory. Partial blobs are held sparsely (only the
/// groups and outboard entries received), so a claimed size costs no memory up front.
#[derive(Debug, Default)]
pub struct MemStore {
    config: StoreConfig,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    blobs: BTreeMap<Hash, Blob>,
    tags: BTreeMap<String, Tag>,
    used: u64,
}

#[derive(Debug, Clone)]
enum Blob {
    Complete {
        data: Bytes,
        outboard: Bytes,
    },
    Partial {
        size: u64,
        groups: BTreeMap<u64, Bytes>,
        pairs: BTreeMap<u64, [u8; PAIR_LEN]>,
        bitfield: Bitfield,
    },
}

impl Blob {
    fn size(&self) -> u64 {
        match self {
            Blob::Complete { data, .. } => data.len() as u64,
            Blob::Partial { size, .. } => *size,
        }
    }

    fn partial_bitfield(&self) -> Option<&Bitfield> {
        match self {
            Blob::Complete { .. } => None,
            Blob::Partial { bitfield, .. } => Some(bitfield),
        }
    }

    fn bitfield(&self) -> Bitfield {
        match self {
            Blob::Complete { data, .. } => Bitfield::full(data.len() as u64),
            Blob::Partial { bitfield, .. } => bitfield.clone(),
        }
    }
}

impl BlobSource for &Blob {
    fn read_data(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let missing = || io::Error::new(io::ErrorKind::UnexpectedEof, "group not present");
        match self {
            Blob::Complete { data, .. } => {
                let o = offset as usize;
                let src = data.get(o..o + buf.len()).ok_or_else(missing)?;
                buf.copy_from_slice(src);
            }
            Blob::Partial { groups, .. } => {
                // Reads never cross a group boundary here except through read_range,
                // which goes group by group.
                let mut pos = 0;
                while pos < buf.len() {
                    let at = offset + pos as u64;
                    let g = groups.get(&(at / GROUP_SIZE)).ok_or_else(missing)?;
                    let within = (at % GROUP_SIZE) as usize;
                    let src = g.get(within..).ok_or_else(missing)?;
                    let n = src.len().min(buf.len() - pos);
                    buf[pos..pos + n].copy_from_slice(&src[..n]);
                    pos += n;
                }
            }
        }
        Ok(())
    }

    fn read_pair(&mut self, split: u64) -> io::Result<[u8; PAIR_LEN]> {
        let missing = || io::Error::new(io::ErrorKind::UnexpectedEof, "entry not present");
        match self {
            Blob::Complete { outboard, .. } => {
                let o = ((split - 1) * PAIR_LEN as u64) as usize;
                let mut pair = [0u8; PAIR_LEN];
                pair.copy_from_slice(outboard.get(o..o + PAIR_LEN).ok_or_else(missing)?);
                Ok(pair)
            }
            Blob::Partial { pairs, .. } => pairs.get(&split).copied().ok_or_else(missing),
        }
    }
}

impl MemStore {
    /// An empty store with the given limits.
    pub fn new(config: StoreConfig) -> Self {
        Self {
            config,
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than losing the store, so keep going with the data.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn insert_complete(&self, data: Bytes) -> Result<Hash, ImportError> {
        let (hash, ob) = outboard(&data);
        let mut inner = self.lock();
        if let Some(Blob::Complete { .. }) = inner.blobs.get(&hash) {
            return Ok(hash);
        }
        let old = inner.blobs.get(&hash).map_or(0, Blob::size);
        self.config
            .check(data.len() as u64, inner.used.saturating_sub(old))?;
        inner.used = inner.used - old + data.len() as u64;
        inner.blobs.insert(
            hash,
            Blob::Complete {
                data,
                outboard: Bytes::from(ob),
            },
        );
        Ok(hash)
    }

    fn with_blob<T>(
        &self,
        hash: Hash,
        f: impl FnOnce(&Blob) -> Result<T, ReadError>,
    ) -> Result<T, ReadError> {
        // A snapshot (the bytes are shared, not copied), so a slow writer `f` writes to
        // never holds the store's lock.
        let blob = {
            let inner = self.lock();
            inner
                .blobs
                .get(&hash)
                .ok_or(ReadError::NotFound(hash))?
                .clone()
        };
        f(&blob)
    }
}

struct MemPartial<'a> {
    store: &'a MemStore,
    hash: Hash,
}

impl MemPartial<'_> {
    fn with<T>(&self, f: impl FnOnce(&mut Blob) -> T) -> io::Result<T> {
        let mut inner = self.store.lock();
        let blob = inner
            .blobs
            .get_mut(&self.hash)
            .ok_or_else(|| io::Error::other("blob deleted during import"))?;
        Ok(f(blob))
    }
}

impl PartialSink for MemPartial<'_> {
    fn put_pair(&mut self, split: u64, pair: &[u8; PAIR_LEN]) -> io::Result<()> {
        self.with(|b| {
            if let Blob::Partial { pairs, .. } = b {
                pairs.insert(split, *pair);
            }
        })
    }

    fn put_group(&mut self, index: u64, _offset: u64, data: &[u8]) -> io::Result<()> {
        self.with(|b| {
            if let Blob::Partial { groups, .. } = b {
                groups
                    .entry(index)
                    .or_insert_with(|| Bytes::copy_from_slice(data));
            }
        })
    }

    fn commit(&mut self, done: &[u64]) -> io::Result<()> {
        self.with(|b| {
            let Blob::Partial {
                size,
                groups,
                pairs,
                bitfield,
            } = b
            else {
                return;
            };
            for &i in done {
                bitfield.set(i);
            }
            if bitfield.is_complete() {
                let mut data = Vec::with_capacity(*size as usize);
                for g in groups.values() {
                    data.extend_from_slice(g);
                }
                let mut ob = vec![0u8; crate::tree::outboard_len(*size) as usize];
                for (split, pair) in pairs.iter() {
                    let o = ((split - 1) * PAIR_LEN as u64) as usize;
                    if let Some(dst) = ob.get_mut(o..o + PAIR_LEN) {
                        dst.copy_from_slice(pair);
                    }
                }
                *b = Blob::Complete {
                    data: Bytes::from(data),
                    outboard: Bytes::from(ob),
                };
            }
        })
    }

    fn status(&self) -> BlobStatus {
        let inner = self.store.lock();
        match inner.blobs.get(&self.hash) {
            Some(b) => BlobStatus {
                size: b.size(),
                bitfield: b.bitfield(),
            },
            None => BlobStatus {
                size: 0,
                bitfield: Bitfield::default(),
            },
        }
    }
}

impl Store for MemStore {
    fn import_bytes(&self, data: &[u8]) -> Result<Hash, ImportError> {
        self.config.check(data.len() as u64, 0)?;
        self.insert_complete(Bytes::copy_from_slice(data))
    }

    fn import_reader(&self, reader: &mut dyn Read) -> Result<Hash, ImportError> {
        let limit = self.config.blob_limit();
        let mut data = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ImportError::Io(e)),
            };
            if (data.len() + n) as u64 > limit {
                return Err(ImportError::TooLarge {
                    size: (data.len() + n) as u64,
                    limit,
                });
            }
            data.extend_from_slice(&buf[..n]);
        }
        self.insert_complete(Bytes::from(data))
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
            SizeProof::Omitted => Some(
                self.lock()
                    .blobs
                    .get(&hash)
                    .map(|b| b.size())
                    .ok_or(ImportError::SizeUnknown(hash))?,
            ),
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
                match inner.blobs.get(&hash) {
                    Some(b) if b.size() != size => {
                        return Err(ImportError::SizeConflict {
                            stored: b.size(),
                            verified: size,
                        });
                    }
                    Some(_) => {}
                    None => {
                        self.config.check(size, inner.used)?;
                        inner.used += size;
                        inner.blobs.insert(
                            hash,
                            Blob::Partial {
                                size,
                                groups: BTreeMap::new(),
                                pairs: BTreeMap::new(),
                                bitfield: Bitfield::new(size),
                            },
                        );
                    }
                }
                Ok(MemPartial { store: self, hash })
            },
        )
    }

    fn status(&self, hash: Hash) -> Result<Option<BlobStatus>, StoreError> {
        Ok(self.lock().blobs.get(&hash).map(|b| BlobStatus {
            size: b.size(),
            bitfield: b.bitfield(),
        }))
    }

    fn read_range(&self, hash: Hash, range: Range<u64>) -> Result<Vec<u8>, ReadError> {
        self.with_blob(hash, |blob| {
            let bf = blob.partial_bitfield();
            read_range_from(&mut { blob }, hash, blob.size(), bf, range)
        })
    }

    fn encode_range_with(
        &self,
        hash: Hash,
        range: Range<u64>,
        proof: SizeProof,
        out: &mut dyn Write,
    ) -> Result<u64, ReadError> {
        self.with_blob(hash, |blob| {
            let bf = blob.partial_bitfield();
            encode_range_from(&mut { blob }, hash, blob.size(), bf, range, proof, out)
        })
    }

    fn export_writer(&self, hash: Hash, out: &mut dyn Write) -> Result<u64, ReadError> {
        self.with_blob(hash, |blob| {
            let size = blob.size();
            need(hash, blob.partial_bitfield(), 0, group_count(size))?;
            let mut src = blob;
            let mut buf = vec![0u8; GROUP_SIZE as usize];
            for g in 0..group_count(size) {
                let (lo, hi) = group_bytes(size, g);
                let buf = &mut buf[..(hi - lo) as usize];
                src.read_data(lo, buf).map_err(ReadError::Io)?;
                out.write_all(buf).map_err(ReadError::Io)?;
            }
            Ok(size)
        })
    }

    fn list(&self) -> Result<Vec<BlobInfo>, StoreError> {
        Ok(self
            .lock()
            .blobs
            .iter()
            .map(|(h, b)| BlobInfo {
                hash: *h,
                size: b.size(),
                complete: matches!(b, Blob::Complete { .. }),
            })
            .collect())
    }

    fn delete(&self, hash: Hash) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        match inner.blobs.remove(&hash) {
            Some(b) => {
                inner.used -= b.size();
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn set_tag(&self, name: &str, tag: Tag) -> Result<(), TagError> {
        check_tag_name(name)?;
        self.lock().tags.insert(name.to_owned(), tag);
        Ok(())
    }

    fn remove_tag(&self, name: &str) -> Result<Option<Tag>, TagError> {
        check_tag_name(name)?;
        Ok(self.lock().tags.remove(name))
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
