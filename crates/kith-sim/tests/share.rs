//! Seeded swarm downloads at small scale (60 downloaders, 4 MiB): the unmodified
//! kith-share scheduler on the bandwidth model. The full-size runs are `cargo xtask sim
//! share` (1,000 downloaders, 64 MiB).

use kith_sim::share::{self, ShareParams};

/// 60 downloaders and 4 MiB at 256 KiB/s a node: the bound is 16 s, as in the full run,
/// so stall timeouts and bans play out within the download. Upload slots scale with the
/// links (32 → 2), so a request gets the same share of a provider's upload as in the full
/// run (128 KiB/s) and a piece the same time across a busy provider: 32 slots at 256
/// KiB/s would take 2 s a piece.
fn slow(mut p: ShareParams) -> ShareParams {
    let scale = 1.0 / 16.0;
    p.seed_up *= scale;
    p.seed_down *= scale;
    for c in &mut p.classes {
        c.up *= scale;
        c.down *= scale;
    }
    p.upload_slots = ((p.upload_slots as f64 * scale).round() as usize).max(1);
    p
}

#[test]
fn flash_crowd_completes_near_the_fluid_bound() {
    let p = slow(ShareParams::flash(60, 4, 3));
    let r = share::run(&p);
    assert_eq!(r.completed_fraction(), 1.0, "{r:?}");
    assert!((r.bound.as_secs_f64() - 16.0).abs() < 0.01, "{r:?}");
    let ratio = r.ratio_to_bound();
    assert!(ratio < 1.8, "ratio to the fluid bound {ratio}: {r:?}");
    assert!(r.seed_upload_ratio() < 2.5, "{r:?}");
    assert_eq!(r.honest_banned + r.seeder_banned, 0, "{r:?}");
    // Same seed, same run.
    let again = share::run(&p);
    assert_eq!(again.last_finish, r.last_finish);
    assert_eq!(again.seed_uploaded, r.seed_uploaded);
    assert_eq!(again.events, r.events);
}

#[test]
fn heterogeneous_swarm_with_churn_completes() {
    let p = slow(ShareParams::hetero(60, 4, 5));
    let r = share::run(&p);
    assert_eq!(r.left, 12, "{r:?}");
    assert_eq!(r.completed, 48, "{r:?}");
    assert_eq!(r.completed_fraction(), 1.0, "{r:?}");
}

#[test]
fn malicious_providers_are_banned_and_honest_peers_complete() {
    let p = slow(ShareParams::malicious(60, 4, 7));
    let r = share::run(&p);
    assert_eq!(r.malicious, 6);
    assert_eq!(r.completed_fraction(), 1.0, "{r:?}");
    assert_eq!(r.bad_accepted, 0, "{r:?}");
    assert!(r.contacted_pairs > 0, "{r:?}");
    assert_eq!(r.banned_pairs, r.contacted_pairs, "{r:?}");
    assert_eq!(r.malicious_banned_by_all, r.malicious_contacted, "{r:?}");
    // Bounded by a window's worth of pieces per pair.
    assert!(r.wasted_max <= 512 * 1024, "{r:?}");
}

#[test]
fn an_update_channel_offloads_its_origin() {
    // The update scenario at small scale: the origin has a follower's upload; followers
    // get nearly everything from each other.
    let p = slow(ShareParams::flash(60, 4, 9));
    let r = share::run(&p);
    assert_eq!(r.completed_fraction(), 1.0, "{r:?}");
    assert_eq!(r.finish_times.len(), 60);
    assert!(r.finish_times.windows(2).all(|w| w[0] <= w[1]));
    let offload = r.origin_offload();
    assert!(offload > 0.9, "offload {offload}: {r:?}");
    let p99 = r.quantile_ratio_to_bound(0.99);
    assert!(p99 <= r.ratio_to_bound() && p99 < 1.8, "p99 {p99}: {r:?}");
}
