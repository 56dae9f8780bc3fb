//! Decoders never allocate on a peer's word: the worst frames a peer can send (the
//! largest allowed, packed with the cheapest repeated entries, which decode into the
//! largest structures) make each decoder hold at most 4× the frame's bytes at once.

use allocation_counter::measure;

use kith_core::scan::length_delimited as nest;

/// As many empty length-delimited entries of field `field` as fit in `budget` bytes.
fn empties(field: u32, budget: usize) -> Vec<u8> {
    let one = nest(field, &[]);
    one.repeat(budget / one.len())
}

/// Holds at most 4× the frame (plus a small constant for the error value).
fn check(name: &str, frame: &[u8], decode: impl FnOnce(&[u8])) {
    let info = measure(|| decode(frame));
    let bound = 4 * frame.len() as u64 + 4096;
    assert!(
        info.bytes_max <= bound,
        "{name}: a {}-byte frame made the decoder hold {} bytes at once (bound {bound})",
        frame.len(),
        info.bytes_max
    );
}

#[test]
fn dht_decoder_allocation_is_bounded_by_the_frame() {
    use kith_overlay::dht::message::{MAX_MESSAGE_LEN, Message};
    let budget = MAX_MESSAGE_LEN - 16;
    // nodes.closer, value.closer, providers.providers / closer: empty entries.
    for (body, field) in [(21, 1), (22, 2), (23, 1), (23, 2)] {
        let frame = nest(body, &empties(field, budget - 8));
        check(&format!("dht body {body} field {field}"), &frame, |f| {
            let _ = Message::decode(f);
        });
    }
}

#[test]
fn gossip_decoder_allocation_is_bounded_by_the_frame() {
    use kith_overlay::gossip::message::{MAX_MESSAGE_LEN, Message};
    let budget = MAX_MESSAGE_LEN - 16;
    // shuffle.nodes, shuffle_reply.nodes, ihave.entries.
    for (body, field) in [(15, 3), (16, 1), (21, 1)] {
        let frame = nest(body, &empties(field, budget - 8));
        check(&format!("gossip body {body} field {field}"), &frame, |f| {
            let _ = Message::decode(f);
        });
    }
}

#[test]
fn search_decoder_allocation_is_bounded_by_the_frame() {
    use kith_overlay::search::message::{MAX_MESSAGE_LEN, Message};
    let budget = MAX_MESSAGE_LEN - 16;
    // query.keywords, hits.items.
    for (body, field) in [(1, 3), (2, 2)] {
        let frame = nest(body, &empties(field, budget - 8));
        check(&format!("search body {body} field {field}"), &frame, |f| {
            let _ = Message::decode(f);
        });
    }
}

#[test]
fn nested_node_addresses_are_bounded_too() {
    use kith_overlay::dht::message::{MAX_CLOSER, MAX_MESSAGE_LEN, Message};
    // The allowed number of closer nodes, each a node address packed with empty
    // direct addresses up to the node address limit.
    let addr = empties(2, kith_core::addr::MAX_NODE_ADDR_LEN - 8);
    let mut nodes = Vec::new();
    for _ in 0..MAX_CLOSER {
        nodes.extend(nest(1, &addr));
    }
    let frame = nest(21, &nodes);
    assert!(frame.len() <= MAX_MESSAGE_LEN);
    check("dht closer node addresses", &frame, |f| {
        let _ = Message::decode(f);
    });
    // And the gossip shuffle's.
    let mut nodes = Vec::new();
    for _ in 0..kith_overlay::gossip::message::MAX_SHUFFLE_NODES {
        nodes.extend(nest(3, &addr));
    }
    let frame = nest(15, &nodes);
    check("gossip shuffle node addresses", &frame, |f| {
        let _ = kith_overlay::gossip::message::Message::decode(f);
    });
}
