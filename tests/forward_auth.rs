//! Forward auth (`[forward_auth]`, DESIGN section 11) over real sockets:
//! the endpoint itself, point by point and on both paths (the fast path and
//! hyper), then real nginx (`auth_request`) and real Caddy (`forward_auth`)
//! in front of a mock upstream, and requests shaped exactly as Traefik's
//! ForwardAuth and Envoy's ext_authz send them.
//!
//! Clients are raw TCP where the bytes matter (HEAD, keep-alive, which
//! path answered); nginx and Caddy tests print "skipped: … not installed"
//! and pass when the binary is absent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::{Opts, TestGateway};
use http::{Method, StatusCode};
use tokengate::store::Status;
use tokengate::token::{TokenFormat, TokenKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The endpoint's default path.
const FA: &str = "/_tokengate/auth";

/// A bound for hangs, never a measure of speed.
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Harness: the shared gateway with `server.fast_path` on or off, and a raw
// HTTP/1.1 client.

/// A harness gateway (the shared routes, mock upstreams and seeded tenant,
/// account and workspace) with `server.fast_path = fast` and `extra`
/// tables appended.
async fn spawn(fast: bool, extra: &str) -> TestGateway {
    Opts::default()
        .fast_path(fast)
        .grace_seconds(1)
        .extra(extra)
        .spawn()
        .await
}

/// A response as the raw client read it.
#[derive(Debug)]
struct Resp {
    status: u16,
    /// The head as sent: status line and fields, names in their case.
    head: String,
    /// Fields, names lower-cased, in order.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// It answers a HEAD.
    to_head: bool,
}

impl Resp {
    fn values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.values(name).first().copied()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {:?}\n{}",
                String::from_utf8_lossy(&self.body),
                self.head
            )
        })
    }

    /// The denial code of a gateway JSON error.
    fn code(&self) -> String {
        let v = self.json();
        assert_eq!(v["error"], true, "not an error body: {v}");
        v["code"].as_str().unwrap().to_string()
    }

    /// Status and code, for comparing refusals.
    fn refusal(&self) -> (u16, String) {
        (self.status, self.code())
    }

    /// Whether it carries any of the caller's gateway headers.
    fn has_identity(&self) -> bool {
        IDENTITY.iter().any(|h| self.header(h).is_some())
    }
}

/// The caller's gateway headers (default names).
const IDENTITY: [&str; 6] = [
    "x-tenant-id",
    "x-account-id",
    "x-workspace-id",
    "x-token-id",
    "x-token-name",
    "x-token-abilities",
];

/// One keep-alive HTTP/1.1 connection, byte for byte.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn open(addr: SocketAddr) -> Self {
        Self {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn more(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
            .await
            .expect("the gateway went silent")
        {
            Ok(0) | Err(_) => false,
            Ok(k) => {
                self.buf.extend_from_slice(&chunk[..k]);
                true
            }
        }
    }

    /// Sends `method target` with `headers` (and `Host`), and a body if
    /// any; reads the response.
    async fn ask(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Resp {
        let mut req = format!("{method} {target} HTTP/1.1\r\nHost: gateway.test\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.stream.write_all(&bytes).await.unwrap();
        self.response(method == "HEAD").await
    }

    async fn response(&mut self, head_request: bool) -> Resp {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(
                self.more().await,
                "closed before a response head; got {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
        self.buf.drain(..end);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        assert!(status_line.starts_with("HTTP/1.1 "), "{head}");
        let status: u16 = status_line[9..12].parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut resp = Resp {
            status,
            head,
            headers,
            body: Vec::new(),
            to_head: head_request,
        };
        if !head_request {
            let len: usize = resp
                .header("content-length")
                .unwrap_or_else(|| panic!("no content-length:\n{}", resp.head))
                .parse()
                .unwrap();
            while self.buf.len() < len {
                assert!(self.more().await, "closed mid body");
            }
            resp.body = self.buf.drain(..len).collect();
        }
        resp
    }
}

/// One forward-auth request on a fresh connection: `GET` to the endpoint
/// with `headers`.
async fn fa(g: &TestGateway, headers: &[(&str, &str)]) -> Resp {
    Raw::open(g.addr).await.ask("GET", FA, headers, b"").await
}

/// Forward auth as Traefik and Caddy ask it: the original method and
/// target in `X-Forwarded-Method` and `X-Forwarded-Uri`.
async fn fa_for(g: &TestGateway, method: &str, target: &str, more: &[(&str, &str)]) -> Resp {
    let mut h = vec![("X-Forwarded-Method", method), ("X-Forwarded-Uri", target)];
    h.extend_from_slice(more);
    fa(g, &h).await
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// Checks an allowed answer: 200, empty body, the seeded caller's headers
/// for token `id` with `abilities`, a request id.
fn assert_allowed_as(g: &TestGateway, r: &Resp, id: &str, abilities: &str) {
    assert_eq!(
        r.status,
        200,
        "{}\n{}",
        r.head,
        String::from_utf8_lossy(&r.body)
    );
    assert!(r.body.is_empty());
    // (hyper leaves the length off an answer to HEAD.)
    if !(r.to_head && r.header("content-length").is_none()) {
        assert_eq!(r.header("content-length"), Some("0"), "{}", r.head);
    }
    assert_eq!(r.values("x-tenant-id"), [g.tenant_id.to_string()]);
    assert_eq!(r.values("x-account-id"), [g.account_id.to_string()]);
    assert_eq!(r.values("x-workspace-id"), [g.workspace_id.to_string()]);
    assert_eq!(r.values("x-token-id"), [id]);
    assert_eq!(r.values("x-token-name"), ["test token"]);
    assert_eq!(r.values("x-token-abilities"), [abilities]);
    assert_eq!(r.values("x-request-id").len(), 1);
    assert!(r.header("date").is_some());
    // Never the request's own context headers.
    for h in ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"] {
        assert!(r.header(h).is_none(), "{h} on:\n{}", r.head);
    }
}

/// Checks an anonymous allowed answer: 200, empty body, no identity.
fn assert_allowed_anonymously(r: &Resp) {
    assert_eq!(
        r.status,
        200,
        "{}\n{}",
        r.head,
        String::from_utf8_lossy(&r.body)
    );
    assert!(r.body.is_empty());
    assert!(
        !r.has_identity(),
        "identity on an anonymous answer:\n{}",
        r.head
    );
    assert_eq!(r.values("x-request-id").len(), 1);
}

// ---------------------------------------------------------------------------
// The endpoint.

#[tokio::test]
async fn a_valid_token_is_allowed_with_its_gateway_headers_on_both_paths() {
    for fast in [true, false] {
        let g = spawn(fast, "").await;
        let (t, id) = g.mint(TokenKind::Api, &["calls:read"], None).await;
        let auth = bearer(&t);
        let r = fa_for(
            &g,
            "GET",
            "/api/calls/7?page=2",
            &[("Authorization", &auth)],
        )
        .await;
        assert_allowed_as(&g, &r, &id, "calls:read");
        // The `token:` header is read as on the proxy path.
        let r = fa_for(&g, "GET", "/api/calls/7", &[("token", &t)]).await;
        assert_allowed_as(&g, &r, &id, "calls:read");
        // Nothing was forwarded; both were counted as allowed.
        assert_eq!(g.upstream.count(), 0, "fast path {fast}");
        assert_eq!(g.gateway.metrics.forwarded.get(), 0);
        assert_eq!(g.gateway.metrics.forward_auth_allowed.get(), 2);
    }
}

/// An original request (method, target, headers) and the refusal it gets
/// (status, code).
type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, u16, &'a str);

#[tokio::test]
async fn every_denial_is_the_proxy_paths_own_on_both_paths() {
    for fast in [true, false] {
        let g = spawn(fast, "").await;
        let now = g.clock.now();
        let read = g.token(&["calls:read"]).await;
        let all = g.token(&["*"]).await;
        let (revoked, rid) = g.mint(TokenKind::Api, &["*"], None).await;
        g.gateway
            .issuer
            .revoke(&rid, &Default::default())
            .await
            .unwrap();
        let (expired, _) = g.mint(TokenKind::Api, &["*"], Some(now + 10)).await;
        let (root, _) = g.mint(TokenKind::Root, &["*"], None).await;
        let (tenant_admin, _) = g.mint(TokenKind::TenantAdmin, &["*"], None).await;
        let stranger = TokenFormat::default().generate(TokenKind::Api);
        g.clock.advance(10);

        let (b_read, b_all, b_revoked, b_expired) = (
            bearer(&read),
            bearer(&all),
            bearer(&revoked),
            bearer(&expired),
        );
        let (b_root, b_admin, b_stranger) = (
            bearer(&root),
            bearer(&tenant_admin),
            bearer(stranger.expose()),
        );
        // (method, target, headers, status, code)
        let cases: Vec<Case> = vec![
            ("GET", "/api/x", vec![], 401, "TOKEN_MISSING"),
            (
                "GET",
                "/api/x",
                vec![("Authorization", "Bearer garbage")],
                401,
                "TOKEN_MALFORMED",
            ),
            (
                "GET",
                "/api/x",
                vec![("Authorization", "Basic dXNlcjpwdw==")],
                401,
                "TOKEN_MALFORMED",
            ),
            (
                "GET",
                "/api/x",
                vec![("Authorization", &b_stranger)],
                401,
                "TOKEN_INVALID",
            ),
            (
                "GET",
                "/api/x",
                vec![("Authorization", &b_revoked)],
                401,
                "TOKEN_REVOKED",
            ),
            (
                "GET",
                "/api/x",
                vec![("Authorization", &b_expired)],
                401,
                "TOKEN_EXPIRED",
            ),
            (
                "POST",
                "/api/calls",
                vec![("Authorization", &b_read)],
                403,
                "ABILITY_MISSING",
            ),
            (
                "GET",
                "/admin",
                vec![("Authorization", &b_read)],
                403,
                "ABILITY_MISSING",
            ),
            (
                "GET",
                "/api/x",
                vec![("Authorization", &b_root)],
                403,
                "TOKEN_KIND_NOT_ALLOWED",
            ),
            (
                "GET",
                "/api/x",
                vec![("Authorization", &b_admin)],
                403,
                "TOKEN_KIND_NOT_ALLOWED",
            ),
            (
                "GET",
                "/nowhere",
                vec![("Authorization", &b_all)],
                404,
                "ROUTE_NOT_FOUND",
            ),
            (
                "POST",
                "/readonly",
                vec![("Authorization", &b_all)],
                405,
                "METHOD_NOT_ALLOWED",
            ),
            (
                "get",
                "/api/x",
                vec![("Authorization", &b_all)],
                400,
                "BAD_METHOD",
            ),
            (
                "Post",
                "/api/x",
                vec![("Authorization", &b_all)],
                400,
                "BAD_METHOD",
            ),
            (
                "GET",
                "/api/a%2Fb",
                vec![("Authorization", &b_all)],
                400,
                "BAD_PATH",
            ),
            (
                "GET",
                "/api/a%5cb",
                vec![("Authorization", &b_all)],
                400,
                "BAD_PATH",
            ),
            (
                "GET",
                "/api/x",
                vec![("Authorization", &b_all), ("X_Tenant_Id", "9")],
                400,
                "FORBIDDEN_HEADER",
            ),
            (
                "GET",
                "/api/x",
                vec![("Authorization", &b_all), ("x.tenant.id", "9")],
                400,
                "FORBIDDEN_HEADER",
            ),
            (
                "GET",
                "/api/x",
                vec![("Authorization", &b_all), ("token", &read)],
                400,
                "CONFLICTING_CREDENTIALS",
            ),
        ];
        for (method, target, headers, status, code) in &cases {
            let r = fa_for(&g, method, target, headers).await;
            assert_eq!(
                r.refusal(),
                (*status, code.to_string()),
                "{method} {target} fast {fast}"
            );
            // Exactly what the proxy path answers the original request.
            let direct = Raw::open(g.addr)
                .await
                .ask(method, target, headers, b"")
                .await;
            assert_eq!(
                direct.refusal(),
                r.refusal(),
                "{method} {target} fast {fast}"
            );
            for h in ["www-authenticate", "retry-after", "content-type", "allow"] {
                assert_eq!(r.header(h), direct.header(h), "{h}: {method} {target}");
            }
            // A 405 lists what the original path's routes take.
            if *status == 405 {
                assert!(
                    r.header("allow").is_some_and(|a| a.contains("GET")),
                    "allow: {method} {target} fast {fast}"
                );
            }
            assert_eq!(r.header("content-type"), Some("application/json"));
            assert_eq!(r.values("x-request-id").len(), 1);
            assert!(!r.has_identity());
        }
        // 401s challenge as the proxy path does.
        let r = fa_for(&g, "GET", "/api/x", &[]).await;
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        let r = fa_for(&g, "GET", "/api/x", &[("Authorization", "Bearer garbage")]).await;
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer error=\"invalid_token\"")
        );

        // Blocked account and tenant.
        g.gateway
            .issuer
            .set_account_status(g.account_id, Status::Blocked, &Default::default())
            .await
            .unwrap();
        let r = fa_for(&g, "GET", "/api/x", &[("Authorization", &b_all)]).await;
        assert_eq!(r.refusal(), (403, "ACCOUNT_BLOCKED".into()));
        g.gateway
            .issuer
            .set_account_status(g.account_id, Status::Active, &Default::default())
            .await
            .unwrap();
        g.gateway
            .issuer
            .set_tenant_status(g.tenant_id, Status::Blocked, &Default::default())
            .await
            .unwrap();
        let r = fa_for(&g, "GET", "/api/x", &[("Authorization", &b_all)]).await;
        assert_eq!(r.refusal(), (403, "TENANT_BLOCKED".into()));
        g.gateway
            .issuer
            .set_tenant_status(g.tenant_id, Status::Active, &Default::default())
            .await
            .unwrap();
        assert_eq!(
            fa_for(&g, "GET", "/api/x", &[("Authorization", &b_all)])
                .await
                .status,
            200
        );

        // Neither the forward-auth requests nor the refused direct ones
        // reached the upstream.
        assert_eq!(g.upstream.count(), 0, "fast path {fast}");
    }
}

#[tokio::test]
async fn a_store_outage_fails_closed_with_503_and_retry_after() {
    for fast in [true, false] {
        let g = spawn(fast, "").await;
        let cached = g.token(&["*"]).await;
        let unseen = g.token(&["*"]).await;
        let (b_cached, b_unseen) = (bearer(&cached), bearer(&unseen));
        assert_eq!(
            fa_for(&g, "GET", "/api/x", &[("Authorization", &b_cached)])
                .await
                .status,
            200
        );
        // The token table goes away under the gateway: every lookup fails.
        let db = format!("sqlite://{}", g.dir.path().join("tg.db").display());
        let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
        sqlx::query("ALTER TABLE tokens RENAME TO tokens_away")
            .execute(&pool)
            .await
            .unwrap();
        let r = fa_for(&g, "GET", "/api/x", &[("Authorization", &b_unseen)]).await;
        assert_eq!(
            r.refusal(),
            (503, "STORE_UNAVAILABLE".into()),
            "fast {fast}"
        );
        assert_eq!(r.header("retry-after"), Some("1"));
        let direct = Raw::open(g.addr)
            .await
            .ask("GET", "/api/x", &[("Authorization", &b_unseen)], b"")
            .await;
        assert_eq!(direct.refusal(), r.refusal());
        // A cached token keeps working, as on the proxy path.
        assert_eq!(
            fa_for(&g, "GET", "/api/x", &[("Authorization", &b_cached)])
                .await
                .status,
            200
        );
        sqlx::query("ALTER TABLE tokens_away RENAME TO tokens")
            .execute(&pool)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn each_way_of_passing_the_original_request_and_its_precedence() {
    for fast in [true, false] {
        let g = spawn(fast, "").await;
        // calls:read admits GET /api/calls; POST /api/calls needs
        // calls:write (403); /admin needs admin (403); /nowhere is 404.
        let t = g.token(&["calls:read"]).await;
        let auth = bearer(&t);
        let a = ("Authorization", auth.as_str());
        let mut c = Raw::open(g.addr).await;

        // The target: X-Forwarded-Uri, else X-Original-URI, else the path
        // below the endpoint, else `/`.
        let r = c
            .ask(
                "GET",
                &format!("{FA}/nowhere"),
                &[
                    a,
                    ("X-Original-URI", "/admin"),
                    ("X-Forwarded-Uri", "/api/calls/1"),
                ],
                b"",
            )
            .await;
        assert_eq!(r.status, 200, "X-Forwarded-Uri wins: {}", r.head);
        let r = c
            .ask(
                "GET",
                &format!("{FA}/api/calls/1"),
                &[a, ("X-Original-URI", "/admin")],
                b"",
            )
            .await;
        assert_eq!(
            r.refusal(),
            (403, "ABILITY_MISSING".into()),
            "X-Original-URI wins over the suffix"
        );
        let r = c
            .ask(
                "GET",
                &format!("{FA}/api/calls/1"),
                &[a, ("X-Original-URI", "/api/calls/1")],
                b"",
            )
            .await;
        assert_eq!(r.status, 200);
        let r = c.ask("GET", &format!("{FA}/nowhere"), &[a], b"").await;
        assert_eq!(r.refusal(), (404, "ROUTE_NOT_FOUND".into()), "the suffix");
        let r = c
            .ask("GET", &format!("{FA}/api/calls/1?x=1"), &[a], b"")
            .await;
        assert_eq!(r.status, 200, "the suffix");
        // Nothing at all: `/`, which no harness route serves.
        let r = c.ask("GET", FA, &[a], b"").await;
        assert_eq!(r.refusal(), (404, "ROUTE_NOT_FOUND".into()), "`/`");
        let r = c.ask("GET", &format!("{FA}/"), &[a], b"").await;
        assert_eq!(r.refusal(), (404, "ROUTE_NOT_FOUND".into()), "`/`");

        // The method: X-Forwarded-Method, else X-Original-Method, else the
        // request's own.
        let r = c
            .ask(
                "GET",
                FA,
                &[
                    a,
                    ("X-Forwarded-Uri", "/api/calls"),
                    ("X-Original-Method", "POST"),
                    ("X-Forwarded-Method", "GET"),
                ],
                b"",
            )
            .await;
        assert_eq!(r.status, 200, "X-Forwarded-Method wins");
        let r = c
            .ask(
                "GET",
                FA,
                &[
                    a,
                    ("X-Forwarded-Uri", "/api/calls"),
                    ("X-Original-Method", "POST"),
                ],
                b"",
            )
            .await;
        assert_eq!(
            r.refusal(),
            (403, "ABILITY_MISSING".into()),
            "X-Original-Method wins over the own method"
        );
        let r = c
            .ask("POST", FA, &[a, ("X-Forwarded-Uri", "/api/calls")], b"")
            .await;
        assert_eq!(
            r.refusal(),
            (403, "ABILITY_MISSING".into()),
            "the request's own method"
        );
        let r = c
            .ask("GET", FA, &[a, ("X-Forwarded-Uri", "/api/calls")], b"")
            .await;
        assert_eq!(r.status, 200, "the request's own method");

        // Two copies that disagree cannot be told apart: refused.
        let r = c
            .ask(
                "GET",
                FA,
                &[
                    a,
                    ("X-Forwarded-Uri", "/api/calls"),
                    ("X-Forwarded-Uri", "/public"),
                ],
                b"",
            )
            .await;
        assert_eq!(r.refusal(), (400, "BAD_PATH".into()));
        let r = c
            .ask(
                "GET",
                FA,
                &[
                    a,
                    ("X-Forwarded-Uri", "/api/calls"),
                    ("X-Forwarded-Method", "GET"),
                    ("X-Forwarded-Method", "POST"),
                ],
                b"",
            )
            .await;
        assert_eq!(r.refusal(), (400, "BAD_METHOD".into()));
        assert_eq!(g.upstream.count(), 0);
    }
}

#[tokio::test]
async fn the_original_target_is_normalised_as_the_proxy_path_does() {
    for fast in [true, false] {
        let g = spawn(fast, "").await;
        let t = g.token(&["calls:read"]).await;
        let auth = bearer(&t);
        let a = ("Authorization", auth.as_str());
        // Dot segments, doubled slashes and encoded unreserved characters
        // cannot climb out of a route: each of these is /admin or
        // /api/admin, which need `admin`.
        for target in [
            "/api/calls/../admin",
            "/api/calls/../../admin",
            "/public/../admin",
            "/public/%2e%2e/admin",
            "//admin",
            "/%61dmin",
            "/public/./../admin?next=/public",
        ] {
            let r = fa_for(&g, "GET", target, &[a]).await;
            assert_eq!(
                r.refusal(),
                (403, "ABILITY_MISSING".into()),
                "{target} fast {fast}"
            );
            let r = Raw::open(g.addr)
                .await
                .ask("GET", &format!("{FA}{target}"), &[a], b"")
                .await;
            assert_eq!(
                r.refusal(),
                (403, "ABILITY_MISSING".into()),
                "suffix {target} fast {fast}"
            );
        }
        // Encoded slashes and backslashes, bad escapes, fragments and
        // targets that are not origin form.
        for target in [
            "/public/..%2Fadmin",
            "/public%5C..%5Cadmin",
            "/public/%zz",
            "/public#/../admin",
            "public",
            "http://h/public",
            "*",
        ] {
            let r = fa_for(&g, "GET", target, &[a]).await;
            assert_eq!(
                r.refusal(),
                (400, "BAD_PATH".into()),
                "{target} fast {fast}"
            );
        }
        for suffix in ["/public/..%2Fadmin", "/public%5C..%5Cadmin", "/public/%zz"] {
            let r = Raw::open(g.addr)
                .await
                .ask("GET", &format!("{FA}{suffix}"), &[a], b"")
                .await;
            assert_eq!(
                r.refusal(),
                (400, "BAD_PATH".into()),
                "suffix {suffix} fast {fast}"
            );
        }
        // The query string never takes part.
        let r = fa_for(&g, "GET", "/public?x=/../admin", &[]).await;
        assert_allowed_anonymously(&r);
        let r = Raw::open(g.addr)
            .await
            .ask("GET", &format!("{FA}/public?x=/../admin"), &[], b"")
            .await;
        assert_allowed_anonymously(&r);
        let r = fa_for(&g, "GET", "/api/calls/%37?q=%2F", &[a]).await;
        assert_eq!(r.status, 200);
        // Below the endpoint as sent, dot segments and all: never proxied,
        // whatever they resolve to.
        let r = Raw::open(g.addr)
            .await
            .ask("GET", &format!("{FA}/.."), &[a], b"")
            .await;
        assert_eq!(r.refusal(), (404, "ROUTE_NOT_FOUND".into()), "`/..` is `/`");
        let r = Raw::open(g.addr)
            .await
            .ask("GET", &format!("{FA}/../../public"), &[], b"")
            .await;
        assert_allowed_anonymously(&r);
        // And a path that only normalises to the endpoint is the endpoint.
        let r = Raw::open(g.addr)
            .await
            .ask("GET", "//_tokengate/auth/public", &[], b"")
            .await;
        assert_allowed_anonymously(&r);
        let r = Raw::open(g.addr)
            .await
            .ask("GET", "/_tokengate/%61uth/admin", &[a], b"")
            .await;
        assert_eq!(r.refusal(), (403, "ABILITY_MISSING".into()));
        assert_eq!(g.upstream.count(), 0, "fast {fast}");
    }
}

#[tokio::test]
async fn client_sent_tenant_headers_are_never_echoed_as_identity() {
    for fast in [true, false] {
        let g = spawn(fast, "").await;
        let (t, id) = g.mint(TokenKind::Api, &["*"], None).await;
        let auth = bearer(&t);
        let forged: Vec<(&str, &str)> = vec![
            ("X-Tenant-Id", "999"),
            ("x-tenant-id", "998"),
            ("X-Account-Id", "999"),
            ("X-Workspace-Id", "999"),
            ("X-Token-Id", "forged"),
            ("X-Token-Name", "forged"),
            ("X-Token-Abilities", "*"),
        ];
        // An `auth = "none"` route, and an `optional` one without a token:
        // allowed, with no identity at all.
        for target in ["/public/x", "/maybe/x"] {
            let r = fa_for(&g, "GET", target, &forged).await;
            assert_allowed_anonymously(&r);
        }
        // An optional route with a bad token is refused; with a good one,
        // its identity.
        let mut bad = forged.clone();
        bad.push(("Authorization", "Bearer garbage"));
        let r = fa_for(&g, "GET", "/maybe/x", &bad).await;
        assert_eq!(r.refusal(), (401, "TOKEN_MALFORMED".into()));
        let mut good = forged.clone();
        good.push(("Authorization", &auth));
        for target in ["/maybe/x", "/api/x"] {
            let r = fa_for(&g, "GET", target, &good).await;
            assert_allowed_as(&g, &r, &id, "*");
        }
        assert!(!fa_for(&g, "GET", "/api/x", &forged).await.has_identity());
    }
}

#[tokio::test]
async fn head_get_and_post_all_work_and_keep_the_connection_usable() {
    for fast in [true, false] {
        let g = spawn(fast, "").await;
        let (t, id) = g.mint(TokenKind::Api, &["calls:*"], None).await;
        let auth = bearer(&t);
        let a = ("Authorization", auth.as_str());
        let mut c = Raw::open(g.addr).await;
        for method in ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"] {
            let r = c
                .ask(
                    method,
                    FA,
                    &[
                        a,
                        ("X-Forwarded-Method", "GET"),
                        ("X-Forwarded-Uri", "/api/calls"),
                    ],
                    b"",
                )
                .await;
            assert_allowed_as(&g, &r, &id, "calls:*");
            // A denial, and for HEAD without its body: the next answer on
            // the connection must still read right.
            let r = c
                .ask(
                    method,
                    FA,
                    &[
                        ("X-Forwarded-Method", "GET"),
                        ("X-Forwarded-Uri", "/api/calls"),
                    ],
                    b"",
                )
                .await;
            assert_eq!(r.status, 401, "{method} fast {fast}: {}", r.head);
            if method != "HEAD" {
                assert_eq!(r.code(), "TOKEN_MISSING");
            }
        }
        // A POST with a body (Envoy's `with_request_body`): decided, the
        // body unread by anyone.
        let r = c
            .ask("POST", &format!("{FA}/api/calls"), &[a], b"{\"n\":1}")
            .await;
        assert_allowed_as(&g, &r, &id, "calls:*");
        // Own methods decide when nothing says otherwise (Envoy).
        let r = c.ask("HEAD", &format!("{FA}/readonly/7"), &[a], b"").await;
        assert_eq!(r.status, 405, "/readonly is GET only: {}", r.head);
        let r = c.ask("GET", &format!("{FA}/readonly/7"), &[a], b"").await;
        assert_eq!(r.status, 200);
        // A plain HEAD refused on the proxy path leaves the connection
        // usable too.
        let r = c.ask("HEAD", "/api/x", &[], b"").await;
        assert_eq!(r.status, 401);
        let r = c.ask("GET", "/api/x", &[a], b"").await;
        assert_eq!(r.status, 200);
        assert_eq!(g.upstream.count(), 1, "only the last request was forwarded");
    }
}

#[tokio::test]
async fn a_revoked_token_is_refused_at_once_on_the_same_connection() {
    for fast in [true, false] {
        let g = spawn(fast, "").await;
        let (t, id) = g.mint(TokenKind::Api, &["*"], None).await;
        let auth = bearer(&t);
        let a = [
            ("Authorization", auth.as_str()),
            ("X-Forwarded-Uri", "/api/x"),
        ];
        let mut c = Raw::open(g.addr).await;
        for _ in 0..3 {
            assert_eq!(c.ask("GET", FA, &a, b"").await.status, 200);
        }
        let lookups = g.store_lookups();
        assert!(lookups <= 1, "cached after the first: {lookups}");
        g.gateway
            .issuer
            .revoke(&id, &Default::default())
            .await
            .unwrap();
        let r = c.ask("GET", FA, &a, b"").await;
        assert_eq!(r.refusal(), (401, "TOKEN_REVOKED".into()), "fast {fast}");
        let r = fa(&g, &a).await;
        assert_eq!(r.refusal(), (401, "TOKEN_REVOKED".into()));
    }
}

/// A raw upstream whose answers name their one field `X-Case-Kept` in
/// mixed case: the fast path passes names on as they came, hyper lower-
/// cases them, so the case says which path served the connection.
async fn case_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..i + 4);
                        let resp =
                            b"HTTP/1.1 200 OK\r\nX-Case-Kept: yes\r\nContent-Length: 2\r\n\r\nok";
                        if s.write_all(resp).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn the_fast_path_answers_it_without_handing_the_connection_to_hyper() {
    let up = case_upstream().await;
    let extra = format!(
        "[[upstreams]]\nname = \"raw\"\nurl = \"http://{up}\"\n[[routes]]\npath = \"/rawup\"\nupstream = \"raw\"\nauth = \"none\"\n"
    );
    for fast in [true, false] {
        let g = spawn(fast, &extra).await;
        let t = g.token(&["*"]).await;
        let auth = bearer(&t);
        let mut c = Raw::open(g.addr).await;
        // Allowed, refused, allowed anonymously: then a proxied request on
        // the same connection.
        let a = [
            ("Authorization", auth.as_str()),
            ("X-Forwarded-Uri", "/api/x"),
        ];
        assert_eq!(c.ask("GET", FA, &a, b"").await.status, 200);
        assert_eq!(c.ask("GET", FA, &a[1..], b"").await.status, 401);
        assert_eq!(
            c.ask("HEAD", &format!("{FA}/public"), &[], b"")
                .await
                .status,
            200
        );
        let r = c.ask("GET", "/rawup", &[], b"").await;
        assert_eq!(r.body, b"ok");
        let (fast_served, hyper_served) = (
            r.head.contains("\r\nX-Case-Kept: yes"),
            r.head.contains("\r\nx-case-kept: yes"),
        );
        assert_eq!(
            (fast_served, hyper_served),
            (fast, !fast),
            "fast path {fast}: the connection was served by the wrong path:\n{}",
            r.head
        );
    }
}

#[tokio::test]
async fn it_answers_over_h2() {
    let g = spawn(true, "").await;
    let (t, id) = g.mint(TokenKind::Api, &["calls:read"], None).await;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let ask = |method: &str, auth: Option<&str>| {
        let mut req = http::Request::builder()
            .method("GET")
            .uri(format!("http://{}{FA}", g.addr))
            .header("x-forwarded-method", method)
            .header("x-forwarded-uri", "/api/calls/7");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        client.request(req.body(http_body_util::Full::default()).unwrap())
    };
    let auth = bearer(&t);
    let resp = tokio::time::timeout(WAIT, ask("GET", Some(&auth)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers();
    assert_eq!(h["x-tenant-id"], g.tenant_id.to_string().as_str());
    assert_eq!(h["x-token-id"], id.as_str());
    assert_eq!(h["x-token-abilities"], "calls:read");
    let resp = tokio::time::timeout(WAIT, ask("POST", Some(&auth)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(!resp.headers().contains_key("x-tenant-id"));
    let resp = tokio::time::timeout(WAIT, ask("GET", None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    assert_eq!(g.upstream.count() + g.h2_upstream.count(), 0);
}

#[tokio::test]
async fn the_configured_header_names_and_omissions_apply() {
    let extra =
        "[headers]\ntenant_id = \"X-Org-Id\"\nomit = [\"token_name\", \"token_abilities\"]\n";
    for fast in [true, false] {
        let g = spawn(fast, extra).await;
        let (t, id) = g.mint(TokenKind::Api, &["*"], None).await;
        let auth = bearer(&t);
        let r = fa_for(
            &g,
            "GET",
            "/api/x",
            &[("Authorization", &auth), ("X-Org-Id", "999")],
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.values("x-org-id"), [g.tenant_id.to_string()]);
        assert_eq!(r.values("x-token-id"), [id.as_str()]);
        for gone in ["x-tenant-id", "x-token-name", "x-token-abilities"] {
            assert!(r.header(gone).is_none(), "{gone}:\n{}", r.head);
        }
        // A look-alike of a configured name is refused.
        let r = fa_for(
            &g,
            "GET",
            "/api/x",
            &[("Authorization", &auth), ("X_Org_Id", "9")],
        )
        .await;
        assert_eq!(r.refusal(), (400, "FORBIDDEN_HEADER".into()));
    }
}

#[tokio::test]
async fn an_empty_path_turns_it_off_and_another_path_moves_it() {
    // Off: the path is proxied like any other.
    let extra = "[forward_auth]\npath = \"\"\n[[routes]]\npath = \"/_tokengate\"\nupstream = \"mock\"\nauth = \"none\"\n";
    for fast in [true, false] {
        let g = spawn(fast, extra).await;
        let r = fa_for(&g, "GET", "/admin", &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"{\"ok\":true}", "proxied");
        assert_eq!(g.upstream.last().uri, FA);
    }
    // Off, with no route for it: 404, as any unrouted path.
    let g = spawn(true, "[forward_auth]\npath = \"\"\n").await;
    assert_eq!(
        fa_for(&g, "GET", "/public", &[]).await.refusal(),
        (404, "ROUTE_NOT_FOUND".into())
    );

    // Moved.
    let g = spawn(true, "[forward_auth]\npath = \"/auth/check\"\n").await;
    let r = Raw::open(g.addr)
        .await
        .ask("GET", "/auth/check/public", &[], b"")
        .await;
    assert_allowed_anonymously(&r);
    assert_eq!(
        fa_for(&g, "GET", "/public", &[]).await.refusal(),
        (404, "ROUTE_NOT_FOUND".into())
    );
    assert_eq!(g.upstream.count(), 0);
}

// ---------------------------------------------------------------------------
// Requests shaped as Traefik and Envoy send them.

#[tokio::test]
async fn traefik_forward_auth_requests() {
    for fast in [true, false] {
        let g = spawn(fast, "").await;
        let (t, id) = g.mint(TokenKind::Api, &["calls:read"], None).await;
        let auth = bearer(&t);
        // Traefik's ForwardAuth: a GET to `address`, the client's headers
        // copied (hop-by-hop removed), then its own X-Forwarded-*.
        let traefik = |method: &'static str, uri: &'static str, auth: Option<String>| {
            let mut h: Vec<(&'static str, String)> = vec![
                ("User-Agent", "curl/8.5.0".into()),
                ("Accept", "*/*".into()),
                ("X-Forwarded-For", "10.1.2.3".into()),
                ("X-Forwarded-Host", "api.example.com".into()),
                ("X-Forwarded-Method", method.into()),
                ("X-Forwarded-Port", "443".into()),
                ("X-Forwarded-Proto", "https".into()),
                ("X-Forwarded-Server", "traefik-6d5f".into()),
                ("X-Forwarded-Uri", uri.into()),
                ("X-Real-Ip", "10.1.2.3".into()),
                ("Accept-Encoding", "gzip".into()),
            ];
            if let Some(a) = auth {
                h.push(("Authorization", a));
            }
            h
        };
        let mut c = Raw::open(g.addr).await;
        for (method, uri, token, status) in [
            ("GET", "/api/calls/7?page=2", true, 200),
            ("GET", "/api/calls/7?page=2", false, 401),
            ("POST", "/api/calls", true, 403),
            ("GET", "/nowhere", true, 404),
            ("GET", "/public/../admin", true, 403),
            ("GET", "/public", false, 200),
        ] {
            let h = traefik(method, uri, token.then(|| auth.clone()));
            let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let r = c.ask("GET", FA, &h, b"").await;
            assert_eq!(r.status, status, "{method} {uri} fast {fast}: {}", r.head);
            if status == 200 && token {
                assert_allowed_as(&g, &r, &id, "calls:read");
            }
            if status != 200 {
                assert!(!r.code().is_empty());
            }
        }
        assert_eq!(g.upstream.count(), 0);
    }
}

#[tokio::test]
async fn envoy_ext_authz_requests() {
    for fast in [true, false] {
        let g = spawn(fast, "").await;
        let (t, id) = g.mint(TokenKind::Api, &["calls:read"], None).await;
        let auth = bearer(&t);
        // Envoy's HTTP ext_authz: the original method, `path_prefix` then
        // the original path and query, `Content-Length: 0`, the original
        // headers it is allowed to send, and its own.
        let mut c = Raw::open(g.addr).await;
        for (method, path, token, status) in [
            ("GET", "/api/calls/7?page=2", true, 200),
            ("GET", "/api/calls/7", false, 401),
            ("POST", "/api/calls?x=1", true, 403),
            ("DELETE", "/readonly/1", true, 405),
            ("GET", "/api/calls/..%2F..%2Fadmin", true, 400),
            ("GET", "/api/calls/../../admin", true, 403),
            ("PUT", "/public/x", false, 200),
        ] {
            let mut h = vec![
                ("host", "api.example.com"),
                ("content-length", "0"),
                ("x-envoy-internal", "true"),
                ("x-forwarded-for", "10.1.2.3"),
                ("x-forwarded-proto", "https"),
                ("x-request-id", "7d0b1c8e-0000-4000-8000-000000000000"),
                ("x-envoy-expected-rq-timeout-ms", "250"),
            ];
            if token {
                h.push(("authorization", &auth));
            }
            // `ask` writes Host and the length itself for these.
            let mut req = format!("{method} {FA}{path} HTTP/1.1\r\n");
            for (k, v) in &h {
                req.push_str(&format!("{k}: {v}\r\n"));
            }
            req.push_str("\r\n");
            c.stream.write_all(req.as_bytes()).await.unwrap();
            let r = c.response(false).await;
            assert_eq!(r.status, status, "{method} {path} fast {fast}: {}", r.head);
            if status == 200 && token {
                assert_allowed_as(&g, &r, &id, "calls:read");
            }
            // Never the client's request id as ours.
            assert_ne!(
                r.header("x-request-id"),
                Some("7d0b1c8e-0000-4000-8000-000000000000")
            );
        }
        assert_eq!(g.upstream.count(), 0);
    }
}

// ---------------------------------------------------------------------------
// Real nginx and Caddy in front.

/// An installed binary, looked for on `PATH` and in the sbin directories
/// (nginx lives in /usr/sbin, often not on a user's `PATH`).
fn binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A port free a moment ago, for a server that binds its own.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed when the test ends, pass or fail.
struct Proc {
    child: std::process::Child,
    log: PathBuf,
}

impl Proc {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `port` takes connections.
    async fn listening(&mut self, port: u16) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("exited ({status}) before listening:\n{}", self.log());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not listening on {port}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The requests a front proxy is tested with, and what must follow, for
/// the front at `front`: a valid token reaches the upstream with its
/// tenant (a forged one never does); garbage, missing and short-of-ability
/// tokens get 401 / 401 / 403 and never reach it; a revoked token is
/// refused at once; an `auth = "none"` route passes with no identity.
async fn check_front(g: &TestGateway, front: SocketAddr, name: &str) {
    let (t, id) = g.mint(TokenKind::Api, &["calls:read"], None).await;
    let auth = bearer(&t);
    let send = |method: Method, path: &'static str, headers: Vec<(&'static str, String)>| async move {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        common::send(front, method, path, &h, b"").await
    };

    let r = send(
        Method::GET,
        "/api/calls/7?page=2",
        vec![
            ("authorization", auth.clone()),
            ("x-tenant-id", "999".into()),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{name}: {:?}", r.body);
    assert_eq!(g.upstream.count(), 1, "{name}");
    let seen = g.upstream.last();
    assert_eq!(seen.uri, "/api/calls/7?page=2", "{name}");
    let values = |h: &str| -> Vec<String> {
        seen.headers
            .get_all(h)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(values("x-tenant-id"), [g.tenant_id.to_string()], "{name}");
    assert_eq!(values("x-account-id"), [g.account_id.to_string()], "{name}");
    assert_eq!(
        values("x-workspace-id"),
        [g.workspace_id.to_string()],
        "{name}"
    );
    assert_eq!(values("x-token-id"), [id.as_str()], "{name}");
    assert_eq!(values("x-token-abilities"), ["calls:read"], "{name}");
    assert!(
        values("authorization").is_empty(),
        "{name}: the credential reached the upstream"
    );

    for (what, headers, status) in [
        (
            "garbage",
            vec![("authorization", "Bearer garbage".to_string())],
            StatusCode::UNAUTHORIZED,
        ),
        ("missing", vec![], StatusCode::UNAUTHORIZED),
    ] {
        let r = send(Method::GET, "/api/calls/7", headers).await;
        assert_eq!(r.status, status, "{name}: {what}");
        assert!(
            r.headers.contains_key("www-authenticate"),
            "{name}: {what}: no challenge"
        );
    }
    let r = send(
        Method::POST,
        "/api/calls",
        vec![("authorization", auth.clone())],
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: short of ability");
    assert_eq!(
        g.upstream.count(),
        1,
        "{name}: a refused request reached the upstream"
    );

    // Anonymous, with forged identity: through, with none of it.
    let r = send(
        Method::GET,
        "/public/x",
        vec![
            ("x-tenant-id", "999".into()),
            ("x-token-id", "forged".into()),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{name}: auth none");
    assert_eq!(g.upstream.count(), 2);
    let seen = g.upstream.last();
    for h in IDENTITY {
        let v: Vec<_> = seen.headers.get_all(h).iter().collect();
        assert!(
            v.iter().all(|v| v.is_empty()),
            "{name}: {h}: {v:?} reached the upstream on an anonymous request"
        );
    }

    // Revoked: refused at once, on the front's kept-alive connection.
    let r = send(
        Method::GET,
        "/api/calls/8",
        vec![("authorization", auth.clone())],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{name}");
    g.gateway
        .issuer
        .revoke(&id, &Default::default())
        .await
        .unwrap();
    let r = send(
        Method::GET,
        "/api/calls/9",
        vec![("authorization", auth.clone())],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{name}: revoked");
    assert_eq!(
        g.upstream.count(),
        3,
        "{name}: the revoked request reached the upstream"
    );
}

#[tokio::test]
async fn nginx_auth_request_in_front() {
    let Some(nginx) = binary("nginx") else {
        println!("skipped: nginx not installed");
        return;
    };
    let g = spawn(true, "").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let d = dir.path().display();
    // The README's recipe, on test ports.
    let conf = format!(
        r#"
daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;

    upstream tokengate {{ server {gw}; keepalive 16; }}
    upstream app {{ server {up}; keepalive 16; }}

    server {{
        listen 127.0.0.1:{port};

        location / {{
            auth_request /_tokengate/auth;
            auth_request_set $tg_tenant    $upstream_http_x_tenant_id;
            auth_request_set $tg_account   $upstream_http_x_account_id;
            auth_request_set $tg_workspace $upstream_http_x_workspace_id;
            auth_request_set $tg_token_id  $upstream_http_x_token_id;
            auth_request_set $tg_token     $upstream_http_x_token_name;
            auth_request_set $tg_abilities $upstream_http_x_token_abilities;
            proxy_set_header X-Tenant-Id       $tg_tenant;
            proxy_set_header X-Account-Id      $tg_account;
            proxy_set_header X-Workspace-Id    $tg_workspace;
            proxy_set_header X-Token-Id        $tg_token_id;
            proxy_set_header X-Token-Name      $tg_token;
            proxy_set_header X-Token-Abilities $tg_abilities;
            proxy_set_header Authorization "";
            proxy_set_header token "";
            proxy_set_header Host $host;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://app;
        }}

        location = /_tokengate/auth {{
            internal;
            proxy_pass http://tokengate;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Forwarded-Method $request_method;
            proxy_set_header X-Forwarded-Uri $request_uri;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"#,
        gw = g.addr,
        up = g.upstream.addr,
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let log = dir.path().join("error.log");
    let child = std::process::Command::new(nginx)
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf_path)
        .arg("-e")
        .arg(&log)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut nginx = Proc { child, log };
    nginx.listening(port).await;
    check_front(&g, SocketAddr::from(([127, 0, 0, 1], port)), "nginx").await;
    // nginx reused its connections to the gateway: the fast path served
    // them (a hand-off would not count as forward auth here either way).
    drop(nginx);
}

#[tokio::test]
async fn caddy_forward_auth_in_front() {
    let Some(caddy) = binary("caddy") else {
        println!("skipped: caddy not installed");
        return;
    };
    let g = spawn(true, "").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // The README's recipe, on test ports.
    let caddyfile = format!(
        r#"
{{
    admin off
    auto_https off
}}

http://127.0.0.1:{port} {{
    route {{
        request_header -X-Tenant-Id
        request_header -X-Account-Id
        request_header -X-Workspace-Id
        request_header -X-Token-Id
        request_header -X-Token-Name
        request_header -X-Token-Abilities
        forward_auth {gw} {{
            uri /_tokengate/auth
            copy_headers X-Tenant-Id X-Account-Id X-Workspace-Id X-Token-Id X-Token-Name X-Token-Abilities
        }}
        @tg_no_tenant header_regexp X-Tenant-Id ^[{{]
        request_header @tg_no_tenant -X-Tenant-Id
        @tg_no_account header_regexp X-Account-Id ^[{{]
        request_header @tg_no_account -X-Account-Id
        @tg_no_workspace header_regexp X-Workspace-Id ^[{{]
        request_header @tg_no_workspace -X-Workspace-Id
        @tg_no_token_id header_regexp X-Token-Id ^[{{]
        request_header @tg_no_token_id -X-Token-Id
        @tg_no_token_name header_regexp X-Token-Name ^[{{]
        request_header @tg_no_token_name -X-Token-Name
        @tg_no_abilities header_regexp X-Token-Abilities ^[{{]
        request_header @tg_no_abilities -X-Token-Abilities
        request_header -Authorization
        request_header -token
        reverse_proxy {up}
    }}
}}
"#,
        gw = g.addr,
        up = g.upstream.addr,
    );
    let path = dir.path().join("Caddyfile");
    std::fs::write(&path, caddyfile).unwrap();
    let log = dir.path().join("caddy.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = std::process::Command::new(caddy)
        .arg("run")
        .arg("--config")
        .arg(&path)
        .arg("--adapter")
        .arg("caddyfile")
        .env("HOME", dir.path())
        .env("XDG_DATA_HOME", dir.path().join("data"))
        .env("XDG_CONFIG_HOME", dir.path().join("config"))
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let mut caddy = Proc { child, log };
    caddy.listening(port).await;
    check_front(&g, SocketAddr::from(([127, 0, 0, 1], port)), "caddy").await;
    drop(caddy);
}
