//! Decodes arbitrary bytes as relay frames; whatever decodes re-encodes to the same bytes.
#![no_main]

use bytes::Bytes;
use kith_transport::relay::RelayFrame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = RelayFrame::decode(Bytes::copy_from_slice(data)) {
        assert_eq!(frame.encode().as_ref(), data);
    }
});
