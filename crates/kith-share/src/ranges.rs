//! [`RangeSet`]: a set of chunk-group indices kept as sorted, disjoint, non-adjacent
//! half-open ranges, and its compact wire form.
//!
//! # Wire form
//!
//! A range set travels as a packed list of unsigned varints (a protobuf
//! `repeated uint64 [packed]`): alternating *gap* and *length*, each relative to the end
//! of the previous range. `{2..5, 9..10}` is `[2, 3, 4, 1]`. Every length is at least 1,
//! and every gap after the first at least 1 (so one set has one encoding). A set with
//! many runs costs about two bytes a run; a full blob costs two varints.

use std::ops::Range;

/// Most ranges one wire range set may hold (each is two varints).
pub const MAX_WIRE_RANGES: usize = 16 * 1024;

/// Why a wire range set was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RangeSetError {
    /// An odd number of varints: a gap without its length.
    #[error("range set has an odd number of values")]
    Odd,
    /// More ranges than [`MAX_WIRE_RANGES`] (or the caller's limit).
    #[error("range set has {count} ranges, more than the limit of {max}")]
    TooMany {
        /// Ranges announced.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A zero length, or a zero gap between two ranges (not the canonical form).
    #[error("range set is not canonical (empty range or adjacent ranges)")]
    NotCanonical,
    /// A range ends past `u64::MAX` or past the blob's group count.
    #[error("range set reaches past {limit}")]
    OutOfBounds {
        /// The bound it was checked against.
        limit: u64,
    },
}

/// A set of `u64` indices as sorted, disjoint, non-adjacent ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RangeSet {
    ranges: Vec<Range<u64>>,
}

impl RangeSet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The set `[start, end)` (empty when `start >= end`).
    pub fn from_range(range: Range<u64>) -> Self {
        let mut s = Self::new();
        s.insert_range(range);
        s
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Number of indices in the set.
    pub fn count(&self) -> u64 {
        self.ranges.iter().map(|r| r.end - r.start).sum()
    }

    /// The ranges, sorted.
    pub fn ranges(&self) -> &[Range<u64>] {
        &self.ranges
    }

    /// Whether `index` is in the set.
    pub fn contains(&self, index: u64) -> bool {
        let i = self.ranges.partition_point(|r| r.end <= index);
        self.ranges.get(i).is_some_and(|r| r.start <= index)
    }

    /// Whether every index of `[start, end)` is in the set.
    pub fn contains_range(&self, range: Range<u64>) -> bool {
        if range.start >= range.end {
            return true;
        }
        let i = self.ranges.partition_point(|r| r.end <= range.start);
        self.ranges
            .get(i)
            .is_some_and(|r| r.start <= range.start && range.end <= r.end)
    }

    /// Adds one index.
    pub fn insert(&mut self, index: u64) {
        if let Some(end) = index.checked_add(1) {
            self.insert_range(index..end);
        }
    }

    /// Adds every index of `range`.
    pub fn insert_range(&mut self, range: Range<u64>) {
        if range.start >= range.end {
            return;
        }
        // First range that ends at or after the new start (touching counts: merge).
        let lo = self.ranges.partition_point(|r| r.end < range.start);
        // First range that starts after the new end (touching counts: merge).
        let hi = self.ranges.partition_point(|r| r.start <= range.end);
        if lo == hi {
            self.ranges.insert(lo, range);
            return;
        }
        let start = range.start.min(self.ranges[lo].start);
        let end = range.end.max(self.ranges[hi - 1].end);
        self.ranges.splice(lo..hi, std::iter::once(start..end));
    }

    /// Adds every index of `other`.
    pub fn union_with(&mut self, other: &RangeSet) {
        for r in &other.ranges {
            self.insert_range(r.clone());
        }
    }

    /// The indices of `self` that are not in `other`.
    pub fn difference(&self, other: &RangeSet) -> RangeSet {
        let mut out = Vec::new();
        let mut j = 0;
        for r in &self.ranges {
            let mut start = r.start;
            while j < other.ranges.len() && other.ranges[j].end <= start {
                j += 1;
            }
            let mut k = j;
            while start < r.end {
                match other.ranges.get(k) {
                    Some(o) if o.start < r.end => {
                        if o.start > start {
                            out.push(start..o.start);
                        }
                        start = start.max(o.end);
                        k += 1;
                    }
                    _ => {
                        out.push(start..r.end);
                        break;
                    }
                }
            }
        }
        RangeSet { ranges: out }
    }

    /// Iterates over every index, in order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.ranges.iter().flat_map(|r| r.clone())
    }

    /// The wire form (see the [module docs](self)).
    pub fn to_wire(&self) -> Vec<u64> {
        let mut out = Vec::with_capacity(self.ranges.len() * 2);
        let mut prev = 0;
        for r in &self.ranges {
            out.push(r.start - prev);
            out.push(r.end - r.start);
            prev = r.end;
        }
        out
    }

    /// Parses the wire form, rejecting more than `max_ranges` ranges and any index at or
    /// past `limit` (for example a blob's group count).
    pub fn from_wire(values: &[u64], max_ranges: usize, limit: u64) -> Result<Self, RangeSetError> {
        if values.len() % 2 != 0 {
            return Err(RangeSetError::Odd);
        }
        let max = max_ranges.min(MAX_WIRE_RANGES);
        let count = values.len() / 2;
        if count > max {
            return Err(RangeSetError::TooMany { count, max });
        }
        let mut ranges = Vec::with_capacity(count);
        let mut prev = 0u64;
        for (i, pair) in values.chunks_exact(2).enumerate() {
            let (gap, len) = (pair[0], pair[1]);
            if len == 0 || (i > 0 && gap == 0) {
                return Err(RangeSetError::NotCanonical);
            }
            let start = prev
                .checked_add(gap)
                .ok_or(RangeSetError::OutOfBounds { limit })?;
            let end = start
                .checked_add(len)
                .filter(|&e| e <= limit)
                .ok_or(RangeSetError::OutOfBounds { limit })?;
            ranges.push(start..end);
            prev = end;
        }
        Ok(Self { ranges })
    }
}

impl FromIterator<u64> for RangeSet {
    fn from_iter<T: IntoIterator<Item = u64>>(iter: T) -> Self {
        let mut s = Self::new();
        for i in iter {
            s.insert(i);
        }
        s
    }
}

impl From<&kith_store::Bitfield> for RangeSet {
    fn from(bf: &kith_store::Bitfield) -> Self {
        Self {
            ranges: bf.ranges(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn insert_merges_touching_ranges() {
        let mut s = RangeSet::new();
        s.insert_range(5..7);
        s.insert_range(1..2);
        s.insert(2);
        s.insert_range(7..9);
        assert_eq!(s.ranges(), &[1..3, 5..9]);
        s.insert_range(0..20);
        assert_eq!(s.ranges().to_vec(), vec![0..20]);
        assert_eq!(RangeSet::from_range(2..5).to_wire(), vec![2, 3]);
    }

    #[test]
    fn wire_rejects_bad_forms() {
        assert_eq!(RangeSet::from_wire(&[1], 10, 100), Err(RangeSetError::Odd));
        assert_eq!(
            RangeSet::from_wire(&[1, 0], 10, 100),
            Err(RangeSetError::NotCanonical)
        );
        assert_eq!(
            RangeSet::from_wire(&[1, 2, 0, 3], 10, 100),
            Err(RangeSetError::NotCanonical)
        );
        assert_eq!(
            RangeSet::from_wire(&[90, 20], 10, 100),
            Err(RangeSetError::OutOfBounds { limit: 100 })
        );
        assert_eq!(
            RangeSet::from_wire(&[u64::MAX, 2], 10, u64::MAX),
            Err(RangeSetError::OutOfBounds { limit: u64::MAX })
        );
        assert!(matches!(
            RangeSet::from_wire(&[1, 1, 1, 1, 1, 1], 2, 100),
            Err(RangeSetError::TooMany { count: 3, max: 2 })
        ));
    }

    fn cfg() -> ProptestConfig {
        ProptestConfig {
            cases: 256,
            rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x7261_6e67),
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    proptest! {
        #![proptest_config(cfg())]

        #[test]
        fn behaves_like_a_set(a in proptest::collection::vec(0u64..200, 0..60),
                              b in proptest::collection::vec(0u64..200, 0..60)) {
            let sa: RangeSet = a.iter().copied().collect();
            let sb: RangeSet = b.iter().copied().collect();
            let ta: BTreeSet<u64> = a.iter().copied().collect();
            let tb: BTreeSet<u64> = b.iter().copied().collect();
            prop_assert_eq!(sa.iter().collect::<Vec<_>>(), ta.iter().copied().collect::<Vec<_>>());
            prop_assert_eq!(sa.count(), ta.len() as u64);
            let diff: Vec<u64> = sa.difference(&sb).iter().collect();
            prop_assert_eq!(diff, ta.difference(&tb).copied().collect::<Vec<_>>());
            let mut u = sa.clone();
            u.union_with(&sb);
            prop_assert_eq!(u.iter().collect::<Vec<_>>(), ta.union(&tb).copied().collect::<Vec<_>>());
            for i in 0..200 {
                prop_assert_eq!(sa.contains(i), ta.contains(&i));
            }
            // Canonical: no empty and no touching ranges.
            for w in u.ranges().windows(2) {
                prop_assert!(w[0].end < w[1].start);
            }
        }

        #[test]
        fn wire_round_trips(a in proptest::collection::vec(0u64..10_000, 0..100)) {
            let s: RangeSet = a.iter().copied().collect();
            let back = RangeSet::from_wire(&s.to_wire(), MAX_WIRE_RANGES, 10_000);
            prop_assert_eq!(back, Ok(s));
        }

        #[test]
        fn wire_garbage_never_panics(v in proptest::collection::vec(any::<u64>(), 0..40), limit in any::<u64>()) {
            if let Ok(s) = RangeSet::from_wire(&v, 64, limit) {
                prop_assert_eq!(s.to_wire(), v);
            }
        }
    }
}
