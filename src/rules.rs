//! The request rule book: what the gateway strips from a request, refuses
//! in it, and adds to it before it goes upstream, and the names it uses.
//! Both codecs call these functions, hyper's path on a `HeaderMap` and the
//! fast path on the request's fields as they came ([`RequestFields`]).
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

use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::cache::{AuthEntry, ConnectionMemo};
use crate::error::Denial;
use crate::fields::{
    connection_tokens, is_hop_by_hop_bytes, is_name, list_has, push_ip, RequestFields, HOP_BY_HOP,
    SPOOFABLE, TOKEN_HEADER, TRACEPARENT, X_REQUEST_ID,
};
use crate::upstream::{UpstreamConfig, UpstreamProtocol};

/// Header names sent upstream (all lower-case, as `http` stores them).
#[derive(Clone, Debug)]
pub struct HeaderNames {
    /// Tenant id.
    pub tenant_id: HeaderName,
    /// Account id.
    pub account_id: HeaderName,
    /// Workspace id.
    pub workspace_id: HeaderName,
    /// Token id.
    pub token_id: HeaderName,
    /// Token name.
    pub token_name: HeaderName,
    /// Token abilities, comma-separated.
    pub token_abilities: HeaderName,
    /// Request id.
    pub request_id: HeaderName,
    /// Client address.
    pub forwarded_for: HeaderName,
    /// `http` / `https` as the client spoke.
    pub forwarded_proto: HeaderName,
    /// Host the client asked for.
    pub forwarded_host: HeaderName,
    /// Bit `i` set: `all()[i]` is not sent (`headers.omit`).
    pub(crate) omit: u16,
}

/// The `[headers]` keys, in [`HeaderNames::all`]'s order.
pub const HEADER_KEYS: [&str; 10] = [
    "tenant_id",
    "account_id",
    "workspace_id",
    "token_id",
    "token_name",
    "token_abilities",
    "request_id",
    "forwarded_for",
    "forwarded_proto",
    "forwarded_host",
];

/// One of the gateway's headers, as an index into [`HeaderNames::all`].
#[derive(Clone, Copy, Debug)]
#[repr(u8)]
pub enum GatewayHeader {
    /// `X-Tenant-Id`.
    TenantId,
    /// `X-Account-Id`.
    AccountId,
    /// `X-Workspace-Id`.
    WorkspaceId,
    /// `X-Token-Id`.
    TokenId,
    /// `X-Token-Name`.
    TokenName,
    /// `X-Token-Abilities`.
    TokenAbilities,
    /// `X-Request-Id`.
    RequestId,
    /// `X-Forwarded-For`.
    ForwardedFor,
    /// `X-Forwarded-Proto`.
    ForwardedProto,
    /// `X-Forwarded-Host`.
    ForwardedHost,
}

impl GatewayHeader {
    /// All ten, in [`HeaderNames::all`]'s and [`HEADER_KEYS`]' order.
    pub const ALL: [GatewayHeader; 10] = [
        GatewayHeader::TenantId,
        GatewayHeader::AccountId,
        GatewayHeader::WorkspaceId,
        GatewayHeader::TokenId,
        GatewayHeader::TokenName,
        GatewayHeader::TokenAbilities,
        GatewayHeader::RequestId,
        GatewayHeader::ForwardedFor,
        GatewayHeader::ForwardedProto,
        GatewayHeader::ForwardedHost,
    ];
}

impl HeaderNames {
    /// Whether `h` is sent upstream (not listed in `headers.omit`).
    #[inline]
    pub fn sends(&self, h: GatewayHeader) -> bool {
        self.omit & (1 << h as u8) == 0
    }

    /// The configured name of `h`.
    pub fn name(&self, h: GatewayHeader) -> &HeaderName {
        use GatewayHeader as G;
        match h {
            G::TenantId => &self.tenant_id,
            G::AccountId => &self.account_id,
            G::WorkspaceId => &self.workspace_id,
            G::TokenId => &self.token_id,
            G::TokenName => &self.token_name,
            G::TokenAbilities => &self.token_abilities,
            G::RequestId => &self.request_id,
            G::ForwardedFor => &self.forwarded_for,
            G::ForwardedProto => &self.forwarded_proto,
            G::ForwardedHost => &self.forwarded_host,
        }
    }

    /// `add` for the headers that are sent: each call names the header and
    /// gives its value; omitted ones are dropped here.
    #[inline]
    pub fn sender<'a>(
        &'a self,
        mut add: impl FnMut(&'a HeaderName, &'a HeaderValue),
    ) -> impl FnMut(GatewayHeader, &'a HeaderValue) {
        move |h, v| {
            if self.sends(h) {
                add(self.name(h), v);
            }
        }
    }

    /// Every header the gateway itself sets upstream. Client-sent copies of
    /// these are always removed.
    pub fn all(&self) -> [&HeaderName; 10] {
        GatewayHeader::ALL.map(|h| self.name(h))
    }
}

impl Default for HeaderNames {
    fn default() -> Self {
        let h = HeaderName::from_static;
        HeaderNames {
            tenant_id: h("x-tenant-id"),
            account_id: h("x-account-id"),
            workspace_id: h("x-workspace-id"),
            token_id: h("x-token-id"),
            token_name: h("x-token-name"),
            token_abilities: h("x-token-abilities"),
            request_id: h("x-request-id"),
            forwarded_for: h("x-forwarded-for"),
            forwarded_proto: h("x-forwarded-proto"),
            forwarded_host: h("x-forwarded-host"),
            omit: 0,
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
        Self {
            addr,
            ip_header: ip_header(addr.ip()),
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

thread_local! {
    /// The client address a thread last wrote as a header value, and the
    /// value: connections come from few addresses (a load balancer's, a
    /// front proxy's, a service's), so most connections share it rather
    /// than format and allocate their own.
    static LAST_IP: std::cell::RefCell<Option<(IpAddr, HeaderValue)>> =
        const { std::cell::RefCell::new(None) };
}

/// `ip` as the `X-Forwarded-For` value: the thread's last one when it is
/// for the same address, else made (and kept as the last).
fn ip_header(ip: IpAddr) -> HeaderValue {
    let shared = LAST_IP.try_with(|last| {
        let mut last = last.try_borrow_mut().ok()?;
        match &*last {
            Some((a, v)) if *a == ip => Some(v.clone()),
            _ => {
                let v = format_ip_header(ip);
                *last = Some((ip, v.clone()));
                Some(v)
            }
        }
    });
    shared
        .ok()
        .flatten()
        .unwrap_or_else(|| format_ip_header(ip))
}

fn format_ip_header(ip: IpAddr) -> HeaderValue {
    let mut text = Vec::with_capacity(15);
    push_ip(&mut text, ip);
    // Boxed to its length first: a `Bytes` made from a vector with room
    // to spare allocates a second block to share it by.
    HeaderValue::from_maybe_shared(bytes::Bytes::from(text.into_boxed_slice()))
        // An IP address is always a valid header value.
        .unwrap_or(HeaderValue::from_static("unknown"))
}

/// What the gateway knows about the request besides its headers.
#[derive(Debug)]
pub struct ForwardContext<'a> {
    /// The authenticated token, if any.
    pub auth: Option<&'a AuthEntry>,
    /// The request id.
    pub request_id: &'a HeaderValue,
    /// The `traceparent` sent upstream ([`crate::trace::Trace`]).
    pub traceparent: &'a HeaderValue,
    /// The client's connection.
    pub peer: &'a Peer,
    /// The normalised path to forward.
    pub path: &'a str,
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
    /// The first letter or digit of each of ours ([`alnum_bit`]): most
    /// names a request carries (`host`, `authorization`, `user-agent`)
    /// start otherwise and are passed after one look.
    firsts: u64,
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
        let firsts = ours
            .iter()
            .filter_map(|(_, l)| l.first())
            .fold(0, |set, b| set | alnum_bit(*b));
        Self {
            ours,
            longest,
            firsts,
        }
    }

    /// Refuses (400) any look-alike among `headers`' names. Runs before
    /// anything is forwarded.
    pub fn check(&self, headers: &(impl RequestFields + ?Sized)) -> Result<(), Denial> {
        let mut letters = [0u8; 64];
        'names: for (name, _) in headers.fields() {
            let first = name.iter().find(|b| b.is_ascii_alphanumeric());
            if first.is_none_or(|b| alnum_bit(*b) & self.firsts == 0) {
                continue;
            }
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

/// A letter (either case) or digit as one bit of a set: letters 0 to 25,
/// digits 26 to 35; anything else is no bit.
fn alnum_bit(b: u8) -> u64 {
    match b.to_ascii_lowercase() {
        c @ b'a'..=b'z' => 1 << (c - b'a'),
        c @ b'0'..=b'9' => 1 << (26 + c - b'0'),
        _ => 0,
    }
}

fn alnum(name: &str) -> impl Iterator<Item = u8> + '_ {
    name.bytes().filter(u8::is_ascii_alphanumeric)
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

/// Whether a response field stays off the client's response (besides
/// those its `Connection` lists): hop-by-hop fields, and the upstream's
/// `X-Request-Id` (the gateway states its own). Both codecs strip by it:
/// [`strip_response`] on a map, the fast path on the bytes.
pub fn response_drops(name: &[u8]) -> bool {
    is_hop_by_hop_bytes(name) || is_name(name, X_REQUEST_ID.as_str().as_bytes())
}

/// Removes from a response's headers what [`response_drops`] picks and
/// every header listed in `Connection`.
pub fn strip_response(headers: &mut HeaderMap) {
    remove_where(headers, |n| response_drops(n.as_str().as_bytes()));
}

/// Removes what must not reach an upstream from a client's trailers: the
/// request's own strip ([`StripSet`]) and what `Connection` lists.
pub fn strip_for_upstream(headers: &mut HeaderMap, strip: &StripSet) {
    remove_where(headers, |n| strip.contains(n.as_str().as_bytes()));
}

/// Every name removed from a request before it goes upstream (besides
/// those `Connection` lists), lower case: hop-by-hop headers, the
/// credentials, headers that would steer the upstream, and any copy of a
/// header the gateway sets. Built once per gateway; the one list both
/// codecs strip by ([`strip_request`], [`strip_for_upstream`]).
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
        self.names.iter().any(|n| is_name(name, n))
    }
}

/// Where [`strip_request`] puts what goes upstream: hyper's path builds a
/// `HeaderMap` ([`MapSink`]), the fast path writes bytes.
pub trait RequestSink<F> {
    /// A client's field that passes, as the codec holds it.
    fn pass(&mut self, field: F);
    /// A field the rule book states (the upstream's `Host`, joined
    /// cookies, a kept `Upgrade`, `TE: trailers`).
    fn add(&mut self, name: &HeaderName, value: &[u8]);
    /// [`Self::add`] for a value already made.
    fn add_value(&mut self, name: &HeaderName, value: &HeaderValue) {
        self.add(name, value.as_bytes());
    }
}

/// The request rewrite, once for both codecs: hands `sink` every field of
/// `request` that may reach the upstream, in order, then what the rule book
/// states: an agreed `upgrade` kept (`Upgrade` and `Connection: upgrade`),
/// `TE: trailers` for an h2 upstream that asked for it (gRPC), and for an
/// HTTP/1.1 upstream its own `Host` and the cookies in one field (h2
/// clients may split them; RFC 9113 8.2.3). Removed: [`StripSet`]'s names,
/// every name `Connection` lists, and the client's `Host`, which is
/// returned for `X-Forwarded-Host` (an h2 upstream takes the authority from
/// the URI; a `Host` there would conflict).
pub fn strip_request<'h, R: RequestFields + ?Sized>(
    request: &'h R,
    strip: &StripSet,
    upstream: &UpstreamConfig,
    upgrade: bool,
    sink: &mut impl RequestSink<R::Field<'h>>,
) -> Option<R::Field<'h>> {
    static UPGRADE: HeaderValue = HeaderValue::from_static("upgrade");
    static TRAILERS: HeaderValue = HeaderValue::from_static("trailers");
    // The names `Connection` lists: the first few (a `Connection` field
    // nearly always holds one, `close` or `keep-alive`) kept without
    // allocating (the `Vec` cost a connection-per-request about 500
    // instructions), the rest in a `Vec`. An unused slot is empty, and no
    // field name is.
    let mut few: [&[u8]; 4] = [&[]; 4];
    let mut more: Vec<&[u8]> = Vec::new();
    for (i, t) in connection_tokens(request.values(&header::CONNECTION)).enumerate() {
        match few.get_mut(i) {
            Some(slot) => *slot = t,
            None => more.push(t),
        }
    }
    let is_listed = |name: &[u8]| {
        few.iter()
            .chain(&more)
            .any(|t| t.eq_ignore_ascii_case(name))
    };
    let h1 = upstream.protocol == UpstreamProtocol::Http1;
    let mut host = None;
    // The first cookie, and all of them joined once there is a second.
    let mut cookie = None;
    let mut cookies: Option<Vec<u8>> = None;
    for field in request.held() {
        let (name, value) = R::bytes(field);
        if strip.contains(name) || is_listed(name) {
            continue;
        }
        if is_name(name, b"host") {
            host = host.or(Some(field));
        } else if h1 && is_name(name, b"cookie") {
            match cookie {
                None => cookie = Some(field),
                Some(first) => {
                    let joined = cookies.get_or_insert_with(|| R::bytes(first).1.to_vec());
                    joined.extend_from_slice(b"; ");
                    joined.extend_from_slice(value);
                }
            }
        } else {
            sink.pass(field);
        }
    }
    if upgrade {
        if let Some(v) = request.values(&header::UPGRADE).next() {
            sink.add(&header::UPGRADE, v);
            sink.add_value(&header::CONNECTION, &UPGRADE);
        }
    }
    if !h1 && list_has(request.values(&header::TE), b"trailers") {
        sink.add_value(&header::TE, &TRAILERS);
    }
    if h1 {
        sink.add_value(&header::HOST, &upstream.host_header);
        match (cookies, cookie) {
            (Some(joined), _) => sink.add(&header::COOKIE, &joined),
            (None, Some(one)) => sink.pass(one),
            (None, None) => {}
        }
    }
    host
}

/// hyper's sink for [`strip_request`]: a new map, the passed fields cloned
/// (a name or value clone shares its bytes; nothing is copied).
#[derive(Debug, Default)]
pub struct MapSink(pub HeaderMap);

impl<'h> RequestSink<(&'h HeaderName, &'h HeaderValue)> for MapSink {
    fn pass(&mut self, (name, value): (&'h HeaderName, &'h HeaderValue)) {
        self.0.append(name.clone(), value.clone());
    }

    fn add(&mut self, name: &HeaderName, value: &[u8]) {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            self.0.append(name.clone(), v);
        }
    }

    fn add_value(&mut self, name: &HeaderName, value: &HeaderValue) {
        self.0.append(name.clone(), value.clone());
    }
}

/// The target an upstream is sent, in its pieces: its base path, the
/// normalised `path`, and the client's query as it came. The caller checks
/// it parses (hyper's path always; the fast path when it differs from the
/// client's). Pieces, so that the fast path writes them straight into the
/// request it sends, with no string made between.
pub fn upstream_target_parts<'a>(
    upstream: &'a UpstreamConfig,
    path: &'a str,
    query: Option<&'a str>,
) -> [&'a str; 4] {
    match query {
        Some(q) => [&upstream.base_path, path, "?", q],
        None => [&upstream.base_path, path, "", ""],
    }
}

/// [`upstream_target_parts`] as one string.
pub fn upstream_target(upstream: &UpstreamConfig, path: &str, query: Option<&str>) -> String {
    upstream_target_parts(upstream, path, query).concat()
}

/// Rewrites hyper's request headers for the upstream (see the module doc):
/// [`strip_request`] into a new map, then [`gateway_headers`].
pub fn rewrite_request_headers(
    headers: &mut HeaderMap,
    strip: &StripSet,
    names: &HeaderNames,
    ctx: &ForwardContext<'_>,
    upstream: &UpstreamConfig,
    upgrade: bool,
) {
    // Room for what the gateway adds, so adding never regrows the map.
    let mut sink = MapSink(HeaderMap::with_capacity(headers.len() + 12));
    let original_host =
        strip_request(&*headers, strip, upstream, upgrade, &mut sink).map(|(_, v)| v.clone());
    let mut out = sink.0;
    // None of these is present any more, so they are appended, which skips
    // looking for values to replace.
    gateway_headers(names, ctx, original_host.as_ref(), |n, v| {
        out.append(n.clone(), v.clone());
    });
    *headers = out;
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

/// The second part of [`gateway_headers`]: this request's id, its trace
/// context (`traceparent`, always sent) and where it came from.
pub fn request_headers<'a>(
    names: &'a HeaderNames,
    ctx: &'a ForwardContext<'_>,
    original_host: Option<&'a HeaderValue>,
    mut add: impl FnMut(&'a HeaderName, &'a HeaderValue),
) {
    static HTTP: HeaderValue = HeaderValue::from_static("http");
    static HTTPS: HeaderValue = HeaderValue::from_static("https");
    use GatewayHeader as G;
    add(&TRACEPARENT, ctx.traceparent);
    let mut add = names.sender(add);
    add(G::RequestId, ctx.request_id);
    add(G::ForwardedFor, &ctx.peer.ip_header);
    add(G::ForwardedProto, if ctx.peer.tls { &HTTPS } else { &HTTP });
    if let Some(h) = original_host {
        add(G::ForwardedHost, h);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    use crate::fields::tests::headers as map;

    fn names(h: &HeaderMap) -> Vec<&str> {
        let mut v: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn each_peer_gets_its_own_address_as_its_forwarded_for_value() {
        let peers = [
            "10.0.0.1:1000",
            "10.0.0.1:1001",
            "192.168.100.200:2000",
            "10.0.0.1:1002",
            "[2001:db8::1]:443",
            "[2001:db8::1]:444",
            "10.0.0.1:1003",
        ];
        for p in peers {
            let addr: SocketAddr = p.parse().unwrap();
            let peer = Peer::new(addr);
            assert_eq!(
                peer.ip_header.to_str().unwrap(),
                addr.ip().to_string(),
                "{p}"
            );
        }
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
            "X_Tenant_Id",
            "_x-tenant-id",
            "-x-tenant-id",
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
    fn hop_by_hop_request_ids_and_connection_listed_headers_go_and_nothing_else() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Foo"),
            ("keep-alive", "timeout=5"),
            ("x-foo", "1"),
            ("x-bar", "2"),
            ("close", "3"),
            ("te", "trailers"),
        ]);
        strip_response(&mut h);
        assert_eq!(names(&h), vec!["close", "x-bar"]);

        // `close` is removed only when `Connection` lists it.
        let mut h = map(&[("connection", "close"), ("close", "1"), ("x-bar", "2")]);
        strip_response(&mut h);
        assert_eq!(names(&h), vec!["x-bar"]);
        let mut h = map(&[("close", "1"), ("x-bar", "2")]);
        strip_response(&mut h);
        assert_eq!(names(&h), vec!["close", "x-bar"]);

        // Several `Connection` fields, one of them unusual.
        let mut h = map(&[
            ("connection", "keep-alive"),
            ("connection", "x-baz"),
            ("x-baz", "1"),
            ("x-bar", "2"),
        ]);
        strip_response(&mut h);
        assert_eq!(names(&h), vec!["x-bar"]);
    }
}
