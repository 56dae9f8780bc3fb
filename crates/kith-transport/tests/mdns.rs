//! Two endpoints find each other with mDNS and connect directly, with no relay and no
//! other discovery source.
//!
//! mDNS needs a multicast-capable interface, and this test must not send multicast on
//! the machine's real networks. So it re-runs itself inside a network namespace of its
//! own (`unshare --net`), whose only interface is a loopback with the MULTICAST flag set:
//! the packets to 224.0.0.251 never leave that namespace, which disappears with the
//! process. Where namespaces cannot be created (no privilege, no `unshare`), the test
//! says it was skipped and why; with `KITH_REQUIRE_NETNS` set (CI sets it where it can
//! create namespaces) it fails instead, so it never passes silently where it should run.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use kith_core::net::Connection;
use kith_core::{NodeAddr, SecretKey};
use kith_transport::mdns::{LanEvent, MdnsConfig, MdnsDiscovery};
use kith_transport::{Endpoint, EndpointConfig, PathKind};
use rand::SeedableRng;

/// Set in the child that runs inside the namespace.
const INSIDE: &str = "KITH_MDNS_TEST_NETNS";
const TEST: &str = "lan_peers_find_each_other_and_connect_directly";
/// Bound on every wait in the test.
const WAIT: Duration = Duration::from_secs(10);

#[test]
fn lan_peers_find_each_other_and_connect_directly() {
    if std::env::var_os(INSIDE).is_some() {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(inside_namespace());
        return;
    }
    let exe = std::env::current_exe().unwrap();
    // Same command as root; as a user, with a user namespace mapping us to root in it.
    let setup = "ip link set lo up && ip link set lo multicast on && exec \"$0\" \"$@\"";
    let mut last_error = String::new();
    for userns in [false, true] {
        let mut cmd = Command::new("unshare");
        if userns {
            cmd.args(["--user", "--map-root-user"]);
        }
        cmd.args(["--net", "--", "sh", "-c", setup])
            .arg(&exe)
            .args([TEST, "--exact", "--nocapture", "--test-threads=1"])
            .env(INSIDE, "1");
        match cmd.output() {
            Ok(out) if out.status.success() => {
                let stdout = String::from_utf8_lossy(&out.stdout);
                print!("{stdout}");
                assert!(
                    stdout.contains("mdns e2e: connected"),
                    "the test did not run inside the namespace:\n{stdout}"
                );
                return;
            }
            Ok(out) => {
                let stdout = String::from_utf8_lossy(&out.stdout);
                let stderr = String::from_utf8_lossy(&out.stderr);
                // The inner test ran and failed: that is a failure, not a skip.
                assert!(
                    !stdout.contains("running 1 test"),
                    "mDNS test failed inside its namespace:\n{stdout}\n{stderr}"
                );
                last_error = stderr.trim().to_owned();
            }
            Err(e) => last_error = e.to_string(),
        }
    }
    let why =
        format!("cannot create a private network namespace for mDNS (unshare --net: {last_error})");
    assert!(
        std::env::var_os("KITH_REQUIRE_NETNS").is_none(),
        "{TEST}: {why}, and KITH_REQUIRE_NETNS is set"
    );
    println!("SKIPPED {TEST}: {why}; the NAT lab (`cargo xtask lab mdns`) covers it");
}

async fn node(seed: u64) -> (Endpoint, Arc<MdnsDiscovery>) {
    let key = SecretKey::generate(&mut rand::rngs::StdRng::seed_from_u64(seed));
    let mut config = EndpointConfig::loopback();
    config.relay = None;
    let ep = Endpoint::bind(key, config).await.unwrap();
    let lan = Arc::new(MdnsDiscovery::spawn(&ep, MdnsConfig::default()).unwrap());
    (ep, lan)
}

async fn inside_namespace() {
    let (a, a_lan) = node(1).await;
    let mut a_events = a_lan.events();
    let (b, b_lan) = node(2).await;
    a.set_discovery(a_lan.clone());

    // A dials B by its bare id: mDNS supplies the address, the dial goes direct.
    let start = std::time::Instant::now();
    let conn = tokio::time::timeout(WAIT, a.connect(NodeAddr::new(b.node_id())))
        .await
        .expect("connect timed out")
        .expect("connect failed");
    assert_eq!(conn.remote_id(), b.node_id());
    let PathKind::Direct(path) = conn.path() else {
        panic!("expected a direct path, got {:?}", conn.path());
    };
    assert_eq!(Some(path), b.local_addrs().first().copied());
    println!(
        "mdns e2e: connected {} ms path=direct={path}",
        start.elapsed().as_millis()
    );

    // Both sides list each other, and only each other.
    let b_sees_a = b_lan
        .wait_for(a.node_id(), WAIT)
        .await
        .expect("B never saw A");
    assert_eq!(b_sees_a.direct, a.local_addrs());
    assert_eq!(
        a_lan.peers().iter().map(|p| p.node_id).collect::<Vec<_>>(),
        vec![b.node_id()]
    );

    // B leaves: its goodbye removes it from A's list.
    b_lan.shutdown().await;
    let lost = tokio::time::timeout(WAIT, async {
        loop {
            match a_events.recv().await {
                Ok(LanEvent::Lost(id)) if id == b.node_id() => return,
                Ok(_) => {}
                Err(e) => panic!("event stream: {e}"),
            }
        }
    })
    .await;
    assert!(lost.is_ok(), "A never saw B leave");
    assert!(a_lan.peer(&b.node_id()).is_none());
    a.close().await;
    b.close().await;
}
