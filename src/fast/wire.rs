//! HTTP/1.1 on the wire, for the fast path: request and response heads
//! parsed by `httparse` into `http` types, heads written back out, and the
//! framing that says where a response body ends.
//!
//! Parsing is strict in one direction only: whatever a request does that
//! the fast path does not handle (see [`parse_request`]) is reported as
//! [`Parsed::Unsupported`], and the connection goes to hyper, which gives
//! it the full treatment (including the 400 for a malformed head).

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName};
use http::uri::PathAndQuery;
use http::{Method, StatusCode};

use crate::fields::{connection_tokens, is_hop_by_hop_bytes, is_name, RequestFields};
use crate::rules::{response_drops, RequestSink};

/// Most header fields in a request head the fast path takes; more go to
/// hyper.
pub const MAX_HEADERS: usize = 64;

/// Most header fields in a response head: hyper's client limit, so an
/// upstream answer is not refused here that the hyper path would pass.
pub const MAX_RESPONSE_HEADERS: usize = 100;

/// Longest field name `http` accepts (`HeaderName`'s limit, which
/// `httparse` does not have); a longer one goes to hyper, which refuses it.
const MAX_NAME_LEN: usize = 65535;

/// Longest request body the fast path buffers whole; longer bodies stream
/// through hyper.
pub const MAX_BUFFERED_BODY: u64 = 64 * 1024;

/// Longest chunk-size line (with extensions) or trailer line accepted in a
/// chunked response, in bytes before its CRLF.
pub const MAX_CHUNK_LINE: usize = 4096;

/// What became of an attempt to parse a head.
#[derive(Debug)]
pub enum Parsed<T> {
    /// A whole head.
    Complete(T),
    /// More bytes are needed.
    Partial,
    /// Not for the fast path (requests), or not valid (responses).
    Unsupported,
}

/// A request head the fast path forwards. Its fields stay as they came,
/// as offsets into the request's bytes: no `HeaderMap` is built for a
/// request, and the policy steps read it through [`RequestFields`].
#[derive(Debug)]
pub struct RequestHead {
    /// The method.
    pub method: Method,
    /// The path and query of the request target, as sent.
    pub target: PathAndQuery,
    /// Length of the head in bytes, up to and including the blank line.
    pub head_len: usize,
    /// `Content-Length` (0 when absent).
    pub body_len: u64,
    /// Whether the client sent a `Content-Length`.
    pub has_length: bool,
    /// The client asked to close the connection after this exchange.
    pub close: bool,
    /// The bytes the fields are in.
    buf: Bytes,
    /// Each field's name and value, as offsets into `buf`.
    fields: Vec<Field>,
    /// Every field name's [`name_bit`]: most names a request is asked
    /// about (`token`, `traceparent`, `x-forwarded-uri`, ...) are absent,
    /// and a clear bit says so without a look at each field.
    names: u64,
    /// An absolute-form target's authority, when no `Host` was sent: it
    /// reads as the `Host` field, as on the hyper path.
    authority: Option<Bytes>,
}

/// Where a field's name and value are in the head.
#[derive(Debug, Clone, Copy)]
struct Field {
    name: (u32, u32),
    value: (u32, u32),
}

impl RequestHead {
    /// The path part of the target.
    pub fn path(&self) -> &str {
        self.target.path()
    }

    /// The query, without its `?`.
    pub fn query(&self) -> Option<&str> {
        self.target.query()
    }

    /// The room its field spans took, for the connection's next request.
    pub fn into_room(self) -> Spans {
        Spans(self.fields)
    }

    fn span(&self, (start, end): (u32, u32)) -> &[u8] {
        self.buf
            .get(start as usize..end as usize)
            .unwrap_or_default()
    }
}

impl RequestFields for RequestHead {
    type Field<'a> = (&'a [u8], &'a [u8]);

    fn held(&self) -> impl Iterator<Item = Self::Field<'_>> {
        self.fields
            .iter()
            .map(|f| (self.span(f.name), self.span(f.value)))
            .chain(self.authority.as_deref().map(|a| (&b"host"[..], a)))
    }

    fn bytes<'a>(field: Self::Field<'a>) -> (&'a [u8], &'a [u8]) {
        field
    }

    fn values<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a {
        let name = name.as_str().as_bytes();
        // The authority (read as `Host`) is chained whatever the bits say.
        let sent = self.names & name_bit(name) != 0;
        let fields: &[Field] = if sent { &self.fields } else { &[] };
        fields
            .iter()
            .map(|f| (self.span(f.name), self.span(f.value)))
            .chain(self.authority.as_deref().map(|a| (&b"host"[..], a)))
            .filter(move |(n, _)| is_name(n, name))
            .map(|(_, v)| v)
    }
}

/// A field name as one of 64 bits, from its length and its first and last
/// bytes, case folded: equal names (ignoring case) have equal bits.
fn name_bit(name: &[u8]) -> u64 {
    let (Some(first), Some(last)) = (name.first(), name.last()) else {
        return 1;
    };
    let h = (name.len() as u32).wrapping_mul(31)
        ^ u32::from(first.to_ascii_lowercase()).wrapping_mul(7)
        ^ u32::from(last.to_ascii_lowercase());
    1 << (h % 64)
}

/// Offset of `part` inside `whole`, which it is a slice of.
fn offset(whole: &[u8], part: &[u8]) -> usize {
    part.as_ptr() as usize - whole.as_ptr() as usize
}

/// Parses a request head at the start of `buf`. `Unsupported` for anything
/// but a plain HTTP/1.1 request in origin or absolute form whose body, if any, has a
/// single `Content-Length` of at most [`MAX_BUFFERED_BODY`]: no
/// `Transfer-Encoding`, `Expect` or `Upgrade`, no `CONNECT`, and no head
/// that `httparse` refuses.
///
/// Fields are taken as `httparse` checked them: names are tokens and
/// values visible ASCII, spaces, tabs and obs-text, exactly what
/// `HeaderName` and `HeaderValue` accept (a property test holds the two
/// equal), but for `HeaderName`'s length limit, checked here: the fast
/// path takes no field the hyper path would refuse.
pub fn parse_request(buf: &Bytes) -> Parsed<RequestHead> {
    parse_request_in(buf, Spans::default())
}

/// Room for a head's field spans: a connection hands the last request's
/// back ([`RequestHead::into_room`]) to [`parse_request_in`], so that a
/// keep-alive request allocates none.
#[derive(Debug, Default)]
pub struct Spans(Vec<Field>);

impl Spans {
    /// Whether it is worth keeping for another connection: no larger than
    /// the most fields a head the fast path takes can have.
    pub fn is_spare(&self) -> bool {
        self.0.capacity() <= MAX_HEADERS
    }
}

/// [`parse_request`], with the field spans kept in `room`.
pub fn parse_request_in(buf: &Bytes, room: Spans) -> Parsed<RequestHead> {
    let mut fields = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Unsupported,
    };
    if req.version != Some(1) {
        return Parsed::Unsupported;
    }
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return Parsed::Unsupported;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Unsupported;
    };
    if method == Method::CONNECT {
        return Parsed::Unsupported;
    }
    // A fragment never belongs in a request (hyper's parser drops it, so
    // the two paths would route differently), and a target `http` would
    // not parse is hyper's to refuse.
    let start = offset(buf, path.as_bytes());
    let (target, authority) = if path.starts_with('/') {
        match PathAndQuery::from_maybe_shared(buf.slice(start..start + path.len())) {
            // Shorter than sent: `PathAndQuery` cut a fragment off.
            Ok(pq) if pq.as_str().len() == path.len() => (pq, None),
            _ => return Parsed::Unsupported,
        }
    } else {
        if path.contains('#') {
            return Parsed::Unsupported;
        }
        // Absolute form (RFC 9112 3.2.2), which servers must accept: the
        // path and query are forwarded as for origin form; the authority
        // stands in for a missing `Host`, as on the hyper path.
        let Ok(uri) = http::Uri::from_maybe_shared(buf.slice(start..start + path.len())) else {
            return Parsed::Unsupported;
        };
        let (Some(scheme), Some(authority), Some(pq)) =
            (uri.scheme_str(), uri.authority(), uri.path_and_query())
        else {
            return Parsed::Unsupported;
        };
        if !(scheme == "http" || scheme == "https") || !pq.as_str().starts_with('/') {
            return Parsed::Unsupported;
        }
        let authority = Bytes::copy_from_slice(authority.as_str().as_bytes());
        (pq.clone(), Some(authority))
    };
    let Spans(mut spans) = room;
    spans.clear();
    spans.reserve(req.headers.len());
    let mut body_len = None;
    let mut close = false;
    let mut has_host = false;
    let mut names = 0;
    for f in req.headers.iter() {
        let name = f.name.as_bytes();
        if name.len() > MAX_NAME_LEN {
            return Parsed::Unsupported;
        }
        names |= name_bit(name);
        if is_name(name, b"content-length") {
            match (body_len, parse_length(f.value)) {
                (None, Some(n)) => body_len = Some(n),
                _ => return Parsed::Unsupported,
            }
        } else if is_name(name, b"transfer-encoding")
            || is_name(name, b"expect")
            || is_name(name, b"upgrade")
        {
            return Parsed::Unsupported;
        } else if is_name(name, b"connection") {
            for t in connection_tokens(std::iter::once(f.value)) {
                if t.eq_ignore_ascii_case(b"upgrade") {
                    return Parsed::Unsupported;
                }
                close |= t.eq_ignore_ascii_case(b"close");
            }
        } else if is_name(name, b"host") {
            has_host = true;
        }
        let (n, v) = (offset(buf, name), offset(buf, f.value));
        // A head is far shorter than 4 GiB (see the read limit).
        let at = |a: usize, len: usize| (a as u32, (a + len) as u32);
        spans.push(Field {
            name: at(n, name.len()),
            value: at(v, f.value.len()),
        });
    }
    let has_length = body_len.is_some();
    let body_len = body_len.unwrap_or(0);
    if body_len > MAX_BUFFERED_BODY {
        return Parsed::Unsupported;
    }
    Parsed::Complete(RequestHead {
        method,
        target,
        head_len,
        body_len,
        has_length,
        close,
        buf: buf.clone(),
        fields: spans,
        names,
        authority: authority.filter(|_| !has_host),
    })
}

/// A `Content-Length` value: digits only, no sign, no list.
fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding, passed through as it is.
    Chunked,
    /// Until the upstream closes the connection.
    UntilClose,
}

/// A response head from an upstream.
#[derive(Debug)]
pub struct ResponseHead {
    /// The status.
    pub status: StatusCode,
    /// Length of the head in bytes.
    pub head_len: usize,
    /// Where the body ends.
    pub framing: Framing,
    /// The upstream will close the connection after this response.
    pub close: bool,
    /// The upstream sent a `Date` field (else the gateway adds one, as
    /// hyper's server does and RFC 9110 6.6.1 asks of a forwarding
    /// recipient with a clock).
    pub dated: bool,
}

/// Parses a response head at the start of `buf` and, unless it is interim
/// (1xx), writes the client's version of it to `out`: the status line and
/// every field but the hop-by-hop ones (and those `Connection` lists), any
/// `X-Request-Id` (the caller adds the gateway's), and a `Content-Length`
/// that `Transfer-Encoding` overrides; `Transfer-Encoding` itself stays
/// when the body passes through in that coding. The caller finishes the
/// head (its own fields, then a blank line). `head_request` says the
/// request was `HEAD` (so the response has no body whatever it declares).
///
/// The same rule as [`crate::rules::strip_response`] on the hyper
/// path, done on the bytes: no `HeaderMap` is built for a response.
/// `Unsupported` here means malformed: a version other than HTTP/1.x, an
/// unreadable or conflicting `Content-Length`, too many fields.
pub fn parse_response(buf: &[u8], head_request: bool, out: &mut Vec<u8>) -> Parsed<ResponseHead> {
    // Most responses have a handful of fields: a small array first (an
    // array of 100 costs more to clear than the head costs to parse), the
    // full limit only when it runs out.
    let mut few = [httparse::EMPTY_HEADER; 16];
    let mut resp = httparse::Response::new(&mut few);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => return rewrite_response(&resp, n, head_request, out),
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => {}
        Err(_) => return Parsed::Unsupported,
    }
    let mut many = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut many);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => rewrite_response(&resp, n, head_request, out),
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(_) => Parsed::Unsupported,
    }
}

/// The rest of [`parse_response`], on a parsed head.
fn rewrite_response(
    resp: &httparse::Response<'_, '_>,
    head_len: usize,
    head_request: bool,
    out: &mut Vec<u8>,
) -> Parsed<ResponseHead> {
    let (Some(version), Some(code)) = (resp.version, resp.code) else {
        return Parsed::Unsupported;
    };
    let Ok(status) = StatusCode::from_u16(code) else {
        return Parsed::Unsupported;
    };
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_coded = false;
    let mut listed = false;
    // HTTP/1.0 closes unless it says keep-alive; 1.1 keeps unless it says close.
    let mut close = version == 0;
    for f in resp.headers.iter() {
        let name = f.name.as_bytes();
        if is_name(name, b"content-length") {
            match (length, parse_length(f.value)) {
                (None, Some(n)) => length = Some(n),
                (Some(a), Some(b)) if a == b => {}
                _ => return Parsed::Unsupported,
            }
        } else if is_name(name, b"transfer-encoding") {
            transfer_coded = true;
            // Only the final coding decides the framing (RFC 9112 6.3).
            chunked = f
                .value
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if is_name(name, b"connection") {
            for t in connection_tokens(std::iter::once(f.value)) {
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if version == 0 && t.eq_ignore_ascii_case(b"keep-alive") {
                    close = false;
                } else if !t.is_empty() && !is_hop_by_hop_bytes(t) {
                    listed = true;
                }
            }
        }
    }
    if status.is_informational() {
        return Parsed::Complete(ResponseHead {
            status,
            head_len,
            framing: Framing::Empty,
            close,
            dated: false,
        });
    }
    let no_body =
        head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let framing = if no_body {
        Framing::Empty
    } else if transfer_coded {
        // Transfer-Encoding overrides Content-Length; a coding that does not
        // end in chunked runs to the close.
        if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else {
        match length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    if transfer_coded && length.is_some() {
        // A message with both is suspect; never reuse the connection.
        close = true;
    }
    if framing == Framing::UntilClose {
        close = true;
    }

    push_status_line(out, status);
    let keep_coding = matches!(framing, Framing::Chunked | Framing::UntilClose);
    // Names `Connection` lists, other than hop-by-hop ones (rare), read as
    // `rules::strip_response` reads them.
    let is_listed = |name: &[u8]| {
        let values = resp
            .headers
            .iter()
            .filter(|c| c.name.eq_ignore_ascii_case("connection"))
            .map(|c| c.value);
        listed && connection_tokens(values).any(|t| t.eq_ignore_ascii_case(name))
    };
    let mut dated = false;
    for f in resp.headers.iter() {
        let name = f.name.as_bytes();
        let keep = if is_name(name, b"transfer-encoding") {
            keep_coding
        } else if is_name(name, b"content-length") {
            !transfer_coded
        } else {
            !response_drops(name) && !is_listed(name)
        };
        if keep {
            // Only a `Date` that reaches the client counts (one the
            // upstream listed in `Connection` does not).
            dated |= is_name(name, b"date");
            push_field(out, name, f.value);
        }
    }
    Parsed::Complete(ResponseHead {
        status,
        head_len,
        framing,
        close,
        dated,
    })
}

/// Starts a response head: the status line, with the canonical reason.
fn push_status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends a field to a head being written.
pub fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The fast path's sink for the request rewrite
/// ([`crate::rules::strip_request`]): each field written out as it comes.
/// With `drop_length`, a `Content-Length` is left for the caller to state
/// from what it read (a `Connection: content-length` would strip the
/// client's, and without one the upstream would read the body as a
/// request).
#[derive(Debug)]
pub struct FieldWriter<'a> {
    /// Where the fields go.
    pub out: &'a mut Vec<u8>,
    /// Leave out `Content-Length`.
    pub drop_length: bool,
}

impl<'h> RequestSink<(&'h [u8], &'h [u8])> for FieldWriter<'_> {
    fn pass(&mut self, (name, value): (&'h [u8], &'h [u8])) {
        if !(self.drop_length && is_name(name, b"content-length")) {
            push_field(self.out, name, value);
        }
    }

    fn add(&mut self, name: &HeaderName, value: &[u8]) {
        push_field(self.out, name.as_str().as_bytes(), value);
    }
}

/// Calls `f` with the time `at` (a reading of the monotonic clock, see
/// [`crate::clock::since_epoch`]) as an HTTP-date (IMF-fixdate, RFC 9110
/// 5.6.7), formatted at most once a second per thread, as hyper's server
/// caches its own.
pub fn with_date<R>(at: std::time::Instant, f: impl FnOnce(&[u8]) -> R) -> R {
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    // `httpdate` refuses (panics on) a time before 1970: a clock set that
    // far back dates responses 1970 rather than taking the gateway down.
    let now = (UNIX_EPOCH + crate::clock::since_epoch(at)).max(UNIX_EPOCH);
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|cached| match cached.try_borrow_mut() {
        Ok(mut cached) => {
            if cached.0 != secs {
                *cached = (secs, httpdate::fmt_http_date(now));
            }
            f(cached.1.as_bytes())
        }
        // Only if `f` itself asked for the date again.
        Err(_) => f(httpdate::fmt_http_date(now).as_bytes()),
    })
}

/// Starts a request head for the upstream: the request line. The caller
/// adds the fields and the blank line.
pub fn push_request_line(
    out: &mut Vec<u8>,
    method: &Method,
    target: [&str; 4],
) -> std::ops::Range<usize> {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    let start = out.len();
    for piece in target {
        out.extend_from_slice(piece.as_bytes());
    }
    let written = start..out.len();
    out.extend_from_slice(b" HTTP/1.1\r\n");
    written
}

/// Writes a response head for the client.
pub fn encode_response(out: &mut Vec<u8>, status: StatusCode, headers: &HeaderMap) {
    push_status_line(out, status);
    encode_fields(out, headers);
    out.extend_from_slice(b"\r\n");
}

fn encode_fields(out: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// A malformed chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body")]
pub struct BadChunk;

/// Follows a chunked body as it passes through, to find where it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunked {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this much left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields until a blank line.
    Trailer,
    /// The body has ended.
    Done,
}

impl Chunked {
    /// Reads as far into `buf` as whole steps allow. Returns how many bytes
    /// belong to the body: `buf[..n]` may be passed on, the rest waits for
    /// more input (a partial size or trailer line), or, once [`Chunked::Done`],
    /// is not part of this body.
    pub fn advance(&mut self, buf: &[u8]) -> Result<usize, BadChunk> {
        let mut p = 0;
        loop {
            let rest = &buf[p..];
            match *self {
                Chunked::Done => return Ok(p),
                Chunked::Size => match line(rest)? {
                    None => return Ok(p),
                    Some(l) => {
                        let size = chunk_size(&rest[..l])?;
                        p += l + 2;
                        *self = if size == 0 {
                            Chunked::Trailer
                        } else {
                            Chunked::Data(size)
                        };
                    }
                },
                Chunked::Data(left) => {
                    if rest.is_empty() {
                        return Ok(p);
                    }
                    let take = left.min(rest.len() as u64);
                    p += take as usize;
                    *self = if take == left {
                        Chunked::DataEnd
                    } else {
                        Chunked::Data(left - take)
                    };
                }
                Chunked::DataEnd => {
                    if rest.len() < 2 {
                        return Ok(p);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(BadChunk);
                    }
                    p += 2;
                    *self = Chunked::Size;
                }
                Chunked::Trailer => match line(rest)? {
                    None => return Ok(p),
                    Some(0) => {
                        p += 2;
                        *self = Chunked::Done;
                    }
                    Some(l) => {
                        // A trailer field: a name, a colon, a value.
                        let f = &rest[..l];
                        match f.iter().position(|b| *b == b':') {
                            Some(c) if c > 0 && f[..c].iter().all(|b| is_token(*b)) => {}
                            _ => return Err(BadChunk),
                        }
                        p += l + 2;
                    }
                },
            }
        }
    }
}

/// The length of the line at the start of `rest`, without its CRLF:
/// `None` until the CRLF has arrived. Strict, because the bytes pass
/// through to the client as they are: a line may hold no control byte but
/// a tab (a bare CR or LF above all, which a lenient client could take
/// as a line end and so as the end of the body), and may not be longer
/// than [`MAX_CHUNK_LINE`] before its CRLF.
///
/// Each byte is judged by its place and (a CR) the byte after it, never by
/// where the input happens to end, so the verdict does not depend on how
/// the body was cut into reads: a line longer than `MAX_CHUNK_LINE` is
/// refused at its first byte past the limit, whether its CRLF has come yet
/// or not, and one of exactly `MAX_CHUNK_LINE` bytes waits for its CRLF.
fn line(rest: &[u8]) -> Result<Option<usize>, BadChunk> {
    for (i, b) in rest.iter().enumerate() {
        if *b == b'\r' {
            // `i` bytes before the CR: at most `MAX_CHUNK_LINE`, or the
            // byte at `MAX_CHUNK_LINE` was already refused below.
            return match rest.get(i + 1) {
                Some(b'\n') => Ok(Some(i)),
                Some(_) => Err(BadChunk),
                None => Ok(None),
            };
        }
        if i >= MAX_CHUNK_LINE || (b.is_ascii_control() && *b != b'\t') {
            return Err(BadChunk);
        }
    }
    Ok(None)
}

/// A chunk-size line's size: hex digits (at most 15, so it fits), then
/// nothing or optional whitespace and `;` extensions.
fn chunk_size(l: &[u8]) -> Result<u64, BadChunk> {
    let digits = l.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return Err(BadChunk);
    }
    let ext = l[digits..].trim_ascii_start();
    if !(ext.is_empty() || ext.starts_with(b";")) {
        return Err(BadChunk);
    }
    let hex = std::str::from_utf8(&l[..digits]).map_err(|_| BadChunk)?;
    u64::from_str_radix(hex, 16).map_err(|_| BadChunk)
}

/// A `tchar` (RFC 9110 5.6.2): what a field name is made of.
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use proptest::prelude::*;

    fn req(s: &str) -> Parsed<RequestHead> {
        parse_request(&Bytes::copy_from_slice(s.as_bytes()))
    }

    /// The one value of a field, by name in any case.
    fn value(h: &RequestHead, name: &'static str) -> Vec<u8> {
        let name = HeaderName::from_static(name);
        let mut v = h.values(&name).collect::<Vec<_>>();
        assert_eq!(v.len(), 1, "{name}");
        v.remove(0).to_vec()
    }

    fn resp(s: &str, head: bool) -> ResponseHead {
        resp_out(s, head).0
    }

    fn resp_out(s: &str, head: bool) -> (ResponseHead, String) {
        let mut out = Vec::new();
        match parse_response(s.as_bytes(), head, &mut out) {
            Parsed::Complete(h) => (h, String::from_utf8(out).unwrap()),
            other => panic!("{other:?}"),
        }
    }

    proptest! {
        /// A field is found by its name in any case, and every value of
        /// it in order; a name not sent finds nothing (the name bits are
        /// a shortcut, never an answer).
        #[test]
        fn values_are_found_by_name_whatever_the_case(
            names in proptest::collection::vec("[a-zA-Z][a-zA-Z0-9_-]{0,20}", 1..12),
            asked in "[a-z][a-z0-9_-]{0,20}",
        ) {
            let mut head = String::from("GET / HTTP/1.1\r\n");
            for (i, n) in names.iter().enumerate() {
                head.push_str(&format!("{n}: v{i}\r\n"));
            }
            head.push_str("\r\n");
            let Parsed::Complete(h) = req(&head) else {
                return Err(TestCaseError::fail("not parsed"));
            };
            for n in names.iter().map(|n| n.to_ascii_lowercase()).chain([asked]) {
                let want: Vec<String> = names
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| m.eq_ignore_ascii_case(&n))
                    .map(|(i, _)| format!("v{i}"))
                    .collect();
                let name = HeaderName::from_bytes(n.as_bytes()).unwrap();
                let got: Vec<String> = h
                    .values(&name)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .collect();
                prop_assert_eq!(got, want, "{}", n);
            }
        }
    }

    #[test]
    fn a_date_counts_only_if_it_reaches_the_client() {
        // (fields, dated, the `Date` line passed on if any)
        let cases = [
            (
                "Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n",
                true,
                Some("Date: Sun, 06 Nov 1994 08:49:37 GMT"),
            ),
            // Listed in `Connection`, it is stripped, so the gateway must
            // add its own (as hyper's server would after the same strip).
            ("Connection: date\r\nDate: x\r\n", false, None),
            // A `Connection` line that is not visible ASCII lists nothing,
            // as on the hyper path, where `to_str` fails on it: `Date`
            // stays, and the gateway adds none of its own.
            (
                "Connection: date, caf\u{e9}\r\nDate: x\r\n",
                true,
                Some("Date: x"),
            ),
        ];
        for (fields, dated, passed) in cases {
            let head = format!("HTTP/1.1 200 OK\r\n{fields}content-length: 0\r\n\r\n");
            let (h, out) = resp_out(&head, false);
            assert_eq!(h.dated, dated, "{head}");
            match passed {
                Some(line) => assert!(out.contains(&format!("\r\n{line}\r\n")), "{out}"),
                None => assert!(!out.to_ascii_lowercase().contains("date"), "{out}"),
            }
        }
        assert!(!resp("HTTP/1.1 204 No Content\r\n\r\n", false).dated);
    }

    #[test]
    fn plain_requests_are_taken() {
        let Parsed::Complete(h) =
            req("GET /a/b?x=1 HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer t\r\n\r\nrest")
        else {
            panic!()
        };
        assert_eq!(h.method, Method::GET);
        assert_eq!(h.path(), "/a/b");
        assert_eq!(h.query(), Some("x=1"));
        assert_eq!(value(&h, "authorization"), b"Bearer t");
        assert_eq!(
            h.head_len,
            "GET /a/b?x=1 HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer t\r\n\r\n".len()
        );
        assert_eq!(h.body_len, 0);
        assert!(!h.close);
        let Parsed::Complete(h) =
            req("POST / HTTP/1.1\r\nContent-Length: 5\r\nConnection: close\r\n\r\n")
        else {
            panic!()
        };
        assert_eq!(h.body_len, 5);
        assert!(h.close);
        assert!(matches!(
            req("GET / HTTP/1.1\r\nHost: h\r\n"),
            Parsed::Partial
        ));
    }

    #[test]
    fn absolute_form_is_taken_as_its_path() {
        let Parsed::Complete(h) = req("GET http://api.example:8080/a/b?x=1 HTTP/1.1\r\n\r\n")
        else {
            panic!()
        };
        assert_eq!((h.path(), h.query()), ("/a/b", Some("x=1")));
        assert_eq!(value(&h, "host"), b"api.example:8080");
        let Parsed::Complete(h) = req("GET http://a/p HTTP/1.1\r\nHost: b\r\n\r\n") else {
            panic!()
        };
        assert_eq!((h.path(), h.query()), ("/p", None));
        assert_eq!(
            value(&h, "host"),
            b"b",
            "a Host sent is kept, as on the hyper path"
        );
    }

    #[test]
    fn anything_unusual_goes_to_hyper() {
        for s in [
            "GET / HTTP/1.0\r\n\r\n",
            "GET ftp://h/ HTTP/1.1\r\n\r\n",
            "GET http:/x HTTP/1.1\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\n\r\n",
            "CONNECT h:443 HTTP/1.1\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 1,1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 65537\r\n\r\n",
            "POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            "GET /\x01 HTTP/1.1\r\n\r\n",
            "GET /api/admin#x HTTP/1.1\r\n\r\n",
            "GET http://h/api/admin#x HTTP/1.1\r\n\r\n",
            "GET /a<b HTTP/1.1\r\n\r\n",
        ] {
            assert!(matches!(req(s), Parsed::Unsupported), "{s:?}");
        }
        let long = "a".repeat(MAX_NAME_LEN + 1);
        assert!(matches!(
            req(&format!("GET / HTTP/1.1\r\n{long}: 1\r\n\r\n")),
            Parsed::Unsupported
        ));
        assert!(HeaderName::from_bytes(long.as_bytes()).is_err());
        assert!(HeaderName::from_bytes(&long.as_bytes()[1..]).is_ok());
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        assert!(matches!(
            req(&format!("GET / HTTP/1.1\r\n{many}\r\n")),
            Parsed::Unsupported
        ));
    }

    #[test]
    fn response_framing() {
        let h = resp("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", false);
        assert_eq!((h.framing, h.close), (Framing::Length(3), false));
        let h = resp("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true);
        assert_eq!(h.framing, Framing::Empty);
        let h = resp("HTTP/1.1 204 No Content\r\n\r\n", false);
        assert_eq!(h.framing, Framing::Empty);
        let h = resp(
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            false,
        );
        assert_eq!(h.framing, Framing::Empty);
        let h = resp(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            false,
        );
        assert_eq!((h.framing, h.close), (Framing::Chunked, false));
        let (h, out) = resp_out(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            false,
        );
        assert_eq!((h.framing, h.close), (Framing::Chunked, true));
        assert_eq!(out, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n");
        let h = resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false);
        assert_eq!((h.framing, h.close), (Framing::UntilClose, true));
        let h = resp("HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!((h.framing, h.close), (Framing::UntilClose, true));
        let h = resp(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert_eq!((h.framing, h.close), (Framing::Empty, true));
        let h = resp("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false);
        assert!(h.close);
        let h = resp(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
            false,
        );
        assert!(!h.close);
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/2 200 OK\r\n\r\n",
        ] {
            assert!(
                matches!(
                    parse_response(bad.as_bytes(), false, &mut Vec::new()),
                    Parsed::Unsupported
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn response_heads_lose_what_the_hyper_path_strips() {
        let (h, out) = resp_out(
            "HTTP/1.1 201 Whatever\r\nContent-Type: text/plain\r\nConnection: keep-alive, X-Hop\r\n\
             Keep-Alive: timeout=5\r\nX-Hop: 1\r\nX-Request-Id: upstream\r\nUpgrade: h2c\r\n\
             Trailer: x\r\nProxy-Authenticate: Basic\r\nContent-Length: 2\r\nX-Keep: 2\r\n\r\nok",
            false,
        );
        assert_eq!(
            (h.status, h.framing, h.close),
            (StatusCode::CREATED, Framing::Length(2), false)
        );
        assert_eq!(
            out,
            "HTTP/1.1 201 Created\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nX-Keep: 2\r\n"
        );
        let (h, out) = resp_out("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", false);
        assert_eq!(
            (h.status, h.framing),
            (StatusCode::EARLY_HINTS, Framing::Empty)
        );
        assert_eq!(out, "", "an interim head is not written");
    }

    #[test]
    fn heads_are_written_back_out() {
        let mut out = Vec::new();
        let target = push_request_line(&mut out, &Method::DELETE, ["/p", "", "?", "q"]);
        assert_eq!(&out[target], b"/p?q");
        push_field(&mut out, b"host", b"up");
        assert_eq!(out, b"DELETE /p?q HTTP/1.1\r\nhost: up\r\n");
        let mut h = HeaderMap::new();
        h.append("host", http::HeaderValue::from_static("up"));
        h.append("x-a", http::HeaderValue::from_static("1"));
        out.clear();
        encode_response(&mut out, StatusCode::NOT_FOUND, &h);
        assert_eq!(out, b"HTTP/1.1 404 Not Found\r\nhost: up\r\nx-a: 1\r\n\r\n");
    }

    #[test]
    fn responses_with_many_fields_are_read_whole() {
        let many: String = (0..40).map(|i| format!("x-{i}: v\r\n")).collect();
        let (h, out) = resp_out(
            &format!("HTTP/1.1 200 OK\r\n{many}Content-Length: 0\r\n\r\n"),
            false,
        );
        assert_eq!(h.framing, Framing::Empty);
        assert_eq!(out.matches("\r\n").count(), 42, "{out}");
        let too_many: String = (0..=MAX_RESPONSE_HEADERS)
            .map(|i| format!("x-{i}: v\r\n"))
            .collect();
        let head = format!("HTTP/1.1 200 OK\r\n{too_many}\r\n");
        assert!(matches!(
            parse_response(head.as_bytes(), false, &mut Vec::new()),
            Parsed::Unsupported
        ));
    }

    const BODY: &[u8] =
        b"4;ext=1\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nx-t: 1\r\n\r\n";

    #[test]
    fn chunked_body_ends_where_it_says() {
        let mut c = Chunked::Size;
        let mut input = BODY.to_vec();
        input.extend_from_slice(b"HTTP/1.1 200 OK");
        assert_eq!(c.advance(&input), Ok(BODY.len()));
        assert_eq!(c, Chunked::Done);
        for bad in [&b"zz\r\n"[..], b"3\r\nabcX\r\n", b"0\r\nx\n"] {
            let mut c = Chunked::Size;
            let r = c.advance(bad).and_then(|n| c.advance(&bad[n..]));
            assert!(r.is_err() || c != Chunked::Done, "{bad:?}");
        }
        let mut c = Chunked::Size;
        assert_eq!(c.advance(&[b'1'; MAX_CHUNK_LINE + 1]), Err(BadChunk));
        // Whatever a lenient client could read as a line end, or an empty
        // size, is refused rather than passed on.
        for bad in [
            &b"\r\n"[..],
            b"4\n",
            b"4;a=\nb\r\n",
            b"4\rx",
            b"-4\r\n",
            b"0x4\r\n",
            b"1000000000000000\r\n",
            b"0\r\n\nHTTP/1.1 200 OK\r\n",
            b"0\r\nno-colon\r\n",
            b"0\r\n: empty-name\r\n",
        ] {
            let mut c = Chunked::Size;
            assert_eq!(c.advance(bad), Err(BadChunk), "{bad:?}");
        }
    }

    /// What the fast path makes of a chunked body that arrives in these
    /// pieces, driven as `Body::step`'s caller in `fast` drives it: each
    /// read is appended to what the previous steps left, the decoder is
    /// given all of it, the bytes it takes are passed on and dropped from
    /// the buffer, and reading stops once the body is done.
    #[derive(Debug, PartialEq, Eq)]
    enum Outcome {
        /// Refused as malformed.
        Bad,
        /// How many bytes were passed on (always the first ones: the
        /// caller only ever drops the front of its buffer), and whether the
        /// body ended.
        Passed { len: usize, done: bool },
    }

    fn feed<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
        let mut c = Chunked::Size;
        let mut buf: Vec<u8> = Vec::new();
        let mut len = 0;
        for piece in pieces {
            buf.extend_from_slice(piece);
            match c.advance(&buf) {
                Err(BadChunk) => return Outcome::Bad,
                Ok(n) => {
                    buf.drain(..n);
                    len += n;
                }
            }
            if c == Chunked::Done {
                break;
            }
        }
        let done = c == Chunked::Done;
        Outcome::Passed { len, done }
    }

    /// `body` cut at these offsets (in any order, repeats allowed).
    fn split_at(body: &[u8], cuts: &[usize]) -> Outcome {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| (*c).min(body.len())).collect();
        cuts.push(body.len());
        cuts.sort_unstable();
        let mut at = 0;
        feed(cuts.into_iter().map(|cut| {
            let piece = &body[at..cut];
            at = cut;
            piece
        }))
    }

    /// A chunk-size line or a trailer line of `len` bytes before its CRLF.
    fn size_line(len: usize) -> Vec<u8> {
        let mut l = b"1;x=".to_vec();
        l.resize(len, b'a');
        l
    }
    fn trailer_line(len: usize) -> Vec<u8> {
        let mut l = b"x-t:".to_vec();
        l.resize(len, b'v');
        l
    }

    #[test]
    fn the_longest_line_is_the_same_however_it_is_read() {
        for max in [true, false] {
            let len = if max {
                MAX_CHUNK_LINE
            } else {
                MAX_CHUNK_LINE + 1
            };
            let mut sized = size_line(len);
            sized.extend_from_slice(b"\r\nZ\r\n0\r\n\r\n");
            let mut trailed = b"0\r\n".to_vec();
            trailed.extend_from_slice(&trailer_line(len));
            trailed.extend_from_slice(b"\r\n\r\n");
            for (body, line_end) in [(&sized, len), (&trailed, 3 + len)] {
                let want = if max {
                    Outcome::Passed {
                        len: body.len(),
                        done: true,
                    }
                } else {
                    Outcome::Bad
                };
                assert_eq!(split_at(body, &[]), want, "whole, {len}");
                // A read ending right after the line's last byte, and one
                // ending between its CR and LF.
                assert_eq!(split_at(body, &[line_end]), want, "cut before CR, {len}");
                assert_eq!(
                    split_at(body, &[line_end + 1]),
                    want,
                    "cut before LF, {len}"
                );
                assert_eq!(split_at(body, &[line_end - 1]), want, "cut inside, {len}");
            }
        }
    }

    proptest! {
        /// However the body is cut into reads, the tracker passes on the
        /// same bytes and stops at the same place.
        #[test]
        fn chunked_tracking_ignores_read_boundaries(cuts in proptest::collection::vec(0..BODY.len(), 0..8)) {
            let mut cuts = cuts;
            cuts.push(BODY.len());
            cuts.sort_unstable();
            let mut c = Chunked::Size;
            let mut pending: Vec<u8> = Vec::new();
            let mut passed = Vec::new();
            let mut at = 0;
            for cut in cuts {
                pending.extend_from_slice(&BODY[at..cut]);
                at = cut;
                let n = c.advance(&pending).unwrap();
                passed.extend(pending.drain(..n));
            }
            prop_assert_eq!(c, Chunked::Done);
            prop_assert_eq!(passed, BODY.to_vec());
        }
    }

    /// A line's length before its CRLF: short, or right at the limit.
    fn line_len() -> impl Strategy<Value = usize> {
        prop_oneof![1..12usize, (MAX_CHUNK_LINE - 2)..=(MAX_CHUNK_LINE + 2)]
    }

    /// A chunked body, as an upstream might send it, and where it ends if
    /// every line is within the limit: chunks whose size lines are padded
    /// with an extension to a chosen length, the last chunk, trailer
    /// fields, the blank line, and bytes after the body (the next
    /// response, say).
    fn chunked_body() -> impl Strategy<Value = (Vec<u8>, Option<usize>)> {
        let chunk = (
            proptest::collection::vec(any::<u8>(), 1..40),
            line_len(),
            any::<bool>(),
        );
        let trailer = line_len();
        (
            proptest::collection::vec(chunk, 0..4),
            line_len(),
            proptest::collection::vec(trailer, 0..3),
            proptest::collection::vec(any::<u8>(), 0..8),
        )
            .prop_map(|(chunks, last_len, trailers, after)| {
                let sized = |size: usize, upper: bool, len: usize| {
                    let mut l = if upper {
                        format!("{size:X}")
                    } else {
                        format!("0{size:x}")
                    }
                    .into_bytes();
                    if l.len() < len {
                        l.push(b';');
                        l.resize(len, b'e');
                    }
                    l
                };
                let mut body = Vec::new();
                let mut longest = last_len;
                for (data, len, upper) in chunks {
                    longest = longest.max(len);
                    body.extend_from_slice(&sized(data.len(), upper, len));
                    body.extend_from_slice(b"\r\n");
                    body.extend_from_slice(&data);
                    body.extend_from_slice(b"\r\n");
                }
                body.extend_from_slice(&sized(0, true, last_len));
                body.extend_from_slice(b"\r\n");
                for len in trailers {
                    longest = longest.max(len);
                    body.extend_from_slice(&trailer_line(len.max(4)));
                    body.extend_from_slice(b"\r\n");
                }
                body.extend_from_slice(b"\r\n");
                let end = (longest <= MAX_CHUNK_LINE).then_some(body.len());
                body.extend_from_slice(&after);
                (body, end)
            })
    }

    /// A change that may make a body malformed.
    #[derive(Debug, Clone)]
    enum Mutation {
        Replace(proptest::sample::Index, u8),
        Insert(proptest::sample::Index, u8),
        Remove(proptest::sample::Index),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        // Bytes that mean something to the framing, and any other.
        let byte = prop_oneof![
            3 => proptest::sample::select(&b"\r\n\t\0 ;:0aFg"[..]),
            1 => any::<u8>(),
        ];
        prop_oneof![
            (any::<proptest::sample::Index>(), byte.clone())
                .prop_map(|(i, b)| Mutation::Replace(i, b)),
            (any::<proptest::sample::Index>(), byte).prop_map(|(i, b)| Mutation::Insert(i, b)),
            any::<proptest::sample::Index>().prop_map(Mutation::Remove),
        ]
    }

    fn mutate(body: &mut Vec<u8>, m: &Mutation) {
        if body.is_empty() {
            return;
        }
        match m {
            Mutation::Replace(i, b) => {
                let i = i.index(body.len());
                body[i] = *b;
            }
            Mutation::Insert(i, b) => body.insert(i.index(body.len() + 1), *b),
            Mutation::Remove(i) => {
                body.remove(i.index(body.len()));
            }
        }
    }

    /// Where a read ending makes a difference: at each CR or LF and
    /// either side of it, and at the limit of a line starting after an LF.
    fn telling_cuts(body: &[u8]) -> Vec<usize> {
        let mut at = vec![0, MAX_CHUNK_LINE, MAX_CHUNK_LINE + 1];
        for (i, b) in body.iter().enumerate() {
            if *b == b'\r' || *b == b'\n' {
                at.extend([i.saturating_sub(1), i, i + 1]);
            }
            if *b == b'\n' {
                at.extend([i + 1 + MAX_CHUNK_LINE, i + 2 + MAX_CHUNK_LINE]);
            }
        }
        at
    }

    proptest! {
        /// The split-point property: a chunked body, well formed or not,
        /// comes to the same end (refused, or the same bytes passed on and
        /// the same verdict on whether the body is over) whether it
        /// arrives in one read or cut anywhere into several.
        #[test]
        fn chunked_framing_ignores_read_boundaries(
            (body, end) in chunked_body(),
            mutations in proptest::collection::vec(mutation(), 0..3),
            cuts in proptest::collection::vec((any::<bool>(), any::<proptest::sample::Index>()), 1..8),
        ) {
            let mut body = body;
            for m in &mutations {
                mutate(&mut body, m);
            }
            let whole = split_at(&body, &[]);
            if mutations.is_empty() {
                let want = end.map_or(Outcome::Bad, |len| Outcome::Passed { len, done: true });
                prop_assert_eq!(&whole, &want);
            }
            let telling = telling_cuts(&body);
            let cuts: Vec<usize> = cuts
                .iter()
                .map(|(tell, i)| {
                    if *tell {
                        telling[i.index(telling.len())]
                    } else {
                        i.index(body.len() + 1)
                    }
                })
                .collect();
            prop_assert_eq!(split_at(&body, &cuts), whole, "cut at {:?}", cuts);
        }
    }

    proptest! {
        // Few cases: the decoder reads a partial line again from its start
        // on each read, so a body of 4 KiB lines fed a byte at a time costs
        // millions of steps in a debug build.
        #![proptest_config(ProptestConfig::with_cases(8))]
        /// The same, with every byte a read of its own.
        #[test]
        fn chunked_framing_byte_by_byte(
            (body, _) in chunked_body(),
            mutations in proptest::collection::vec(mutation(), 0..3),
        ) {
            let mut body = body;
            for m in &mutations {
                mutate(&mut body, m);
            }
            prop_assert_eq!(feed(body.chunks(1)), split_at(&body, &[]));
        }
    }

    /// Field names and values the rewrite treats specially, in assorted
    /// letter cases, and some it must leave alone.
    const NAMES: &[&str] = &[
        "Host",
        "HOST",
        "Cookie",
        "cookie",
        "Connection",
        "connection",
        "Keep-Alive",
        "Authorization",
        "authorization",
        "token",
        "TOKEN",
        "X-Tenant-Id",
        "x-tenant-id",
        "x_tenant_id",
        "X.Tenant.Id",
        "X-Forwarded-For",
        "X-Forwarded-Host",
        "Forwarded",
        "X-Real-IP",
        "X-Foo",
        "x-bar",
        "TE",
        "Trailer",
        "Proxy-Authorization",
        "Accept",
        "close",
        "X-Request-Id",
        "Content-Length",
    ];
    const VALUES: &[&str] = &[
        "",
        "1",
        "abc",
        "Bearer abc",
        "bearer  abc ",
        "Bearer xyz",
        "Basic x",
        "keep-alive, x-foo",
        "close",
        "x-bar, host",
        "cookie, X-Tenant-Id",
        "a=1",
        "b=2",
        "content-length",
        "trailers",
        "caf\u{e9}",
        "X-FOO , ,x-bar",
    ];

    fn field() -> impl Strategy<Value = (String, String)> {
        let name = prop_oneof![
            3 => proptest::sample::select(NAMES).prop_map(String::from),
            1 => "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}",
        ];
        let value = prop_oneof![
            3 => proptest::sample::select(VALUES).prop_map(String::from),
            1 => "[ -~]{0,16}",
        ];
        (name, value)
    }

    fn upstream() -> crate::upstream::UpstreamConfig {
        crate::upstream::UpstreamConfig {
            name: "up".into(),
            scheme: http::uri::Scheme::HTTP,
            authority: "up.internal:8080".parse().unwrap(),
            host_header: http::HeaderValue::from_static("up.internal:8080"),
            base_path: String::new(),
            protocol: crate::upstream::UpstreamProtocol::Http1,
            connect_timeout: std::time::Duration::from_secs(1),
            response_timeout: std::time::Duration::from_secs(1),
            pool_idle_timeout: std::time::Duration::from_secs(1),
            pool_max_idle: 1,
            max_connections: 1,
        }
    }

    proptest! {
        /// What `httparse` takes as a field, `http` takes too: the fast
        /// path never forwards a field the hyper path would refuse.
        #[test]
        fn parsed_fields_are_valid_http_fields(
            fields in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 1..8),
                 proptest::collection::vec(any::<u8>(), 0..12)),
                0..6,
            )
        ) {
            let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
            for (n, v) in &fields {
                raw.extend_from_slice(n);
                raw.extend_from_slice(b": ");
                raw.extend_from_slice(v);
                raw.extend_from_slice(b"\r\n");
            }
            raw.extend_from_slice(b"\r\n");
            if let Parsed::Complete(h) = parse_request(&Bytes::from(raw)) {
                for (n, v) in h.fields() {
                    prop_assert!(HeaderName::from_bytes(n).is_ok(), "{n:?}");
                    prop_assert!(http::HeaderValue::from_bytes(v).is_ok(), "{v:?}");
                }
            }
        }

        /// The fast path's policy on the bytes decides as the hyper path's
        /// on a `HeaderMap` of the same fields: the same fields forwarded
        /// (content-length aside, which each path states itself), the same
        /// `X-Forwarded-Host`, the same credential, the same look-alike
        /// verdict.
        #[test]
        fn policy_on_the_bytes_matches_the_header_map(
            fields in proptest::collection::vec(field(), 0..10),
            absolute in any::<bool>(),
        ) {
            use crate::rules::{strip_request, Lookalikes, MapSink, StripSet};
            let target = if absolute { "http://client.example:81/p" } else { "/p" };
            let mut s = format!("GET {target} HTTP/1.1\r\n");
            for (n, v) in &fields {
                s.push_str(&format!("{n}: {v}\r\n"));
            }
            s.push_str("\r\n");
            let Parsed::Complete(head) = parse_request(&Bytes::from(s)) else {
                return Ok(());
            };
            let mut map = HeaderMap::new();
            for (n, v) in head.fields() {
                map.append(
                    HeaderName::from_bytes(n).unwrap(),
                    http::HeaderValue::from_bytes(v).unwrap(),
                );
            }
            let names = crate::rules::HeaderNames::default();
            let lookalikes = Lookalikes::new(&names);
            prop_assert_eq!(lookalikes.check(&head), lookalikes.check(&map));
            prop_assert_eq!(
                crate::auth::extract_credential(&head),
                crate::auth::extract_credential(&map)
            );
            let up = upstream();
            let strip = StripSet::new(&names);
            // The fast path's sink (bytes) and hyper's (a new map), fed by
            // the one rule book.
            let mut written = Vec::new();
            let host = strip_request(&head, &strip, &up, false, &mut FieldWriter { out: &mut written, drop_length: false });
            let mut hyper = MapSink::default();
            let hyper_host = strip_request(&map, &strip, &up, false, &mut hyper);
            prop_assert_eq!(host.map(|h| h.1), hyper_host.map(|(_, v)| v.as_bytes()));
            let mut emitted = HeaderMap::new();
            for line in written.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let line = line.strip_suffix(b"\r").unwrap();
                // `push_field` writes `name: value`, the value as it is.
                let colon = line.iter().position(|b| *b == b':').unwrap();
                emitted.append(
                    HeaderName::from_bytes(&line[..colon]).unwrap(),
                    http::HeaderValue::from_bytes(&line[colon + 2..]).unwrap(),
                );
            }
            prop_assert_eq!(emitted, hyper.0);
        }
    }
}
