//! Test harness: a real gateway and real mock upstreams on 127.0.0.1:0.
//!
//! `TestGateway::spawn()` starts an HTTP/1.1 mock upstream, an h2 mock
//! upstream and the gateway in front of them (SQLite in a temp dir, a manual
//! clock), and seeds a tenant, an account and a workspace. The mock
//! upstreams record every request they receive, so tests can assert what the
//! upstream actually saw. [`Opts`] takes keys for the generated `[server]`
//! and `[store]` tables and extra tables; [`raw`] has a scripted raw
//! upstream and a raw client for byte-exact tests; [`outage`] a store a
//! test can take down; [`ws`] WebSocket clients through the gateway; [`counted`] upstreams that
//! stall or never end, counting the connections the gateway closes.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod certs;
pub mod counted;
pub mod cut;
pub mod outage;
pub mod pg;
pub mod raw;
pub mod ws;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokengate::auth::Ability;
use tokengate::clock::Clock;
use tokengate::config::Config;
use tokengate::gateway::Gateway;
use tokengate::issuer::{Actor, MintRequest};
use tokengate::server::{self, Running};
use tokengate::store::NewAccount;
use tokengate::token::TokenKind;
use tokio::net::TcpListener;

/// A request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub uri: String,
    pub version: Version,
    pub headers: HeaderMap,
}

/// A mock upstream. Paths:
/// - `/slow...`: waits 3 s before answering (for 504 / shutdown tests);
/// - `.../echo...`: streams the request body (and trailers) back;
/// - `/ws...`: accepts a WebSocket upgrade and echoes messages;
/// - anything else: 200 `{"ok":true}`.
#[derive(Clone)]
pub struct MockUpstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl MockUpstream {
    pub async fn spawn(h2: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let s = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let s = Arc::clone(&s);
                tokio::spawn(async move {
                    let svc = service_fn(move |req| upstream_handler(Arc::clone(&s), req));
                    let io = TokioIo::new(stream);
                    if h2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .with_upgrades()
                            .await;
                    }
                });
            }
        });
        Self { addr, seen }
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("upstream saw no request")
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

type UpBody = http_body_util::Either<Incoming, Full<Bytes>>;

async fn upstream_handler(
    seen: Arc<Mutex<Vec<Seen>>>,
    mut req: Request<Incoming>,
) -> Result<Response<UpBody>, Infallible> {
    seen.lock().unwrap().push(Seen {
        method: req.method().clone(),
        uri: req.uri().to_string(),
        version: req.version(),
        headers: req.headers().clone(),
    });
    let path = req.uri().path().to_string();
    if path.starts_with("/slow") {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    if path.contains("/echo") {
        return Ok(Response::new(http_body_util::Either::Left(req.into_body())));
    }
    if path.starts_with("/ws") {
        let key = req.headers().get("sec-websocket-key").cloned();
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            use futures_util::{SinkExt, StreamExt};
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            while let Some(Ok(msg)) = ws.next().await {
                if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                    break;
                }
            }
        });
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(
            key.as_ref().map(|k| k.as_bytes()).unwrap_or_default(),
        );
        let resp = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", accept)
            .body(http_body_util::Either::Right(Full::new(Bytes::new())))
            .unwrap();
        return Ok(resp);
    }
    let mut resp = Response::new(http_body_util::Either::Right(Full::new(
        Bytes::from_static(b"{\"ok\":true}"),
    )));
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    // Hop-by-hop headers the gateway must not pass back.
    resp.headers_mut()
        .insert("keep-alive", "timeout=5".parse().unwrap());
    Ok(resp)
}

/// The routes every harness gateway has. No catch-all, so 404 is testable.
pub const ROUTES: &str = r#"
[[routes]]
path = "/api"
upstream = "mock"

[[routes]]
path = "/api/calls"
methods = ["GET"]
upstream = "mock"
abilities = ["calls:read"]

[[routes]]
path = "/api/calls"
methods = ["POST"]
upstream = "mock"
abilities = ["calls:write"]

[[routes]]
path = "/api/admin"
upstream = "mock"
abilities = ["admin"]

[[routes]]
path = "/admin"
upstream = "mock"
abilities = ["admin"]

[[routes]]
path = "/readonly"
methods = ["GET"]
upstream = "mock"

[[routes]]
path = "/public"
upstream = "mock"
auth = "none"

[[routes]]
path = "/maybe"
upstream = "mock"
auth = "optional"

[[routes]]
path = "/echo"
upstream = "mock"

[[routes]]
path = "/ws"
upstream = "mock"

[[routes]]
path = "/slow"
upstream = "mock"

[[routes]]
path = "/dead"
upstream = "dead"

[[routes]]
path = "/h2"
upstream = "h2mock"
"#;

/// How to spawn a harness gateway.
pub struct Opts {
    /// Extra config tables appended to the generated config.
    pub extra: String,
    /// `server.shutdown_grace_seconds`.
    pub grace_seconds: u64,
    /// `store.url`; default a fresh SQLite file in a temp dir.
    pub store_url: Option<String>,
    /// (tenant, account, workspace) already in the store; default: seed them.
    pub seeded: Option<(i64, i64, i64)>,
    /// `store.timeout_seconds`.
    pub store_timeout_seconds: u64,
    /// More keys of the generated `[server]` table, TOML lines (e.g.
    /// `fast_path = false`); see [`Opts::server`].
    pub server: String,
    /// More keys of the generated `[store]` table, TOML lines (e.g.
    /// `last_used_flush_seconds = 3600`); see [`Opts::store`].
    pub store: String,
    /// Puts the store behind this switch, so the test can take it down.
    pub outage: Option<outage::Outage>,
    /// Keys of the generated `[log]` table; see [`Opts::log`]. Empty:
    /// `access = false`, so test output carries no access lines.
    pub log: String,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            extra: String::new(),
            grace_seconds: 5,
            store_url: None,
            seeded: None,
            store_timeout_seconds: 5,
            server: String::new(),
            store: String::new(),
            outage: None,
            log: String::new(),
        }
    }
}

impl Opts {
    /// Sets a key of the `[server]` table: `.server("fast_path", false)`,
    /// `.server("header_read_timeout_seconds", 1)`. Strings are quoted.
    pub fn server(mut self, key: &str, value: impl TomlValue) -> Self {
        self.server.push_str(&format!("{key} = {}\n", value.toml()));
        self
    }

    /// Sets a key of the `[store]` table: `.store("last_used_flush_seconds", 3600)`.
    pub fn store(mut self, key: &str, value: impl TomlValue) -> Self {
        self.store.push_str(&format!("{key} = {}\n", value.toml()));
        self
    }

    /// Sets a key of the `[log]` table: `.log("access_file", path)`. Once
    /// any is set, the access log is on unless `access = false` is set.
    pub fn log(mut self, key: &str, value: impl TomlValue) -> Self {
        self.log.push_str(&format!("{key} = {}\n", value.toml()));
        self
    }

    /// `server.fast_path`.
    pub fn fast_path(self, on: bool) -> Self {
        self.server("fast_path", on)
    }

    /// Appends config tables (`[cache]`, `[[routes]]`, ...).
    pub fn extra(mut self, tables: &str) -> Self {
        self.extra.push_str(tables);
        self.extra.push('\n');
        self
    }

    /// `server.shutdown_grace_seconds`.
    pub fn grace_seconds(mut self, secs: u64) -> Self {
        self.grace_seconds = secs;
        self
    }

    /// The store goes behind `outage`.
    pub fn outage(mut self, outage: &outage::Outage) -> Self {
        self.outage = Some(outage.clone());
        self
    }

    pub async fn spawn(self) -> TestGateway {
        TestGateway::spawn_opts(self).await
    }
}

/// A value written into the generated TOML.
pub trait TomlValue {
    fn toml(&self) -> String;
}

impl TomlValue for bool {
    fn toml(&self) -> String {
        self.to_string()
    }
}

impl TomlValue for u64 {
    fn toml(&self) -> String {
        self.to_string()
    }
}

impl TomlValue for i32 {
    fn toml(&self) -> String {
        self.to_string()
    }
}

impl TomlValue for &str {
    fn toml(&self) -> String {
        format!("{self:?}")
    }
}

pub struct TestGateway {
    pub gateway: Arc<Gateway>,
    pub running: Option<Running>,
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub upstream: MockUpstream,
    pub h2_upstream: MockUpstream,
    pub clock: Clock,
    pub tenant_id: i64,
    pub account_id: i64,
    pub workspace_id: i64,
    pub dir: tempfile::TempDir,
}

/// A port nothing listens on: bound (so no other test's socket can take it
/// while tests run in parallel) but never listening, so a connect is
/// refused. The socket is leaked to hold the port for the whole run.
pub async fn dead_port() -> u16 {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = s.local_addr().unwrap().port();
    Box::leak(Box::new(s));
    port
}

impl TestGateway {
    pub async fn spawn() -> Self {
        Self::spawn_with("").await
    }

    /// `extra` is appended to the generated config (extra tables only).
    pub async fn spawn_with(extra: &str) -> Self {
        Self::spawn_full(extra, 5).await
    }

    /// Full control: extra config tables and the shutdown grace in seconds.
    pub async fn spawn_full(extra: &str, grace_seconds: u64) -> Self {
        Self::spawn_opts(Opts {
            extra: extra.into(),
            grace_seconds,
            ..Opts::default()
        })
        .await
    }

    /// A second instance on the same store as `self`, sharing its seeded
    /// tenant, account and workspace.
    pub async fn peer(&self, store_url: &str, extra: &str) -> Self {
        Self::spawn_opts(Opts {
            extra: extra.into(),
            store_url: Some(store_url.into()),
            seeded: Some((self.tenant_id, self.account_id, self.workspace_id)),
            ..Opts::default()
        })
        .await
    }

    /// Polls `f` every 10 ms until it holds; panics after 20 s. For
    /// "eventually" behaviour across instances, never for speed.
    pub async fn eventually<F, Fut>(what: &str, mut f: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !f().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "never happened: {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn spawn_opts(opts: Opts) -> Self {
        let Opts {
            extra,
            grace_seconds,
            store_url,
            seeded,
            store_timeout_seconds,
            server,
            store: store_keys,
            outage,
            log,
        } = opts;
        let log = if log.is_empty() {
            "access = false\n".to_string()
        } else {
            log
        };
        let extra = extra.as_str();
        let upstream = MockUpstream::spawn(false).await;
        let h2_upstream = MockUpstream::spawn(true).await;
        let dir = tempfile::tempdir().unwrap();
        let dead = dead_port().await;
        let text = format!(
            r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
shutdown_grace_seconds = {grace_seconds}
{server}

[store]
url = "{db}"
timeout_seconds = {store_timeout_seconds}
{store_keys}

[log]
{log}

[[upstreams]]
name = "mock"
url = "http://{up}"
response_timeout_ms = 1000
connect_timeout_ms = 1000

[[upstreams]]
name = "h2mock"
url = "http://{h2}"
protocol = "h2"

[[upstreams]]
name = "dead"
url = "http://127.0.0.1:{dead}"
connect_timeout_ms = 1000
{ROUTES}
{extra}
"#,
            db = store_url
                .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("tg.db").display())),
            up = upstream.addr,
            h2 = h2_upstream.addr,
        );
        let config = Config::from_toml(std::path::Path::new("test.toml"), &text).unwrap();
        let store = tokengate::store::open(&config.store.url, 4, config.store.timeout)
            .await
            .unwrap();
        let store = match &outage {
            Some(o) => o.wrap(store),
            None => store,
        };
        let clock = Clock::manual(1_800_000_000);
        let gateway = Gateway::new(config, store, clock.clone());

        let (tenant_id, account_id, workspace_id) = match seeded {
            Some(ids) => ids,
            None => {
                let actor = Actor::default();
                let tenant = gateway.issuer.create_tenant("acme", &actor).await.unwrap();
                let (account, ws) = gateway
                    .issuer
                    .create_account(
                        &NewAccount {
                            tenant_id: tenant.id,
                            email: "ann@example.com".into(),
                            name: "Ann".into(),
                            external_id: None,
                            parent_account_id: None,
                            workspace: Some("default".into()),
                        },
                        &actor,
                    )
                    .await
                    .unwrap();
                (tenant.id, account.id, ws.unwrap().id)
            }
        };

        let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running = server::start_on(Arc::clone(&gateway), public, admin)
            .await
            .unwrap();
        Self {
            addr: running.public_addr,
            admin_addr: running.admin_addr,
            running: Some(running),
            gateway,
            upstream,
            h2_upstream,
            clock,
            tenant_id,
            account_id,
            workspace_id,
            dir,
        }
    }

    /// Mints an api token for the seeded account with these abilities.
    pub async fn token(&self, abilities: &[&str]) -> String {
        self.mint(TokenKind::Api, abilities, None).await.0
    }

    /// Mints a token; returns (secret, id).
    pub async fn mint(
        &self,
        kind: TokenKind,
        abilities: &[&str],
        expires_at: Option<i64>,
    ) -> (String, String) {
        let (tenant_id, account_id, workspace_id) = match kind {
            TokenKind::Root => (None, None, None),
            TokenKind::TenantAdmin => (Some(self.tenant_id), None, None),
            _ => (
                Some(self.tenant_id),
                Some(self.account_id),
                Some(self.workspace_id),
            ),
        };
        let m = self
            .gateway
            .issuer
            .mint(
                MintRequest {
                    kind,
                    tenant_id,
                    account_id,
                    workspace_id,
                    name: "test token".into(),
                    abilities: abilities
                        .iter()
                        .map(|a| Ability::parse(a).unwrap())
                        .collect(),
                    expires_at,
                },
                &Actor::default(),
            )
            .await
            .unwrap();
        (m.secret.expose().to_string(), m.row.id)
    }

    /// Starts a streaming `POST` whose body is fed chunk by chunk through the
    /// returned sender (dropping it ends the body); the response arrives on
    /// the returned handle.
    pub fn upload(
        &self,
        path: &str,
        token: &str,
    ) -> (
        tokio::sync::mpsc::Sender<Bytes>,
        tokio::task::JoinHandle<Result<Response<Incoming>, hyper_util::client::legacy::Error>>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(hyper::body::Frame::data(b)), rx))
        });
        let client: Client<_, http_body_util::combinators::BoxBody<Bytes, Infallible>> =
            Client::builder(TokioExecutor::new()).build_http();
        let req = Request::post(self.url(path))
            .header("authorization", format!("Bearer {token}"))
            .body(http_body_util::StreamBody::new(stream).boxed())
            .unwrap();
        (tx, tokio::spawn(client.request(req)))
    }

    /// The admin listener's `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        let r = send(self.admin_addr, Method::GET, "/metrics", &[], b"").await;
        assert_eq!(r.status, StatusCode::OK);
        String::from_utf8(r.body.to_vec()).unwrap()
    }

    /// The value of the metric line `name` (e.g. `tokengate_memo_hits_total`)
    /// in `/metrics`.
    pub async fn metric(&self, name: &str) -> u64 {
        let text = self.metrics_text().await;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
    }

    pub fn store_lookups(&self) -> u64 {
        self.gateway.metrics.store_lookups.get()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The `store.url` this gateway runs on.
    pub fn store_url(&self) -> String {
        self.gateway.config.store.url.expose().to_string()
    }

    /// A second, independent handle on this gateway's store (its own
    /// connection pool), as another process (`tokengate token revoke` from
    /// a shell) would have: changes made through it reach the gateway only
    /// as the store itself tells them.
    pub async fn other_process_store(&self) -> Arc<dyn tokengate::store::TokenStore> {
        let url = tokengate::config::DatabaseUrl::new(self.store_url());
        tokengate::store::open(&url, 2, Duration::from_secs(5))
            .await
            .unwrap()
    }

    /// Like [`TestGateway::send`], over HTTP/2 (prior knowledge): always
    /// served by hyper, never the fast path.
    pub async fn send_h2(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &'static [u8],
    ) -> Reply {
        send_h2(self.addr, method, path, headers, body.to_vec()).await
    }

    /// Sends a request with headers; returns status, headers and body.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &'static [u8],
    ) -> Reply {
        send(self.addr, method, path, headers, body).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        self.send(Method::GET, path, &headers, b"").await
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// The denial code of a gateway JSON error.
    pub fn code(&self) -> String {
        let v = self.json();
        assert_eq!(v["error"], true, "not an error body: {v}");
        v["code"].as_str().unwrap().to_string()
    }
}

pub async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &'static [u8],
) -> Reply {
    send_bytes(addr, method, path, headers, body.to_vec()).await
}

/// A JSON call with `Authorization: Bearer <token>` (if any).
pub async fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    send_bytes(addr, method, path, &headers, body).await
}

pub async fn send_bytes(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Reply {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body))).unwrap();
    reply(client.request(req)).await
}

/// [`send_bytes`] over HTTP/2 with prior knowledge (hyper's path on the
/// gateway, whatever `server.fast_path` says).
pub async fn send_h2(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Reply {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body))).unwrap();
    reply(client.request(req)).await
}

/// Waits (bounded) for a response and reads it whole.
async fn reply<E: std::fmt::Debug>(
    sent: impl std::future::Future<Output = Result<Response<Incoming>, E>>,
) -> Reply {
    let resp = tokio::time::timeout(Duration::from_secs(10), sent)
        .await
        .expect("gateway answered in time")
        .expect("request failed");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// One client keep-alive connection to the gateway: every request goes over
/// the same TCP connection (the per-connection token memo sees them all).
pub struct KeepAlive {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl KeepAlive {
    pub async fn open(addr: SocketAddr) -> Self {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Self { sender }
    }

    /// GET `path` with `Authorization: Bearer <token>`.
    pub async fn get(&mut self, path: &str, token: &str) -> Reply {
        self.send(path, token, false).await
    }

    /// [`Self::get`], saying `Connection: close`: the connection's last.
    pub async fn get_last(&mut self, path: &str, token: &str) -> Reply {
        self.send(path, token, true).await
    }

    async fn send(&mut self, path: &str, token: &str, last: bool) -> Reply {
        self.sender.ready().await.expect("connection still open");
        let mut req = Request::get(path)
            .header("host", "gateway")
            .header("authorization", format!("Bearer {token}"));
        if last {
            req = req.header("connection", "close");
        }
        reply(
            self.sender
                .send_request(req.body(Full::new(Bytes::new())).unwrap()),
        )
        .await
    }
}
