//! End-to-end load over loopback: what tokengate costs, as ratios taken in
//! one run (machines are noisy; ratios are not).
//!
//! Topology on a 2-core machine: this process pins itself to core 0 and runs
//! a minimal HTTP/1.1 upstream and the load client there; tokengate runs as
//! its own process pinned to core 1 (`taskset -c 1`, so its runtime sizes
//! itself to one core); nginx, when installed, gets the same core 1 with one
//! worker and plain `proxy_pass` (keep-alive upstream, no auth at all).
//! The two `nginx-auth-*` cases put nginx in front with `auth_request`: its
//! worker and what answers the auth subrequest then share core 1 (there is
//! no third core), tokengate as a second process, the fixed `204` as
//! another server block of the same worker; their CPU per request is the
//! sum over both processes (tokengate's case) or nginx's alone (the `204`
//! case), the whole of core 1's work for one request either way. That
//! leans against tokengate: its case hands core 1 from one process to the
//! other and back for each subrequest (a wakeup, and a context switch
//! whenever either runs dry), where the `204` case stays in one event
//! loop, which no separate auth service gets.
//!
//! Cases: `direct` (client to upstream), `none` (through tokengate, route with
//! `auth = "none"`), `cached` (one valid token, warm), `limited` (the same
//! token on a route with a rate limit it never reaches, a policy by token:
//! what counting and the `RateLimit` fields cost, against `cached`; with
//! `lat-limited` and `lat-cached2` on one connection, measured in turn),
//! `limited-redis` (the limited route on a second gateway counting through
//! a redis-server the bench starts on a free port; `lat-limited-redis` on
//! one connection; both against `cached`),
//! `logged` (the cached token through a second gateway with the access
//! log on, JSON lines to a file in the bench's temp dir, against `cached`
//! round by round: what the access log costs, paired),
//! `bare` (the same
//! through a second gateway that sends none of its ten headers upstream,
//! `headers.omit`, as nginx sends none: a reference for what the upstream
//! spends reading those headers on the core it shares), `garbage` (random
//! tokens: 401, must never reach the store), `store-10k` (cycling over all
//! 10k stored tokens, warm), `cold` (1M stored; each request a token never
//! seen before, so every one is a cache miss), `store-1m` (1M stored, cycling
//! over 100k of them, warm; `cold` and `store-1m` each get a fresh gateway
//! process, so each peak RSS is its own; `store-1m` runs in rounds paired
//! with `10k-paired`, a second fresh gateway over a copy of the 10k-token
//! store, which the 1M / 10k ratio is taken against), `nginx` (no
//! auth), `forward-auth` (the same warm token asking tokengate's
//! forward-auth endpoint, Envoy's form `/_tokengate/auth/api/x`: answered
//! 200 by the gateway itself, nothing forwarded), `nginx-204` (nginx
//! answering `return 204` itself, the least a front proxy's auth hop could
//! cost), `nginx-204-ids` (the same `return 204` carrying the seven fields
//! tokengate's answer carries, with values as long: an answer that costs
//! the load client as much to read as tokengate's), `nginx-auth-tg` (the cached token through nginx with
//! `auth_request`, its subrequest proxied over keep-alive to tokengate's
//! `/_tokengate/auth` with `X-Original-URI` and `X-Original-Method`, then
//! `proxy_pass` to the upstream) and `nginx-auth-static` (the same nginx
//! config, its subrequest proxied over keep-alive to another server block
//! of the same nginx worker answering `return 204`: both pay one proxied
//! subrequest hop; only what answers it differs), and `nginx-auth-proc`
//! (the same again, its subrequest answered `return 204` by a second nginx
//! process on core 1: an auth service of its own, so that, as with
//! tokengate, two processes share the core and each subrequest switches
//! between them; its CPU per request is both nginx processes'). For each:
//! requests/s, latency p50 / p99 / p99.9, the proxy's CPU time per request
//! (from `/proc`), how often per request it slept waiting for a socket
//! (voluntary context switches), how busy core 0 was (at 100% the load
//! client and upstream, not the proxy, set the pace), its peak RSS, the
//! TCP segments the machine sent per request (every hop counted, from
//! `/proc/net/snmp`: a count the VM's noise does not move), and
//! how many connections the server closed and the client opened again
//! (nginx closes a client connection after 1000 requests by default; the
//! client reopens it, as wrk does, so every case runs its whole window);
//! tokengate cases also as
//! ratios to `direct`, `cached` as ratios to `none` and `nginx` and `bare`
//! to `nginx`, `forward-auth` to `nginx-204`, `nginx-auth-tg` to
//! `nginx-auth-static` and to `nginx-auth-proc`, also round by round (`nginx-auth-tg`'s CPU also
//! split into nginx's and tokengate's shares, and both on one connection,
//! `lat-auth-tg` and `lat-auth-static`); the paired `store-1m` rounds also
//! print the last-used rows each window wrote. Every other round runs its
//! cases in reverse order.
//!
//! TLS cases (DESIGN section 9; driven by wrk, as the built-in plain
//! client speaks no TLS, and skipped without it): `tls` (the cached token
//! through a second gateway with `[tls]`, keep-alive) against `nginx-tls` (nginx
//! `listen ... ssl`, one worker on core 1, no auth, the same ECDSA P-256
//! certificate); `tls-close` and `nginx-tls-close` (the same with
//! `Connection: close`: a TLS 1.3 handshake for every request; wrk's
//! OpenSSL keeps its last session across its reconnects, so nearly all of
//! them resume it by ticket); and `close` and `nginx-close` (plain HTTP,
//! `Connection: close`, through the first gateway and nginx). And
//! `tls-resume` and `nginx-tls-resume`: connection per request against the
//! same two TLS servers, each handshake TLS 1.3 resuming a session by a
//! ticket the server sent on an earlier connection, and `tls-full` and
//! `nginx-tls-full`: the same with resumption off, a full TLS 1.3
//! handshake (certificate, signature) for every request, which wrk cannot
//! do. These are driven by a built-in TLS client whatever `LOAD_TOOL` says
//! (tokio-rustls, ring, on core 0 with the upstream as the built-in plain
//! client is): `LOAD_CONNECTIONS` workers, each connecting, handshaking,
//! sending one `GET` with `Connection: close` (the token to tokengate,
//! none to nginx, as the wrk cases), reading the whole response and
//! dropping the connection, each worker a client of its own whose rustls
//! default in-memory session store keeps the tickets (a new one per
//! window, so each worker's first handshake is a full one; see
//! `drive_tls` on why not one store for all). Latency there is from
//! connect to the end of the response. Their rows are followed by how many
//! handshakes were resumed (`handshake_kind`), in all and round by round,
//! flagged when under 90%: a case whose server sent no usable ticket is
//! then a full-handshake figure, not a resumption one; and by the bench
//! process's own CPU per request (the TLS client and the upstream: how
//! much of core 0's busy share is theirs, not another process's). The wrk
//! and the built-in TLS clients differ (OpenSSL and rustls, what each
//! costs core 0), so `tls-resume` is compared with `nginx-tls-resume`, not
//! with `tls-close`.
//!
//! Run: `cargo bench --bench load`. Knobs (environment):
//! `LOAD_SCHEMA_UPTO` (with `LOAD_TOKENGATE_BIN`: the store forgets
//! migrations after this number, for a build that predates them),
//! `LOAD_SECONDS` (5), `LOAD_ROUNDS` (3: every case once per round,
//! medians reported), `LOAD_CONNECTIONS` (32), `LOAD_TOKENGATE_BIN` (another
//! tokengate build to measure instead), `LOAD_CASES` (comma list,
//! default all), `LOAD_BIG_STORE` (1M tokens, default on; `0` skips `cold`
//! and `store-1m`), `LOAD_TOOL=wrk` to drive the fixed-token cases with wrk
//! instead of the built-in client, `LOAD_ACCESS_LOG` (`off`, the default:
//! `[log] access = false`; `json`: the access log on, JSON, appended to a
//! file in the bench's temp dir, to compare against `off`; `none`: no
//! `[log]` table, for a `LOAD_TOKENGATE_BIN` built before it existed),
//! `LOAD_POOL=FILE` (each paired ratio's rounds appended to `FILE`, and
//! the median over every run written there reported with its interval).
//!
//! Each paired ratio is reported with the median of its per-round ratios
//! and a 95% bootstrap interval of that median. One run's interval covers
//! the luck of its rounds, not of its processes: runs started apart
//! differ by more (BENCHMARKS.md, twentieth session), so a ratio near 1.0
//! is judged on several runs pooled (`LOAD_POOL`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use http::HeaderValue;
use sqlx::Connection;
use tokengate::config::DatabaseUrl;
use tokengate::store::sqlite::SqliteStore;
use tokengate::store::{NewAccount, NewAuditEvent, TokenStore};
use tokengate::token::{TokenFormat, TokenKind};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WORKING_SET_1M: usize = 100_000;

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ------------------------------------------------------------------ upstream

/// The upstream's one answer.
const UPSTREAM_RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 12\r\n\r\n{\"ok\":true}\n";

/// A minimal HTTP/1.1 keep-alive upstream: it reads each request head with
/// `httparse` (no allocation per header), skips any `Content-Length` body and
/// answers one fixed 200. It shares core 0 with the load client, so the less
/// it spends per request the more of the run measures the proxy on core 1
/// rather than this core (BENCHMARKS.md, seventh session).
async fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(serve_upstream(stream));
        }
    });
    addr
}

/// How a message (request or response) is framed, as far as this bench's
/// upstream and client read one.
struct Framing {
    /// `Content-Length`, if sent.
    length: Option<usize>,
    /// `Connection: close`.
    close: bool,
}

/// `None` for a chunked body or a malformed length: nothing here sends one,
/// and neither side reads one.
fn framing(headers: &[httparse::Header<'_>]) -> Option<Framing> {
    let mut framing = Framing {
        length: None,
        close: false,
    };
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            framing.length = Some(std::str::from_utf8(h.value).ok()?.parse().ok()?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return None;
        } else if h.name.eq_ignore_ascii_case("connection") {
            framing.close |= h.value.eq_ignore_ascii_case(b"close");
        }
    }
    Some(framing)
}

/// One upstream connection: answers every complete request in what has been
/// read, in order, then reads more. Ends on EOF, a malformed head, a
/// chunked body (nothing here sends one) or `Connection: close`.
async fn serve_upstream(mut stream: TcpStream) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut out = Vec::with_capacity(UPSTREAM_RESPONSE.len() * 4);
    let mut body_left = 0usize;
    loop {
        let mut close = false;
        loop {
            let skip = body_left.min(buf.len());
            buf.advance(skip);
            body_left -= skip;
            if body_left > 0 {
                break;
            }
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            let Ok(status) = req.parse(&buf) else {
                return;
            };
            let httparse::Status::Complete(head) = status else {
                break;
            };
            let Some(framing) = framing(req.headers) else {
                return;
            };
            body_left = framing.length.unwrap_or(0);
            close = framing.close;
            buf.advance(head);
            out.extend_from_slice(UPSTREAM_RESPONSE);
            if close {
                break;
            }
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if close {
            return;
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

// ------------------------------------------------------------------ proxies

/// CPU seconds (user + system) of a process and its threads.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the comm.
    (ticks(11) + ticks(12)) / 100.0
}

/// Times a process's threads gave up the CPU waiting for something
/// (voluntary context switches): for an event loop, how often it found
/// nothing to do and slept until woken, which across cores costs a wakeup.
fn sleeps(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A proxy's counters before a case.
struct Mark {
    cpu: f64,
    sleeps: u64,
}

/// A proxy under test: its address and the processes whose CPU counts.
struct Proxy {
    addr: SocketAddr,
    admin: Option<SocketAddr>,
    child: Child,
    pids: Vec<u32>,
}

impl Proxy {
    fn cpu(&self) -> f64 {
        self.pids.iter().map(|p| cpu_seconds(*p)).sum()
    }

    fn sleeps(&self) -> u64 {
        self.pids.iter().map(|p| sleeps(*p)).sum()
    }

    /// What [`row`] measures the proxy's share from.
    fn mark(&self) -> Mark {
        Mark {
            cpu: self.cpu(),
            sleeps: self.sleeps(),
        }
    }

    fn rss(&self) -> f64 {
        self.pids.iter().map(|p| peak_rss_mib(*p)).sum()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn start_tokengate(config: &Path) -> Proxy {
    // LOAD_TOKENGATE_BIN compares another build (e.g. the previous commit's).
    let bin = std::env::var("LOAD_TOKENGATE_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_tokengate").to_string());
    let mut child = Command::new("taskset")
        .args(["-c", "1", &bin, "--config"])
        .arg(config)
        .arg("serve")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        // Access lines, if a case writes them to standard output.
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("taskset and the tokengate binary");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "tokengate exited early"
        );
        if line.contains("listening") {
            break;
        }
    }
    // `key=value` in a text log line, `"key":"value"` in a JSON one
    // (`[log] format = "json"`).
    let addr = |key: &str| -> SocketAddr {
        let at = line.find(key).unwrap() + key.len();
        let rest = line[at..].trim_start_matches(['=', '"', ':']);
        let end = rest
            .find(|c: char| c == '"' || c.is_whitespace())
            .unwrap_or(rest.len());
        rest[..end].parse().unwrap()
    };
    let (public, admin) = (addr("public_addr"), addr("admin_addr"));
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in stderr.lines() {});
    let pid = child.id();
    Proxy {
        addr: public,
        admin: Some(admin),
        child,
        pids: vec![pid],
    }
}

/// Ports free on loopback now, all different (each listener is held until
/// every port is taken).
fn free_ports(n: usize) -> Option<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    listeners
        .iter()
        .map(|l| l.local_addr().ok().map(|a| a.port()))
        .collect()
}

/// The nginx fronts that ask for auth first (`auth_request`), both in the
/// same nginx process as the plain proxy.
struct AuthFronts {
    /// Asks tokengate's forward-auth endpoint.
    tokengate: SocketAddr,
    /// Asks a server block of this nginx answering `return 204`.
    fixed: SocketAddr,
    /// Asks a second nginx process (one worker, also on core 1) answering
    /// `return 204`: an auth service of its own, as tokengate is.
    separate: SocketAddr,
    /// That second nginx.
    answerer: Proxy,
}

/// One `auth_request` front: `location /` proxies to the bench upstream
/// after a subrequest to `/_auth`, which proxies (keep-alive) to `auth`'s
/// `/_tokengate/auth`. The two fronts differ in nothing but that upstream.
fn auth_front(port: u16, auth: &str) -> String {
    format!(
        "  server {{\n    listen 127.0.0.1:{port};\n\
           location / {{\n      auth_request /_auth;\n      proxy_pass http://up;\n\
             proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n\
           location = /_auth {{\n      internal;\n      proxy_pass http://{auth}/_tokengate/auth;\n\
             proxy_pass_request_body off;\n      proxy_set_header Content-Length \"\";\n\
             proxy_set_header X-Original-URI $request_uri;\n\
             proxy_set_header X-Original-Method $request_method;\n\
             proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n"
    )
}

/// The seven fields tokengate's forward-auth answer carries in the bench,
/// with values as long as its own: what `/nginx-204-ids` adds to nginx's
/// `return 204`, so that the two answers cost the load client the same to
/// read (tokengate's about 270 bytes, nginx's 300 with `server_tokens off`:
/// its `Server`, `Date` and `Connection` where tokengate has `Date` and
/// `Content-Length`).
const IDENTITY_FIELDS: [(&str, &str); 7] = [
    ("x-tenant-id", "1"),
    ("x-account-id", "1"),
    ("x-workspace-id", "1"),
    ("x-token-id", "01a235a8-a33b-71c8-92e5-13b1e8d8b01e"),
    ("x-token-name", "bench"),
    ("x-token-abilities", "*"),
    ("x-request-id", "01a235be-9639-7d2e-9f13-84cee024c0c6"),
];

/// nginx on core 1, one worker: plain `proxy_pass` (and `/nginx-204`
/// answered itself, bare and with [`IDENTITY_FIELDS`]) on the proxy's address, and the two `auth_request`
/// fronts, one asking `tokengate` (its public address), one asking a
/// fourth server block of the same worker that answers `return 204`.
fn start_nginx(
    dir: &Path,
    upstream: SocketAddr,
    tokengate: SocketAddr,
) -> Option<(Proxy, AuthFronts)> {
    let nginx = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    let ports = free_ports(6)?;
    let (port, tg_port, fixed_port, answer_port) = (ports[0], ports[1], ports[2], ports[3]);
    let (separate_port, separate_answer_port) = (ports[4], ports[5]);
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/nginx.err warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {dir};\n  proxy_temp_path {dir};\n\
               upstream up {{ server {upstream}; keepalive 256; }}\n\
               upstream tokengate {{ server {tokengate}; keepalive 256; }}\n\
               upstream answer204 {{ server 127.0.0.1:{answer_port}; keepalive 256; }}\n\
               upstream separate204 {{ server 127.0.0.1:{separate_answer_port}; keepalive 256; }}\n\
               server {{\n    listen 127.0.0.1:{port};\n    location / {{\n\
                 proxy_pass http://up;\n      proxy_http_version 1.1;\n\
                 proxy_set_header Connection \"\";\n    }}\n\
                 location = /nginx-204 {{ return 204; }}\n\
                 location = /nginx-204-ids {{\n      server_tokens off;\n{ids}      return 204;\n    }}\n  }}\n\
             {tg_front}{fixed_front}{separate_front}\
               server {{\n    listen 127.0.0.1:{answer_port};\n    location / {{ return 204; }}\n  }}\n}}\n",
            dir = dir.display(),
            tg_front = auth_front(tg_port, "tokengate"),
            fixed_front = auth_front(fixed_port, "answer204"),
            separate_front = auth_front(separate_port, "separate204"),
            ids = IDENTITY_FIELDS
                .iter()
                .map(|(k, v)| format!("      add_header {k} \"{v}\";\n"))
                .collect::<String>(),
        ),
    )
    .ok()?;
    let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let proxy = spawn_nginx(nginx, &conf, at(port))?;
    // The second nginx: a `return 204` service of its own, on core 1.
    let answerer_conf = dir.join("nginx-answer.conf");
    std::fs::write(
        &answerer_conf,
        format!(
            "worker_processes 1;\npid {dir}/nginx-answer.pid;\nerror_log {dir}/nginx-answer.err warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {dir};\n  proxy_temp_path {dir};\n\
               server {{\n    listen 127.0.0.1:{separate_answer_port};\n    location / {{ return 204; }}\n  }}\n}}\n",
            dir = dir.display(),
        ),
    )
    .ok()?;
    let answerer = spawn_nginx(nginx, &answerer_conf, at(separate_answer_port))?;
    Some((
        proxy,
        AuthFronts {
            tokengate: at(tg_port),
            fixed: at(fixed_port),
            separate: at(separate_port),
            answerer,
        },
    ))
}

/// nginx with `listen ... ssl` on core 1, one worker: `proxy_pass` to the
/// upstream over keep-alive, no auth, the certificate tokengate's `tls`
/// case serves. Its own process, so its CPU is the TLS cases' alone.
fn start_nginx_tls(dir: &Path, upstream: SocketAddr, cert: &Path, key: &Path) -> Option<Proxy> {
    let nginx = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    let port = free_ports(1)?[0];
    let conf = dir.join("nginx-tls.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\npid {dir}/nginx-tls.pid;\nerror_log {dir}/nginx-tls.err warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {dir};\n  proxy_temp_path {dir};\n\
               upstream up {{ server {upstream}; keepalive 256; }}\n\
               server {{\n    listen 127.0.0.1:{port} ssl;\n\
                 ssl_certificate {cert};\n    ssl_certificate_key {key};\n\
                 ssl_protocols TLSv1.2 TLSv1.3;\n    location / {{\n\
                 proxy_pass http://up;\n      proxy_http_version 1.1;\n\
                 proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n",
            dir = dir.display(),
            cert = cert.display(),
            key = key.display(),
        ),
    )
    .ok()?;
    spawn_nginx(nginx, &conf, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// A redis-server of the bench's own, on a free port, on core 0 (with the
/// load client and upstream: it is not what is measured).
struct Redis {
    addr: SocketAddr,
    child: Child,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_redis() -> Option<Redis> {
    let port = free_ports(1)?[0];
    let child = Command::new("taskset")
        .args([
            "-c",
            "0",
            "redis-server",
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(Redis { addr, child })
}

/// Starts nginx with `conf` on core 1 and waits until `addr` answers; its
/// master and worker(s) are the process's pids.
fn spawn_nginx(nginx: &str, conf: &Path, addr: SocketAddr) -> Option<Proxy> {
    let child = Command::new("taskset")
        .args(["-c", "1", nginx, "-c"])
        .arg(conf)
        .args(["-g", "daemon off;"])
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let master = child.id();
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // The master and its worker(s).
    let mut pids = vec![master];
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(master) {
            pids.push(pid);
        }
    }
    Some(Proxy {
        addr,
        admin: None,
        child,
        pids,
    })
}

async fn store_lookups(admin: SocketAddr) -> u64 {
    metric(admin, "tokengate_store_lookups_total").await
}

/// Waits (up to 30 s) until the last-used times noted so far are written:
/// the warm-up's uses are flushed before a measured window, so the window
/// shows the steady state (a busy token is written once per minute), not
/// the one-off write of a whole working set.
async fn wait_for_last_used_flush(admin: SocketAddr, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(admin, "tokengate_last_used_written_total").await < at_least
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn metric(admin: SocketAddr, name: &str) -> u64 {
    let mut s = TcpStream::connect(admin).await.unwrap();
    let (mut r, mut w) = s.split();
    w.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    r.read_to_string(&mut text).await.unwrap();
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

// ------------------------------------------------------------------ client

/// What each request carries.
#[derive(Clone)]
enum Tokens {
    None,
    One(HeaderValue),
    /// Cycle through these (each connection from its own offset).
    Cycle(Arc<Vec<HeaderValue>>),
    /// Each request takes the next unused one (cold cache).
    Once(Arc<Vec<HeaderValue>>, Arc<AtomicUsize>),
}

struct Outcome {
    requests: u64,
    /// Responses other than 2xx, and requests that failed (connection lost).
    non_2xx: u64,
    /// Connections opened again after the server closed them.
    reopened: u64,
    elapsed: Duration,
    hist: Histogram<u64>,
    /// How busy core 0 (load client and upstream) was over the window.
    load_core: f64,
    /// TCP segments the machine sent over the window (all hops: client,
    /// proxy, upstream), from [`tcp_out_segments`].
    segments: u64,
    /// What the built-in TLS client counted, when it drove the case
    /// ([`drive_tls`]).
    handshakes: Option<TlsCounts>,
}

/// What [`drive_tls`] counts, summed over rounds in a median row.
#[derive(Clone, Copy)]
struct TlsCounts {
    /// Handshakes resumed.
    resumed: u64,
    /// Handshakes made.
    handshakes: u64,
    /// This process's CPU seconds over the window: the TLS client and the
    /// upstream, all of core 0's share of the case.
    client_cpu: f64,
    /// Requests answered.
    requests: u64,
}

impl TlsCounts {
    fn add(self, o: Self) -> Self {
        Self {
            resumed: self.resumed + o.resumed,
            handshakes: self.handshakes + o.handshakes,
            client_cpu: self.client_cpu + o.client_cpu,
            requests: self.requests + o.requests,
        }
    }

    fn resumed_share(&self) -> f64 {
        self.resumed as f64 / self.handshakes.max(1) as f64
    }
}

/// Core 0's busy and total time so far (`/proc/stat`, in ticks).
fn core0_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu0 ")) else {
        return (0, 0);
    };
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = f.iter().take(8).sum();
    // idle and iowait are the 4th and 5th.
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// TCP segments this machine has sent so far (`OutSegs` in
/// `/proc/net/snmp`). Over a case's window only its traffic runs, so the
/// count per request shows how many packets a request takes on every hop
/// (a count, not a timing: it does not move with the VM's noise).
fn tcp_out_segments() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "OutSegs")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Core 0's busy share between two [`core0_ticks`] readings.
fn busy_between(before: (u64, u64), after: (u64, u64)) -> f64 {
    let total = after.1.saturating_sub(before.1);
    if total == 0 {
        return f64::NAN;
    }
    after.0.saturating_sub(before.0) as f64 / total as f64
}

/// Reads one response from `stream` (buffered in `buf`, which keeps any
/// bytes after it): its status and whether the server will close the
/// connection. `None` on EOF, a malformed head, or a body framed other than
/// by `Content-Length` (neither proxy nor the upstream sends one here).
async fn read_response<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Option<(u16, bool)> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(head) = resp.parse(buf).ok()? {
            let framing = framing(resp.headers)?;
            let status = resp.code?;
            let length = match status {
                204 | 304 => 0,
                _ => framing.length?,
            };
            let total = head + length;
            while buf.len() < total {
                if stream.read_buf(buf).await.ok()? == 0 {
                    return None;
                }
            }
            buf.advance(total);
            return Some((status, framing.close));
        }
        if stream.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
}

/// The built-in load client: `conns` keep-alive HTTP/1.1 connections, each
/// sending one request at a time for `secs`. It writes each request head
/// itself and reads responses with `httparse`, so it costs core 0 little
/// (core 0 is shared with the upstream; what it spends there is not spent
/// on the proxy's traffic).
async fn drive(addr: SocketAddr, path: &str, tokens: Tokens, conns: usize, secs: f64) -> Outcome {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let core0 = core0_ticks();
    let segments0 = tcp_out_segments();
    // Origin form, as browsers, curl and wrk send it.
    let head = Arc::new(format!("GET {path} HTTP/1.1\r\nhost: bench\r\n"));
    let mut tasks = Vec::new();
    for c in 0..conns {
        let tokens = tokens.clone();
        let head = Arc::clone(&head);
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut req = Vec::with_capacity(1024);
            let mut buf = BytesMut::with_capacity(16 * 1024);
            let (mut n, mut bad, mut reopened, mut i) = (0u64, 0u64, 0u64, c * 7919);
            // A connection the server closes (nginx does after 1000 requests,
            // its `keepalive_requests` default) or that breaks is opened
            // again, as wrk does, so that every case runs its whole window.
            let mut opened = false;
            'conn: while Instant::now() < deadline {
                reopened += u64::from(opened);
                opened = true;
                let Ok(mut stream) = TcpStream::connect(addr).await else {
                    bad += 1;
                    break;
                };
                stream.set_nodelay(true).unwrap();
                buf.clear();
                while Instant::now() < deadline {
                    let auth = match &tokens {
                        Tokens::None => None,
                        Tokens::One(v) => Some(v),
                        Tokens::Cycle(list) => {
                            i += 1;
                            Some(&list[i % list.len()])
                        }
                        Tokens::Once(list, next) => {
                            let k = next.fetch_add(1, Ordering::Relaxed);
                            if k >= list.len() {
                                break 'conn;
                            }
                            Some(&list[k])
                        }
                    };
                    req.clear();
                    req.extend_from_slice(head.as_bytes());
                    if let Some(v) = auth {
                        req.extend_from_slice(b"authorization: ");
                        req.extend_from_slice(v.as_bytes());
                        req.extend_from_slice(b"\r\n");
                    }
                    req.extend_from_slice(b"\r\n");
                    let t0 = Instant::now();
                    if stream.write_all(&req).await.is_err() {
                        bad += 1;
                        break;
                    }
                    let Some((status, close)) = read_response(&mut stream, &mut buf).await else {
                        bad += 1;
                        break;
                    };
                    hist.record(t0.elapsed().as_micros().max(1) as u64).unwrap();
                    n += 1;
                    if !(200..300).contains(&status) {
                        bad += 1;
                    }
                    if close {
                        break;
                    }
                }
            }
            (n, bad, reopened, hist)
        }));
    }
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let (mut requests, mut non_2xx, mut reopened) = (0, 0, 0);
    for t in tasks {
        let (n, bad, again, h) = t.await.unwrap();
        requests += n;
        non_2xx += bad;
        reopened += again;
        total.add(h).unwrap();
    }
    Outcome {
        requests,
        non_2xx,
        reopened,
        elapsed: start.elapsed(),
        hist: total,
        load_core: busy_between(core0, core0_ticks()),
        segments: tcp_out_segments().saturating_sub(segments0),
        handshakes: None,
    }
}

/// Drives wrk instead (fixed token or none), parsing its summary.
fn drive_wrk(
    addr: SocketAddr,
    path: &str,
    token: Option<&HeaderValue>,
    conns: usize,
    secs: f64,
) -> Option<Outcome> {
    drive_wrk_as(Wrk::Plain, addr, path, token, conns, secs)
}

/// How wrk speaks to the proxy.
#[derive(Clone, Copy, PartialEq)]
enum Wrk {
    /// HTTP/1.1 keep-alive.
    Plain,
    /// HTTP/1.1 with `Connection: close`: a new connection per request.
    Close,
    /// HTTPS keep-alive.
    Tls,
    /// HTTPS with `Connection: close`: a full handshake per request.
    TlsClose,
}

fn drive_wrk_as(
    how: Wrk,
    addr: SocketAddr,
    path: &str,
    token: Option<&HeaderValue>,
    conns: usize,
    secs: f64,
) -> Option<Outcome> {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "0", "wrk", "-t1", "--latency"])
        .arg(format!("-c{conns}"))
        .arg(format!("-d{}s", secs.ceil() as u64));
    if let Some(t) = token {
        cmd.arg("-H")
            .arg(format!("Authorization: {}", t.to_str().ok()?));
    }
    if matches!(how, Wrk::Close | Wrk::TlsClose) {
        cmd.args(["-H", "Connection: close"]);
    }
    let scheme = if matches!(how, Wrk::Tls | Wrk::TlsClose) {
        "https"
    } else {
        "http"
    };
    let core0 = core0_ticks();
    let segments0 = tcp_out_segments();
    let out = cmd.arg(format!("{scheme}://{addr}{path}")).output().ok()?;
    let load_core = busy_between(core0, core0_ticks());
    let segments = tcp_out_segments().saturating_sub(segments0);
    let text = String::from_utf8_lossy(&out.stdout);
    let num = |line: &str, i: usize| -> Option<f64> {
        let v = line.split_whitespace().nth(i)?;
        let (n, unit) = v.split_at(v.find(|c: char| c.is_alphabetic()).unwrap_or(v.len()));
        let n: f64 = n.parse().ok()?;
        Some(match unit {
            "us" => n,
            "ms" => n * 1e3,
            "s" => n * 1e6,
            _ => n,
        })
    };
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).ok()?;
    let (mut p50, mut p99) = (0.0, 0.0);
    let mut requests = 0u64;
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with("50%") {
            p50 = num(l, 1)?;
        } else if l.starts_with("99%") {
            p99 = num(l, 1)?;
        } else if l.contains("requests in") {
            requests = l.split_whitespace().next()?.parse().ok()?;
        }
    }
    // wrk reports percentiles, not samples: keep the two it gives.
    hist.record_n(p50 as u64, 98).ok()?;
    hist.record_n(p99 as u64, 2).ok()?;
    Some(Outcome {
        requests,
        non_2xx: 0,
        reopened: 0,
        elapsed: Duration::from_secs_f64(secs.ceil()),
        hist,
        load_core,
        segments,
        handshakes: None,
    })
}

/// The built-in TLS load client, for connection per request with session
/// resumption by rustls' rules, or (`resume` false) with a full handshake
/// each time (wrk's OpenSSL resumes its last session, so wrk cannot measure
/// full handshakes): `conns` workers, each in a loop
/// connecting, making a TLS 1.3 handshake, sending one request with
/// `Connection: close` (and `token`, if any), reading the whole response
/// and dropping the connection. Each worker is one client reconnecting:
/// its own rustls `ClientConfig`, new for each call (so no ticket of
/// another server or an earlier window is offered), with rustls' default
/// resumption store (`Resumption::in_memory_sessions`), which keeps the
/// TLS 1.3 tickets the server sends after each handshake: a worker's first
/// handshake is a full one, the later ones resume. Not one store for all
/// workers: it keeps at most 8 tickets per server and hands each out once,
/// so 32 workers drawing from it in bursts find it empty often (about 40%
/// of handshakes were full ones, more against nginx, which sends one
/// ticket after a resumed handshake, where tokengate then sent two; it
/// sends one now). Counts how
/// many handshakes were resumed (`ClientConnection::handshake_kind`). Latency is from connect to the
/// end of the response: the whole handshake is in it. Runs on this
/// process's runtime, on core 0, as [`drive`] does.
async fn drive_tls(
    addr: SocketAddr,
    path: &str,
    token: Option<&HeaderValue>,
    roots: Arc<rustls::RootCertStore>,
    resume: bool,
    conns: usize,
    secs: f64,
) -> Outcome {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut request =
        format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n").into_bytes();
    if let Some(v) = token {
        request.extend_from_slice(b"authorization: ");
        request.extend_from_slice(v.as_bytes());
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");
    let request: Arc<[u8]> = request.into();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let core0 = core0_ticks();
    let segments0 = tcp_out_segments();
    let own_cpu = cpu_seconds(std::process::id());
    let mut tasks = Vec::new();
    for _ in 0..conns {
        // A worker's own session store: a clone shares the store's Arc,
        // so the default (in memory, 256 sessions, up to 8 TLS 1.3 tickets
        // per server) is set anew.
        let mut own = config.clone();
        own.resumption = if resume {
            rustls::client::Resumption::default()
        } else {
            rustls::client::Resumption::disabled()
        };
        let connector = tokio_rustls::TlsConnector::from(Arc::new(own));
        let (name, request) = (name.clone(), Arc::clone(&request));
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut buf = BytesMut::with_capacity(4 * 1024);
            let (mut n, mut bad, mut resumed, mut handshakes) = (0u64, 0u64, 0u64, 0u64);
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let Ok(tcp) = TcpStream::connect(addr).await else {
                    bad += 1;
                    break;
                };
                tcp.set_nodelay(true).unwrap();
                let Ok(mut tls) = connector.connect(name.clone(), tcp).await else {
                    bad += 1;
                    continue;
                };
                handshakes += 1;
                let kind = tls.get_ref().1.handshake_kind();
                resumed += u64::from(kind == Some(rustls::HandshakeKind::Resumed));
                if tls.write_all(&request).await.is_err() || tls.flush().await.is_err() {
                    bad += 1;
                    continue;
                }
                buf.clear();
                let Some((status, _)) = read_response(&mut tls, &mut buf).await else {
                    bad += 1;
                    continue;
                };
                hist.record(t0.elapsed().as_micros().max(1) as u64).unwrap();
                n += 1;
                if status != 200 {
                    bad += 1;
                }
                // Dropped without close_notify: the server has closed
                // its side already (`Connection: close`).
            }
            (n, bad, resumed, handshakes, hist)
        }));
    }
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let (mut requests, mut non_200, mut resumed, mut handshakes) = (0, 0, 0, 0);
    for t in tasks {
        let (n, bad, r, h, hist) = t.await.unwrap();
        requests += n;
        non_200 += bad;
        resumed += r;
        handshakes += h;
        total.add(hist).unwrap();
    }
    Outcome {
        requests,
        non_2xx: non_200,
        reopened: 0,
        elapsed: start.elapsed(),
        hist: total,
        load_core: busy_between(core0, core0_ticks()),
        segments: tcp_out_segments().saturating_sub(segments0),
        handshakes: Some(TlsCounts {
            resumed,
            handshakes,
            client_cpu: cpu_seconds(std::process::id()) - own_cpu,
            requests,
        }),
    }
}

/// What a TLS 1.3 handshake with `addr` settles on (cipher suite and key
/// exchange group), as the built-in TLS client offers them: one
/// connection, nothing sent. Both servers of the resumption pair should
/// show the same.
async fn tls_negotiated(addr: SocketAddr, roots: Arc<rustls::RootCertStore>) -> String {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let Ok(tcp) = TcpStream::connect(addr).await else {
        return "no connection".into();
    };
    match connector.connect(name, tcp).await {
        Ok(tls) => {
            let c = tls.get_ref().1;
            format!(
                "{:?}, {:?}",
                c.negotiated_cipher_suite().map(|s| s.suite()),
                c.negotiated_key_exchange_group().map(|g| g.name())
            )
        }
        Err(e) => format!("handshake failed: {e}"),
    }
}

// ------------------------------------------------------------------ store

/// Adds `n` api tokens to the store directly (multi-row inserts, one
/// transaction per 10k), returning their `Authorization` values.
/// `LOAD_SCHEMA_UPTO=N`: for a build that predates a migration
/// (`LOAD_TOKENGATE_BIN`), the store made here forgets those after `N`
/// (their columns stay, unread by that build), which it would otherwise
/// refuse to open.
async fn forget_newer_migrations(db: &Path) {
    let Ok(upto) = std::env::var("LOAD_SCHEMA_UPTO") else {
        return;
    };
    let upto: i64 = upto
        .parse()
        .expect("LOAD_SCHEMA_UPTO is a migration number");
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version > ?")
        .bind(upto)
        .execute(&mut conn)
        .await
        .unwrap();
}

async fn add_tokens(db: &Path, account: i64, tenant: i64, n: usize) -> Vec<HeaderValue> {
    let format = TokenFormat::default();
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let mut out = Vec::with_capacity(n);
    let mut done = 0;
    while done < n {
        let batch = (n - done).min(10_000);
        let mut tx = conn.begin().await.unwrap();
        for chunk in 0..batch.div_ceil(500) {
            let rows = (batch - chunk * 500).min(500);
            let mut sql = String::from(
                "INSERT INTO tokens (id, kind, tenant_id, account_id, name, abilities, display_prefix, hash, created_at) VALUES ",
            );
            let mut secrets = Vec::with_capacity(rows);
            for r in 0..rows {
                if r > 0 {
                    sql.push(',');
                }
                sql.push_str("(?, 'api', ?, ?, 'load', '[\"*\"]', ?, ?, 0)");
                secrets.push(format.generate(TokenKind::Api));
            }
            let mut q = sqlx::query(&sql);
            for s in &secrets {
                q = q
                    .bind(uuid::Uuid::now_v7().to_string())
                    .bind(tenant)
                    .bind(account)
                    .bind(s.display_prefix().to_string())
                    .bind(s.hash().0.to_vec());
            }
            q.execute(&mut *tx).await.unwrap();
            for s in secrets {
                out.push(HeaderValue::from_str(&format!("Bearer {}", s.expose())).unwrap());
            }
        }
        tx.commit().await.unwrap();
        done += batch;
    }
    out
}

// ------------------------------------------------------------------ report

struct Row {
    name: String,
    rps: f64,
    p50: u64,
    p99: u64,
    p999: u64,
    cpu_us: Option<f64>,
    /// The proxy's voluntary context switches per request.
    sleeps: Option<f64>,
    rss: Option<f64>,
    non_2xx: u64,
    /// Connections the server closed and the client opened again.
    reopened: u64,
    /// Core 0's busy share: at 100% the load client and upstream, not the
    /// proxy, set the pace.
    load_core: f64,
    /// TCP segments per request, every hop counted.
    segments: f64,
    /// What the built-in TLS client counted (its cases only).
    handshakes: Option<TlsCounts>,
}

fn row(name: &str, o: &Outcome, proxy: Option<(&Proxy, Mark)>) -> Row {
    row_of(name, o, &Vec::from_iter(proxy))
}

/// A process's CPU time per request since `before`, in microseconds.
fn cpu_us_since(p: &Proxy, before: &Mark, requests: u64) -> f64 {
    (p.cpu() - before.cpu) * 1e6 / requests.max(1) as f64
}

/// [`row`] for a case served by several processes (a front proxy and what
/// answers its auth subrequests): their CPU time, sleeps and peak RSS
/// summed; none at all for none.
fn row_of(name: &str, o: &Outcome, procs: &[(&Proxy, Mark)]) -> Row {
    let n = o.requests.max(1) as f64;
    let some = !procs.is_empty();
    let cpu_us = some.then(|| {
        procs
            .iter()
            .map(|(p, before)| cpu_us_since(p, before, o.requests))
            .sum()
    });
    let sleeps = some.then(|| {
        procs
            .iter()
            .map(|(p, before)| p.sleeps().saturating_sub(before.sleeps) as f64 / n)
            .sum()
    });
    let rss = some.then(|| procs.iter().map(|(p, _)| p.rss()).sum());
    Row {
        name: name.to_string(),
        rps: o.requests as f64 / o.elapsed.as_secs_f64(),
        p50: o.hist.value_at_quantile(0.5),
        p99: o.hist.value_at_quantile(0.99),
        p999: o.hist.value_at_quantile(0.999),
        cpu_us,
        sleeps,
        rss,
        non_2xx: o.non_2xx,
        reopened: o.reopened,
        load_core: o.load_core,
        segments: o.segments as f64 / n,
        handshakes: o.handshakes,
    }
}

/// One row of the medians of a case's rounds.
fn median_row(name: &str, of: &[&Row]) -> Option<Row> {
    let first = of.first()?;
    Some(Row {
        name: name.to_string(),
        rps: median_of(of.iter().map(|r| r.rps).collect()),
        p50: median_of(of.iter().map(|r| r.p50 as f64).collect()) as u64,
        p99: median_of(of.iter().map(|r| r.p99 as f64).collect()) as u64,
        p999: median_of(of.iter().map(|r| r.p999 as f64).collect()) as u64,
        cpu_us: first
            .cpu_us
            .map(|_| median_of(of.iter().filter_map(|r| r.cpu_us).collect())),
        sleeps: first
            .sleeps
            .map(|_| median_of(of.iter().filter_map(|r| r.sleeps).collect())),
        rss: of.iter().filter_map(|r| r.rss).reduce(f64::max),
        non_2xx: of.iter().map(|r| r.non_2xx).sum(),
        reopened: of.iter().map(|r| r.reopened).sum(),
        load_core: median_of(of.iter().map(|r| r.load_core).collect()),
        segments: median_of(of.iter().map(|r| r.segments).collect()),
        handshakes: of
            .iter()
            .filter_map(|r| r.handshakes)
            .reduce(TlsCounts::add),
    })
}

/// Prints case `a` against case `b` round by round (each round's two ran
/// seconds apart) and returns the medians of those paired ratios:
/// throughput, CPU per request.
fn paired_ratios(a: &str, a_rounds: &[&Row], b: &str, b_rounds: &[&Row]) -> Option<(f64, f64)> {
    if b_rounds.is_empty() || a_rounds.len() != b_rounds.len() {
        return None;
    }
    let pairs = || a_rounds.iter().zip(b_rounds);
    let tput: Vec<f64> = pairs().map(|(x, y)| x.rps / y.rps).collect();
    let cpu: Vec<f64> = pairs()
        .filter_map(|(x, y)| Some(x.cpu_us? / y.cpu_us?))
        .collect();
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "{a} / {b}, round by round: throughput {}; CPU per request {}",
        list(&tput),
        list(&cpu)
    );
    let (low, high) = median_interval(&tput);
    println!(
        "  {a} / {b}: median throughput ratio {:.3}, 95% interval {low:.3}-{high:.3} over the {} rounds",
        median_of(tput.clone()),
        tput.len()
    );
    if let Ok(file) = std::env::var("LOAD_POOL") {
        pool_rounds(Path::new(&file), &format!("{a}/{b}"), &tput);
    }
    Some((median_of(tput), median_of(cpu)))
}

/// `LOAD_POOL=FILE`: appends this run's per-round throughput ratios of a
/// pair to `FILE` (a line `a/b r1 r2 ...`) and prints the median and its
/// interval over every run's rounds written there: runs started apart,
/// each with processes of its own, pooled.
fn pool_rounds(file: &Path, key: &str, ratios: &[f64]) {
    use std::io::Write;
    let line = ratios
        .iter()
        .fold(key.to_string(), |l, r| format!("{l} {r:.4}"));
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .and_then(|mut f| writeln!(f, "{line}"));
    if let Err(e) = appended {
        eprintln!("LOAD_POOL {}: {e}", file.display());
        return;
    }
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let runs: Vec<Vec<f64>> = text
        .lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .map(|rest| rest.split(' ').filter_map(|r| r.parse().ok()).collect())
        .collect();
    let all: Vec<f64> = runs.iter().flatten().copied().collect();
    let (low, high) = median_interval(&all);
    println!(
        "  pooled ({}): {} runs, {} rounds: median throughput ratio {:.3}, 95% interval {low:.3}-{high:.3}; the runs' own medians {}",
        file.display(),
        runs.len(),
        all.len(),
        median_of(all.clone()),
        runs.iter()
            .map(|r| format!("{:.3}", median_of(r.clone())))
            .collect::<Vec<_>>()
            .join(" ")
    );
}

/// A 95% interval for the median of `v` (a run's per-round ratios), by
/// bootstrap: 2,000 resamples of its rounds, seeded, so that a report's
/// interval can be had again from its ratios. It covers the luck of the
/// rounds within one run; BENCHMARKS.md (twentieth session) found runs'
/// medians, each with its own processes, further apart than that, so a
/// target near 1.0 is judged on several runs' rounds pooled.
fn median_interval(v: &[f64]) -> (f64, f64) {
    use rand::{rngs::SmallRng, Rng, SeedableRng};
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mut rng = SmallRng::seed_from_u64(1);
    let mut medians: Vec<f64> = (0..2000)
        .map(|_| median_of((0..v.len()).map(|_| v[rng.gen_range(0..v.len())]).collect()))
        .collect();
    medians.sort_by(|a, b| a.total_cmp(b));
    (medians[50], medians[1949])
}

fn refs(rows: &[Row]) -> Vec<&Row> {
    rows.iter().collect()
}

/// The median (the upper one of an even count).
fn median_of(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn print_row(r: &Row, direct: Option<&Row>) {
    let ratio = direct.map_or(String::new(), |d| format!("{:.2}x", r.rps / d.rps));
    println!(
        "{:<17} {:>10.0} {:>8} {:>8} {:>8} {:>10} {:>10} {:>7.0}% {:>9} {:>8.2} {:>8} {:>8} {:>7}",
        r.name,
        r.rps,
        r.p50,
        r.p99,
        r.p999,
        r.cpu_us.map_or("-".into(), |c| format!("{c:.1}")),
        r.sleeps.map_or("-".into(), |c| format!("{c:.3}")),
        r.load_core * 100.0,
        r.rss.map_or("-".into(), |m| format!("{m:.1}")),
        r.segments,
        r.non_2xx,
        r.reopened,
        ratio
    );
}

// ------------------------------------------------------------------ main

fn main() {
    // Core 0 for this process (upstream + client); core 1 for the proxy.
    let _ = Command::new("taskset")
        .args(["-p", "-c", "0", &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status();
    let secs: f64 = env_or("LOAD_SECONDS", 5.0);
    let conns: usize = env_or("LOAD_CONNECTIONS", 32);
    let big = env_or::<u8>("LOAD_BIG_STORE", 1) == 1;
    let use_wrk = std::env::var("LOAD_TOOL").is_ok_and(|t| t == "wrk");
    let wanted = std::env::var("LOAD_CASES").ok();
    let want = |c: &str| {
        wanted
            .as_deref()
            .is_none_or(|w| w.split(',').any(|x| x == c))
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("load.db");
        let up = upstream().await;
        let store = SqliteStore::connect(
            &DatabaseUrl::new(format!("sqlite://{}", db.display())),
            2,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        store.migrate().await.unwrap();
        let (tenant, _) = store
            .create_tenant("load", 0, &NewAuditEvent::default(), None)
            .await
            .unwrap();
        let (account, _) = store
            .create_account(
                &NewAccount {
                    tenant_id: tenant.id,
                    email: "load@example.com".into(),
                    name: "Load".into(),
                    external_id: None,
                    parent_account_id: None,
                    workspace: None,
                },
                0,
                &NewAuditEvent::default(),
            )
            .await
            .unwrap();
        drop(store);
        let t0 = Instant::now();
        let tokens = Arc::new(add_tokens(&db, account.id, tenant.id, 10_000).await);
        eprintln!("stored 10k tokens in {:.1}s", t0.elapsed().as_secs_f64());
        forget_newer_migrations(&db).await;

        let access_log = match std::env::var("LOAD_ACCESS_LOG").as_deref() {
            Ok("json") => format!(
                "[log]\nformat = \"json\"\naccess_file = {:?}\n",
                dir.path().join("access.log").display().to_string()
            ),
            Ok("none") => String::new(),
            _ => "[log]\naccess = false\n".to_string(),
        };
        eprintln!("access log: {}", access_log.replace('\n', " "));
        // The limited route and its policy only when a limited case runs
        // (a build from before rate limits refuses the keys); with
        // `rate_store`, counted through that Redis.
        let with_limits = want("limited") || want("limited-redis");
        let limits = |rate_store: Option<&str>| {
            if !with_limits {
                return String::new();
            }
            let store = rate_store.map(|s| format!("[rate_limits]\nstore = \"{s}\"\n")).unwrap_or_default();
            format!(
                "[[routes]]\npath = \"/limited\"\nupstream = \"up\"\nrate_limits = [\"bench\"]\n{store}\
                 [[rate_limits.policies]]\nname = \"bench\"\nrequests = 1000000000\nwindow_seconds = 60\nby = \"token\"\n"
            )
        };
        let write_config_logged = |name: &str, db: &Path, extra: &str, rate_store: Option<&str>, log: &str| {
            let config = dir.path().join(name);
            std::fs::write(
                &config,
                format!(
                    "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
                     [store]\nurl = \"sqlite://{}\"\n[cache]\nttl_seconds = 600\nmax_entries = 1000000\n{log}\
                     [[upstreams]]\nname = \"up\"\nurl = \"http://{up}\"\n\
                     [[routes]]\npath = \"/\"\nupstream = \"up\"\n\
                     [[routes]]\npath = \"/none\"\nupstream = \"up\"\nauth = \"none\"\n{limits}{extra}",
                    db.display(),
                    limits = limits(rate_store),
                ),
            )
            .unwrap();
            config
        };
        let write_config = |name: &str, db: &Path, extra: &str, rate_store: Option<&str>| {
            write_config_logged(name, db, extra, rate_store, &access_log)
        };
        let config = write_config("tokengate.toml", &db, "", None);
        // logged: a second gateway with the access log on (JSON lines to a
        // file), paired round by round with `cached` on the first.
        let logged_config = want("logged").then(|| {
            let log = format!(
                "[log]\nformat = \"json\"\naccess_file = {:?}\n",
                dir.path().join("logged-access.log").display().to_string()
            );
            write_config_logged("logged.toml", &db, "", None, &log)
        });
        // The same gateway sending none of its ten headers upstream, as
        // nginx sends none: what the gateway costs apart from what the
        // upstream spends reading those headers on the shared core.
        let bare_config = write_config(
            "bare.toml",
            &db,
            &format!("[headers]\nomit = {:?}\n", tokengate::config::HEADER_KEYS),
            None,
        );
        // limited-redis: a second gateway counting the limited route
        // through a redis-server of its own on a free port.
        let redis = want("limited-redis").then(start_redis).flatten();
        if want("limited-redis") && redis.is_none() {
            println!("limited-redis: redis-server not installed: skipped");
        }
        let redis_config = redis.as_ref().map(|r| {
            write_config("redis.toml", &db, "", Some(&format!("redis://{}/0", r.addr)))
        });

        // The TLS cases: one ECDSA P-256 certificate for tokengate and nginx.
        // The wrk-driven ones need wrk; `tls-resume` and `nginx-tls-resume`
        // (the built-in TLS client) do not.
        let tls_cases = ["tls", "nginx-tls", "tls-close", "nginx-tls-close", "close", "nginx-close"];
        let resume_cases = ["tls-resume", "nginx-tls-resume", "tls-full", "nginx-tls-full"];
        let with_wrk_tls = tls_cases.iter().any(|c| want(c))
            && Command::new("wrk").arg("-v").output().is_ok();
        let with_resume = resume_cases.iter().any(|c| want(c));
        let with_tls = with_wrk_tls || with_resume;
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        // What the built-in TLS client trusts: that one certificate.
        let mut roots = rustls::RootCertStore::empty();
        let tls_config = with_tls.then(|| {
            let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
            std::fs::write(&cert, c.cert.pem()).unwrap();
            std::fs::write(&key, c.key_pair.serialize_pem()).unwrap();
            roots.add(c.cert.der().clone()).unwrap();
            write_config(
                "tls.toml",
                &db,
                &format!("[tls]\ncert_file = {:?}\nkey_file = {:?}\n", cert.display().to_string(), key.display().to_string()),
                None,
            )
        });

        let mut rows: Vec<Row> = Vec::new();
        let run = |addr: SocketAddr, path: &'static str, t: Tokens| async move {
            let by_wrk = match (&t, use_wrk) {
                (Tokens::None, true) => drive_wrk(addr, path, None, conns, secs),
                (Tokens::One(v), true) => drive_wrk(addr, path, Some(v), conns, secs),
                _ => None,
            };
            // Only when wrk did not run: a second load in the same window
            // would double the CPU counted against wrk's requests.
            match by_wrk {
                Some(o) => o,
                None => drive(addr, path, t, conns, secs).await,
            }
        };

        println!(
            "load: {conns} keep-alive connections, {secs}s per case, client {} (core 0), proxy on core 1",
            if use_wrk { "wrk for fixed-token cases" } else { "built-in" }
        );
        println!(
            "{:<17} {:>10} {:>8} {:>8} {:>8} {:>10} {:>10} {:>8} {:>9} {:>8} {:>8} {:>8} {:>7}",
            "case", "req/s", "p50 us", "p99 us", "p99.9us", "cpu us/req", "sleeps/req", "core 0", "rss MiB", "segs/req", "non-2xx", "reopened", "/direct"
        );
        // Interleaved rounds: every case once per round, medians reported,
        // so that a noisy moment hurts one sample, not one case.
        let rounds: usize = env_or("LOAD_ROUNDS", 3);
        let gw = start_tokengate(&config);
        let admin = gw.admin.unwrap();
        let hot = Tokens::One(tokens[0].clone());
        let bare = want("bare").then(|| start_tokengate(&bare_config));
        let redis_gw = redis_config.as_ref().map(|c| start_tokengate(c));
        if let Some(r) = &redis_gw {
            let _ = drive(r.addr, "/warm", hot.clone(), 1, 0.2).await;
        }
        let logged_gw = logged_config.as_ref().map(|c| start_tokengate(c));
        if let Some(l) = &logged_gw {
            let _ = drive(l.addr, "/warm", hot.clone(), 1, 0.2).await;
        }
        if let Some(b) = &bare {
            let _ = drive(b.addr, "/warm", hot.clone(), 1, 0.2).await;
        }
        let _ = drive(gw.addr, "/warm", hot.clone(), 1, 0.2).await;
        let _ = drive(gw.addr, "/warm", Tokens::Once(Arc::clone(&tokens), Arc::default()), conns, 60.0).await;
        let format = TokenFormat::default();
        let junk: Arc<Vec<HeaderValue>> = Arc::new(
            (0..10_000)
                .map(|i| {
                    let mut t = format.generate(TokenKind::Api).expose().to_string();
                    // Break the shape (even) or the checksum (odd).
                    if i % 2 == 0 {
                        t.push('x');
                    } else {
                        t.replace_range(5..6, if &t[5..6] == "A" { "B" } else { "A" });
                    }
                    HeaderValue::from_str(&format!("Bearer {t}")).unwrap()
                })
                .collect(),
        );
        let with_auth_fronts = want("nginx-auth-tg") || want("nginx-auth-static") || want("nginx-auth-proc");
        let with_nginx =
            want("nginx") || want("nginx-204") || want("nginx-204-ids") || want("nginx-close") || with_auth_fronts;
        let (nginx, fronts) = match with_nginx.then(|| start_nginx(dir.path(), up, gw.addr)).flatten() {
            Some((ng, fronts)) => (Some(ng), Some(fronts)),
            None => (None, None),
        };
        let gw_tls = tls_config.as_ref().map(|c| start_tokengate(c));
        let nginx_tls = with_tls.then(|| start_nginx_tls(dir.path(), up, &cert, &key)).flatten();
        if tls_cases.iter().any(|c| want(c)) && !with_wrk_tls {
            println!("tls cases    (but tls-resume, tls-full and their nginx cases) need wrk (apt-get install wrk): skipped");
        }
        if let Some(g) = &gw_tls {
            let _ = drive_wrk_as(Wrk::Tls, g.addr, "/api/x", Some(&tokens[0]), 1, 1.0);
        }
        let roots = Arc::new(roots);
        if with_resume {
            // Warms the TLS gateway's token cache without wrk, and says at
            // once if a TLS proxy does not answer the built-in client.
            for (name, proxy, path, token) in [
                ("tls-resume", gw_tls.as_ref(), "/api/x", Some(&tokens[0])),
                ("nginx-tls-resume", nginx_tls.as_ref(), "/nginx", None),
            ] {
                if let Some(p) = proxy {
                    println!("{name:<17} negotiates {}", tls_negotiated(p.addr, Arc::clone(&roots)).await);
                    let o = drive_tls(p.addr, path, token, Arc::clone(&roots), true, 1, 0.5).await;
                    if o.non_2xx > 0 || o.requests == 0 {
                        println!("{name}: warm-up got {} failed or non-200 of {} requests", o.non_2xx, o.requests);
                    }
                }
            }
        }
        if with_nginx && nginx.is_none() {
            println!("nginx        not installed (apt-get install nginx-light): skipped");
        }
        if let (Some(f), true) = (&fronts, with_auth_fronts) {
            // Fills each front's keep-alive pools, and says so at once if
            // a front does not let the token through.
            for (name, addr) in [
                ("nginx-auth-tg", f.tokengate),
                ("nginx-auth-static", f.fixed),
                ("nginx-auth-proc", f.separate),
            ] {
                let o = drive(addr, "/api/x", hot.clone(), conns, 0.5).await;
                if o.non_2xx > 0 || o.requests == 0 {
                    println!("{name}: warm-up got {} non-2xx of {} requests", o.non_2xx, o.requests);
                }
            }
        }
        // nginx-auth-tg's CPU per request, round by round: nginx's share
        // and tokengate's.
        let mut auth_tg_split: Vec<(f64, f64)> = Vec::new();
        let mut samples: Vec<(&'static str, Row)> = Vec::new();
        let mut garbage_reached = 0u64;
        // Every other round runs its cases in reverse order, so no case
        // always runs right after the same one: an order effect (a case
        // measured differently for running second) would otherwise move
        // every round's ratio the same way.
        let order = [
            "direct", "none", "cached", "logged", "limited", "limited-redis", "bare", "garbage", "store-10k", "latency", "nginx", "forward-auth",
            "nginx-204", "nginx-204-ids", "nginx-auth-tg", "nginx-auth-static", "nginx-auth-proc", "tls", "nginx-tls", "tls-close",
            "nginx-tls-close", "tls-resume", "nginx-tls-resume", "tls-full", "nginx-tls-full", "close", "nginx-close",
        ];
        for round in 0..rounds {
            let mut cases = order;
            if round % 2 == 1 {
                cases.reverse();
            }
            for case in cases {
                match case {
                    "direct" => {
                        let o = run(up, "/direct", Tokens::None).await;
                        samples.push(("direct", row("direct", &o, None)));
                    }
                    "none" if want("none") => {
                        let c = gw.mark();
                        let o = run(gw.addr, "/none/x", Tokens::None).await;
                        samples.push(("none", row("none", &o, Some((&gw, c)))));
                    }
                    "cached" if want("cached") => {
                        let c = gw.mark();
                        let o = run(gw.addr, "/api/x", hot.clone()).await;
                        samples.push(("cached", row("cached", &o, Some((&gw, c)))));
                    }
                    "limited" if want("limited") => {
                        // The cached case on a route with a rate limit
                        // (never reached): what counting and the
                        // RateLimit fields cost.
                        let c = gw.mark();
                        let o = run(gw.addr, "/limited/x", hot.clone()).await;
                        samples.push(("limited", row("limited", &o, Some((&gw, c)))));
                        let mut pair = [("lat-cached2", "/api/x"), ("lat-limited", "/limited/x")];
                        if round % 2 == 1 {
                            pair.reverse();
                        }
                        for (name, path) in pair {
                            let o = drive(gw.addr, path, hot.clone(), 1, secs / 2.0).await;
                            samples.push((name, row(name, &o, None)));
                        }
                    }
                    "limited-redis" => {
                        if let Some(r) = &redis_gw {
                            let c = r.mark();
                            let o = run(r.addr, "/limited/x", hot.clone()).await;
                            samples.push(("limited-redis", row("limited-redis", &o, Some((r, c)))));
                            let o = drive(r.addr, "/limited/x", hot.clone(), 1, secs / 2.0).await;
                            samples.push(("lat-limited-redis", row("lat-limited-redis", &o, None)));
                        }
                    }
                    "logged" => {
                        if let Some(l) = &logged_gw {
                            let c = l.mark();
                            let o = run(l.addr, "/api/x", hot.clone()).await;
                            samples.push(("logged", row("logged", &o, Some((l, c)))));
                        }
                    }
                    "bare" => {
                        if let Some(b) = &bare {
                            let c = b.mark();
                            let o = run(b.addr, "/api/x", hot.clone()).await;
                            samples.push(("bare", row("bare", &o, Some((b, c)))));
                        }
                    }
                    "garbage" if want("garbage") => {
                        let before = store_lookups(admin).await;
                        let c = gw.mark();
                        let o = drive(gw.addr, "/api/x", Tokens::Cycle(Arc::clone(&junk)), conns, secs).await;
                        garbage_reached += store_lookups(admin).await - before;
                        samples.push(("garbage", row("garbage", &o, Some((&gw, c)))));
                    }
                    "store-10k" if want("store-10k") => {
                        let c = gw.mark();
                        let o = run(gw.addr, "/api/x", Tokens::Cycle(Arc::clone(&tokens))).await;
                        samples.push(("store-10k", row("store-10k", &o, Some((&gw, c)))));
                    }
                    "latency" if want("cached") && want("none") => {
                        // One connection, no queueing: latency is service
                        // time, so the difference is what the auth step adds.
                        let mut pair = [("lat-none", "/none/x", Tokens::None), ("lat-cached", "/api/x", hot.clone())];
                        if round % 2 == 1 {
                            pair.reverse();
                        }
                        for (name, path, t) in pair {
                            let o = drive(gw.addr, path, t, 1, secs / 2.0).await;
                            samples.push((name, row(name, &o, None)));
                        }
                    }
                    "nginx" if want("nginx") => {
                        if let Some(ng) = &nginx {
                            let c = ng.mark();
                            let o = run(ng.addr, "/nginx", Tokens::None).await;
                            samples.push(("nginx", row("nginx", &o, Some((ng, c)))));
                        }
                    }
                    "forward-auth" if want("forward-auth") => {
                        let c = gw.mark();
                        let o = run(gw.addr, "/_tokengate/auth/api/x", hot.clone()).await;
                        samples.push(("forward-auth", row("forward-auth", &o, Some((&gw, c)))));
                    }
                    "nginx-204" if want("nginx-204") => {
                        if let Some(ng) = &nginx {
                            let c = ng.mark();
                            let o = run(ng.addr, "/nginx-204", Tokens::None).await;
                            samples.push(("nginx-204", row("nginx-204", &o, Some((ng, c)))));
                            // One connection, no queueing: the service time
                            // of each answer, as a front proxy waits for it.
                            let mut pair = [
                                ("lat-fa", gw.addr, "/_tokengate/auth/api/x", hot.clone()),
                                ("lat-204", ng.addr, "/nginx-204", Tokens::None),
                            ];
                            if round % 2 == 1 {
                                pair.reverse();
                            }
                            for (name, addr, path, t) in pair {
                                let o = drive(addr, path, t, 1, secs / 2.0).await;
                                samples.push((name, row(name, &o, None)));
                            }
                        }
                    }
                    "nginx-204-ids" if want("nginx-204-ids") => {
                        if let Some(ng) = &nginx {
                            let c = ng.mark();
                            let o = run(ng.addr, "/nginx-204-ids", Tokens::None).await;
                            samples.push(("nginx-204-ids", row("nginx-204-ids", &o, Some((ng, c)))));
                        }
                    }
                    "nginx-auth-tg" if want("nginx-auth-tg") => {
                        if let (Some(ng), Some(f)) = (&nginx, &fronts) {
                            // nginx and tokengate share core 1: what this
                            // case costs is both processes' CPU.
                            let (n, g) = (ng.mark(), gw.mark());
                            let o = run(f.tokengate, "/api/x", hot.clone()).await;
                            auth_tg_split.push((cpu_us_since(ng, &n, o.requests), cpu_us_since(&gw, &g, o.requests)));
                            samples.push(("nginx-auth-tg", row_of("nginx-auth-tg", &o, &[(ng, n), (&gw, g)])));
                        }
                    }
                    "nginx-auth-proc" if want("nginx-auth-proc") => {
                        if let (Some(ng), Some(f)) = (&nginx, &fronts) {
                            // Two processes on core 1, as in
                            // nginx-auth-tg: nginx and the 204 service.
                            let (n, a) = (ng.mark(), f.answerer.mark());
                            let o = run(f.separate, "/api/x", hot.clone()).await;
                            samples.push(("nginx-auth-proc", row_of("nginx-auth-proc", &o, &[(ng, n), (&f.answerer, a)])));
                        }
                    }
                    "nginx-auth-static" if want("nginx-auth-static") => {
                        if let (Some(ng), Some(f)) = (&nginx, &fronts) {
                            let c = ng.mark();
                            let o = run(f.fixed, "/api/x", hot.clone()).await;
                            samples.push(("nginx-auth-static", row("nginx-auth-static", &o, Some((ng, c)))));
                            // One connection, no queueing: the whole
                            // chain's service time, either answerer.
                            if want("nginx-auth-tg") {
                                let mut pair = [("lat-auth-tg", f.tokengate), ("lat-auth-static", f.fixed)];
                                if round % 2 == 1 {
                                    pair.reverse();
                                }
                                for (name, addr) in pair {
                                    let o = drive(addr, "/api/x", hot.clone(), 1, secs / 2.0).await;
                                    samples.push((name, row(name, &o, None)));
                                }
                            }
                        }
                    }
                    "tls" | "tls-close" | "close" if want(case) => {
                        let (how, proxy) = match case {
                            "tls" => (Wrk::Tls, gw_tls.as_ref()),
                            "tls-close" => (Wrk::TlsClose, gw_tls.as_ref()),
                            _ => (Wrk::Close, with_wrk_tls.then_some(&gw)),
                        };
                        if let Some(p) = proxy {
                            let c = p.mark();
                            if let Some(o) = drive_wrk_as(how, p.addr, "/api/x", Some(&tokens[0]), conns, secs) {
                                samples.push((case, row(case, &o, Some((p, c)))));
                            }
                        }
                    }
                    "nginx-tls" | "nginx-tls-close" | "nginx-close" if want(case) => {
                        let (how, proxy) = match case {
                            "nginx-tls" => (Wrk::Tls, nginx_tls.as_ref()),
                            "nginx-tls-close" => (Wrk::TlsClose, nginx_tls.as_ref()),
                            _ => (Wrk::Close, nginx.as_ref().filter(|_| with_wrk_tls)),
                        };
                        if let Some(p) = proxy {
                            let c = p.mark();
                            if let Some(o) = drive_wrk_as(how, p.addr, "/nginx", None, conns, secs) {
                                samples.push((case, row(case, &o, Some((p, c)))));
                            }
                        }
                    }
                    "tls-resume" | "nginx-tls-resume" | "tls-full" | "nginx-tls-full" if want(case) => {
                        // The built-in TLS client, whatever LOAD_TOOL says:
                        // resuming by the tickets it is sent (`tls-resume`),
                        // or never (`tls-full`: a full handshake each).
                        let (proxy, path, token) = match case {
                            "tls-resume" | "tls-full" => (gw_tls.as_ref(), "/api/x", Some(&tokens[0])),
                            _ => (nginx_tls.as_ref(), "/nginx", None),
                        };
                        let resume = case.ends_with("resume");
                        if let Some(p) = proxy {
                            let c = p.mark();
                            let o = drive_tls(p.addr, path, token, Arc::clone(&roots), resume, conns, secs).await;
                            samples.push((case, row(case, &o, Some((p, c)))));
                        }
                    }
                    _ => {}
                }
            }
        }
        drop(nginx_tls);
        drop(gw_tls);
        drop(nginx);
        drop(gw);
        drop(bare);
        // The two ratio targets round by round as well: each round's cases
        // ran seconds apart, so their ratio is not moved by the machine
        // drifting between rounds, and the median of those ratios is the
        // steadier figure.
        let of = |name: &str| -> Vec<&Row> {
            samples.iter().filter(|(n, _)| *n == name).map(|(_, r)| r).collect()
        };
        let paired = |a: &str, b: &str| paired_ratios(a, &of(a), b, &of(b));
        let paired_none = paired("cached", "none");
        let paired_nginx = paired("cached", "nginx");
        let paired_bare = paired("bare", "nginx");
        let paired_fa = paired("forward-auth", "nginx-204");
        let paired_fa_ids = paired("forward-auth", "nginx-204-ids");
        let paired_auth = paired("nginx-auth-tg", "nginx-auth-static");
        let paired_proc = paired("nginx-auth-tg", "nginx-auth-proc");
        let paired_limited = [
            ("limited", "the same route with a rate limit (local)"),
            ("limited-redis", "with the limit counted through Redis"),
            ("logged", "the access log on, JSON lines to a file, against off"),
        ]
            .map(|(a, what)| (a, what, paired(a, "cached")));
        let paired_tls = [
            ("tls", "nginx-tls", "TLS keep-alive, tokengate cached token / nginx listen ssl no-auth"),
            (
                "tls-close",
                "nginx-tls-close",
                "TLS connection per request (wrk: TLS 1.3, resuming the session it last had), tokengate / nginx",
            ),
            (
                "tls-resume",
                "nginx-tls-resume",
                "TLS connection per request resuming the session (TLS 1.3 ticket each, built-in client), tokengate / nginx",
            ),
            (
                "tls-full",
                "nginx-tls-full",
                "TLS connection per request, a full TLS 1.3 handshake each (built-in client), tokengate / nginx",
            ),
            ("close", "nginx-close", "plain connection per request (Connection: close), tokengate / nginx"),
        ]
        .map(|(a, b, what)| (a, b, what, paired(a, b)));
        let median = |name: &str| median_row(name, &of(name));
        println!("medians of {rounds} interleaved rounds:");
        let direct = median("direct").unwrap();
        print_row(&direct, None);
        let mut nginx_row = None;
        let mut nginx_204_row = None;
        for name in [
            "none", "cached", "logged", "limited", "limited-redis", "bare", "garbage", "store-10k", "lat-none", "lat-cached", "lat-cached2", "lat-limited",
            "lat-limited-redis", "nginx",
            "forward-auth", "nginx-204", "nginx-204-ids", "lat-fa", "lat-204", "nginx-auth-tg", "nginx-auth-static", "nginx-auth-proc", "lat-auth-tg",
            "lat-auth-static", "tls", "nginx-tls", "tls-close", "nginx-tls-close", "tls-resume", "nginx-tls-resume", "tls-full",
            "nginx-tls-full", "close", "nginx-close",
        ] {
            if let Some(r) = median(name) {
                print_row(&r, Some(&direct));
                if let Some(t) = r.handshakes {
                    let per_round: Vec<String> = of(name)
                        .iter()
                        .filter_map(|r| r.handshakes)
                        .map(|t| format!("{:.1}%", 100.0 * t.resumed_share()))
                        .collect();
                    let share = t.resumed_share();
                    println!(
                        "           handshakes resumed: {} of {} ({:.1}%; round by round {}){}",
                        t.resumed,
                        t.handshakes,
                        share * 100.0,
                        per_round.join(" "),
                        match (name.ends_with("resume"), share) {
                            (true, s) if s < 0.9 => ": RESUMPTION DID NOT HAPPEN for most handshakes, not a resumption figure",
                            (false, s) if s > 0.0 => ": SOME RESUMED, not a full-handshake figure",
                            _ => "",
                        }
                    );
                    println!(
                        "           the bench process (TLS client and upstream, core 0): {:.1} us CPU per request",
                        t.client_cpu * 1e6 / t.requests.max(1) as f64
                    );
                }
                if name == "garbage" {
                    println!("           garbage requests that reached the store: {garbage_reached} (all {} were refused)", r.non_2xx);
                }
                match name {
                    "nginx" => nginx_row = Some(r),
                    "nginx-204" => nginx_204_row = Some(r),
                    _ => rows.push(r),
                }
            }
        }

        let mut paired_store = None;
        if big && (want("cold") || want("store-1m")) {
            // A copy of the 10k-token store, for `store-10k` rounds paired
            // with `store-1m`'s.
            let small_db = dir.path().join("small.db");
            let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
                .await
                .unwrap();
            sqlx::query("VACUUM INTO ?")
                .bind(small_db.display().to_string())
                .execute(&mut conn)
                .await
                .unwrap();
            drop(conn);
            let small_config = write_config("small.toml", &small_db, "", None);
            let t0 = Instant::now();
            let more = add_tokens(&db, account.id, tenant.id, 990_000).await;
            eprintln!("stored 1M tokens in all ({:.1}s more)", t0.elapsed().as_secs_f64());
            println!("1M tokens stored (a fresh gateway for each case, so each peak RSS is its own):");
            if want("cold") {
                let gw = start_tokengate(&config);
                let fresh = Arc::new(more[WORKING_SET_1M..].to_vec());
                let c = gw.mark();
                let o = drive(gw.addr, "/api/x", Tokens::Once(fresh, Arc::default()), conns, secs).await;
                rows.push(row("cold", &o, Some((&gw, c))));
                print_row(rows.last().unwrap(), Some(&direct));
            }
            if want("store-1m") {
                // Each gateway warmed on its whole working set, its
                // last-used times flushed, then the two cases in paired
                // rounds (order reversed every other round): one round
                // each would set a noisy moment against a median.
                let warm = |gw: Proxy, set: Arc<Vec<HeaderValue>>| async move {
                    let admin = gw.admin.unwrap();
                    let written = metric(admin, "tokengate_last_used_written_total").await;
                    let n = set.len() as u64;
                    let _ = drive(gw.addr, "/warm", Tokens::Once(set, Arc::default()), conns, 120.0).await;
                    wait_for_last_used_flush(admin, written + n).await;
                    gw
                };
                let set = Arc::new(more[..WORKING_SET_1M].to_vec());
                let gw = warm(start_tokengate(&config), Arc::clone(&set)).await;
                let small = warm(start_tokengate(&small_config), Arc::clone(&tokens)).await;
                let (mut big_rounds, mut small_rounds) = (Vec::new(), Vec::new());
                // Last-used rows each window wrote: a busy token is
                // written once per `last_used_resolution_seconds`, so the
                // warm-up's tokens all come due together a minute later.
                let (mut big_written, mut small_written) = (Vec::new(), Vec::new());
                let written = |p: &Proxy| metric(p.admin.unwrap(), "tokengate_last_used_written_total");
                for round in 0..rounds {
                    for first in [round % 2 == 0, round % 2 == 1] {
                        if first {
                            let (c, w) = (gw.mark(), written(&gw).await);
                            let o = drive(gw.addr, "/api/x", Tokens::Cycle(Arc::clone(&set)), conns, secs).await;
                            big_written.push(written(&gw).await - w);
                            big_rounds.push(row("store-1m", &o, Some((&gw, c))));
                        } else {
                            let (c, w) = (small.mark(), written(&small).await);
                            let o = drive(small.addr, "/api/x", Tokens::Cycle(Arc::clone(&tokens)), conns, secs).await;
                            small_written.push(written(&small).await - w);
                            small_rounds.push(row("10k-paired", &o, Some((&small, c))));
                        }
                    }
                }
                println!("store-1m and a 10k-token store in {rounds} paired rounds:");
                for (name, rs) in [("10k-paired", &small_rounds), ("store-1m", &big_rounds)] {
                    let r = median_row(name, &refs(rs)).unwrap();
                    print_row(&r, Some(&direct));
                    rows.push(r);
                }
                println!("           (1M stored, {WORKING_SET_1M} cached: peak RSS above)");
                println!(
                    "           last-used rows written in each round's window: store-1m {big_written:?}, 10k-paired {small_written:?}"
                );
                paired_store = paired_ratios("store-1m", &refs(&big_rounds), "10k-paired", &refs(&small_rounds));
            }
        }

        // Ratios.
        let get = |n: &str| rows.iter().find(|r| r.name == n);
        println!();
        if let (Some(c), Some(n)) = (get("cached"), get("none")) {
            println!("cached / auth=none throughput: {:.2} (target >= 0.90)", c.rps / n.rps);
        }
        if let Some((tput, _)) = paired_none {
            println!("  the same as the median of the per-round ratios: {tput:.2}");
        }
        if let (Some(c), Some(n)) = (get("lat-cached"), get("lat-none")) {
            println!(
                "added latency of the auth step, one connection: p50 {} us, p99 {} us (target < 100)",
                c.p50 as i64 - n.p50 as i64,
                c.p99 as i64 - n.p99 as i64
            );
        }
        if let (Some(big), Some(small)) = (get("store-1m"), get("10k-paired")) {
            println!(
                "1M-token store / 10k-token store throughput: {:.2} (target >= 0.90); RSS with 1M stored, 100k cached: {:.1} MiB (target < 256)",
                big.rps / small.rps,
                big.rss.unwrap_or(0.0)
            );
        }
        if let Some((tput, _)) = paired_store {
            println!("  the same as the median of the per-round ratios: {tput:.2}");
        }
        // Throughput and CPU per request as ratios to nginx's.
        let vs_nginx = |r: &Row| {
            let n = nginx_row.as_ref()?;
            Some((r.rps / n.rps, r.cpu_us.unwrap_or(0.0) / n.cpu_us.unwrap_or(f64::NAN)))
        };
        if let Some((tput, cpu)) = get("cached").and_then(vs_nginx) {
            println!(
                "tokengate cached / nginx no-auth: throughput {tput:.2}x (target >= 1.0), CPU per request {cpu:.2}x (target <= 1.0)"
            );
        }
        if let Some((tput, cpu)) = paired_nginx {
            println!(
                "  the same as medians of the per-round ratios: throughput {tput:.2}x, CPU per request {cpu:.2}x"
            );
        }
        if let Some((tput, cpu)) = get("bare").and_then(vs_nginx) {
            println!(
                "  reference: the same, sending none of the ten gateway headers upstream (headers.omit), as nginx sends none: throughput {tput:.2}x, CPU per request {cpu:.2}x"
            );
            if let Some((tput, cpu)) = paired_bare {
                println!("    medians of the per-round ratios: throughput {tput:.2}x, CPU per request {cpu:.2}x");
            }
        }
        if let (Some(f), Some(n)) = (get("forward-auth"), nginx_204_row.as_ref()) {
            println!(
                "tokengate forward auth (cached token, answered 200) / nginx return 204: throughput {:.2}x, CPU per request {:.2}x",
                f.rps / n.rps,
                f.cpu_us.unwrap_or(0.0) / n.cpu_us.unwrap_or(f64::NAN)
            );
            if let Some((tput, cpu)) = paired_fa {
                println!("  medians of the per-round ratios: throughput {tput:.2}x, CPU per request {cpu:.2}x");
            }
        }
        if let (Some(f), Some(n)) = (get("forward-auth"), get("nginx-204-ids")) {
            println!(
                "tokengate forward auth / nginx return 204 with the same seven fields (answers the same size to the client): throughput {:.2}x, CPU per request {:.2}x",
                f.rps / n.rps,
                f.cpu_us.unwrap_or(0.0) / n.cpu_us.unwrap_or(f64::NAN)
            );
            if let Some((tput, cpu)) = paired_fa_ids {
                println!("  medians of the per-round ratios: throughput {tput:.2}x, CPU per request {cpu:.2}x");
            }
        }
        if let (Some(f), Some(n)) = (get("lat-fa"), get("lat-204")) {
            println!(
                "forward-auth answer, one connection: p50 {} us, p99 {} us (nginx return 204: p50 {} us, p99 {} us)",
                f.p50, f.p99, n.p50, n.p99
            );
        }
        if let (Some(t), Some(s)) = (get("nginx-auth-tg"), get("nginx-auth-static")) {
            println!(
                "nginx auth_request asking tokengate / asking a return 204 (nginx + what answers, all on core 1): throughput {:.2}x, CPU per request {:.2}x",
                t.rps / s.rps,
                t.cpu_us.unwrap_or(0.0) / s.cpu_us.unwrap_or(f64::NAN)
            );
            if let Some((tput, cpu)) = paired_auth {
                println!("  medians of the per-round ratios: throughput {tput:.2}x, CPU per request {cpu:.2}x");
            }
            let split = |f: fn(&(f64, f64)) -> f64| median_of(auth_tg_split.iter().map(f).collect());
            println!(
                "  nginx-auth-tg CPU per request, medians: nginx {:.1} us + tokengate {:.1} us (nginx-auth-static: nginx {:.1} us for all of it)",
                split(|p| p.0),
                split(|p| p.1),
                s.cpu_us.unwrap_or(f64::NAN)
            );
        }
        if let (Some(t), Some(s)) = (get("nginx-auth-tg"), get("nginx-auth-proc")) {
            println!(
                "nginx auth_request asking tokengate / asking a return 204 in a process of its own (both cases two processes on core 1): throughput {:.2}x, CPU per request {:.2}x",
                t.rps / s.rps,
                t.cpu_us.unwrap_or(0.0) / s.cpu_us.unwrap_or(f64::NAN)
            );
            if let Some((tput, cpu)) = paired_proc {
                println!("  medians of the per-round ratios: throughput {tput:.2}x, CPU per request {cpu:.2}x");
            }
        }
        for (case, what, ratios) in &paired_limited {
            if let (Some(l), Some(c)) = (get(case), get("cached")) {
                println!(
                    "{case} / cached ({what}): throughput {:.2}x, CPU per request {:.2}x",
                    l.rps / c.rps,
                    l.cpu_us.unwrap_or(0.0) / c.cpu_us.unwrap_or(f64::NAN)
                );
                if let Some((tput, cpu)) = ratios {
                    println!("  medians of the per-round ratios: throughput {tput:.2}x, CPU per request {cpu:.2}x");
                }
            }
        }
        if logged_gw.is_some() {
            // The lines the logged gateway wrote, against the requests it
            // answered (its warm-up's too): a case that logged nothing
            // would measure nothing.
            let lines = std::fs::read(dir.path().join("logged-access.log"))
                .map_or(0, |b| b.iter().filter(|c| **c == b'\n').count());
            let answered: f64 = of("logged").iter().map(|r| r.rps * secs).sum();
            println!("logged: {lines} access lines written for about {answered:.0} requests answered");
        }
        for lat in ["lat-limited", "lat-limited-redis"] {
            if let (Some(l), Some(c)) = (get(lat), get("lat-cached2")) {
                println!(
                    "{lat}, one connection: p50 {} us, p99 {} us (lat-cached2: p50 {} us, p99 {} us): the limit adds {} us at p99",
                    l.p50,
                    l.p99,
                    c.p50,
                    c.p99,
                    l.p99 as i64 - c.p99 as i64
                );
            }
        }
        if let (Some(t), Some(s)) = (get("lat-auth-tg"), get("lat-auth-static")) {
            println!(
                "nginx auth_request, one connection: asking tokengate p50 {} us, p99 {} us; asking a return 204 p50 {} us, p99 {} us",
                t.p50, t.p99, s.p50, s.p99
            );
        }
        for (a, b, what, paired) in &paired_tls {
            if let (Some(t), Some(n)) = (get(a), get(b)) {
                println!(
                    "{what}: throughput {:.2}x (target >= 1.0), CPU per request {:.2}x (target <= 1.0)",
                    t.rps / n.rps,
                    t.cpu_us.unwrap_or(0.0) / n.cpu_us.unwrap_or(f64::NAN)
                );
                if let Some((tput, cpu)) = paired {
                    println!("  medians of the per-round ratios: throughput {tput:.2}x, CPU per request {cpu:.2}x");
                }
            }
        }
        if let (Some(c), Some(n)) = (get("cached"), nginx_row.as_ref()) {
            if c.load_core.min(n.load_core) > 0.95 {
                println!(
                    "  core 0 (load client and upstream) was {:.0}% / {:.0}% busy: the load core limits both proxies, so this ratio also \
                     carries what each proxy's traffic costs the upstream and client there (BENCHMARKS.md, sixth session)",
                    c.load_core * 100.0,
                    n.load_core * 100.0
                );
            }
        }
    });
}
