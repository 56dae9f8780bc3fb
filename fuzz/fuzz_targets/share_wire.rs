//! Fuzzes the `kith/share/1` decoders: the opener's first frame, the provider's frames
//! and the range-set wire form. Nothing may panic; whatever decodes must re-encode to a
//! frame that decodes to the same value.
#![no_main]

use kith_share::ranges::RangeSet;
use kith_share::wire::{Open, Response};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|input: &[u8]| {
    if let Ok(o) = Open::decode(input, 1024) {
        assert_eq!(Open::decode(&o.to_msg().encode_to_vec(), 1024).ok(), Some(o));
    }
    if let Ok(r) = Response::decode(input, 1024) {
        assert_eq!(Response::decode(&r.to_msg().encode_to_vec(), 1024).ok(), Some(r));
    }
    let values: Vec<u64> = input
        .chunks(3)
        .map(|c| c.iter().fold(0u64, |a, b| a << 8 | u64::from(*b)))
        .collect();
    if let Ok(s) = RangeSet::from_wire(&values, 64, 1 << 20) {
        assert_eq!(s.to_wire(), values);
    }
});
