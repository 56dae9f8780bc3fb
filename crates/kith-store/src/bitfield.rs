//! Which chunk groups of a blob are present.

use crate::tree::{MAX_BLOB_SIZE, group_count};

/// A set of chunk groups of one blob: bit `i` is set when group `i` is present and
/// verified.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Bitfield {
    groups: u64,
    words: Vec<u64>,
    count: u64,
}

impl Bitfield {
    /// An empty bitfield for a blob of `size` bytes.
    pub fn new(size: u64) -> Self {
        let groups = group_count(size.min(MAX_BLOB_SIZE));
        Self {
            groups,
            words: vec![0; groups.div_ceil(64) as usize],
            count: 0,
        }
    }

    /// A full bitfield for a blob of `size` bytes.
    pub fn full(size: u64) -> Self {
        let mut b = Self::new(size);
        for w in &mut b.words {
            *w = u64::MAX;
        }
        if b.groups % 64 != 0 {
            if let Some(last) = b.words.last_mut() {
                *last = (1u64 << (b.groups % 64)) - 1;
            }
        }
        b.count = b.groups;
        b
    }

    /// Number of groups of the blob.
    pub fn len(&self) -> u64 {
        self.groups
    }

    /// Whether the blob has no group (only for `Bitfield::default()`).
    pub fn is_empty(&self) -> bool {
        self.groups == 0
    }

    /// Whether group `index` is present.
    pub fn get(&self, index: u64) -> bool {
        index < self.groups
            && self
                .words
                .get((index / 64) as usize)
                .is_some_and(|w| w & (1 << (index % 64)) != 0)
    }

    /// Marks group `index` present; returns whether it was newly set.
    pub fn set(&mut self, index: u64) -> bool {
        if index >= self.groups {
            return false;
        }
        let Some(w) = self.words.get_mut((index / 64) as usize) else {
            return false;
        };
        let bit = 1 << (index % 64);
        let new = *w & bit == 0;
        *w |= bit;
        self.count += u64::from(new);
        new
    }

    /// Number of present groups.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Whether every group is present.
    pub fn is_complete(&self) -> bool {
        self.count == self.groups
    }

    /// Whether every group in `[first, end)` is present.
    pub fn contains_all(&self, first: u64, end: u64) -> bool {
        (first..end).all(|i| self.get(i))
    }

    /// Ranges `[start, end)` of consecutive present groups, in order.
    pub fn ranges(&self) -> Vec<std::ops::Range<u64>> {
        let mut out = Vec::new();
        let mut start = None;
        for i in 0..self.groups {
            match (self.get(i), start) {
                (true, None) => start = Some(i),
                (false, Some(s)) => {
                    out.push(s..i);
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            out.push(s..self.groups);
        }
        out
    }

    /// The bitfield as little-endian 64-bit words (for persisting).
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        self.words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// Reads a bitfield for a blob of `size` bytes from [`to_bytes`](Self::to_bytes)
    /// output; `None` when the length does not fit the size.
    pub(crate) fn from_bytes(size: u64, bytes: &[u8]) -> Option<Self> {
        if size > MAX_BLOB_SIZE {
            return None;
        }
        let mut b = Self::new(size);
        if bytes.len() != b.words.len() * 8 {
            return None;
        }
        for (w, c) in b.words.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            *w = u64::from_le_bytes(a);
        }
        // Drop bits past the end, then count.
        if b.groups % 64 != 0 {
            if let Some(last) = b.words.last_mut() {
                *last &= (1u64 << (b.groups % 64)) - 1;
            }
        }
        b.count = b.words.iter().map(|w| u64::from(w.count_ones())).sum();
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_ranges_roundtrip() {
        let mut b = Bitfield::new(10 * 16384 + 1);
        assert_eq!(b.len(), 11);
        for i in [0, 1, 2, 5, 10] {
            assert!(b.set(i));
        }
        assert!(!b.set(2));
        assert!(!b.set(11));
        assert_eq!(b.count(), 5);
        assert_eq!(b.ranges(), vec![0..3, 5..6, 10..11]);
        let c = Bitfield::from_bytes(10 * 16384 + 1, &b.to_bytes());
        assert_eq!(c.as_ref(), Some(&b));
        assert!(Bitfield::full(0).is_complete());
        assert_eq!(Bitfield::full(65 * 16384).count(), 65);
    }
}
