//! Feeds arbitrary bytes to the NAT-PMP and PCP reply decoders (port mapping).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kith_transport::fuzzing::portmap_pcp(data);
});
