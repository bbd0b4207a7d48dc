//! The admin listener: health, readiness and metrics for the operator.
//!
//! - `GET /healthz`: the process is up (always 200).
//! - `GET /readyz`: the store answers (200) or not (503), so a load balancer
//!   stops sending traffic to an instance that would fail closed.
//! - `GET /metrics`: Prometheus text.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::gateway::Gateway;
use crate::proxy::{full, Body};

/// Bound on the readiness probe's store round-trip.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

fn json(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Handles one request on the admin listener.
pub async fn handle(gateway: &Gateway, req: Request<Incoming>) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
        (&Method::GET, "/readyz") => {
            match tokio::time::timeout(READY_TIMEOUT, gateway.store.ping()).await {
                Ok(Ok(())) => json(StatusCode::OK, serde_json::json!({"status": "ready"})),
                _ => json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"status": "unavailable", "reason": "store unreachable"}),
                ),
            }
        }
        (&Method::GET, "/metrics") => {
            let mut r = Response::new(full(gateway.metrics.render(gateway.cache.entry_count())));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": true, "code": "NOT_FOUND", "message": "no such endpoint"}),
        ),
    }
}
