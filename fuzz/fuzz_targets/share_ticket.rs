//! Fuzzes ticket parsing, both as text and as the bytes under the base32. Nothing may
//! panic; a ticket that parses must print back to a string that parses to itself.
#![no_main]

use kith_share::Ticket;
use kith_share::ticket::fuzz_ticket_bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    if let Ok(t) = fuzz_ticket_bytes(input) {
        assert_eq!(t.to_string().parse::<Ticket>().ok(), Some(t));
    }
    if let Ok(s) = std::str::from_utf8(input) {
        if let Ok(t) = s.parse::<Ticket>() {
            assert_eq!(t.to_string().parse::<Ticket>().ok(), Some(t));
        }
    }
});
