//! Content ids, outboards and verified ranges.

mod common;

use kith_store::{
    DecodeError, DecodeItem, GROUP_SIZE, Hash, RangeDecoder, decode_range, encode_range, outboard,
    outboard_len,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, RngSeed};

const SIZES: [usize; 9] = [0, 1, 1023, 1024, 1025, 16383, 16384, 16385, (1 << 20) + 7];

#[test]
fn content_id_is_blake3_for_edge_sizes() {
    for size in SIZES {
        let data = common::data(size as u64, size);
        let (hash, ob) = outboard(&data);
        assert_eq!(
            hash.as_bytes(),
            blake3::hash(&data).as_bytes(),
            "size {size}"
        );
        assert_eq!(hash.to_string(), blake3::hash(&data).to_hex().as_str());
        assert_eq!(ob.len() as u64, outboard_len(size as u64));
        if size as u64 <= GROUP_SIZE {
            assert!(ob.is_empty(), "a blob of one group has no outboard");
        }
    }
}

#[test]
fn outboard_is_a_256th_of_the_data() {
    let size = 64 * GROUP_SIZE as usize;
    let (_, ob) = outboard(&common::data(1, size));
    assert_eq!(ob.len(), 63 * 64);
}

#[test]
fn every_range_of_edge_sizes_roundtrips() {
    for size in SIZES {
        let data = common::data(7, size);
        let (hash, ob) = outboard(&data);
        let s = size as u64;
        for (a, b) in [
            (0, s),
            (0, 0),
            (s / 2, s / 2 + 1),
            (s.saturating_sub(1), s + 10),
            (1, s),
        ] {
            let mut wire = Vec::new();
            encode_range(&data, &ob, a..b, &mut wire).unwrap();
            let (got_size, bytes) = decode_range(hash, a..b, &wire).unwrap();
            assert_eq!(got_size, s);
            let (a, b) = (a.min(s) as usize, b.min(s) as usize);
            assert_eq!(bytes, &data[a..b.max(a)], "size {size} range {a}..{b}");
        }
    }
}

#[test]
fn decoder_stops_before_yielding_a_bad_group() {
    let data = common::data(3, 10 * GROUP_SIZE as usize + 5);
    let (hash, ob) = outboard(&data);
    let mut wire = Vec::new();
    encode_range(&data, &ob, 0..data.len() as u64, &mut wire).unwrap();
    // Corrupt the last byte of group 4 (the last 5 bytes of the wire are group 10).
    let items: Vec<_> = RangeDecoder::new(&wire[..], hash, 0..u64::MAX, u64::MAX)
        .unwrap()
        .collect();
    let mut offset_in_wire = 8;
    let mut target = None;
    for item in &items {
        match item.as_ref().unwrap() {
            DecodeItem::Parent { .. } => offset_in_wire += 64,
            DecodeItem::Group { index, data, .. } => {
                offset_in_wire += data.len();
                if *index == 4 {
                    target = Some(offset_in_wire - 1);
                }
            }
        }
    }
    wire[target.unwrap()] ^= 1;
    let mut seen = Vec::new();
    let mut err = None;
    for item in RangeDecoder::new(&wire[..], hash, 0..u64::MAX, u64::MAX).unwrap() {
        match item {
            Ok(DecodeItem::Group {
                index,
                data: d,
                offset,
            }) => {
                assert_eq!(&d[..], &data[offset as usize..offset as usize + d.len()]);
                seen.push(index);
            }
            Ok(DecodeItem::Parent { .. }) => {}
            Err(e) => err = Some(e),
        }
    }
    assert_eq!(seen, vec![0, 1, 2, 3]);
    assert!(matches!(err, Some(DecodeError::GroupMismatch { index: 4 })));
}

#[test]
fn wrong_root_or_truncation_or_trailing_bytes_are_rejected() {
    let data = common::data(5, 3 * GROUP_SIZE as usize);
    let (hash, ob) = outboard(&data);
    let mut wire = Vec::new();
    encode_range(&data, &ob, 100..200, &mut wire).unwrap();
    assert!(decode_range(Hash::of(b"other"), 100..200, &wire).is_err());
    assert!(matches!(
        decode_range(hash, 100..200, &wire[..wire.len() - 1]),
        Err(DecodeError::Truncated)
    ));
    wire.push(0);
    assert!(matches!(
        decode_range(hash, 100..200, &wire),
        Err(DecodeError::TrailingBytes(1))
    ));
    let huge = u64::MAX.to_le_bytes();
    assert!(matches!(
        decode_range(hash, 0..1, &huge),
        Err(DecodeError::SizeTooLarge { .. })
    ));
}

#[test]
fn a_lie_about_the_size_is_caught() {
    // Claim 2 groups for a 4-group blob: the root entry verifies, the size proof does not.
    let data = common::data(9, 4 * GROUP_SIZE as usize);
    let (hash, ob) = outboard(&data);
    let mut wire = Vec::new();
    encode_range(&data, &ob, 0..10, &mut wire).unwrap();
    wire[..8].copy_from_slice(&(3 * GROUP_SIZE).to_le_bytes());
    assert!(decode_range(hash, 0..10, &wire).is_err());
}

fn config() -> Config {
    Config {
        cases: 64,
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(0x6b69_7468),
        failure_persistence: None,
        ..Config::default()
    }
}

fn blob_and_range() -> impl Strategy<Value = (Vec<u8>, u64, u64)> {
    (0usize..(9 * GROUP_SIZE as usize), any::<u64>()).prop_flat_map(|(len, seed)| {
        let data = common::data(seed, len);
        let l = len as u64;
        (Just(data), 0..=l + 5, 0..=l + 5)
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_range_of_any_blob_verifies((data, a, b) in blob_and_range()) {
        let (hash, ob) = outboard(&data);
        let mut wire = Vec::new();
        encode_range(&data, &ob, a..b, &mut wire).unwrap();
        let (size, bytes) = decode_range(hash, a..b, &wire).unwrap();
        prop_assert_eq!(size, data.len() as u64);
        let s = data.len() as u64;
        let (lo, hi) = (a.min(s) as usize, b.min(s) as usize);
        prop_assert_eq!(&bytes[..], &data[lo..hi.max(lo)]);
    }

    #[test]
    fn any_flipped_bit_is_rejected((data, a, b) in blob_and_range(), pick in any::<u64>()) {
        let (hash, ob) = outboard(&data);
        let mut wire = Vec::new();
        encode_range(&data, &ob, a..b, &mut wire).unwrap();
        let bit = pick % (wire.len() as u64 * 8);
        wire[(bit / 8) as usize] ^= 1 << (bit % 8);
        prop_assert!(decode_range(hash, a..b, &wire).is_err());
    }

    #[test]
    fn decoder_never_panics_on_garbage(
        wire in proptest::collection::vec(any::<u8>(), 0..2000),
        a in 0u64..100_000,
        len in 0u64..100_000,
    ) {
        let hash = Hash::of(&wire);
        let _ = decode_range(hash, a..a + len, &wire);
    }
}
