//! Upstreams: their configuration and every connection the gateway opens
//! to them.
//!
//! An [`Upstream`] holds three ways of reaching one configured upstream,
//! all under one [`cap::ConnCap`]: [`pool`] (HTTP/1.1 requests through
//! hyper, each connection driven on the request's own task), [`raw`] (the
//! fast path's plain-TCP connections to an `http` upstream) and hyper-util's
//! client (h2 upstreams, WebSocket upgrades). Nothing here knows what a
//! request may carry: the request body's trailer filter is handed in
//! ([`TrailerFilter`]).

pub mod cap;
pub mod idle;
pub mod pool;
pub mod raw;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue};
use http::uri::Uri;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::error::Denial;
use cap::{CappedConnector, ConnCap};
use pool::Pool;
use raw::RawPool;

/// How an upstream is spoken to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive.
    Http1,
    /// HTTP/2 (h2c prior knowledge on http, ALPN h2 on https).
    H2,
}

/// Validated `[[upstreams]]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// Name routes refer to.
    pub name: String,
    /// `http` or `https`.
    pub scheme: http::uri::Scheme,
    /// `host:port`.
    pub authority: http::uri::Authority,
    /// `authority` as the `Host` header HTTP/1.1 requests carry.
    pub host_header: HeaderValue,
    /// Base path without trailing slash (`""` for none).
    pub base_path: String,
    /// Wire protocol.
    pub protocol: UpstreamProtocol,
    /// Connect bound (502 after it).
    pub connect_timeout: Duration,
    /// Response-headers bound (504 after it).
    pub response_timeout: Duration,
    /// Idle pooled connection lifetime.
    pub pool_idle_timeout: Duration,
    /// Idle pooled connections per host.
    pub pool_max_idle: usize,
    /// Connections open at once, idle or busy, across both paths.
    pub max_connections: usize,
}

/// Why an exchange with an upstream failed, on either path. [`Self::denial`]
/// logs it, once, in the same words for both, and says what the client is
/// answered.
#[derive(Debug)]
pub enum Failure {
    /// No response head within the upstream's `response_timeout_ms`.
    Timeout,
    /// The upstream's connection cap stayed full for the connect timeout.
    Busy,
    /// A reused connection closed before answering.
    Stale,
    /// Connecting, sending or reading failed.
    Io(Box<dyn std::error::Error + Send + Sync>),
    /// The response head was malformed or unexpected.
    BadResponse,
    /// A 101 that no WebSocket upgrade asked for.
    StrayUpgrade,
}

impl Failure {
    /// Logs the failure against `upstream` and gives the client's denial.
    pub fn denial(&self, upstream: &str) -> Denial {
        match self {
            Failure::Timeout => {
                tracing::warn!(upstream, "upstream response timed out");
                Denial::UpstreamTimeout
            }
            Failure::Busy => {
                tracing::warn!(upstream, "upstream connection limit reached");
                Denial::UpstreamBusy
            }
            Failure::Stale => {
                tracing::warn!(
                    upstream,
                    "upstream closed a reused connection before answering"
                );
                Denial::UpstreamUnavailable
            }
            Failure::Io(e) => {
                tracing::warn!(upstream, error = %e, source = ?e.source(), "upstream request failed");
                Denial::UpstreamUnavailable
            }
            Failure::BadResponse => {
                tracing::warn!(
                    upstream,
                    "upstream sent a malformed or unexpected response head"
                );
                Denial::UpstreamUnavailable
            }
            Failure::StrayUpgrade => {
                tracing::warn!(
                    upstream,
                    "upstream sent 101 without a matching WebSocket upgrade request"
                );
                Denial::UpstreamUnavailable
            }
        }
    }
}

/// What a request body's trailers go through on their way upstream (the
/// same filter as the request's headers), made once per gateway.
pub type TrailerFilter = Arc<dyn Fn(&mut HeaderMap) + Send + Sync>;

/// The request body on its way upstream: the client's, streamed frame by
/// frame, with its trailers (if any) put through the same filter as the
/// headers, so a forged tenant header cannot ride in a trailer.
pub struct UpstreamBody {
    inner: Incoming,
    trailers: TrailerFilter,
    /// Set on every frame sent: the exchange is moving (see `crate::body::Stalling`).
    moving: Arc<AtomicBool>,
    /// Data bytes sent so far (the access log's `bytes_in`).
    sent: Arc<AtomicU64>,
}

impl UpstreamBody {
    /// The client's body `inner`, its trailers put through `trailers`;
    /// `moving` is set on every frame, `sent` counts its data bytes.
    pub fn new(
        inner: Incoming,
        trailers: TrailerFilter,
        moving: Arc<AtomicBool>,
        sent: Arc<AtomicU64>,
    ) -> Self {
        Self {
            inner,
            trailers,
            moving,
            sent,
        }
    }
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                this.moving.store(true, Ordering::Relaxed);
                if let Some(data) = frame.data_ref() {
                    this.sent.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                let frame = match frame.into_trailers() {
                    Ok(mut trailers) => {
                        (this.trailers)(&mut trailers);
                        http_body::Frame::trailers(trailers)
                    }
                    Err(frame) => frame,
                };
                std::task::Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        http_body::Body::is_end_stream(&self.inner)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::Body::size_hint(&self.inner)
    }
}

type HttpsClient = Client<CappedConnector<HttpsConnector<HttpConnector>>, UpstreamBody>;

/// A configured upstream and its connections.
pub struct Upstream {
    /// Its configuration.
    pub config: UpstreamConfig,
    /// HTTP/1.1 requests: connections driven on the request's own task.
    pub(crate) pool: Option<Arc<Pool>>,
    /// h2 upstreams and WebSocket upgrades: hyper-util's pooled client.
    pub(crate) client: HttpsClient,
    /// Plain `http` HTTP/1.1 upstreams: idle connections of the fast path.
    raw: Option<Arc<RawPool>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("config", &self.config)
            .field("pool", &self.pool)
            .finish()
    }
}

/// The TCP part of every upstream connection, for the hyper clients and the
/// fast path's pool alike: no-delay, keep-alive probes, connect timeout.
fn tcp_connector(config: &UpstreamConfig) -> HttpConnector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    http
}

/// The connector for one upstream: [`tcp_connector`], then TLS for `https` URLs, offering only `protocol`.
fn connector(config: &UpstreamConfig, protocol: UpstreamProtocol) -> HttpsConnector<HttpConnector> {
    let http = tcp_connector(config);
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let connector = match builder
        .with_provider_and_webpki_roots(Arc::new(rustls::crypto::ring::default_provider()))
    {
        Ok(b) => b,
        // ring supports rustls' safe defaults, so this does not happen.
        Err(_) => hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots(),
    }
    .https_or_http();
    match protocol {
        UpstreamProtocol::Http1 => connector.enable_http1().wrap_connector(http),
        UpstreamProtocol::H2 => connector.enable_http2().wrap_connector(http),
    }
}

impl Upstream {
    /// Builds the connection pool and client for an upstream. Nothing
    /// connects until the first request.
    pub fn new(config: UpstreamConfig) -> Self {
        // One cap over every connection to this upstream, whichever pool
        // or client opens it.
        let cap = ConnCap::new(config.max_connections, config.connect_timeout);
        let mut b = Client::builder(TokioExecutor::new());
        b.pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new());
        if config.protocol == UpstreamProtocol::H2 {
            b.http2_only(true);
        }
        let pool = (config.protocol == UpstreamProtocol::Http1).then(|| {
            Pool::new(
                connector(&config, UpstreamProtocol::Http1),
                config.connect_timeout,
                config.pool_max_idle,
                config.pool_idle_timeout,
                cap.clone(),
            )
        });
        let raw = (config.protocol == UpstreamProtocol::Http1
            && config.scheme == http::uri::Scheme::HTTP)
            .then(|| {
                Arc::new(RawPool::new(
                    tcp_connector(&config),
                    Uri::builder()
                        .scheme(config.scheme.clone())
                        .authority(config.authority.clone())
                        .path_and_query("/")
                        .build()
                        // Scheme and authority were checked with the config.
                        .unwrap_or_default(),
                    config.connect_timeout,
                    config.pool_max_idle,
                    config.pool_idle_timeout,
                    cap.clone(),
                ))
            });
        Self {
            client: b.build(CappedConnector::new(
                connector(&config, config.protocol),
                cap,
            )),
            pool,
            raw,
            config,
        }
    }

    /// The fast path's connections, for a plain `http` HTTP/1.1 upstream.
    pub fn raw_pool(&self) -> Option<&Arc<RawPool>> {
        self.raw.as_ref()
    }

    /// Closes idle upstream connections past their idle timeout.
    pub fn sweep_idle(&self) {
        if let Some(p) = &self.pool {
            p.sweep();
        }
        if let Some(p) = &self.raw {
            p.sweep();
        }
    }
}
