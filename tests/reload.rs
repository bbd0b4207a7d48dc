//! Live reload on SIGHUP (DESIGN section 9), on the real binary: a route's
//! abilities changed for new requests (also on a connection opened before)
//! while a request in flight finishes; a bad config and a bad certificate
//! each leaving the old one in force, the process alive; certificates
//! rotated for new connections only; keys that need a restart kept; SIGHUP
//! without TLS; rate-limit policies changed with their counts kept.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::certs::{self, Ca};
use common::raw::{request, Client, Upstream};
use tokengate::auth::Ability;
use tokengate::clock::Clock;
use tokengate::config::Config;
use tokengate::issuer::{Actor, Issuer, MintRequest};
use tokengate::store::NewAccount;
use tokengate::token::TokenKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A `tokengate serve` process on a config file in a temp dir.
struct Gateway {
    child: Child,
    config: PathBuf,
    dir: tempfile::TempDir,
    public: SocketAddr,
    admin: SocketAddr,
    /// Everything it has logged so far.
    logs: Arc<Mutex<String>>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `[server]` and `[store]` tables every test's config starts with.
fn head(dir: &Path) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\n[store]\nurl = \"sqlite://{}\"\n\n",
        dir.join("tg.db").display()
    )
}

impl Gateway {
    /// Writes `config` (after [`head`]) and starts the binary on it.
    fn start(dir: tempfile::TempDir, config: &str) -> Self {
        let path = dir.path().join("tokengate.toml");
        std::fs::write(&path, format!("{}{config}", head(dir.path()))).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tokengate"))
            .arg("--config")
            .arg(&path)
            .arg("serve")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("TOKENGATE_CONFIG")
            // The access log; this test reads stderr only.
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let l = Arc::clone(&logs);
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if line.contains("tokengate listening") {
                    let addr = |key: &str| {
                        let rest = &line[line.find(key).unwrap() + key.len()..];
                        rest.split_whitespace().next().unwrap().parse().unwrap()
                    };
                    if let Some(tx) = tx.take() {
                        let _ = tx.send((addr("public_addr="), addr("admin_addr=")));
                    }
                }
                let mut l = l.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let (public, admin) = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("serve did not start:\n{}", logs.lock().unwrap()));
        Self {
            child,
            config: path,
            dir,
            public,
            admin,
            logs,
        }
    }

    /// Rewrites the config file (after [`head`]).
    fn rewrite(&self, config: &str) {
        std::fs::write(&self.config, format!("{}{config}", head(self.dir.path()))).unwrap();
    }

    fn hup(&self) {
        let ok = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -HUP failed");
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// The logs once they hold every one of `wanted`, or after 10 s: the
    /// thread reading the gateway's standard error may trail what
    /// /metrics already counts.
    async fn logs_with(&self, wanted: &[&str]) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let logs = self.logs();
            if wanted.iter().all(|w| logs.contains(w)) || tokio::time::Instant::now() >= deadline {
                return logs;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `tokengate_config_reloads_total{result="<result>"}` on /metrics.
    async fn reloads(&self, result: &str) -> u64 {
        let r = Client::exchange(self.admin, &request("GET", "/metrics", &[], b"")).await;
        let key = format!("tokengate_config_reloads_total{{result=\"{result}\"}} ");
        r.body_str()
            .lines()
            .find_map(|l| l.strip_prefix(&key)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {key} in /metrics"))
    }

    /// Sends SIGHUP and waits until the reload is counted as `result`.
    async fn reload(&mut self, result: &str) {
        let before = self.reloads(result).await;
        self.hup();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while self.reloads(result).await == before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {result} reload counted:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(self.alive(), "the gateway died on SIGHUP:\n{}", self.logs());
    }
}

/// Seeds the store the gateway will use and mints an api token with
/// `abilities`.
async fn token(dir: &Path, abilities: &[&str]) -> String {
    let config = Config::from_toml(Path::new("t.toml"), &head(dir)).unwrap();
    let store = tokengate::store::open(&config.store.url, 2, Duration::from_secs(5))
        .await
        .unwrap();
    let issuer = Issuer::new(store, config.tokens.clone(), Clock::system(), None);
    let actor = Actor::default();
    let tenant = issuer.create_tenant("acme", &actor).await.unwrap();
    let (account, ws) = issuer
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
    let m = issuer
        .mint(
            MintRequest {
                kind: TokenKind::Api,
                tenant_id: Some(tenant.id),
                account_id: Some(account.id),
                workspace_id: Some(ws.unwrap().id),
                name: "t".into(),
                abilities: abilities
                    .iter()
                    .map(|a| Ability::parse(a).unwrap())
                    .collect(),
                expires_at: None,
            },
            &actor,
        )
        .await
        .unwrap();
    m.secret.expose().to_string()
}

/// An upstream and a route `/up` to it needing `abilities`.
fn routes(up: &Upstream, abilities: &str) -> String {
    format!(
        "[[upstreams]]\nname = \"raw\"\nurl = \"http://{}\"\nresponse_timeout_ms = 30000\n\n[[routes]]\npath = \"/up\"\nupstream = \"raw\"\nabilities = [{abilities}]\n",
        up.addr
    )
}

#[tokio::test]
async fn a_route_change_reaches_new_requests_while_one_in_flight_finishes() {
    let up = Upstream::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let token = token(dir.path(), &["calls:read"]).await;
    let mut g = Gateway::start(dir, &routes(&up, "\"calls:read\""));
    let auth = format!("Bearer {token}");
    let get = |path: &str| request("GET", path, &[("Authorization", &auth)], b"");

    // A keep-alive connection, opened before the reload.
    let mut before = Client::connect(g.public).await;
    before.send(&get("/up/a")).await;
    assert_eq!(before.response(false).await.status, 200);

    // A request in flight: the upstream holds its answer.
    let mut in_flight = Client::connect(g.public).await;
    in_flight.send(&get("/up/gated")).await;
    common::TestGateway::eventually("the gated request reached the upstream", || async {
        up.count("/up/gated") == 1
    })
    .await;

    // The reload also adds a route: served at once, counted as route
    // "none" (the metric series are fixed at start-up).
    let added = "[[routes]]\npath = \"/added\"\nupstream = \"raw\"\nauth = \"none\"\n";
    g.rewrite(&format!("{}{added}", routes(&up, "\"calls:write\"")));
    g.reload("ok").await;
    let logs = g.logs_with(&["config reloaded"]).await;
    assert!(logs.contains("config reloaded"), "{logs}");

    // Every request from now on sees the new abilities: on the old
    // connection, and on a new one.
    before.send(&get("/up/b")).await;
    let r = before.response(false).await;
    assert_eq!(r.status, 403, "{}", r.head);
    assert_eq!(r.code(), "ABILITY_MISSING");
    let r = Client::exchange(g.public, &get("/up/c")).await;
    assert_eq!(r.status, 403, "{}", r.head);

    // The request admitted before it finishes as it started.
    up.open_gate();
    let r = in_flight.response(false).await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(up.count("/up/b") + up.count("/up/c"), 0);

    let r = Client::exchange(g.public, &request("GET", "/added/x", &[], b"")).await;
    assert_eq!(r.status, 200, "{}", r.head);
    // The route kept its label's series across the reload: its two
    // refusals after it count there.
    let want = "tokengate_requests_total{route=\"/up\",status=\"4xx\"} 2";
    common::TestGateway::eventually("the /up series counts the refusals", || async {
        let m = Client::exchange(g.admin, &request("GET", "/metrics", &[], b"")).await;
        m.body_str().contains(want)
    })
    .await;
    let logs = g.logs_with(&["a route the reload added"]).await;
    assert!(logs.contains("a route the reload added"), "{logs}");
    assert!(g.alive());
}

#[tokio::test]
async fn a_bad_config_or_certificate_changes_nothing() {
    let up = Upstream::spawn().await;
    let ca = Ca::new("test ca");
    let dir = tempfile::tempdir().unwrap();
    let first = ca.leaf(&["localhost"]);
    let (cert, key) = first.write(dir.path(), "server");
    let tls = format!(
        "[tls]\ncert_file = {}\nkey_file = {}\n",
        certs::p(&cert),
        certs::p(&key)
    );
    let open = |abilities: &str| {
        format!("{}{tls}", routes(&up, abilities)).replace("abilities = []", "auth = \"none\"")
    };
    let mut g = Gateway::start(dir, &open(""));
    let client = certs::client_config(&ca.pem(), &[b"http/1.1"], None);
    let served = |g: &Gateway| {
        let client = client.clone();
        let addr = g.public;
        async move {
            let mut s = certs::connect(addr, "localhost", client).await.unwrap();
            let leaf = certs::presented(&s);
            s.write_all(b"GET /up/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out).await;
            (String::from_utf8_lossy(&out).to_string(), leaf)
        }
    };
    let (resp, leaf) = served(&g).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(leaf == first.der);

    // A config that does not validate: an upstream nobody defined.
    g.rewrite(&open("").replace("upstream = \"raw\"", "upstream = \"nope\""));
    g.reload("error").await;
    let logs = g
        .logs_with(&["config reload failed", "routes[0].upstream"])
        .await;
    assert!(logs.contains("config reload failed"), "{logs}");
    assert!(logs.contains("routes[0].upstream"), "{logs}");
    assert!(logs.contains(&g.config.display().to_string()), "{logs}");
    let (resp, leaf) = served(&g).await;
    assert!(
        resp.starts_with("HTTP/1.1 200"),
        "the old routes stay: {resp}"
    );
    assert!(leaf == first.der);

    // A good config whose certificate is bad: its key is another's. The
    // whole reload is refused, the route change in it too.
    let other = ca.leaf(&["localhost"]);
    std::fs::write(&cert, &other.cert_pem).unwrap();
    g.rewrite(&open("\"calls:read\""));
    g.reload("error").await;
    let logs = g
        .logs_with(&["tls.key_file", "does not match the certificate in"])
        .await;
    assert!(logs.contains("tls.key_file"), "{logs}");
    assert!(logs.contains("does not match the certificate in"), "{logs}");
    let (resp, leaf) = served(&g).await;
    assert!(
        resp.starts_with("HTTP/1.1 200"),
        "the old route stays: {resp}"
    );
    assert!(leaf == first.der, "the old certificate stays");

    // Mended: the reload applies.
    std::fs::write(&key, &other.key_pem).unwrap();
    g.reload("ok").await;
    let (resp, leaf) = served(&g).await;
    assert!(
        resp.starts_with("HTTP/1.1 401"),
        "the new route needs a token: {resp}"
    );
    assert!(leaf == other.der);
    assert!(g.alive());
    assert!(!g.logs().contains("PRIVATE KEY"));
}

#[tokio::test]
async fn a_rotated_certificate_reaches_new_connections_only() {
    let up = Upstream::spawn().await;
    let ca = Ca::new("test ca");
    let dir = tempfile::tempdir().unwrap();
    let first = ca.leaf(&["localhost"]);
    let (cert, key) = first.write(dir.path(), "server");
    let config = format!(
        "{}[tls]\ncert_file = {}\nkey_file = {}\n",
        routes(&up, "").replace("abilities = []", "auth = \"none\""),
        certs::p(&cert),
        certs::p(&key)
    );
    let mut g = Gateway::start(dir, &config);
    let client = certs::client_config(&ca.pem(), &[b"http/1.1"], None);
    let get = b"GET /up/x HTTP/1.1\r\nHost: localhost\r\n\r\n";

    let mut old = certs::connect(g.public, "localhost", client.clone())
        .await
        .unwrap();
    assert!(certs::presented(&old) == first.der);
    old.write_all(get).await.unwrap();
    assert!(read_head(&mut old).await.starts_with("HTTP/1.1 200"));

    // A client that keeps its session tickets.
    let mut resuming = (*client).clone();
    resuming.resumption = rustls::client::Resumption::in_memory_sessions(8);
    let resuming = Arc::new(resuming);
    let mut r = certs::connect(g.public, "localhost", resuming.clone())
        .await
        .unwrap();
    r.write_all(get).await.unwrap();
    assert!(read_head(&mut r).await.starts_with("HTTP/1.1 200"));
    drop(r);

    let second = ca.leaf(&["localhost"]);
    second.write(g.dir.path(), "server");
    g.reload("ok").await;

    // Session tickets outlive the rotation (one ticket key per process).
    let r = certs::connect(g.public, "localhost", resuming)
        .await
        .unwrap();
    assert_eq!(
        r.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );

    let new = certs::connect(g.public, "localhost", client).await.unwrap();
    assert!(
        certs::presented(&new) == second.der,
        "a new handshake takes the new certificate"
    );
    // The connection opened before goes on, on the session it has.
    old.write_all(get).await.unwrap();
    assert!(read_head(&mut old).await.starts_with("HTTP/1.1 200"));
    assert!(certs::presented(&old) == first.der);
}

/// Reads a response head and its short body (the scripted upstream's
/// default answer) off a TLS stream.
async fn read_head<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    while !out.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut chunk))
            .await
            .expect("silent")
            .unwrap();
        assert!(n > 0, "closed");
        out.extend_from_slice(&chunk[..n]);
    }
    // The body is a few bytes; let it arrive so the next read is clean.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut rest = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(200), s.read(&mut rest)).await;
    String::from_utf8_lossy(&out).to_string()
}

#[tokio::test]
async fn sighup_without_tls_keeps_serving_and_names_keys_needing_a_restart() {
    let up = Upstream::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let config = routes(&up, "").replace("abilities = []", "auth = \"none\"");
    let mut g = Gateway::start(dir, &config);
    let get = request("GET", "/up/x", &[], b"");
    assert_eq!(Client::exchange(g.public, &get).await.status, 200);

    // The same file: a reload that changes nothing.
    g.reload("ok").await;
    assert_eq!(Client::exchange(g.public, &get).await.status, 200);

    // A listener address and the store need a restart: named, kept.
    let moved = std::fs::read_to_string(&g.config)
        .unwrap()
        .replace(
            "listen = \"127.0.0.1:0\"\nadmin",
            "listen = \"127.0.0.1:1\"\nadmin",
        )
        .replace("tg.db", "other.db");
    std::fs::write(&g.config, moved).unwrap();
    g.reload("ok").await;
    let logs = g
        .logs_with(&["key=server.listen", "key=store.url", "after a restart"])
        .await;
    assert!(logs.contains("key=server.listen"), "{logs}");
    assert!(logs.contains("key=store.url"), "{logs}");
    assert!(logs.contains("after a restart"), "{logs}");
    assert_eq!(Client::exchange(g.public, &get).await.status, 200);
    assert!(g.alive());
    assert!(!g.dir.path().join("other.db").exists());
}

/// A policy of `requests` a minute by token, named `name`, on `/up`.
fn limited(up: &Upstream, name: &str, requests: u32) -> String {
    format!(
        "{}rate_limits = [\"{name}\"]\n\n[[rate_limits.policies]]\nname = \"{name}\"\nrequests = {requests}\nwindow_seconds = 60\nby = \"token\"\n",
        routes(up, "")
    )
}

/// Rate-limit policies reload with the routes that name them; a policy
/// that keeps its name keeps its counts, a renamed one starts afresh.
#[tokio::test]
async fn a_reload_changes_rate_limits_and_keeps_their_counts() {
    let up = Upstream::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let token = token(dir.path(), &["*"]).await;
    let mut g = Gateway::start(dir, &limited(&up, "per-token", 2));
    let auth = format!("Bearer {token}");
    let status = || async {
        let r = Client::exchange(
            g.public,
            &request("GET", "/up/x", &[("Authorization", &auth)], b""),
        )
        .await;
        r.status
    };
    assert_eq!(status().await, 200);
    assert_eq!(status().await, 200);
    assert_eq!(status().await, 429);
    // Raised: the two counted stay counted.
    g.rewrite(&limited(&up, "per-token", 3));
    g.reload("ok").await;
    let status = || async {
        let r = Client::exchange(
            g.public,
            &request("GET", "/up/x", &[("Authorization", &auth)], b""),
        )
        .await;
        r.status
    };
    assert_eq!(status().await, 200);
    assert_eq!(status().await, 429);
    // Another policy: a count of its own.
    g.rewrite(&limited(&up, "renamed", 1));
    g.reload("ok").await;
    let status = || async {
        let r = Client::exchange(
            g.public,
            &request("GET", "/up/x", &[("Authorization", &auth)], b""),
        )
        .await;
        (r.status, r.head)
    };
    let (s, head) = status().await;
    assert_eq!(s, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("ratelimit: \"renamed\";r=0;t=60"),
        "{head}"
    );
    assert_eq!(status().await.0, 429);
    assert!(g.alive());
}
