//! The share protocol's decoders never allocate on a peer's word: lists are counted
//! before they are decoded, so the worst frames a peer can send (the largest allowed,
//! packed with the cheapest entries) make a decoder hold at most 4× the frame's bytes,
//! plus what the largest valid list costs ([`MAX_BLOBS_PER_FRAME`] blob entries).

use allocation_counter::measure;
use kith_share::wire::{MAX_BLOBS_PER_FRAME, MAX_FRAME, Open, Response};

use kith_core::scan::length_delimited as nest;

/// The fixed part of the bound: every allowed blob entry decoded, with its range set.
const LIST: u64 = MAX_BLOBS_PER_FRAME as u64 * 128;

fn check(name: &str, frame: &[u8], decode: impl FnOnce(&[u8])) {
    let info = measure(|| decode(frame));
    let bound = 4 * frame.len() as u64 + LIST;
    assert!(
        info.bytes_max <= bound,
        "{name}: a {}-byte frame made the decoder hold {} bytes at once (bound {bound})",
        frame.len(),
        info.bytes_max
    );
}

/// Frames of `entry` repeated as blob entries at `path` (outermost first), as many as
/// fit in `budget` bytes, or exactly `n`.
fn frame(path: &[u32], entry: &[u8], n: usize) -> Vec<u8> {
    let mut inner = nest(path[path.len() - 1], entry).repeat(n);
    for &f in path[..path.len() - 1].iter().rev() {
        inner = nest(f, &inner);
    }
    inner
}

#[test]
fn share_decoders_allocation_is_bounded_by_the_frame() {
    let one_range = nest(2, &[0, 1]);
    // A single blob entry whose groups are one packed run filling the frame: 1-byte
    // varints that decode into 8 bytes each.
    let packed = nest(2, &vec![1u8; MAX_FRAME - 64]);
    for (name, path) in [("get", [1u32, 3]), ("availability", [3, 2])] {
        let cases = [
            // Empty entries filling the largest frame.
            (
                format!("{name}: empty entries"),
                frame(&path, &[], (MAX_FRAME - 16) / 2),
            ),
            // Exactly the allowed number of entries, each as cheap as can be.
            (
                format!("{name}: allowed entries"),
                frame(&path, &[], MAX_BLOBS_PER_FRAME),
            ),
            (
                format!("{name}: one-range entries"),
                frame(&path, &one_range, MAX_BLOBS_PER_FRAME),
            ),
            (format!("{name}: one packed run"), frame(&path, &packed, 1)),
        ];
        for (case, f) in cases {
            assert!(f.len() <= MAX_FRAME + 16, "{case}");
            check(&case, &f, |f| {
                let _ = Open::decode(f, 1024);
                let _ = Response::decode(f, 16 * 1024);
            });
        }
    }
}
