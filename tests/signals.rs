//! Operator signals (DESIGN section 12) on both codecs: the access log's
//! lines and fields, the metric series and their labels, `traceparent`,
//! trusted and untrusted request ids, and `Allow` on a 405.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Opts, TestGateway};
use http::{Method, StatusCode};
use tokengate::token::TokenKind;

const VALID_TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A gateway on the fast path or hyper's whose access log goes to a file
/// in `format`; the directory holding it lives as long as it is kept.
async fn logged(fast: bool, format: &str) -> (TestGateway, tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let g = Opts::default()
        .fast_path(fast)
        .log("format", format)
        .log("access_file", path.to_str().unwrap())
        .spawn()
        .await;
    (g, dir, path)
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Waits until the file holds `n` lines (the writer runs off the request
/// path) and returns them.
async fn lines(path: &Path, n: usize) -> Vec<String> {
    TestGateway::eventually(
        &format!("{n} access lines in {}", path.display()),
        || async { read_lines(path).len() >= n },
    )
    .await;
    read_lines(path)
}

fn by_request_id<'a>(lines: &'a [serde_json::Value], id: &str) -> &'a serde_json::Value {
    lines
        .iter()
        .find(|l| l["request_id"] == id)
        .unwrap_or_else(|| panic!("no access line for {id} in {lines:#?}"))
}

fn rid(r: &common::Reply) -> String {
    r.headers
        .get("x-request-id")
        .expect("x-request-id")
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn access_lines_hold_every_field_on_both_paths() {
    for fast in [true, false] {
        let (g, _dir, path) = logged(fast, "json").await;
        let (token, token_id) = g.mint(TokenKind::Api, &[], None).await;
        let bearer = format!("Bearer {token}");
        let allowed = g
            .send(
                Method::GET,
                "/api/things?secret=s3cr3t&token=abc",
                &[("authorization", &bearer), ("traceparent", VALID_TP)],
                b"",
            )
            .await;
        assert_eq!(allowed.status, StatusCode::OK);
        let denied = g.get("/api/things?x=1", None).await;
        assert_eq!(denied.status, StatusCode::UNAUTHORIZED);
        let failed = g.get("/dead/x", Some(&token)).await;
        assert_eq!(failed.status, StatusCode::BAD_GATEWAY);
        let unrouted = g.get("/nowhere", None).await;
        assert_eq!(unrouted.status, StatusCode::NOT_FOUND);

        let raw = lines(&path, 4).await;
        for line in &raw {
            assert!(!line.contains(&token), "a token in {line}");
            assert!(
                !line.contains("s3cr3t") && !line.contains('?'),
                "a query in {line}"
            );
        }
        let parsed: Vec<serde_json::Value> = raw
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        for l in &parsed {
            for key in [
                "ts",
                "request_id",
                "trace_id",
                "method",
                "path",
                "route",
                "status",
                "code",
                "duration_ms",
                "upstream",
                "upstream_ms",
                "token_id",
                "tenant_id",
                "account_id",
                "client_ip",
                "bytes_in",
                "bytes_out",
            ] {
                assert!(l.get(key).is_some(), "fast={fast}: {key} missing in {l}");
            }
            assert_eq!(l.as_object().unwrap().len(), 17, "{l}");
            assert_eq!(l["client_ip"], "127.0.0.1");
            assert!(l["duration_ms"].as_f64().unwrap() >= 0.0);
            assert_eq!(l["trace_id"].as_str().unwrap().len(), 32);
        }

        let a = by_request_id(&parsed, &rid(&allowed));
        assert_eq!(a["method"], "GET");
        assert_eq!(a["path"], "/api/things");
        assert_eq!(a["route"], "/api");
        assert_eq!(a["status"], 200);
        assert_eq!(a["code"], serde_json::Value::Null);
        assert_eq!(a["upstream"], "mock");
        assert!(a["upstream_ms"].as_f64().unwrap() >= 0.0);
        assert_eq!(a["token_id"], token_id.as_str());
        assert_eq!(a["tenant_id"], g.tenant_id);
        assert_eq!(a["account_id"], g.account_id);
        assert_eq!(a["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(a["bytes_in"], 0);
        assert_eq!(a["bytes_out"], allowed.body.len());
        assert!(a["ts"].as_str().unwrap().ends_with('Z'));

        let d = by_request_id(&parsed, &rid(&denied));
        assert_eq!(d["status"], 401);
        assert_eq!(d["code"], "TOKEN_MISSING");
        assert_eq!(d["route"], "/api");
        assert_eq!(d["token_id"], serde_json::Value::Null);
        assert_eq!(d["upstream"], serde_json::Value::Null);
        assert_eq!(d["bytes_out"], denied.body.len());

        let f = by_request_id(&parsed, &rid(&failed));
        assert_eq!(f["status"], 502);
        assert_eq!(f["code"], "UPSTREAM_UNAVAILABLE");
        assert_eq!(f["route"], "/dead");
        assert_eq!(f["upstream"], "dead");
        assert!(f["upstream_ms"].as_f64().is_some());
        assert_eq!(f["token_id"], token_id.as_str());

        let n = by_request_id(&parsed, &rid(&unrouted));
        assert_eq!(n["route"], "none");
        assert_eq!(n["code"], "ROUTE_NOT_FOUND");
    }
}

#[tokio::test]
async fn a_chunked_upload_through_hyper_counts_its_bytes_in() {
    // A body of no stated length (chunked): the fast path hands it to
    // hyper, which counts what it streams upstream.
    let (g, _dir, path) = logged(true, "json").await;
    let token = g.token(&[]).await;
    let (tx, resp) = g.upload("/echo/up", &token);
    for chunk in [&b"hello "[..], b"chunked ", b"world"] {
        tx.send(bytes::Bytes::from_static(chunk)).await.unwrap();
    }
    drop(tx);
    let resp = resp.await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], b"hello chunked world");
    let line: serde_json::Value = serde_json::from_str(&lines(&path, 1).await[0]).unwrap();
    assert_eq!(line["method"], "POST");
    assert_eq!(line["bytes_in"], 19, "{line}");
    assert_eq!(line["bytes_out"], 19, "{line}");
}

#[tokio::test]
async fn text_access_lines_read_as_one_line_each() {
    for fast in [true, false] {
        let (g, _dir, path) = logged(fast, "text").await;
        let token = g.token(&[]).await;
        let r = g.get("/api/t?q=1", Some(&token)).await;
        assert_eq!(r.status, StatusCode::OK);
        let line = lines(&path, 1).await.remove(0);
        assert!(line.contains(" GET /api/t 200 "), "{line}");
        assert!(line.contains(&format!("request_id={}", rid(&r))), "{line}");
        assert!(
            line.contains(" route=/api ") && line.contains(" upstream=mock "),
            "{line}"
        );
        assert!(!line.contains(&token) && !line.contains("q=1"), "{line}");
        assert!(!line.contains('\u{1b}'), "no colour codes: {line}");
    }
}

#[tokio::test]
async fn access_false_writes_no_line() {
    for fast in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let g = Opts::default()
            .fast_path(fast)
            .log("access", false)
            .log("access_file", path.to_str().unwrap())
            .spawn()
            .await;
        let token = g.token(&[]).await;
        assert_eq!(g.get("/api/x", Some(&token)).await.status, StatusCode::OK);
        assert_eq!(g.get("/nowhere", None).await.status, StatusCode::NOT_FOUND);
        // The series still count.
        let text = g.metrics_text().await;
        assert!(
            text.contains("tokengate_requests_total{route=\"/api\",status=\"2xx\"} 1"),
            "{text}"
        );
        // Lines would be written within milliseconds; a generous wait.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(read_lines(&path).is_empty(), "access = false wrote lines");
    }
}

#[tokio::test]
async fn an_access_file_that_cannot_be_opened_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-dir").join("access.log");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[store]\nurl = \"sqlite://{}\"\n[log]\naccess_file = {:?}\n",
        dir.path().join("tg.db").display(),
        path.to_str().unwrap()
    );
    let config = tokengate::config::Config::from_toml(Path::new("t.toml"), &text).unwrap();
    let store = tokengate::store::open(&config.store.url, 2, config.store.timeout)
        .await
        .unwrap();
    let g = tokengate::gateway::Gateway::new(config, store, tokengate::clock::Clock::system());
    let err = tokengate::server::start(g).await.unwrap_err().to_string();
    assert!(
        err.contains("log.access_file") && err.contains("no-such-dir"),
        "{err}"
    );
}

/// The value of a series line, exactly as written (labels included).
fn series(text: &str, line: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn metric_series_and_labels_after_traffic() {
    for fast in [true, false] {
        let g = Opts::default()
            .fast_path(fast)
            .extra("[[routes]]\npath = \"/named\"\nupstream = \"mock\"\nname = \"named-route\"\n")
            .spawn()
            .await;
        let token = g.token(&[]).await;
        assert_eq!(g.get("/api/a", Some(&token)).await.status, StatusCode::OK);
        assert_eq!(g.get("/api/b", Some(&token)).await.status, StatusCode::OK);
        assert_eq!(g.get("/named/x", Some(&token)).await.status, StatusCode::OK);
        assert_eq!(g.get("/api/a", None).await.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            g.get("/dead/x", Some(&token)).await.status,
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(g.get("/nowhere", None).await.status, StatusCode::NOT_FOUND);
        let text = g.metrics_text().await;
        let want = [
            ("tokengate_requests_total{route=\"/api\",status=\"2xx\"}", 2),
            ("tokengate_requests_total{route=\"/api\",status=\"4xx\"}", 1),
            (
                "tokengate_requests_total{route=\"named-route\",status=\"2xx\"}",
                1,
            ),
            (
                "tokengate_requests_total{route=\"/dead\",status=\"5xx\"}",
                1,
            ),
            ("tokengate_requests_total{route=\"none\",status=\"4xx\"}", 1),
            (
                "tokengate_requests_total{route=\"/readonly\",status=\"2xx\"}",
                0,
            ),
            (
                "tokengate_request_duration_seconds_count{route=\"/api\"}",
                3,
            ),
            (
                "tokengate_request_duration_seconds_bucket{route=\"/api\",le=\"+Inf\"}",
                3,
            ),
            (
                "tokengate_upstream_duration_seconds_count{upstream=\"mock\"}",
                3,
            ),
            (
                "tokengate_upstream_duration_seconds_count{upstream=\"dead\"}",
                1,
            ),
            (
                "tokengate_upstream_duration_seconds_count{upstream=\"h2mock\"}",
                0,
            ),
            ("tokengate_build_info{version=\"0.1.0\"}", 1),
        ];
        for (line, n) in want {
            assert_eq!(
                series(&text, line),
                Some(n),
                "fast={fast}: {line} in\n{text}"
            );
        }
        assert!(
            series(
                &text,
                "tokengate_request_duration_seconds_bucket{route=\"/api\",le=\"60\"}"
            ) == Some(3)
        );
        assert!(!text.contains("route=\"/named\""), "the name, not the path");
        if cfg!(target_os = "linux") {
            for name in [
                "process_resident_memory_bytes",
                "process_open_fds",
                "process_cpu_seconds_total",
            ] {
                assert!(
                    text.lines().any(|l| l.starts_with(&format!("{name} "))),
                    "{name}"
                );
            }
        }
    }
}

#[tokio::test]
async fn label_cardinality_is_bounded_under_many_paths() {
    for fast in [true, false] {
        let g = Opts::default().fast_path(fast).spawn().await;
        // (`tokengate_denied_total` grows by code, a bounded set too.)
        let count = |text: &str| {
            text.lines()
                .filter(|l| {
                    l.starts_with("tokengate_requests_total")
                        || l.starts_with("tokengate_request_duration_seconds")
                        || l.starts_with("tokengate_upstream_duration_seconds")
                })
                .count()
        };
        let before = count(&g.metrics_text().await);
        let token = g.token(&[]).await;
        for i in 0..150 {
            let _ = g.get(&format!("/api/item-{i}"), Some(&token)).await;
            let _ = g.get(&format!("/unrouted-{i}/x"), None).await;
        }
        let text = g.metrics_text().await;
        assert_eq!(count(&text), before, "series are made at start-up only");
        assert!(!text.contains("item-") && !text.contains("unrouted-"));
        assert_eq!(
            series(
                &text,
                "tokengate_requests_total{route=\"none\",status=\"4xx\"}"
            ),
            Some(150)
        );
    }
}

#[tokio::test]
async fn traceparent_is_continued_started_or_replaced() {
    for fast in [true, false] {
        let g = Opts::default().fast_path(fast).spawn().await;
        let token = g.token(&[]).await;
        let bearer = format!("Bearer {token}");
        let seen = |g: &TestGateway| {
            let h = g.upstream.last().headers;
            let v: Vec<String> = h
                .get_all("traceparent")
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect();
            assert_eq!(v.len(), 1, "one traceparent upstream: {v:?}");
            let v = v[0].clone();
            assert!(
                tokengate::trace::parse_traceparent(v.as_bytes()).is_some(),
                "{v}"
            );
            v
        };
        // Continued: same trace and flags, the gateway's own span.
        let r = g
            .send(
                Method::GET,
                "/api/t",
                &[("authorization", &bearer), ("traceparent", VALID_TP)],
                b"",
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
        let up = seen(&g);
        assert_eq!(&up[..36], &VALID_TP[..36], "fast={fast}");
        assert_ne!(&up[36..52], &VALID_TP[36..52]);
        assert_eq!(&up[52..], "-01");
        // Started: none sent.
        g.get("/api/t", Some(&token)).await;
        let fresh = seen(&g);
        assert_ne!(&fresh[3..35], &VALID_TP[3..35]);
        // Replaced: an invalid one never reaches the upstream.
        let bad = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
        g.send(
            Method::GET,
            "/api/t",
            &[("authorization", &bearer), ("traceparent", bad)],
            b"",
        )
        .await;
        let replaced = seen(&g);
        assert_ne!(
            replaced.to_ascii_lowercase()[3..35],
            bad.to_ascii_lowercase()[3..35]
        );
        // Two are one too many: started afresh.
        g.send(
            Method::GET,
            "/api/t",
            &[
                ("authorization", &bearer),
                ("traceparent", VALID_TP),
                ("traceparent", VALID_TP),
            ],
            b"",
        )
        .await;
        assert_ne!(&seen(&g)[3..35], &VALID_TP[3..35]);
    }
}

#[tokio::test]
async fn request_ids_are_ours_unless_trusted_and_well_formed() {
    for fast in [true, false] {
        for trust in [false, true] {
            let g = Opts::default()
                .fast_path(fast)
                .server("trust_request_id", trust)
                .spawn()
                .await;
            let token = g.token(&[]).await;
            let bearer = format!("Bearer {token}");
            let r = g
                .send(
                    Method::GET,
                    "/api/r",
                    &[("authorization", &bearer), ("x-request-id", "client-id-7")],
                    b"",
                )
                .await;
            assert_eq!(r.status, StatusCode::OK);
            let upstream: Vec<String> = g
                .upstream
                .last()
                .headers
                .get_all("x-request-id")
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect();
            assert_eq!(
                upstream,
                vec![rid(&r)],
                "one id upstream, the client's answer's"
            );
            assert_eq!(rid(&r) == "client-id-7", trust, "fast={fast} trust={trust}");
            // Refusals carry it too.
            let d = g
                .send(
                    Method::GET,
                    "/nowhere",
                    &[("x-request-id", "client-id-8")],
                    b"",
                )
                .await;
            assert_eq!(rid(&d) == "client-id-8", trust);
            // Too long: replaced even when trusted.
            let long = "a".repeat(129);
            let r = g
                .send(
                    Method::GET,
                    "/api/r",
                    &[("authorization", &bearer), ("x-request-id", &long)],
                    b"",
                )
                .await;
            assert_ne!(rid(&r), long);
            assert_eq!(rid(&r).len(), 36, "a UUID of ours");
        }
    }
}

#[tokio::test]
async fn a_405_says_what_is_allowed_on_both_paths() {
    for fast in [true, false] {
        let g = Opts::default().fast_path(fast).spawn().await;
        let r = g.send(Method::POST, "/readonly/x", &[], b"").await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "fast={fast}");
        assert_eq!(r.code(), "METHOD_NOT_ALLOWED");
        assert_eq!(r.headers.get("allow").unwrap(), "GET", "fast={fast}");
        // Any method the route does not list.
        let r = g.send(Method::DELETE, "/readonly", &[], b"").await;
        assert_eq!(r.headers.get("allow").unwrap(), "GET");
    }
}
