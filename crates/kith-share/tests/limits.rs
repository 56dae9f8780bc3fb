//! The provider's limits, each refused with its typed answer: ranges per request,
//! requests per peer, upload slots, unknown roots, malformed requests.

use std::sync::Arc;

use bytes::Bytes;
use kith_core::frame::{encode_frame, read_frame};
use kith_core::mem::{MemNetwork, MemTransport};
use kith_core::net::{BoxRecvStream, BoxSendStream, Conn};
use kith_core::{SecretKey, Transport};
use kith_share::wire::{GetRequest, MAX_FRAME, Open, Refusal, Response};
use kith_share::{PROTOCOL, ProviderLimits, RangeSet, Share, ShareConfig, SharedStore};
use kith_store::{Hash, MemStore, StoreConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn provider(net: &MemNetwork, limits: ProviderLimits) -> (Share, Hash) {
    let t: Arc<dyn Transport> = Arc::new(net.node(SecretKey::from_bytes(&[1; 32]).node_id()));
    let store: SharedStore = Arc::new(MemStore::new(StoreConfig::default()));
    let mut c = ShareConfig::default();
    c.limits = limits;
    let share = Share::spawn(t, store, None, c).unwrap();
    let blob: Vec<u8> = (0..1_000_000u32).map(|i| i as u8).collect();
    let t = share.add_bytes(Bytes::from(blob)).await.unwrap();
    (share, t.root)
}

async fn client(net: &MemNetwork, seed: u8, to: &Share) -> (MemTransport, Conn) {
    let t = net.node(SecretKey::from_bytes(&[seed; 32]).node_id());
    let conn = t
        .connect(kith_core::NodeAddr::new(to.node_id()))
        .await
        .unwrap();
    (t, conn)
}

async fn send_open(conn: &Conn, open: &Open) -> (BoxSendStream, BoxRecvStream) {
    let (mut send, recv) = conn.open_bi(&PROTOCOL).await.unwrap();
    let f = encode_frame(&open.to_msg(), MAX_FRAME).unwrap();
    send.write_all(&f).await.unwrap();
    (send, recv)
}

async fn first_response(recv: &mut BoxRecvStream) -> Response {
    let f = read_frame(recv, MAX_FRAME).await.unwrap().unwrap();
    Response::decode(&f, 1024).unwrap()
}

/// The first frame of an answer that is being served: blob 0's header.
const SERVED: Response = Response::Blob {
    index: 0,
    missing: false,
};

fn get(root: Hash, groups: RangeSet) -> Open {
    Open::Get(GetRequest {
        root,
        collection: false,
        blobs: vec![(0, groups, 0)],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_limit_is_refused_with_its_reason() {
    let net = MemNetwork::new();
    let mut limits = ProviderLimits::default();
    limits.max_ranges_per_request = 8;
    limits.requests_per_peer = 2;
    limits.upload_slots = 2;
    // 64 KiB/s: an answer of 24 groups takes six seconds, so requests stay open.
    limits.upload_rate_per_peer = Some(64 * 1024);
    limits.send_buffer = 4096;
    let (p, root) = provider(&net, limits).await;
    let (_ta, a) = client(&net, 2, &p).await;

    // Too many ranges.
    let many: RangeSet = (0..40).step_by(2).collect();
    let (_s, mut r) = send_open(&a, &get(root, many)).await;
    assert_eq!(
        first_response(&mut r).await,
        Response::Refused(Refusal::TooLarge)
    );

    // Unknown root.
    let (_s, mut r) = send_open(&a, &get(Hash::of(b"nope"), RangeSet::from_range(0..1))).await;
    assert_eq!(
        first_response(&mut r).await,
        Response::Refused(Refusal::NotFound)
    );

    // Malformed first frame.
    let (mut s, mut r) = a.open_bi(&PROTOCOL).await.unwrap();
    s.write_all(&[3, 0xff, 0xff, 0xff]).await.unwrap();
    assert_eq!(
        first_response(&mut r).await,
        Response::Refused(Refusal::BadRequest)
    );

    // Two slow gets from A take both its per-peer requests (and both upload slots).
    let mut held = Vec::new();
    for g in [0u64, 30] {
        let (s, mut r) = send_open(&a, &get(root, RangeSet::from_range(g..g + 24))).await;
        assert_eq!(first_response(&mut r).await, SERVED);
        held.push((s, r));
    }
    // A third from A: over its per-peer limit.
    let (_s, mut r) = send_open(&a, &get(root, RangeSet::from_range(5..6))).await;
    assert_eq!(
        first_response(&mut r).await,
        Response::Refused(Refusal::TooManyRequests)
    );
    // One from B: every upload slot is taken.
    let (_tb, b) = client(&net, 3, &p).await;
    let (_s, mut r) = send_open(&b, &get(root, RangeSet::from_range(7..8))).await;
    assert_eq!(
        first_response(&mut r).await,
        Response::Refused(Refusal::Busy {
            retry_after_ms: u32::try_from(ProviderLimits::default().busy_retry.as_millis())
                .expect("default retry fits u32")
        })
    );
    drop(held);
}

/// Waits (bounded) until the provider's stats satisfy `ok`.
async fn until_stats(p: &Share, ok: impl Fn(kith_share::ServiceStats) -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !ok(p.stats()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stats never got there: {:?}",
            p.stats()
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peers_gets_are_read_two_at_a_time() {
    let net = MemNetwork::new();
    let mut limits = ProviderLimits::default();
    // 64 KiB/s: an answer of 12 groups takes three seconds, so gets stay open.
    limits.upload_rate_per_peer = Some(64 * 1024);
    limits.send_buffer = 4096;
    let (p, root) = provider(&net, limits).await;
    let (_ta, a) = client(&net, 2, &p).await;
    let mut open = Vec::new();
    for g in [0u64, 12, 24, 36] {
        open.push(send_open(&a, &get(root, RangeSet::from_range(g..g + 12))).await);
    }
    // Two are answered, the other two wait for their turn. Which two is up to the
    // provider's tasks: the streams' first frames are read concurrently, and turns go
    // in the order the gets reach the queue.
    until_stats(&p, |s| s.gets_served == 2 && s.gets_waiting == 2).await;
    let first = {
        let [(_, r0), (_, r1), (_, r2), (_, r3)] = &mut open[..] else {
            unreachable!("four gets were opened")
        };
        let any = async {
            tokio::select! {
                r = first_response(r0) => (0, r),
                r = first_response(r1) => (1, r),
                r = first_response(r2) => (2, r),
                r = first_response(r3) => (3, r),
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), any)
            .await
            .expect("one of the gets is answered")
    };
    assert_eq!(first.1, SERVED);
    // That get is given up: a waiting one takes its turn; the last still waits.
    drop(open.remove(first.0));
    until_stats(&p, |s| s.gets_served == 3 && s.gets_waiting == 1).await;
    drop(open);
    until_stats(&p, |s| s.gets_waiting == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_let_go_of_before_its_answer_ends() {
    // Paced answers are written by another path than unpaced ones: both are checked.
    for rate in [None, Some(64 << 20)] {
        let net = MemNetwork::new();
        let mut limits = ProviderLimits::default();
        limits.requests_per_peer = 1;
        limits.upload_rate_per_peer = rate;
        let (p, root) = provider(&net, limits).await;
        let (_ta, a) = client(&net, 2, &p).await;
        // One request at a time, each read to its end before the next is sent: none is
        // refused, because the provider lets go of a request before the end of its
        // answer goes out.
        for i in 0..100u64 {
            let g = i % 60;
            let (_s, mut r) = send_open(&a, &get(root, RangeSet::from_range(g..g + 1))).await;
            assert_eq!(first_response(&mut r).await, SERVED, "get {i} at {rate:?}");
            let mut rest = Vec::new();
            r.read_to_end(&mut rest).await.unwrap();
        }
        assert_eq!(p.stats().refused, 0);
        assert_eq!(p.stats().gets_served, 100);
    }
}
