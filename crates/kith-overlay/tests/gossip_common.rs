//! Helpers shared by the gossip driver tests (included with `#[path]`; this file on its
//! own has no tests).
#![allow(dead_code)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kith_core::{NodeId, SecretKey, Transport};
use kith_overlay::gossip::driver::{Gossip, TopicSender};
use kith_overlay::gossip::{Config, Event, Scope, TopicId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;

/// One member of a test swarm: its driver, the sending half of its topic, and its
/// events (forwarded by a task that owns the event half).
pub(crate) struct Member {
    pub(crate) gossip: Gossip,
    pub(crate) sender: TopicSender,
    pub(crate) events: mpsc::UnboundedReceiver<Event>,
    pub(crate) neighbors: HashSet<NodeId>,
    pub(crate) received: Vec<(NodeId, Bytes)>,
    /// (from, hops) of every neighbour-scoped message received.
    pub(crate) scoped: Vec<(NodeId, u32)>,
}

impl Member {
    pub(crate) fn id(&self) -> NodeId {
        self.gossip.local_id()
    }

    /// Applies one event to the member's bookkeeping.
    pub(crate) fn apply(&mut self, e: Event) {
        match e {
            Event::NeighborUp(p) => {
                self.neighbors.insert(p);
            }
            Event::NeighborDown(p) => {
                self.neighbors.remove(&p);
            }
            Event::Received {
                author,
                from,
                payload,
                scope,
                hops,
                ..
            } => {
                if scope == Scope::Neighbors {
                    self.scoped.push((from, hops));
                }
                self.received.push((author, payload));
            }
        }
    }

    /// Waits for the next event and applies it; false if the driver stopped.
    pub(crate) async fn step(&mut self) -> bool {
        match self.events.recv().await {
            Some(e) => {
                self.apply(e);
                true
            }
            None => false,
        }
    }
}

/// Starts gossip on every transport and joins `topic`: the first member alone, each
/// later one through a member chosen with a seeded RNG among those before it.
pub(crate) async fn swarm(
    nodes: Vec<(Arc<dyn Transport>, SecretKey)>,
    config: Config,
    topic: TopicId,
    seed: u64,
) -> Vec<Member> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut members: Vec<Member> = Vec::new();
    for (transport, key) in nodes {
        let gossip = Gossip::spawn(transport, key, config.clone()).expect("spawn gossip");
        let boot = if members.is_empty() {
            vec![]
        } else {
            vec![members[rng.gen_range(0..members.len())].gossip.local_addr()]
        };
        let topic = gossip.join(topic, boot).await.expect("join");
        let (sender, mut events) = topic.split();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(e) = events.next_event().await {
                if tx.send(e).is_err() {
                    break;
                }
            }
        });
        members.push(Member {
            gossip,
            sender,
            events: rx,
            neighbors: HashSet::new(),
            received: Vec::new(),
            scoped: Vec::new(),
        });
    }
    members
}

/// Drains the events already queued for every member.
pub(crate) fn drain(members: &mut [Member]) {
    for m in members.iter_mut() {
        while let Ok(e) = m.events.try_recv() {
            m.apply(e);
        }
    }
}

/// Waits until membership is settled: every member has a neighbour and every
/// neighbour relation is known at both ends (no join, neighbour request or disconnect
/// is in flight). Polls the drivers, yielding in between; bounded by `limit`.
pub(crate) async fn until_stable(members: &mut [Member], limit: Duration) {
    let mut last = Vec::new();
    let wait = async {
        loop {
            let mut views = Vec::new();
            for m in members.iter() {
                views.push((m.id(), m.sender.neighbors().await.expect("driver running")));
            }
            let unsettled = unsettled(&views);
            drain(members);
            if unsettled.is_empty() {
                return;
            }
            last = unsettled;
            tokio::task::yield_now().await;
        }
    };
    if tokio::time::timeout(limit, wait).await.is_err() {
        panic!(
            "membership not settled within {limit:?}:\n{}",
            last.join("\n")
        );
    }
}

/// What keeps `views` (each member's active view) from being settled: members without
/// neighbours, one-sided neighbour relations, and an overlay in more than one piece (a
/// broadcast cannot cross from one to another).
fn unsettled(views: &[(NodeId, Vec<NodeId>)]) -> Vec<String> {
    let mut out = Vec::new();
    let mut reached: HashSet<NodeId> = HashSet::new();
    let mut sizes = Vec::new();
    for (start, _) in views {
        if !reached.insert(*start) {
            continue;
        }
        let mut group = vec![*start];
        let mut k = 0;
        while k < group.len() {
            let ns = views
                .iter()
                .find(|(id, _)| *id == group[k])
                .map(|(_, ns)| ns);
            for n in ns.into_iter().flatten() {
                if reached.insert(*n) {
                    group.push(*n);
                }
            }
            k += 1;
        }
        sizes.push(group.len());
    }
    if sizes.len() > 1 {
        out.push(format!(
            "overlay in {} pieces of sizes {sizes:?}",
            sizes.len()
        ));
    }
    for (me, ns) in views {
        if ns.is_empty() {
            out.push(format!("{} has no neighbour", me.fmt_short()));
        }
        for n in ns {
            if !views
                .iter()
                .any(|(id, theirs)| id == n && theirs.contains(me))
            {
                out.push(format!(
                    "{} has {} as neighbour, not the other way",
                    me.fmt_short(),
                    n.fmt_short()
                ));
            }
        }
    }
    out
}

/// Processes events until every member other than its author delivered every message of
/// `sent` (author, payload), with the author the verified signer.
pub(crate) async fn until_delivered(
    members: &mut [Member],
    sent: &[(NodeId, Bytes)],
    limit: Duration,
) {
    let wait = async {
        for m in members.iter_mut() {
            let me = m.id();
            for (author, payload) in sent {
                if *author == me {
                    continue;
                }
                while !m.received.iter().any(|(a, p)| a == author && p == payload) {
                    assert!(m.step().await, "driver stopped");
                }
            }
        }
    };
    if tokio::time::timeout(limit, wait).await.is_err() {
        drain(members);
        let mut missing = Vec::new();
        for m in members.iter() {
            let me = m.id();
            for (author, payload) in sent {
                if *author != me && !m.received.iter().any(|(a, p)| a == author && p == payload) {
                    missing.push(format!(
                        "{} lacks {:?} (neighbours {:?})",
                        me.fmt_short(),
                        payload,
                        m.neighbors
                            .iter()
                            .map(|n| n.fmt_short())
                            .collect::<Vec<_>>()
                    ));
                }
            }
        }
        panic!(
            "not every broadcast delivered within {limit:?}:\n{}",
            missing.join("\n")
        );
    }
    for m in members.iter() {
        let me = m.id();
        let expected = sent.iter().filter(|(a, _)| *a != me).count();
        // Exactly once each: duplicates are suppressed.
        assert_eq!(
            m.received.len(),
            expected,
            "member {} got duplicates",
            me.fmt_short()
        );
    }
}

/// Broadcasts one message from each of `sources` and checks every member gets each once.
pub(crate) async fn broadcast_and_check(members: &mut [Member], sources: &[usize]) {
    let mut sent = Vec::new();
    for (k, &s) in sources.iter().enumerate() {
        let payload = Bytes::from(format!("message {k} from member {s}"));
        members[s]
            .sender
            .broadcast(payload.clone())
            .await
            .expect("broadcast");
        sent.push((members[s].id(), payload));
    }
    until_delivered(members, &sent, Duration::from_secs(60)).await;
}
