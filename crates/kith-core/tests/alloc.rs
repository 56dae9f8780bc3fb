//! A frame's buffer grows with the bytes that arrive: a peer that announces a huge frame
//! and sends little cannot make us allocate what it announced.

use kith_core::frame::{FrameError, read_frame};

/// A varint length prefix for `len`.
fn prefix(mut len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while len >= 0x80 {
        out.push((len as u8) | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out
}

#[test]
fn an_announced_length_is_not_allocated_before_the_bytes_arrive() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    const MAX: usize = 16 << 20;
    for sent in [0usize, 10, 1000, 100_000, 1 << 20] {
        // Announces 16 MiB, sends `sent` bytes, then ends.
        let mut frame = prefix(MAX);
        frame.extend(std::iter::repeat_n(7u8, sent));
        let frame_len = frame.len();
        let mut reader: &[u8] = &frame;
        let info = allocation_counter::measure(|| {
            let r = rt.block_on(read_frame(&mut reader, MAX));
            assert!(matches!(r, Err(FrameError::Truncated { .. })), "{r:?}");
        });
        // At most 4× what arrived, plus one 16 KiB read step.
        let bound = 4 * frame_len as u64 + 16 * 1024 + 1024;
        assert!(
            info.bytes_max <= bound,
            "sent {sent}: {} bytes held at once (bound {bound})",
            info.bytes_max
        );
    }
    // A whole frame still reads.
    let mut frame = prefix(300_000);
    frame.extend((0..300_000u32).map(|i| i as u8));
    let mut reader: &[u8] = &frame;
    let body = rt
        .block_on(read_frame(&mut reader, MAX))
        .expect("read")
        .expect("a frame");
    assert_eq!(body.len(), 300_000);
    assert!(body.iter().enumerate().all(|(i, b)| *b == i as u8));
}

/// A node address packed with empty entries does not decode into more than 4× its bytes.
#[test]
fn node_address_decoding_is_bounded_by_its_bytes() {
    use kith_core::NodeAddr;
    use kith_core::addr::MAX_NODE_ADDR_LEN;
    for field in [2u8, 3] {
        // Field `field`, length-delimited, empty: two bytes each.
        let frame: Vec<u8> = [field << 3 | 2, 0].repeat(MAX_NODE_ADDR_LEN / 2);
        let info = allocation_counter::measure(|| {
            assert!(NodeAddr::decode(&frame).is_err());
        });
        let bound = 4 * frame.len() as u64 + 1024;
        assert!(
            info.bytes_max <= bound,
            "field {field}: {} bytes held for a {}-byte address",
            info.bytes_max,
            frame.len()
        );
    }
}
