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
