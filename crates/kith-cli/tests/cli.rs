//! The `kith` command as people use it: real processes on loopback, each with its own
//! data directory; terminal programs in tmux. Waits are bounded polls of what the
//! processes print, never fixed sleeps.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const KITH: &str = env!("CARGO_BIN_EXE_kith");

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

/// A `kith share` process; killed on drop.
struct Sharer {
    child: Child,
    ticket: String,
    /// The sharing node's address (from its stderr).
    addr: String,
}

impl Drop for Sharer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn share(dir: &Path, path: &Path, extra: &[&str]) -> Sharer {
    let mut child = Command::new(KITH)
        .arg("--dir")
        .arg(dir)
        .arg("share")
        .arg(path)
        .args(["--bind", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("kith"), "no ticket: {line:?}");
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut addr = String::new();
    let mut l = String::new();
    while err.read_line(&mut l).unwrap_or(0) > 0 {
        if let Some(a) = l.strip_prefix("this node: ") {
            addr = a.trim().to_owned();
            break;
        }
        l.clear();
    }
    assert!(!addr.is_empty(), "no node address printed");
    // Keep draining stderr so the sharer never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    Sharer {
        child,
        ticket: line.trim().to_owned(),
        addr,
    }
}

fn get(dir: &Path, ticket: &str, out: &Path) -> Output {
    Command::new(KITH)
        .arg("--dir")
        .arg(dir)
        .args(["get", ticket, "--bind", "127.0.0.1:0", "-o"])
        .arg(out)
        .output()
        .unwrap()
}

fn same_tree(a: &Path, b: &Path) {
    for e in std::fs::read_dir(a).unwrap() {
        let e = e.unwrap();
        let other = b.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            same_tree(&e.path(), &other);
        } else {
            assert_eq!(
                std::fs::read(e.path()).unwrap(),
                std::fs::read(&other).unwrap()
            );
        }
    }
}

fn folder(root: &Path) -> PathBuf {
    let src = root.join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("big.bin"), data(1, 2_500_000)).unwrap();
    std::fs::write(src.join("sub/notes.txt"), b"shared with kith\n").unwrap();
    std::fs::write(src.join("empty"), b"").unwrap();
    src
}

/// `fetched N resumed M` from a get's stdout.
fn counts(out: &Output) -> (u64, u64) {
    let s = String::from_utf8_lossy(&out.stdout);
    let line = s
        .lines()
        .find(|l| l.starts_with("fetched "))
        .unwrap_or_else(|| {
            panic!(
                "no summary; stdout {s:?} stderr {:?}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let v: Vec<&str> = line.split(' ').collect();
    (v[1].parse().unwrap(), v[3].parse().unwrap())
}

#[test]
fn a_shared_folder_reaches_two_getters_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let src = folder(tmp.path());
    let s = share(&tmp.path().join("a"), &src, &[]);
    let t1 = {
        let (dir, out, ticket) = (
            tmp.path().join("b"),
            tmp.path().join("out_b"),
            s.ticket.clone(),
        );
        std::thread::spawn(move || (get(&dir, &ticket, &out), out))
    };
    let (o2, out2) = {
        let out = tmp.path().join("out_c");
        (get(&tmp.path().join("c"), &s.ticket, &out), out)
    };
    let (o1, out1) = t1.join().unwrap();
    for (o, out) in [(o1, out1), (o2, out2)] {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        same_tree(&src, &out);
        let (fetched, resumed) = counts(&o);
        assert!(fetched > 2_500_000 && resumed == 0);
    }
}

#[test]
fn search_finds_a_share_by_a_word_of_its_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("holiday-photos-2026");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("beach.jpg"), data(4, 100_000)).unwrap();
    let s = share(&tmp.path().join("a"), &dir, &[]);
    let o = Command::new(KITH)
        .arg("--dir")
        .arg(tmp.path().join("b"))
        .args([
            "search",
            "photos",
            "--bind",
            "127.0.0.1:0",
            "--bootstrap",
            &s.addr,
        ])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let line = out.lines().next().unwrap();
    let cols: Vec<&str> = line.split('\t').collect();
    assert_eq!(cols[0], "holiday-photos-2026");
    assert_eq!(cols[1], "100000");
    assert_eq!(cols[2], s.ticket, "the hit carries the ticket");
    // A word nobody shares: nothing, and a failing exit like grep's.
    let o = Command::new(KITH)
        .arg("--dir")
        .arg(tmp.path().join("c"))
        .args([
            "search",
            "zebra",
            "--wait",
            "1",
            "--bind",
            "127.0.0.1:0",
            "--bootstrap",
            &s.addr,
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(o.stdout.is_empty());
}

#[test]
fn a_killed_get_resumes_and_fetches_less() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("video.bin");
    let blob = data(2, 6_000_000);
    std::fs::write(&file, &blob).unwrap();
    // 1.5 MB/s: four seconds for the whole file.
    let s = share(&tmp.path().join("a"), &file, &["--upload-rate", "1500000"]);
    let dir = tmp.path().join("b");
    let out = tmp.path().join("out.bin");
    let mut child = Command::new(KITH)
        .arg("--dir")
        .arg(&dir)
        .args(["get", &s.ticket, "--bind", "127.0.0.1:0", "-o"])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill it once it reports 4 MB verified (plain progress lines: stderr is no tty).
    // The store records verified groups on disk at least once a second, so a kill loses
    // at most the last second's 1.5 MB: well over 1 MB must resume.
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "get ended early");
        if let Some(rest) = line.strip_prefix("progress ") {
            let verified: u64 = rest.split('/').next().unwrap().parse().unwrap();
            if verified >= 4_000_000 {
                assert!(verified < blob.len() as u64, "finished before the kill");
                break;
            }
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!out.exists());
    let second = get(&dir, &s.ticket, &out);
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let (fetched, resumed) = counts(&second);
    eprintln!("second run: fetched {fetched}, resumed {resumed}");
    assert!(resumed >= 1_000_000 && fetched < blob.len() as u64);
    assert_eq!(fetched + resumed, blob.len() as u64);
    assert_eq!(std::fs::read(&out).unwrap(), blob);
}

#[test]
fn bad_input_gets_a_clear_message_and_a_failing_exit() {
    let tmp = tempfile::tempdir().unwrap();
    let o = get(
        &tmp.path().join("x"),
        "kithnot-a-ticket",
        &tmp.path().join("o"),
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("invalid ticket") && err.contains("hint:"),
        "{err}"
    );
    // A provider that is gone: the error names where it looked.
    let file = tmp.path().join("f");
    std::fs::write(&file, b"gone soon").unwrap();
    let ticket = {
        let s = share(&tmp.path().join("a"), &file, &[]);
        s.ticket.clone()
    };
    let o = get(&tmp.path().join("y"), &ticket, &tmp.path().join("o2"));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("127.0.0.1:"),
        "the addresses tried are not named: {err}"
    );
    assert!(err.contains("relays"), "{err}");
}

/// A tmux server of this test's own, killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new(name: &str) -> Self {
        let ok = Command::new("tmux")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(ok, "tmux is required for this test (apt-get install tmux)");
        Self {
            socket: format!("kith-test-{name}-{}", std::process::id()),
        }
    }

    fn cmd(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .unwrap()
    }

    fn start(&self, session: &str, command: &str) {
        let o = self.cmd(&[
            "new-session",
            "-d",
            "-s",
            session,
            "-x",
            "250",
            "-y",
            "40",
            command,
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }

    fn screen(&self, session: &str) -> String {
        String::from_utf8_lossy(
            &self
                .cmd(&["capture-pane", "-p", "-J", "-t", session])
                .stdout,
        )
        .into_owned()
    }

    /// Polls the pane until `pred` holds, for at most `secs` seconds.
    fn wait(&self, session: &str, secs: u64, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.screen(session);
            if pred(&s) {
                return s;
            }
            assert!(Instant::now() < end, "{what} not seen in {session}:\n{s}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

fn sh_quote(p: &Path) -> String {
    format!("'{}'", p.display())
}

#[test]
fn two_chat_sessions_in_tmux_see_each_other() {
    let tmp = tempfile::tempdir().unwrap();
    let t = Tmux::new("chat");
    let a = format!(
        "{KITH} --dir {} chat lobby --nick alice --bind 127.0.0.1:0",
        sh_quote(&tmp.path().join("a"))
    );
    t.start("a", &a);
    let screen = t.wait("a", 20, "the join line", |s| s.contains("--peer "));
    let addr = screen
        .lines()
        .find_map(|l| l.split("--peer ").nth(1))
        .unwrap()
        .trim()
        .to_owned();
    let b = format!(
        "{KITH} --dir {} chat lobby --nick bob --peer {addr} --bind 127.0.0.1:0",
        sh_quote(&tmp.path().join("b"))
    );
    t.start("b", &b);
    t.wait("a", 20, "bob's join", |s| s.contains("* bob joined"));
    t.cmd(&["send-keys", "-t", "b", "hello from bob", "Enter"]);
    t.wait("a", 20, "bob's line", |s| s.contains("bob: hello from bob"));
    t.cmd(&["send-keys", "-t", "a", "hi bob, alice here", "Enter"]);
    t.wait("b", 20, "alice's line", |s| {
        s.contains("alice: hi bob, alice here")
    });
    t.cmd(&["send-keys", "-t", "b", "C-c", ""]);
    t.wait("a", 20, "bob leaving", |s| s.contains("* bob left"));
}

#[test]
fn the_progress_bar_renders_in_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("movie.bin");
    std::fs::write(&file, data(3, 5_000_000)).unwrap();
    let s = share(&tmp.path().join("a"), &file, &["--upload-rate", "1000000"]);
    let t = Tmux::new("bar");
    let cmd = format!(
        "{KITH} --dir {} get {} --bind 127.0.0.1:0 -o {}; echo EXIT=$?; sleep 60",
        sh_quote(&tmp.path().join("b")),
        s.ticket,
        sh_quote(&tmp.path().join("out.bin"))
    );
    t.start("g", &cmd);
    let bar = t.wait("g", 30, "a progress bar", |s| {
        s.contains("MiB/") && s.contains("eta") && s.contains('[') && s.contains("peers")
    });
    eprintln!("{bar}");
    let done = t.wait("g", 60, "the end", |s| s.contains("EXIT="));
    assert!(done.contains("EXIT=0"), "{done}");
    assert!(done.contains("verified"), "{done}");
    let mut f = Vec::new();
    std::fs::File::open(tmp.path().join("out.bin"))
        .unwrap()
        .read_to_end(&mut f)
        .unwrap();
    assert_eq!(f, data(3, 5_000_000));
}
