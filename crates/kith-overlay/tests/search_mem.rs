//! Search through the tokio driver on the in-memory transport: 16 nodes on a ring with
//! seeded random chords; flood and walk queries find a far node's share with its payload;
//! a query for a word nobody shares ends empty within its timeout; unreachable
//! neighbours are dropped; oversize and garbage frames are refused.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kith_core::frame::encode_frame;
use kith_core::mem::MemNetwork;
use kith_core::net::Transport;
use kith_core::{NodeAddr, SecretKey};
use kith_overlay::search::message::wire;
use kith_overlay::search::{
    Config, Hit, Item, Mode, PROTOCOL, QueryError, Search, SearchError, SearchHandle,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::AsyncWriteExt;

const NODES: usize = 16;
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on any single wait: generous, never used as synchronisation.
const BOUND: Duration = Duration::from_secs(30);

fn config() -> Config {
    let mut c = Config::default();
    c.query_timeout = QUERY_TIMEOUT;
    c
}

async fn bounded<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(BOUND, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: not done within {BOUND:?}"),
    }
}

fn key(i: usize) -> SecretKey {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    SecretKey::from_bytes(&seed)
}

struct Net {
    net: MemNetwork,
    nodes: Vec<SearchHandle>,
    /// Neighbour lists, by index.
    graph: Vec<Vec<usize>>,
}

/// `n` nodes on a ring plus `chords` random chords (seeded); every node's neighbours set.
async fn ring_with_chords(n: usize, chords: usize, seed: u64) -> Net {
    let net = MemNetwork::new();
    let nodes: Vec<SearchHandle> = (0..n)
        .map(|i| {
            let t: Arc<dyn Transport> = Arc::new(net.node(key(i).node_id()));
            Search::spawn(t, config(), Some(seed + i as u64)).expect("spawn")
        })
        .collect();
    let mut graph: Vec<Vec<usize>> = (0..n).map(|i| vec![(i + n - 1) % n, (i + 1) % n]).collect();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut added = 0;
    for _ in 0..chords * 100 {
        if added == chords {
            break;
        }
        let (a, b) = (rng.gen_range(0..n), rng.gen_range(0..n));
        if a != b && !graph[a].contains(&b) {
            graph[a].push(b);
            graph[b].push(a);
            added += 1;
        }
    }
    for (i, node) in nodes.iter().enumerate() {
        let addrs: Vec<NodeAddr> = graph[i].iter().map(|&j| nodes[j].local_addr()).collect();
        node.set_neighbors(addrs).await.expect("set neighbours");
    }
    Net { net, nodes, graph }
}

/// Hop distance from `from` to every node.
fn distances(graph: &[Vec<usize>], from: usize) -> Vec<usize> {
    let mut d = vec![usize::MAX; graph.len()];
    d[from] = 0;
    let mut queue = std::collections::VecDeque::from([from]);
    while let Some(i) = queue.pop_front() {
        for &j in &graph[i] {
            if d[j] == usize::MAX {
                d[j] = d[i] + 1;
                queue.push_back(j);
            }
        }
    }
    d
}

fn ticket(i: u8) -> Vec<u8> {
    // Stands in for a kith-share ticket string; bytes of every value.
    (0..=255u8).cycle().skip(usize::from(i)).take(700).collect()
}

async fn share_items(node: &SearchHandle) -> Vec<Item> {
    let items = vec![
        Item::new("holiday photos 2026.zip", 48 << 20, [1; 32]).with_payload(ticket(1)),
        Item::new("Holiday Video 2026.mkv", 700 << 20, [2; 32]).with_payload(ticket(2)),
        Item::new("tax return 2025.pdf", 90_000, [3; 32]),
    ];
    for item in &items {
        node.share(item.clone()).await.expect("share");
    }
    items
}

fn names(hits: &[Hit]) -> Vec<&str> {
    let mut v: Vec<&str> = hits.iter().map(|h| h.item.name.as_str()).collect();
    v.sort_unstable();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_and_walk_find_a_far_share_with_its_payload() {
    let net = ring_with_chords(NODES, 6, 7).await;
    let provider = 0;
    let items = share_items(&net.nodes[provider]).await;
    let d = distances(&net.graph, provider);
    let far = (0..NODES).max_by_key(|&i| d[i]).expect("nodes");
    assert!(d[far] >= 2, "the querier is not a neighbour: {d:?}");
    let querier = &net.nodes[far];

    // Flood: both holiday items, each with its payload and the provider's address.
    let hits = bounded("flood", querier.query_all("Holiday 2026", Mode::Flood))
        .await
        .expect("flood query");
    assert_eq!(
        names(&hits),
        vec!["Holiday Video 2026.mkv", "holiday photos 2026.zip"]
    );
    for h in &hits {
        let want = items
            .iter()
            .find(|i| i.hash == h.item.hash)
            .expect("shared");
        assert_eq!(&h.item, want, "item intact, payload included");
        assert_eq!(h.provider.node_id, net.nodes[provider].local_id());
    }

    // Walk: the walkers stop at the provider, which answers once.
    let hits = bounded("walk", querier.query_all("photos", Mode::Walk))
        .await
        .expect("walk query");
    assert_eq!(names(&hits), vec!["holiday photos 2026.zip"]);
    assert_eq!(hits[0].item, items[0]);
    assert_eq!(hits[0].item.payload.len(), 700);

    // By content hash.
    let hex: String = [3u8; 32].iter().map(|b| format!("{b:02x}")).collect();
    let hits = bounded("hash", querier.query_all(&hex, Mode::Flood))
        .await
        .expect("hash query");
    assert_eq!(names(&hits), vec!["tax return 2025.pdf"]);

    // Unshared items are no longer found.
    net.nodes[provider].unshare([1; 32]).await.expect("unshare");
    let hits = bounded("after unshare", querier.query_all("holiday", Mode::Flood))
        .await
        .expect("query");
    assert_eq!(names(&hits), vec!["Holiday Video 2026.mkv"]);

    let stats = querier.stats().await.expect("stats");
    assert!(stats.core.hits_received >= 4, "{stats:?}");
    assert_eq!(stats.rejected, 0);
    drop(net.net);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_nobody_answers_ends_empty_within_its_timeout() {
    let net = ring_with_chords(12, 4, 11).await;
    share_items(&net.nodes[3]).await;
    for mode in [Mode::Flood, Mode::Walk] {
        let start = Instant::now();
        let mut results = net.nodes[9]
            .query("xylophone", mode)
            .await
            .expect("query starts");
        let first = bounded("results end", results.next()).await;
        assert_eq!(first, None, "{mode:?}");
        assert!(results.is_done(), "ended by Done, not by a stopped driver");
        let took = start.elapsed();
        assert!(
            took >= QUERY_TIMEOUT && took < QUERY_TIMEOUT + Duration::from_secs(5),
            "{mode:?} took {took:?}"
        );
    }
    // The flood reached every node, which forwarded it on.
    let mut received = 0;
    for n in &net.nodes {
        received += n.stats().await.expect("stats").core.queries_received;
    }
    assert!(received >= 11, "{received}");
}

#[tokio::test]
async fn bad_queries_and_items_are_refused() {
    let net = MemNetwork::new();
    let t: Arc<dyn Transport> = Arc::new(net.node(key(0).node_id()));
    let s = Search::spawn(t.clone(), config(), Some(1)).expect("spawn");
    assert_eq!(
        Search::spawn(t, config(), None).err(),
        Some(SearchError::AlreadyMounted)
    );
    assert_eq!(
        s.query("anything", Mode::Flood).await.err(),
        Some(SearchError::Query(QueryError::NoNeighbors))
    );
    assert_eq!(
        s.query("   ", Mode::Flood).await.err(),
        Some(SearchError::Query(QueryError::BadKeywords))
    );
    let big = Item::new("x", 1, [0; 32]).with_payload(vec![0u8; 2049]);
    assert!(matches!(
        s.share(big).await,
        Err(SearchError::InvalidItem(_))
    ));
    assert!(matches!(
        s.share(Item::new("", 1, [0; 32])).await,
        Err(SearchError::InvalidItem(_))
    ));
}

#[tokio::test]
async fn an_unreachable_neighbor_is_dropped() {
    let net = ring_with_chords(4, 0, 3).await;
    // A neighbour that is not on the network at all.
    let ghost = NodeAddr::new(key(99).node_id());
    net.nodes[0].add_neighbor(ghost.clone()).await.expect("add");
    assert!(
        net.nodes[0]
            .neighbors()
            .await
            .expect("neighbours")
            .contains(&ghost)
    );
    let results = net.nodes[0]
        .query("anything", Mode::Flood)
        .await
        .expect("query");
    // Wait (bounded) until the failed send has been reported back.
    bounded("ghost dropped", async {
        loop {
            let n = net.nodes[0].neighbors().await.expect("neighbours");
            if !n.contains(&ghost) {
                assert_eq!(n.len(), 2, "only the ghost was dropped: {n:?}");
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(net.nodes[0].stats().await.expect("stats").send_failures >= 1);
    drop(results);
    net.nodes[0]
        .remove_neighbor(net.nodes[1].local_id())
        .await
        .expect("remove");
    assert_eq!(net.nodes[0].neighbors().await.expect("n").len(), 1);
}

/// Writes `bytes` on a fresh `kith/search/1` stream to `to`, then keeps writing until
/// the receiver refuses the stream; returns when it has.
async fn send_until_refused(from: &dyn Transport, to: NodeAddr, bytes: &[u8]) {
    let conn = from.connect(to).await.expect("connect");
    let mut send = conn.open_uni(&PROTOCOL).await.expect("open");
    let _ = send.write_all(bytes).await;
    bounded("stream refused", async {
        while send.write_all(&[0u8; 1024]).await.is_ok() {}
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_and_garbage_frames_are_rejected() {
    let net = ring_with_chords(3, 0, 5).await;
    share_items(&net.nodes[1]).await;
    let attacker = net.net.node(key(50).node_id());
    let victim = net.nodes[0].local_addr();

    // A length prefix announcing 4 GiB: refused before anything is allocated.
    send_until_refused(&attacker, victim.clone(), &[0xff, 0xff, 0xff, 0xff, 0x0f]).await;
    // A frame just over the cap.
    let mut over = vec![0x81, 0x80, 0x04]; // varint 65 537
    over.extend_from_slice(&[0u8; 100]);
    send_until_refused(&attacker, victim.clone(), &over).await;
    // A well-framed body that is not a search message.
    let garbage = encode_frame(
        &wire::HitsMsg {
            id: 1,
            items: vec![],
            provider: b"not an address"[..].into(),
        },
        1 << 16,
    )
    .expect("frame");
    send_until_refused(&attacker, victim.clone(), &garbage).await;

    let stats = net.nodes[0].stats().await.expect("stats");
    assert_eq!(stats.rejected, 3, "{stats:?}");

    // The node still works.
    let hits = bounded(
        "query after garbage",
        net.nodes[0].query_all("tax", Mode::Flood),
    )
    .await
    .expect("query");
    assert_eq!(names(&hits), vec!["tax return 2025.pdf"]);
}
