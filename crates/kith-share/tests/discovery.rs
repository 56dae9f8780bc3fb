//! Provider discovery through the DHT: a ticket with no providers still downloads, and a
//! finished downloader becomes a provider others find once the original is gone.

use std::sync::Arc;

use bytes::Bytes;
use kith_core::mem::MemNetwork;
use kith_core::{NodeAddr, SecretKey, Transport};
use kith_overlay::dht::{Config, Dht};
use kith_share::{DownloadOptions, Share, ShareConfig, SharedStore, Ticket};
use kith_store::{BlobFormat, MemStore, StoreConfig};
use rand::SeedableRng;
use rand::rngs::StdRng;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_are_found_through_the_dht() {
    let net = MemNetwork::new();
    let mut rng = StdRng::seed_from_u64(11);
    let mut shares = Vec::new();
    let mut transports = Vec::new();
    let mut first: Option<NodeAddr> = None;
    for _ in 0..8 {
        let secret = SecretKey::generate(&mut rng);
        let mt = net.node(secret.node_id());
        let t: Arc<dyn Transport> = Arc::new(mt.clone());
        let boot: Vec<NodeAddr> = first.clone().into_iter().collect();
        let dht = Dht::spawn(t.clone(), secret, Config::default(), boot).unwrap();
        if first.is_none() {
            first = Some(t.local_addr());
        } else {
            dht.bootstrap().await.unwrap();
        }
        let store: SharedStore = Arc::new(MemStore::new(StoreConfig::default()));
        shares.push(Share::spawn(t, store, Some(dht), ShareConfig::default()).unwrap());
        transports.push(mt);
    }
    let blob: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let t = shares[1]
        .add_bytes(Bytes::from(blob.clone()))
        .await
        .unwrap();
    assert!(shares[1].announce(t.root).await.unwrap() > 0);
    // No provider in the ticket: the DHT finds node 1.
    let bare = Ticket::new(t.root, BlobFormat::Raw, vec![]);
    let stats = shares[5]
        .download(&bare, DownloadOptions::default())
        .finish()
        .await
        .unwrap();
    assert_eq!(
        stats.per_peer.keys().collect::<Vec<_>>(),
        vec![&shares[1].node_id()]
    );
    // Node 5 now provides (it announced before its download returned). Take node 1
    // off the network; node 7 still gets the blob, from node 5.
    shares[1].remove(&t.root).unwrap();
    transports[1].disconnect_all();
    let stats = shares[7]
        .download(&bare, DownloadOptions::default())
        .finish()
        .await
        .unwrap();
    assert_eq!(
        stats.per_peer.keys().collect::<Vec<_>>(),
        vec![&shares[5].node_id()]
    );
    assert_eq!(
        shares[7]
            .store()
            .read_range(t.root, 0..blob.len() as u64)
            .unwrap(),
        blob
    );
}
