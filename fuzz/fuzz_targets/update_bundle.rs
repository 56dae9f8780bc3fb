//! Fuzzes what a follower decodes from peers: the metadata bundle (root chain and
//! release) and the channel name. Nothing may panic; random bytes never verify.
#![no_main]

use kith_store::Hash;
use kith_update::{Bundle, ChannelId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    if let Ok(b) = Bundle::decode_checked(input) {
        let channel = ChannelId {
            announce: kith_core::SecretKey::from_bytes(&[1; 32]).node_id(),
            root: Hash::from([2; 32]),
        };
        assert!(b.verify(&channel, 0, None).is_err());
    }
    if let Ok(s) = std::str::from_utf8(input) {
        if let Ok(c) = s.parse::<ChannelId>() {
            assert_eq!(c.to_string().parse::<ChannelId>().ok(), Some(c));
        }
    }
});
