//! Release metadata never makes us allocate on a peer's word: a bundle's lists (roots,
//! signatures) are counted before decoding, so the worst bundles (the largest allowed,
//! packed with the cheapest entries) make the decoder hold at most 4× their bytes.

use kith_core::scan::length_delimited as field;
use kith_update::metadata::{Bundle, MAX_BUNDLE_LEN};

fn check(name: &str, bytes: &[u8]) {
    let info = allocation_counter::measure(|| {
        let _ = Bundle::decode_checked(bytes);
    });
    let bound = 4 * bytes.len() as u64 + 4096;
    assert!(
        info.bytes_max <= bound,
        "{name}: a {}-byte bundle made the decoder hold {} bytes (bound {bound})",
        bytes.len(),
        info.bytes_max
    );
}

#[test]
fn bundle_decoding_is_bounded_by_its_bytes() {
    let budget = MAX_BUNDLE_LEN - 64;
    // Empty roots.
    check("empty roots", &field(1, &[]).repeat(budget / 2));
    // One release document with empty signatures.
    let sigs = field(2, &[]).repeat((budget - 8) / 2);
    check("empty release signatures", &field(2, &sigs));
    // One root document with empty signatures.
    check("empty root signatures", &field(1, &sigs));
}
