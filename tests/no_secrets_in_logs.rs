//! Every log line of a full token lifecycle, captured at TRACE level, holds
//! neither a token nor its hash. (Its own test binary: it installs the
//! global log subscriber.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::TestGateway;
use http::Method;
use tokengate::token::{TokenHash, TokenKind};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_token_or_hash_is_ever_logged() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    // The access log too, to a file read at the end.
    let dir = tempfile::tempdir().unwrap();
    let access = dir.path().join("access.log");
    let g = common::Opts::default()
        .log("format", "json")
        .log("access_file", access.to_str().unwrap())
        .spawn()
        .await;
    let (t, id) = g.mint(TokenKind::Api, &["calls:read"], None).await;
    let bearer = format!("Bearer {t}");
    g.send(
        Method::GET,
        "/api/calls",
        &[("authorization", &bearer)],
        b"",
    )
    .await;
    g.send(
        Method::POST,
        "/api/calls",
        &[("authorization", &bearer)],
        b"",
    )
    .await;
    g.send(Method::GET, "/dead/x", &[("authorization", &bearer)], b"")
        .await;
    g.send(
        Method::GET,
        "/api/x",
        &[("authorization", &bearer), ("token", "other")],
        b"",
    )
    .await;
    g.gateway
        .issuer
        .revoke(&id, &Default::default())
        .await
        .unwrap();
    g.send(Method::GET, "/api/calls", &[("token", &t)], b"")
        .await;
    g.gateway
        .last_used
        .flush(g.gateway.store.as_ref(), &g.gateway.metrics, g.clock.now())
        .await;

    TestGateway::eventually("five access lines", || async {
        std::fs::read_to_string(&access)
            .unwrap_or_default()
            .lines()
            .count()
            >= 5
    })
    .await;
    let mut logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    logs.push_str(&std::fs::read_to_string(&access).unwrap());
    assert!(
        logs.contains("upstream request failed"),
        "logging was captured:\n{logs}"
    );
    let secret = &t[4..];
    let hash = TokenHash::of(&t).to_hex();
    for line in logs.lines() {
        assert!(!line.contains(secret), "token in log: {line}");
        assert!(!line.contains(&hash), "hash in log: {line}");
        assert!(!line.contains(&hash[..16]), "hash prefix in log: {line}");
    }
}
