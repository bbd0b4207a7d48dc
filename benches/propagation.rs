//! How long a revocation takes to reach another instance.
//!
//! Two gateways in one process share a PostgreSQL store (a fresh schema);
//! for each of N tokens: warm it on instance B, revoke it through instance
//! A, then poll B over HTTP (one keep-alive connection, loopback) until it
//! answers 401. The time from `revoke()` returning on A to B's first 401 is
//! the propagation time; p50 / p90 / p99 / max are printed. Cache TTLs are
//! set to 10 minutes so only the notification can explain B refusing.
//!
//! Run: `TOKENGATE_TEST_DATABASE_URL=postgres://postgres@127.0.0.1/test
//! cargo bench --bench propagation` (`PROPAGATION_TOKENS`, default 300).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{pg, Opts, TestGateway};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokengate::token::TokenKind;

const LONG_TTL: &str = "[cache]\nttl_seconds = 600\nnegative_ttl_seconds = 600\n";

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() {
    let Ok(base) = std::env::var(pg::ENV) else {
        eprintln!(
            "propagation bench skipped: set {} to a PostgreSQL URL",
            pg::ENV
        );
        return;
    };
    let n: usize = std::env::var("PROPAGATION_TOKENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let url = pg::fresh_schema(&base).await;
        let a = TestGateway::spawn_opts(Opts {
            extra: LONG_TTL.into(),
            store_url: Some(url.clone()),
            ..Opts::default()
        })
        .await;
        let b = a.peer(&url, LONG_TTL).await;
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let b_url = b.url("/api/x");
        let ask = |token: &str| {
            let req = Request::get(&b_url)
                .header("authorization", format!("Bearer {token}"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let fut = client.request(req);
            async move {
                let resp = fut.await.unwrap();
                let status = resp.status();
                resp.into_body().collect().await.unwrap();
                status
            }
        };

        let mut tokens = Vec::with_capacity(n);
        for _ in 0..n {
            tokens.push(a.mint(TokenKind::Api, &["*"], None).await);
        }
        // Let the mint notifications land before warming b.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut revoke_times = Vec::with_capacity(n);
        let mut propagation = Vec::with_capacity(n);
        let mut polls = 0u64;
        for (token, id) in &tokens {
            assert_eq!(ask(token).await, StatusCode::OK);
            let t0 = Instant::now();
            a.gateway.issuer.revoke(id, &Default::default()).await.unwrap();
            revoke_times.push(t0.elapsed());
            let t1 = Instant::now();
            loop {
                polls += 1;
                if ask(token).await == StatusCode::UNAUTHORIZED {
                    break;
                }
                assert!(t1.elapsed() < Duration::from_secs(30), "revocation never arrived");
            }
            propagation.push(t1.elapsed());
        }
        propagation.sort();
        revoke_times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!("revocation propagation, {n} tokens, two instances, PostgreSQL on loopback");
        println!(
            "  revoke() on A (commit + notify):  p50 {:.3} ms  p99 {:.3} ms",
            ms(pct(&revoke_times, 0.5)),
            ms(pct(&revoke_times, 0.99))
        );
        println!(
            "  until B refuses:                  p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
            ms(pct(&propagation, 0.5)),
            ms(pct(&propagation, 0.9)),
            ms(pct(&propagation, 0.99)),
            ms(*propagation.last().unwrap())
        );
        println!("  polls of B: {polls} ({:.1} per token)", polls as f64 / n as f64);
    });
}
