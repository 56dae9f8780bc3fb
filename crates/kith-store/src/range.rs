//! Verified range encoding: any byte range of a blob together with its proof, and an
//! incremental decoder that checks every parent node and every group before handing it out.
//!
//! # Encoding
//!
//! ```text
//! size             u64, little endian: the blob's size in bytes
//! size proof       only when the requested groups do not include the last group:
//!                  the pre-order walk from the root to the last group
//! requested groups the pre-order walk over the groups overlapping the requested range
//! ```
//!
//! A pre-order walk over a set of groups visits the tree from the root: at a parent node it
//! emits the node's outboard entry (left and right child chaining values, 64 bytes), then
//! walks the left child if it holds a wanted group, then the right child if it does; at a
//! group it emits the group's bytes (16 KiB, the last group shorter). The decoder knows the
//! root hash and the requested range, reads the size, and can thus tell the shape of
//! everything that follows: nothing else is on the wire.
//!
//! The size is claimed by the sender. It is proven once the last group verifies (its
//! length and position are bound by the root hash, as in Bao), which is why the size proof
//! comes first: a decoder has a verified size before it yields its first group. The size
//! proof costs at most one group and a path of entries; a range that includes the end of
//! the blob needs none. A blob of one group is sent whole.
//!
//! A receiver that already holds the blob's size, verified by an earlier encoding, can
//! ask for none ([`SizeProof::Omitted`]): the sender still writes the size, and the
//! decoder ([`RangeDecoder::with_known_size`]) rejects any size but the one it holds,
//! then verifies everything against the tree of that size. For a short range this halves
//! the bytes: the size proof is a whole group.

use std::io::{self, Read, Write};

use blake3::hazmat::ChainingValue;
use bytes::Bytes;

use crate::Hash;
use crate::tree::{
    GROUP_SIZE, MAX_BLOB_SIZE, PAIR_LEN, group_bytes, group_count, group_cv, groups_overlapping,
    parent_cv, split,
};

/// Errors of [`RangeDecoder`] and [`decode_range`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The stream ended before the encoding did.
    #[error("encoded range is truncated")]
    Truncated,
    /// The claimed blob size exceeds [`MAX_BLOB_SIZE`] or the caller's limit.
    #[error("claimed blob size {size} exceeds the limit {limit}")]
    SizeTooLarge {
        /// The size read from the stream.
        size: u64,
        /// The limit it was checked against.
        limit: u64,
    },
    /// A parent node's entry does not hash to the chaining value its parent (or the root
    /// hash) committed to.
    #[error("parent node at split {split} does not verify")]
    ParentMismatch {
        /// Split point (first group of the right subtree) of the rejected node.
        split: u64,
    },
    /// A group's bytes do not hash to the chaining value the tree committed to.
    #[error("group {index} does not verify")]
    GroupMismatch {
        /// Index of the rejected group.
        index: u64,
    },
    /// An encoding without a size proof claims a size other than the one the receiver
    /// holds verified ([`RangeDecoder::with_known_size`]).
    #[error("encoded range claims size {claimed}, the verified size is {known}")]
    SizeMismatch {
        /// The size read from the stream.
        claimed: u64,
        /// The verified size the receiver holds.
        known: u64,
    },
    /// [`decode_range`] found bytes after the end of the encoding.
    #[error("{0} trailing bytes after the encoded range")]
    TrailingBytes(usize),
    /// Reading the stream failed.
    #[error("reading the encoded range failed")]
    Io(#[source] io::Error),
}

fn read_err(e: io::Error) -> DecodeError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        DecodeError::Truncated
    } else {
        DecodeError::Io(e)
    }
}

/// One verified piece of an encoded range, yielded by [`RangeDecoder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeItem {
    /// A parent node's outboard entry, verified against its parent.
    Parent {
        /// Split point of the node: its entry belongs at outboard position `split - 1`.
        split: u64,
        /// Left and right child chaining values.
        pair: [u8; PAIR_LEN],
    },
    /// A group's bytes, verified against the tree.
    Group {
        /// Group index.
        index: u64,
        /// Offset of the group's first byte in the blob.
        offset: u64,
        /// The group's bytes (16 KiB, or less for the last group).
        data: Bytes,
    },
}

/// Reads data and outboard entries of a blob for [`encode_range`]-style encoding.
pub(crate) trait BlobSource {
    /// Reads the bytes of `[offset, offset + buf.len())`.
    fn read_data(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// The bytes of `[offset, offset + len)`, borrowed from the source where it holds
    /// them (in memory, or read ahead), else read into `scratch` (at least `len` long).
    fn data<'a>(
        &'a mut self,
        offset: u64,
        len: usize,
        scratch: &'a mut [u8],
    ) -> io::Result<&'a [u8]> {
        read_into(scratch, len, |buf| self.read_data(offset, buf))
    }
    /// Tells the source that the walk that follows reads the bytes `[start, end)` in
    /// order (and the outboard entries of the groups between), so that it may read
    /// ahead up to there and no further. By default nothing.
    fn will_read(&mut self, start: u64, end: u64) {
        let _ = (start, end);
    }
    /// Reads the outboard entry of the node splitting at `split`.
    fn read_pair(&mut self, split: u64) -> io::Result<[u8; PAIR_LEN]>;
}

/// Fills the first `len` bytes of `scratch` with `read` and returns them.
pub(crate) fn read_into(
    scratch: &mut [u8],
    len: usize,
    read: impl FnOnce(&mut [u8]) -> io::Result<()>,
) -> io::Result<&[u8]> {
    let buf = scratch
        .get_mut(..len)
        .ok_or_else(|| io::Error::other("read longer than its buffer"))?;
    read(buf)?;
    Ok(buf)
}

/// An in-memory blob: its data and outboard.
pub(crate) struct SliceSource<'a> {
    pub(crate) data: &'a [u8],
    pub(crate) outboard: &'a [u8],
}

fn slice_at(s: &[u8], offset: u64, len: usize) -> io::Result<&[u8]> {
    usize::try_from(offset)
        .ok()
        .and_then(|o| s.get(o..o.checked_add(len)?))
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "blob source too short"))
}

impl BlobSource for SliceSource<'_> {
    fn read_data(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        buf.copy_from_slice(slice_at(self.data, offset, buf.len())?);
        Ok(())
    }

    fn data<'a>(&'a mut self, offset: u64, len: usize, _: &'a mut [u8]) -> io::Result<&'a [u8]> {
        slice_at(self.data, offset, len)
    }

    fn read_pair(&mut self, split: u64) -> io::Result<[u8; PAIR_LEN]> {
        let mut pair = [0u8; PAIR_LEN];
        pair.copy_from_slice(slice_at(
            self.outboard,
            (split - 1) * PAIR_LEN as u64,
            PAIR_LEN,
        )?);
        Ok(pair)
    }
}

/// Whether an encoded range carries the proof of its blob's size (see the
/// [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SizeProof {
    /// It does, unless the range reaches the last group (which proves the size itself):
    /// what a receiver that does not hold the blob's size needs.
    #[default]
    Included,
    /// It does not: the receiver holds the blob's size, verified by an earlier encoding.
    Omitted,
}

/// The group sections of an encoding of `[start, end)`: the size proof (if any), then the
/// requested groups. Each is a group range `[a, b)`; empty ones are left out.
fn sections(size: u64, start: u64, end: u64, proof: SizeProof) -> [(u64, u64); 2] {
    let n = group_count(size);
    let (a, b) = groups_overlapping(size, start, end);
    let proof = if b == n || proof == SizeProof::Omitted {
        (0, 0)
    } else {
        (n - 1, n)
    };
    [proof, (a, b)]
}

/// One piece of a pre-order walk, handed to the visitor of [`walk`].
pub(crate) enum Piece<'a> {
    /// A parent node's outboard entry.
    Pair {
        /// Left and right child chaining values.
        pair: &'a [u8; PAIR_LEN],
    },
    /// A group's bytes.
    Group {
        /// Offset of its first byte in the blob.
        offset: u64,
        /// Its bytes.
        data: &'a [u8],
    },
}

/// Errors of [`walk`].
#[derive(Debug)]
pub(crate) enum WalkError {
    /// Reading the source failed.
    Source(io::Error),
    /// The visitor failed.
    Visit(io::Error),
    /// A piece did not verify against the root hash ([`DecodeError::GroupMismatch`] or
    /// [`DecodeError::ParentMismatch`]); only when walking with a root to verify against.
    Verify(DecodeError),
}

impl From<WalkError> for io::Error {
    fn from(e: WalkError) -> Self {
        match e {
            WalkError::Source(e) | WalkError::Visit(e) => e,
            WalkError::Verify(e) => io::Error::new(io::ErrorKind::InvalidData, e),
        }
    }
}

struct Walk<'a> {
    src: &'a mut dyn BlobSource,
    size: u64,
    want: (u64, u64),
    verify: bool,
    buf: Vec<u8>,
    visit: &'a mut dyn FnMut(Piece<'_>) -> io::Result<()>,
}

impl Walk<'_> {
    /// Walks node `[s, e)` whose chaining value is `cv` (checked only when verifying).
    fn node(&mut self, s: u64, e: u64, cv: &ChainingValue, is_root: bool) -> Result<(), WalkError> {
        if e - s == 1 {
            let (lo, hi) = group_bytes(self.size, s);
            let data = self
                .src
                .data(lo, (hi - lo) as usize, &mut self.buf)
                .map_err(WalkError::Source)?;
            if self.verify {
                let got = if is_root {
                    *blake3::hash(data).as_bytes()
                } else {
                    group_cv(s, data)
                };
                if !constant_eq(&got, cv) {
                    return Err(WalkError::Verify(DecodeError::GroupMismatch { index: s }));
                }
            }
            return (self.visit)(Piece::Group { offset: lo, data }).map_err(WalkError::Visit);
        }
        let m = split(s, e);
        let pair = self.src.read_pair(m).map_err(WalkError::Source)?;
        if self.verify && !constant_eq(&parent_cv(&pair, is_root), cv) {
            return Err(WalkError::Verify(DecodeError::ParentMismatch { split: m }));
        }
        (self.visit)(Piece::Pair { pair: &pair }).map_err(WalkError::Visit)?;
        let (l, r) = crate::tree::split_pair(&pair);
        if self.want.0 < m {
            self.node(s, m, &l, false)?;
        }
        if self.want.1 > m {
            self.node(m, e, &r, false)?;
        }
        Ok(())
    }
}

/// Walks the tree of a blob of `size` bytes in pre-order over groups `want` (`[a, b)`,
/// non-empty), the order of the encoding: each parent entry on the way, then the groups.
/// With `root`, every entry and group is verified against it before `visit` sees it, the
/// same checks [`RangeDecoder`] makes on the wire; the first that fails ends the walk.
pub(crate) fn walk(
    src: &mut dyn BlobSource,
    size: u64,
    root: Option<Hash>,
    want: (u64, u64),
    visit: &mut dyn FnMut(Piece<'_>) -> io::Result<()>,
) -> Result<(), WalkError> {
    let mut w = Walk {
        src,
        size,
        want,
        verify: root.is_some(),
        buf: vec![0u8; GROUP_SIZE as usize],
        visit,
    };
    let cv = root.map_or([0; 32], |h| *h.as_bytes());
    let (start, _) = group_bytes(size, want.0);
    let (_, end) = group_bytes(size, want.1 - 1);
    w.src.will_read(start, end);
    w.node(0, group_count(size), &cv, true)
}

/// Encodes `[start, end)` of a blob of `size` bytes read from `src`; returns the bytes
/// written. With `root`, every piece is verified before it is written.
pub(crate) fn encode_from(
    src: &mut dyn BlobSource,
    size: u64,
    root: Option<Hash>,
    start: u64,
    end: u64,
    proof: SizeProof,
    out: &mut dyn Write,
) -> Result<u64, WalkError> {
    out.write_all(&size.to_le_bytes())
        .map_err(WalkError::Visit)?;
    let mut written = 8;
    for want in sections(size, start, end, proof) {
        if want.0 < want.1 {
            walk(src, size, root, want, &mut |p| {
                let bytes: &[u8] = match p {
                    Piece::Pair { pair, .. } => pair,
                    Piece::Group { data, .. } => data,
                };
                written += bytes.len() as u64;
                out.write_all(bytes)
            })?;
        }
    }
    Ok(written)
}

/// Encodes the byte range `[start, end)` of a blob held in memory with its proof (see the
/// [module docs](self) for the format). `outboard` is the one [`outboard`](crate::outboard)
/// computed for `data`. The range is clamped to the blob. Returns the bytes written.
///
/// ```
/// let data = vec![1u8; 50_000];
/// let (hash, ob) = kith_store::outboard(&data);
/// let mut wire = Vec::new();
/// kith_store::encode_range(&data, &ob, 20_000..20_010, &mut wire)?;
/// let (size, bytes) = kith_store::decode_range(hash, 20_000..20_010, &wire)?;
/// assert_eq!((size, &bytes[..]), (50_000, &data[20_000..20_010]));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn encode_range(
    data: &[u8],
    outboard: &[u8],
    range: std::ops::Range<u64>,
    out: &mut impl Write,
) -> io::Result<u64> {
    encode_range_with(data, outboard, range, SizeProof::Included, out)
}

/// [`encode_range`], with or without the size proof (see [`SizeProof`]).
pub fn encode_range_with(
    data: &[u8],
    outboard: &[u8],
    range: std::ops::Range<u64>,
    proof: SizeProof,
    out: &mut impl Write,
) -> io::Result<u64> {
    let mut src = SliceSource { data, outboard };
    encode_from(
        &mut src,
        data.len() as u64,
        None,
        range.start,
        range.end,
        proof,
        out,
    )
    .map_err(Into::into)
}

#[derive(Debug, Clone, Copy)]
struct Frame {
    start: u64,
    end: u64,
    cv: ChainingValue,
    is_root: bool,
}

/// Incremental decoder of an encoded range (see the [module docs](self)).
///
/// It reads from any [`Read`] and yields [`DecodeItem`]s, each verified before it is
/// yielded: the first parent entry or group that does not verify ends the decoding with an
/// error, so a caller that writes what it is given never writes unverified bytes. After an
/// error the decoder yields nothing more.
#[derive(Debug)]
pub struct RangeDecoder<R> {
    reader: R,
    root: Hash,
    size: u64,
    size_verified: bool,
    sections: [(u64, u64); 2],
    next_section: usize,
    want: (u64, u64),
    stack: Vec<Frame>,
    done: bool,
}

impl<R: Read> RangeDecoder<R> {
    /// Starts decoding the encoding of `range` of the blob `root`: reads the size header.
    /// `max_size` bounds the claimed size (it is capped at [`MAX_BLOB_SIZE`] in any case).
    pub fn new(
        reader: R,
        root: Hash,
        range: std::ops::Range<u64>,
        max_size: u64,
    ) -> Result<Self, DecodeError> {
        let limit = max_size.min(MAX_BLOB_SIZE);
        Self::start(reader, root, range, SizeProof::Included, |size| {
            if size > limit {
                return Err(DecodeError::SizeTooLarge { size, limit });
            }
            Ok(())
        })
    }

    /// Starts decoding an encoding of `range` of the blob `root` made without a size proof
    /// ([`SizeProof::Omitted`]), for a receiver that holds the blob's verified `size`:
    /// reads the size header and fails with [`DecodeError::SizeMismatch`] unless it is
    /// `size`. Everything that follows is verified against the tree of that size.
    pub fn with_known_size(
        reader: R,
        root: Hash,
        range: std::ops::Range<u64>,
        size: u64,
    ) -> Result<Self, DecodeError> {
        Self::start(reader, root, range, SizeProof::Omitted, |claimed| {
            if claimed != size {
                return Err(DecodeError::SizeMismatch {
                    claimed,
                    known: size,
                });
            }
            Ok(())
        })
    }

    /// Reads the size header and accepts it with `check`.
    fn start(
        mut reader: R,
        root: Hash,
        range: std::ops::Range<u64>,
        proof: SizeProof,
        check: impl FnOnce(u64) -> Result<(), DecodeError>,
    ) -> Result<Self, DecodeError> {
        let mut hdr = [0u8; 8];
        reader.read_exact(&mut hdr).map_err(read_err)?;
        let size = u64::from_le_bytes(hdr);
        check(size)?;
        Ok(Self {
            reader,
            root,
            size,
            // Without a proof, the size is the one the receiver holds verified.
            size_verified: proof == SizeProof::Omitted,
            sections: sections(size, range.start, range.end, proof),
            next_section: 0,
            want: (0, 0),
            stack: Vec::with_capacity(64),
            done: false,
        })
    }

    /// The blob size claimed by the sender; see [`size_verified`](Self::size_verified).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the size has been proven (the last group has verified, or the receiver
    /// held it: [`with_known_size`](Self::with_known_size)). This is the case from the
    /// first yielded group on.
    pub fn size_verified(&self) -> bool {
        self.size_verified
    }

    /// Gives back the underlying reader.
    pub fn into_inner(self) -> R {
        self.reader
    }

    fn step(&mut self) -> Result<Option<DecodeItem>, DecodeError> {
        let mut data = GrowBuf::default();
        Ok(self.step_into(&mut data)?.map(|step| match step {
            Step::Parent { split, pair } => DecodeItem::Parent { split, pair },
            Step::Group { index, offset } => DecodeItem::Group {
                index,
                offset,
                data: Bytes::from(data.into_vec()),
            },
        }))
    }

    /// The next verified item, like [`Iterator::next`], except that a group's bytes are
    /// appended to `out` rather than handed over in a buffer of their own: a caller
    /// that gathers groups into larger writes copies each byte once. Bytes that fail
    /// verification are taken off `out` again.
    pub(crate) fn next_into(&mut self, out: &mut GrowBuf) -> Option<Result<Step, DecodeError>> {
        if self.done {
            return None;
        }
        let step = self.step_into(out);
        self.settle(step)
    }

    /// An item for the caller; the end of decoding at the end or at the first error.
    fn settle<T>(
        &mut self,
        step: Result<Option<T>, DecodeError>,
    ) -> Option<Result<T, DecodeError>> {
        match step {
            Ok(Some(item)) => Some(Ok(item)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }

    fn step_into(&mut self, out: &mut GrowBuf) -> Result<Option<Step>, DecodeError> {
        let n = group_count(self.size);
        let frame = loop {
            if let Some(f) = self.stack.pop() {
                break f;
            }
            let Some(&want) = self.sections.get(self.next_section) else {
                return Ok(None);
            };
            self.next_section += 1;
            if want.0 < want.1 {
                self.want = want;
                self.stack.push(Frame {
                    start: 0,
                    end: n,
                    cv: *self.root.as_bytes(),
                    is_root: true,
                });
            }
        };
        if frame.end - frame.start == 1 {
            let index = frame.start;
            let (lo, hi) = group_bytes(self.size, index);
            let len = (hi - lo) as usize;
            let at = out.len();
            let data = out.grow(len);
            let verified = match self.reader.read_exact(data) {
                Err(e) => Err(read_err(e)),
                Ok(()) => {
                    let cv = if frame.is_root {
                        *blake3::hash(data).as_bytes()
                    } else {
                        group_cv(index, data)
                    };
                    if constant_eq(&cv, &frame.cv) {
                        Ok(())
                    } else {
                        Err(DecodeError::GroupMismatch { index })
                    }
                }
            };
            if let Err(e) = verified {
                out.truncate(at);
                return Err(e);
            }
            if index == n - 1 {
                self.size_verified = true;
            }
            return Ok(Some(Step::Group { index, offset: lo }));
        }
        let mut pair = [0u8; PAIR_LEN];
        self.reader.read_exact(&mut pair).map_err(read_err)?;
        let m = split(frame.start, frame.end);
        if !constant_eq(&parent_cv(&pair, frame.is_root), &frame.cv) {
            return Err(DecodeError::ParentMismatch { split: m });
        }
        let (l, r) = crate::tree::split_pair(&pair);
        if self.want.1 > m {
            self.stack.push(Frame {
                start: m,
                end: frame.end,
                cv: r,
                is_root: false,
            });
        }
        if self.want.0 < m {
            self.stack.push(Frame {
                start: frame.start,
                end: m,
                cv: l,
                is_root: false,
            });
        }
        Ok(Some(Step::Parent { split: m, pair }))
    }
}

/// One verified item of [`RangeDecoder::next_into`]: a [`DecodeItem`] whose group bytes
/// went to the caller's buffer.
#[derive(Debug)]
pub(crate) enum Step {
    Parent { split: u64, pair: [u8; PAIR_LEN] },
    Group { index: u64, offset: u64 },
}

/// A byte buffer that keeps the memory it zeroed once: growing it again within what it
/// held before costs no zeroing (a decoder reads each group into memory that must be
/// initialised first, and an import reuses one buffer for a whole download).
#[derive(Debug, Default)]
pub(crate) struct GrowBuf {
    /// Initialised memory; the first `len` bytes are the contents.
    buf: Vec<u8>,
    len: usize,
}

impl GrowBuf {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self {
            buf: Vec::with_capacity(n),
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Appends `n` bytes of unspecified value and returns them to be overwritten.
    fn grow(&mut self, n: usize) -> &mut [u8] {
        let end = self.len + n;
        if self.buf.len() < end {
            self.buf.resize(end, 0);
        }
        let at = std::mem::replace(&mut self.len, end);
        &mut self.buf[at..end]
    }

    pub(crate) fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Removes the first `n` bytes; what follows moves to the front.
    pub(crate) fn drain_front(&mut self, n: usize) {
        let n = n.min(self.len);
        self.buf.copy_within(n..self.len, 0);
        self.len -= n;
    }

    fn into_vec(mut self) -> Vec<u8> {
        self.buf.truncate(self.len);
        self.buf
    }
}

fn constant_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    blake3::Hash::from(*a) == blake3::Hash::from(*b)
}

impl<R: Read> Iterator for RangeDecoder<R> {
    type Item = Result<DecodeItem, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let step = self.step();
        self.settle(step)
    }
}

/// Decodes a complete encoding of `range` of the blob `root` held in memory: verifies
/// everything, requires that nothing follows, and returns the verified size and the bytes
/// of the range (clamped to the blob).
pub fn decode_range(
    root: Hash,
    range: std::ops::Range<u64>,
    encoded: &[u8],
) -> Result<(u64, Vec<u8>), DecodeError> {
    let mut dec = RangeDecoder::new(encoded, root, range.clone(), MAX_BLOB_SIZE)?;
    let size = dec.size();
    let (start, end) = (
        range.start.min(size),
        range.end.min(size).max(range.start.min(size)),
    );
    // The output is bounded by the encoding's own length, not by the claimed size.
    let mut out = Vec::with_capacity(((end - start) as usize).min(encoded.len()));
    for item in dec.by_ref() {
        if let DecodeItem::Group { offset, data, .. } = item? {
            let g_end = offset + data.len() as u64;
            let lo = start.max(offset);
            let hi = end.min(g_end);
            if lo < hi {
                out.extend_from_slice(&data[(lo - offset) as usize..(hi - offset) as usize]);
            }
        }
    }
    let rest = dec.into_inner().len();
    if rest != 0 {
        return Err(DecodeError::TrailingBytes(rest));
    }
    Ok((size, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config() -> proptest::test_runner::Config {
        proptest::test_runner::Config {
            cases: 256,
            rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x7761_6c6b),
            failure_persistence: None,
            ..Default::default()
        }
    }

    proptest! {
        #![proptest_config(config())]

        /// A `GrowBuf` holds what a `Vec` would after the same appends, truncations and
        /// drains from the front, although it reuses memory it zeroed before.
        #[test]
        fn grow_buf_holds_what_a_vec_would(
            ops in proptest::collection::vec((0u8..3, 0usize..300, any::<u8>()), 0..60),
        ) {
            let (mut buf, mut model) = (GrowBuf::default(), Vec::new());
            for (op, n, byte) in ops {
                match op {
                    0 => {
                        buf.grow(n).fill(byte);
                        model.extend(std::iter::repeat_n(byte, n));
                    }
                    1 => {
                        buf.truncate(n);
                        model.truncate(n);
                    }
                    _ => {
                        buf.drain_front(n);
                        model.drain(..n.min(model.len()));
                    }
                }
                prop_assert_eq!(buf.as_slice(), &model[..]);
                prop_assert_eq!(buf.len(), model.len());
            }
            prop_assert_eq!(buf.into_vec(), model);
        }

        /// Encoding with verification from a damaged source fails exactly where the
        /// decoder fails on the unverified encoding of the same source, and otherwise
        /// writes the same bytes.
        #[test]
        fn verified_walk_agrees_with_the_decoder(
            size in 0u64..(20 * GROUP_SIZE),
            a in any::<u64>(),
            len in 0u64..(5 * GROUP_SIZE),
            damage in proptest::option::of((any::<bool>(), any::<u64>())),
            seed in any::<u8>(),
        ) {
            let data: Vec<u8> = (0..size).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
            let (root, mut ob) = crate::outboard(&data);
            let mut bad = data.clone();
            match damage {
                Some((true, at)) if !bad.is_empty() => {
                    let i = (at % size) as usize;
                    bad[i] ^= 1;
                }
                Some((false, at)) if !ob.is_empty() => {
                    let i = (at % ob.len() as u64) as usize;
                    ob[i] ^= 1;
                }
                _ => {}
            }
            let start = a % (size + 1);
            let range = start..start + len;
            let mut plain = Vec::new();
            encode_range(&bad, &ob, range.clone(), &mut plain).unwrap();
            let mut src = SliceSource { data: &bad, outboard: &ob };
            let mut verified = Vec::new();
            let walked = encode_from(&mut src, size, Some(root), range.start, range.end, SizeProof::Included, &mut verified);
            let decoded: Result<Vec<DecodeItem>, DecodeError> =
                RangeDecoder::new(&plain[..], root, range, u64::MAX).unwrap().collect();
            match (walked, decoded) {
                (Ok(n), Ok(_)) => {
                    prop_assert_eq!(n as usize, verified.len());
                    prop_assert_eq!(verified, plain);
                }
                (Err(WalkError::Verify(w)), Err(d)) => {
                    prop_assert_eq!(format!("{w:?}"), format!("{d:?}"));
                    // Only what preceded the failing piece was written.
                    prop_assert!(plain.starts_with(&verified));
                }
                (w, d) => prop_assert!(false, "walk {:?}, decoder {:?}", w, d.map(|_| ())),
            }
        }

        /// Without a size proof: a receiver holding the size gets the range's groups
        /// alone, verified; any other size is refused before anything is yielded; a
        /// flipped byte is caught; the encoding is never longer than with the proof.
        #[test]
        fn encodings_without_size_proof_verify_against_the_known_size(
            size in 0u64..(20 * GROUP_SIZE),
            a in any::<u64>(),
            len in 0u64..(5 * GROUP_SIZE),
            flip in proptest::option::of(any::<u64>()),
            other in any::<u64>(),
            seed in any::<u8>(),
        ) {
            let data: Vec<u8> = (0..size).map(|i| (i as u8).wrapping_mul(29) ^ seed).collect();
            let (root, ob) = crate::outboard(&data);
            let start = a % (size + 1);
            let range = start..start + len;
            let mut src = SliceSource { data: &data, outboard: &ob };
            let mut wire = Vec::new();
            encode_from(&mut src, size, None, range.start, range.end, SizeProof::Omitted, &mut wire).unwrap();
            let mut full = Vec::new();
            encode_range(&data, &ob, range.clone(), &mut full).unwrap();
            prop_assert!(wire.len() <= full.len());
            let items: Vec<DecodeItem> = RangeDecoder::with_known_size(&wire[..], root, range.clone(), size)
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let (lo, hi) = groups_overlapping(size, range.start, range.end);
            let got: Vec<u64> = items.iter().filter_map(|i| match i {
                DecodeItem::Group { index, .. } => Some(*index),
                DecodeItem::Parent { .. } => None,
            }).collect();
            prop_assert_eq!(got, (lo..hi).collect::<Vec<_>>());
            if other != size {
                let r = RangeDecoder::with_known_size(&wire[..], root, range.clone(), other);
                let is_mismatch = matches!(r, Err(DecodeError::SizeMismatch { .. }));
                prop_assert!(is_mismatch);
            }
            if let Some(at) = flip.filter(|_| wire.len() > 8) {
                let mut bad = wire.clone();
                let i = 8 + (at % (bad.len() as u64 - 8)) as usize;
                bad[i] ^= 1;
                let r: Result<Vec<DecodeItem>, DecodeError> =
                    RangeDecoder::with_known_size(&bad[..], root, range, size).unwrap().collect();
                prop_assert!(r.is_err());
            }
        }
    }
}
