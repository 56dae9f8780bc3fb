//! Nodes with a DHT, gossip, a share service and sites on an in-memory network.
#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::sync::Arc;

use kith_core::mem::{MemNetwork, MemTransport};
use kith_core::{NodeAddr, SecretKey, Transport};
use kith_overlay::dht::Dht;
use kith_overlay::gossip::driver::Gossip;
use kith_share::{Share, ShareConfig};
use kith_site::{Sites, SitesConfig};
use kith_store::{MemStore, StoreConfig};

pub struct Node {
    pub sites: Sites,
    pub gossip: Gossip,
    pub addr: NodeAddr,
    pub transport: MemTransport,
}

pub fn trace() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// `n` nodes, each joined to the DHT through the first.
pub async fn swarm(net: &MemNetwork, n: usize, seed: u8, config: SitesConfig) -> Vec<Node> {
    swarm_with(net, n, seed, config, |_| ShareConfig::default()).await
}

/// Like [`swarm`], with each node's share configuration from `share_config(i)`.
pub async fn swarm_with(
    net: &MemNetwork,
    n: usize,
    seed: u8,
    config: SitesConfig,
    share_config: impl Fn(usize) -> ShareConfig,
) -> Vec<Node> {
    let mut out: Vec<Node> = Vec::new();
    for i in 0..n {
        let key = SecretKey::from_bytes(&[seed.wrapping_add(i as u8); 32]);
        let mt = net.node(key.node_id());
        let t: Arc<dyn Transport> = Arc::new(mt.clone());
        let boot: Vec<NodeAddr> = out.first().map(|n| n.addr.clone()).into_iter().collect();
        let dht =
            Dht::spawn(t.clone(), key.clone(), Default::default(), boot.clone()).expect("dht");
        if !boot.is_empty() {
            dht.bootstrap().await.expect("bootstrap");
        }
        let gossip = Gossip::spawn(t.clone(), key, Default::default()).expect("gossip");
        let store = Arc::new(MemStore::new(StoreConfig::default()));
        let share =
            Share::spawn(t.clone(), store, Some(dht.clone()), share_config(i)).expect("share");
        out.push(Node {
            sites: Sites::new(share, dht, Some(gossip.clone()), config.clone()),
            gossip,
            addr: t.local_addr(),
            transport: mt,
        });
    }
    out
}

/// Writes `files` (path, bytes) under `dir`.
pub fn write_site(dir: &Path, files: &[(&str, &[u8])]) {
    for (p, b) in files {
        let path = dir.join(p);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, b).expect("write");
    }
}
