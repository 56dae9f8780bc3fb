//! The HTTP gateway, rule by rule, over a raw TCP client (so malformed and hostile
//! requests can be sent exactly as written).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Node, swarm, swarm_with, trace, write_site};
use kith_core::SecretKey;
use kith_core::mem::MemNetwork;
use kith_share::{ProviderLimits, ShareConfig};
use kith_site::{Gateway, GatewayConfig, Lookup, SiteName, SitesConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Splits a response into status, headers and body.
fn parse(raw: &[u8]) -> Resp {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = std::str::from_utf8(&raw[..end]).expect("utf-8 head");
    let mut lines = head.split("\r\n");
    let status = lines.next().expect("status line")[9..12]
        .parse()
        .expect("status");
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(':').expect("header");
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    Resp {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    }
}

/// Sends `request` as written and reads the answer until the server closes.
async fn raw(addr: SocketAddr, request: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
        .await
        .expect("answer in time")
        .expect("read");
    parse(&out)
}

async fn request(addr: SocketAddr, method: &str, host: &str, path: &str, extra: &str) -> Resp {
    let req =
        format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n");
    raw(addr, req.as_bytes()).await
}

struct Fixture {
    nodes: Vec<Node>,
    gateway: Gateway,
    name: SiteName,
    host: String,
    big: Vec<u8>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn addr(&self) -> SocketAddr {
        self.gateway.local_addr()
    }
    async fn get(&self, path: &str, extra: &str) -> Resp {
        request(self.addr(), "GET", &self.host, path, extra).await
    }
}

const INDEX: &[u8] = b"<!doctype html><h1>home</h1>";
const CSS: &[u8] = b"h1 { color: red }";

/// Four nodes; node 0 publishes a small site (plus `big_len` bytes of big.bin); a
/// gateway runs on node 3, which has never seen the site.
async fn fixture(seed: u8, big_len: usize, rate: Option<u64>) -> Fixture {
    trace();
    let net = MemNetwork::new();
    let nodes = swarm_with(&net, 4, seed, SitesConfig::default(), |i| {
        let mut c = ShareConfig::default();
        if i == 0 {
            let mut l = ProviderLimits::default();
            l.upload_rate_per_peer = rate;
            c.limits = l;
        }
        c
    })
    .await;
    let dir = tempfile::tempdir().expect("tmp");
    let big: Vec<u8> = (0..big_len as u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    write_site(
        dir.path(),
        &[
            ("index.html", INDEX),
            ("style.css", CSS),
            ("about/index.html", b"<p>about</p>"),
            ("with space.txt", b"spaced"),
            ("big.bin", &big),
        ],
    );
    let key = SecretKey::from_bytes(&[seed; 32]);
    let published = nodes[0]
        .sites
        .publish(&key, dir.path())
        .await
        .expect("publish");
    let gateway = Gateway::bind(
        nodes[3].sites.clone(),
        "127.0.0.1:0".parse().expect("addr"),
        GatewayConfig::default(),
    )
    .await
    .expect("bind");
    let name = published.record.name;
    let host = format!("{name}.localhost:{}", gateway.local_addr().port());
    Fixture {
        nodes,
        gateway,
        name,
        host,
        big,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_served_with_type_etag_and_revalidation() {
    let f = fixture(50, 1000, None).await;
    let r = f.get("/", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, INDEX);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    let etag = r.header("etag").expect("etag").to_owned();
    assert_eq!(etag, format!("\"{}\"", blake3::hash(INDEX).to_hex()));

    let r = f.get("/style.css", "").await;
    assert_eq!((r.status, r.body.as_slice()), (200, CSS));
    assert_eq!(r.header("content-type"), Some("text/css; charset=utf-8"));
    let r = f.get("/with%20space.txt", "").await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"spaced"[..]));

    // Revalidation: the same ETag gets 304 and no body; another gets the file.
    let r = f.get("/", &format!("If-None-Match: {etag}\r\n")).await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    let r = f.get("/", "If-None-Match: \"other\"\r\n").await;
    assert_eq!(r.status, 200);

    // HEAD: the same head, no body.
    let r = request(f.addr(), "HEAD", &f.host, "/style.css", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-length"),
        Some(CSS.len().to_string().as_str())
    );
    assert!(r.body.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directories_redirects_and_not_found() {
    let f = fixture(51, 1000, None).await;
    let port = f.addr().port();
    let r = f.get("/about?x=1", "").await;
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("/about/?x=1"));
    let r = f.get("/about/", "").await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"<p>about</p>"[..]));
    let r = f.get("/missing.html", "").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(String::from_utf8_lossy(&r.body).contains("404"));

    // The gateway's own origin: an index, and /site/<name>/… sends to the site's origin.
    let gw = format!("localhost:{port}");
    let r = request(f.addr(), "GET", &gw, "/", "").await;
    assert_eq!(r.status, 200);
    let r = request(
        f.addr(),
        "GET",
        &gw,
        &format!("/site/{}/about/?q=1", f.name),
        "",
    )
    .await;
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location"),
        Some(format!("http://{}.localhost:{port}/about/?q=1", f.name).as_str())
    );
    let r = request(
        f.addr(),
        "GET",
        &format!("127.0.0.1:{port}"),
        &format!("/site/{}", f.name),
        "",
    )
    .await;
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location"),
        Some(format!("http://{}.localhost:{port}/", f.name).as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_byte_ranges() {
    let f = fixture(52, 100_000, None).await;
    let len = f.big.len();
    let r = f.get("/big.bin", "Range: bytes=10-19\r\n").await;
    assert_eq!(r.status, 206);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 10-19/{len}").as_str())
    );
    assert_eq!(r.body, &f.big[10..20]);
    let r = f.get("/big.bin", "Range: bytes=-5\r\n").await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &f.big[len - 5..]);
    let r = f.get("/big.bin", "Range: bytes=40000-\r\n").await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &f.big[40000..]);
    let r = f.get("/big.bin", &format!("Range: bytes={len}-\r\n")).await;
    assert_eq!(r.status, 416);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{len}").as_str())
    );
    // Several ranges: served whole (RFC 9110 lets a server ignore Range).
    let r = f.get("/big.bin", "Range: bytes=0-1,5-6\r\n").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, f.big);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_refused() {
    let f = fixture(53, 1000, None).await;
    let port = f.addr().port();
    // DNS rebinding: another name, or another port, is not this gateway.
    for host in [
        format!("evil.example:{port}"),
        format!("{}.evil.example:{port}", f.name),
        format!("localhost:{}", port.wrapping_add(1)),
        format!("notasite.localhost:{port}"),
        "localhost".to_owned(),
    ] {
        let r = request(f.addr(), "GET", &host, "/", "").await;
        assert_eq!(r.status, 421, "{host}");
    }
    // No Host at all (HTTP/1.0).
    let r = raw(f.addr(), b"GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(r.status, 421);
    // Methods other than GET and HEAD.
    let r = request(f.addr(), "POST", &f.host, "/", "Content-Length: 0\r\n").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    // Traversal, raw or encoded, and encoded separators.
    for path in [
        "/../index.html",
        "/about/%2e%2e/index.html",
        "/a%2fb",
        "/a%5cb",
        "/%00",
    ] {
        let r = f.get(path, "").await;
        assert_eq!(r.status, 400, "{path}");
    }
    // A request head over the cap.
    let fat = format!("X-Fat: {}\r\n", "a".repeat(20 * 1024));
    let r = f.get("/", &fat).await;
    assert_eq!(r.status, 431);
    // A site name nobody published.
    let stranger = SiteName::of(&SecretKey::from_bytes(&[7; 32]));
    let r = request(
        f.addr(),
        "GET",
        &format!("{stranger}.localhost:{port}"),
        "/",
        "",
    )
    .await;
    assert_eq!(r.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_urls_are_content_addressed_and_immutable() {
    let f = fixture(54, 1000, None).await;
    // Open the site so the gateway's node has its files.
    let site = f.nodes[3].sites.open(f.name).await.expect("open");
    site.wait_complete().await.expect("complete");
    let gw = format!("localhost:{}", f.addr().port());
    let hash = blake3::hash(CSS).to_hex();
    let r = request(f.addr(), "GET", &gw, &format!("/blob/{hash}"), "").await;
    assert_eq!((r.status, r.body.as_slice()), (200, CSS));
    assert_eq!(
        r.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    let r = request(
        f.addr(),
        "GET",
        &gw,
        &format!("/blob/{}", blake3::hash(b"none").to_hex()),
        "",
    )
    .await;
    assert_eq!(r.status, 404);
    let r = request(f.addr(), "GET", &gw, "/blob/xyz", "").await;
    assert_eq!(r.status, 400);
}

/// Reads a response head, then waits for the first `n` body bytes.
async fn head_and_first_bytes(s: &mut TcpStream, n: usize) -> (Resp, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let k = tokio::time::timeout(Duration::from_secs(30), s.read(&mut chunk))
            .await
            .expect("in time")
            .expect("read");
        assert!(k > 0, "closed early");
        buf.extend_from_slice(&chunk[..k]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            if buf.len() >= end + 4 + n {
                let r = parse(&buf);
                return (r, buf[end + 4..].to_vec());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_files_stream_as_they_are_verified_and_ranges_come_first() {
    // 4 MiB from a publisher that sends 1 MiB/s: the whole file takes about 4 s.
    let f = fixture(55, 4 << 20, Some(1 << 20)).await;
    let len = f.big.len();
    let store = f.nodes[3].sites.share().store().clone();
    let hash = kith_store::Hash::from(*blake3::hash(&f.big).as_bytes());
    let complete = || {
        store
            .status(hash)
            .expect("status")
            .is_some_and(|s| s.bitfield.is_complete())
    };

    // A range near the end is answered while most of the file is still missing: the
    // download's playhead moved there.
    let tail = len - 64 * 1024;
    let r = f
        .get("/big.bin", &format!("Range: bytes={tail}-\r\n"))
        .await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &f.big[tail..]);
    assert!(!complete(), "the range waited for the whole file");

    // The first bytes of the whole file go out before the file is here.
    let mut s = TcpStream::connect(f.addr()).await.expect("connect");
    let req = format!(
        "GET /big.bin HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        f.host
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let (head, first) = head_and_first_bytes(&mut s, 16 * 1024).await;
    assert_eq!(head.status, 200);
    assert!(!complete(), "the first bytes waited for the whole file");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut rest))
        .await
        .expect("in time")
        .expect("read");
    let mut body = first;
    body.extend_from_slice(&rest);
    assert_eq!(body.len(), len);
    assert!(body == f.big, "streamed bytes differ");
    assert!(complete());
    let site = f.nodes[3].sites.current(f.name).expect("followed");
    assert!(matches!(site.lookup("big.bin"), Lookup::File(..)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_site_is_not_found_without_a_gateway_too() {
    // The library answer behind the gateway's 404.
    let net = MemNetwork::new();
    let nodes = swarm(&net, 3, 60, SitesConfig::default()).await;
    let stranger = SiteName::of(&SecretKey::from_bytes(&[8; 32]));
    assert!(matches!(
        nodes[2].sites.open(stranger).await,
        Err(kith_site::OpenError::NotFound(n)) if n == stranger
    ));
}
