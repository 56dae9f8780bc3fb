//! The local HTTP gateway: browse sites in an ordinary browser.
//!
//! Each site is its own web origin, `http://<name>.localhost:<port>/`, so one site cannot
//! read another's cookies or storage (browsers resolve `*.localhost` to loopback). The
//! gateway's own origin (`localhost`, `127.0.0.1` or `[::1]` with its port) answers
//! `/site/<name>/…` with a redirect to the site's origin and `/blob/<hash>` with a
//! content-addressed blob (cached as immutable). Any other Host is refused with 421, so
//! a web page whose DNS name rebinds to 127.0.0.1 cannot read through the gateway.
//!
//! Files are streamed as their chunk groups are verified: the first bytes of a large file
//! go out before the rest has arrived, and a range request moves the download's
//! playhead to the range first (the share scheduler's deadline mode).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use kith_share::Share;
use kith_store::{GROUP_SIZE, Hash};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::record::SiteName;
use crate::sites::{Lookup, OpenError, Sites, Version};

/// A response body: whole, empty, or streamed as bytes are verified.
type Body = BoxBody<Bytes, io::Error>;

/// Bytes read from the store per body frame (16 chunk groups).
const FRAME_BYTES: u64 = 16 * GROUP_SIZE;

/// Settings of a [`Gateway`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GatewayConfig {
    /// Largest request head (request line and headers) accepted, in bytes; a larger one
    /// is answered 431 and the connection closed (default 16 KiB; hyper's floor is 8 KiB).
    pub max_header_bytes: usize,
    /// Connections served at once; more wait to be accepted (default 256).
    pub max_connections: usize,
    /// How long a client may take to send its request head (default 10 s).
    pub header_timeout: Duration,
    /// How long a response waits for the next bytes of a file to arrive before it is
    /// cut off (default 30 s).
    pub stall_timeout: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            max_header_bytes: 16 * 1024,
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(30),
        }
    }
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// Binding the listening socket failed.
    #[error("binding the gateway to {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        source: io::Error,
    },
}

/// A running gateway; dropping it stops accepting connections.
#[derive(Debug)]
pub struct Gateway {
    local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct State {
    sites: Sites,
    port: u16,
    config: GatewayConfig,
}

impl Gateway {
    /// Serves `sites` over HTTP on `addr` (use a loopback address: the gateway is for
    /// the browsers of this machine).
    pub async fn bind(
        sites: Sites,
        addr: SocketAddr,
        config: GatewayConfig,
    ) -> Result<Self, GatewayError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| GatewayError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| GatewayError::Bind { addr, source })?;
        let state = Arc::new(State {
            sites,
            port: local.port(),
            config,
        });
        let task = tokio::spawn(accept_loop(listener, state));
        Ok(Self { local, task })
    }

    /// The address the gateway listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The URL of site `name` through this gateway.
    pub fn url(&self, name: SiteName) -> String {
        format!("http://{name}.localhost:{}/", self.local.port())
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    let slots = Arc::new(Semaphore::new(state.config.max_connections.max(1)));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("gateway accept: {e}");
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc = hyper::service::service_fn(|req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req).await) }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(state.config.header_timeout)
                .max_buf_size(state.config.max_header_bytes.max(8192));
            if let Err(e) = http.serve_connection(TokioIo::new(stream), svc).await {
                tracing::debug!("gateway connection: {e}");
            }
        });
    }
}

/// Where a request goes, from its Host header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// The gateway's own origin.
    Gateway,
    /// A site's origin.
    Site(SiteName),
}

/// Parses a Host header against the gateway's port. Only `localhost`, `127.0.0.1`,
/// `[::1]` and `<site name>.localhost` with the gateway's port are accepted.
fn origin(host: &str, port: u16) -> Option<Origin> {
    let host = host.to_ascii_lowercase();
    let (name, p) = match host.rsplit_once(':') {
        Some((n, p)) if !n.ends_with(':') && !p.contains(']') => (n.to_owned(), p.parse().ok()?),
        _ => (host.clone(), 80),
    };
    if p != port {
        return None;
    }
    match name.as_str() {
        "localhost" | "127.0.0.1" | "[::1]" => Some(Origin::Gateway),
        _ => {
            let label = name.strip_suffix(".localhost")?;
            label.parse::<SiteName>().ok().map(Origin::Site)
        }
    }
}

/// Decodes a request path into its segments, refusing what could name something
/// outside the site: `.` and `..` segments, encoded slashes or backslashes, NUL, and
/// bytes that are not UTF-8. Returns the segments and whether the path ended with `/`.
fn decode_path(raw: &str) -> Option<(Vec<String>, bool)> {
    let rest = raw.strip_prefix('/')?;
    let trailing = rest.is_empty() || rest.ends_with('/');
    let mut out = Vec::new();
    for seg in rest.split('/') {
        if seg.is_empty() {
            continue;
        }
        let s = percent_encoding::percent_decode_str(seg)
            .decode_utf8()
            .ok()?
            .into_owned();
        if s == "." || s == ".." || s.contains(['/', '\\', '\0']) {
            return None;
        }
        out.push(s);
    }
    Some((out, trailing))
}

async fn handle(state: &State, req: Request<Incoming>) -> Response<Body> {
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    let Some(origin) = host.and_then(|h| origin(h, state.port)) else {
        return text(
            StatusCode::MISDIRECTED_REQUEST,
            "this gateway serves only localhost and <site>.localhost on its own port\n",
        );
    };
    let Some((segments, trailing)) = decode_path(req.uri().path()) else {
        return text(StatusCode::BAD_REQUEST, "bad path\n");
    };
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let mut resp = match origin {
        Origin::Gateway => gateway_page(state, &segments, &query, &req).await,
        Origin::Site(name) => site_page(state, name, segments, trailing, &query, &req).await,
    };
    resp.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if head {
        let (parts, _) = resp.into_parts();
        return Response::from_parts(parts, empty());
    }
    resp
}

async fn gateway_page(
    state: &State,
    segments: &[String],
    query: &str,
    req: &Request<Incoming>,
) -> Response<Body> {
    match segments {
        [] => html(
            StatusCode::OK,
            "<!doctype html><title>kith gateway</title><h1>kith gateway</h1>\
             <p>Open a site at <code>http://&lt;name&gt;.localhost:PORT/</code> or \
             <code>/site/&lt;name&gt;/</code>.</p>\n"
                .to_owned(),
        ),
        [site, rest @ ..] if site == "site" && !rest.is_empty() => {
            let Ok(name) = rest[0].parse::<SiteName>() else {
                return not_found();
            };
            let tail: Vec<String> = rest[1..]
                .iter()
                .map(|s| percent_encoding::utf8_percent_encode(s, PATH_SEGMENT).to_string())
                .collect();
            let slash = if req.uri().path().ends_with('/') && !tail.is_empty() {
                "/"
            } else {
                ""
            };
            redirect(
                StatusCode::MOVED_PERMANENTLY,
                &format!(
                    "http://{name}.localhost:{}/{}{slash}{query}",
                    state.port,
                    tail.join("/")
                ),
            )
        }
        [blob, hash] if blob == "blob" => {
            let Ok(hash) = hash.parse::<Hash>() else {
                return text(StatusCode::BAD_REQUEST, "not a BLAKE3 hash\n");
            };
            let share = state.sites.share();
            let size = match share.store().status(hash) {
                Ok(Some(s)) if s.bitfield.is_complete() => s.size,
                _ => return not_found(),
            };
            let mut resp = serve_bytes(state, share, hash, size, "", req, None).await;
            resp.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=31536000, immutable"),
            );
            resp
        }
        _ => not_found(),
    }
}

async fn site_page(
    state: &State,
    name: SiteName,
    mut segments: Vec<String>,
    trailing: bool,
    query: &str,
    req: &Request<Incoming>,
) -> Response<Body> {
    let version = match state.sites.open(name).await {
        Ok(v) => v,
        Err(OpenError::NotFound(_)) => return text(StatusCode::NOT_FOUND, "no such site\n"),
        Err(e @ OpenError::Timeout(..)) => {
            return text(StatusCode::GATEWAY_TIMEOUT, &format!("{e}\n"));
        }
        Err(e) => return text(StatusCode::BAD_GATEWAY, &format!("{e}\n")),
    };
    if trailing {
        segments.push("index.html".into());
    }
    let path = segments.join("/");
    match version.lookup(&path) {
        Lookup::File(index, entry) => {
            let Ok(hash) = entry.hash() else {
                return not_found();
            };
            let size = entry.size;
            let mut resp = serve_bytes(
                state,
                state.sites.share(),
                hash,
                size,
                &path,
                req,
                Some((&version, index)),
            )
            .await;
            // Versions change under one URL: revalidate (the ETag makes that cheap).
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            resp
        }
        Lookup::Directory if !trailing => {
            let raw = req.uri().path();
            redirect(StatusCode::MOVED_PERMANENTLY, &format!("{raw}/{query}"))
        }
        _ => not_found(),
    }
}

/// Serves blob `hash` of `size` bytes: conditional requests, a single byte range, and a
/// body streamed as groups are verified.
async fn serve_bytes(
    state: &State,
    share: &Share,
    hash: Hash,
    size: u64,
    path: &str,
    req: &Request<Incoming>,
    focus: Option<(&Arc<Version>, usize)>,
) -> Response<Body> {
    let etag = format!("\"{hash}\"");
    let etag_value = HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"\""));
    if let Some(inm) = req.headers().get(header::IF_NONE_MATCH) {
        if if_none_match(inm.to_str().unwrap_or(""), &etag) {
            let mut r = Response::new(empty());
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            r.headers_mut().insert(header::ETAG, etag_value);
            return r;
        }
    }
    let range = match req.headers().get(header::RANGE).map(|r| r.to_str()) {
        None => None,
        Some(Ok(r)) => match parse_range(r, size) {
            RangeAnswer::Whole => None,
            RangeAnswer::Part(a, b) => Some((a, b)),
            RangeAnswer::Unsatisfiable => {
                let mut r = text(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable\n");
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    r.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return r;
            }
        },
        Some(Err(_)) => None,
    };
    let (start, end) = range.unwrap_or((0, size));
    if let Some((version, index)) = focus {
        version.focus(index, start);
    }
    let body = stream_blob(
        share.clone(),
        hash,
        start..end,
        state.config.stall_timeout,
        focus.map(|(v, i)| (v.clone(), i)),
    );
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, content_type(path));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::ETAG, etag_value);
    if range.is_some() {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end - 1)) {
            h.insert(header::CONTENT_RANGE, v);
        }
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    r
}

/// The body of bytes `range` of `hash`, each frame sent once its groups are verified.
/// If bytes stop arriving for `stall`, the body ends with an error (the client sees a
/// cut-off response, never unverified bytes).
fn stream_blob(
    share: Share,
    hash: Hash,
    range: std::ops::Range<u64>,
    stall: Duration,
    focus: Option<(Arc<Version>, usize)>,
) -> Body {
    let stream = futures_util::stream::unfold(range.start, move |pos| {
        let (share, focus) = (share.clone(), focus.clone());
        let end = range.end;
        async move {
            if pos >= end {
                return None;
            }
            let stop = (pos + FRAME_BYTES - pos % GROUP_SIZE).min(end);
            let groups = pos / GROUP_SIZE..stop.div_ceil(GROUP_SIZE);
            let here = share.store().status(hash).ok().flatten().is_some_and(|s| {
                s.bitfield
                    .contains_all(groups.start, groups.end.min(s.bitfield.len()))
            });
            if !here {
                if let Some((v, i)) = &focus {
                    v.focus(*i, pos);
                }
                match tokio::time::timeout(stall, share.wait_for_groups(hash, groups)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Some((Err(io::Error::other(e.to_string())), end)),
                    Err(_) => {
                        return Some((
                            Err(io::Error::new(io::ErrorKind::TimedOut, "no bytes arrived")),
                            end,
                        ));
                    }
                }
            }
            let store = share.store().clone();
            let read = tokio::task::spawn_blocking(move || store.read_range(hash, pos..stop)).await;
            match read {
                Ok(Ok(bytes)) if bytes.len() as u64 == stop - pos => {
                    Some((Ok(Frame::data(Bytes::from(bytes))), stop))
                }
                Ok(Ok(_)) => Some((Err(io::Error::other("short read from the store")), end)),
                Ok(Err(e)) => Some((Err(io::Error::other(e.to_string())), end)),
                Err(e) => Some((Err(io::Error::other(e.to_string())), end)),
            }
        }
    });
    BodyExt::boxed(StreamBody::new(stream))
}

/// What a Range header asks of a body of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
enum RangeAnswer {
    /// Serve it all (no range, a malformed one, or several: RFC 9110 lets a server
    /// ignore them).
    Whole,
    /// Bytes `start..end`.
    Part(u64, u64),
    /// No byte of the range exists.
    Unsatisfiable,
}

fn parse_range(header: &str, size: u64) -> RangeAnswer {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeAnswer::Whole;
    };
    if spec.contains(',') {
        return RangeAnswer::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAnswer::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    match (a.parse::<u64>(), b.parse::<u64>()) {
        // bytes=-N: the last N bytes.
        (Err(_), Ok(n)) if a.is_empty() => {
            if n == 0 || size == 0 {
                RangeAnswer::Unsatisfiable
            } else {
                RangeAnswer::Part(size - n.min(size), size)
            }
        }
        (Ok(start), Err(_)) if b.is_empty() => {
            if start >= size {
                RangeAnswer::Unsatisfiable
            } else {
                RangeAnswer::Part(start, size)
            }
        }
        (Ok(start), Ok(last)) if start <= last => {
            if start >= size {
                RangeAnswer::Unsatisfiable
            } else {
                RangeAnswer::Part(start, last.min(size - 1) + 1)
            }
        }
        _ => RangeAnswer::Whole,
    }
}

fn if_none_match(header: &str, etag: &str) -> bool {
    header
        .split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

fn content_type(path: &str) -> HeaderValue {
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let text_like = mime.type_() == mime_guess::mime::TEXT
        || mime.subtype() == mime_guess::mime::JAVASCRIPT
        || mime.subtype() == mime_guess::mime::JSON;
    let value = if text_like && mime.get_param(mime_guess::mime::CHARSET).is_none() {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_string()
    };
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("application/octet-stream"))
}

/// Characters escaped in a path segment of a redirect.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

fn empty() -> Body {
    BodyExt::boxed(Empty::new().map_err(|never: Infallible| match never {}))
}

fn full(bytes: impl Into<Bytes>) -> Body {
    BodyExt::boxed(Full::new(bytes.into()).map_err(|never: Infallible| match never {}))
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut r = Response::new(full(body.to_owned()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn html(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

fn not_found() -> Response<Body> {
    html(
        StatusCode::NOT_FOUND,
        "<!doctype html><title>Not found</title><h1>404 Not found</h1>\n".to_owned(),
    )
}

fn redirect(status: StatusCode, location: &str) -> Response<Body> {
    let mut r = text(status, "moved\n");
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_checked_against_the_port() {
        let name = SiteName(kith_core::SecretKey::from_bytes(&[3; 32]).node_id());
        assert_eq!(origin("localhost:8080", 8080), Some(Origin::Gateway));
        assert_eq!(origin("127.0.0.1:8080", 8080), Some(Origin::Gateway));
        assert_eq!(origin("[::1]:8080", 8080), Some(Origin::Gateway));
        assert_eq!(origin("LOCALHOST:8080", 8080), Some(Origin::Gateway));
        assert_eq!(
            origin(&format!("{name}.localhost:8080"), 8080),
            Some(Origin::Site(name))
        );
        assert_eq!(origin("localhost:8081", 8080), None);
        assert_eq!(origin("localhost", 8080), None);
        assert_eq!(origin("localhost", 80), Some(Origin::Gateway));
        assert_eq!(origin("evil.example:8080", 8080), None);
        assert_eq!(origin(&format!("{name}.evil.example:8080"), 8080), None);
        assert_eq!(origin("nope.localhost:8080", 8080), None);
        assert_eq!(origin("[::1]", 8080), None);
    }

    #[test]
    fn paths_cannot_climb_out() {
        assert_eq!(
            decode_path("/a/b%20c/"),
            Some((vec!["a".into(), "b c".into()], true))
        );
        assert_eq!(decode_path("/"), Some((vec![], true)));
        assert_eq!(decode_path("/a/../b"), None);
        assert_eq!(decode_path("/a/%2e%2e/b"), None);
        assert_eq!(decode_path("/a%2fb"), None);
        assert_eq!(decode_path("/a%5cb"), None);
        assert_eq!(decode_path("/a%00"), None);
        assert_eq!(decode_path("/%ff"), None);
        assert_eq!(decode_path("/./a"), None);
    }

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(parse_range("bytes=0-99", 1000), RangeAnswer::Part(0, 100));
        assert_eq!(
            parse_range("bytes=900-", 1000),
            RangeAnswer::Part(900, 1000)
        );
        assert_eq!(
            parse_range("bytes=-100", 1000),
            RangeAnswer::Part(900, 1000)
        );
        assert_eq!(parse_range("bytes=-5000", 1000), RangeAnswer::Part(0, 1000));
        assert_eq!(
            parse_range("bytes=990-5000", 1000),
            RangeAnswer::Part(990, 1000)
        );
        assert_eq!(parse_range("bytes=1000-", 1000), RangeAnswer::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 1000), RangeAnswer::Unsatisfiable);
        assert_eq!(parse_range("bytes=5-1", 1000), RangeAnswer::Whole);
        assert_eq!(parse_range("bytes=0-1,5-9", 1000), RangeAnswer::Whole);
        assert_eq!(parse_range("items=0-1", 1000), RangeAnswer::Whole);
        assert_eq!(parse_range("bytes=0-0", 0), RangeAnswer::Unsatisfiable);
    }

    #[test]
    fn etags_match_weak_and_star() {
        assert!(if_none_match("\"x\"", "\"x\""));
        assert!(if_none_match("W/\"x\", \"y\"", "\"x\""));
        assert!(if_none_match("*", "\"x\""));
        assert!(!if_none_match("\"y\"", "\"x\""));
    }

    #[test]
    fn content_types_carry_a_charset_for_text() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("a/app.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("style.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("logo.png"), "image/png");
        assert_eq!(content_type("blob"), "application/octet-stream");
    }
}
