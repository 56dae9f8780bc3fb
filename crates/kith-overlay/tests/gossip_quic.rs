//! Gossip over the real QUIC transport on loopback: 20 members, every broadcast reaches
//! every member exactly once, signed by its author.

#[path = "gossip_common.rs"]
mod common;

use std::sync::Arc;
use std::time::Duration;

use kith_core::{SecretKey, Transport};
use kith_overlay::gossip::{Config, TopicId};
use kith_transport::{Endpoint, EndpointConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_broadcast_reaches_all_20_members_over_quic_loopback() {
    // Logs on demand (RUST_LOG=kith_overlay=debug) to diagnose a failure.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut nodes: Vec<(Arc<dyn Transport>, SecretKey)> = Vec::new();
    for n in 0..20u8 {
        let key = SecretKey::from_bytes(&[n + 1; 32]);
        let ep = Endpoint::bind(key.clone(), EndpointConfig::loopback())
            .await
            .expect("bind");
        nodes.push((Arc::new(ep), key));
    }
    let endpoints: Vec<Arc<dyn Transport>> = nodes.iter().map(|(t, _)| t.clone()).collect();
    let mut members = common::swarm(
        nodes,
        Config::default(),
        TopicId::from_name("quic-room"),
        20,
    )
    .await;
    assert_eq!(members.len(), 20);
    common::until_stable(&mut members, Duration::from_secs(30)).await;
    common::broadcast_and_check(&mut members, &[0, 7, 13, 19]).await;
    drop(endpoints);
}
