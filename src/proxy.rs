//! Forwarding to upstreams.
//!
//! HTTP/1.1 requests go through the upstream's [`crate::pool`], whose
//! connections are driven on the request's own task; h2 upstreams and
//! WebSocket upgrades through a hyper-util client. Bodies stream both ways
//! (never collected); upgrades are tunnelled once the upstream answers 101.
//!
//! # What the upstream sees
//!
//! Removed from the request: hop-by-hop headers and every header named in
//! `Connection`, the credential headers (`Authorization`, `token`), and every
//! client-sent copy of a header the gateway sets (tenant context, request
//! id, `X-Forwarded-*`), whatever its letter case (`http` lower-cases names)
//! or count. A header whose name uses `_` and reads as one of ours with `-`
//! is refused (400): some servers fold `_` into `-`, and would otherwise see
//! a forged tenant header. Then the gateway adds its own.
//!
//! # Retries
//!
//! Here, only of requests that were *never written*: when a pooled
//! connection turns out to be dead as a request is handed to it, the pool
//! (and hyper-util's `retry_canceled_requests`, for its requests) sends it
//! on another. The fast path ([`crate::fast`]) also resends a safe-method
//! request whose reused connection closed before answering; no request with
//! side effects reaches an upstream twice.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, StatusCode, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::cache::{AuthEntry, ConnectionMemo};
use crate::cap::{is_busy, CappedConnector, ConnCap};
use crate::config::{GatewayHeader, HeaderNames, UpstreamConfig, UpstreamProtocol};
use crate::error::Denial;
use crate::fast::pool::RawPool;
pub use crate::fields::{
    connection_tokens, is_hop_by_hop_bytes, is_reserved_header, is_visible_ascii, RequestFields,
    HOP_BY_HOP, X_REQUEST_ID,
};
use crate::fields::{is_hop_by_hop, SPOOFABLE, TOKEN_HEADER};
use crate::metrics::Metrics;
use crate::pool::{Pool, PooledBody};

/// Body of every response the gateway sends: the upstream's, streamed, or
/// one of its own small JSON bodies.
#[derive(Debug)]
pub enum Body {
    /// Streamed from a pooled HTTP/1.1 upstream connection ([`crate::pool`]).
    Pooled(Stalling<PooledBody>),
    /// Streamed from hyper-util's client (h2 upstreams, upgrades).
    Upstream(Stalling<Incoming>),
    /// Written by the gateway itself.
    Local(Full<Bytes>),
}

/// A denial as hyper's response ([`Denial::parts`]).
pub fn denial_response(denial: Denial, request_id: Option<&HeaderValue>) -> Response<Body> {
    let (status, headers, body) = denial.parts(request_id);
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

/// A body the gateway writes itself.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Body::Local(Full::new(bytes.into()))
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Pooled(b) => Pin::new(b).poll_frame(cx),
            Body::Upstream(b) => Pin::new(b).poll_frame(cx),
            Body::Local(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(|never| match never {}))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Pooled(b) => b.inner.is_end_stream(),
            Body::Upstream(b) => b.inner.is_end_stream(),
            Body::Local(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Body::Pooled(b) => b.inner.size_hint(),
            Body::Upstream(b) => b.inner.size_hint(),
            Body::Local(b) => b.size_hint(),
        }
    }
}

/// The upstream sent nothing of its response body for its
/// `response_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("upstream response body stalled")]
pub struct BodyStalled;

/// An upstream's response body that must keep coming: nothing for `limit`
/// ends it with [`BodyStalled`] (the response is cut off, and its upstream
/// connection closed, not reused). While the client's request body is
/// still going up (a streaming echo, say), the exchange is moving and the
/// upstream is not stalled: each of its frames counts as progress too.
#[derive(Debug)]
pub struct Stalling<B> {
    inner: B,
    limit: Duration,
    /// Set by the request body ([`UpstreamBody`]) as it goes up.
    request_moving: Arc<AtomicBool>,
    /// Armed when the body first waits after a frame.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A frame came since the timer was armed.
    moved: bool,
}

impl<B> Stalling<B> {
    fn new(inner: B, limit: Duration, request_moving: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            limit,
            request_moving,
            timer: None,
            moved: true,
        }
    }
}

impl<B> http_body::Body for Stalling<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Poll::Ready(f) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.moved = true;
            return Poll::Ready(f.map(|r| r.map_err(Into::into)));
        }
        let deadline = tokio::time::Instant::now() + this.limit;
        if this.moved {
            this.moved = false;
            match &mut this.timer {
                Some(t) => t.as_mut().reset(deadline),
                None => this.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        let Some(timer) = this.timer.as_mut() else {
            return Poll::Pending;
        };
        while timer.as_mut().poll(cx).is_ready() {
            if !this.request_moving.swap(false, Ordering::Relaxed) {
                return Poll::Ready(Some(Err(BoxError::from(BodyStalled))));
            }
            timer.as_mut().reset(deadline);
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The request body on its way upstream: the client's, streamed frame by
/// frame, with its trailers (if any) put through the same filter as the
/// headers, so a forged tenant header cannot ride in a trailer.
pub struct UpstreamBody {
    inner: Incoming,
    names: Arc<HeaderNames>,
    /// Set on every frame sent: the exchange is moving (see [`Stalling`]).
    moving: Arc<AtomicBool>,
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
                let frame = match frame.into_trailers() {
                    Ok(mut trailers) => {
                        strip_for_upstream(&mut trailers, &this.names);
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

type BoxError = Box<dyn std::error::Error + Send + Sync>;

type HttpsClient = Client<CappedConnector<HttpsConnector<HttpConnector>>, UpstreamBody>;

/// A configured upstream and its connections.
pub struct Upstream {
    /// Its configuration.
    pub config: UpstreamConfig,
    /// HTTP/1.1 requests: connections driven on the request's own task.
    pool: Option<Arc<Pool>>,
    /// h2 upstreams and WebSocket upgrades: hyper-util's pooled client.
    client: HttpsClient,
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

/// The client end of a connection, worked out once per connection.
#[derive(Debug)]
pub struct Peer {
    /// The client's address.
    pub addr: SocketAddr,
    /// Its IP as the `X-Forwarded-For` value.
    pub ip_header: HeaderValue,
    /// The token its last request presented, and what it resolved to.
    pub memo: ConnectionMemo,
    /// Whether it speaks TLS to us (`X-Forwarded-Proto: https`).
    pub tls: bool,
}

impl Peer {
    /// The peer of a newly accepted plain TCP connection.
    pub fn new(addr: SocketAddr) -> Self {
        let ip_header = HeaderValue::from_str(&addr.ip().to_string())
            // An IP address is always a valid header value.
            .unwrap_or(HeaderValue::from_static("unknown"));
        Self {
            addr,
            ip_header,
            memo: ConnectionMemo::default(),
            tls: false,
        }
    }

    /// The same peer, having finished a TLS handshake.
    pub fn over_tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }
}

/// What the gateway knows about the request besides its headers.
#[derive(Debug)]
pub struct ForwardContext<'a> {
    /// The authenticated token, if any.
    pub auth: Option<&'a AuthEntry>,
    /// The request id.
    pub request_id: &'a HeaderValue,
    /// The client's connection.
    pub peer: &'a Peer,
    /// The normalised path to forward.
    pub path: &'a str,
    /// Whether the client spoke TLS to us.
    pub tls: bool,
}

/// The look-alike check: refuses header names that are not one of the
/// gateway's own but read as one once every separator is ignored
/// (`x_tenant_id`, `x.tenant.id` and `xtenantid` all read as `x-tenant-id`
/// to some server or framework). Our names' letters and digits are worked
/// out once, so a request's check is one pass over each name it carries.
#[derive(Debug, Clone)]
pub struct Lookalikes {
    /// Each of our names, and its letters and digits.
    ours: Vec<(HeaderName, Vec<u8>)>,
    /// The most letters and digits any of ours has.
    longest: usize,
}

impl Lookalikes {
    /// For the gateway's header names.
    pub fn new(names: &HeaderNames) -> Self {
        let ours: Vec<(HeaderName, Vec<u8>)> = names
            .all()
            .into_iter()
            .map(|n| (n.clone(), alnum(n.as_str()).collect()))
            .collect();
        let longest = ours.iter().map(|(_, l)| l.len()).max().unwrap_or(0);
        Self { ours, longest }
    }

    /// Refuses (400) any look-alike among `headers`' names. Runs before
    /// anything is forwarded.
    pub fn check(&self, headers: &(impl RequestFields + ?Sized)) -> Result<(), Denial> {
        let mut letters = [0u8; 64];
        'names: for (name, _) in headers.fields() {
            let mut n = 0;
            for b in name.iter().filter(|b| b.is_ascii_alphanumeric()) {
                if n == self.longest || n == letters.len() {
                    // Longer than any of ours: not a look-alike.
                    continue 'names;
                }
                letters[n] = b.to_ascii_lowercase();
                n += 1;
            }
            let letters = &letters[..n];
            if self.ours.iter().any(|(_, l)| l.as_slice() == letters)
                // Our own names are removed anyway.
                && !self
                    .ours
                    .iter()
                    .any(|(ours, _)| ours.as_str().as_bytes().eq_ignore_ascii_case(name))
            {
                return Err(Denial::ForbiddenHeader);
            }
        }
        Ok(())
    }
}

fn alnum(name: &str) -> impl Iterator<Item = u8> + '_ {
    name.bytes().filter(u8::is_ascii_alphanumeric)
}

/// Whether the request asks for a protocol upgrade (HTTP/1.1 only). Only
/// WebSocket is tunnelled: any other upgrade (notably `h2c`, which would
/// hand the client a raw HTTP/2 connection to the upstream, past every
/// check) is refused.
fn wants_upgrade(req: &Request<Incoming>) -> Result<bool, Denial> {
    if req.version() != Version::HTTP_11 || !connection_has(req.headers(), "upgrade") {
        return Ok(false);
    }
    match req.headers().get(header::UPGRADE) {
        None => Ok(false),
        Some(v) if is_websocket(v) => Ok(true),
        Some(_) => Err(Denial::UpgradeNotAllowed),
    }
}

fn is_websocket(v: &HeaderValue) -> bool {
    v.as_bytes().eq_ignore_ascii_case(b"websocket")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes every header `doomed` picks, and, when `Connection` is among
/// those, every header it lists. Looks only at the names present (a
/// message has a handful) rather than removing each name that might be
/// there (some thirty, each a hash and a probe), and allocates nothing
/// when there is nothing to remove.
fn remove_where(headers: &mut HeaderMap, doomed: impl Fn(&HeaderName) -> bool) {
    // Names are removed one at a time, each found by a fresh look at the
    // keys: a message has few names and fewer to remove. `Connection` goes
    // last, since it says what else to remove.
    loop {
        let listed = headers.get_all(header::CONNECTION);
        let is_listed = |name: &HeaderName| {
            connection_tokens(listed.iter().map(HeaderValue::as_bytes))
                .any(|t| t.eq_ignore_ascii_case(name.as_str().as_bytes()))
        };
        let next = headers
            .keys()
            .find(|n| *n != header::CONNECTION && (doomed(n) || is_listed(n)))
            .cloned();
        match next {
            Some(n) => {
                headers.remove(&n);
            }
            None => break,
        }
    }
    if doomed(&header::CONNECTION) {
        headers.remove(header::CONNECTION);
    }
}

/// Removes hop-by-hop headers and every header listed in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    remove_where(headers, is_hop_by_hop);
}

/// Removes what must not reach an upstream from a client's headers (or
/// trailers): hop-by-hop headers (and those `Connection` lists), the
/// credentials, headers that would steer the upstream, and any copy of a
/// header the gateway sets.
fn strip_for_upstream(headers: &mut HeaderMap, names: &HeaderNames) {
    remove_where(headers, |n| {
        is_hop_by_hop(n)
            || n == header::AUTHORIZATION
            || n == TOKEN_HEADER
            || SPOOFABLE.contains(n)
            || names.all().contains(&n)
    });
}

/// h2 clients may split `cookie` into several fields; HTTP/1.1 needs one,
/// joined with `; ` (RFC 9113 8.2.3).
fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    if values.next().is_none() || values.next().is_none() {
        return;
    }
    let joined: Vec<&[u8]> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    if let Ok(v) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
        headers.insert(header::COOKIE, v);
    }
}

/// Rewrites the request headers for the upstream (see the module doc).
pub fn rewrite_request_headers(
    headers: &mut HeaderMap,
    names: &HeaderNames,
    ctx: &ForwardContext<'_>,
    upstream: &UpstreamConfig,
    upgrade: bool,
) {
    let original_host = strip_request_headers(headers, names, upstream, upgrade);
    // Room for what the gateway adds, so adding never regrows the map.
    headers.reserve(10);
    // None of these is present any more, so they are appended, which skips
    // looking for values to replace.
    gateway_headers(names, ctx, original_host.as_ref(), |n, v| {
        headers.append(n.clone(), v.clone());
    });
}

/// The first half of [`rewrite_request_headers`]: removes what must not
/// reach the upstream, keeps an agreed upgrade, sets `Host` for the
/// upstream. Returns the client's `Host`, for `X-Forwarded-Host`.
pub fn strip_request_headers(
    headers: &mut HeaderMap,
    names: &HeaderNames,
    upstream: &UpstreamConfig,
    upgrade: bool,
) -> Option<HeaderValue> {
    let upgrade_value = if upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    let te_trailers = upstream.protocol == UpstreamProtocol::H2
        && headers
            .get_all(header::TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    strip_for_upstream(headers, names);
    if let Some(v) = upgrade_value {
        headers.insert(header::UPGRADE, v);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if te_trailers {
        // gRPC needs `te: trailers` to reach an h2 upstream.
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    match upstream.protocol {
        UpstreamProtocol::Http1 => {
            join_cookies(headers);
            headers.insert(header::HOST, upstream.host_header.clone())
        }
        // h2 carries the authority in the URI; a Host header would conflict.
        UpstreamProtocol::H2 => headers.remove(header::HOST),
    }
}

/// Every name [`strip_for_upstream`] removes from a request (besides those
/// `Connection` lists), lower case, for code that reads names as bytes:
/// the fast path's [`strip_request_fields`]. Built once per gateway; a
/// test holds it equal to the `HeaderName` check.
#[derive(Debug, Clone)]
pub struct StripSet {
    names: Vec<Vec<u8>>,
}

impl StripSet {
    /// For the gateway's header names.
    pub fn new(names: &HeaderNames) -> Self {
        let mut all: Vec<Vec<u8>> = HOP_BY_HOP.iter().map(|n| n.as_bytes().to_vec()).collect();
        all.extend(
            [&header::AUTHORIZATION, &TOKEN_HEADER]
                .into_iter()
                .chain(SPOOFABLE.iter())
                .chain(names.all())
                .map(|n| n.as_str().as_bytes().to_vec()),
        );
        all.sort_unstable();
        all.dedup();
        Self { names: all }
    }

    /// Whether `name`, in any letter case, is removed.
    pub fn contains(&self, name: &[u8]) -> bool {
        self.names
            .iter()
            .any(|n| n.len() == name.len() && n.eq_ignore_ascii_case(name))
    }
}

/// [`strip_request_headers`] for an HTTP/1.1 upstream and no upgrade, on a
/// request's fields as they came (the fast path's): `emit` gets each field
/// to forward, in order, then the upstream's `Host` and the cookies joined
/// into one field ([`join_cookies`]). Returns the client's `Host`, for
/// `X-Forwarded-Host`. A property test holds the result equal to what
/// [`strip_request_headers`] leaves in a `HeaderMap`.
pub fn strip_request_fields<'h>(
    fields: &'h (impl RequestFields + ?Sized),
    strip: &StripSet,
    upstream: &UpstreamConfig,
    mut emit: impl FnMut(&[u8], &[u8]),
) -> Option<&'h [u8]> {
    // (No `Connection` field, no allocation.)
    let listed: Vec<&[u8]> = connection_tokens(fields.values(&header::CONNECTION)).collect();
    let is_listed = |name: &[u8]| listed.iter().any(|t| t.eq_ignore_ascii_case(name));
    let mut host = None;
    // The first cookie, and all of them joined once there is a second.
    let mut cookie: Option<&[u8]> = None;
    let mut cookies: Option<Vec<u8>> = None;
    for (name, value) in fields.fields() {
        if strip.contains(name) || is_listed(name) {
            continue;
        }
        if name.eq_ignore_ascii_case(b"host") {
            host = host.or(Some(value));
        } else if name.eq_ignore_ascii_case(b"cookie") {
            match cookie {
                None => cookie = Some(value),
                Some(first) => {
                    let joined = cookies.get_or_insert_with(|| first.to_vec());
                    joined.extend_from_slice(b"; ");
                    joined.extend_from_slice(value);
                }
            }
        } else {
            emit(name, value);
        }
    }
    emit(b"host", upstream.host_header.as_bytes());
    if let Some(c) = cookies.as_deref().or(cookie) {
        emit(b"cookie", c);
    }
    host
}

/// The second half of [`rewrite_request_headers`]: the headers the gateway
/// adds (tenant context, request id, `X-Forwarded-*`), each handed to
/// `add`, which appends it to a map (hyper path) or writes it out (fast
/// path).
pub fn gateway_headers<'a>(
    names: &'a HeaderNames,
    ctx: &'a ForwardContext<'_>,
    original_host: Option<&'a HeaderValue>,
    mut add: impl FnMut(&'a HeaderName, &'a HeaderValue),
) {
    if let Some(a) = ctx.auth {
        caller_headers(names, a, &mut add);
    }
    request_headers(names, ctx, original_host, add);
}

/// The first part of [`gateway_headers`]: who is calling. The same for
/// every request a token makes, so the fast path writes them once per
/// cache entry ([`AuthEntry::wire`]).
pub fn caller_headers<'a>(
    names: &'a HeaderNames,
    a: &'a AuthEntry,
    add: impl FnMut(&'a HeaderName, &'a HeaderValue),
) {
    use GatewayHeader as G;
    let mut add = names.sender(add);
    if let Some(v) = &a.tenant_id {
        add(G::TenantId, v);
    }
    if let Some(v) = &a.account_id {
        add(G::AccountId, v);
    }
    if let Some(v) = &a.workspace_id {
        add(G::WorkspaceId, v);
    }
    add(G::TokenId, &a.token_id);
    add(G::TokenName, &a.token_name);
    add(G::TokenAbilities, &a.abilities);
}

/// The second part of [`gateway_headers`]: this request's id and where it
/// came from.
pub fn request_headers<'a>(
    names: &'a HeaderNames,
    ctx: &'a ForwardContext<'_>,
    original_host: Option<&'a HeaderValue>,
    add: impl FnMut(&'a HeaderName, &'a HeaderValue),
) {
    static HTTP: HeaderValue = HeaderValue::from_static("http");
    static HTTPS: HeaderValue = HeaderValue::from_static("https");
    use GatewayHeader as G;
    let mut add = names.sender(add);
    add(G::RequestId, ctx.request_id);
    add(G::ForwardedFor, &ctx.peer.ip_header);
    add(G::ForwardedProto, if ctx.tls { &HTTPS } else { &HTTP });
    if let Some(h) = original_host {
        add(G::ForwardedHost, h);
    }
}

/// Resolves when an upgraded tunnel must be closed (its token no longer
/// admits it); see `Gateway::tunnel_end`.
pub type TunnelEnd = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Forwards a request that has passed authentication. An agreed upgrade
/// becomes a tunnel that lasts until either side closes or `tunnel_end`
/// resolves.
pub async fn forward(
    upstream: &Upstream,
    names: &Arc<HeaderNames>,
    metrics: &Metrics,
    mut req: Request<Incoming>,
    ctx: ForwardContext<'_>,
    tunnel_end: Option<TunnelEnd>,
) -> Result<Response<Body>, Denial> {
    let cfg = &upstream.config;
    let upgrade = wants_upgrade(&req)?;
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

    // For h2 clients the host comes as the URI authority, not a header.
    if !req.headers().contains_key(header::HOST) {
        if let Some(a) = req.uri().authority() {
            if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                req.headers_mut().insert(header::HOST, v);
            }
        }
    }

    let mut pq = String::with_capacity(cfg.base_path.len() + ctx.path.len() + 64);
    pq.push_str(&cfg.base_path);
    pq.push_str(ctx.path);
    if let Some(q) = req.uri().query() {
        pq.push('?');
        pq.push_str(q);
    }
    let pq = PathAndQuery::try_from(pq)
        .map_err(|_| Denial::BadPath(crate::route::PathError::BadEscape))?;
    let uri = Uri::builder()
        .scheme(cfg.scheme.clone())
        .authority(cfg.authority.clone())
        .path_and_query(pq)
        .build()
        .map_err(|_| Denial::BadPath(crate::route::PathError::BadEscape))?;

    rewrite_request_headers(req.headers_mut(), names, &ctx, cfg, upgrade);
    *req.uri_mut() = uri;
    *req.version_mut() = match cfg.protocol {
        UpstreamProtocol::Http1 => Version::HTTP_11,
        UpstreamProtocol::H2 => Version::HTTP_2,
    };

    let moving = Arc::new(AtomicBool::new(false));
    let req = req.map(|inner| UpstreamBody {
        inner,
        names: Arc::clone(names),
        moving: Arc::clone(&moving),
    });
    // Plain HTTP/1.1 requests go through the pool; upgrades need the
    // connection handed over, which hyper-util's client does.
    let pool = upstream.pool.as_ref().filter(|_| !upgrade);
    let sent = tokio::time::timeout(cfg.response_timeout, async {
        match pool {
            Some(pool) => pool
                .send(req)
                .await
                .map(|r| r.map(|b| Body::Pooled(Stalling::new(b, cfg.response_timeout, moving))))
                .map_err(BoxError::from),
            None => upstream
                .client
                .request(req)
                .await
                .map(|r| r.map(|b| Body::Upstream(Stalling::new(b, cfg.response_timeout, moving))))
                .map_err(BoxError::from),
        }
    })
    .await;
    let mut resp = match sent {
        Err(_) => {
            tracing::warn!(upstream = %cfg.name, "upstream response timed out");
            return Err(Denial::UpstreamTimeout);
        }
        Ok(Err(e)) if is_busy(e.as_ref()) => {
            tracing::warn!(upstream = %cfg.name, "upstream connection limit reached");
            return Err(Denial::UpstreamBusy);
        }
        Ok(Err(e)) => {
            tracing::warn!(upstream = %cfg.name, error = %e, source = ?e.source(), "upstream request failed");
            return Err(Denial::UpstreamUnavailable);
        }
        Ok(Ok(resp)) => resp,
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let agreed = resp
            .headers()
            .get(header::UPGRADE)
            .is_some_and(is_websocket);
        if let (Some(client_upgrade), true) = (client_upgrade, agreed) {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            metrics.upgrades.inc();
            let name = cfg.name.clone();
            tokio::spawn(async move {
                match tokio::join!(client_upgrade, upstream_upgrade) {
                    (Ok(c), Ok(u)) => {
                        let end = async {
                            match tunnel_end {
                                Some(end) => end.await,
                                None => std::future::pending().await,
                            }
                        };
                        crate::tunnel::run(TokioIo::new(c), TokioIo::new(u), end).await;
                        tracing::debug!(upstream = %name, "upgraded tunnel closed");
                    }
                    (c, u) => {
                        tracing::warn!(upstream = %name, client = ?c.err(), upstream_err = ?u.err(), "upgrade failed");
                    }
                }
            });
            let (mut parts, body) = resp.into_parts();
            let upgrade_to = parts.headers.get(header::UPGRADE).cloned();
            strip_hop_by_hop(&mut parts.headers);
            if let Some(v) = upgrade_to {
                parts.headers.insert(header::UPGRADE, v);
            }
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts
                .headers
                .insert(X_REQUEST_ID.clone(), ctx.request_id.clone());
            return Ok(Response::from_parts(parts, body));
        }
        // An upgrade nobody asked for (or to another protocol) is never tunnelled.
        tracing::warn!(upstream = %cfg.name, "upstream sent 101 without a matching WebSocket upgrade request");
        return Err(Denial::UpstreamUnavailable);
    }

    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts
        .headers
        .insert(X_REQUEST_ID.clone(), ctx.request_id.clone());
    Ok(Response::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    use crate::auth::tests::headers as map;

    fn names(h: &HeaderMap) -> Vec<&str> {
        let mut v: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn lookalikes_of_our_names_are_refused_and_nothing_else() {
        let names = HeaderNames::default();
        let l = Lookalikes::new(&names);
        for bad in [
            "x_tenant_id",
            "x.tenant.id",
            "xtenantid",
            "x-tenant_id",
            "x-forwarded_for",
        ] {
            assert!(l.check(&map(&[(bad, "1")])).is_err(), "{bad}");
        }
        for fine in [
            "x-tenant-id",
            "x-forwarded-for",
            "host",
            "x-tenant-ids",
            "x_tenant",
            "a-very-long-header-name-that-is-longer-than-any-of-ours-by-far-and-then-some-more",
        ] {
            assert!(l.check(&map(&[(fine, "1")])).is_ok(), "{fine}");
        }
    }

    #[test]
    fn hop_by_hop_lists_agree() {
        for n in HOP_BY_HOP {
            assert!(is_hop_by_hop(&HeaderName::from_static(n)), "{n}");
            assert!(
                is_hop_by_hop_bytes(n.to_ascii_uppercase().as_bytes()),
                "{n}"
            );
        }
        for n in [
            "host",
            "content-length",
            "x-request-id",
            "connections",
            "t",
            "tee",
        ] {
            assert!(!is_hop_by_hop(&HeaderName::from_static(n)), "{n}");
            assert!(!is_hop_by_hop_bytes(n.as_bytes()), "{n}");
        }
    }

    proptest::proptest! {
        /// The byte-level check says what the `HeaderName` one says, for
        /// any name.
        #[test]
        fn hop_by_hop_checks_agree_on_any_name(name in "[a-zA-Z0-9-]{1,20}") {
            let parsed = HeaderName::from_bytes(name.as_bytes()).unwrap();
            proptest::prop_assert_eq!(is_hop_by_hop(&parsed), is_hop_by_hop_bytes(name.as_bytes()));
        }
    }

    #[test]
    fn hop_by_hop_and_connection_listed_headers_go_and_nothing_else() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Foo"),
            ("keep-alive", "timeout=5"),
            ("x-foo", "1"),
            ("x-bar", "2"),
            ("close", "3"),
            ("te", "trailers"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), vec!["close", "x-bar"]);

        // `close` is removed only when `Connection` lists it.
        let mut h = map(&[("connection", "close"), ("close", "1"), ("x-bar", "2")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), vec!["x-bar"]);
        let mut h = map(&[("close", "1"), ("x-bar", "2")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), vec!["close", "x-bar"]);

        // Several `Connection` fields, one of them unusual.
        let mut h = map(&[
            ("connection", "keep-alive"),
            ("connection", "x-baz"),
            ("x-baz", "1"),
            ("x-bar", "2"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), vec!["x-bar"]);
    }
}
