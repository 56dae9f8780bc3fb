//! Fuzzes the gossip and search decoders: arbitrary bytes as a `kith/gossip/1` message
//! and as a search message, and arbitrary frame streams. Nothing may panic; whatever
//! decodes must re-encode to something that decodes to the same value, and a decoded
//! broadcast's signature check and id computation must not panic either.
#![no_main]

use bytes::BytesMut;
use kith_core::frame::FrameDecoder;
use kith_overlay::gossip::{Body, Message, TopicId};
use kith_overlay::search;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    if let Ok(m) = Message::decode(input) {
        assert_eq!(Message::decode(&m.encode()), Ok(m.clone()));
        if let Body::Gossip(g) = &m.body {
            let _ = g.verify(&m.topic);
            let _ = g.id(&TopicId([0; 32]));
        }
    }
    if let Ok(m) = search::Message::decode(input) {
        assert_eq!(search::Message::decode(&m.encode()), Ok(m));
    }
    // The same bytes as a stream of frames, the way the driver reads them.
    let dec = FrameDecoder::new(64 * 1024 + 1024);
    let mut buf = BytesMut::from(input);
    while let Ok(Some(frame)) = dec.decode(&mut buf) {
        let _ = Message::decode(&frame);
    }
});
