//! The lab's tiny network tool, run inside namespaces as `xtask lab _tool …`:
//!
//! * `server --udp ADDR [--tcp ADDR] --lifetime SECS`: a STUN-like reflector. A UDP
//!   `probe` gets back the source address it came from (`mapped`); a `punch` asks it to
//!   send a datagram *from its own socket* to a given address (what a peer does when
//!   hole punching). A TCP connection gets one line with the observed peer address.
//! * `agent --bind ADDR --lifetime SECS`: holds ONE UDP socket and runs commands read
//!   from standard input, one result line each (see [`agent_command`]).
//! * `stun A B SECS`: an RFC 5780 STUN responder for miniupnpd's start-up check (see
//!   `portmap.rs`).
//! * `send ADDR TEXT`: sends one UDP datagram carrying TEXT.
//! * `spray --bind ADDR --file PATH …`: sends the datagrams listed in a file from one UDP
//!   socket and counts the answers (the attacker of `lab spoof`, see `spoof.rs`).
//! * `sysctl KEY VALUE`: writes `/proc/sys/KEY` of the current network namespace.
//!
//! Everything is bounded: each process exits by itself after its lifetime, and every
//! wait has a deadline.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

/// First word of every lab datagram.
const MAGIC: &str = "kithlab1";
/// Most datagrams one wait looks at before giving up.
const MAX_DATAGRAMS_PER_WAIT: usize = 1000;
/// Most commands an agent runs.
const MAX_COMMANDS: usize = 10_000;

/// A lab datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Msg {
    /// Client → server: "what is my address?"
    Probe { nonce: u64 },
    /// Server → client: "I saw you as `addr`".
    Mapped { nonce: u64, addr: SocketAddr },
    /// Anyone → server: "send a `Punched` to `target` from your socket".
    Punch { nonce: u64, target: SocketAddr },
    /// Server → requester: the punch was sent.
    Ok { nonce: u64 },
    /// Server → target of a punch.
    Punched { nonce: u64 },
}

impl Msg {
    /// The datagram text.
    pub(crate) fn encode(&self) -> String {
        match self {
            Msg::Probe { nonce } => format!("{MAGIC} probe {nonce}"),
            Msg::Mapped { nonce, addr } => format!("{MAGIC} mapped {nonce} {addr}"),
            Msg::Punch { nonce, target } => format!("{MAGIC} punch {nonce} {target}"),
            Msg::Ok { nonce } => format!("{MAGIC} ok {nonce}"),
            Msg::Punched { nonce } => format!("{MAGIC} punched {nonce}"),
        }
    }

    /// Parses a datagram; `None` for anything malformed.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Msg> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut w = text.split_whitespace();
        if w.next()? != MAGIC {
            return None;
        }
        let kind = w.next()?;
        let nonce: u64 = w.next()?.parse().ok()?;
        let msg = match kind {
            "probe" => Msg::Probe { nonce },
            "mapped" => Msg::Mapped {
                nonce,
                addr: w.next()?.parse().ok()?,
            },
            "punch" => Msg::Punch {
                nonce,
                target: w.next()?.parse().ok()?,
            },
            "ok" => Msg::Ok { nonce },
            "punched" => Msg::Punched { nonce },
            _ => return None,
        };
        w.next().is_none().then_some(msg)
    }
}

/// Entry point of `xtask lab _tool …`.
pub(crate) fn main(args: &[String]) -> Result<(), String> {
    let (cmd, rest) = args
        .split_first()
        .ok_or("usage: lab _tool <server|agent|stun|send|spray|sysctl> …")?;
    match cmd.as_str() {
        "server" => server(rest),
        "agent" => agent(rest),
        "stun" => super::portmap::stun_main(rest),
        // One UDP datagram carrying TEXT (the relay step's plaintext control).
        "send" => match rest {
            [addr, text] => {
                let to: SocketAddr = addr.parse().map_err(|_| format!("bad address {addr}"))?;
                let any: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
                    .parse()
                    .map_err(|_| "bad bind address".to_string())?;
                let sock = UdpSocket::bind(any).map_err(|e| e.to_string())?;
                sock.send_to(text.as_bytes(), to)
                    .map(|_| ())
                    .map_err(|e| format!("sending to {to}: {e}"))
            }
            _ => Err("usage: lab _tool send ADDR TEXT".into()),
        },
        "spray" => super::spoof::spray_main(rest),
        "sysctl" => match rest {
            [key, value] => {
                let path = format!("/proc/sys/{}", key.replace('.', "/"));
                std::fs::write(&path, value).map_err(|e| format!("{path}: {e}"))
            }
            _ => Err("usage: lab _tool sysctl KEY VALUE".into()),
        },
        other => Err(format!("unknown lab tool {other:?}")),
    }
}

/// Value of `--name` in `args`.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn parse_addr(s: Option<&str>, what: &str) -> Result<SocketAddr, String> {
    let s = s.ok_or_else(|| format!("missing {what}"))?;
    s.parse().map_err(|e| format!("bad {what} {s:?}: {e}"))
}

fn lifetime(args: &[String]) -> Result<Duration, String> {
    let secs: u64 = flag(args, "--lifetime")
        .unwrap_or("120")
        .parse()
        .map_err(|e| format!("bad --lifetime: {e}"))?;
    Ok(Duration::from_secs(secs.clamp(1, 3600)))
}

/// Ends the whole process after `lifetime`, whatever it is blocked on.
fn watchdog(lifetime: Duration) {
    thread::spawn(move || {
        thread::sleep(lifetime);
        eprintln!(
            "lab tool: lifetime of {} s over, exiting",
            lifetime.as_secs()
        );
        std::process::exit(3);
    });
}

fn server(args: &[String]) -> Result<(), String> {
    let lifetime = lifetime(args)?;
    watchdog(lifetime);
    let deadline = Instant::now() + lifetime;
    let udp_addr = parse_addr(flag(args, "--udp"), "--udp address")?;
    let udp = UdpSocket::bind(udp_addr).map_err(|e| format!("bind udp {udp_addr}: {e}"))?;
    if let Some(tcp) = flag(args, "--tcp") {
        let tcp_addr = parse_addr(Some(tcp), "--tcp address")?;
        let listener =
            TcpListener::bind(tcp_addr).map_err(|e| format!("bind tcp {tcp_addr}: {e}"))?;
        thread::spawn(move || tcp_reflector(listener, deadline));
    }
    println!("ready");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    udp.set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        let Ok((n, from)) = udp.recv_from(&mut buf) else {
            continue; // timeout tick
        };
        match Msg::decode(&buf[..n]) {
            Some(Msg::Probe { nonce }) => {
                let reply = Msg::Mapped { nonce, addr: from }.encode();
                let _ = udp.send_to(reply.as_bytes(), from);
            }
            Some(Msg::Punch { nonce, target }) => {
                let _ = udp.send_to(Msg::Punched { nonce }.encode().as_bytes(), target);
                let _ = udp.send_to(Msg::Ok { nonce }.encode().as_bytes(), from);
            }
            _ => {}
        }
    }
    Ok(())
}

/// Answers each TCP connection with one line: `kithlab1 mapped 0 <peer>`.
fn tcp_reflector(listener: TcpListener, deadline: Instant) {
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((mut stream, peer)) => {
                let line = format!(
                    "{}\n",
                    Msg::Mapped {
                        nonce: 0,
                        addr: peer
                    }
                    .encode()
                );
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
                let _ = stream.write_all(line.as_bytes());
            }
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn agent(args: &[String]) -> Result<(), String> {
    let lifetime = lifetime(args)?;
    watchdog(lifetime);
    let bind = parse_addr(flag(args, "--bind").or(Some("0.0.0.0:0")), "--bind address")?;
    let sock = UdpSocket::bind(bind).map_err(|e| format!("bind udp {bind}: {e}"))?;
    let local = sock.local_addr().map_err(|e| e.to_string())?;
    let mut out = std::io::stdout();
    writeln!(out, "local {local}").map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    for line in std::io::stdin().lock().lines().take(MAX_COMMANDS) {
        let line = line.map_err(|e| e.to_string())?;
        if line.trim() == "quit" {
            break;
        }
        let reply = agent_command(&sock, &line);
        writeln!(out, "{reply}").map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Runs one agent command and returns its result line:
///
/// | command                                      | result                          |
/// |----------------------------------------------|---------------------------------|
/// | `probe NONCE SERVER TIMEOUT_MS TRIES`        | `mapped ADDR RTT_US` / `timeout`|
/// | `punch NONCE SERVER TARGET TIMEOUT_MS TRIES` | `ok` / `timeout`                |
/// | `expect NONCE TIMEOUT_MS`                    | `got FROM` / `timeout`          |
/// | `tcp SERVER TIMEOUT_MS`                      | `mapped ADDR` / `error MESSAGE` |
pub(crate) fn agent_command(sock: &UdpSocket, line: &str) -> String {
    let w: Vec<&str> = line.split_whitespace().collect();
    let num = |i: usize| w.get(i).and_then(|s| s.parse::<u64>().ok());
    let addr = |i: usize| w.get(i).and_then(|s| s.parse::<SocketAddr>().ok());
    let ms = |i: usize| num(i).map(|m| Duration::from_millis(m.clamp(1, 30_000)));
    match (w.first().copied(), w.len()) {
        (Some("probe"), 5) => {
            let (Some(nonce), Some(server), Some(timeout), Some(tries)) =
                (num(1), addr(2), ms(3), num(4))
            else {
                return "error bad probe".into();
            };
            let request = Msg::Probe { nonce }.encode();
            for _ in 0..tries.clamp(1, 10) {
                let sent = Instant::now();
                if let Err(e) = sock.send_to(request.as_bytes(), server) {
                    return format!("error send: {e}");
                }
                let got = wait_for(sock, sent + timeout, |m| match m {
                    Msg::Mapped { nonce: n, addr } if n == nonce => Some(addr),
                    _ => None,
                });
                if let Some((mapped, _)) = got {
                    return format!("mapped {mapped} {}", sent.elapsed().as_micros());
                }
            }
            "timeout".into()
        }
        (Some("punch"), 6) => {
            let (Some(nonce), Some(server), Some(target), Some(timeout), Some(tries)) =
                (num(1), addr(2), addr(3), ms(4), num(5))
            else {
                return "error bad punch".into();
            };
            let request = Msg::Punch { nonce, target }.encode();
            for _ in 0..tries.clamp(1, 10) {
                if let Err(e) = sock.send_to(request.as_bytes(), server) {
                    return format!("error send: {e}");
                }
                let got = wait_for(sock, Instant::now() + timeout, |m| {
                    (m == Msg::Ok { nonce }).then_some(())
                });
                if got.is_some() {
                    return "ok".into();
                }
            }
            "timeout".into()
        }
        (Some("expect"), 3) => {
            let (Some(nonce), Some(timeout)) = (num(1), ms(2)) else {
                return "error bad expect".into();
            };
            match wait_for(sock, Instant::now() + timeout, |m| {
                (m == Msg::Punched { nonce }).then_some(())
            }) {
                Some((_, from)) => format!("got {from}"),
                None => "timeout".into(),
            }
        }
        (Some("tcp"), 3) => {
            let (Some(server), Some(timeout)) = (addr(1), ms(2)) else {
                return "error bad tcp".into();
            };
            match tcp_probe(server, timeout) {
                Ok(mapped) => format!("mapped {mapped}"),
                Err(e) => format!("error {e}"),
            }
        }
        _ => format!("error unknown command {line:?}"),
    }
}

/// Receives datagrams until `pick` accepts one or `deadline` passes.
fn wait_for<T>(
    sock: &UdpSocket,
    deadline: Instant,
    pick: impl Fn(Msg) -> Option<T>,
) -> Option<(T, SocketAddr)> {
    let mut buf = [0u8; 512];
    for _ in 0..MAX_DATAGRAMS_PER_WAIT {
        let left = deadline.checked_duration_since(Instant::now())?;
        if left.is_zero() || sock.set_read_timeout(Some(left)).is_err() {
            return None;
        }
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            // Timeout, or an ICMP error reported on the socket: look again until the
            // deadline.
            continue;
        };
        if let Some(v) = Msg::decode(&buf[..n]).and_then(&pick) {
            return Some((v, from));
        }
    }
    None
}

/// Connects to a TCP reflector and reads the address it saw.
fn tcp_probe(server: SocketAddr, timeout: Duration) -> Result<SocketAddr, String> {
    let stream = TcpStream::connect_timeout(&server, timeout).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(stream.take(512))
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    match Msg::decode(line.trim().as_bytes()) {
        Some(Msg::Mapped { addr, .. }) => Ok(addr),
        _ => Err(format!("unexpected reply {line:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_junk_is_rejected() {
        let a: SocketAddr = "203.0.113.16:40000".parse().unwrap();
        for m in [
            Msg::Probe { nonce: 7 },
            Msg::Mapped { nonce: 7, addr: a },
            Msg::Punch {
                nonce: 8,
                target: a,
            },
            Msg::Ok { nonce: 9 },
            Msg::Punched { nonce: 10 },
        ] {
            assert_eq!(Msg::decode(m.encode().as_bytes()), Some(m));
        }
        for junk in [
            "",
            "kithlab1",
            "kithlab2 probe 1",
            "kithlab1 probe x",
            "kithlab1 mapped 1",
            "kithlab1 probe 1 extra",
            "kithlab1 mapped 1 nonsense",
        ] {
            assert_eq!(Msg::decode(junk.as_bytes()), None, "{junk:?}");
        }
        assert_eq!(Msg::decode(&[0xff, 0xfe]), None);
    }

    /// The whole tool over loopback, without root: server thread plus agent commands.
    #[test]
    fn agent_and_reflector_over_loopback() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let server_addr = server.local_addr().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp_addr = listener.local_addr().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        thread::spawn(move || tcp_reflector(listener, deadline));
        thread::spawn(move || {
            server
                .set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let mut buf = [0u8; 512];
            while Instant::now() < deadline {
                let Ok((n, from)) = server.recv_from(&mut buf) else {
                    continue;
                };
                match Msg::decode(&buf[..n]) {
                    Some(Msg::Probe { nonce }) => {
                        let r = Msg::Mapped { nonce, addr: from }.encode();
                        server.send_to(r.as_bytes(), from).unwrap();
                    }
                    Some(Msg::Punch { nonce, target }) => {
                        let p = Msg::Punched { nonce }.encode();
                        server.send_to(p.as_bytes(), target).unwrap();
                        server
                            .send_to(Msg::Ok { nonce }.encode().as_bytes(), from)
                            .unwrap();
                    }
                    _ => {}
                }
            }
        });
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        let me = client.local_addr().unwrap();
        let r = agent_command(&client, &format!("probe 1 {server_addr} 500 3"));
        assert!(r.starts_with(&format!("mapped {me} ")), "{r}");
        let other = UdpSocket::bind("127.0.0.1:0").unwrap();
        let r = agent_command(&other, &format!("punch 2 {server_addr} {me} 500 3"));
        assert_eq!(r, "ok");
        let r = agent_command(&client, "expect 2 500");
        assert_eq!(r, format!("got {server_addr}"));
        assert_eq!(agent_command(&client, "expect 3 50"), "timeout");
        let r = agent_command(&client, &format!("tcp {tcp_addr} 500"));
        assert!(r.starts_with("mapped 127.0.0.1:"), "{r}");
        assert!(agent_command(&client, "bogus").starts_with("error"));
        // Nobody listens there: a bounded timeout, not a hang.
        let dead = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let start = Instant::now();
        assert_eq!(
            agent_command(&client, &format!("probe 4 {dead} 50 2")),
            "timeout"
        );
        assert!(start.elapsed() < Duration::from_secs(2));
    }
}
