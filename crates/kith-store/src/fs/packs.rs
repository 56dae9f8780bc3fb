//! Record packs: the records of many external blobs in one file (see [`super::FsStore`],
//! "Record packs").
//!
//! A batch of reference imports or an export of a whole collection writes one pack
//! instead of one record file per blob: creating and renaming tens of thousands of small
//! files cost more than everything else an export does. A blob later deleted (or
//! replaced by an owned copy) is marked dead in an append-only log beside its pack; a
//! pack whose blobs are all dead is removed with its log.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::Hash;

/// The first bytes of a pack.
const PACK_MAGIC: &[u8; 8] = b"kithrp01";
/// Records per pack at most: a bigger batch writes several packs. Bounds what opening the
/// store reads for one pack (see [`max_pack_len`]).
pub(super) const MAX_PACK_ENTRIES: usize = 16_384;
/// Batches of fewer records get one record file per blob (a pack and its log are two
/// files, and deleting one of a few blobs costs less as a removed file).
pub(super) const MIN_PACK_ENTRIES: usize = 16;
/// One entry of a dead log: the hash and 4 bytes of check.
const DEAD_ENTRY: usize = 36;

/// The longest pack file [`decode_pack`] accepts.
pub(super) fn max_pack_len() -> usize {
    PACK_MAGIC.len() + 4 + MAX_PACK_ENTRIES * (32 + 4 + super::MAX_EXTERNAL_RECORD) + 32
}

/// The longest dead log opening reads: one entry per record, and a torn one.
pub(super) fn max_dead_len() -> usize {
    (MAX_PACK_ENTRIES + 1) * DEAD_ENTRY
}

/// Encodes a pack of `(hash, encoded record)` entries (at most [`MAX_PACK_ENTRIES`]):
///
/// ```text
/// magic   8 bytes "kithrp01"
/// count   u32 le
/// count × hash 32 bytes | len u32 le | the record, encoded as a record file
/// check   32 bytes: BLAKE3 of everything above
/// ```
pub(super) fn encode_pack(entries: &[(Hash, Vec<u8>)]) -> Vec<u8> {
    let len: usize = entries.iter().map(|(_, r)| 36 + r.len()).sum();
    let mut out = Vec::with_capacity(12 + len + 32);
    out.extend_from_slice(PACK_MAGIC);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for (hash, rec) in entries {
        out.extend_from_slice(hash.as_bytes());
        out.extend_from_slice(&(rec.len() as u32).to_le_bytes());
        out.extend_from_slice(rec);
    }
    let check = blake3::hash(&out);
    out.extend_from_slice(check.as_bytes());
    out
}

/// Parses a pack into its entries (the records still encoded), or `None` if anything is
/// wrong with it: length, check, magic, count, an entry's length.
pub(super) fn decode_pack(bytes: &[u8]) -> Option<Vec<(Hash, &[u8])>> {
    if bytes.len() > max_pack_len() {
        return None;
    }
    let body_len = bytes.len().checked_sub(32)?;
    let (body, check) = bytes.split_at(body_len);
    if blake3::hash(body).as_bytes() != check || body.get(..8)? != PACK_MAGIC {
        return None;
    }
    let count = u32::from_le_bytes(body.get(8..12)?.try_into().ok()?) as usize;
    if count > MAX_PACK_ENTRIES {
        return None;
    }
    let mut entries = Vec::with_capacity(count);
    let mut rest = body.get(12..)?;
    for _ in 0..count {
        let hash: [u8; 32] = rest.get(..32)?.try_into().ok()?;
        let len = u32::from_le_bytes(rest.get(32..36)?.try_into().ok()?) as usize;
        if len > super::MAX_EXTERNAL_RECORD {
            return None;
        }
        entries.push((Hash::from_bytes(hash), rest.get(36..36 + len)?));
        rest = &rest[36 + len..];
    }
    rest.is_empty().then_some(entries)
}

/// The check of a dead-log entry: binds it to its pack, so that a log cannot be taken
/// for another pack's.
fn dead_check(pack: u64, hash: &Hash) -> [u8; 4] {
    let mut h = blake3::Hasher::new();
    h.update(&pack.to_le_bytes());
    h.update(hash.as_bytes());
    let mut out = [0; 4];
    out.copy_from_slice(&h.finalize().as_bytes()[..4]);
    out
}

/// The entry that marks `hash` dead in pack `pack`.
pub(super) fn dead_entry(pack: u64, hash: &Hash) -> [u8; DEAD_ENTRY] {
    let mut out = [0; DEAD_ENTRY];
    out[..32].copy_from_slice(hash.as_bytes());
    out[32..].copy_from_slice(&dead_check(pack, hash));
    out
}

/// Parses the dead log of pack `pack`. A torn last entry (a crash during its append,
/// before the delete returned) is ignored; a bad entry before the last is corruption
/// (`None`).
pub(super) fn decode_dead(pack: u64, bytes: &[u8]) -> Option<HashSet<Hash>> {
    if bytes.len() > max_dead_len() {
        return None;
    }
    let chunks = bytes.len().div_ceil(DEAD_ENTRY);
    let mut dead = HashSet::with_capacity(chunks);
    for (i, e) in bytes.chunks(DEAD_ENTRY).enumerate() {
        let last = i + 1 == chunks;
        let ok = e.len() == DEAD_ENTRY && {
            let hash = Hash::from_bytes(e[..32].try_into().ok()?);
            let good = e[32..] == dead_check(pack, &hash);
            if good {
                dead.insert(hash);
            }
            good
        };
        if !ok && !last {
            return None;
        }
    }
    Some(dead)
}

/// Which pack holds the live record of each packed external blob, and how many live
/// records each pack has.
#[derive(Debug, Default)]
pub(super) struct Packs {
    of: HashMap<Hash, u64>,
    live: BTreeMap<u64, usize>,
    next: u64,
}

impl Packs {
    /// A new pack's id.
    pub(super) fn allocate(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// Notes that pack `id` exists (opening the store): new ids come after it.
    pub(super) fn saw(&mut self, id: u64) {
        self.next = self.next.max(id);
        self.live.entry(id).or_insert(0);
    }

    /// `hash`'s live record is in pack `id` now; returns the pack that held it before,
    /// if any (its record there must be marked dead).
    pub(super) fn insert(&mut self, hash: Hash, id: u64) -> Option<u64> {
        *self.live.entry(id).or_insert(0) += 1;
        let old = self.of.insert(hash, id)?;
        self.release(old);
        Some(old)
    }

    /// `hash`'s record is dead: returns its pack and whether that pack has no live
    /// record left.
    pub(super) fn remove(&mut self, hash: &Hash) -> Option<(u64, bool)> {
        let id = self.of.remove(hash)?;
        Some((id, self.release(id)))
    }

    fn release(&mut self, id: u64) -> bool {
        let n = self.live.entry(id).or_insert(1);
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.live.remove(&id);
            true
        } else {
            false
        }
    }

    /// Whether pack `id` has a live record.
    pub(super) fn is_live(&self, id: u64) -> bool {
        self.live.get(&id).is_some_and(|n| *n > 0)
    }

    /// Packs known to have no live record (after opening the store).
    pub(super) fn empty(&self) -> Vec<u64> {
        self.live
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Forgets empty pack `id` (its files are removed).
    pub(super) fn forget(&mut self, id: u64) {
        self.live.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u8) -> Hash {
        Hash::from_bytes([n; 32])
    }

    #[test]
    fn packs_roundtrip_and_reject_damage() {
        let entries = vec![(h(1), vec![7; 100]), (h(2), vec![]), (h(3), vec![9; 5])];
        let bytes = encode_pack(&entries);
        let back = decode_pack(&bytes).unwrap();
        assert_eq!(back.len(), 3);
        for ((a, ra), (b, rb)) in entries.iter().zip(&back) {
            assert_eq!((a, ra.as_slice()), (b, *rb));
        }
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert!(decode_pack(&bad).is_none(), "byte {i}");
        }
        assert!(decode_pack(&bytes[..bytes.len() - 1]).is_none());
        assert!(decode_pack(&[]).is_none());
    }

    #[test]
    fn a_torn_last_dead_entry_is_ignored_and_a_bad_middle_one_is_not() {
        let mut log = Vec::new();
        for n in 1..=3 {
            log.extend_from_slice(&dead_entry(5, &h(n)));
        }
        let all = decode_dead(5, &log).unwrap();
        assert_eq!(all.len(), 3);
        // Torn in the middle of the third append.
        let torn = decode_dead(5, &log[..2 * DEAD_ENTRY + 10]).unwrap();
        assert_eq!(torn, [h(1), h(2)].into_iter().collect());
        // Another pack's log.
        assert!(decode_dead(6, &log).is_none());
        let mut bad = log.clone();
        bad[3] ^= 1;
        assert!(decode_dead(5, &bad).is_none());
    }

    #[test]
    fn live_counts_follow_inserts_and_removals() {
        let mut p = Packs::default();
        let a = p.allocate();
        let b = p.allocate();
        assert_eq!(p.insert(h(1), a), None);
        assert_eq!(p.insert(h(2), a), None);
        assert_eq!(p.insert(h(1), b), Some(a));
        assert_eq!(p.remove(&h(2)), Some((a, true)));
        assert_eq!(p.remove(&h(1)), Some((b, true)));
        assert_eq!(p.remove(&h(1)), None);
        p.saw(9);
        assert_eq!(p.empty(), vec![9]);
        assert_eq!(p.allocate(), 10);
    }

    fn config() -> proptest::test_runner::Config {
        proptest::test_runner::Config {
            cases: 256,
            rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x7061_636b),
            failure_persistence: None,
            ..Default::default()
        }
    }

    proptest::proptest! {
        #![proptest_config(config())]

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = decode_pack(&bytes);
            let _ = decode_dead(1, &bytes);
        }

        #[test]
        fn any_pack_roundtrips(recs in proptest::collection::vec(
            (proptest::prelude::any::<[u8; 32]>(), proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)),
            0..20,
        )) {
            let entries: Vec<(Hash, Vec<u8>)> =
                recs.into_iter().map(|(h, r)| (Hash::from_bytes(h), r)).collect();
            let bytes = encode_pack(&entries);
            let back = decode_pack(&bytes).unwrap();
            proptest::prop_assert_eq!(back.len(), entries.len());
            for ((a, ra), (b, rb)) in entries.iter().zip(&back) {
                proptest::prop_assert_eq!((a, ra.as_slice()), (b, *rb));
            }
        }
    }
}
