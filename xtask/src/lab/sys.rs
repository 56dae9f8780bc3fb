//! Running the system tools (`ip`, `nft`, `tc`) with a time limit, and checking that
//! they and root privileges are there.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long one `ip`/`nft`/`tc` invocation may take.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);

/// A command line to run, with optional standard input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cmd {
    /// Program name or path.
    pub(crate) program: String,
    /// Arguments.
    pub(crate) args: Vec<String>,
    /// Text fed to standard input (`nft -f -`).
    pub(crate) stdin: Option<String>,
}

impl Cmd {
    /// `program args…`.
    pub(crate) fn new<I, S>(program: &str, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Cmd {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            stdin: None,
        }
    }

    /// The same command, fed `input` on standard input.
    pub(crate) fn input(mut self, input: String) -> Cmd {
        self.stdin = Some(input);
        self
    }

    /// Shell-like rendering for messages.
    pub(crate) fn display(&self) -> String {
        let mut s = self.program.clone();
        for a in &self.args {
            s.push(' ');
            s.push_str(a);
        }
        if self.stdin.is_some() {
            s.push_str(" <<rules");
        }
        s
    }

    /// Runs the command to completion within [`COMMAND_TIMEOUT`]; returns its standard
    /// output, or an error naming the command and quoting its standard error.
    pub(crate) fn run(&self) -> Result<String, String> {
        run_with_timeout(self, COMMAND_TIMEOUT)
    }
}

/// Runs `cmd`, killing it after `timeout`.
fn run_with_timeout(cmd: &Cmd, timeout: Duration) -> Result<String, String> {
    let mut child = Command::new(&cmd.program)
        .args(&cmd.args)
        .stdin(if cmd.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("`{}`: cannot run {}: {e}", cmd.display(), cmd.program))?;
    if let (Some(text), Some(mut stdin)) = (&cmd.stdin, child.stdin.take()) {
        // Small inputs only (rule sets): fits the pipe buffer, no deadlock.
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| format!("`{}`: writing stdin: {e}", cmd.display()))?;
    }
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!(
                    "`{}` did not finish within {} s",
                    cmd.display(),
                    timeout.as_secs()
                ));
            }
            Ok(None) => thread::sleep(Duration::from_millis(2)),
            Err(e) => break Err(format!("`{}`: waiting: {e}", cmd.display())),
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    let status = status?;
    if status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "`{}` failed ({status}): {}",
            cmd.display(),
            stderr.trim()
        ))
    }
}

/// Checks for root and for the `ip`, `tc` and `nft` binaries; the error says what is
/// missing and how to install it.
pub(crate) fn require_tools() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status (is this Linux?): {e}"))?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    if euid != "0" {
        return Err(format!(
            "the NAT lab needs root (network namespaces, nftables); effective uid is {euid}"
        ));
    }
    let tools = [
        ("ip", "-V", "iproute2"),
        ("tc", "-V", "iproute2"),
        ("nft", "--version", "nftables"),
    ];
    let mut missing = vec![];
    for (tool, flag, package) in tools {
        if Cmd::new(tool, [flag]).run().is_err() {
            missing.push(format!("`{tool}` (Debian package {package})"));
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the NAT lab needs {}; install with `apt-get install -y iproute2 nftables`",
            missing.join(", ")
        ))
    }
}

/// Whether an executable called `tool` is on `PATH` (optional lab tools: coturn,
/// tcpdump).
pub(crate) fn have(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path)
            .any(|dir| std::fs::metadata(dir.join(tool)).is_ok_and(|m| m.is_file()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_commands_report_the_command_and_stderr() {
        let err = Cmd::new("sh", ["-c", "echo oops >&2; exit 3"])
            .run()
            .unwrap_err();
        assert!(err.contains("sh -c"), "{err}");
        assert!(err.contains("oops"), "{err}");
        let out = Cmd::new("cat", Vec::<String>::new())
            .input("hello".into())
            .run()
            .unwrap();
        assert_eq!(out, "hello");
    }

    #[test]
    fn slow_commands_are_killed() {
        let start = Instant::now();
        let err =
            run_with_timeout(&Cmd::new("sleep", ["5"]), Duration::from_millis(100)).unwrap_err();
        assert!(err.contains("did not finish"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(3));
    }
}
