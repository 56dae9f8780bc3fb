//! Gossip through the tokio driver on the in-memory transport: a 24-member swarm,
//! neighbour-only broadcasts, oversize refusals and full send queues.

#[path = "gossip_common.rs"]
mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kith_core::mem::MemNetwork;
use kith_core::{SecretKey, Transport};
use kith_overlay::gossip::driver::{Gossip, SendError};
use kith_overlay::gossip::{Config, Event, Scope, TopicId};

fn mem_nodes(net: &MemNetwork, n: u8) -> Vec<(Arc<dyn Transport>, SecretKey)> {
    (0..n)
        .map(|i| {
            let key = SecretKey::from_bytes(&[i + 1; 32]);
            (Arc::new(net.node(key.node_id())) as Arc<dyn Transport>, key)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_broadcast_reaches_all_24_members_on_mem_network() {
    let net = MemNetwork::new();
    let mut members = common::swarm(
        mem_nodes(&net, 24),
        Config::default(),
        TopicId::from_name("mem-room"),
        24,
    )
    .await;
    common::until_stable(&mut members, Duration::from_secs(30)).await;
    common::broadcast_and_check(&mut members, &[0, 5, 11, 17, 23]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neighbor_scope_reaches_exactly_the_direct_neighbors() {
    let net = MemNetwork::new();
    let mut members = common::swarm(
        mem_nodes(&net, 8),
        Config::default(),
        TopicId::from_name("scoped"),
        8,
    )
    .await;
    common::until_stable(&mut members, Duration::from_secs(30)).await;
    let author = members[0].id();
    let before = members[0].sender.neighbors().await.expect("neighbors");
    members[0]
        .sender
        .broadcast_neighbors("hi neighbours")
        .await
        .expect("send");
    let after = members[0].sender.neighbors().await.expect("neighbors");
    assert!(!before.is_empty());
    // Then a swarm broadcast, which reaches everyone. Wait until every member has it and
    // every member that was a neighbour throughout has the neighbour-scoped message: a
    // member may get the swarm broadcast forwarded by another node before the author's
    // own stream delivers the scoped one, so the first alone does not imply the second.
    members[0].sender.broadcast("to all").await.expect("send");
    let all = (author, Bytes::from_static(b"to all"));
    let hi = (author, Bytes::from_static(b"hi neighbours"));
    let wait = async {
        for m in members.iter_mut().skip(1) {
            let id = m.id();
            let neighbour = before.contains(&id) && after.contains(&id);
            while !m.received.contains(&all) || (neighbour && !m.received.contains(&hi)) {
                assert!(m.step().await);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .expect("delivered");
    let mut reached = 0;
    for m in members.iter().skip(1) {
        let got = m
            .received
            .iter()
            .filter(|(_, p)| &p[..] == b"hi neighbours")
            .count();
        let id = m.id();
        if got > 0 {
            reached += 1;
            // Straight from the author, never forwarded.
            assert_eq!(m.scoped, vec![(author, 1)], "member {}", id.fmt_short());
            assert!(
                before.contains(&id) || after.contains(&id),
                "non-neighbour {} got it",
                id.fmt_short()
            );
        } else {
            assert!(
                !(before.contains(&id) && after.contains(&id)),
                "neighbour {} missed it",
                id.fmt_short()
            );
        }
    }
    assert!(reached >= 1);
}

#[tokio::test]
async fn oversize_broadcast_is_refused_with_an_error() {
    let net = MemNetwork::new();
    let key = SecretKey::from_bytes(&[1; 32]);
    let mut config = Config::default();
    config.max_message_size = 1000;
    let g = Gossip::spawn(Arc::new(net.node(key.node_id())), key, config).expect("spawn");
    let topic = g
        .join(TopicId::from_name("big"), vec![])
        .await
        .expect("join");
    assert_eq!(
        topic.broadcast(vec![0u8; 1001]).await,
        Err(SendError::TooLarge {
            size: 1001,
            max: 1000
        })
    );
    assert_eq!(
        topic.try_broadcast(vec![0u8; 1001]),
        Err(SendError::TooLarge {
            size: 1001,
            max: 1000
        })
    );
    assert_eq!(
        topic.broadcast_neighbors(vec![0u8; 5000]).await,
        Err(SendError::TooLarge {
            size: 5000,
            max: 1000
        })
    );
    assert!(topic.broadcast(vec![0u8; 1000]).await.is_ok());
}

/// A receiver that does not read its events fills every queue on the path back to the
/// sender, whose `try_broadcast` then fails with `QueueFull`; once the receiver reads,
/// every accepted broadcast arrives: backpressure, not loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queues_refuse_try_broadcast_and_lose_nothing() {
    let net = MemNetwork::new();
    let mut config = Config::default();
    config.max_message_size = 32 * 1024;
    config.peer_queue = 4;
    config.command_queue = 2;
    config.event_queue = 2;
    let (ka, kb) = (
        SecretKey::from_bytes(&[1; 32]),
        SecretKey::from_bytes(&[2; 32]),
    );
    let a = Gossip::spawn(Arc::new(net.node(ka.node_id())), ka, config.clone()).expect("spawn");
    let b = Gossip::spawn(Arc::new(net.node(kb.node_id())), kb, config).expect("spawn");
    let topic = TopicId::from_name("slow");
    let mut ta = a.join(topic, vec![]).await.expect("join");
    let mut tb = b.join(topic, vec![a.local_addr()]).await.expect("join");
    while !matches!(ta.next_event().await, Some(Event::NeighborUp(_))) {}
    while !matches!(tb.next_event().await, Some(Event::NeighborUp(_))) {}

    // b stops reading events. a sends 30 KiB messages until its queue is full.
    let mut accepted = 0u32;
    let mut full = false;
    for i in 0..100_000u32 {
        let mut payload = vec![0u8; 30 * 1024];
        payload[..4].copy_from_slice(&i.to_le_bytes());
        match ta.try_broadcast(payload) {
            Ok(()) => accepted += 1,
            Err(SendError::QueueFull) => {
                full = true;
                break;
            }
            Err(e) => panic!("unexpected error {e}"),
        }
        tokio::task::yield_now().await;
    }
    assert!(full, "the queue never filled ({accepted} accepted)");
    assert!(
        accepted < 1000,
        "{accepted} accepted: queues are not bounded"
    );

    // b reads again: every accepted broadcast arrives, in order, exactly once.
    let mut got = Vec::new();
    let wait = async {
        while got.len() < accepted as usize {
            match tb.next_event().await {
                Some(Event::Received { payload, scope, .. }) => {
                    assert_eq!(scope, Scope::Swarm);
                    got.push(u32::from_le_bytes([
                        payload[0], payload[1], payload[2], payload[3],
                    ]));
                }
                Some(_) => {}
                None => panic!("driver stopped"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .expect("all delivered");
    assert_eq!(got, (0..accepted).collect::<Vec<_>>());
}
