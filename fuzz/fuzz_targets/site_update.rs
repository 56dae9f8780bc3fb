//! Fuzzes the site-update decoder (what arrives on a site's gossip topic) and the
//! gateway-facing name parser. Nothing may panic; random bytes never pass the signature
//! check; a name that parses prints back to itself.
#![no_main]

use kith_core::SecretKey;
use kith_overlay::dht::Limits;
use kith_site::{SiteName, SiteRecord};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let name = SiteName::of(&SecretKey::from_bytes(&[1; 32]));
    let _ = SiteRecord::from_update(name, input, &Limits::default());
    if let Ok(s) = std::str::from_utf8(input) {
        if let Ok(n) = s.parse::<SiteName>() {
            assert_eq!(n.to_string().parse::<SiteName>().ok(), Some(n));
        }
    }
});
