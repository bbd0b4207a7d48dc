//! TLS termination (DESIGN section 9) over real sockets: HTTP/1.1 and h2
//! chosen by ALPN, the certificate chosen by SNI, TLS 1.1 and plain HTTP
//! refused without hanging, HTTP/1.1 over TLS on the fast path, mutual TLS
//! on the admin listener, and start-up errors that name the file.
//!
//! Certificates are made here (`common::certs`, rcgen); none is committed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::certs::{self, Ca, Leaf};
use common::raw::Upstream;
use common::{Opts, TestGateway};
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const H1: &[u8] = b"http/1.1";
const H2: &[u8] = b"h2";

/// Bounds every wait, so a hang fails instead of blocking the run.
const WAIT: Duration = Duration::from_secs(20);

/// The `[tls]` table for a certificate written into `dir`, plus `more`.
fn tls_table(dir: &Path, leaf: &Leaf, more: &str) -> String {
    let (cert, key) = leaf.write(dir, "server");
    format!(
        "[tls]\ncert_file = {}\nkey_file = {}\n{more}\n",
        certs::p(&cert),
        certs::p(&key)
    )
}

/// A harness gateway with `[tls]` on the public listener.
async fn tls_gateway(ca: &Ca, opts: Opts) -> (TestGateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let table = tls_table(dir.path(), &ca.leaf(&["localhost"]), "");
    (opts.extra(&table).spawn().await, dir)
}

/// A harness gateway with `[tls]`, routing `/up` (no auth) to the
/// scripted upstream `up`; its certificate is written into `dir`.
async fn tls_gateway_to(up: &Upstream, ca: &Ca, dir: &Path) -> TestGateway {
    let extra = format!(
        "[[upstreams]]\nname = \"raw\"\nurl = \"http://{}\"\n\n[[routes]]\npath = \"/up\"\nupstream = \"raw\"\nauth = \"none\"\n\n{}",
        up.addr,
        tls_table(dir, &ca.leaf(&["localhost"]), "")
    );
    Opts::default().extra(&extra).spawn().await
}

/// A finished HTTP/1.1 TLS connection to `addr` as `localhost`, trusting `ca`.
async fn h1_client(
    addr: std::net::SocketAddr,
    ca: &Ca,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    certs::connect(
        addr,
        "localhost",
        certs::client_config(&ca.pem(), &[H1], None),
    )
    .await
    .unwrap()
}

/// A response read through hyper's client.
struct Got {
    status: StatusCode,
    version: Version,
    body: Bytes,
}

/// One GET over a finished TLS stream, as HTTP/2 when `h2`, else HTTP/1.1.
async fn get_over<S>(stream: S, h2: bool, path: &str, host: &str) -> Got
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(stream);
    let req = |version| {
        Request::get(format!("https://{host}{path}"))
            .version(version)
            .header("host", host)
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let resp = if h2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        send.send_request(req(Version::HTTP_2)).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let mut r = req(Version::HTTP_11);
        *r.uri_mut() = path.parse().unwrap();
        send.send_request(r).await.unwrap()
    };
    let (status, version) = (resp.status(), resp.version());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Got {
        status,
        version,
        body,
    }
}

/// Reads one HTTP/1.1 response (framed by `content-length`) off a stream,
/// as raw bytes: the head as written, then the body. `buf` keeps what
/// came after it (a pipelined response).
async fn raw_response<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> (String, String) {
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i + 4]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= i + 4 + len {
                let body = String::from_utf8_lossy(&buf[i + 4..i + 4 + len]).to_string();
                buf.drain(..i + 4 + len);
                return (head, body);
            }
        }
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
            .await
            .expect("the gateway went silent")
            .unwrap();
        assert!(
            n > 0,
            "closed mid-response: {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads until the peer closes (or resets); everything it sent first.
/// Panics if it neither closes nor stops within [`WAIT`].
async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(WAIT, s.read(&mut chunk))
            .await
            .expect("the gateway neither answered nor closed");
        match read {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test]
async fn alpn_chooses_http1_or_h2_and_upstreams_see_https() {
    let ca = Ca::new("test ca");
    let (g, _dir) = tls_gateway(&ca, Opts::default()).await;

    for (alpn, h2, version) in [
        (vec![H2, H1], true, Version::HTTP_2),
        (vec![H1], false, Version::HTTP_11),
        // No ALPN at all: HTTP/1.1.
        (vec![], false, Version::HTTP_11),
    ] {
        let s = certs::connect(
            g.addr,
            "localhost",
            certs::client_config(&ca.pem(), &alpn, None),
        )
        .await
        .unwrap();
        assert_eq!(
            certs::alpn(&s).as_deref(),
            alpn.first().copied(),
            "ALPN {alpn:?}"
        );
        let r = get_over(s, h2, "/public/x", "localhost").await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        assert_eq!(r.version, version);
        let seen = g.upstream.last();
        assert_eq!(seen.headers["x-forwarded-proto"], "https", "{alpn:?}");
    }
    assert_eq!(g.upstream.count(), 3);

    // Refusals come back over TLS too.
    let s = certs::connect(
        g.addr,
        "localhost",
        certs::client_config(&ca.pem(), &[H2], None),
    )
    .await
    .unwrap();
    let r = get_over(s, true, "/api/x", "localhost").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn plain_listener_still_says_http() {
    let g = TestGateway::spawn().await;
    assert_eq!(g.get("/public/x", None).await.status, StatusCode::OK);
    assert_eq!(g.upstream.last().headers["x-forwarded-proto"], "http");
}

#[tokio::test]
async fn http1_over_tls_takes_the_fast_path_and_h2_goes_to_hyper() {
    // The scripted upstream writes `X-Conn`; the fast path passes the name
    // on byte for byte, hyper lower-cases it (see tests/fast_path.rs).
    let up = Upstream::spawn().await;
    let ca = Ca::new("test ca");
    let dir = tempfile::tempdir().unwrap();
    let g = tls_gateway_to(&up, &ca, dir.path()).await;

    let mut s = certs::connect(
        g.addr,
        "localhost",
        certs::client_config(&ca.pem(), &[H2, H1], None),
    )
    .await
    .unwrap();
    // Offered both, the client got h2 (the server's preference): hyper.
    assert_eq!(certs::alpn(&s).as_deref(), Some(H2));
    drop(s);

    s = h1_client(g.addr, &ca).await;
    let mut buf = Vec::new();
    for i in 0..3 {
        s.write_all(b"GET /up/plain HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = raw_response(&mut s, &mut buf).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.contains("\r\nX-Conn: "),
            "request {i}: not served by the fast path:\n{head}"
        );
        assert_eq!(body, "GET /up/plain conn 1");
    }
    assert_eq!(
        up.last().values("x-forwarded-proto"),
        vec!["https"],
        "the fast path says https too"
    );
    // Pipelined, over one TLS record.
    s.write_all(b"GET /up/a HTTP/1.1\r\nHost: localhost\r\n\r\nGET /up/b HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    assert!(raw_response(&mut s, &mut buf)
        .await
        .1
        .starts_with("GET /up/a"));
    assert!(raw_response(&mut s, &mut buf)
        .await
        .1
        .starts_with("GET /up/b"));

    // A request the fast path hands to hyper mid-connection (chunked
    // upload) is answered over the same TLS stream.
    s.write_all(b"POST /up/echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = raw_response(&mut s, &mut buf).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains("\r\nx-conn: "),
        "hyper after the hand-over:\n{head}"
    );
}

#[tokio::test]
async fn sni_picks_the_certificate() {
    let ca = Ca::new("test ca");
    let dir = tempfile::tempdir().unwrap();
    let default = ca.leaf(&["localhost"]);
    let api = ca.leaf(&["api.example.test"]);
    let wild = ca.leaf(&["*.apps.example.test"]);
    let (api_cert, api_key) = api.write(dir.path(), "api");
    let (wild_cert, wild_key) = wild.write(dir.path(), "wild");
    let sni = format!(
        "[[tls.sni]]\nserver_name = \"API.example.test\"\ncert_file = {}\nkey_file = {}\n\n[[tls.sni]]\nserver_name = \"*.apps.example.test\"\ncert_file = {}\nkey_file = {}\n",
        certs::p(&api_cert),
        certs::p(&api_key),
        certs::p(&wild_cert),
        certs::p(&wild_key),
    );
    let g = Opts::default()
        .extra(&tls_table(dir.path(), &default, &sni))
        .spawn()
        .await;
    let config = certs::client_config(&ca.pem(), &[H1], None);
    for (name, want) in [
        ("api.example.test", &api),
        ("one.apps.example.test", &wild),
        ("localhost", &default),
    ] {
        let s = certs::connect(g.addr, name, config.clone()).await.unwrap();
        assert!(
            certs::presented(&s) == want.der,
            "{name}: wrong certificate"
        );
        let r = get_over(s, false, "/public/x", name).await;
        assert_eq!(r.status, StatusCode::OK, "{name}");
    }
    // A name no entry has gets the default certificate, which does not
    // cover it: the client refuses it.
    let s = certs::connect(g.addr, "other.example.test", config).await;
    assert!(
        s.is_err(),
        "the default certificate does not name other.example.test"
    );
}

/// A TLS 1.1 ClientHello (record version 3.1, client_version 3.2, the
/// classic RSA/ECDHE CBC suites, no extensions).
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02];
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // session id
    let suites: [u16; 4] = [0xc013, 0xc014, 0x002f, 0x0035];
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]); // compression: null
    let mut hs = vec![1];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    record.extend_from_slice(&hs);
    record
}

#[tokio::test]
async fn tls_1_1_is_refused() {
    let ca = Ca::new("test ca");
    let (g, _dir) = tls_gateway(&ca, Opts::default()).await;
    let mut s = TcpStream::connect(g.addr).await.unwrap();
    s.write_all(&tls11_client_hello()).await.unwrap();
    let got = read_to_close(&mut s).await;
    // A fatal alert (record 21, level 2; rustls says handshake_failure,
    // 40) and the close; never a ServerHello (a handshake record, 22).
    assert!(
        got.is_empty() || (got[0] == 21 && got.get(5) == Some(&2)),
        "not refused with a fatal alert: {got:?}"
    );
    assert_eq!(g.upstream.count(), 0);
}

#[tokio::test]
async fn plain_http_or_silence_on_the_tls_port_is_closed_without_hanging() {
    let ca = Ca::new("test ca");
    let (g, _dir) = tls_gateway(
        &ca,
        Opts::default().server("header_read_timeout_seconds", 1u64),
    )
    .await;

    // Plain HTTP: not a handshake, refused at once (an alert, no HTTP).
    let mut s = TcpStream::connect(g.addr).await.unwrap();
    s.write_all(b"GET /public/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let got = read_to_close(&mut s).await;
    assert!(
        !got.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(got.is_empty() || got[0] == 21, "{got:?}");

    // Nothing at all: closed at the first-head deadline.
    let started = tokio::time::Instant::now();
    let mut s = TcpStream::connect(g.addr).await.unwrap();
    assert!(read_to_close(&mut s).await.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(900));

    // Half a handshake: the same.
    let mut s = TcpStream::connect(g.addr).await.unwrap();
    s.write_all(&tls11_client_hello()[..20]).await.unwrap();
    assert!(read_to_close(&mut s).await.is_empty());
    assert_eq!(g.upstream.count(), 0);

    // And a real client is still served.
    let s = h1_client(g.addr, &ca).await;
    assert_eq!(
        get_over(s, false, "/public/x", "localhost").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn admin_mutual_tls_needs_a_client_certificate_from_the_ca() {
    let ca = Ca::new("server ca");
    let ops = Ca::new("ops ca");
    let stranger = Ca::new("someone else");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca.leaf(&["localhost"]).write(dir.path(), "admin");
    let ops_pem = dir.path().join("ops-ca.pem");
    std::fs::write(&ops_pem, ops.pem()).unwrap();
    let g = Opts::default()
        .extra(&format!(
            "[admin_tls]\ncert_file = {}\nkey_file = {}\nclient_ca_file = {}\n",
            certs::p(&cert),
            certs::p(&key),
            certs::p(&ops_pem)
        ))
        .spawn()
        .await;

    // With a certificate from the ops CA: served, HTTP/1.1 and h2.
    let mine = ops.client("operator");
    for (alpn, h2) in [(H1, false), (H2, true)] {
        let s = certs::connect(
            g.admin_addr,
            "localhost",
            certs::client_config(&ca.pem(), &[alpn], Some(&mine)),
        )
        .await
        .unwrap();
        let r = get_over(s, h2, "/healthz", "localhost").await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }

    // Without one, or with one from another CA: no request is answered.
    for client in [None, Some(stranger.client("mallory"))] {
        // TLS 1.3: the server judges the client's certificate after the
        // client has finished; the refusal arrives as an alert.
        let config = certs::client_config(&ca.pem(), &[H1], client.as_ref());
        assert!(
            !admin_answers(g.admin_addr, config).await,
            "answered without a good client certificate"
        );
    }
    // Plain HTTP to the admin port is not served either.
    let mut s = TcpStream::connect(g.admin_addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(!read_to_close(&mut s).await.starts_with(b"HTTP/"));
    // The public listener is untouched: plain HTTP.
    assert_eq!(g.get("/public/x", None).await.status, StatusCode::OK);
}

/// Whether `config` gets `/healthz` answered on the admin listener.
async fn admin_answers(
    addr: std::net::SocketAddr,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> bool {
    let answered = async {
        let s = certs::connect(addr, "localhost", config).await.ok()?;
        let io = TokioIo::new(s);
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.ok()?;
        tokio::spawn(conn);
        let req = Request::get("/healthz")
            .header("host", "localhost")
            .body(Empty::<Bytes>::new())
            .unwrap();
        send.send_request(req).await.ok()
    };
    tokio::time::timeout(WAIT, answered)
        .await
        .unwrap()
        .is_some()
}

#[tokio::test]
async fn a_public_listener_session_does_not_resume_past_admin_client_certificates() {
    let ca = Ca::new("server ca");
    let ops = Ca::new("ops ca");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca.leaf(&["localhost"]).write(dir.path(), "admin");
    let ops_pem = dir.path().join("ops-ca.pem");
    std::fs::write(&ops_pem, ops.pem()).unwrap();
    let tables = tls_table(
        dir.path(),
        &ca.leaf(&["localhost"]),
        &format!(
            "[admin_tls]\ncert_file = {}\nkey_file = {}\nclient_ca_file = {}\n",
            certs::p(&cert),
            certs::p(&key),
            certs::p(&ops_pem)
        ),
    );
    let g = Opts::default().extra(&tables).spawn().await;
    // One client, no certificate, one session store for both listeners
    // (same name, as `openssl s_client -sess_out` / `-sess_in` would).
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(root_store(&ca))
        .with_no_client_auth();
        config.alpn_protocols = vec![H1.to_vec()];
        config.resumption = rustls::client::Resumption::in_memory_sessions(8);
        let config = std::sync::Arc::new(config);
        // Two connections to the public listener: the second resumes the
        // first's session. Each reads its answer, which takes in the
        // ticket that comes after the handshake.
        let mut kinds = Vec::new();
        for _ in 0..2 {
            let mut s = certs::connect(g.addr, "localhost", config.clone())
                .await
                .unwrap();
            kinds.push(s.get_ref().1.handshake_kind());
            s.write_all(b"GET /public/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .await
                .unwrap();
            let (head, _) = raw_response(&mut s, &mut Vec::new()).await;
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        }
        assert_eq!(
            kinds,
            [
                Some(rustls::HandshakeKind::Full),
                Some(rustls::HandshakeKind::Resumed)
            ],
            "{version:?}"
        );
        // On the admin listener it buys nothing: no certificate, no answer.
        assert!(
            !admin_answers(g.admin_addr, config).await,
            "{version:?}: a public session opened the admin listener"
        );
    }
    // The right certificate still works.
    let mine = ops.client("operator");
    assert!(
        admin_answers(
            g.admin_addr,
            certs::client_config(&ca.pem(), &[H1], Some(&mine))
        )
        .await
    );
}

/// A root store trusting `ca`.
fn root_store(ca: &Ca) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for c in
        <rustls::pki_types::CertificateDer as rustls::pki_types::pem::PemObject>::pem_slice_iter(
            ca.pem().as_bytes(),
        )
    {
        roots.add(c.unwrap()).unwrap();
    }
    roots
}

#[tokio::test]
async fn admin_tls_without_a_client_ca_serves_any_client() {
    let ca = Ca::new("server ca");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca.leaf(&["localhost"]).write(dir.path(), "admin");
    let g = Opts::default()
        .extra(&format!(
            "[admin_tls]\ncert_file = {}\nkey_file = {}\n",
            certs::p(&cert),
            certs::p(&key)
        ))
        .spawn()
        .await;
    let s = h1_client(g.admin_addr, &ca).await;
    assert_eq!(
        get_over(s, false, "/healthz", "localhost").await.status,
        StatusCode::OK
    );
}

// ---------------------------------------------------------------------------
// Start-up errors: the binary, with bad files.

/// Runs `tokengate COMMAND` on a config with `tables`: whether it
/// succeeded, and its stderr.
fn run_with(dir: &Path, tables: &str, command: &str) -> (bool, String) {
    let config = dir.join("tokengate.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\n[store]\nurl = \"sqlite://{}\"\n\n{tables}",
            dir.join("tg.db").display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .arg("--config")
        .arg(&config)
        .arg(command)
        .env_remove("TOKENGATE_CONFIG")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Runs `tokengate serve` on a config with `tables`; it must fail at once.
/// Returns its stderr.
fn serve_fails(dir: &Path, tables: &str) -> String {
    let (served, stderr) = run_with(dir, tables, "serve");
    assert!(!served, "served with {tables}:\n{stderr}");
    stderr
}

#[test]
fn check_config_says_what_each_listener_speaks() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new("test ca");
    let (cert, key) = ca.leaf(&["localhost"]).write(d, "good");
    let ca_file = d.join("ops-ca.pem");
    std::fs::write(&ca_file, Ca::new("ops ca").pem()).unwrap();
    let tables = format!(
        "[tls]\ncert_file = {c}\nkey_file = {k}\n\n[admin_tls]\ncert_file = {c}\nkey_file = {k}\nclient_ca_file = {ca}\n",
        c = certs::p(&cert),
        k = certs::p(&key),
        ca = certs::p(&ca_file),
    );
    let (ok, said) = run_with(d, &tables, "check-config");
    assert!(ok, "{said}");
    assert!(
        said.contains("public listener TLS, 2 files, admin listener TLS, 3 files, client certificates required)"),
        "{said}"
    );
}

#[test]
fn start_up_errors_name_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new("test ca");
    let (cert, key) = ca.leaf(&["localhost"]).write(d, "good");
    let (_, other_key) = ca.leaf(&["localhost"]).write(d, "other");
    let (old_cert, old_key) = ca.leaf_until(&["localhost"], (2001, 1, 1)).write(d, "old");
    let junk = d.join("junk.pem");
    std::fs::write(&junk, "this is not PEM\n").unwrap();
    let missing = d.join("missing.pem");
    let unreadable = d.join("a-directory");
    std::fs::create_dir(&unreadable).unwrap();
    let table = |t: &str, c: &Path, k: &Path| {
        format!(
            "[{t}]\ncert_file = {}\nkey_file = {}\n",
            certs::p(c),
            certs::p(k)
        )
    };
    let d_ = |p: &Path| p.display().to_string();
    // `[tls]` with the good pair and one `[[tls.sni]]` entry.
    let with_sni = |name: &str, c: &Path| {
        format!(
            "{}[[tls.sni]]\nserver_name = \"{name}\"\ncert_file = {}\nkey_file = {}\n",
            table("tls", &cert, &key),
            certs::p(c),
            certs::p(&key)
        )
    };
    for (tables, key, wants) in [
        (
            table("tls", &missing, &key),
            "tls.cert_file",
            vec![d_(&missing), "cannot read".into()],
        ),
        (
            table("tls", &unreadable, &key),
            "tls.cert_file",
            vec![d_(&unreadable), "cannot read".into()],
        ),
        (
            table("tls", &junk, &key),
            "tls.cert_file",
            vec![d_(&junk), "no PEM certificate".into()],
        ),
        (
            table("tls", &cert, &junk),
            "tls.key_file",
            vec![d_(&junk), "no PEM private key".into()],
        ),
        (
            table("tls", &cert, &missing),
            "tls.key_file",
            vec![d_(&missing), "cannot read".into()],
        ),
        // A certificate file given as the key.
        (
            table("tls", &cert, &cert),
            "tls.key_file",
            vec![d_(&cert), "no PEM private key".into()],
        ),
        (
            table("tls", &cert, &other_key),
            "tls.key_file",
            vec![
                d_(&other_key),
                "does not match the certificate in".into(),
                d_(&cert),
            ],
        ),
        (
            table("tls", &old_cert, &old_key),
            "tls.cert_file",
            vec![d_(&old_cert), "expired at 2001-01-01T00:00:00Z".into()],
        ),
        (
            table("admin_tls", &cert, &other_key),
            "admin_tls.key_file",
            vec![d_(&other_key), "does not match".into()],
        ),
        (
            format!(
                "{}client_ca_file = {}\n",
                table("admin_tls", &cert, &key),
                certs::p(&junk)
            ),
            "admin_tls.client_ca_file",
            vec![d_(&junk), "no PEM certificate".into()],
        ),
        (
            format!(
                "{}client_ca_file = {}\n",
                table("tls", &cert, &key),
                certs::p(&cert)
            ),
            "tls.client_ca_file",
            vec!["admin listener only".into()],
        ),
        (
            with_sni("api.example.test", &missing),
            "tls.sni[0].cert_file",
            vec![d_(&missing)],
        ),
        (
            with_sni("not a name", &cert),
            "tls.sni[0].server_name",
            vec!["not a DNS name".into()],
        ),
        (
            // A certificate for localhost given for another name: every
            // client asking for that name would refuse it.
            with_sni("api.example.test", &cert),
            "tls.sni[0].cert_file",
            vec![d_(&cert), "is not for api.example.test".into()],
        ),
    ] {
        let stderr = serve_fails(d, &tables);
        assert!(stderr.contains("tokengate.toml"), "{stderr}");
        assert!(
            stderr.contains(&format!(": {key}: ")),
            "want {key}:\n{stderr}"
        );
        for w in wants {
            assert!(stderr.contains(&w), "want {w:?}:\n{stderr}");
        }
        assert!(
            !stderr.contains("PRIVATE KEY"),
            "a key in the log:\n{stderr}"
        );
    }
}

/// A client session store that counts the TLS 1.3 tickets it is given.
#[derive(Debug)]
struct CountingStore {
    inner: rustls::client::ClientSessionMemoryCache,
    tickets: std::sync::atomic::AtomicUsize,
}

impl rustls::client::ClientSessionStore for CountingStore {
    fn set_kx_hint(&self, name: rustls::pki_types::ServerName<'static>, group: rustls::NamedGroup) {
        self.inner.set_kx_hint(name, group)
    }
    fn kx_hint(&self, name: &rustls::pki_types::ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(name)
    }
    fn set_tls12_session(
        &self,
        name: rustls::pki_types::ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.inner.set_tls12_session(name, value)
    }
    fn tls12_session(
        &self,
        name: &rustls::pki_types::ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(name)
    }
    fn remove_tls12_session(&self, name: &rustls::pki_types::ServerName<'static>) {
        self.inner.remove_tls12_session(name)
    }
    fn insert_tls13_ticket(
        &self,
        name: rustls::pki_types::ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.tickets
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.insert_tls13_ticket(name, value)
    }
    fn take_tls13_ticket(
        &self,
        name: &rustls::pki_types::ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(name)
    }
}

#[tokio::test]
async fn tls_13_sessions_resume_by_ticket_one_ticket_a_handshake() {
    let ca = Ca::new("test ca");
    let (g, _dir) = tls_gateway(&ca, Opts::default()).await;
    let store = std::sync::Arc::new(CountingStore {
        inner: rustls::client::ClientSessionMemoryCache::new(8),
        tickets: Default::default(),
    });
    let mut config = (*certs::client_config(&ca.pem(), &[H1], None)).clone();
    config.resumption = rustls::client::Resumption::store(store.clone());
    let config = std::sync::Arc::new(config);
    let mut kinds = Vec::new();
    let mut tickets = Vec::new();
    for _ in 0..3 {
        let mut s = certs::connect(g.addr, "localhost", config.clone())
            .await
            .unwrap();
        kinds.push(s.get_ref().1.handshake_kind());
        assert_eq!(
            s.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        // The tickets come after the handshake; reading the answer takes them in.
        s.write_all(b"GET /public/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let (head, _) = raw_response(&mut s, &mut Vec::new()).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        tickets.push(store.tickets.load(std::sync::atomic::Ordering::SeqCst));
    }
    // Each handshake, full or resumed, leaves one ticket (a ticket is used
    // once), and that one is enough for the next connection to resume.
    assert_eq!(
        kinds,
        [
            Some(rustls::HandshakeKind::Full),
            Some(rustls::HandshakeKind::Resumed),
            Some(rustls::HandshakeKind::Resumed)
        ]
    );
    assert_eq!(tickets, [1, 2, 3]);
}

/// A TLS 1.2 ClientHello naming `host` by the server_name extension.
fn client_hello_naming(host: &str) -> Vec<u8> {
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0, 2, 0xc0, 0x2b]); // ECDHE-ECDSA-AES128-GCM
    body.extend_from_slice(&[1, 0]); // compression: null
    let name = host.as_bytes();
    let mut sni = ((name.len() + 3) as u16).to_be_bytes().to_vec();
    sni.push(0); // host_name
    sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni.extend_from_slice(name);
    let mut ext = vec![0, 0];
    ext.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    ext.extend_from_slice(&sni);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![1];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    record.extend_from_slice(&hs);
    record
}

/// Runs `tokengate serve` with `[tls]` and `RUST_LOG` as given, sends one
/// handshake naming the server by an IP address (as curl and wrk do when
/// given one), stops it, and returns what it wrote to standard error.
fn stderr_after_an_ip_named_handshake(rust_log: Option<&str>) -> String {
    use std::io::{BufRead, BufReader, Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test ca");
    let config = dir.path().join("tokengate.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\n[store]\nurl = \"sqlite://{}\"\n\n{}",
            dir.path().join("tg.db").display(),
            tls_table(dir.path(), &ca.leaf(&["localhost"]), "")
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tokengate"));
    cmd.arg("--config")
        .arg(&config)
        .arg("serve")
        .env_remove("TOKENGATE_CONFIG")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    if let Some(spec) = rust_log {
        cmd.env("RUST_LOG", spec);
    }
    let mut child = Reaped(cmd.spawn().unwrap());
    let mut stderr = BufReader::new(child.0.stderr.take().unwrap());
    let mut seen = String::new();
    let public = loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "serve exited: {seen}"
        );
        seen.push_str(&line);
        if let Some(at) = line.find("public_addr=") {
            let rest = &line[at + "public_addr=".len()..];
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    let mut s = std::net::TcpStream::connect(&public).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(&client_hello_naming("127.0.0.1")).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let kill = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    assert!(child.0.wait().unwrap().success());
    stderr.read_to_string(&mut seen).unwrap();
    seen
}

/// Kills a started gateway however the test ends.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn what_a_client_puts_in_its_handshake_writes_no_log_line() {
    // rustls warns of an IP address as the server name: by default that
    // line, one per connection at the client's will, is not written...
    let quiet = stderr_after_an_ip_named_handshake(None);
    assert!(quiet.contains("tokengate listening"), "{quiet}");
    assert!(!quiet.contains("Illegal SNI"), "{quiet}");
    // ...and it is when RUST_LOG asks for rustls' warnings (so the
    // handshake above did reach the check).
    let asked = stderr_after_an_ip_named_handshake(Some("info,rustls=warn"));
    assert!(asked.contains("Illegal SNI"), "{asked}");
}

#[tokio::test]
async fn a_client_that_says_close_gets_a_close_notify_then_the_close() {
    let ca = Ca::new("test ca");
    let (g, _dir) = tls_gateway(&ca, Opts::default()).await;
    let mut s = h1_client(g.addr, &ca).await;
    s.write_all(b"GET /public/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let (head, _) = raw_response(&mut s, &mut buf).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    // A clean end: rustls reads the gateway's close_notify as the end of
    // the stream (a bare TCP close would be an `UnexpectedEof` error).
    let mut rest = Vec::new();
    let n = tokio::time::timeout(WAIT, s.read_to_end(&mut rest))
        .await
        .expect("the gateway kept the connection open")
        .unwrap();
    assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&rest));
    assert!(buf.is_empty());
}

/// What decides whether a TLS connection closing after `Connection: close`
/// closes at once (nothing unread) or lingers: nothing unread once a read
/// has taken all the client sent; something, once the runtime has seen
/// more come, and after the client's `close_notify` (lingering then costs
/// a read that ends at once).
#[tokio::test]
async fn a_tls_connection_tells_whether_anything_its_client_sent_is_unread() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::PrivateKeyDer;
    use tokengate::fast::ClientStream;
    let ca = Ca::new("test ca");
    let leaf = ca.leaf(&["localhost"]);
    let server_config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der.clone()],
        PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server_config));
    let accept = async {
        let (tcp, _) = listener.accept().await.unwrap();
        acceptor.accept(tcp).await.unwrap()
    };
    let connect = certs::connect(
        addr,
        "localhost",
        certs::client_config(&ca.pem(), &[H1], None),
    );
    let (mut server, client) = tokio::join!(accept, connect);
    let mut client = client.unwrap();
    let mut buf = vec![0u8; 4096];

    client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    client.flush().await.unwrap();
    let n = server.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n\r\n");
    assert!(server.nothing_unread());

    client.write_all(b"more").await.unwrap();
    client.flush().await.unwrap();
    server.get_ref().0.readable().await.unwrap();
    assert!(!server.nothing_unread());
    let n = server.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"more");
    assert!(server.nothing_unread());

    client.shutdown().await.unwrap();
    server.get_ref().0.readable().await.unwrap();
    assert!(!server.nothing_unread());
    assert_eq!(server.read(&mut buf).await.unwrap(), 0);
    assert!(!server.nothing_unread());
}

#[tokio::test]
async fn a_body_the_upstream_cuts_short_ends_without_a_close_notify() {
    // 100 bytes promised, 10 sent, then the upstream hangs up.
    let up = Upstream::builder()
        .on("cut", |req| {
            vec![
                common::raw::Step::Write(
                    format!(
                        "HTTP/1.1 200 OK\r\nX-Conn: {}\r\ncontent-length: 100\r\n\r\n0123456789",
                        req.conn
                    )
                    .into_bytes(),
                ),
                common::raw::Step::Drained,
                common::raw::Step::Close,
            ]
        })
        .spawn()
        .await;
    let ca = Ca::new("test ca");
    let dir = tempfile::tempdir().unwrap();
    let g = tls_gateway_to(&up, &ca, dir.path()).await;
    let mut s = h1_client(g.addr, &ca).await;
    s.write_all(b"GET /up/cut HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let end = tokio::time::timeout(WAIT, s.read_to_end(&mut got))
        .await
        .expect("the gateway kept the connection open");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\r\nX-Conn: "), "not the fast path: {text}");
    assert!(text.ends_with("0123456789"), "{text}");
    // No close_notify: rustls reports the end as unexpected, so the
    // client knows the body is not whole.
    assert_eq!(
        end.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::UnexpectedEof),
        "{text}"
    );
}

#[tokio::test]
async fn a_tls_client_that_reads_nothing_of_its_answer_is_closed_after_the_idle_timeout() {
    let (up, closed) = common::counted::endless().await;
    let ca = Ca::new("test ca");
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[[upstreams]]\nname = \"endless\"\nurl = \"http://{up}\"\nresponse_timeout_ms = 600000\n\n\
         [[routes]]\npath = \"/endless\"\nupstream = \"endless\"\nauth = \"none\"\n\n{}",
        tls_table(dir.path(), &ca.leaf(&["localhost"]), "")
    );
    let g = Opts::default()
        .server("idle_timeout_seconds", 1)
        .extra(&extra)
        .spawn()
        .await;
    // HTTP/1.1 over TLS: the fast path's writes, and rustls's records.
    let mut s = h1_client(g.addr, &ca).await;
    s.write_all(b"GET /endless HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while closed.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upstream connection was held for a client that reads nothing"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut sink = Vec::new();
    let end = tokio::time::timeout(WAIT, s.read_to_end(&mut sink)).await;
    assert!(end.is_ok(), "the client's connection was kept open");
}
