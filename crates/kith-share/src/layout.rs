//! [`Layout`]: the flat piece space of a download. Every chunk group of every blob of a
//! share is one *piece*; pieces are numbered blob after blob, so a collection of small
//! files is one contiguous space the scheduler can request runs from.

use std::ops::Range;

use kith_store::{GROUP_SIZE, group_count};

/// The blobs of a download, in order, and their pieces (chunk groups).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Layout {
    sizes: Vec<u64>,
    /// First piece of each blob, plus the total at the end.
    starts: Vec<u64>,
}

impl Layout {
    /// The layout of blobs of these sizes, in this order.
    pub fn new(sizes: Vec<u64>) -> Self {
        let mut starts = Vec::with_capacity(sizes.len() + 1);
        let mut acc = 0u64;
        for &s in &sizes {
            starts.push(acc);
            acc = acc.saturating_add(group_count(s));
        }
        starts.push(acc);
        Self { sizes, starts }
    }

    /// Number of blobs.
    pub fn blobs(&self) -> usize {
        self.sizes.len()
    }

    /// Size of blob `blob` in bytes.
    pub fn blob_size(&self, blob: usize) -> u64 {
        self.sizes.get(blob).copied().unwrap_or(0)
    }

    /// Total number of pieces.
    pub fn pieces(&self) -> u64 {
        self.starts.last().copied().unwrap_or(0)
    }

    /// Total number of bytes.
    pub fn total_bytes(&self) -> u64 {
        self.sizes.iter().sum()
    }

    /// The pieces of blob `blob`.
    pub fn blob_pieces(&self, blob: usize) -> Range<u64> {
        match (self.starts.get(blob), self.starts.get(blob + 1)) {
            (Some(&a), Some(&b)) => a..b,
            _ => 0..0,
        }
    }

    /// The blob and group of piece `piece`.
    pub fn locate(&self, piece: u64) -> Option<(usize, u64)> {
        if piece >= self.pieces() {
            return None;
        }
        let blob = self.starts.partition_point(|&s| s <= piece) - 1;
        Some((blob, piece - self.starts[blob]))
    }

    /// Bytes in piece `piece` (16 KiB except at the end of a blob).
    pub fn piece_bytes(&self, piece: u64) -> u64 {
        match self.locate(piece) {
            Some((blob, group)) => {
                let size = self.sizes[blob];
                let start = group * GROUP_SIZE;
                (start + GROUP_SIZE).min(size).saturating_sub(start)
            }
            None => 0,
        }
    }

    /// Splits a run of pieces into per-blob group ranges: `(blob, groups)`.
    pub fn split(&self, pieces: Range<u64>) -> Vec<(usize, Range<u64>)> {
        let mut out = Vec::new();
        let mut p = pieces.start;
        while p < pieces.end {
            let Some((blob, group)) = self.locate(p) else {
                break;
            };
            let blob_end = self.starts[blob + 1];
            let end = pieces.end.min(blob_end);
            out.push((blob, group..group + (end - p)));
            p = end;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_map_to_blobs_and_groups() {
        // 3 groups, 1 (empty blob), 1, 2.
        let l = Layout::new(vec![40_000, 0, 100, GROUP_SIZE + 1]);
        assert_eq!(l.pieces(), 7);
        assert_eq!(l.locate(0), Some((0, 0)));
        assert_eq!(l.locate(2), Some((0, 2)));
        assert_eq!(l.locate(3), Some((1, 0)));
        assert_eq!(l.locate(4), Some((2, 0)));
        assert_eq!(l.locate(6), Some((3, 1)));
        assert_eq!(l.locate(7), None);
        assert_eq!(l.piece_bytes(2), 40_000 - 2 * GROUP_SIZE);
        assert_eq!(l.piece_bytes(3), 0);
        assert_eq!(l.piece_bytes(6), 1);
        assert_eq!(
            l.split(1..6),
            vec![(0, 1..3), (1, 0..1), (2, 0..1), (3, 0..1)]
        );
        assert_eq!(l.blob_pieces(3), 5..7);
        assert_eq!(l.total_bytes(), 40_000 + 100 + GROUP_SIZE + 1);
    }
}
