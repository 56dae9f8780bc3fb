//! Fuzzes the collection manifest decoder: arbitrary bytes must never panic, and a
//! manifest that validates must re-encode to one that validates to the same value.
#![no_main]

use kith_store::collection::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    if let Ok(m) = Manifest::decode_checked(input) {
        for e in &m.entries {
            assert!(!e.path.starts_with('/'));
            assert!(e.path.split('/').all(|c| c != ".." && !c.is_empty()));
            assert!(e.hash().is_ok());
        }
        let again = Manifest::decode_checked(&m.encode_to_vec()).unwrap();
        assert_eq!(again, m);
    }
});
