//! UPnP-IGD client: SSDP discovery, the device description, and the SOAP actions
//! `GetExternalIPAddress`, `AddPortMapping` and `DeletePortMapping` of
//! `WANIPConnection` (v1 or v2) or `WANPPPConnection:1`.
//!
//! Everything read from the network is capped before it is parsed: SSDP replies (count
//! and size), HTTP responses (total size, including headers), and the parsers below are
//! pure functions on those bounded slices. Only `http://<IPv4 literal>[:port]/path` URLs
//! are followed, so no name is ever resolved and no other scheme is spoken.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::PortMapError;

/// Largest SSDP reply read; a longer datagram is ignored.
pub const MAX_SSDP_REPLY: usize = 2048;
/// Most SSDP replies examined per discovery.
pub const MAX_SSDP_REPLIES: usize = 16;
/// Largest HTTP response (headers and body) read from the gateway.
pub const MAX_HTTP_RESPONSE: usize = 64 * 1024;

const IGD: &str = "urn:schemas-upnp-org:device:InternetGatewayDevice:1";
const SERVICES: [&str; 3] = [
    "urn:schemas-upnp-org:service:WANIPConnection:2",
    "urn:schemas-upnp-org:service:WANIPConnection:1",
    "urn:schemas-upnp-org:service:WANPPPConnection:1",
];
/// UPnP error 725: the gateway only accepts leases of duration 0 (permanent).
pub(crate) const ONLY_PERMANENT_LEASES: u16 = 725;
/// UPnP error 718: the external port is taken by another mapping.
pub(crate) const CONFLICT: u16 = 718;

/// An `http://` URL whose host is an IPv4 literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpUrl {
    pub(crate) addr: SocketAddr,
    pub(crate) path: String,
}

/// Parses `http://a.b.c.d[:port][/path]`; anything else is `None`.
pub(crate) fn parse_url(s: &str) -> Option<HttpUrl> {
    let rest = s.trim().strip_prefix("http://")?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = match host.parse::<SocketAddrV4>() {
        Ok(a) => a,
        Err(_) => SocketAddrV4::new(host.parse::<Ipv4Addr>().ok()?, 80),
    };
    if path.len() > 1024 || path.bytes().any(|c| c.is_ascii_control() || c == b' ') {
        return None;
    }
    Some(HttpUrl {
        addr: addr.into(),
        path: path.to_string(),
    })
}

/// The `LOCATION` of an SSDP reply that announces an IGD (or a WAN connection service).
pub(crate) fn parse_ssdp_reply(b: &[u8]) -> Option<HttpUrl> {
    let text = std::str::from_utf8(b).ok()?;
    let mut lines = text.split("\r\n");
    if !lines.next()?.starts_with("HTTP/1.1 200") {
        return None;
    }
    let mut location = None;
    let mut relevant = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "location" => location = parse_url(value),
            "st" => {
                relevant = value == IGD || SERVICES.contains(&value);
            }
            _ => {}
        }
    }
    if relevant { location } else { None }
}

/// Splits an HTTP/1.x response into its status code and body (`Content-Length` or up to
/// the end; chunked transfer coding is decoded).
pub(crate) fn parse_http_response(b: &[u8]) -> Result<(u16, Vec<u8>), PortMapError> {
    let bad = |why: &'static str| PortMapError::BadResponse(why);
    let end = b
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(bad("HTTP response without end of headers"))?;
    let head = std::str::from_utf8(&b[..end]).map_err(|_| bad("HTTP headers not UTF-8"))?;
    let body = &b[end + 4..];
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.strip_prefix("HTTP/1."))
        .and_then(|l| l.get(2..5))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or(bad("bad HTTP status line"))?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim().to_ascii_lowercase();
            let value = value.trim();
            if name == "content-length" {
                length = Some(
                    value
                        .parse::<usize>()
                        .map_err(|_| bad("bad Content-Length"))?,
                );
            } else if name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
                chunked = true;
            }
        }
    }
    let body = if chunked {
        dechunk(body).ok_or(bad("bad chunked body"))?
    } else if let Some(n) = length {
        body.get(..n)
            .ok_or(bad("HTTP body shorter than Content-Length"))?
            .to_vec()
    } else {
        body.to_vec()
    };
    Ok((status, body))
}

/// Decodes a chunked body (already bounded by the caller's read cap).
fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    // Each round consumes at least the size line, so this ends within b.len() rounds.
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..eol]).ok()?;
        let size_text = size_text.split(';').next()?.trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// The text between `<tag>` and `</tag>` (ignoring a namespace prefix on the tag).
fn element<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let mut from = 0;
    while let Some(i) = xml[from..].find('<') {
        let start = from + i + 1;
        let name_end = start + xml[start..].find('>')?;
        let name = &xml[start..name_end];
        let local = name.rsplit(':').next().unwrap_or(name);
        if local == tag {
            let body = &xml[name_end + 1..];
            let close = body.find("</")?;
            return Some(body[..close].trim());
        }
        from = name_end;
    }
    None
}

/// The service type and control URL of the first WAN connection service in a device
/// description, most capable first (WANIPConnection:2, :1, then WANPPPConnection:1).
pub(crate) fn find_control_url(xml: &str, base: &HttpUrl) -> Option<(&'static str, HttpUrl)> {
    let mut best: Option<(usize, HttpUrl)> = None;
    let mut rest = xml;
    // Each round moves past one `</service>`, so this ends.
    while let Some(open) = rest.find("<service>") {
        let after = &rest[open + 9..];
        let close = after.find("</service>")?;
        let block = &after[..close];
        rest = &after[close + 10..];
        let Some(kind) = element(block, "serviceType") else {
            continue;
        };
        let Some(rank) = SERVICES.iter().position(|s| *s == kind) else {
            continue;
        };
        let Some(control) = element(block, "controlURL") else {
            continue;
        };
        let url = if control.starts_with('/') {
            HttpUrl {
                addr: base.addr,
                path: control.to_string(),
            }
        } else {
            match parse_url(control) {
                Some(u) => u,
                None => continue,
            }
        };
        if best.as_ref().is_none_or(|(r, _)| rank < *r) {
            best = Some((rank, url));
        }
    }
    best.map(|(rank, url)| (SERVICES[rank], url))
}

/// The UPnP error code of a SOAP fault, if the body has one.
pub(crate) fn soap_error_code(xml: &str) -> Option<u16> {
    element(xml, "errorCode")?.parse().ok()
}

/// Sends an M-SEARCH from `local` to `target` and returns the first usable `LOCATION`,
/// waiting at most `wait` and examining at most [`MAX_SSDP_REPLIES`] replies.
pub(crate) async fn discover(
    local: Ipv4Addr,
    target: SocketAddr,
    wait: Duration,
) -> Result<HttpUrl, PortMapError> {
    let sock = UdpSocket::bind(SocketAddr::new(local.into(), 0)).await?;
    let search = format!(
        "M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nST: {IGD}\r\n\
         MAN: \"ssdp:discover\"\r\nMX: 1\r\n\r\n"
    );
    sock.send_to(search.as_bytes(), target).await?;
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = [0u8; MAX_SSDP_REPLY + 1];
    for _ in 0..MAX_SSDP_REPLIES {
        let Ok(r) = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await else {
            break;
        };
        let (n, _from) = r?;
        if n > MAX_SSDP_REPLY {
            continue;
        }
        if let Some(url) = parse_ssdp_reply(&buf[..n]) {
            return Ok(url);
        }
    }
    Err(PortMapError::NoGateway)
}

/// One HTTP/1.1 request with `Connection: close`; reads at most [`MAX_HTTP_RESPONSE`]
/// bytes, all within `timeout`.
pub(crate) async fn http(
    url: &HttpUrl,
    method: &str,
    extra_headers: &str,
    body: &str,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), PortMapError> {
    let exchange = async {
        let mut stream = TcpStream::connect(url.addr).await?;
        let req = format!(
            "{method} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
             Content-Length: {}\r\n{extra_headers}\r\n{body}",
            url.path,
            url.addr,
            body.len()
        );
        stream.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        let n = (&mut stream)
            .take(MAX_HTTP_RESPONSE as u64 + 1)
            .read_to_end(&mut buf)
            .await?;
        if n > MAX_HTTP_RESPONSE {
            return Err(PortMapError::TooLarge(MAX_HTTP_RESPONSE));
        }
        parse_http_response(&buf)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| PortMapError::Timeout)?
}

/// Calls a SOAP action on `control`; a fault becomes [`PortMapError::Upnp`].
pub(crate) async fn soap(
    control: &HttpUrl,
    service: &str,
    action: &str,
    args: &str,
    timeout: Duration,
) -> Result<String, PortMapError> {
    let body = format!(
        "<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" \
         s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body>\
         <u:{action} xmlns:u=\"{service}\">{args}</u:{action}></s:Body></s:Envelope>\r\n"
    );
    let headers = format!(
        "Content-Type: text/xml; charset=\"utf-8\"\r\nSOAPAction: \"{service}#{action}\"\r\n"
    );
    let (status, body) = http(control, "POST", &headers, &body, timeout).await?;
    let text =
        String::from_utf8(body).map_err(|_| PortMapError::BadResponse("SOAP body not UTF-8"))?;
    if status == 200 {
        return Ok(text);
    }
    Err(PortMapError::Upnp(soap_error_code(&text).unwrap_or(status)))
}

/// A WAN connection service found on a gateway.
#[derive(Debug, Clone)]
pub(crate) struct Igd {
    pub(crate) service: &'static str,
    pub(crate) control: HttpUrl,
}

impl Igd {
    /// Fetches the description at `location` and picks the WAN connection service.
    pub(crate) async fn from_location(
        location: &HttpUrl,
        timeout: Duration,
    ) -> Result<Self, PortMapError> {
        let (status, body) = http(location, "GET", "", "", timeout).await?;
        if status != 200 {
            return Err(PortMapError::BadResponse("device description not found"));
        }
        let xml = std::str::from_utf8(&body)
            .map_err(|_| PortMapError::BadResponse("device description not UTF-8"))?;
        let (service, control) = find_control_url(xml, location)
            .ok_or(PortMapError::BadResponse("no WAN connection service"))?;
        Ok(Self { service, control })
    }

    pub(crate) async fn external_ip(&self, timeout: Duration) -> Result<Ipv4Addr, PortMapError> {
        let xml = soap(
            &self.control,
            self.service,
            "GetExternalIPAddress",
            "",
            timeout,
        )
        .await?;
        element(&xml, "NewExternalIPAddress")
            .and_then(|s| s.parse().ok())
            .ok_or(PortMapError::BadResponse("no external IPv4 address"))
    }

    pub(crate) async fn add(
        &self,
        external: u16,
        client: SocketAddrV4,
        lease_secs: u32,
        timeout: Duration,
    ) -> Result<(), PortMapError> {
        let args = format!(
            "<NewRemoteHost></NewRemoteHost><NewExternalPort>{external}</NewExternalPort>\
             <NewProtocol>UDP</NewProtocol><NewInternalPort>{}</NewInternalPort>\
             <NewInternalClient>{}</NewInternalClient><NewEnabled>1</NewEnabled>\
             <NewPortMappingDescription>kith</NewPortMappingDescription>\
             <NewLeaseDuration>{lease_secs}</NewLeaseDuration>",
            client.port(),
            client.ip()
        );
        soap(
            &self.control,
            self.service,
            "AddPortMapping",
            &args,
            timeout,
        )
        .await?;
        Ok(())
    }

    pub(crate) async fn delete(
        &self,
        external: u16,
        timeout: Duration,
    ) -> Result<(), PortMapError> {
        let args = format!(
            "<NewRemoteHost></NewRemoteHost><NewExternalPort>{external}</NewExternalPort>\
             <NewProtocol>UDP</NewProtocol>"
        );
        soap(
            &self.control,
            self.service,
            "DeletePortMapping",
            &args,
            timeout,
        )
        .await?;
        Ok(())
    }
}

/// Every parser on `data`: for the fuzz target.
pub(crate) fn fuzz(data: &[u8]) {
    let _ = parse_ssdp_reply(data);
    if let Ok((_, body)) = parse_http_response(data) {
        if let Ok(xml) = std::str::from_utf8(&body) {
            let base = HttpUrl {
                addr: SocketAddr::new(Ipv4Addr::new(192, 0, 2, 1).into(), 80),
                path: "/".into(),
            };
            let _ = find_control_url(xml, &base);
            let _ = soap_error_code(xml);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DESC: &str = r#"<?xml version="1.0"?><root><device><serviceList>
<service><serviceType>urn:schemas-upnp-org:service:Layer3Forwarding:1</serviceType><controlURL>/l3f</controlURL></service>
</serviceList><deviceList><device><deviceList><device><serviceList>
<service><serviceType>urn:schemas-upnp-org:service:WANPPPConnection:1</serviceType><controlURL>/ppp</controlURL></service>
<service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType><controlURL>/ctl/IPConn</controlURL></service>
</serviceList></device></deviceList></device></deviceList></device></root>"#;

    #[test]
    fn urls() {
        let u = parse_url("http://192.0.2.1:2189/rootDesc.xml").unwrap();
        assert_eq!(u.addr, "192.0.2.1:2189".parse().unwrap());
        assert_eq!(u.path, "/rootDesc.xml");
        assert_eq!(parse_url("http://192.0.2.1").unwrap().addr.port(), 80);
        assert_eq!(parse_url("https://192.0.2.1/"), None);
        assert_eq!(parse_url("http://router.example/x"), None);
        assert_eq!(parse_url("http://192.0.2.1/a b"), None);
    }

    #[test]
    fn ssdp_reply() {
        let r = format!(
            "HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nST: {IGD}\r\n\
             Location: http://192.0.2.1:5000/rootDesc.xml\r\n\r\n"
        );
        assert_eq!(parse_ssdp_reply(r.as_bytes()).unwrap().addr.port(), 5000);
        let other = r.replace(IGD, "upnp:rootdevice");
        assert_eq!(parse_ssdp_reply(other.as_bytes()), None);
    }

    #[test]
    fn description_picks_wan_ip_connection() {
        let base = parse_url("http://192.0.2.1:5000/rootDesc.xml").unwrap();
        let (kind, url) = find_control_url(DESC, &base).unwrap();
        assert_eq!(kind, SERVICES[1]);
        assert_eq!(url.path, "/ctl/IPConn");
        assert_eq!(url.addr, base.addr);
        assert!(find_control_url("<root><service></root>", &base).is_none());
    }

    #[test]
    fn http_responses() {
        let (s, b) =
            parse_http_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA").unwrap();
        assert_eq!((s, b.as_slice()), (200, &b"ok"[..]));
        let (_, b) = parse_http_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n1;x=y\r\nc\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(b, b"abc");
        assert!(parse_http_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort").is_err());
        let fault = "<s:Envelope><s:Body><s:Fault><detail><UPnPError><errorCode>718</errorCode>\
                     </UPnPError></detail></s:Fault></s:Body></s:Envelope>";
        assert_eq!(soap_error_code(fault), Some(CONFLICT));
        assert_eq!(
            element(
                "<a:NewExternalIPAddress>203.0.113.16</a:NewExternalIPAddress>",
                "NewExternalIPAddress"
            ),
            Some("203.0.113.16")
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, rng_seed: proptest::test_runner::RngSeed::Fixed(0x75706e70), ..ProptestConfig::default() })]

        #[test]
        fn parsers_never_panic(b in proptest::collection::vec(any::<u8>(), 0..600), s in "[<>/a-zA-Z:\\r\\n 0-9]{0,300}") {
            let base = parse_url("http://192.0.2.1/").unwrap();
            let _ = parse_ssdp_reply(&b);
            let _ = parse_http_response(&b);
            let _ = find_control_url(&s, &base);
            let _ = soap_error_code(&s);
            let _ = parse_url(&s);
            let mut framed = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            framed.extend_from_slice(s.as_bytes());
            let _ = parse_http_response(&framed);
        }
    }
}
