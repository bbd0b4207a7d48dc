//! What the gateway tells its operator about each request: the metric
//! series and the access log, fed by one record.
//!
//! ```text
//!  hyper's path (gateway) ─┐                      ┌─▶ metrics: route series, upstream series (atomics, per thread)
//!  fast path ──────────────┼─▶ Exchange ─▶ finish ┤
//!  forward auth, seed flows┘   (after the         └─▶ access log: line formatted, appended to a bounded batch ─▶ writer thread ─▶ stdout or log.access_file
//!                               response's end)                  (full: dropped, counted)              (one write per batch)
//! ```
//!
//! Every request answered on the public listener, whichever codec served
//! it and whatever the answer (forwarded, refused, failed upstream, served
//! by forward auth or a seed flow), ends in one [`Exchange`] handed to
//! [`Signals::finish`]: the one place that decides what is counted and
//! what is logged. A request never waits for the log: its line is
//! formatted on its own thread (a few hundred bytes, no allocation once
//! the thread's buffer has grown) and appended to the batch under a lock
//! that is only ever held for a copy or a swap; a thread of its own swaps
//! the batch out and writes it, one `write` for many lines, napping
//! between batches. When the batch is full the line is dropped and
//! counted (`tokengate_access_log_dropped_total`).
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

use std::cell::RefCell;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method};

use crate::cache::AuthEntry;
use crate::fields::push_ip;
use crate::metrics::{Metrics, RouteSeries};
use crate::trace::{hex_into, Trace};

/// Bytes of access lines held between two writes; past it, lines are
/// dropped. With the writer writing them out every 10 ms, some 100
/// MB/s: 300,000 lines a second at their usual 350 bytes.
pub const ACCESS_BATCH: usize = 1 << 20;

/// How long the writer sleeps between batches while lines keep coming
/// (instead of being woken for each, which would cost a request a
/// syscall); an idle writer parks until the next line.
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
/// error, filtered by `RUST_LOG` as [`log_filter`] reads it, in `format`.
/// Text is coloured only when standard error is a terminal, so log files
/// and journals get no escape codes.
pub fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let spec = log_filter(std::env::var("RUST_LOG").ok().as_deref());
    let filter = EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new(log_filter(None)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

/// The diagnostic log's filter: `RUST_LOG` (`info` when unset or empty),
/// with rustls held to errors unless `RUST_LOG` names it or is already that
/// quiet (`error`, `off`). rustls warns of what a peer sends in its
/// handshake or alerts (a client naming the server by IP address, as curl
/// and wrk do when given one): a line per connection, written at a peer's
/// will, that tells the operator nothing to act on. A failed handshake is
/// logged by the gateway itself, at debug.
pub fn log_filter(rust_log: Option<&str>) -> String {
    let spec = rust_log
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("info");
    let is_rustls = |target: &str| {
        let target = target.split('[').next().unwrap_or_default().trim();
        target == "rustls" || target.starts_with("rustls::")
    };
    let leave = spec
        .split(',')
        .map(str::trim)
        .any(|d| match d.split_once('=') {
            Some((target, _)) => is_rustls(target),
            // A bare level sets every target's; a bare target enables it.
            None => {
                matches!(d.to_ascii_lowercase().as_str(), "off" | "error" | "0" | "1")
                    || is_rustls(d)
            }
        });
    match leave {
        true => spec.to_owned(),
        false => format!("{spec},rustls=error"),
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
    pub path: KeptPath,
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
    /// A request whose head was read at `started`, not yet routed.
    pub fn new(
        started: Instant,
        request_id: HeaderValue,
        trace: Trace,
        method: Method,
        path: KeptPath,
        client_ip: IpAddr,
    ) -> Self {
        Self {
            started,
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

/// Path bytes a [`KeptPath`] holds without allocating: nearly every path.
const INLINE_PATH: usize = 62;

/// The request path, kept for its access line: inline when short, so that
/// keeping it costs a request no allocation (nor the free after).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeptPath(Kept);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kept {
    Inline { len: u8, bytes: [u8; INLINE_PATH] },
    Heap(Box<[u8]>),
}

impl KeptPath {
    /// No path: no access line will be written.
    pub const EMPTY: Self = Self(Kept::Inline {
        len: 0,
        bytes: [0; INLINE_PATH],
    });

    fn new(path: &str) -> Self {
        let path = path.as_bytes();
        match u8::try_from(path.len()) {
            Ok(len) if path.len() <= INLINE_PATH => {
                let mut bytes = [0; INLINE_PATH];
                bytes[..path.len()].copy_from_slice(path);
                Self(Kept::Inline { len, bytes })
            }
            _ => Self(Kept::Heap(path.into())),
        }
    }

    /// The path's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Kept::Inline { len, bytes } => bytes.get(..usize::from(*len)).unwrap_or_default(),
            Kept::Heap(bytes) => bytes,
        }
    }
}

/// One access line's inputs: the exchange and what `finish` measured.
struct Line<'a> {
    exchange: &'a Exchange,
    duration: Duration,
    ts: SystemTime,
}

/// The access log once its writer runs: the batch lines are appended to
/// and the thread that writes it.
struct AccessLog {
    batch: Arc<Batch>,
    writer: std::thread::Thread,
}

/// Lines formatted and waiting for the writer, shared by every request
/// thread and the writer.
struct Batch {
    /// Held by a request thread only to append one formatted line, by the
    /// writer only to swap the batch out: never while formatting or
    /// writing, so a request never waits behind either.
    pending: Mutex<Pending>,
    /// Bytes `pending` may hold; a line that would pass it is dropped.
    limit: usize,
    /// Set when the gateway's [`Signals`] is gone: the writer writes what
    /// is left and ends.
    closed: AtomicBool,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// Lines in `bytes`, counted as dropped if writing them fails.
    lines: u64,
    /// [`Signals::flush`] callers, answered once `bytes` is written.
    flushes: Vec<mpsc::Sender<()>>,
}

impl Batch {
    fn new(limit: usize) -> Self {
        Self {
            pending: Mutex::new(Pending::default()),
            limit,
            closed: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        // Nothing panics while holding it; a poisoned batch is still whole.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `line`, unless the batch is full. Wakes the writer for the
    /// first line of a batch (an idle writer is parked; a busy one is
    /// napping and finds the token set when it next looks).
    fn push(&self, line: &[u8], writer: &std::thread::Thread) -> bool {
        let mut pending = self.lock();
        if pending.bytes.len() + line.len() > self.limit {
            return false;
        }
        let first = pending.bytes.is_empty();
        pending.bytes.extend_from_slice(line);
        pending.lines += 1;
        drop(pending);
        if first {
            writer.unpark();
        }
        true
    }
}

/// The metric series and the access log, fed by [`Signals::finish`].
pub struct Signals {
    metrics: Arc<Metrics>,
    config: LogConfig,
    /// Route labels and upstream names, as lines show them.
    labels: Labels,
    /// Set once the writer runs ([`Signals::open_access_log`]).
    log: OnceLock<AccessLog>,
}

impl std::fmt::Debug for Signals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signals")
            .field("config", &self.config)
            .finish()
    }
}

impl Drop for Signals {
    /// Lets the writer write what is left and end.
    fn drop(&mut self) {
        if let Some(log) = self.log.get() {
            log.batch.closed.store(true, Ordering::Release);
            log.writer.unpark();
        }
    }
}

/// A name from the config (route label, upstream name) as each format
/// writes it, escaped and (JSON) quoted once, not per line.
#[derive(Debug)]
struct Label {
    text: Vec<u8>,
    json: Vec<u8>,
}

impl Label {
    fn new(name: &str) -> Self {
        let (mut text, mut json) = (Vec::new(), Vec::new());
        push_text_str(&mut text, name.as_bytes());
        push_json_str(&mut json, name.as_bytes());
        Self { text, json }
    }
}

/// What a line's indexes name.
#[derive(Debug)]
struct Labels {
    routes: Vec<Label>,
    upstreams: Vec<Label>,
    /// The labels of the series that are not routes.
    none: Label,
    token_api: Label,
    forward_auth: Label,
}

impl Labels {
    fn new(routes: &[&str], upstreams: &[&str]) -> Self {
        Self {
            routes: routes.iter().map(|s| Label::new(s)).collect(),
            upstreams: upstreams.iter().map(|s| Label::new(s)).collect(),
            none: Label::new("none"),
            token_api: Label::new("token_api"),
            forward_auth: Label::new("forward_auth"),
        }
    }

    fn route(&self, r: RouteSeries) -> &Label {
        match r {
            RouteSeries::Route(i) => self.routes.get(i).unwrap_or(&self.none),
            RouteSeries::None => &self.none,
            RouteSeries::TokenApi => &self.token_api,
            RouteSeries::ForwardAuth => &self.forward_auth,
        }
    }
}

/// Each request thread's line buffer and clock: a line is formatted here,
/// then copied into the batch in one piece.
struct Scratch {
    buf: Vec<u8>,
    clock: Clock,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = const {
        RefCell::new(Scratch {
            buf: Vec::new(),
            clock: Clock { second: None, text: [0; 19] },
        })
    };
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
        Self {
            metrics,
            config,
            labels: Labels::new(routes, upstreams),
            log: OnceLock::new(),
        }
    }

    /// The request path for the record: copied when an access line will
    /// be written (inline when short), empty when not.
    pub fn keep_path(&self, path: &str) -> KeptPath {
        if self.config.access {
            KeptPath::new(path)
        } else {
            KeptPath::EMPTY
        }
    }

    /// Opens the access log's destination and starts its writer (once;
    /// later calls do nothing). Fails when `log.access_file` cannot be
    /// opened, naming it.
    pub fn open_access_log(&self) -> std::io::Result<()> {
        if !self.config.access || self.log.get().is_some() {
            return Ok(());
        }
        let out: Box<dyn Write + Send> = match &self.config.access_file {
            Some(path) => Box::new(open_append(path)?),
            None => Box::new(std::io::stdout()),
        };
        let batch = Arc::new(Batch::new(ACCESS_BATCH));
        let metrics = Arc::clone(&self.metrics);
        let theirs = Arc::clone(&batch);
        let writer = std::thread::Builder::new()
            .name("tokengate-access-log".into())
            .spawn(move || write_lines(&theirs, out, &metrics))?;
        let writer = writer.thread().clone();
        if let Err(lost) = self.log.set(AccessLog { batch, writer }) {
            // Lost a race with another caller: its writer serves; this
            // one ends.
            lost.batch.closed.store(true, Ordering::Release);
            lost.writer.unpark();
        }
        Ok(())
    }

    /// Waits (up to `limit`) until every line so far is written: at
    /// shutdown, so the last requests' lines are not lost.
    pub fn flush(&self, limit: Duration) {
        let Some(log) = self.log.get() else {
            return;
        };
        let (tx, rx) = mpsc::channel();
        log.batch.lock().flushes.push(tx);
        log.writer.unpark();
        let _ = rx.recv_timeout(limit);
    }

    /// Counts and logs a finished request: the one rule for both codecs.
    pub fn finish(&self, exchange: Exchange) {
        self.finish_at(exchange, Instant::now());
    }

    /// [`Self::finish`] for an exchange that ended at `done` (a codec that
    /// has just read the clock).
    pub fn finish_at(&self, mut exchange: Exchange, done: Instant) {
        let duration = done.saturating_duration_since(exchange.started);
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
        let Some(log) = self.log.get() else {
            return;
        };
        let ts = SystemTime::UNIX_EPOCH + crate::clock::since_epoch(exchange.started);
        let line = Line {
            exchange: &exchange,
            duration,
            ts,
        };
        // The line is formatted here (the exchange's memory is freed by
        // the thread that allocated it) and only the bytes cross to the
        // writer. `try_with` fails only while the thread is ending.
        let queued = SCRATCH
            .try_with(|scratch| {
                let Ok(mut scratch) = scratch.try_borrow_mut() else {
                    return false;
                };
                let Scratch { buf, clock } = &mut *scratch;
                buf.clear();
                match self.config.format {
                    LogFormat::Json => json_line(buf, &line, &self.labels, clock),
                    LogFormat::Text => text_line(buf, &line, &self.labels, clock),
                }
                buf.push(b'\n');
                log.batch.push(buf, &log.writer)
            })
            .unwrap_or(false);
        if !queued {
            self.metrics.access_log_dropped.inc();
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

/// The writer thread: swaps the batch out, writes it (one `write` for
/// many lines), answers flushes, naps while lines keep coming, parks
/// while none do. Ends once the gateway's [`Signals`] is gone and the
/// batch is empty.
fn write_lines(batch: &Batch, mut out: Box<dyn Write + Send>, metrics: &Metrics) {
    let mut bytes: Vec<u8> = Vec::new();
    let mut failed = false;
    loop {
        let (lines, flushes) = {
            let mut pending = batch.lock();
            std::mem::swap(&mut pending.bytes, &mut bytes);
            (
                std::mem::take(&mut pending.lines),
                std::mem::take(&mut pending.flushes),
            )
        };
        if !bytes.is_empty() {
            if out.write_all(&bytes).and_then(|()| out.flush()).is_err() {
                metrics.access_log_dropped.add(lines);
                if !failed {
                    failed = true;
                    tracing::error!("cannot write the access log; lines are dropped");
                }
            }
            bytes.clear();
        }
        for done in flushes {
            let _ = done.send(());
        }
        if lines > 0 {
            std::thread::sleep(WRITER_NAP);
        } else if batch.closed.load(Ordering::Acquire) {
            return;
        } else {
            // Woken by the next batch's first line, a flush or the end
            // (or spuriously: the loop looks again).
            std::thread::park();
        }
    }
}

/// The last second a thread wrote a timestamp for: lines come in bursts
/// within one second, and its date and time are the same.
struct Clock {
    second: Option<u64>,
    /// `2026-12-01T18:00:00`, for `second`.
    text: [u8; 19],
}

/// RFC 3339 UTC with milliseconds: `2026-12-01T18:00:00.123Z`.
fn push_ts(buf: &mut Vec<u8>, ts: SystemTime, clock: &mut Clock) {
    use std::fmt::Write as _;
    let d = ts
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    if clock.second != Some(d.as_secs()) {
        let t = time::OffsetDateTime::UNIX_EPOCH + Duration::from_secs(d.as_secs());
        clock.second = Some(d.as_secs());
        let mut text = String::with_capacity(19);
        let _ = write!(
            text,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
        );
        // Years past 9999 (or before 0) would not fit: never a clock's.
        if let Ok(text) = text.as_bytes().try_into() {
            clock.text = text;
        }
    }
    buf.extend_from_slice(&clock.text);
    buf.push(b'.');
    push_padded3(buf, u64::from(d.subsec_millis()));
    buf.push(b'Z');
}

/// Milliseconds with microsecond precision: `0.412` (in 64 bits: a
/// `u128` of microseconds costs a division routine).
fn push_ms(buf: &mut Vec<u8>, d: Duration) {
    let ms = d
        .as_secs()
        .saturating_mul(1000)
        .saturating_add(u64::from(d.subsec_millis()));
    push_int(buf, ms);
    buf.push(b'.');
    push_padded3(buf, u64::from(d.subsec_micros() % 1000));
}

/// A number in a line, in decimal: ids signed, sizes and statuses not.
trait Decimal: itoa::Integer + Copy {
    /// The value when it is in `0..1000` (nearly every one in a line).
    fn small(self) -> Option<u16>;
}

impl Decimal for u64 {
    fn small(self) -> Option<u16> {
        u16::try_from(self).ok().filter(|n| *n < 1000)
    }
}

impl Decimal for u16 {
    fn small(self) -> Option<u16> {
        Some(self).filter(|n| *n < 1000)
    }
}

impl Decimal for i64 {
    fn small(self) -> Option<u16> {
        u16::try_from(self).ok().filter(|n| *n < 1000)
    }
}

/// `n` in decimal: below 1000 digit by digit, else `itoa` (two digits a
/// step, no formatting machinery) and one copy.
#[inline]
fn push_int(buf: &mut Vec<u8>, n: impl Decimal) {
    match n.small() {
        Some(n) if n < 10 => buf.push(b'0' + n as u8),
        Some(n) if n < 100 => {
            buf.extend_from_slice(&[b'0' + (n / 10) as u8, b'0' + (n % 10) as u8])
        }
        Some(n) => push_padded3(buf, u64::from(n)),
        None => buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
    }
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
/// id, copied as it is. Eight bytes a step, branch-free ([`unplain`]),
/// the last eight overlapping the ones before (no copy of a tail); a
/// short value byte by byte.
fn is_plain(v: &[u8]) -> bool {
    let Some(last) = v.last_chunk::<8>() else {
        return v
            .iter()
            .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
    };
    let mut chunks = v.chunks_exact(8);
    let mut bad = unplain(u64::from_le_bytes(*last));
    for chunk in &mut chunks {
        // Always eight bytes; were it not, a zero byte says "not plain".
        bad |= unplain(u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8])));
    }
    bad == 0
}

/// Non-zero when a byte of `x` is below `0x20`, above `0x7e`, `"` or
/// `\` (the "has less than" and "has more than" tests of Bit Twiddling
/// Hacks, exact as a whole though not per byte).
fn unplain(x: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x & HIGH;
    below(x, 0x20)
        | ((x.wrapping_add(ONES) | x) & HIGH)
        | below(x ^ (ONES * u64::from(b'"')), 1)
        | below(x ^ (ONES * u64::from(b'\\')), 1)
}

/// A JSON string (quoted, escaped) of bytes that should be text.
fn push_json_str(buf: &mut Vec<u8>, v: &[u8]) {
    if is_plain(v) {
        buf.reserve(v.len() + 2);
        buf.push(b'"');
        buf.extend_from_slice(v);
        buf.push(b'"');
        return;
    }
    buf.push(b'"');
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

/// A text-format value: paths and ids are visible ASCII already; anything
/// else shows escaped, so a line stays one line.
fn push_text_str(buf: &mut Vec<u8>, v: &[u8]) {
    if v.iter().all(u8::is_ascii_graphic) {
        buf.extend_from_slice(v);
        return;
    }
    for ch in String::from_utf8_lossy(v).chars() {
        if ch.is_control() || ch == ' ' {
            let _ = write!(buf, "\\x{:02x}", ch as u32);
        } else {
            buf.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
        }
    }
}

/// A field's name, as each format leads into its value.
struct Key {
    name: &'static str,
    /// JSON's lead-in (`,"name":`), written as one piece: three copies
    /// per key were a fifth of a line.
    json: &'static str,
    /// One of the text format's first five (unnamed) values.
    lead: bool,
}

macro_rules! key {
    ($name:literal) => {
        key!($name, false)
    };
    ($name:literal, $lead:literal) => {
        &Key {
            name: $name,
            json: concat!(",\"", $name, "\":"),
            lead: $lead,
        }
    };
}

/// What a format does with each kind of value; `None` is absent.
trait Fields {
    fn ts(&mut self, key: &Key, t: SystemTime);
    fn str(&mut self, key: &Key, v: Option<&[u8]>);
    /// A trace id, in lower-case hex.
    fn trace(&mut self, key: &Key, id: &[u8; 16]);
    fn label(&mut self, key: &Key, v: Option<&Label>);
    fn int(&mut self, key: &Key, n: Option<impl Decimal>);
    fn ms(&mut self, key: &Key, d: Option<Duration>);
    fn ip(&mut self, key: &Key, ip: IpAddr);
}

/// Every field of a line, in order (DESIGN section 12), to `out`: the one
/// list both formats follow.
fn fields(line: &Line<'_>, labels: &Labels, out: &mut impl Fields) {
    let ex = line.exchange;
    let auth = ex.auth.as_deref();
    let record = auth.map(|a| &a.record);
    out.ts(
        &Key {
            name: "ts",
            json: "{\"ts\":",
            lead: true,
        },
        line.ts,
    );
    out.str(key!("request_id"), Some(ex.request_id.as_bytes()));
    out.trace(key!("trace_id"), &ex.trace.trace_id);
    out.str(key!("method", true), Some(ex.method.as_str().as_bytes()));
    out.str(key!("path", true), Some(ex.path.as_bytes()));
    out.label(key!("route"), Some(labels.route(ex.route)));
    out.int(key!("status", true), Some(ex.status));
    out.str(key!("code"), ex.code.map(str::as_bytes));
    out.ms(key!("duration_ms", true), Some(line.duration));
    out.label(
        key!("upstream"),
        ex.upstream.and_then(|u| labels.upstreams.get(u)),
    );
    out.ms(key!("upstream_ms"), ex.upstream_time);
    out.str(key!("token_id"), auth.map(|a| a.token_id.as_bytes()));
    out.int(key!("tenant_id"), record.and_then(|r| r.tenant_id));
    out.int(key!("account_id"), record.and_then(|r| r.account_id));
    out.ip(key!("client_ip"), ex.client_ip);
    out.int(key!("bytes_in"), Some(ex.bytes_in));
    out.int(key!("bytes_out"), Some(ex.bytes_out));
}

/// One JSON object: `{"ts":"…","request_id":"…",…}`.
struct Json<'a> {
    buf: &'a mut Vec<u8>,
    clock: &'a mut Clock,
}

impl Json<'_> {
    #[inline]
    fn lead(&mut self, key: &Key, present: bool) -> bool {
        self.buf.extend_from_slice(key.json.as_bytes());
        if !present {
            self.buf.extend_from_slice(b"null");
        }
        present
    }
}

impl Fields for Json<'_> {
    #[inline]
    fn ts(&mut self, key: &Key, t: SystemTime) {
        self.lead(key, true);
        self.buf.push(b'"');
        push_ts(self.buf, t, self.clock);
        self.buf.push(b'"');
    }
    #[inline]
    fn str(&mut self, key: &Key, v: Option<&[u8]>) {
        if let (true, Some(v)) = (self.lead(key, v.is_some()), v) {
            push_json_str(self.buf, v);
        }
    }
    #[inline]
    fn trace(&mut self, key: &Key, id: &[u8; 16]) {
        self.lead(key, true);
        let mut quoted = [b'"'; 34];
        hex_into(id, &mut quoted[1..33]);
        self.buf.extend_from_slice(&quoted);
    }
    #[inline]
    fn label(&mut self, key: &Key, v: Option<&Label>) {
        if let (true, Some(v)) = (self.lead(key, v.is_some()), v) {
            self.buf.extend_from_slice(&v.json);
        }
    }
    #[inline]
    fn int(&mut self, key: &Key, n: Option<impl Decimal>) {
        if let (true, Some(n)) = (self.lead(key, n.is_some()), n) {
            push_int(self.buf, n);
        }
    }
    #[inline]
    fn ms(&mut self, key: &Key, d: Option<Duration>) {
        if let (true, Some(d)) = (self.lead(key, d.is_some()), d) {
            push_ms(self.buf, d);
        }
    }
    #[inline]
    fn ip(&mut self, key: &Key, ip: IpAddr) {
        self.lead(key, true);
        self.buf.push(b'"');
        push_ip(self.buf, ip);
        self.buf.push(b'"');
    }
}

fn json_line(buf: &mut Vec<u8>, line: &Line<'_>, labels: &Labels, clock: &mut Clock) {
    fields(line, labels, &mut Json { buf, clock });
    buf.push(b'}');
}

/// The text format, in two passes over [`fields`]: the lead values
/// (`ts method path status duration`, space-separated), then the others
/// as ` key=value`; absent values are `-`.
struct Text<'a> {
    buf: &'a mut Vec<u8>,
    clock: &'a mut Clock,
    /// Which pass: the lead values, or the named ones.
    leads: bool,
}

impl Text<'_> {
    /// Whether this pass writes `key`, after writing what goes before
    /// its value (`-` and `false` for an absent one).
    fn lead(&mut self, key: &Key, present: bool) -> bool {
        if key.lead != self.leads {
            return false;
        }
        if self.leads {
            if key.name != "ts" {
                self.buf.push(b' ');
            }
        } else {
            self.buf.push(b' ');
            self.buf.extend_from_slice(key.name.as_bytes());
            self.buf.push(b'=');
        }
        if !present {
            self.buf.push(b'-');
        }
        present
    }
}

impl Fields for Text<'_> {
    fn ts(&mut self, key: &Key, t: SystemTime) {
        if self.lead(key, true) {
            push_ts(self.buf, t, self.clock);
        }
    }
    fn str(&mut self, key: &Key, v: Option<&[u8]>) {
        if let (true, Some(v)) = (self.lead(key, v.is_some()), v) {
            push_text_str(self.buf, v);
        }
    }
    fn trace(&mut self, key: &Key, id: &[u8; 16]) {
        if self.lead(key, true) {
            let mut text = [0; 32];
            hex_into(id, &mut text);
            self.buf.extend_from_slice(&text);
        }
    }
    fn label(&mut self, key: &Key, v: Option<&Label>) {
        if let (true, Some(v)) = (self.lead(key, v.is_some()), v) {
            self.buf.extend_from_slice(&v.text);
        }
    }
    fn int(&mut self, key: &Key, n: Option<impl Decimal>) {
        if let (true, Some(n)) = (self.lead(key, n.is_some()), n) {
            push_int(self.buf, n);
        }
    }
    fn ms(&mut self, key: &Key, d: Option<Duration>) {
        if let (true, Some(d)) = (self.lead(key, d.is_some()), d) {
            push_ms(self.buf, d);
        }
    }
    fn ip(&mut self, key: &Key, ip: IpAddr) {
        if self.lead(key, true) {
            push_ip(self.buf, ip);
        }
    }
}

/// `ts method path status duration_ms` first, then `key=value` pairs.
fn text_line(buf: &mut Vec<u8>, line: &Line<'_>, labels: &Labels, clock: &mut Clock) {
    let mut text = Text {
        buf,
        clock,
        leads: true,
    };
    fields(line, labels, &mut text);
    text.buf.extend_from_slice(b"ms");
    text.leads = false;
    fields(line, labels, &mut text);
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

    #[test]
    fn the_log_filter_holds_rustls_to_errors_unless_named() {
        assert_eq!(log_filter(None), "info,rustls=error");
        assert_eq!(log_filter(Some("  ")), "info,rustls=error");
        assert_eq!(log_filter(Some("debug")), "debug,rustls=error");
        assert_eq!(
            log_filter(Some("warn,tokengate=debug")),
            "warn,tokengate=debug,rustls=error"
        );
        // Named: as asked.
        assert_eq!(log_filter(Some("rustls=debug")), "rustls=debug");
        assert_eq!(
            log_filter(Some("info,rustls::server=warn")),
            "info,rustls::server=warn"
        );
        assert_eq!(log_filter(Some("info,rustls")), "info,rustls");
        // Another crate whose name holds it is not it.
        assert_eq!(
            log_filter(Some("info,tokio_rustls=trace")),
            "info,tokio_rustls=trace,rustls=error"
        );
        // Already that quiet: nothing added (`off` must stay off).
        assert_eq!(log_filter(Some("off")), "off");
        assert_eq!(log_filter(Some("error")), "error");
        // Each is a filter tracing accepts.
        for spec in [
            None,
            Some("debug"),
            Some("warn,tokengate=debug"),
            Some("off"),
        ] {
            assert!(tracing_subscriber::EnvFilter::try_new(log_filter(spec)).is_ok());
        }
    }

    fn exchange(route: RouteSeries, code: Option<&'static str>) -> Exchange {
        let mut ex = Exchange::new(
            Instant::now(),
            HeaderValue::from_static("rid-1"),
            Trace::continue_or_start(None),
            Method::GET,
            KeptPath::new("/api/x\"y"),
            "127.0.0.1".parse().unwrap(),
        );
        ex.route = route;
        ex.status = 404;
        ex.code = code;
        ex.upstream = Some(0);
        ex.upstream_time = Some(Duration::from_micros(1500));
        ex
    }

    fn line(exchange: &Exchange) -> Line<'_> {
        Line {
            exchange,
            duration: Duration::from_micros(2412),
            ts: SystemTime::UNIX_EPOCH + Duration::from_millis(1_800_000_000_123),
        }
    }

    fn labels() -> Labels {
        Labels::new(&["/api"], &["mock"])
    }

    fn clock() -> Clock {
        Clock {
            second: None,
            text: [0; 19],
        }
    }

    const KEYS: [&str; 17] = [
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

    #[test]
    fn json_lines_hold_every_field_in_order() {
        let mut buf = Vec::new();
        let ex = exchange(RouteSeries::Route(0), Some("ROUTE_NOT_FOUND"));
        json_line(&mut buf, &line(&ex), &labels(), &mut clock());
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = KEYS.to_vec();
        want.sort_unstable();
        keys.sort_unstable();
        assert_eq!(keys, want);
        // In order: each key's lead-in after the one before.
        let text = String::from_utf8(buf.clone()).unwrap();
        let at: Vec<usize> = KEYS
            .iter()
            .map(|k| text.find(&format!("\"{k}\":")).unwrap())
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert_eq!(v["ts"], "2027-01-15T08:00:00.123Z");
        assert_eq!(v["request_id"], "rid-1");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["path"], "/api/x\"y");
        assert_eq!(v["route"], "/api");
        assert_eq!(v["status"], 404);
        assert_eq!(v["code"], "ROUTE_NOT_FOUND");
        assert_eq!(v["duration_ms"], 2.412);
        assert_eq!(v["upstream"], "mock");
        assert_eq!(v["upstream_ms"], 1.5);
        assert_eq!(v["token_id"], serde_json::Value::Null);
        assert_eq!(v["tenant_id"], serde_json::Value::Null);
        assert_eq!(v["client_ip"], "127.0.0.1");
        assert_eq!(v["bytes_in"], 0);
        assert_eq!(v["trace_id"].as_str().unwrap().len(), 32);
        // Absent values, and labels that need escaping.
        let mut buf = Vec::new();
        let mut ex = exchange(RouteSeries::Route(0), None);
        ex.upstream = None;
        ex.upstream_time = None;
        let odd = Labels::new(&["/a\"b"], &[]);
        json_line(&mut buf, &line(&ex), &odd, &mut clock());
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["route"], "/a\"b");
        assert_eq!(v["code"], serde_json::Value::Null);
        assert_eq!(v["upstream"], serde_json::Value::Null);
        assert_eq!(v["upstream_ms"], serde_json::Value::Null);
    }

    #[test]
    fn a_full_batch_drops_and_counts_and_never_waits() {
        let metrics = Arc::new(Metrics::default());
        let signals = Signals::new(Arc::clone(&metrics), LogConfig::default(), &[], &[]);
        // A writer that never writes: room for one line, not two.
        let mut one = Vec::new();
        let ex = exchange(RouteSeries::None, None);
        text_line(&mut one, &line(&ex), &signals.labels, &mut clock());
        let batch = Arc::new(Batch::new(one.len() * 3 / 2));
        let log = AccessLog {
            batch: Arc::clone(&batch),
            writer: std::thread::current(),
        };
        assert!(signals.log.set(log).is_ok());
        for _ in 0..3 {
            signals.finish(exchange(RouteSeries::None, None));
        }
        assert_eq!(metrics.access_log_dropped.get(), 2);
        assert_eq!(metrics.series.requests(RouteSeries::None, 4), 3);
        {
            let pending = batch.lock();
            assert_eq!(pending.lines, 1);
            assert_eq!(pending.bytes.iter().filter(|b| **b == b'\n').count(), 1);
        }
        // Off: nothing queued, nothing dropped, still counted.
        let off = LogConfig {
            access: false,
            ..LogConfig::default()
        };
        let signals = Signals::new(Arc::clone(&metrics), off, &[], &[]);
        assert_eq!(signals.keep_path("/a"), KeptPath::EMPTY);
        signals.finish(exchange(RouteSeries::None, None));
        assert_eq!(metrics.access_log_dropped.get(), 2);
        assert_eq!(metrics.series.requests(RouteSeries::None, 4), 4);
    }

    #[test]
    fn the_writer_writes_flushes_and_ends_with_its_signals() {
        let dir = std::env::temp_dir().join(format!("tg-signals-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let _ = std::fs::remove_file(&path);
        let config = LogConfig {
            format: LogFormat::Json,
            access: true,
            access_file: Some(path.clone()),
        };
        let metrics = Arc::new(Metrics::default());
        let signals = Signals::new(Arc::clone(&metrics), config, &[], &[]);
        signals.open_access_log().unwrap();
        for _ in 0..3 {
            signals.finish(exchange(RouteSeries::None, None));
        }
        signals.flush(Duration::from_secs(5));
        let lines = std::fs::read_to_string(&path).unwrap();
        assert_eq!(lines.lines().count(), 3, "{lines}");
        for l in lines.lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["status"], 404);
        }
        // Lines not yet flushed when the gateway goes are still written.
        let writer = signals.log.get().unwrap().writer.clone();
        signals.finish(exchange(RouteSeries::None, None));
        let batch = Arc::clone(&signals.log.get().unwrap().batch);
        drop(signals);
        for _ in 0..500 {
            if Arc::strong_count(&batch) == 1 {
                break;
            }
            writer.unpark();
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(Arc::strong_count(&batch), 1, "the writer has ended");
        let lines = std::fs::read_to_string(&path).unwrap();
        assert_eq!(lines.lines().count(), 4, "{lines}");
        assert_eq!(metrics.access_log_dropped.get(), 0);
        let _ = std::fs::remove_dir_all(&dir);
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
        for n in [0u16, 9, 99, 100, 404, 999, 1000, u16::MAX] {
            let mut s = Vec::new();
            push_int(&mut s, n);
            assert_eq!(s, n.to_string().as_bytes());
        }
        for n in [0i64, -1, -999, 42, 999, 1000, i64::MIN, i64::MAX] {
            let mut s = Vec::new();
            push_int(&mut s, n);
            assert_eq!(s, n.to_string().as_bytes());
        }
        for (us, ms) in [
            (12_005, "12.005"),
            (0, "0.000"),
            (7_300_001_999, "7300001.999"),
        ] {
            let mut s = Vec::new();
            push_ms(&mut s, Duration::from_micros(us));
            assert_eq!(s, ms.as_bytes());
        }
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
        // Every byte, at every place of a word and of the tail.
        let naive = |v: &[u8]| {
            v.iter()
                .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
        };
        for b in 0..=255u8 {
            for at in 0..17 {
                let mut v = *b"/api/v1/orders/xy";
                v[at] = b;
                assert_eq!(is_plain(&v), naive(&v), "{b:#x} at {at}");
                assert_eq!(
                    is_plain(&v[..at + 1]),
                    naive(&v[..at + 1]),
                    "{b:#x} at {at}"
                );
            }
        }
        for v in ["a\"b", "a\\b", "a\tb", "\u{7f}", "é"] {
            assert!(!is_plain(v.as_bytes()), "{v}");
        }
    }

    #[test]
    fn kept_paths_are_the_path_inline_or_not() {
        for n in [0, 1, INLINE_PATH - 1, INLINE_PATH, INLINE_PATH + 1, 300] {
            let path = "/".to_owned() + &"x".repeat(n);
            let kept = KeptPath::new(&path);
            assert_eq!(kept.as_bytes(), path.as_bytes());
            assert_eq!(
                matches!(kept.0, Kept::Heap(_)),
                path.len() > INLINE_PATH,
                "{n}"
            );
        }
        assert_eq!(KeptPath::EMPTY.as_bytes(), b"");
    }

    #[test]
    fn text_lines_read_left_to_right() {
        let mut buf = Vec::new();
        let ex = exchange(RouteSeries::None, None);
        text_line(&mut buf, &line(&ex), &labels(), &mut clock());
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
