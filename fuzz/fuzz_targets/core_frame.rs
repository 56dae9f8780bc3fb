//! Feeds arbitrary bytes, in arbitrary splits, to the capped frame decoder, and the same
//! bytes to the blocking frame reader.
#![no_main]

use bytes::BytesMut;
use kith_core::frame::{FrameDecoder, read_frame_blocking};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let max = usize::from(split) * 8;
    let dec = FrameDecoder::new(max);
    let mut buf = BytesMut::new();
    for chunk in rest.chunks(usize::from(split % 16) + 1) {
        buf.extend_from_slice(chunk);
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(frame)) => assert!(frame.len() <= max),
                Ok(None) | Err(_) => break,
            }
        }
    }
    let _ = dec.finish(&buf);
    let mut reader = rest;
    while let Ok(Some(frame)) = read_frame_blocking(&mut reader, max) {
        assert!(frame.len() <= max);
    }
});
