//! Decodes arbitrary bytes as a DHT message (the only decoder the DHT exposes to the
//! network); whatever decodes must re-encode to a message that decodes to itself, and
//! validating any record it carries must not panic.
#![no_main]

use kith_overlay::dht::message::{Body, Request, Response};
use kith_overlay::dht::{Limits, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = Message::decode(data) else {
        return;
    };
    assert_eq!(Message::decode(&msg.encode()), Ok(msg.clone()));
    let record = match &msg.body {
        Body::Request(Request::Put { record, .. }) => Some(record),
        Body::Response(Response::Value { record, .. }) => record.as_ref(),
        _ => None,
    };
    if let Some(r) = record {
        let _ = r.validate(&Limits::default());
        let _ = r.key();
    }
});
