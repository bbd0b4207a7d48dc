//! The body of every response the gateway sends, and the response of a
//! denial: the upstream's body, streamed (and cut off when it stalls), or
//! one of the gateway's own small JSON bodies.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderValue;
use http::Response;
use http_body_util::Full;
use hyper::body::Incoming;

use crate::error::Denial;
use crate::signals::Logged;
use crate::upstream::pool::PooledBody;

/// The error a response body can end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Body of every response the gateway sends: the upstream's, streamed, or
/// one of its own small JSON bodies.
#[derive(Debug)]
pub enum Body {
    /// Streamed from a pooled HTTP/1.1 upstream connection ([`crate::upstream::pool`]).
    Pooled(Stalling<PooledBody>),
    /// Streamed from hyper-util's client (h2 upstreams, upgrades).
    Upstream(Stalling<Incoming>),
    /// Written by the gateway itself.
    Local(Full<Bytes>),
    /// A public-listener response that finishes its request's record
    /// when it ends ([`crate::signals::Logged`]).
    Logged(Box<Logged<Body>>),
}

/// A denial as hyper's response ([`Denial::parts`]).
pub fn denial_response(denial: Denial, request_id: Option<&HeaderValue>) -> Response<Body> {
    parts_response(denial.parts(request_id))
}

/// A response from its pieces (a refusal's, [`Denial::parts`] or
/// `Gateway::refusal`).
pub fn parts_response(
    (status, headers, body): (http::StatusCode, http::HeaderMap, Bytes),
) -> Response<Body> {
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
            Body::Logged(b) => Pin::new(b.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Pooled(b) => b.inner.is_end_stream(),
            Body::Upstream(b) => b.inner.is_end_stream(),
            Body::Local(b) => b.is_end_stream(),
            Body::Logged(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Body::Pooled(b) => b.inner.size_hint(),
            Body::Upstream(b) => b.inner.size_hint(),
            Body::Local(b) => b.size_hint(),
            Body::Logged(b) => b.size_hint(),
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
    /// `inner`, cut off after `limit` without a frame from it or from the
    /// request body (`request_moving`).
    pub fn new(inner: B, limit: Duration, request_moving: Arc<AtomicBool>) -> Self {
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
