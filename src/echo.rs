//! `tokengate echo`: a small upstream for trying the gateway.
//!
//! It answers every request, whatever its method and path, with `200` and
//! a JSON description of what it received:
//!
//! ```json
//! {"method": "GET", "path": "/api/calls/7?x=1", "version": "HTTP/1.1",
//!  "headers": {"x-tenant-id": "1", "accept": ["a", "b"]}, "body_bytes": 0}
//! ```
//!
//! A header sent once maps to its value; one sent several times maps to the
//! list of its values, in order. The body is read to the end and counted,
//! never kept. HTTP/1.1 and h2 (prior knowledge) are served on the same
//! port, so it can stand in for either kind of upstream. It is a tool for
//! a terminal or a compose file, not a production service: it has no
//! configuration and no authentication of its own.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Request, Response, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;

/// Where `tokengate echo` listens unless `--listen` says otherwise: the
/// upstream address of the shipped `config/tokengate.toml`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:3000";

/// Clients must send their request headers within this (slowloris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// At shutdown, requests in flight get this long.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Binds `addr`; the error names what could not be bound.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("echo: cannot listen on {addr}: {e}")))
}

/// Serves on `listener` until `shutdown` resolves, then lets requests in
/// flight finish (for a few seconds at most).
pub async fn serve(listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "echo: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let conn = builder
                    .serve_connection(TokioIo::new(stream), service_fn(answer))
                    .into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "echo: connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(SHUTDOWN_GRACE) => {}
    }
}

/// Reads the request to its end and describes it.
async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, mut body) = req.into_parts();
    let mut body_bytes: u64 = 0;
    let mut complete = true;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(data) = f.data_ref() {
                    body_bytes += data.len() as u64;
                }
            }
            Err(_) => {
                // The client went away mid-body: say what arrived.
                complete = false;
                break;
            }
        }
    }
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_string(), |p| p.as_str().to_string());
    let mut described = json!({
        "method": parts.method.as_str(),
        "path": path,
        "version": version(parts.version),
        "headers": headers_json(&parts.headers),
        "body_bytes": body_bytes,
    });
    if !complete {
        described["body_complete"] = json!(false);
    }
    let mut resp = Response::new(Full::new(Bytes::from(described.to_string())));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}

fn version(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "unknown",
    }
}

/// Header name to value; a repeated header to the list of its values.
/// Values that are not UTF-8 are shown with replacement characters.
pub fn headers_json(headers: &HeaderMap) -> Value {
    let mut out = Map::new();
    for name in headers.keys() {
        let mut values: Vec<Value> = headers
            .get_all(name)
            .iter()
            .map(|v| Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let value = if values.len() == 1 {
            values.swap_remove(0)
        } else {
            Value::Array(values)
        };
        out.insert(name.as_str().to_string(), value);
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn repeated_headers_are_kept_as_lists() {
        let mut h = HeaderMap::new();
        h.append("x-one", HeaderValue::from_static("1"));
        h.append("accept", HeaderValue::from_static("a"));
        h.append("accept", HeaderValue::from_static("b"));
        h.append("x-bin", HeaderValue::from_bytes(b"\xffok").unwrap());
        assert_eq!(
            headers_json(&h),
            json!({"x-one": "1", "accept": ["a", "b"], "x-bin": "\u{fffd}ok"})
        );
    }
}
