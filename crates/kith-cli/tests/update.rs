//! `kith update` as a user runs it: `init` makes a channel, `publish` serves a release
//! from one process, `follow --once` in another installs it; a second release from a
//! second publisher process replaces it and keeps the first for rollback; a release whose
//! health check fails is rolled back; a follower that is up to date says so.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{KITH, Proc, spawn};

/// Runs `kith --dir DIR ARGS…` to its end.
fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(KITH)
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("run kith")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

fn write(dir: &Path, files: &[(&str, &[u8])]) {
    for (p, b) in files {
        let path = dir.join(p);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, b).expect("write");
    }
}

/// Every file under `dir`, as sorted relative paths.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).expect("prefix");
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

fn link_version(dir: &Path, name: &str) -> Option<u64> {
    let t = std::fs::read_link(dir.join(name)).ok()?;
    t.file_name()?.to_str()?.parse().ok()
}

fn follow_once(follower: &Path, app: &Path, channel: &str, via: &str, extra: &[&str]) -> Output {
    let app = app.to_str().expect("path");
    let mut args = vec![
        "update",
        "follow",
        channel,
        "--into",
        app,
        "--once",
        "--bind",
        "127.0.0.1:0",
        "--bootstrap",
        via,
    ];
    args.extend_from_slice(extra);
    run(follower, &args)
}

#[test]
fn publish_follow_replace_roll_back_and_stay_up_to_date() {
    let tmp = tempfile::tempdir().expect("tmp");
    let p = |s: &str| -> PathBuf { tmp.path().join(s) };
    let big: Vec<u8> = (0..3u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 9) as u8)
        .collect();
    write(
        &p("v1"),
        &[
            ("bin/app", &big),
            ("README", b"release one"),
            ("old-only.txt", b"gone in two"),
        ],
    );
    write(
        &p("v2"),
        &[
            ("bin/app", &big[..big.len() / 2]),
            ("README", b"release two"),
        ],
    );
    write(
        &p("v3"),
        &[
            ("README", b"release three"),
            ("check.sh", b"#!/bin/sh\necho unhealthy >&2\nexit 3\n"),
        ],
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p("v3/check.sh"), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
    }

    // init prints the channel's name.
    let keys = p("keys");
    let init = Command::new(KITH)
        .args(["update", "init"])
        .arg(&keys)
        .output()
        .expect("init");
    assert!(init.status.success(), "init: {init:?}");
    let channel = stdout(&init);
    assert!(channel.starts_with("kithup"), "channel name {channel:?}");
    // A second init into the same folder is refused: keys are never overwritten.
    let again = Command::new(KITH)
        .args(["update", "init"])
        .arg(&keys)
        .output()
        .expect("init");
    assert!(!again.status.success());

    let keys_arg = keys.to_str().expect("path");
    let publish = |name: &str, dir: &str, version: &str, via: Option<&str>| -> Proc {
        let dir = p(dir);
        let mut args = vec![
            "update",
            "publish",
            "--channel",
            keys_arg,
            dir.to_str().expect("path"),
            "--version",
            version,
            "--bind",
            "127.0.0.1:0",
        ];
        if let Some(v) = via {
            args.extend_from_slice(&["--bootstrap", v]);
        }
        spawn(&p(name), &args)
    };

    // Release 1 from one process; a follower in another installs it.
    let pub1 = publish("pub1", "v1", "1", None);
    assert_eq!(pub1.first, channel, "publish prints the channel");
    let (follower, app) = (p("follower"), p("app"));
    let o = follow_once(&follower, &app, &channel, &pub1.addr, &[]);
    assert!(o.status.success(), "follow 1: {o:?}");
    assert_eq!(stdout(&o), "installed 1");
    assert_eq!(link_version(&app, "current"), Some(1));
    // Exactly the published files: nothing of the publisher's data directory (its
    // secret key once ended up in the release) and nothing written into the folder.
    let published = ["README", "bin/app", "old-only.txt"];
    assert_eq!(files(&app.join("current")), published);
    assert_eq!(files(&p("v1")), published);
    assert_eq!(
        std::fs::read(app.join("current/bin/app")).expect("app"),
        big
    );
    assert_eq!(
        std::fs::read(app.join("current/README")).expect("readme"),
        b"release one"
    );

    // Release 2, published by a second process with the same keys.
    let pub2 = publish("pub2", "v2", "2", Some(&pub1.addr));
    let o = follow_once(&follower, &app, &channel, &pub2.addr, &[]);
    assert!(o.status.success(), "follow 2: {o:?}");
    assert_eq!(stdout(&o), "installed 2");
    assert_eq!(link_version(&app, "current"), Some(2));
    assert_eq!(link_version(&app, "previous"), Some(1));
    assert_eq!(
        std::fs::read(app.join("current/bin/app")).expect("app"),
        &big[..big.len() / 2]
    );
    assert!(
        !app.join("current/old-only.txt").exists(),
        "a file of release 1 leaked into release 2"
    );
    assert_eq!(
        std::fs::read(app.join("previous/README")).expect("previous"),
        b"release one"
    );

    // Nothing newer: up to date, nothing changes.
    let o = follow_once(&follower, &app, &channel, &pub2.addr, &[]);
    assert!(o.status.success(), "follow again: {o:?}");
    assert_eq!(stdout(&o), "up to date 2");
    assert_eq!(link_version(&app, "current"), Some(2));

    // Release 3's health check fails: the follower says so and release 2 stays.
    let pub3 = publish("pub3", "v3", "3", Some(&pub2.addr));
    let o = follow_once(
        &follower,
        &app,
        &channel,
        &pub3.addr,
        &["--health-check", "check.sh"],
    );
    assert!(!o.status.success(), "an unhealthy release was accepted");
    assert_eq!(link_version(&app, "current"), Some(2));
    assert_eq!(
        std::fs::read(app.join("current/README")).expect("readme"),
        b"release two"
    );
    drop((pub1, pub2, pub3));
}
