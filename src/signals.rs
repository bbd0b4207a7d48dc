//! What the gateway tells its operator about each request: the metric
//! series and the access log, fed by one record.
//!
//! ```text
//!  hyper's path (gateway) ─┐                      ┌─▶ metrics: route series, upstream series (atomics, per thread)
//!  fast path ──────────────┼─▶ Exchange ─▶ finish ┤
//!  forward auth, seed flows┘   (after the         └─▶ access log: try_send to a bounded queue ─▶ writer thread ─▶ stdout or log.access_file
//!                               response's end)                  (full: dropped, counted)
//! ```
//!
//! Every request answered on the public listener, whichever codec served
//! it and whatever the answer (forwarded, refused, failed upstream, served
//! by forward auth or a seed flow), ends in one [`Exchange`] handed to
//! [`Signals::finish`]: the one place that decides what is counted and
//! what is logged. A request never waits for the log: the line is queued
//! without blocking and formatted and written by a thread of its own; when
//! the queue is full the line is dropped and counted
//! (`tokengate_access_log_dropped_total`).
//!
//! # The access line
//!
//! Fields, in this order (DESIGN section 12): `ts` (when the request head
//! was read, RFC 3339 UTC, milliseconds), `request_id`, `trace_id`,
//! `method`, `path` (as the client sent it, never the query string),
//! `route` (the `route` label), `status`, `code` (the denial code, if
//! any), `duration_ms` (head read to response end), `upstream` (name),
//! `upstream_ms` (request sent to response head), `token_id`,
//! `tenant_id`, `account_id`, `client_ip`, `bytes_in` (request body),
//! `bytes_out` (response body). Absent values are `null` in JSON and `-`
//! in text. Never a credential: the token is named by its public id only.
//!
//! Where: standard output (the diagnostic log is on standard error), or
//! `log.access_file`, opened for appending when the gateway starts (a file
//! that cannot be opened stops the start). Rotate it with logrotate's
//! `copytruncate` (writes append, so they follow the truncation).

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method};

use crate::cache::AuthEntry;
use crate::fields::push_ip;
use crate::metrics::{Metrics, RouteSeries};
use crate::trace::Trace;

/// Lines the access log's queue holds; past it, lines are dropped. With
/// the writer draining it every 10 ms, enough for some 400,000
/// lines a second.
pub const ACCESS_QUEUE: usize = 4096;

/// How long the writer sleeps between drains while lines keep coming
/// (instead of being woken for each, which would cost a request a
/// syscall); an idle writer blocks until the next line.
const WRITER_NAP: Duration = Duration::from_millis(10);

/// `[log] format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines; colour only when standard error is a terminal.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Validated `[log]`.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// The format of diagnostic and access lines.
    pub format: LogFormat,
    /// Whether an access line is written per request.
    pub access: bool,
    /// Where access lines go; `None`: standard output.
    pub access_file: Option<PathBuf>,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            access: true,
            access_file: None,
        }
    }
}

/// Sets up the diagnostic log (the `tracing` subscriber) on standard
/// error, filtered by `RUST_LOG` (default `info`), in `format`. Text is
/// coloured only when standard error is a terminal, so log files and
/// journals get no escape codes.
pub fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

/// How one request ended: filled in by whichever codec served it, handed
/// to [`Signals::finish`] once the response is over.
#[derive(Debug)]
pub struct Exchange {
    /// When the request head was read.
    pub started: Instant,
    /// The request id (the gateway's own or a trusted client's).
    pub request_id: HeaderValue,
    /// The trace it belongs to.
    pub trace: Trace,
    /// The request method.
    pub method: Method,
    /// The path as the client sent it, without the query string; empty
    /// when no access line is written ([`Signals::keep_path`]).
    pub path: String,
    /// The `route` label.
    pub route: RouteSeries,
    /// The status sent.
    pub status: u16,
    /// The denial code, for a refusal or failure.
    pub code: Option<&'static str>,
    /// The upstream asked, by index into the config's upstreams.
    pub upstream: Option<usize>,
    /// From the request sent upstream to its response head (or failure).
    pub upstream_time: Option<Duration>,
    /// The token the request was admitted with.
    pub auth: Option<Arc<AuthEntry>>,
    /// The client's address.
    pub client_ip: IpAddr,
    /// Request body bytes: its `Content-Length` (0 for none) unless
    /// `bytes_forwarded` counts them.
    pub bytes_in: u64,
    /// Request body bytes as they are streamed upstream (hyper's path,
    /// where a body may have no length); read when the exchange finishes.
    pub bytes_forwarded: Option<Arc<AtomicU64>>,
    /// Response body bytes sent.
    pub bytes_out: u64,
}

impl Exchange {
    /// A request whose head was just read, not yet routed.
    pub fn new(
        request_id: HeaderValue,
        trace: Trace,
        method: Method,
        path: String,
        client_ip: IpAddr,
    ) -> Self {
        Self {
            started: Instant::now(),
            request_id,
            trace,
            method,
            path,
            route: RouteSeries::None,
            status: 0,
            code: None,
            upstream: None,
            upstream_time: None,
            auth: None,
            client_ip,
            bytes_in: 0,
            bytes_forwarded: None,
            bytes_out: 0,
        }
    }
}

/// One queued access line: the exchange and what `finish` measured.
struct Line {
    exchange: Exchange,
    duration: Duration,
    ts: SystemTime,
}

// Lines are nearly every message: boxing them to shrink the rare flush
// would cost every request an allocation.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Line(Line),
    /// Write out everything queued before, then answer.
    Flush(mpsc::Sender<()>),
}

/// The metric series and the access log, fed by [`Signals::finish`].
pub struct Signals {
    metrics: Arc<Metrics>,
    config: LogConfig,
    /// Route labels and upstream names, for the writer.
    labels: Arc<Labels>,
    /// Set once the writer runs ([`Signals::open_access_log`]).
    queue: OnceLock<SyncSender<Msg>>,
}

impl std::fmt::Debug for Signals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signals")
            .field("config", &self.config)
            .finish()
    }
}

/// What a line's indexes name.
#[derive(Debug)]
struct Labels {
    routes: Vec<String>,
    upstreams: Vec<String>,
}

impl Labels {
    fn route(&self, r: RouteSeries) -> &str {
        match r {
            RouteSeries::Route(i) => self.routes.get(i).map_or("none", String::as_str),
            RouteSeries::None => "none",
            RouteSeries::TokenApi => "token_api",
            RouteSeries::ForwardAuth => "forward_auth",
        }
    }
}

impl Signals {
    /// For a gateway's config: `routes` are the route labels in series
    /// order, `upstreams` the upstream names in config order.
    pub fn new(
        metrics: Arc<Metrics>,
        config: LogConfig,
        routes: &[&str],
        upstreams: &[&str],
    ) -> Self {
        let labels = Labels {
            routes: routes.iter().map(|s| (*s).to_owned()).collect(),
            upstreams: upstreams.iter().map(|s| (*s).to_owned()).collect(),
        };
        Self {
            metrics,
            config,
            labels: Arc::new(labels),
            queue: OnceLock::new(),
        }
    }

    /// The request path for the record: copied when an access line will
    /// be written, empty (no allocation) when not.
    pub fn keep_path(&self, path: &str) -> String {
        if self.config.access {
            path.to_owned()
        } else {
            String::new()
        }
    }

    /// Opens the access log's destination and starts its writer (once;
    /// later calls do nothing). Fails when `log.access_file` cannot be
    /// opened, naming it.
    pub fn open_access_log(&self) -> std::io::Result<()> {
        if !self.config.access || self.queue.get().is_some() {
            return Ok(());
        }
        let out: Box<dyn Write + Send> = match &self.config.access_file {
            Some(path) => Box::new(open_append(path)?),
            None => Box::new(std::io::stdout()),
        };
        let (tx, rx) = mpsc::sync_channel(ACCESS_QUEUE);
        let labels = Arc::clone(&self.labels);
        let metrics = Arc::clone(&self.metrics);
        let format = self.config.format;
        std::thread::Builder::new()
            .name("tokengate-access-log".into())
            .spawn(move || write_lines(rx, out, format, &labels, &metrics))?;
        // Lost a race with another caller: its writer serves; this one
        // ends when `tx` drops.
        let _ = self.queue.set(tx);
        Ok(())
    }

    /// Waits (up to `limit`) until every line queued so far is written:
    /// at shutdown, so the last requests' lines are not lost.
    pub fn flush(&self, limit: Duration) {
        let Some(queue) = self.queue.get() else {
            return;
        };
        let (tx, rx) = mpsc::channel();
        if queue.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.recv_timeout(limit);
        }
    }

    /// Counts and logs a finished request: the one rule for both codecs.
    pub fn finish(&self, mut exchange: Exchange) {
        let duration = exchange.started.elapsed();
        if let Some(n) = &exchange.bytes_forwarded {
            exchange.bytes_in = n.load(Ordering::Relaxed);
        }
        let series = &self.metrics.series;
        series.request(exchange.route, exchange.status, duration);
        if let (Some(u), Some(t)) = (exchange.upstream, exchange.upstream_time) {
            series.upstream(u, t);
        }
        if !self.config.access {
            return;
        }
        let Some(queue) = self.queue.get() else {
            return;
        };
        let ts = SystemTime::now()
            .checked_sub(duration)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let line = Line {
            exchange,
            duration,
            ts,
        };
        match queue.try_send(Msg::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.metrics.access_log_dropped.inc();
            }
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot open log.access_file {}: {e}", path.display()),
            )
        })
}

/// The writer thread: drains the queue in batches, writes, flushes once
/// per batch. Ends when the gateway (every sender) is gone.
fn write_lines(
    rx: Receiver<Msg>,
    out: Box<dyn Write + Send>,
    format: LogFormat,
    labels: &Labels,
    metrics: &Metrics,
) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut buf: Vec<u8> = Vec::with_capacity(512);
    let mut clock = Clock::default();
    let mut failed = false;
    // Blocks while idle; once lines come, naps between drains.
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        loop {
            let mut any = false;
            while let Some(msg) = next.take().or_else(|| rx.try_recv().ok()) {
                any = true;
                match msg {
                    Msg::Line(line) => {
                        buf.clear();
                        match format {
                            LogFormat::Json => json_line(&mut buf, &line, labels, &mut clock),
                            LogFormat::Text => text_line(&mut buf, &line, labels, &mut clock),
                        }
                        buf.push(b'\n');
                        if out.write_all(&buf).is_err() {
                            metrics.access_log_dropped.inc();
                            if !failed {
                                failed = true;
                                tracing::error!("cannot write the access log; lines are dropped");
                            }
                        }
                    }
                    Msg::Flush(done) => {
                        let _ = out.flush();
                        let _ = done.send(());
                    }
                }
            }
            let _ = out.flush();
            if !any {
                break;
            }
            std::thread::sleep(WRITER_NAP);
        }
    }
    let _ = out.flush();
}

/// The writer's memory of the last second it wrote a timestamp for: lines
/// come in bursts within one second, and its date and time are the same.
#[derive(Default)]
struct Clock {
    second: u64,
    /// `2026-12-01T18:00:00`, for `second`.
    text: String,
}

/// RFC 3339 UTC with milliseconds: `2026-12-01T18:00:00.123Z`.
fn push_ts(buf: &mut Vec<u8>, ts: SystemTime, clock: &mut Clock) {
    use std::fmt::Write as _;
    let d = ts
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    if clock.text.is_empty() || clock.second != d.as_secs() {
        let t = time::OffsetDateTime::UNIX_EPOCH + Duration::from_secs(d.as_secs());
        clock.second = d.as_secs();
        clock.text.clear();
        let _ = write!(
            clock.text,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
        );
    }
    buf.extend_from_slice(clock.text.as_bytes());
    buf.push(b'.');
    push_padded3(buf, u64::from(d.subsec_millis()));
    buf.push(b'Z');
}

/// Milliseconds with microsecond precision: `0.412`.
fn push_ms(buf: &mut Vec<u8>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    push_int(buf, us / 1000);
    buf.push(b'.');
    push_padded3(buf, us % 1000);
}

/// `n` in decimal (`itoa`: two digits a step, no formatting machinery;
/// a line has a dozen numbers, ids signed, sizes unsigned).
fn push_int(buf: &mut Vec<u8>, n: impl itoa::Integer) {
    buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `n` (below 1000) in decimal, zero-padded to three digits.
fn push_padded3(buf: &mut Vec<u8>, n: u64) {
    let n = n % 1000;
    buf.extend_from_slice(&[
        b'0' + (n / 100) as u8,
        b'0' + (n / 10 % 10) as u8,
        b'0' + (n % 10) as u8,
    ]);
}

/// Whether `v` is printable ASCII with no `"` or `\`: the usual path or
/// id, copied as it is. One branch-free pass (the compiler vectorises
/// it), not a test and an early exit per byte.
fn is_plain(v: &[u8]) -> bool {
    v.iter().fold(true, |ok, &b| {
        ok & (b.wrapping_sub(0x20) < 0x5f) & (b != b'"') & (b != b'\\')
    })
}

/// A JSON string (quoted, escaped) of bytes that should be text.
fn push_json_str(buf: &mut Vec<u8>, v: &[u8]) {
    buf.push(b'"');
    if is_plain(v) {
        buf.extend_from_slice(v);
        buf.push(b'"');
        return;
    }
    for ch in String::from_utf8_lossy(v).chars() {
        match ch {
            '"' => buf.extend_from_slice(b"\\\""),
            '\\' => buf.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(buf, "\\u{:04x}", c as u32);
            }
            c => buf.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    buf.push(b'"');
}

/// The values both formats print, in field order; `None` is absent.
fn fields<'a>(line: &'a Line, labels: &'a Labels) -> [(&'static str, Value<'a>); 17] {
    let ex = &line.exchange;
    let auth = ex.auth.as_deref();
    let record = auth.map(|a| &a.record);
    [
        ("ts", Value::Ts(line.ts)),
        ("request_id", Value::Str(ex.request_id.as_bytes())),
        ("trace_id", Value::Trace(ex.trace.trace_id_hex())),
        ("method", Value::Str(ex.method.as_str().as_bytes())),
        ("path", Value::Str(ex.path.as_bytes())),
        ("route", Value::Str(labels.route(ex.route).as_bytes())),
        ("status", Value::Int(i64::from(ex.status))),
        (
            "code",
            ex.code.map_or(Value::None, |c| Value::Str(c.as_bytes())),
        ),
        ("duration_ms", Value::Ms(line.duration)),
        (
            "upstream",
            ex.upstream
                .and_then(|u| labels.upstreams.get(u))
                .map_or(Value::None, |u| Value::Str(u.as_bytes())),
        ),
        (
            "upstream_ms",
            ex.upstream_time.map_or(Value::None, Value::Ms),
        ),
        (
            "token_id",
            auth.map_or(Value::None, |a| Value::Str(a.token_id.as_bytes())),
        ),
        (
            "tenant_id",
            record
                .and_then(|r| r.tenant_id)
                .map_or(Value::None, Value::Int),
        ),
        (
            "account_id",
            record
                .and_then(|r| r.account_id)
                .map_or(Value::None, Value::Int),
        ),
        ("client_ip", Value::Ip(ex.client_ip)),
        (
            "bytes_in",
            Value::Int(i64::try_from(ex.bytes_in).unwrap_or(i64::MAX)),
        ),
        (
            "bytes_out",
            Value::Int(i64::try_from(ex.bytes_out).unwrap_or(i64::MAX)),
        ),
    ]
}

enum Value<'a> {
    None,
    Str(&'a [u8]),
    Int(i64),
    Ms(Duration),
    Ts(SystemTime),
    Trace([u8; 32]),
    Ip(IpAddr),
}

/// Each field's JSON lead-in, in [`fields`]' order: written as one piece
/// (a line is a few dozen short copies; three per key was a fifth of it).
const JSON_KEYS: [&str; 17] = [
    "{\"ts\":",
    ",\"request_id\":",
    ",\"trace_id\":",
    ",\"method\":",
    ",\"path\":",
    ",\"route\":",
    ",\"status\":",
    ",\"code\":",
    ",\"duration_ms\":",
    ",\"upstream\":",
    ",\"upstream_ms\":",
    ",\"token_id\":",
    ",\"tenant_id\":",
    ",\"account_id\":",
    ",\"client_ip\":",
    ",\"bytes_in\":",
    ",\"bytes_out\":",
];

fn json_line(buf: &mut Vec<u8>, line: &Line, labels: &Labels, clock: &mut Clock) {
    for (lead, (_, value)) in JSON_KEYS.iter().zip(fields(line, labels)) {
        buf.extend_from_slice(lead.as_bytes());
        match value {
            Value::None => buf.extend_from_slice(b"null"),
            Value::Str(s) => push_json_str(buf, s),
            Value::Int(n) => push_int(buf, n),
            Value::Ms(d) => push_ms(buf, d),
            Value::Ts(t) => {
                buf.push(b'"');
                push_ts(buf, t, clock);
                buf.push(b'"');
            }
            Value::Trace(t) => push_json_str(buf, &t),
            Value::Ip(ip) => {
                buf.push(b'"');
                push_ip(buf, ip);
                buf.push(b'"');
            }
        }
    }
    buf.push(b'}');
}

/// `ts method path status duration_ms` first, then `key=value` pairs.
fn text_line(buf: &mut Vec<u8>, line: &Line, labels: &Labels, clock: &mut Clock) {
    let push = |buf: &mut Vec<u8>, v: Value<'_>, clock: &mut Clock| match v {
        Value::None => buf.push(b'-'),
        // Paths and ids are visible ASCII already; anything else shows
        // escaped, so a line stays one line.
        Value::Str(s) if s.iter().all(u8::is_ascii_graphic) => buf.extend_from_slice(s),
        Value::Str(s) => {
            for ch in String::from_utf8_lossy(s).chars() {
                if ch.is_control() || ch == ' ' {
                    let _ = write!(buf, "\\x{:02x}", ch as u32);
                } else {
                    buf.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                }
            }
        }
        Value::Int(n) => push_int(buf, n),
        Value::Ms(d) => push_ms(buf, d),
        Value::Ts(t) => push_ts(buf, t, clock),
        Value::Trace(t) => buf.extend_from_slice(&t),
        Value::Ip(ip) => push_ip(buf, ip),
    };
    const LEAD: [&str; 5] = ["ts", "method", "path", "status", "duration_ms"];
    let mut all = fields(line, labels).map(|(k, v)| (k, Some(v)));
    for (i, key) in LEAD.iter().enumerate() {
        if i > 0 {
            buf.push(b' ');
        }
        let v = all
            .iter_mut()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.take());
        push(buf, v.unwrap_or(Value::None), clock);
    }
    buf.extend_from_slice(b"ms");
    for (key, value) in all {
        if let Some(value) = value {
            buf.push(b' ');
            buf.extend_from_slice(key.as_bytes());
            buf.push(b'=');
            push(buf, value, clock);
        }
    }
}

/// A response body (hyper's path) that finishes its [`Exchange`] when it
/// ends: sent to its end, or dropped (the client left). Counts the bytes
/// it passes as `bytes_out`.
pub struct Logged<B> {
    inner: B,
    done: Option<(Arc<Signals>, Exchange)>,
}

impl<B> std::fmt::Debug for Logged<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logged").finish_non_exhaustive()
    }
}

impl<B> Logged<B> {
    /// `inner`, finishing `exchange` on `signals` when it ends.
    pub fn new(inner: B, signals: Arc<Signals>, exchange: Exchange) -> Self {
        Self {
            inner,
            done: Some((signals, exchange)),
        }
    }

    fn finish(&mut self) {
        if let Some((signals, exchange)) = self.done.take() {
            signals.finish(exchange);
        }
    }
}

impl<B> Drop for Logged<B> {
    fn drop(&mut self) {
        self.finish();
    }
}

impl<B> http_body::Body for Logged<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some((_, ex))) = (frame.data_ref(), this.done.as_mut()) {
                    ex.bytes_out += data.len() as u64;
                }
            }
            Poll::Ready(None) => this.finish(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn line(route: RouteSeries, code: Option<&'static str>) -> Line {
        let mut ex = Exchange::new(
            HeaderValue::from_static("rid-1"),
            Trace::continue_or_start(None),
            Method::GET,
            "/api/x\"y".into(),
            "127.0.0.1".parse().unwrap(),
        );
        ex.route = route;
        ex.status = 404;
        ex.code = code;
        ex.upstream = Some(0);
        ex.upstream_time = Some(Duration::from_micros(1500));
        Line {
            exchange: ex,
            duration: Duration::from_micros(2412),
            ts: SystemTime::UNIX_EPOCH + Duration::from_millis(1_800_000_000_123),
        }
    }

    fn labels() -> Labels {
        Labels {
            routes: vec!["/api".into()],
            upstreams: vec!["mock".into()],
        }
    }

    #[test]
    fn json_lines_hold_every_field_in_order() {
        let mut buf = Vec::new();
        json_line(
            &mut buf,
            &line(RouteSeries::Route(0), Some("ROUTE_NOT_FOUND")),
            &labels(),
            &mut Clock::default(),
        );
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = vec![
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
        ];
        want.sort_unstable();
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(keys, want);
        assert_eq!(v["ts"], "2027-01-15T08:00:00.123Z");
        assert_eq!(v["path"], "/api/x\"y");
        assert_eq!(v["route"], "/api");
        assert_eq!(v["status"], 404);
        assert_eq!(v["code"], "ROUTE_NOT_FOUND");
        assert_eq!(v["duration_ms"], 2.412);
        assert_eq!(v["upstream"], "mock");
        assert_eq!(v["upstream_ms"], 1.5);
        assert_eq!(v["token_id"], serde_json::Value::Null);
        assert_eq!(v["client_ip"], "127.0.0.1");
        assert_eq!(v["trace_id"].as_str().unwrap().len(), 32);
    }

    #[test]
    fn json_lead_ins_name_the_fields_in_order() {
        let line = line(RouteSeries::None, None);
        let labels = labels();
        for (i, (lead, (key, _))) in JSON_KEYS.iter().zip(fields(&line, &labels)).enumerate() {
            let open = if i == 0 { '{' } else { ',' };
            assert_eq!(*lead, format!("{open}\"{key}\":"));
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_never_waits() {
        let metrics = Arc::new(Metrics::default());
        let signals = Signals::new(Arc::clone(&metrics), LogConfig::default(), &[], &[]);
        // A writer that never drains: room for one line.
        let (tx, _rx) = mpsc::sync_channel(1);
        assert!(signals.queue.set(tx).is_ok());
        for _ in 0..3 {
            signals.finish(line(RouteSeries::None, None).exchange);
        }
        assert_eq!(metrics.access_log_dropped.get(), 2);
        assert_eq!(metrics.series.requests(RouteSeries::None, 4), 3);
        // Off: nothing queued, nothing dropped, still counted.
        let off = LogConfig {
            access: false,
            ..LogConfig::default()
        };
        let signals = Signals::new(Arc::clone(&metrics), off, &[], &[]);
        assert_eq!(signals.keep_path("/a"), "");
        signals.finish(line(RouteSeries::None, None).exchange);
        assert_eq!(metrics.access_log_dropped.get(), 2);
        assert_eq!(metrics.series.requests(RouteSeries::None, 4), 4);
    }

    #[test]
    fn numbers_are_written_as_format_would() {
        for n in [0u64, 7, 10, 999, 1000, 123_456_789, u64::MAX] {
            let mut s = Vec::new();
            push_int(&mut s, n);
            assert_eq!(s, n.to_string().as_bytes());
            let mut s = Vec::new();
            push_padded3(&mut s, n % 1000);
            assert_eq!(s, format!("{:03}", n % 1000).as_bytes());
        }
        for n in [0i64, -1, i64::MIN, i64::MAX] {
            let mut s = Vec::new();
            push_int(&mut s, n);
            assert_eq!(s, n.to_string().as_bytes());
        }
        let mut s = Vec::new();
        push_ms(&mut s, Duration::from_micros(12_005));
        assert_eq!(s, b"12.005");
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "255.255.255.255",
            "::1",
            "2001:db8::8a2e:370:7334",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut s = Vec::new();
            push_ip(&mut s, ip);
            assert_eq!(s, ip.to_string().as_bytes());
        }
    }

    #[test]
    fn json_strings_escape_what_json_needs_and_copy_the_rest() {
        for v in [
            "/api/x",
            "",
            "a\"b",
            "back\\slash",
            "tab\there",
            "del\u{7f}",
            "é/ü",
            "~!",
        ] {
            let mut s = Vec::new();
            push_json_str(&mut s, v.as_bytes());
            let back: String = serde_json::from_slice(&s).unwrap();
            assert_eq!(back, v);
        }
        assert!(is_plain(b"/api/x~!") && is_plain(b""));
        for v in ["a\"b", "a\\b", "a\tb", "\u{7f}", "é"] {
            assert!(!is_plain(v.as_bytes()), "{v}");
        }
    }

    #[test]
    fn text_lines_read_left_to_right() {
        let mut buf = Vec::new();
        text_line(
            &mut buf,
            &line(RouteSeries::None, None),
            &labels(),
            &mut Clock::default(),
        );
        let buf = String::from_utf8(buf).unwrap();
        assert!(
            buf.starts_with(
                "2027-01-15T08:00:00.123Z GET /api/x\"y 404 2.412ms request_id=rid-1 trace_id="
            ),
            "{buf}"
        );
        assert!(
            buf.contains(" route=none code=- upstream=mock upstream_ms=1.500 token_id=- "),
            "{buf}"
        );
        assert!(!buf.contains('\n'));
    }
}
