//! Fuzzes the verified range decoder: arbitrary bytes as an encoded range of a fixed
//! blob (with the size proof, or without it for a receiver that knows the size), and
//! arbitrary bit flips in a valid encoding. Nothing may panic, and every group a decoding
//! yields must be exactly the blob's bytes.
#![no_main]

use std::sync::OnceLock;

use kith_store::{DecodeItem, Hash, RangeDecoder, decode_range, encode_range, outboard};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    data: Vec<u8>,
    hash: Hash,
    outboard: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let data: Vec<u8> = (0..5 * 16384 + 77u32).map(|i| (i * 7 % 251) as u8).collect();
        let (hash, outboard) = outboard(&data);
        Fixture { data, hash, outboard }
    })
}

fuzz_target!(|input: &[u8]| {
    let f = fixture();
    if input.len() < 9 {
        return;
    }
    let size = f.data.len() as u64;
    let start = u64::from(u16::from_le_bytes([input[0], input[1]])) * 3 % (size + 10);
    let len = u64::from(u16::from_le_bytes([input[2], input[3]]));
    let range = start..start + len;
    let rest = &input[9..];
    if input[4] & 3 == 2 {
        // Garbage as an encoding without size proof, for a receiver holding the size.
        if let Ok(dec) = RangeDecoder::with_known_size(rest, f.hash, range, size) {
            for item in dec {
                match item {
                    Ok(DecodeItem::Group { offset, data, .. }) => {
                        let o = offset as usize;
                        assert_eq!(&data[..], &f.data[o..o + data.len()]);
                    }
                    Ok(DecodeItem::Parent { .. }) => {}
                    Err(_) => break,
                }
            }
        }
    } else if input[4] & 1 == 0 {
        // Raw garbage as the encoding.
        if let Ok((got_size, bytes)) = decode_range(f.hash, range.clone(), rest) {
            let (a, b) = (start.min(size) as usize, (start + len).min(size) as usize);
            assert_eq!(got_size, size);
            assert_eq!(bytes, &f.data[a..b.max(a)]);
        }
    } else {
        // A valid encoding with bits flipped at positions taken from the input.
        let mut wire = Vec::new();
        encode_range(&f.data, &f.outboard, range.clone(), &mut wire).unwrap();
        let mut flipped = false;
        for pair in rest.chunks_exact(4) {
            let bit = u32::from_le_bytes([pair[0], pair[1], pair[2], pair[3]]) as usize
                % (wire.len() * 8);
            wire[bit / 8] ^= 1 << (bit % 8);
            flipped = true;
        }
        let r = decode_range(f.hash, range, &wire);
        if flipped {
            // Flips may cancel out; then the original must decode.
            let mut orig = Vec::new();
            encode_range(&f.data, &f.outboard, start..start + len, &mut orig).unwrap();
            assert_eq!(r.is_ok(), wire == orig);
        } else {
            assert!(r.is_ok());
        }
    }
});
