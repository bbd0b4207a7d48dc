//! Criterion benches of the request path's pieces, in-process, so a
//! regression in any one of them shows without the noise of sockets:
//! credential extraction, format + checksum check, SHA-256, the ability
//! decision, the upstream header rewrite, a cache hit, and a cache miss
//! (a SQLite lookup with 10k tokens stored); a warm token's whole in-memory
//! check with 10k and 100k tokens cached, visited in a scattered order
//! (what a bigger working set costs in memory traffic); and the fast path's
//! wire work: parsing a request head, parsing and rewriting a response head.
//!
//! Run: `cargo bench --bench hot_path`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue};
use tokengate::auth::{decide, extract_credential};
use tokengate::cache::{AuthEntry, TokenCache};
use tokengate::config::{CacheConfig, DatabaseUrl, HeaderNames, UpstreamConfig, UpstreamProtocol};
use tokengate::metrics::Metrics;
use tokengate::rules::{rewrite_request_headers, ForwardContext, Peer, StripSet};
use tokengate::store::sqlite::SqliteStore;
use tokengate::store::{
    AuthRecord, NewAccount, NewAuditEvent, NewToken, Status, TokenLookup, TokenStore,
};
use tokengate::token::{TokenFormat, TokenHash, TokenKind};

fn record() -> AuthRecord {
    AuthRecord {
        token_id: "0193a5b4-7c1d-7000-8000-000000000001".into(),
        kind: TokenKind::Api,
        tenant_id: Some(7),
        account_id: Some(42),
        workspace_id: Some(3),
        name: "CI Pipeline".into(),
        abilities: vec!["calls:*".into(), "reports:read".into()],
        expires_at: Some(4_000_000_000),
        revoked_at: None,
        account_status: Some(Status::Active),
        tenant_status: Some(Status::Active),
        limits: Default::default(),
    }
}

fn request_headers(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("api.example.com"));
    h.insert("user-agent", HeaderValue::from_static("bench/1.0"));
    h.insert("accept", HeaderValue::from_static("application/json"));
    h.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    h.insert("x-tenant-id", HeaderValue::from_static("999"));
    h
}

fn pieces(c: &mut Criterion) {
    let format = TokenFormat::default();
    let token = format.generate(TokenKind::Api);
    let headers = request_headers(token.expose());

    c.bench_function("extract_credential", |b| {
        b.iter(|| extract_credential(black_box(&headers)).unwrap())
    });
    c.bench_function("format_and_checksum_check", |b| {
        b.iter(|| format.check(black_box(token.expose())).unwrap())
    });
    c.bench_function("sha256", |b| {
        b.iter(|| TokenHash::of(black_box(token.expose())))
    });
    let rec = record();
    c.bench_function("decide_with_wildcard", |b| {
        b.iter(|| decide(black_box(&rec), 1_800_000_000, ["calls:read"]).unwrap())
    });

    let entry = AuthEntry::new(record());
    let names = HeaderNames::default();
    let strip = StripSet::new(&names);
    let upstream = UpstreamConfig {
        name: "api".into(),
        scheme: http::uri::Scheme::HTTP,
        authority: "127.0.0.1:3000".parse().unwrap(),
        host_header: HeaderValue::from_static("127.0.0.1:3000"),
        base_path: String::new(),
        protocol: UpstreamProtocol::Http1,
        connect_timeout: Duration::from_secs(3),
        response_timeout: Duration::from_secs(30),
        pool_idle_timeout: Duration::from_secs(60),
        pool_max_idle: 256,
        max_connections: 512,
    };
    let rid = HeaderValue::from_static("0193a5b4-7c1d-7000-8000-00000000beef");
    let peer = Peer::new("127.0.0.1:5555".parse().unwrap());
    let tp = HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    c.bench_function("rewrite_request_headers", |b| {
        b.iter_batched_ref(
            || headers.clone(),
            |h| {
                let ctx = ForwardContext {
                    auth: Some(&entry),
                    request_id: &rid,
                    traceparent: &tp,
                    peer: &peer,
                    path: "/api/calls",
                };
                rewrite_request_headers(h, &strip, &names, &ctx, &upstream, false)
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

/// A token cache trusting found records for `ttl`, with room for
/// `max_entries`.
fn token_cache(ttl: Duration, max_entries: u64) -> TokenCache {
    TokenCache::new(
        &CacheConfig {
            ttl,
            negative_ttl: Duration::from_secs(5),
            max_entries,
        },
        Duration::from_secs(5),
        Arc::new(Metrics::default()),
    )
}

fn cache(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (store, hashes) = rt.block_on(async {
        let url = DatabaseUrl::new(format!("sqlite://{}", dir.path().join("b.db").display()));
        let store = SqliteStore::connect(&url, 4, Duration::from_secs(5))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let t = store
            .create_tenant("bench", 0, &NewAuditEvent::default(), None)
            .await
            .unwrap()
            .0;
        let (a, _) = store
            .create_account(
                &NewAccount {
                    tenant_id: t.id,
                    email: "b@x.io".into(),
                    name: "B".into(),
                    external_id: None,
                    parent_account_id: None,
                    workspace: None,
                },
                0,
                &NewAuditEvent::default(),
            )
            .await
            .unwrap();
        let format = TokenFormat::default();
        let mut hashes = Vec::new();
        for i in 0..10_000 {
            let s = format.generate(TokenKind::Api);
            let tok = NewToken {
                id: format!("bench-{i}"),
                kind: TokenKind::Api,
                tenant_id: Some(t.id),
                account_id: Some(a.id),
                workspace_id: None,
                name: "b".into(),
                abilities: vec!["*".into()],
                display_prefix: s.display_prefix().into(),
                hash: s.hash(),
                created_at: 0,
                expires_at: None,
                created_by: None,
                rate_limit: None,
                quota: None,
            };
            store
                .insert_token(&tok, &NewAuditEvent::default())
                .await
                .unwrap();
            hashes.push(s.hash());
        }
        (Arc::new(store), hashes)
    });
    let cache = token_cache(Duration::from_secs(300), 100_000);
    let hot = hashes[0];
    rt.block_on(cache.get(hot, store.as_ref()))
        .unwrap()
        .unwrap();
    c.bench_function("cache_hit", |b| {
        b.to_async(&rt)
            .iter(|| async { cache.get(black_box(hot), store.as_ref()).await.unwrap() })
    });
    let mut i = 0usize;
    c.bench_function("cache_miss_sqlite_lookup_10k", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % hashes.len();
            let h = hashes[i];
            let s = Arc::clone(&store);
            async move { s.lookup(&h).await.unwrap().unwrap() }
        })
    });
}

/// Finds every hash: a record like a minted token's, named after the hash.
struct Everything;

#[async_trait::async_trait]
impl TokenLookup for Everything {
    async fn lookup(
        &self,
        hash: &TokenHash,
    ) -> Result<Option<AuthRecord>, tokengate::store::StoreError> {
        let mut r = record();
        r.token_id = hash.to_hex();
        Ok(Some(r))
    }
}

/// A warm token's whole in-memory check, as the fast path runs it for a
/// token its connection did not just use: the cache hit, the decision, the
/// last-used note and the caller headers copied out. Over `n` cached tokens
/// visited in a scattered order, so the figure includes the memory traffic
/// of a working set that size (the load bench's 1M-store case keeps 100k).
fn working_set(c: &mut Criterion) {
    use tokengate::fast::caller_fields;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let names = HeaderNames::default();
    let mut group = c.benchmark_group("warm_check");
    for n in [10_000usize, 100_000] {
        let cache = token_cache(Duration::from_secs(3600), 200_000);
        let hashes: Vec<TokenHash> = (0..n)
            .map(|i| TokenHash::of(&format!("token-{i}")))
            .collect();
        rt.block_on(async {
            for h in &hashes {
                cache.get(*h, &Everything).await.unwrap().unwrap();
            }
        });
        // A stride coprime with n: every token once per pass, neighbours far apart.
        let order: Vec<TokenHash> = (0..n).map(|i| hashes[(i * 7919) % n]).collect();
        let mut i = 0usize;
        let (cache, names) = (&cache, &names);
        group.bench_function(format!("{}k", n / 1000), |b| {
            b.to_async(&rt).iter(|| {
                i = (i + 1) % n;
                let hash = order[i];
                async move {
                    let e = cache
                        .get(black_box(hash), &Everything)
                        .await
                        .unwrap()
                        .unwrap();
                    decide(&e.record, 1_800_000_000, ["calls:read"]).unwrap();
                    black_box(e.use_to_note(1_800_000_000, 60));
                    let wire = caller_fields(names, &e);
                    let mut out = [0u8; 1024];
                    let len = wire.len().min(out.len());
                    out[..len].copy_from_slice(&wire[..len]);
                    black_box(out);
                }
            })
        });
    }
    group.finish();
}

/// The fast path's per-request wire work, on heads like a browser's and a
/// typical framework's.
fn wire(c: &mut Criterion) {
    use tokengate::fast::wire::{parse_request, parse_response, Parsed};
    let request = bytes::Bytes::from_static(
        b"GET /api/calls?page=2 HTTP/1.1\r\nHost: api.example.com\r\n\
          User-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\nAccept: application/json\r\n\
          Accept-Encoding: gzip, deflate, br\r\nAccept-Language: en-GB,en;q=0.9\r\n\
          Authorization: Bearer tg_api_0123456789abcdefghijklmnopqrstuvwxyzABCDEF\r\n\
          Connection: keep-alive\r\n\r\n",
    );
    c.bench_function("fast_parse_request", |b| {
        b.iter(|| matches!(parse_request(black_box(&request)), Parsed::Complete(_)))
    });
    let response: &[u8] =
        b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Sun, 22 Nov 2026 18:00:00 GMT\r\n\
          Content-Type: application/json\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\
          Cache-Control: no-store\r\nX-Request-Id: from-upstream\r\n\r\n{\"ok\":true}\n";
    let mut out = Vec::with_capacity(1024);
    c.bench_function("fast_parse_and_rewrite_response", |b| {
        b.iter(|| {
            out.clear();
            matches!(
                parse_response(black_box(response), false, &mut out),
                Parsed::Complete(_)
            )
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = pieces, cache, working_set, wire
}
criterion_main!(benches);
