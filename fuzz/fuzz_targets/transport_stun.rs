//! Parses arbitrary bytes as a STUN Binding response; a response that parses must be
//! what a server would encode for that address.
#![no_main]

use kith_transport::stun::{binding_response, parse_binding_response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let tx: [u8; 12] = data.get(8..20).and_then(|t| t.try_into().ok()).unwrap_or([0; 12]);
    if let Ok(addr) = parse_binding_response(data, &tx) {
        let again = binding_response(&tx, addr);
        assert_eq!(parse_binding_response(&again, &tx), Ok(addr));
    }
});
