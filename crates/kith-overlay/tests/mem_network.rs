//! 24 real drivers on the in-memory transport store and retrieve values, providers and
//! each other's addresses.

use std::sync::Arc;

use bytes::Bytes;
use kith_core::mem::MemNetwork;
use kith_core::net::Transport;
use kith_core::{NodeAddr, SecretKey};
use kith_overlay::dht::{Config, Dht, DhtError, DhtHandle, Key, Resolve};
use rand::SeedableRng;
use rand::rngs::StdRng;

const NODES: usize = 24;

async fn network(config: Config) -> (MemNetwork, Vec<DhtHandle>) {
    let net = MemNetwork::new();
    let mut rng = StdRng::seed_from_u64(42);
    let mut handles: Vec<DhtHandle> = Vec::new();
    let mut first: Option<NodeAddr> = None;
    for _ in 0..NODES {
        let secret = SecretKey::generate(&mut rng);
        let t: Arc<dyn Transport> = Arc::new(net.node(secret.node_id()));
        let boot = first.clone().into_iter().collect();
        let h = Dht::spawn(t.clone(), secret, config.clone(), boot)
            .unwrap_or_else(|e| panic!("spawn: {e}"));
        if first.is_none() {
            first = Some(t.local_addr());
        } else {
            h.bootstrap()
                .await
                .unwrap_or_else(|e| panic!("bootstrap: {e}"));
        }
        handles.push(h);
    }
    // A second round lets the early joiners learn about the later ones.
    for h in &handles[1..] {
        h.bootstrap()
            .await
            .unwrap_or_else(|e| panic!("bootstrap: {e}"));
    }
    (net, handles)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_providers_and_addresses_over_the_mem_transport() {
    let (_net, nodes) = network(Config::default()).await;
    for h in &nodes {
        let n = h.routing_table_len().await.unwrap_or(0);
        assert!(
            n >= 10,
            "routing table of {} has {n} peers",
            h.node_id().fmt_short()
        );
    }

    // Immutable values: each node stores one, another node reads it.
    let mut keys = Vec::new();
    for (i, h) in nodes.iter().enumerate() {
        let v = Bytes::from(format!("value {i}"));
        keys.push((
            h.put_immutable(v.clone())
                .await
                .unwrap_or_else(|e| panic!("put: {e}")),
            v,
        ));
    }
    for (i, (key, v)) in keys.iter().enumerate() {
        let reader = &nodes[(i + 7) % NODES];
        assert_eq!(reader.get_immutable(*key).await.as_ref(), Ok(v));
    }
    assert_eq!(
        nodes[0]
            .get_immutable(Key::for_immutable(b"never stored"))
            .await,
        Err(DhtError::Get(kith_overlay::dht::GetError::NotFound))
    );

    // Mutable values: the newest sequence wins, CAS guards updates.
    let owner = &nodes[3];
    let salt = Bytes::from_static(b"site");
    owner
        .put_mutable(salt.clone(), 1, Bytes::from_static(b"v1"), None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    owner
        .put_mutable(salt.clone(), 2, Bytes::from_static(b"v2"), Some(1))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let stale = owner
        .put_mutable(salt.clone(), 1, Bytes::from_static(b"old"), None)
        .await;
    assert!(
        matches!(
            stale,
            Err(DhtError::Put(kith_overlay::dht::PutError::Stale {
                current: 2
            }))
        ),
        "{stale:?}"
    );
    let cas = owner
        .put_mutable(salt.clone(), 3, Bytes::from_static(b"v3"), Some(1))
        .await;
    assert!(
        matches!(
            cas,
            Err(DhtError::Put(kith_overlay::dht::PutError::CasMismatch {
                current: Some(2)
            }))
        ),
        "{cas:?}"
    );
    let got = nodes[17]
        .get_mutable(owner.node_id(), &salt)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((got.seq, &got.value[..]), (2, &b"v2"[..]));

    // Providers: three nodes provide a hash, a fourth finds all three with addresses.
    let hash = Key::for_immutable(b"some blob");
    for h in &nodes[5..8] {
        assert!(h.announce_provider(hash).await.unwrap_or(0) > 0);
    }
    let providers = nodes[20].find_providers(hash).await.unwrap_or_default();
    let mut ids: Vec<_> = providers.iter().map(|p| p.node_id).collect();
    ids.sort();
    let mut want: Vec<_> = nodes[5..8].iter().map(|h| h.node_id()).collect();
    want.sort();
    assert_eq!(ids, want);

    // Node addresses: everyone publishes, everyone resolves somebody else by id alone.
    for h in &nodes {
        assert!(h.publish_addr().await.unwrap_or(0) > 0);
    }
    for (i, h) in nodes.iter().enumerate() {
        let other = nodes[(i + 5) % NODES].node_id();
        let addr = h.resolve(other).await;
        assert_eq!(addr.map(|a| a.node_id), Some(other), "node {i} resolving");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_mode_nodes_query_but_are_not_stored() {
    let net = MemNetwork::new();
    let mut rng = StdRng::seed_from_u64(7);
    let mut servers = Vec::new();
    let mut first = None;
    for _ in 0..20 {
        let secret = SecretKey::generate(&mut rng);
        let t: Arc<dyn Transport> = Arc::new(net.node(secret.node_id()));
        let h = Dht::spawn(
            t.clone(),
            secret,
            Config::default(),
            first.clone().into_iter().collect(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        if first.is_none() {
            first = Some(t.local_addr());
        } else {
            h.bootstrap().await.unwrap_or_else(|e| panic!("{e}"));
        }
        servers.push(h);
    }
    let secret = SecretKey::generate(&mut rng);
    let client_id = secret.node_id();
    let t: Arc<dyn Transport> = Arc::new(net.node(client_id));
    let mut cfg = Config::default();
    cfg.client_mode = true;
    let client =
        Dht::spawn(t, secret, cfg, first.into_iter().collect()).unwrap_or_else(|e| panic!("{e}"));
    assert!(client.bootstrap().await.unwrap_or(0) > 0);
    let key = client
        .put_immutable(Bytes::from_static(b"from a client"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        &servers[9].get_immutable(key).await.unwrap_or_default()[..],
        b"from a client"
    );
    // No server lists the client among the nodes closest to the client's own id.
    let closest = servers[4]
        .find_node(Key::from_node(&client_id))
        .await
        .unwrap_or_default();
    assert!(!closest.is_empty());
    assert!(closest.iter().all(|a| a.node_id != client_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_network_of_two_the_node_holding_a_mutable_record_gets_it() {
    let net = MemNetwork::new();
    let (a, b) = (
        SecretKey::from_bytes(&[1; 32]),
        SecretKey::from_bytes(&[2; 32]),
    );
    let ta: Arc<dyn Transport> = Arc::new(net.node(a.node_id()));
    let tb: Arc<dyn Transport> = Arc::new(net.node(b.node_id()));
    // Each knows the other from the start and both bootstrap: when B's bootstrap returns,
    // A may not yet have added B to its table (it does so after answering), and A's put
    // would then find nobody. A's own bootstrap completes only once it has heard B.
    let tb_addr = tb.local_addr();
    let ha = Dht::spawn(ta.clone(), a.clone(), Config::default(), vec![tb_addr]).expect("spawn");
    let hb = Dht::spawn(tb, b, Config::default(), vec![ta.local_addr()]).expect("spawn");
    hb.bootstrap().await.expect("bootstrap");
    ha.bootstrap().await.expect("bootstrap");
    // A's put lands on B, the only other node; B's get must count its own copy.
    let stored = ha
        .put_mutable(Bytes::from_static(b"s"), 3, Bytes::from_static(b"v"), None)
        .await
        .expect("put");
    assert_eq!(stored, 1);
    let got = hb.get_mutable(a.node_id(), b"s").await.expect("get");
    assert_eq!((got.seq, &got.value[..]), (3, &b"v"[..]));
}
