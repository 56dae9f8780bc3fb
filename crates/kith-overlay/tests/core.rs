//! The sans-IO core against a hand-driven peer: hostile answers and floods.

use std::time::Instant;

use bytes::Bytes;
use kith_core::{NodeAddr, SecretKey};
use kith_overlay::dht::message::{Body, ErrorCode, Request, Response};
use kith_overlay::dht::{
    Config, DhtCore, Event, GetError, Message, MutableRecord, QueryResult, Record, RecordKind,
    Remote,
};

fn node(n: u8) -> (NodeAddr, DhtCore) {
    let addr = NodeAddr::new(SecretKey::from_bytes(&[n; 32]).node_id());
    (
        addr.clone(),
        DhtCore::new(addr, Config::default(), u64::from(n)),
    )
}

fn reply(core: &mut DhtCore, now: Instant, peer: &NodeAddr, req: &Message, resp: Response) {
    let msg = Message {
        txid: req.txid,
        sender: Some(peer.clone()),
        client_mode: false,
        body: Body::Response(resp),
    };
    core.handle_message(
        now,
        Remote {
            id: peer.node_id,
            addr: None,
        },
        msg,
    );
}

#[test]
fn getter_rejects_forged_and_misplaced_records() {
    let now = Instant::now();
    let (_, mut a) = node(1);
    let peer = NodeAddr::new(SecretKey::from_bytes(&[2; 32]).node_id());
    a.start_bootstrap(now, vec![peer.clone()]);
    let t = a.poll_transmit().unwrap_or_else(|| panic!("no request"));
    reply(
        &mut a,
        now,
        &peer,
        &t.msg,
        Response::Nodes { closer: vec![] },
    );
    while a.poll_event().is_some() {}
    while a.poll_transmit().is_some() {}
    assert_eq!(a.routing_table().len(), 1);

    let owner = SecretKey::from_bytes(&[3; 32]);
    let good = MutableRecord::sign(&owner, &b""[..], 5, &b"real"[..], &Default::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let mut forged = good.clone();
    forged.value = Bytes::from_static(b"fake");
    let other = MutableRecord::sign(
        &owner,
        &b"other salt"[..],
        9,
        &b"x"[..],
        &Default::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    for bad in [forged, other] {
        let id = a.start_get(now, good.key(), RecordKind::Mutable);
        let t = a.poll_transmit().unwrap_or_else(|| panic!("no get"));
        assert!(matches!(t.msg.body, Body::Request(Request::Get { .. })));
        let resp = Response::Value {
            record: Some(Record::Mutable(bad)),
            closer: vec![],
        };
        reply(&mut a, now, &peer, &t.msg, resp);
        let ev = a.poll_event();
        assert!(
            matches!(&ev, Some(Event::QueryDone { id: q, result: QueryResult::Get(Err(GetError::NotFound)), .. }) if *q == id),
            "{ev:?}"
        );
    }
    assert_eq!(a.stats().records_rejected, 2);
}

#[test]
fn a_flooding_peer_is_rate_limited() {
    let now = Instant::now();
    let (_, mut a) = node(1);
    let flooder = SecretKey::from_bytes(&[4; 32]).node_id();
    let burst = a.config().rate_limit_burst as u64;
    for txid in 0..burst + 50 {
        let msg = Message {
            txid,
            sender: None,
            client_mode: true,
            body: Body::Request(Request::Ping),
        };
        a.handle_message(
            now,
            Remote {
                id: flooder,
                addr: None,
            },
            msg,
        );
    }
    let mut pongs = 0;
    let mut limited = 0;
    while let Some(t) = a.poll_transmit() {
        match t.msg.body {
            Body::Response(Response::Pong) => pongs += 1,
            Body::Response(Response::Error(ErrorCode::RateLimited)) => limited += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((pongs, limited), (burst, 50));
    assert_eq!(a.stats().rate_limited, 50);
    // Another peer is not affected.
    let other = SecretKey::from_bytes(&[5; 32]).node_id();
    let msg = Message {
        txid: 1,
        sender: None,
        client_mode: true,
        body: Body::Request(Request::Ping),
    };
    a.handle_message(
        now,
        Remote {
            id: other,
            addr: None,
        },
        msg,
    );
    assert!(matches!(
        a.poll_transmit().map(|t| t.msg.body),
        Some(Body::Response(Response::Pong))
    ));
}

/// After a get, the record is stored at the closest node on the path that lacked it.
#[test]
fn get_caches_the_record_along_the_path() {
    let now = Instant::now();
    let (_, mut a) = node(1);
    let value = Record::Immutable(Bytes::from_static(b"cache me"));
    let key = value.key();
    // Two peers; `near` is the closer of the two to the key.
    let (p, q) = (
        NodeAddr::new(SecretKey::from_bytes(&[2; 32]).node_id()),
        NodeAddr::new(SecretKey::from_bytes(&[3; 32]).node_id()),
    );
    let dist = |x: &NodeAddr| kith_overlay::dht::Key::from_node(&x.node_id).distance(&key);
    let (near, far) = if dist(&p) < dist(&q) { (p, q) } else { (q, p) };
    a.start_bootstrap(now, vec![near.clone(), far.clone()]);
    while let Some(t) = a.poll_transmit() {
        let peer = if t.to.node_id == near.node_id {
            &near
        } else {
            &far
        };
        reply(
            &mut a,
            now,
            peer,
            &t.msg,
            Response::Nodes { closer: vec![] },
        );
    }
    while a.poll_event().is_some() {}
    while a.poll_transmit().is_some() {}
    assert_eq!(a.routing_table().len(), 2);

    let id = a.start_get(now, key, RecordKind::Immutable);
    let reqs: Vec<_> = std::iter::from_fn(|| a.poll_transmit()).collect();
    assert_eq!(reqs.len(), 2);
    // `near` answers first, without the value; `far` has it.
    for t in [&reqs[0], &reqs[1]] {
        if t.to.node_id == near.node_id {
            reply(
                &mut a,
                now,
                &near,
                &t.msg,
                Response::Value {
                    record: None,
                    closer: vec![],
                },
            );
        }
    }
    for t in [&reqs[0], &reqs[1]] {
        if t.to.node_id == far.node_id {
            let resp = Response::Value {
                record: Some(value.clone()),
                closer: vec![],
            };
            reply(&mut a, now, &far, &t.msg, resp);
        }
    }
    assert!(matches!(
        a.poll_event(),
        Some(Event::QueryDone { id: q, result: QueryResult::Get(Ok(_)), .. }) if q == id
    ));
    let cache = a.poll_transmit().unwrap_or_else(|| panic!("no cache put"));
    assert_eq!(cache.to.node_id, near.node_id);
    assert!(matches!(
        cache.msg.body,
        Body::Request(Request::Put { ref record, cas: None }) if *record == value
    ));
}
