//! The manifest decoder never allocates on a peer's word: entries are decoded one at a
//! time and each must carry its 32-byte hash, so the worst manifests (the largest
//! allowed, packed with the cheapest entries) make it hold at most 4× their bytes.

use kith_store::collection::{MAX_MANIFEST_SIZE, Manifest};

/// Field `field`, length-delimited, holding `inner`.
fn field(field: u8, inner: &[u8]) -> Vec<u8> {
    let mut out = vec![field << 3 | 2];
    let mut len = inner.len();
    while len >= 0x80 {
        out.push((len as u8) | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.extend_from_slice(inner);
    out
}

fn check(name: &str, bytes: &[u8]) {
    let info = allocation_counter::measure(|| {
        let _ = Manifest::decode_checked(bytes);
    });
    let bound = 4 * bytes.len() as u64 + 4096;
    assert!(
        info.bytes_max <= bound,
        "{name}: a {}-byte manifest made the decoder hold {} bytes (bound {bound})",
        bytes.len(),
        info.bytes_max
    );
}

#[test]
fn manifest_decoding_is_bounded_by_its_bytes() {
    let size = (MAX_MANIFEST_SIZE / 8) as usize;
    // Empty entries: two bytes each.
    check("empty entries", &field(1, &[]).repeat(size / 2));
    // Entries with a hash and nothing else (valid up to their paths).
    let hashed = field(1, &field(2, &[7; 32]));
    check("hash-only entries", &hashed.repeat(size / hashed.len()));
    // The cheapest valid entries: one-byte distinct paths need many; use numbered ones.
    let mut valid = Vec::new();
    let mut n = 0u32;
    while valid.len() < size {
        let mut e = field(1, n.to_string().as_bytes());
        e.extend(field(2, &[7; 32]));
        valid.extend(field(1, &e));
        n += 1;
    }
    check("valid entries", &valid);
}
