//! Decodes arbitrary bytes and text as node addresses; whatever decodes must re-encode
//! to an address that decodes to itself.
#![no_main]

use kith_core::NodeAddr;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(addr) = NodeAddr::decode(data) {
        assert_eq!(NodeAddr::decode(&addr.encode()), Ok(addr));
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(addr) = s.parse::<NodeAddr>() {
            assert_eq!(addr.to_string().parse::<NodeAddr>(), Ok(addr));
        }
    }
});
