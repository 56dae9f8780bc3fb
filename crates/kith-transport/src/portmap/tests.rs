//! The client against small gateways on loopback: a PCP server, a NAT-PMP-only server,
//! and a UPnP IGD (SSDP responder + HTTP/SOAP server). No sleeps: every wait is on a
//! channel or a watch, bounded by a timeout.

use super::*;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const EXT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 16);
const WAIT: Duration = Duration::from_secs(10);

fn rng() -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(7)
}

fn config(port: u16) -> Config {
    Config {
        gateway: Some(Ipv4Addr::LOCALHOST),
        request_timeout: Duration::from_millis(500),
        attempts: 2,
        retry_interval: Duration::from_secs(30),
        pcp_port: port,
        ssdp_target: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 9),
        ..Config::default()
    }
}

fn local() -> SocketAddr {
    "127.0.0.1:4000".parse().unwrap()
}

/// What a fake gateway saw: (protocol, internal port, lifetime requested).
type Seen = mpsc::UnboundedReceiver<(Protocol, u16, u32)>;

/// A gateway speaking PCP (or, with `pcp` false, only NAT-PMP) that grants `grant`
/// seconds whatever is asked. `reply` may replace the answer to map requests.
async fn pmp_gateway(pcp: bool, grant: u32, reply: Option<Vec<u8>>) -> (u16, Seen) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = sock.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf = [0u8; 1200];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let req = &buf[..n];
            let answer = if let Some(r) = &reply {
                r.clone()
            } else if req[0] == 2 {
                if !pcp {
                    vec![0, 0x81, 0, 1, 0, 0, 0, 0]
                } else {
                    let (_, internal, suggested, life) =
                        wire::server::parse_pcp_request(req).unwrap();
                    let _ = tx.send((Protocol::Pcp, internal, life));
                    let life = if life == 0 { 0 } else { grant };
                    wire::server::pcp_map_reply(req, 0, (EXT, suggested.max(1)), life)
                }
            } else if req == [0, 0] {
                wire::server::natpmp_external_reply(0, EXT)
            } else {
                let internal = u16::from_be_bytes([req[4], req[5]]);
                let suggested = u16::from_be_bytes([req[6], req[7]]);
                let life = u32::from_be_bytes([req[8], req[9], req[10], req[11]]);
                let _ = tx.send((Protocol::NatPmp, internal, life));
                let (ext, life) = if life == 0 {
                    (0, 0)
                } else {
                    (suggested.max(1), grant)
                };
                wire::server::natpmp_map_reply(0, internal, ext, life)
            };
            let _ = sock.send_to(&answer, from).await;
        }
    });
    (port, rx)
}

async fn next(seen: &mut Seen) -> (Protocol, u16, u32) {
    tokio::time::timeout(WAIT, seen.recv())
        .await
        .unwrap()
        .unwrap()
}

/// The first mapping the mapper publishes (bounded wait).
async fn mapped(mapper: &PortMapper) -> Mapping {
    let mut w = mapper.watch();
    let m = tokio::time::timeout(WAIT, w.wait_for(|m| m.is_some())).await;
    m.unwrap().unwrap().unwrap()
}

#[tokio::test]
async fn pcp_maps_renews_and_deletes() {
    let (port, mut seen) = pmp_gateway(true, 2, None).await;
    let mapper = PortMapper::start(config(port), local());
    let mut w = mapper.watch();
    tokio::time::timeout(WAIT, w.wait_for(|m| m.is_some()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(mapper.external(), Some(SocketAddr::new(EXT.into(), 4000)));
    assert_eq!(mapper.protocol(), Some(Protocol::Pcp));
    assert_eq!(next(&mut seen).await, (Protocol::Pcp, 4000, 7200));
    // Granted 2 s: renewed after 1 s, before it expires.
    let t = Instant::now();
    assert_eq!(next(&mut seen).await, (Protocol::Pcp, 4000, 7200));
    assert!(t.elapsed() < Duration::from_secs(2));
    mapper.shutdown().await;
    assert_eq!(next(&mut seen).await, (Protocol::Pcp, 4000, 0));
}

#[tokio::test]
async fn refresh_asks_the_gateway_again_at_once() {
    // Granted an hour: without refresh the next request would come in 30 minutes.
    let (port, mut seen) = pmp_gateway(true, 3600, None).await;
    let mapper = PortMapper::start(config(port), local());
    let _ = mapped(&mapper).await;
    assert_eq!(next(&mut seen).await, (Protocol::Pcp, 4000, 7200));
    mapper.refresh();
    assert_eq!(next(&mut seen).await, (Protocol::Pcp, 4000, 7200));
    mapper.shutdown().await;
    assert_eq!(next(&mut seen).await, (Protocol::Pcp, 4000, 0));
}

#[tokio::test]
async fn natpmp_fallback_and_delete_on_drop() {
    let (port, mut seen) = pmp_gateway(false, 3600, None).await;
    let mapper = PortMapper::start(config(port), local());
    let mut w = mapper.watch();
    let m = mapped(&mapper).await;
    assert_eq!(m.protocol, Protocol::NatPmp);
    assert_eq!(m.external, SocketAddr::new(EXT.into(), 4000));
    assert_eq!(m.lifetime, Duration::from_secs(3600));
    assert_eq!(next(&mut seen).await, (Protocol::NatPmp, 4000, 7200));
    drop(mapper);
    assert_eq!(next(&mut seen).await, (Protocol::NatPmp, 4000, 0));
    // The watch ends with no mapping.
    tokio::time::timeout(WAIT, w.wait_for(|m| m.is_none()))
        .await
        .unwrap()
        .ok();
}

#[tokio::test]
async fn bad_replies_are_typed_errors() {
    type Check = fn(&PortMapError) -> bool;
    let cases: [(Vec<u8>, Check); 3] = [
        (vec![2, 0x81, 0, 2], |e| {
            matches!(e, PortMapError::Refused(2))
        }),
        (vec![9; 40], |e| matches!(e, PortMapError::BadResponse(_))),
        (vec![2; 1100 + 1], |e| {
            matches!(e, PortMapError::BadResponse(_))
        }),
    ];
    for (reply, check) in cases {
        let (port, _seen) = pmp_gateway(true, 60, Some(reply)).await;
        let c = Config {
            nat_pmp: false,
            upnp: false,
            ..config(port)
        };
        let e = map(&c, local(), &mut rng()).await.unwrap_err();
        assert!(check(&e), "{e:?}");
    }
    // Nobody at the port: a bounded timeout (or the ICMP refusal), not a hang.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let c = Config {
        upnp: false,
        ..config(silent.local_addr().unwrap().port())
    };
    let t = Instant::now();
    let e = map(&c, local(), &mut rng()).await.unwrap_err();
    assert!(matches!(e, PortMapError::Timeout), "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(3));
    let none = Config {
        pcp: false,
        nat_pmp: false,
        upnp: false,
        ..config(1)
    };
    assert!(matches!(
        map(&none, local(), &mut rng()).await,
        Err(PortMapError::NoProtocol)
    ));
    let v6: SocketAddr = "[::1]:4000".parse().unwrap();
    assert!(matches!(
        map(&config(1), v6, &mut rng()).await,
        Err(PortMapError::NotIpv4(_))
    ));
}

/// A UPnP IGD on loopback: returns the SSDP target and a log of SOAP actions.
async fn igd(
    description_padding: usize,
    lease_error: bool,
) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_addr = http.local_addr().unwrap();
    let ssdp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let target = ssdp.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((_, from)) = ssdp.recv_from(&mut buf).await {
            let reply = format!(
                "HTTP/1.1 200 OK\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\
                 LOCATION: http://{http_addr}/rootDesc.xml\r\n\r\n"
            );
            let _ = ssdp.send_to(reply.as_bytes(), from).await;
        }
    });
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = http.accept().await {
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            // Read the headers and the body (Content-Length), bounded.
            while req.len() < 65536 {
                let n = s.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&req);
                if let Some(end) = text.find("\r\n\r\n") {
                    let len: usize = text
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if req.len() >= end + 4 + len {
                        break;
                    }
                }
            }
            let text = String::from_utf8_lossy(&req).to_string();
            let (status, body) = if text.starts_with("GET /rootDesc.xml") {
                let desc = format!(
                    "<root>{}<service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1\
                     </serviceType><controlURL>/ctl/IPConn</controlURL></service></root>",
                    " ".repeat(description_padding)
                );
                (200, desc)
            } else if let Some(action) = text.split("#").nth(1).and_then(|a| a.split('"').next()) {
                let lease = text
                    .split("<NewLeaseDuration>")
                    .nth(1)
                    .and_then(|r| r.split('<').next())
                    .unwrap_or("-");
                let port = text
                    .split("<NewExternalPort>")
                    .nth(1)
                    .and_then(|r| r.split('<').next())
                    .unwrap_or("-");
                log2.lock()
                    .unwrap()
                    .push(format!("{action} {port} {lease}"));
                match action {
                    "GetExternalIPAddress" => (
                        200,
                        format!("<u:R><NewExternalIPAddress>{EXT}</NewExternalIPAddress></u:R>"),
                    ),
                    "AddPortMapping" if lease_error && lease != "0" => (
                        500,
                        "<s:Fault><detail><UPnPError><errorCode>725</errorCode></UPnPError></detail></s:Fault>".into(),
                    ),
                    _ => (200, "<ok/>".into()),
                }
            } else {
                (404, String::new())
            };
            let resp = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        }
    });
    (target, log)
}

#[tokio::test]
async fn upnp_maps_and_deletes() {
    for permanent_only in [false, true] {
        let (target, log) = igd(0, permanent_only).await;
        // PCP/NAT-PMP port silent (a socket nobody answers on).
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let c = Config {
            ssdp_target: target,
            request_timeout: Duration::from_millis(200),
            attempts: 1,
            ..config(silent.local_addr().unwrap().port())
        };
        let mapper = PortMapper::start(c, local());
        let m = mapped(&mapper).await;
        assert_eq!(m.protocol, Protocol::Upnp);
        assert_eq!(m.external, SocketAddr::new(EXT.into(), 4000));
        mapper.shutdown().await;
        let log = log.lock().unwrap().clone();
        let mut want = vec!["GetExternalIPAddress - -", "AddPortMapping 4000 7200"];
        if permanent_only {
            want.push("AddPortMapping 4000 0");
        }
        want.push("DeletePortMapping 4000 -");
        assert_eq!(log, want);
    }
}

#[tokio::test]
async fn oversized_upnp_description_is_refused() {
    let (target, log) = igd(MAX_HTTP_RESPONSE, false).await;
    let c = Config {
        pcp: false,
        nat_pmp: false,
        ssdp_target: target,
        ..config(1)
    };
    let e = map(&c, local(), &mut rng()).await.unwrap_err();
    assert!(
        matches!(e, PortMapError::TooLarge(MAX_HTTP_RESPONSE)),
        "{e:?}"
    );
    assert!(log.lock().unwrap().is_empty());
}

#[test]
fn proc_net_route() {
    let text = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
    let want = if cfg!(target_endian = "little") {
        Ipv4Addr::new(192, 0, 2, 1)
    } else {
        Ipv4Addr::new(1, 2, 0, 192)
    };
    assert_eq!(parse_proc_route(text), Some(want));
    assert_eq!(parse_proc_route("Iface\n"), None);
}

#[tokio::test]
async fn endpoint_offers_mapping_and_removes_it_on_close() {
    let (port, mut seen) = pmp_gateway(true, 3600, None).await;
    let key = kith_core::SecretKey::from_bytes(&[5; 32]);
    let config = crate::EndpointConfig {
        port_mapping: Some(config(port)),
        ..crate::EndpointConfig::loopback()
    };
    let ep = crate::Endpoint::bind(key, config).await.unwrap();
    let local = ep.local_addrs()[0];
    assert_eq!(next(&mut seen).await, (Protocol::Pcp, local.port(), 7200));
    let mut w = ep.watch_port_mapping().unwrap();
    let mapping = tokio::time::timeout(WAIT, w.wait_for(|m| m.is_some())).await;
    let mapping = mapping.unwrap().unwrap().unwrap();
    let external = SocketAddr::new(EXT.into(), local.port());
    assert_eq!(mapping.external, external);
    assert_eq!(ep.port_mapping(), Some(mapping));
    assert!(ep.node_addr().direct.contains(&external));
    assert!(ep.candidates().0.contains(&external));
    ep.close().await;
    assert_eq!(next(&mut seen).await, (Protocol::Pcp, local.port(), 0));
    assert_eq!(ep.port_mapping(), None);
}
