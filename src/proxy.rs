//! hyper's edge of the request path: every request on the public listener
//! that the fast path does not take (HTTP/2, upgrades, anything unusual)
//! is routed, decided and forwarded here.
//!
//! HTTP/1.1 requests go through the upstream's pool
//! ([`crate::upstream::pool`]), whose connections are driven on the
//! request's own task; h2 upstreams and WebSocket upgrades through a
//! hyper-util client. Bodies stream both ways (never collected); upgrades
//! are tunnelled once the upstream answers 101. What is stripped from the
//! request and added to it is the rule book's ([`crate::rules`]).
//! Each request's [`Exchange`] is finished when its response body ends
//! (sent, or dropped), so its access line and duration cover the body.
//!
//! # Retries
//!
//! Here, only of requests that were *never written*: when a pooled
//! connection turns out to be dead as a request is handed to it, the pool
//! (and hyper-util's `retry_canceled_requests`, for its requests) sends it
//! on another. The fast path ([`crate::fast`]) also resends a safe-method
//! request whose reused connection closed before answering; no request with
//! side effects reaches an upstream twice.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::auth::extract_credential;
use crate::body::{parts_response, Body, BoxError, Stalling};
use crate::cache::MemoUse;
use crate::error::{Denial, Refused};
use crate::fields::{list_has, RequestFields, X_REQUEST_ID};
use crate::forward_auth;
use crate::gateway::{check_method, Admission, Gateway, Snapshot, TunnelEnd};
use crate::metrics::RouteSeries;
use crate::route::normalize_path;
use crate::rules::{
    rewrite_request_headers, strip_response, upstream_target, ForwardContext, Peer,
};
use crate::signals::{Exchange, Logged};
use crate::upstream::cap::is_busy;
use crate::upstream::{Failure, Upstream, UpstreamBody, UpstreamProtocol};

/// Handles one request on the public listener. Never fails: every error
/// is a JSON response. Its [`Exchange`] is finished when the response body
/// ends ([`crate::signals::Logged`]).
pub async fn handle(g: &Arc<Gateway>, req: Request<Incoming>, peer: &Peer) -> Response<Body> {
    let started = Instant::now();
    let (request_id, trace) = g.identify(req.headers(), started);
    let mut ex = Exchange::new(
        started,
        request_id,
        trace,
        req.method().clone(),
        g.signals.keep_path(req.uri().path()),
        peer.addr.ip(),
    );
    ex.bytes_in = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    let resp = match process(g, req, peer, &mut ex).await {
        Ok(resp) => resp,
        Err(Refused { denial, allow_for }) => {
            ex.code = Some(denial.code());
            parts_response(g.refusal(denial, &ex.request_id, allow_for.as_deref()))
        }
    };
    ex.status = resp.status().as_u16();
    let signals = Arc::clone(&g.signals);
    resp.map(|b| Body::Logged(Box::new(Logged::new(b, signals, ex))))
}

async fn process(
    g: &Arc<Gateway>,
    req: Request<Incoming>,
    peer: &Peer,
    ex: &mut Exchange,
) -> Result<Response<Body>, Refused> {
    let path = normalize_path(req.uri().path())
        .map_err(Denial::BadPath)?
        .into_owned();
    // The config this request sees to its end, whatever a reload does.
    let snap = g.snapshot();
    // Forward auth is answered here, never forwarded.
    if let Some(suffix) = forward_auth::suffix(&snap.config.forward_auth, req.uri().path(), &path) {
        ex.route = RouteSeries::ForwardAuth;
        let client_ip = peer.addr.ip();
        let admission = forward_auth::decide(
            g,
            &snap,
            req.method(),
            suffix,
            req.headers(),
            MemoUse::of(&peer.memo, false),
            client_ip,
            ex.started,
        )
        .await?;
        ex.auth.clone_from(&admission.entry);
        return Ok(forward_auth::allowed(
            snap.header_names(),
            &admission,
            &ex.request_id,
        ));
    }
    // The seed token endpoints are served here, never forwarded (the
    // method check that `route` makes for the rest comes first).
    if let Some(flow) = crate::flows::match_flow(&snap.config.token_api, &path) {
        ex.route = RouteSeries::TokenApi;
        check_method(req.method())?;
        g.metrics.token_api_requests.inc();
        // Boxed: the flows' futures (store transactions) are large and
        // would otherwise be part of every proxied request's future.
        return Ok(Box::pin(crate::flows::handle(g, flow, req)).await);
    }
    let (route, upstream) = snap
        .route(&path, req.method(), req.headers())
        .map_err(|d| Refused::routing(d, &path))?;
    ex.route = RouteSeries::Route(route.series);
    // A tunnel the upstream agrees to outlives this request, so its
    // admission is checked again for as long as it stays open, from
    // the invalidations after this point on.
    let changes = req
        .headers()
        .contains_key(http::header::UPGRADE)
        .then(|| g.cache.changes());
    let Admission { entry, limits } = g
        .admit(
            route,
            req.headers(),
            MemoUse::of(&peer.memo, false),
            peer.addr.ip(),
            ex.started,
        )
        .await?;
    ex.auth.clone_from(&entry);
    let tunnel_end = match (&entry, changes) {
        (Some(e), Some(changes)) => extract_credential(req.headers())?.map(|c| {
            let expires_at = e.record.expires_at;
            g.tunnel_end(c.to_owned(), route.clone(), changes, expires_at)
        }),
        _ => None,
    };
    ex.upstream = snap.upstream_series(route.upstream);
    let traceparent = ex.trace.header_value();
    let ctx = ForwardContext {
        auth: entry.as_deref(),
        request_id: &ex.request_id,
        traceparent: &traceparent,
        peer,
        path: &path,
    };
    let forwarded = Arc::new(AtomicU64::new(0));
    ex.bytes_forwarded = Some(Arc::clone(&forwarded));
    let sent = Instant::now();
    let resp = forward(g, &snap, upstream, req, ctx, tunnel_end, forwarded).await;
    ex.upstream_time = Some(sent.elapsed());
    let mut resp = match (resp, &limits) {
        (Ok(resp), _) => {
            g.metrics.forwarded.inc();
            resp
        }
        (Err(d), None) => return Err(d.into()),
        // After admission on a limited route the answer carries the
        // route's fields, a failure's too.
        (Err(d), Some(_)) => {
            ex.code = Some(d.code());
            parts_response(g.refusal(d, &ex.request_id, None))
        }
    };
    if let Some(l) = &limits {
        for (n, v) in l.pairs() {
            resp.headers_mut().append(n.clone(), v.clone());
        }
    }
    Ok(resp)
}

/// Whether the request asks for a protocol upgrade (HTTP/1.1 only). Only
/// WebSocket is tunnelled: any other upgrade (notably `h2c`, which would
/// hand the client a raw HTTP/2 connection to the upstream, past every
/// check) is refused.
fn wants_upgrade(req: &Request<Incoming>) -> Result<bool, Denial> {
    if req.version() != Version::HTTP_11
        || !list_has(
            RequestFields::values(req.headers(), &header::CONNECTION),
            b"upgrade",
        )
    {
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

/// Forwards a request that has passed authentication. An agreed upgrade
/// becomes a tunnel that lasts until either side closes or `tunnel_end`
/// resolves. `forwarded` counts the request body's bytes as they go up.
pub async fn forward(
    g: &Gateway,
    snap: &Snapshot,
    upstream: &Upstream,
    mut req: Request<Incoming>,
    ctx: ForwardContext<'_>,
    tunnel_end: Option<TunnelEnd>,
    forwarded: Arc<AtomicU64>,
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

    let pq = PathAndQuery::try_from(upstream_target(cfg, ctx.path, req.uri().query()))
        .map_err(|_| Denial::BadPath(crate::route::PathError::BadEscape))?;
    let uri = Uri::builder()
        .scheme(cfg.scheme.clone())
        .authority(cfg.authority.clone())
        .path_and_query(pq)
        .build()
        .map_err(|_| Denial::BadPath(crate::route::PathError::BadEscape))?;

    rewrite_request_headers(
        req.headers_mut(),
        snap.strip_set(),
        snap.header_names(),
        &ctx,
        cfg,
        upgrade,
    );
    *req.uri_mut() = uri;
    *req.version_mut() = match cfg.protocol {
        UpstreamProtocol::Http1 => Version::HTTP_11,
        UpstreamProtocol::H2 => Version::HTTP_2,
    };

    let moving = Arc::new(AtomicBool::new(false));
    let req = req.map(|inner| {
        let trailers = Arc::clone(snap.trailer_filter());
        UpstreamBody::new(inner, trailers, Arc::clone(&moving), forwarded)
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
        Err(_) => return Err(Failure::Timeout.denial(&cfg.name)),
        Ok(Err(e)) if is_busy(e.as_ref()) => return Err(Failure::Busy.denial(&cfg.name)),
        Ok(Err(e)) => return Err(Failure::Io(e).denial(&cfg.name)),
        Ok(Ok(resp)) => resp,
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let agreed = resp
            .headers()
            .get(header::UPGRADE)
            .is_some_and(is_websocket);
        if let (Some(client_upgrade), true) = (client_upgrade, agreed) {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            g.metrics.upgrades.inc();
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
            strip_response(&mut parts.headers);
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
        return Err(Failure::StrayUpgrade.denial(&cfg.name));
    }

    let (mut parts, body) = resp.into_parts();
    strip_response(&mut parts.headers);
    parts
        .headers
        .insert(X_REQUEST_ID.clone(), ctx.request_id.clone());
    Ok(Response::from_parts(parts, body))
}
