//! A site in a real browser: `kith site publish` in one process, `kith gateway` in
//! another that has never seen the site, and headless Chromium reading the page through
//! the gateway. The page's own script reports what loaded into the DOM, which
//! `--dump-dom` prints. Then a second version is published from a third process and
//! the open gateway serves it within 2 s.
//!
//! Needs Debian's `chromium` (`.ci/run` installs it). Without it the test fails and
//! says so: it does not pass silently.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::spawn;
use std::time::{Duration, Instant};

/// GET `path` from the gateway on `port` with Host `host`; (status, body).
fn http_get(port: u16, host: &str, path: &str) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read");
    let end = out.windows(4).position(|w| w == b"\r\n\r\n").expect("head");
    let status = std::str::from_utf8(&out[9..12])
        .expect("status")
        .parse()
        .expect("status");
    (status, out[end + 4..].to_vec())
}

const APP_JS: &str = r#"
window.addEventListener('load', async () => {
  const r = ['script:ran'];
  const img = document.getElementById('logo');
  r.push('img:' + (img.complete && img.naturalWidth > 0 ? img.naturalWidth : 'broken'));
  r.push('css:' + getComputedStyle(document.getElementById('title')).color);
  try {
    const resp = await fetch('media/big.bin', { headers: { Range: 'bytes=1000-1999' } });
    const buf = await resp.arrayBuffer();
    r.push('range:' + resp.status + ':' + buf.byteLength);
  } catch (e) {
    r.push('range:error:' + e);
  }
  document.getElementById('report').textContent = r.join(' ');
});
"#;

const LOGO_SVG: &str = r#"<svg xmlns="http://www.w3.org/2000/svg" width="64" height="48"><rect width="64" height="48" fill="green"/></svg>"#;

fn write_site(dir: &Path, version: &str) {
    let files: Vec<(&str, Vec<u8>)> = vec![
        (
            "index.html",
            format!(
                "<!doctype html><html><head><title>kith {version}</title>\
                 <link rel=\"stylesheet\" href=\"style.css\"></head><body>\
                 <h1 id=\"title\">hello from {version}</h1>\
                 <img id=\"logo\" src=\"img/logo.svg\">\
                 <p id=\"report\">pending</p>\
                 <script src=\"app.js\"></script></body></html>"
            )
            .into_bytes(),
        ),
        ("style.css", b"h1 { color: rgb(200, 30, 40) }".to_vec()),
        ("app.js", APP_JS.as_bytes().to_vec()),
        ("img/logo.svg", LOGO_SVG.as_bytes().to_vec()),
        (
            "media/big.bin",
            (0..3u32 << 20)
                .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
                .collect(),
        ),
    ];
    for (p, b) in files {
        let path = dir.join(p);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, b).expect("write");
    }
}

fn chromium() -> PathBuf {
    for c in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(c).exists() {
            return c.into();
        }
    }
    panic!("this test needs Debian's chromium (apt-get install -y chromium); .ci/run installs it");
}

/// Runs headless Chromium on `url` with `args` and returns its stdout.
fn browse(profile: &Path, url: &str, args: &[&str]) -> String {
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--virtual-time-budget=15000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_published_site_renders_in_chromium_through_a_gateway_and_updates() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (site1, site2) = (tmp.path().join("site-v1"), tmp.path().join("site-v2"));
    write_site(&site1, "v1");
    write_site(&site2, "v2");
    let key = tmp.path().join("my-site.key");
    let key_arg = key.to_str().expect("utf-8 path");

    let publisher = spawn(
        &tmp.path().join("alice"),
        &[
            "site",
            "publish",
            site1.to_str().expect("path"),
            "--key",
            key_arg,
            "--bind",
            "127.0.0.1:0",
        ],
    );
    let name = publisher.first.clone();
    // The publisher's data directory (its secret key, its store) stays out of the site.
    for f in ["key", "key.port", "store"] {
        assert!(
            !site1.join(f).exists(),
            "{f} was written into the site folder"
        );
    }
    let gateway = spawn(
        &tmp.path().join("gw"),
        &[
            "gateway",
            "--port",
            "0",
            "--bind",
            "127.0.0.1:0",
            "--bootstrap",
            &publisher.addr,
        ],
    );
    let port: u16 = gateway
        .first
        .trim_start_matches("http://localhost:")
        .trim_end_matches('/')
        .parse()
        .expect("gateway port");
    let url = format!("http://{name}.localhost:{port}/");

    // The page renders: script ran, stylesheet applied, image decoded, range answered 206.
    let profile = tmp.path().join("chromium");
    let dom = browse(&profile, &url, &["--dump-dom"]);
    for want in [
        "hello from v1",
        "script:ran",
        "img:64",
        "css:rgb(200, 30, 40)",
        "range:206:1000",
    ] {
        assert!(dom.contains(want), "{want:?} missing from the page:\n{dom}");
    }
    // A screenshot, kept as an artefact of the test run.
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("site-test");
    std::fs::create_dir_all(&shots).expect("mkdir");
    let shot = shots.join("page-v1.png");
    let _ = std::fs::remove_file(&shot);
    browse(
        &profile,
        &url,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=900,600",
        ],
    );
    assert!(std::fs::metadata(&shot).expect("screenshot written").len() > 1000);

    // Version 2, published from another machine with the same site key, reaches the
    // open gateway within 2 s.
    let v2 = spawn(
        &tmp.path().join("bob"),
        &[
            "site",
            "publish",
            site2.to_str().expect("path"),
            "--key",
            key_arg,
            "--bind",
            "127.0.0.1:0",
            "--bootstrap",
            &publisher.addr,
            "--bootstrap",
            &gateway.addr,
        ],
    );
    let published = Instant::now();
    assert_eq!(v2.first, name, "same key, same name");
    let host = format!("{name}.localhost:{port}");
    let seen = loop {
        let (status, body) = http_get(port, &host, "/");
        if status == 200 && String::from_utf8_lossy(&body).contains("hello from v2") {
            break published.elapsed();
        }
        assert!(
            published.elapsed() < Duration::from_secs(2),
            "the gateway still serves v1 2 s after v2 was published"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("v2 visible through the gateway {seen:?} after publishing");
    let dom = browse(&profile, &url, &["--dump-dom"]);
    assert!(
        dom.contains("hello from v2"),
        "browser still sees v1:\n{dom}"
    );
    assert!(dom.contains("range:206:1000"), "{dom}");
    drop(v2);
    drop(gateway);
    drop(publisher);
}
