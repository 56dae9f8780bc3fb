//! Feeds arbitrary bytes to the UPnP parsers (SSDP reply, HTTP response, device description).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kith_transport::fuzzing::portmap_upnp(data);
});
