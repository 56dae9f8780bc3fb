//! Parses arbitrary text and bytes as node ids; whatever parses must round-trip.
#![no_main]

use kith_core::NodeId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(id) = s.parse::<NodeId>() {
            assert_eq!(id.to_string(), s);
        }
    }
    if let Ok(id) = NodeId::try_from_slice(data) {
        assert_eq!(id.as_bytes().as_slice(), data);
    }
});
