//! Record <-> NodeAddr conversion, the bounds on hostile records, and the peer cache:
//! all pure, no sockets.

use std::net::{Ipv4Addr, Ipv6Addr};

use kith_core::SecretKey;
use proptest::prelude::*;

use super::*;

fn id(seed: u8) -> NodeId {
    SecretKey::from_bytes(&[seed; 32]).node_id()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn full(id: NodeId) -> String {
    format!("{id}.{SERVICE_TYPE}")
}

/// A well-formed announcement of `peer` at 198.51.100.7:4433.
fn ann(fullname: &str, txt_id: Option<&'static str>) -> Announcement<'static> {
    Announcement {
        fullname: Box::leak(fullname.to_owned().into_boxed_str()),
        port: 4433,
        ips: vec![(Ipv4Addr::new(198, 51, 100, 7).into(), 0)],
        txt_id,
        txt_port6: None,
    }
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

#[test]
fn advert_round_trips_through_mdns_sd_records() {
    let me = id(1);
    let bound = [sa("198.51.100.2:4433"), sa("[2001:db8::2]:5544")];
    let advert = Advert::new(me, &bound).unwrap();
    assert_eq!(advert.port, 4433);
    assert_eq!(advert.port6, Some(5544));
    assert_eq!(advert.auto, (false, false));
    let info = advert.service_info(SERVICE_TYPE).unwrap();
    assert_eq!(info.get_fullname(), full(me));
    assert_eq!(info.get_hostname(), format!("{me}.local."));
    // What a browser on the LAN gets back from these records.
    let resolved = info.as_resolved_service();
    let parsed =
        parse_announcement(SERVICE_TYPE, id(2), &Announcement::from_resolved(&resolved)).unwrap();
    assert_eq!(
        parsed,
        NodeAddr::new(me).with_direct([sa("198.51.100.2:4433"), sa("[2001:db8::2]:5544")])
    );
    // Our own announcement, heard back through multicast loop, is not a peer.
    assert_eq!(
        parse_announcement(SERVICE_TYPE, me, &Announcement::from_resolved(&resolved)),
        Err(RecordError::OwnId)
    );
}

#[test]
fn advert_of_unspecified_binds_lets_the_daemon_pick_interfaces() {
    let advert = Advert::new(id(1), &[sa("0.0.0.0:7000"), sa("[::]:7000")]).unwrap();
    assert!(advert.ips.is_empty());
    assert_eq!(advert.auto, (true, true));
    assert_eq!(advert.port6, None, "same port: no p6");
    assert_eq!(advert.txt(), vec![(TXT_ID, id(1).to_string())]);
    let kinds = advert.interfaces();
    assert!(matches!(kinds.as_slice(), [IfKind::IPv4, IfKind::IPv6]));
    assert!(advert.service_info(SERVICE_TYPE).unwrap().is_addr_auto());

    let v6_only = Advert::new(id(1), &[sa("[2001:db8::5]:9")]).unwrap();
    assert_eq!((v6_only.port, v6_only.port6), (9, None));
    assert!(matches!(v6_only.interfaces().as_slice(), [IfKind::Addr(_)]));
    assert_eq!(Advert::new(id(1), &[]), None);
}

#[test]
fn instance_names_must_be_node_ids_of_our_service() {
    let peer = id(2);
    let txt = Some(leak(peer.to_string()));
    let ok = parse_announcement(SERVICE_TYPE, id(1), &ann(&full(peer), txt)).unwrap();
    assert_eq!(
        ok,
        NodeAddr::new(peer).with_direct([sa("198.51.100.7:4433")])
    );
    // DNS names are case-insensitive.
    let upper = full(peer).to_ascii_uppercase();
    assert_eq!(
        parse_announcement(SERVICE_TYPE, id(1), &ann(&upper, txt)),
        Ok(ok.clone())
    );
    let cases: Vec<(String, RecordError)> = vec![
        (
            format!("{peer}._other._udp.local."),
            RecordError::WrongService,
        ),
        (
            format!("{peer}._kith._tcp.local."),
            RecordError::WrongService,
        ),
        (SERVICE_TYPE.to_owned(), RecordError::WrongService),
        (String::new(), RecordError::WrongService),
        (format!("printer.{SERVICE_TYPE}"), RecordError::BadInstance),
        (
            format!("{}x.{SERVICE_TYPE}", peer),
            RecordError::BadInstance,
        ),
        (
            format!("{}.{SERVICE_TYPE}", &peer.to_string()[1..]),
            RecordError::BadInstance,
        ),
        // A valid id with a dot escaped into the label.
        (
            format!("a\\.{}.{SERVICE_TYPE}", &peer.to_string()[3..]),
            RecordError::BadInstance,
        ),
        // Multi-byte characters where the service type would start.
        (
            format!("{}ééé{}", "a".repeat(40), &SERVICE_TYPE[5..]),
            RecordError::WrongService,
        ),
        (
            format!("{}.{SERVICE_TYPE}", "é".repeat(26)),
            RecordError::BadInstance,
        ),
    ];
    for (name, want) in cases {
        assert_eq!(
            parse_announcement(SERVICE_TYPE, id(1), &ann(&name, txt)),
            Err(want),
            "{name:?}"
        );
    }
}

#[test]
fn txt_id_must_match_the_instance() {
    let peer = id(2);
    let name = full(peer);
    let other = leak(id(3).to_string());
    for (txt, want) in [
        (None, RecordError::BadTxtId),
        (Some(""), RecordError::BadTxtId),
        (Some("not-an-id"), RecordError::BadTxtId),
        (
            Some(leak(peer.to_string().to_ascii_uppercase())),
            RecordError::BadTxtId,
        ),
        (Some(leak("a".repeat(10_000))), RecordError::BadTxtId),
        (Some(other), RecordError::IdMismatch),
    ] {
        assert_eq!(
            parse_announcement(SERVICE_TYPE, id(1), &ann(&name, txt)),
            Err(want)
        );
    }
    // Our own id, even correctly signed-looking, is never a peer.
    let me = id(1);
    assert_eq!(
        parse_announcement(
            SERVICE_TYPE,
            me,
            &ann(&full(me), Some(leak(me.to_string())))
        ),
        Err(RecordError::OwnId)
    );
}

#[test]
fn ports_are_checked() {
    let peer = id(2);
    let txt = Some(leak(peer.to_string()));
    let mut a = ann(&full(peer), txt);
    a.port = 0;
    assert_eq!(
        parse_announcement(SERVICE_TYPE, id(1), &a),
        Err(RecordError::BadPort)
    );
    for bad in ["0", "65536", "+1", "-1", "1 ", "", "99999999999999999999"] {
        let mut a = ann(&full(peer), txt);
        a.txt_port6 = Some(bad);
        assert_eq!(
            parse_announcement(SERVICE_TYPE, id(1), &a),
            Err(RecordError::BadPort),
            "{bad:?}"
        );
    }
    let mut a = ann(&full(peer), txt);
    a.txt_port6 = Some("5544");
    a.ips
        .push((Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7).into(), 0));
    assert_eq!(
        parse_announcement(SERVICE_TYPE, id(1), &a).unwrap().direct,
        vec![sa("198.51.100.7:4433"), sa("[2001:db8::7]:5544")]
    );
}

#[test]
fn addresses_are_filtered_ordered_and_capped() {
    let peer = id(2);
    let mut a = ann(&full(peer), Some(leak(peer.to_string())));
    a.ips = vec![
        (Ipv4Addr::UNSPECIFIED.into(), 0),
        (Ipv4Addr::BROADCAST.into(), 0),
        (Ipv4Addr::new(224, 0, 0, 251).into(), 0),
        (Ipv6Addr::UNSPECIFIED.into(), 0),
        ("ff02::fb".parse::<Ipv6Addr>().unwrap().into(), 0),
        // Link-local without a scope cannot be dialed; with one it can.
        ("fe80::1".parse::<Ipv6Addr>().unwrap().into(), 0),
        ("fe80::2".parse::<Ipv6Addr>().unwrap().into(), 3),
        (Ipv4Addr::LOCALHOST.into(), 0),
        (Ipv4Addr::new(198, 51, 100, 7).into(), 0),
        (Ipv4Addr::new(198, 51, 100, 7).into(), 0),
        ("2001:db8::7".parse::<Ipv6Addr>().unwrap().into(), 0),
    ];
    let got = parse_announcement(SERVICE_TYPE, id(1), &a).unwrap().direct;
    assert_eq!(
        got,
        vec![
            sa("198.51.100.7:4433"),
            sa("[2001:db8::7]:4433"),
            sa("[fe80::2%3]:4433"),
            sa("127.0.0.1:4433"),
        ]
    );
    // Nothing usable.
    a.ips = vec![(Ipv4Addr::UNSPECIFIED.into(), 0)];
    assert_eq!(
        parse_announcement(SERVICE_TYPE, id(1), &a),
        Err(RecordError::NoAddress)
    );
    a.ips.clear();
    assert_eq!(
        parse_announcement(SERVICE_TYPE, id(1), &a),
        Err(RecordError::NoAddress)
    );
    // A flood of addresses keeps MAX_DIRECT_ADDRS, the same ones whatever the order.
    let flood: Vec<(IpAddr, u32)> = (0..1000u32)
        .map(|i| (Ipv4Addr::from(0xC633_6400 | (i % 250 + 1)).into(), 0))
        .collect();
    a.ips = flood.clone();
    let first = parse_announcement(SERVICE_TYPE, id(1), &a).unwrap().direct;
    assert_eq!(first.len(), MAX_DIRECT_ADDRS);
    assert_eq!(first[0], sa("198.51.100.1:4433"));
    assert!(NodeAddr::decode(&NodeAddr::new(peer).with_direct(first).encode()).is_ok());
}

#[test]
fn cache_is_bounded_and_evicts_the_least_recently_announced() {
    let addr = |seed: u8, port: u16| {
        NodeAddr::new(id(seed)).with_direct([sa(&format!("198.51.100.{seed}:{port}"))])
    };
    let mut c = PeerCache::new(3);
    for s in 1..=3 {
        assert_eq!(c.upsert(addr(s, 1)), Upsert::New { evicted: None });
    }
    // Refreshing 1 makes 2 the oldest.
    assert_eq!(c.upsert(addr(1, 1)), Upsert::Unchanged);
    assert_eq!(
        c.upsert(addr(4, 1)),
        Upsert::New {
            evicted: Some(id(2))
        }
    );
    assert_eq!(c.len(), 3);
    assert_eq!(c.get(&id(2)), None);
    assert_eq!(c.upsert(addr(3, 2)), Upsert::Changed);
    assert_eq!(c.get(&id(3)), Some(addr(3, 2)));
    let mut ids: Vec<NodeId> = vec![id(1), id(3), id(4)];
    ids.sort();
    assert_eq!(c.list().iter().map(|a| a.node_id).collect::<Vec<_>>(), ids);
    assert!(c.remove(&id(3)));
    assert!(!c.remove(&id(3)));
    assert_eq!(c.len(), 2);
    // A zero bound still holds one peer rather than panicking.
    let mut z = PeerCache::new(0);
    z.upsert(addr(1, 1));
    z.upsert(addr(2, 1));
    assert_eq!(z.len(), 1);
}

#[test]
fn service_types_are_validated() {
    for ok in [
        SERVICE_TYPE,
        "_a._udp.local.",
        "_kith-lab-2._udp.local.",
        "_abcdefghijklmno._udp.local.",
    ] {
        assert_eq!(validate_service_type(ok), Ok(()), "{ok}");
    }
    for bad in [
        "",
        "_kith._tcp.local.",
        "kith._udp.local.",
        "_kith._udp.local",
        "__udp.local.",
        "_Kith._udp.local.",
        "_a.b._udp.local.",
        "_abcdefghijklmnop._udp.local.",
    ] {
        assert!(validate_service_type(bad).is_err(), "{bad}");
    }
}

#[test]
fn browse_events_update_the_cache_and_notify() {
    let me = id(1);
    let (events, mut rx) = broadcast::channel(EVENT_CAPACITY);
    let shared = Shared {
        own: me,
        service_type: SERVICE_TYPE.into(),
        resolve_timeout: Duration::ZERO,
        cache: Mutex::new(PeerCache::new(2)),
        events,
    };
    let resolved = |seed: u8, ip: &str| {
        let advert = Advert::new(id(seed), &[sa(&format!("{ip}:4433"))]).unwrap();
        ServiceEvent::ServiceResolved(Box::new(
            advert
                .service_info(SERVICE_TYPE)
                .unwrap()
                .as_resolved_service(),
        ))
    };
    shared.handle(resolved(1, "198.51.100.1")); // ourselves: ignored
    shared.handle(resolved(2, "198.51.100.2"));
    shared.handle(resolved(2, "198.51.100.2")); // repeated: no event
    shared.handle(resolved(3, "198.51.100.3"));
    shared.handle(resolved(4, "198.51.100.4")); // evicts 2
    shared.handle(ServiceEvent::ServiceRemoved(
        SERVICE_TYPE.into(),
        full(id(3)),
    ));
    shared.handle(ServiceEvent::ServiceRemoved(
        SERVICE_TYPE.into(),
        "junk".into(),
    ));
    let mut seen = vec![];
    while let Ok(e) = rx.try_recv() {
        seen.push(match e {
            LanEvent::Discovered(a) => format!("+{}", a.direct[0]),
            LanEvent::Lost(i) => format!(
                "-{}",
                [id(2), id(3), id(4)].iter().position(|x| *x == i).unwrap() + 2
            ),
        });
    }
    assert_eq!(
        seen,
        [
            "+198.51.100.2:4433",
            "+198.51.100.3:4433",
            "-2",
            "+198.51.100.4:4433",
            "-3"
        ]
    );
    assert_eq!(
        shared.cache().list(),
        vec![NodeAddr::new(id(4)).with_direct([sa("198.51.100.4:4433")])]
    );
}

fn arb_ip() -> impl Strategy<Value = (IpAddr, u32)> {
    prop_oneof![
        (any::<u32>(), 0u32..2).prop_map(|(v, s)| (IpAddr::V4(Ipv4Addr::from(v)), s)),
        (any::<u128>(), 0u32..3).prop_map(|(v, s)| (IpAddr::V6(Ipv6Addr::from(v)), s)),
        // Link-local, with and without a scope.
        (any::<u64>(), 0u32..3).prop_map(|(v, s)| (
            IpAddr::V6(Ipv6Addr::from((0xfe80u128 << 112) | u128::from(v))),
            s
        )),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, rng_seed: proptest::test_runner::RngSeed::Fixed(0x6b17_6d64), ..ProptestConfig::default() })]

    /// Whatever a LAN sends, parsing never panics and what it accepts is within bounds:
    /// never our own id, at most MAX_DIRECT_ADDRS dialable addresses, never port 0, and
    /// the result fits NodeAddr's own wire limits.
    #[test]
    fn hostile_records_stay_within_bounds(
        own_seed in 1u8..4,
        peer_seed in 1u8..4,
        instance in prop_oneof![
            Just(None),
            "[a-z2-7]{0,60}".prop_map(Some),
            "\\PC{0,70}".prop_map(Some),
        ],
        suffix in prop_oneof![Just(SERVICE_TYPE.to_owned()), "\\PC{0,30}", Just("_KITH._UDP.LOCAL.".to_owned())],
        txt_kind in 0u8..4,
        junk in "\\PC{0,60}",
        port in any::<u16>(),
        port6 in prop_oneof![Just(None), "[0-9+ -]{0,7}".prop_map(Some)],
        ips in proptest::collection::vec(arb_ip(), 0..100),
    ) {
        let peer = id(peer_seed);
        let inst = instance.unwrap_or_else(|| peer.to_string());
        let fullname = format!("{inst}.{suffix}");
        let txt_id = match txt_kind {
            0 => None,
            1 => Some(peer.to_string()),
            2 => Some(inst.clone()),
            _ => Some(junk),
        };
        let a = Announcement {
            fullname: &fullname,
            port,
            ips,
            txt_id: txt_id.as_deref(),
            txt_port6: port6.as_deref(),
        };
        if let Ok(addr) = parse_announcement(SERVICE_TYPE, id(own_seed), &a) {
            prop_assert_ne!(addr.node_id, id(own_seed));
            prop_assert!(!addr.direct.is_empty() && addr.direct.len() <= MAX_DIRECT_ADDRS);
            prop_assert!(addr.relays.is_empty());
            for d in &addr.direct {
                prop_assert_ne!(d.port(), 0);
                prop_assert!(!d.ip().is_unspecified() && !d.ip().is_multicast());
            }
            prop_assert_eq!(NodeAddr::decode(&addr.encode()).map(|a| a.node_id), Ok(addr.node_id));
        }
    }
}
