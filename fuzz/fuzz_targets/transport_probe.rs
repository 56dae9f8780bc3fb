//! Feeds arbitrary bytes to the path-probe and path-candidate decoders.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kith_transport::fuzzing::probe(data);
    kith_transport::fuzzing::paths_message(data);
});
