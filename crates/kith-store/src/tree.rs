//! BLAKE3 tree geometry above 16 KiB chunk groups, and the outboard.
//!
//! BLAKE3 hashes 1 KiB chunks and merges them in a left-balanced binary tree: the left
//! subtree of every parent holds the largest power of two chunks that leaves the right
//! subtree non-empty. A chunk group is 16 chunks aligned to 16 KiB, so every group is a
//! whole subtree of that tree, and the part of the tree above the groups is again a
//! left-balanced tree over `n` groups. Its `n - 1` parent nodes are what the outboard
//! stores.
//!
//! # Outboard layout
//!
//! Each parent node sits between two adjacent groups: its left subtree ends and its right
//! subtree starts at group `m` (the *split*, `1 <= m < n`). Every split belongs to exactly
//! one parent node, so the outboard is a flat array of `n - 1` entries of 64 bytes, entry
//! `m - 1` holding the chaining values of the node's left and right child (32 bytes each).
//! The layout is an in-order traversal; an entry's position does not depend on the blob's
//! size, so the outboard can be written while the data streams in and the size is not yet
//! known. Outboard bytes / data bytes is thus `64 / 16384 = 1/256`. A blob of one group or
//! less has no parent node and an empty outboard. The size is not part of the outboard: the
//! store records it beside.
//!
//! # Why `blake3::hazmat` and not bao-tree
//!
//! The tree is built on the `blake3` crate's own hazmat API (`HasherExt::set_input_offset`,
//! `finalize_non_root`, `merge_subtrees_non_root`/`merge_subtrees_root`). What the store
//! needs on top of it — the geometry above, a streaming tree builder, and a pre-order range
//! walk — is small, so a second crate would add more surface (its own outboard formats,
//! async traits, and dependencies) than it saves. Owning the code also lets the layout be
//! exactly the size-independent in-order array above, which the crash-safe store writes in
//! place as groups arrive. The price is that correctness is ours to prove: every size class
//! is tested against `blake3::hash`, and the range decoder is property-tested and fuzzed.

use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root,
};

use crate::Hash;

/// Bytes in a chunk group: 16 BLAKE3 chunks of 1 KiB.
pub const GROUP_SIZE: u64 = 16 * 1024;
/// Bytes in one outboard entry: the left and right child chaining values of a parent.
pub const PAIR_LEN: usize = 64;
/// The largest blob size this crate handles (2^56 bytes, 64 PiB). Sizes read from
/// input are checked against it before any arithmetic or allocation.
pub const MAX_BLOB_SIZE: u64 = 1 << 56;

/// Number of chunk groups of a blob of `size` bytes. The empty blob has one (empty) group.
pub fn group_count(size: u64) -> u64 {
    size.div_ceil(GROUP_SIZE).max(1)
}

/// Length of the outboard of a blob of `size` bytes.
pub fn outboard_len(size: u64) -> u64 {
    (group_count(size) - 1) * PAIR_LEN as u64
}

/// Byte range `[start, end)` of group `index` in a blob of `size` bytes.
pub(crate) fn group_bytes(size: u64, index: u64) -> (u64, u64) {
    let start = index * GROUP_SIZE;
    (start, (start + GROUP_SIZE).min(size))
}

/// Groups `[first, end)` overlapping the byte range `[start, end)` clamped to `size`
/// (empty when the clamped range is empty).
pub(crate) fn groups_overlapping(size: u64, start: u64, end: u64) -> (u64, u64) {
    let end = end.min(size);
    if start >= end {
        return (0, 0);
    }
    (start / GROUP_SIZE, end.div_ceil(GROUP_SIZE))
}

/// Split point of the parent over groups `[start, end)`, `end - start >= 2`: the left
/// subtree gets the largest power of two strictly less than the number of groups.
pub(crate) fn split(start: u64, end: u64) -> u64 {
    let n = end - start;
    debug_assert!(n >= 2);
    start + (1u64 << (63 - (n - 1).leading_zeros()))
}

/// Chaining value of group `index` (non-root: the blob has more than one group).
pub(crate) fn group_cv(index: u64, data: &[u8]) -> ChainingValue {
    blake3::Hasher::new()
        .set_input_offset(index * GROUP_SIZE)
        .update(data)
        .finalize_non_root()
}

/// Hashes a parent node from its 64-byte entry, as root or not.
pub(crate) fn parent_cv(pair: &[u8; PAIR_LEN], is_root: bool) -> ChainingValue {
    let (l, r) = split_pair(pair);
    if is_root {
        *merge_subtrees_root(&l, &r, Mode::Hash).as_bytes()
    } else {
        merge_subtrees_non_root(&l, &r, Mode::Hash)
    }
}

/// The left and right child chaining values of an outboard entry.
pub(crate) fn split_pair(pair: &[u8; PAIR_LEN]) -> (ChainingValue, ChainingValue) {
    let mut l = [0u8; 32];
    let mut r = [0u8; 32];
    l.copy_from_slice(&pair[..32]);
    r.copy_from_slice(&pair[32..]);
    (l, r)
}

/// Receives outboard entries as the tree above the groups is built.
pub(crate) trait PairSink {
    /// Stores the entry of the parent whose split is `split` (at position `split - 1`).
    fn put_pair(&mut self, split: u64, pair: &[u8; PAIR_LEN]) -> std::io::Result<()>;
}

impl PairSink for Vec<u8> {
    fn put_pair(&mut self, split: u64, pair: &[u8; PAIR_LEN]) -> std::io::Result<()> {
        let pos = usize::try_from((split - 1) * PAIR_LEN as u64)
            .map_err(|_| std::io::Error::other("outboard too large for memory"))?;
        if self.len() < pos + PAIR_LEN {
            self.resize(pos + PAIR_LEN, 0);
        }
        self[pos..pos + PAIR_LEN].copy_from_slice(pair);
        Ok(())
    }
}

/// Builds the tree above the groups from group chaining values fed in order, the way
/// BLAKE3's own hasher does (a stack of complete subtrees, merged lazily so the last
/// merge can be the root).
#[derive(Debug, Default)]
pub(crate) struct TreeBuilder {
    /// (first group, chaining value) of each complete subtree not yet merged.
    stack: Vec<(u64, ChainingValue)>,
    groups: u64,
    /// Root hash of group 0 alone, used when the blob has a single group.
    single_root: Option<Hash>,
}

impl TreeBuilder {
    /// Adds the next group's bytes (all groups but the last must be full).
    pub(crate) fn push_group(
        &mut self,
        data: &[u8],
        sink: &mut impl PairSink,
    ) -> std::io::Result<()> {
        let index = self.groups;
        if index == 0 {
            self.single_root = Some(Hash::from(blake3::hash(data)));
        }
        // An empty group is the whole (empty) blob: it has no non-root chaining value.
        let cv = if data.is_empty() {
            [0; 32]
        } else {
            group_cv(index, data)
        };
        self.push_cv(cv, sink)
    }

    fn push_cv(&mut self, cv: ChainingValue, sink: &mut impl PairSink) -> std::io::Result<()> {
        // More input follows the groups already on the stack: merge every subtree that is
        // complete, as non-root nodes.
        while self.stack.len() > self.groups.count_ones() as usize {
            self.merge_top(sink)?;
        }
        self.stack.push((self.groups, cv));
        self.groups += 1;
        Ok(())
    }

    fn merge_top(&mut self, sink: &mut impl PairSink) -> std::io::Result<ChainingValue> {
        let (m, right) = self.stack.pop().unwrap_or_default();
        let (start, left) = self.stack.pop().unwrap_or_default();
        let pair = join(&left, &right);
        sink.put_pair(m, &pair)?;
        let cv = merge_subtrees_non_root(&left, &right, Mode::Hash);
        self.stack.push((start, cv));
        Ok(cv)
    }

    /// Finishes the tree and returns the root hash. With no group pushed this is the
    /// hash of the empty blob.
    pub(crate) fn finish(mut self, sink: &mut impl PairSink) -> std::io::Result<Hash> {
        if self.groups <= 1 {
            return Ok(self
                .single_root
                .unwrap_or_else(|| Hash::from(blake3::hash(&[]))));
        }
        while self.stack.len() > 2 {
            self.merge_top(sink)?;
        }
        let (m, right) = self.stack.pop().unwrap_or_default();
        let (_, left) = self.stack.pop().unwrap_or_default();
        let pair = join(&left, &right);
        sink.put_pair(m, &pair)?;
        Ok(Hash::from(merge_subtrees_root(&left, &right, Mode::Hash)))
    }
}

pub(crate) fn join(left: &ChainingValue, right: &ChainingValue) -> [u8; PAIR_LEN] {
    let mut pair = [0u8; PAIR_LEN];
    pair[..32].copy_from_slice(left);
    pair[32..].copy_from_slice(right);
    pair
}

/// Computes the content id and the outboard of `data` held in memory.
///
/// The hash equals `blake3::hash(data)`; the outboard is empty for blobs of one group or
/// less (see the [module docs](self) for the layout).
///
/// ```
/// let data = vec![7u8; 100_000];
/// let (hash, outboard) = kith_store::outboard(&data);
/// assert_eq!(hash.as_bytes(), blake3::hash(&data).as_bytes());
/// assert_eq!(outboard.len() as u64, kith_store::outboard_len(data.len() as u64));
/// ```
pub fn outboard(data: &[u8]) -> (Hash, Vec<u8>) {
    let mut ob = Vec::with_capacity(outboard_len(data.len() as u64) as usize);
    let mut tb = TreeBuilder::default();
    // Writing into a Vec cannot fail but for a size that does not fit usize, which a
    // slice in memory cannot have.
    let mut put = |tb: &mut TreeBuilder, g: &[u8]| {
        let _ = tb.push_group(g, &mut ob);
    };
    if data.is_empty() {
        put(&mut tb, data);
    }
    for g in data.chunks(GROUP_SIZE as usize) {
        put(&mut tb, g);
    }
    let hash = tb
        .finish(&mut ob)
        .unwrap_or_else(|_| Hash::from(blake3::hash(data)));
    (hash, ob)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_left_balanced() {
        assert_eq!(split(0, 2), 1);
        assert_eq!(split(0, 3), 2);
        assert_eq!(split(0, 4), 2);
        assert_eq!(split(0, 5), 4);
        assert_eq!(split(4, 7), 6);
        assert_eq!(split(0, 1 << 40), 1 << 39);
    }

    #[test]
    fn outboard_hash_matches_blake3() {
        for size in [
            0usize,
            1,
            16383,
            16384,
            16385,
            32768,
            32769,
            5 * 16384 + 3,
            200_000,
        ] {
            let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
            let (h, ob) = outboard(&data);
            assert_eq!(h.as_bytes(), blake3::hash(&data).as_bytes(), "size {size}");
            assert_eq!(ob.len() as u64, outboard_len(size as u64));
        }
    }
}
