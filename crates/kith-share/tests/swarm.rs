//! Downloads over the in-memory transport: one provider, several, one that vanishes,
//! malicious ones, and seeding while downloading. Every input is seeded; waits are on
//! events, never on sleeps.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kith_core::frame::{encode_frame, read_frame};
use kith_core::mem::{MemNetwork, MemTransport};
use kith_core::net::{BoxFuture, BoxRecvStream, BoxSendStream, Conn, ProtocolHandler};
use kith_core::{NodeAddr, NodeId, SecretKey, Transport};
use kith_share::wire::{MAX_FRAME, Open, Response};
use kith_share::{
    DownloadEvent, DownloadOptions, PROTOCOL, ProviderLimits, RangeSet, Share, ShareConfig,
    SharedStore, Ticket,
};
use kith_store::{BlobFormat, GROUP_SIZE, Hash, MemStore, StoreConfig};
use tokio::io::AsyncWriteExt;

fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

struct Node {
    share: Share,
    transport: MemTransport,
}

fn node(net: &MemNetwork, seed: u8, config: ShareConfig) -> Node {
    let transport = net.node(SecretKey::from_bytes(&[seed; 32]).node_id());
    let store: SharedStore = Arc::new(MemStore::new(StoreConfig::default()));
    let t: Arc<dyn Transport> = Arc::new(transport.clone());
    let share = Share::spawn(t, store, None, config).unwrap();
    Node { share, transport }
}

fn limited(rate: u64) -> ShareConfig {
    let mut c = ShareConfig::default();
    let mut l = ProviderLimits::default();
    l.upload_rate_per_peer = Some(rate);
    c.limits = l;
    c
}

fn opts(seed: u64) -> DownloadOptions {
    let mut o = DownloadOptions::default();
    o.seed = Some(seed);
    o
}

fn addr(n: &Node) -> NodeAddr {
    n.transport.local_addr()
}

fn write_tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("docs/deep")).unwrap();
    std::fs::write(dir.join("a.bin"), data(1, 300_000)).unwrap();
    std::fs::write(dir.join("empty"), b"").unwrap();
    std::fs::write(dir.join("docs/readme.txt"), b"hello swarm\n").unwrap();
    std::fs::write(
        dir.join("docs/deep/b.bin"),
        data(2, 3 * GROUP_SIZE as usize),
    )
    .unwrap();
    let run = dir.join("run.sh");
    std::fs::write(&run, b"#!/bin/sh\necho hi\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn assert_same_tree(a: &Path, b: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![std::path::PathBuf::new()];
    let mut files = 0;
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(a.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                stack.push(r);
            } else {
                files += 1;
                assert_eq!(
                    std::fs::read(a.join(&r)).unwrap(),
                    std::fs::read(b.join(&r)).unwrap(),
                    "{r:?}"
                );
                let ma = std::fs::metadata(a.join(&r)).unwrap().permissions().mode() & 0o111 != 0;
                let mb = std::fs::metadata(b.join(&r)).unwrap().permissions().mode() & 0o111 != 0;
                assert_eq!(ma, mb, "exec bit of {r:?}");
            }
        }
    }
    assert_eq!(files, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_provider_serves_a_folder_that_arrives_byte_for_byte() {
    let net = MemNetwork::new();
    let (a, b) = (
        node(&net, 1, ShareConfig::default()),
        node(&net, 2, ShareConfig::default()),
    );
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    write_tree(&src);
    let ticket = a.share.add_dir(&src).await.unwrap();
    assert_eq!(ticket.format, BlobFormat::Collection);
    let ticket: Ticket = ticket.to_string().parse().unwrap();
    let stats = b.share.download(&ticket, opts(1)).finish().await.unwrap();
    assert_eq!(
        stats.per_peer.keys().collect::<Vec<_>>(),
        vec![&a.share.node_id()]
    );
    assert!(stats.banned.is_empty());
    let out = tmp.path().join("out");
    b.share.export_dir(ticket.root, &out).await.unwrap();
    assert_same_tree(&src, &out);
    // A second download of the same ticket fetches nothing.
    let again = b.share.download(&ticket, opts(2)).finish().await.unwrap();
    assert_eq!(again.fetched_bytes, 0);
    assert_eq!(again.resumed_bytes, stats.total_bytes);
}

/// Only a blob's first request carries the size proof (a whole group): with many small
/// requests, the bytes on the wire stay close to the blob's size and no group arrives
/// twice. (When every request carried the proof, two-group requests moved 1.5× the blob.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_requests_carry_no_second_copy_of_the_size_proof() {
    let net = MemNetwork::new();
    let mut config = ShareConfig::default();
    config.scheduler.max_request_bytes = 2 * GROUP_SIZE;
    let (a, b) = (node(&net, 1, ShareConfig::default()), node(&net, 2, config));
    let blob = data(9, 2 << 20);
    let ticket = a.share.add_bytes(Bytes::from(blob.clone())).await.unwrap();
    let stats = b.share.download(&ticket, opts(3)).finish().await.unwrap();
    assert_eq!(stats.fetched_bytes, blob.len() as u64);
    assert_eq!(stats.duplicate_bytes, 0);
    // Sizes, headers and the outboard entries on each request's path: a few per cent.
    assert!(
        stats.received_bytes <= blob.len() as u64 + blob.len() as u64 / 16,
        "received {} bytes for a blob of {}",
        stats.received_bytes,
        blob.len()
    );
    assert_eq!(
        b.share
            .store()
            .read_range(ticket.root, 0..u64::MAX)
            .unwrap(),
        blob
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_providers_each_contribute() {
    let net = MemNetwork::new();
    let blob = data(3, 6 << 20);
    let providers: Vec<Node> = (1..=3).map(|i| node(&net, i, limited(4 << 20))).collect();
    let mut ticket = None;
    for p in &providers {
        ticket = Some(p.share.add_bytes(Bytes::from(blob.clone())).await.unwrap());
    }
    let mut ticket = ticket.unwrap();
    ticket.providers = providers.iter().map(addr).collect();
    let d = node(&net, 9, ShareConfig::default());
    let stats = d.share.download(&ticket, opts(3)).finish().await.unwrap();
    assert_eq!(stats.fetched_bytes, blob.len() as u64);
    assert_eq!(stats.per_peer.len(), 3, "{:?}", stats.per_peer);
    assert!(
        stats.per_peer.values().all(|b| *b >= GROUP_SIZE),
        "{:?}",
        stats.per_peer
    );
    assert_eq!(
        d.share
            .store()
            .read_range(ticket.root, 0..blob.len() as u64)
            .unwrap(),
        blob
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_vanishes_mid_download_is_replaced() {
    let net = MemNetwork::new();
    let blob = data(4, 8 << 20);
    let a = node(&net, 1, limited(8 << 20));
    let b = node(&net, 2, limited(4 << 20));
    a.share.add_bytes(Bytes::from(blob.clone())).await.unwrap();
    let mut ticket = b.share.add_bytes(Bytes::from(blob.clone())).await.unwrap();
    ticket.providers = vec![addr(&a), addr(&b)];
    let d = node(&net, 9, ShareConfig::default());
    let mut dl = d.share.download(&ticket, opts(4));
    let a_id = a.share.node_id();
    let mut a_gone = false;
    while let Some(ev) = dl.next_event().await {
        if let DownloadEvent::Progress(p) = ev {
            if !a_gone && p.verified_bytes >= 2 << 20 {
                assert!(
                    p.verified_bytes < blob.len() as u64,
                    "finished before the cut"
                );
                a.transport.disconnect_all();
                drop(net.clone());
                a_gone = true;
                break;
            }
        }
    }
    assert!(a_gone);
    // Keep A offline: a fresh dial would reach it again on the mem network, so drop it.
    drop(a);
    let stats = dl.finish().await.unwrap();
    assert!(stats.per_peer.get(&a_id).copied().unwrap_or(0) > 0);
    assert!(stats.per_peer[&b.share.node_id()] > 0);
    assert_eq!(
        d.share
            .store()
            .read_range(ticket.root, 0..blob.len() as u64)
            .unwrap(),
        blob
    );
}

/// How a fake provider misbehaves.
#[derive(Clone, Copy, Debug)]
enum Evil {
    /// Flips a byte in the second group of every answer.
    BadGroup,
    /// Claims a different blob size.
    WrongSize,
    /// Claims to have everything, then answers "missing".
    FalseAvailability,
    /// Sends its answer 1 KiB at a time, slowly.
    Trickle,
}

struct EvilHandler {
    evil: Evil,
    blob: Arc<Vec<u8>>,
    outboard: Arc<Vec<u8>>,
}

impl ProtocolHandler for EvilHandler {
    fn accept_bi(
        &self,
        _c: Conn,
        mut send: BoxSendStream,
        mut recv: BoxRecvStream,
    ) -> BoxFuture<'static, ()> {
        let (evil, blob, ob) = (self.evil, self.blob.clone(), self.outboard.clone());
        Box::pin(async move {
            let Ok(Some(f)) = read_frame(&mut recv, MAX_FRAME).await else {
                return;
            };
            let frame = |r: &Response| encode_frame(&r.to_msg(), MAX_FRAME).unwrap();
            match Open::decode(&f, 1024) {
                Ok(Open::Watch { .. }) => {
                    let _ = send
                        .write_all(&frame(&Response::Availability {
                            complete: true,
                            blobs: vec![],
                        }))
                        .await;
                    let _ = send.finish();
                }
                Ok(Open::Get(req)) => {
                    for (index, groups, held) in req.blobs {
                        if matches!(evil, Evil::FalseAvailability) {
                            let _ = send
                                .write_all(&frame(&Response::Blob {
                                    index,
                                    missing: true,
                                }))
                                .await;
                            let _ = send.finish();
                            return;
                        }
                        let _ = send
                            .write_all(&frame(&Response::Blob {
                                index,
                                missing: false,
                            }))
                            .await;
                        for r in groups.ranges() {
                            let range =
                                r.start * GROUP_SIZE..(r.end * GROUP_SIZE).min(blob.len() as u64);
                            let mut enc = Vec::new();
                            // Honours the protocol's framing (no size proof for a
                            // requester that holds the size); only its own lie differs.
                            let proof = if held == 0 {
                                kith_store::SizeProof::Included
                            } else {
                                kith_store::SizeProof::Omitted
                            };
                            kith_store::encode_range_with(&blob, &ob, range, proof, &mut enc)
                                .unwrap();
                            match evil {
                                Evil::BadGroup => {
                                    let n = enc.len();
                                    enc[n - 100] ^= 1;
                                }
                                Evil::WrongSize => {
                                    let size = u64::from_le_bytes(enc[..8].try_into().unwrap());
                                    enc[..8].copy_from_slice(&(size + GROUP_SIZE).to_le_bytes());
                                }
                                _ => {}
                            }
                            if matches!(evil, Evil::Trickle) {
                                for c in enc.chunks(1024) {
                                    if send.write_all(c).await.is_err() {
                                        return;
                                    }
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                }
                            } else if send.write_all(&enc).await.is_err() {
                                return;
                            }
                        }
                    }
                    let _ = send.finish();
                }
                Err(_) => {}
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malicious_providers_are_banned_and_an_honest_one_completes() {
    let net = MemNetwork::new();
    let blob = data(5, 4 << 20);
    let (hash, ob) = kith_store::outboard(&blob);
    // Slow enough that the download cannot end before every provider was asked.
    let honest = node(&net, 1, limited(2 << 20));
    honest
        .share
        .add_bytes(Bytes::from(blob.clone()))
        .await
        .unwrap();
    let mut providers = vec![addr(&honest)];
    let mut evil_ids = Vec::new();
    for (i, evil) in [
        Evil::BadGroup,
        Evil::WrongSize,
        Evil::FalseAvailability,
        Evil::Trickle,
    ]
    .into_iter()
    .enumerate()
    {
        let t = net.node(SecretKey::from_bytes(&[20 + i as u8; 32]).node_id());
        t.mount(
            PROTOCOL,
            Arc::new(EvilHandler {
                evil,
                blob: Arc::new(blob.clone()),
                outboard: Arc::new(ob.clone()),
            }),
        )
        .unwrap();
        evil_ids.push((evil, t.local_id()));
        providers.push(t.local_addr());
        std::mem::forget(t); // stays online for the whole test
    }
    let ticket = Ticket::new(hash, BlobFormat::Raw, providers);
    let d = node(&net, 9, ShareConfig::default());
    let stats = d.share.download(&ticket, opts(5)).finish().await.unwrap();
    assert_eq!(
        d.share
            .store()
            .read_range(hash, 0..blob.len() as u64)
            .unwrap(),
        blob
    );
    for (evil, id) in &evil_ids {
        match evil {
            Evil::BadGroup => {
                // Groups before the bad one verified (they are genuine and kept); the bad
                // group itself was never stored, and the peer is banned.
                assert!(stats.banned.contains(id), "{evil:?} not banned: {stats:?}");
            }
            Evil::WrongSize => {
                assert!(stats.banned.contains(id), "{evil:?} not banned: {stats:?}");
                assert_eq!(stats.per_peer.get(id).copied().unwrap_or(0), 0, "{evil:?}");
            }
            Evil::FalseAvailability => {
                // A strike per lie; it never delivers, so it cannot hold the download up.
                assert_eq!(stats.per_peer.get(id).copied().unwrap_or(0), 0);
            }
            Evil::Trickle => {
                let got = stats.per_peer.get(id).copied().unwrap_or(0);
                assert!(got <= 4 * GROUP_SIZE, "the trickler delivered {got} bytes");
            }
        }
    }
    assert!(stats.per_peer[&honest.share.node_id()] > 0);
    // Every byte counted was verified and is needed: nothing twice, nothing bad.
    assert_eq!(stats.per_peer.values().sum::<u64>(), blob.len() as u64);
    assert_eq!(stats.fetched_bytes, blob.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downloader_seeds_what_it_has_while_it_downloads() {
    let net = MemNetwork::new();
    let blob = data(6, 8 << 20);
    let a = node(&net, 1, limited(4 << 20));
    let ticket = a.share.add_bytes(Bytes::from(blob.clone())).await.unwrap();
    let b = node(&net, 2, ShareConfig::default());
    let c = node(&net, 3, ShareConfig::default());
    let mut b_dl = b.share.download(&ticket, opts(6));
    // Wait until B holds a quarter.
    loop {
        match b_dl.next_event().await {
            Some(DownloadEvent::Progress(p)) if p.verified_bytes >= 2 << 20 => break,
            Some(_) => {}
            None => panic!("B ended early"),
        }
    }
    // C knows only B.
    let c_ticket = Ticket::new(ticket.root, BlobFormat::Raw, vec![addr(&b)]);
    let mut c_opts = opts(7);
    c_opts.no_discovery = true;
    let mut c_dl = c.share.download(&c_ticket, c_opts);
    // C's first verified bytes arrive while B is still downloading.
    let mut checked = false;
    while let Some(ev) = c_dl.next_event().await {
        if let DownloadEvent::Progress(p) = ev {
            if p.fetched_bytes > 0 {
                let st = b.share.store().status(ticket.root).unwrap().unwrap();
                assert!(!st.bitfield.is_complete(), "B was already complete");
                checked = true;
                break;
            }
        }
    }
    assert!(checked);
    let b_stats = b_dl.finish().await.unwrap();
    let c_stats = c_dl.finish().await.unwrap();
    assert_eq!(b_stats.fetched_bytes, blob.len() as u64);
    assert_eq!(
        c_stats.per_peer.keys().collect::<Vec<_>>(),
        vec![&b.share.node_id()]
    );
    assert_eq!(
        c.share
            .store()
            .read_range(ticket.root, 0..blob.len() as u64)
            .unwrap(),
        blob
    );
}

/// A super-seeding origin sends each piece about once: four downloaders started together
/// (each told of the others) complete, byte for byte, while the origin uploads far less
/// than the four copies plain seeding sends them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_super_seeding_origin_sends_each_piece_about_once() {
    let net = MemNetwork::new();
    let blob = data(11, 4 << 20);
    let mut origin_config = ShareConfig::default();
    origin_config.super_seed = true;
    origin_config.limits.upload_rate_total = Some(8 << 20);
    let a = node(&net, 1, origin_config);
    let ticket = a.share.add_bytes(Bytes::from(blob.clone())).await.unwrap();
    let peers: Vec<Node> = (2..6)
        .map(|i| node(&net, i, ShareConfig::default()))
        .collect();
    let downloads: Vec<_> = peers
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut providers = vec![addr(&a)];
            providers.extend(
                peers
                    .iter()
                    .filter(|q| q.share.node_id() != p.share.node_id())
                    .map(addr),
            );
            let t = Ticket::new(ticket.root, BlobFormat::Raw, providers);
            let mut o = opts(20 + i as u64);
            o.no_discovery = true;
            p.share.download(&t, o)
        })
        .collect();
    for d in downloads {
        let stats = d.finish().await.unwrap();
        assert_eq!(stats.fetched_bytes, blob.len() as u64);
    }
    for p in &peers {
        assert_eq!(
            p.share
                .store()
                .read_range(ticket.root, 0..u64::MAX)
                .unwrap(),
            blob
        );
    }
    let sent = a.share.stats().uploaded_bytes;
    assert!(
        sent <= blob.len() as u64 * 3 / 2,
        "the origin sent {sent} bytes of a {}-byte blob to 4 downloaders",
        blob.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_providers_are_named_in_the_error() {
    let net = MemNetwork::new();
    let d = node(&net, 9, ShareConfig::default());
    let ghost = SecretKey::from_bytes(&[77; 32]).node_id();
    let ticket = Ticket::new(
        Hash::of(b"nothing"),
        BlobFormat::Raw,
        vec![NodeAddr::new(ghost)],
    );
    let err = d
        .share
        .download(&ticket, opts(8))
        .finish()
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&ghost.fmt_short()), "{msg}");
    let no_providers = Ticket::new(Hash::of(b"nothing"), BlobFormat::Raw, vec![]);
    let err = d
        .share
        .download(&no_providers, opts(9))
        .finish()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no provider"), "{err}");
    let _: Option<NodeId> = None;
    let _ = RangeSet::new();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downloaded_folder_is_written_in_place_not_copied() {
    let net = MemNetwork::new();
    let a = node(&net, 1, ShareConfig::default());
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    write_tree(&src);
    let ticket = a.share.add_dir(&src).await.unwrap();
    // B downloads into a filesystem store.
    let root = tmp.path().join("store");
    let store: SharedStore =
        Arc::new(kith_store::FsStore::open(&root, StoreConfig::default()).unwrap());
    let t: Arc<dyn Transport> = Arc::new(net.node(SecretKey::from_bytes(&[2; 32]).node_id()));
    let b = Share::spawn(t, store, None, ShareConfig::default()).unwrap();
    b.download(&ticket, opts(10)).finish().await.unwrap();
    let out = tmp.path().join("out");
    b.export_dir(ticket.root, &out).await.unwrap();
    assert_same_tree(&src, &out);
    let owned: Vec<_> = std::fs::read_dir(root.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "data"))
        .collect();
    // Only the manifest is still a file of the store's own; the five files live in `out`
    // (the empty file and the others are referenced there).
    assert_eq!(owned.len(), 1, "{owned:?}");
    // And B still serves them, verified from their new place.
    let c = node(&net, 3, ShareConfig::default());
    let mut t2 = ticket.clone();
    t2.providers = vec![b.ticket(ticket.root, BlobFormat::Collection).providers[0].clone()];
    let stats = c.share.download(&t2, opts(11)).finish().await.unwrap();
    assert_eq!(
        stats.per_peer.keys().collect::<Vec<_>>(),
        vec![&b.node_id()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lan_peers_are_asked_first() {
    let net = MemNetwork::new();
    let a = node(&net, 1, ShareConfig::default());
    let x = node(&net, 2, ShareConfig::default());
    let d = node(&net, 9, ShareConfig::default());
    let t = a
        .share
        .add_bytes(Bytes::from(data(12, 500_000)))
        .await
        .unwrap();
    let lan = vec![addr(&x), addr(&a)];
    d.share.set_lan_peers(move || lan.clone());
    // The ticket names nobody: the LAN finds A; X, which lacks it, is no failure.
    let bare = Ticket::new(t.root, BlobFormat::Raw, vec![]);
    let stats = d.share.download(&bare, opts(12)).finish().await.unwrap();
    assert_eq!(
        stats.per_peer.keys().collect::<Vec<_>>(),
        vec![&a.share.node_id()]
    );
    let _ = x;
}
