//! Helpers shared by the tests that run the `kith` binary.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStderr, Command, Stdio};

pub(crate) const KITH: &str = env!("CARGO_BIN_EXE_kith");

/// A running `kith` process; killed on drop.
pub(crate) struct Proc {
    pub(crate) child: Child,
    /// Its first stdout line.
    pub(crate) first: String,
    /// Its node address (the `this node:` line of stderr).
    pub(crate) addr: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `kith --dir DIR ARGS…`, waits for its first stdout line and its node address.
pub(crate) fn spawn(dir: &Path, args: &[&str]) -> Proc {
    let mut child = Command::new(KITH)
        .arg("--dir")
        .arg(dir)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kith");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("read stdout");
    let mut err = BufReader::new(child.stderr.take().expect("stderr"));
    let addr = node_line(&mut err);
    assert!(!first.trim().is_empty(), "{args:?} printed nothing");
    // Keep draining stderr so the process never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    Proc {
        child,
        first: first.trim().to_owned(),
        addr,
    }
}

fn node_line(err: &mut BufReader<ChildStderr>) -> String {
    let mut l = String::new();
    while err.read_line(&mut l).unwrap_or(0) > 0 {
        if let Some(a) = l.strip_prefix("this node: ") {
            return a.trim().to_owned();
        }
        l.clear();
    }
    panic!("no node address printed");
}
