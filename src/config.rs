//! Configuration: `tokengate.toml -> FileConfig -> Config`.
//!
//! [`FileConfig`] mirrors the TOML file and refuses unknown keys (serde's
//! `deny_unknown_fields`, so the error names the key and its line).
//! [`Config::from_file`] then validates it into the runtime [`Config`]:
//! addresses parsed, routes normalised and pointed at known upstreams,
//! abilities and header names checked, `[tls]` and `[admin_tls]` read into
//! rustls configs (`crate::tls`: the certificate and key files are read
//! and checked here, so `check-config` and a reload check them too).
//! Every validation error names the file and the key, e.g.
//! `config/tokengate.toml: routes[1].upstream: no upstream named
//! "billing"`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::header::HeaderName;
use http::{Method, Uri};
use serde::Deserialize;

use crate::ability::Ability;
pub use crate::cache::CacheConfig;
pub use crate::ratelimit::{FileRateLimits, RateLimitConfig};
use crate::route::{check_route_name, normalize_path, route_label};
pub use crate::route::{AuthMode, RouteConfig};
pub use crate::rules::{GatewayHeader, HeaderNames, HEADER_KEYS};
use crate::signals::{LogConfig, LogFormat};
pub use crate::store::DatabaseUrl;
pub use crate::tls::{FileSni, FileTls, TlsSettings};
use crate::token::{TokenFormat, MAX_PREFIX_LEN};
pub use crate::upstream::{UpstreamConfig, UpstreamProtocol};

/// The default config path, relative to the working directory.
pub const DEFAULT_CONFIG_PATH: &str = "config/tokengate.toml";

/// A config that could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The config file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML did not parse or has unknown keys / wrong types.
    #[error("{file}: {message}")]
    Parse {
        /// The config file.
        file: PathBuf,
        /// `line L, column C: ` and toml's message (never the line's
        /// text: it may hold a secret).
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("{file}: {key}: {message}")]
    Invalid {
        /// The config file.
        file: PathBuf,
        /// Dotted path of the offending key, e.g. `routes[2].path`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

// ---------------------------------------------------------------------------
// Stage 1: the file as written.
// ---------------------------------------------------------------------------

/// The TOML file, before validation. Every table refuses unknown keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `[server]`
    #[serde(default)]
    pub server: FileServer,
    /// `[store]`
    #[serde(default)]
    pub store: FileStore,
    /// `[cache]`
    #[serde(default)]
    pub cache: FileCache,
    /// `[tokens]`
    #[serde(default)]
    pub tokens: FileTokens,
    /// `[headers]`
    #[serde(default)]
    pub headers: FileHeaders,
    /// `[[upstreams]]`
    #[serde(default)]
    pub upstreams: Vec<FileUpstream>,
    /// `[[routes]]`
    #[serde(default)]
    pub routes: Vec<FileRoute>,
    /// `[token_api]`
    #[serde(default)]
    pub token_api: FileTokenApi,
    /// `[forward_auth]`
    #[serde(default)]
    pub forward_auth: FileForwardAuth,
    /// `[rate_limits]`
    #[serde(default)]
    pub rate_limits: FileRateLimits,
    /// `[log]`
    #[serde(default)]
    pub log: FileLog,
    /// `[tls]`: the public listener speaks TLS when present.
    #[serde(default)]
    pub tls: Option<FileTls>,
    /// `[admin_tls]`: the admin listener speaks TLS when present.
    #[serde(default)]
    pub admin_tls: Option<FileTls>,
}

/// `[server]`: listeners and connection handling.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileServer {
    /// Public listener: proxy and seed token endpoints. Default `127.0.0.1:8080`.
    pub listen: String,
    /// Operator listener: native API, health, metrics. Default `127.0.0.1:8081`.
    pub admin_listen: String,
    /// Seconds in-flight requests get to finish after SIGTERM / ctrl-c. Default 30.
    pub shutdown_grace_seconds: u64,
    /// Seconds a client gets to send its request headers (slowloris bound). Default 10.
    pub header_read_timeout_seconds: u64,
    /// Seconds a connection with no request in flight is kept open:
    /// HTTP/1.1 keep-alive between requests, HTTP/2 with no open stream;
    /// also how long a write may wait for the client to read (over
    /// HTTP/2, a stream's frame for the client's window) before the
    /// connection is closed. Default 60.
    pub idle_timeout_seconds: u64,
    /// Streams one HTTP/2 client connection may have open at once.
    /// Default 100.
    pub h2_max_concurrent_streams: u32,
    /// Serve plain HTTP/1.1 requests on the public listener by the fast
    /// path (`crate::fast`) rather than hyper. Default true.
    pub fast_path: bool,
    /// Keep a client's well-formed `X-Request-Id` (at most 128 visible
    /// ASCII characters) instead of replacing it with the gateway's own.
    /// Default false: only a trusted front proxy should set it.
    pub trust_request_id: bool,
}

impl Default for FileServer {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            admin_listen: "127.0.0.1:8081".into(),
            shutdown_grace_seconds: 30,
            header_read_timeout_seconds: 10,
            idle_timeout_seconds: 60,
            h2_max_concurrent_streams: 100,
            fast_path: true,
            trust_request_id: false,
        }
    }
}

/// `[store]`: where tokens live.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileStore {
    /// `sqlite://path/to/file.db` (default `sqlite://data/tokengate.db`) or `postgres://...`.
    pub url: String,
    /// Pooled store connections. Default 8.
    pub max_connections: u32,
    /// Seconds to wait for a store connection or query before failing closed (503). Default 5.
    pub timeout_seconds: u64,
    /// Seconds between flushes of batched last-used times. Default 10.
    pub last_used_flush_seconds: u64,
    /// A token in constant use has its last-used time written at most once
    /// per this many seconds. Default 60; 0 writes every flush.
    pub last_used_resolution_seconds: u64,
}

impl Default for FileStore {
    fn default() -> Self {
        Self {
            url: "sqlite://data/tokengate.db".into(),
            max_connections: 8,
            timeout_seconds: 5,
            last_used_flush_seconds: 10,
            last_used_resolution_seconds: 60,
        }
    }
}

/// `[cache]`: the in-memory cache of token records.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileCache {
    /// Seconds a found token record is kept. Default 30. Bounds how stale a
    /// record can be when an invalidation is missed.
    pub ttl_seconds: u64,
    /// Seconds an unknown hash is remembered as unknown. Default 5.
    pub negative_ttl_seconds: u64,
    /// Most records kept (found and unknown together). Default 1,000,000.
    pub max_entries: u64,
}

impl Default for FileCache {
    fn default() -> Self {
        Self {
            ttl_seconds: 30,
            negative_ttl_seconds: 5,
            max_entries: 1_000_000,
        }
    }
}

/// `[tokens]`: the token format.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileTokens {
    /// Prefix of root tokens. Default `tgr`.
    pub root_prefix: String,
    /// Prefix of tenant-admin tokens. Default `tga`.
    pub tenant_admin_prefix: String,
    /// Prefix of session tokens. Default `tgs`.
    pub session_prefix: String,
    /// Prefix of api tokens. Default `tgk`.
    pub api_prefix: String,
    /// Accept tokens in no format of ours, imported by their SHA-256 with
    /// `tokengate token import`. Default false: such tokens are refused
    /// without a lookup. When true, garbage reaches the cache (and, once per
    /// negative TTL, the store).
    pub accept_legacy: bool,
}

impl Default for FileTokens {
    fn default() -> Self {
        Self {
            root_prefix: "tgr".into(),
            tenant_admin_prefix: "tga".into(),
            session_prefix: "tgs".into(),
            api_prefix: "tgk".into(),
            accept_legacy: false,
        }
    }
}

/// `[headers]`: names of the headers the gateway sends upstream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileHeaders {
    /// Default `X-Tenant-Id`.
    pub tenant_id: String,
    /// Default `X-Account-Id`.
    pub account_id: String,
    /// Default `X-Workspace-Id`.
    pub workspace_id: String,
    /// Default `X-Token-Id`.
    pub token_id: String,
    /// Default `X-Token-Name`.
    pub token_name: String,
    /// Default `X-Token-Abilities` (comma-separated).
    pub token_abilities: String,
    /// Default `X-Request-Id`.
    pub request_id: String,
    /// Default `X-Forwarded-For`.
    pub forwarded_for: String,
    /// Default `X-Forwarded-Proto`.
    pub forwarded_proto: String,
    /// Default `X-Forwarded-Host`.
    pub forwarded_host: String,
    /// Headers not to send, by key (`token_name`, `forwarded_host`, ...).
    /// Default none: all ten are sent. Client-sent copies of an omitted
    /// header are still removed, so an upstream never sees a forged one.
    pub omit: Vec<String>,
}

impl Default for FileHeaders {
    fn default() -> Self {
        Self {
            tenant_id: "X-Tenant-Id".into(),
            account_id: "X-Account-Id".into(),
            workspace_id: "X-Workspace-Id".into(),
            token_id: "X-Token-Id".into(),
            token_name: "X-Token-Name".into(),
            token_abilities: "X-Token-Abilities".into(),
            request_id: "X-Request-Id".into(),
            forwarded_for: "X-Forwarded-For".into(),
            forwarded_proto: "X-Forwarded-Proto".into(),
            forwarded_host: "X-Forwarded-Host".into(),
            omit: Vec::new(),
        }
    }
}

/// `[[upstreams]]`: a service requests are forwarded to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUpstream {
    /// Referenced by `routes[].upstream`.
    pub name: String,
    /// `http://host:port` or `https://host:port`, optionally with a base path
    /// that is put in front of every forwarded path.
    pub url: String,
    /// `http1` (default) or `h2` (prior knowledge on http, ALPN on https).
    #[serde(default)]
    pub protocol: Option<String>,
    /// Milliseconds to establish a connection before answering 502. Default 3000.
    #[serde(default)]
    pub connect_timeout_ms: Option<u64>,
    /// Milliseconds to wait for response headers before answering 504. Default 30000.
    #[serde(default)]
    pub response_timeout_ms: Option<u64>,
    /// Seconds an idle pooled connection is kept. Default 60.
    #[serde(default)]
    pub pool_idle_timeout_seconds: Option<u64>,
    /// Idle pooled connections kept per host. Default 256.
    #[serde(default)]
    pub pool_max_idle: Option<usize>,
    /// Connections open to this upstream at once, idle or busy, across
    /// both paths. A request that finds none free within the connect
    /// timeout is answered 503 `UPSTREAM_BUSY`. Default 512.
    #[serde(default)]
    pub max_connections: Option<usize>,
}

/// `[[routes]]`: which requests go where, and what they need.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRoute {
    /// Path prefix, matched on segment boundaries against the normalised path.
    pub path: String,
    /// Upstream name.
    pub upstream: String,
    /// Allowed methods; empty or absent means every method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// `required` (default), `optional` or `none`.
    #[serde(default)]
    pub auth: Option<String>,
    /// Abilities a token needs, all of them; empty means any valid token.
    #[serde(default)]
    pub abilities: Vec<String>,
    /// Names of `[[rate_limits.policies]]` counted on this route.
    #[serde(default)]
    pub rate_limits: Vec<String>,
    /// The route's `route` label in metrics and the access log; default
    /// its `path`. Unique; ASCII letters, digits and `_ - . : /`.
    #[serde(default)]
    pub name: Option<String>,
}

/// `[token_api]`: public paths of the five documented token flows. An empty
/// string turns a flow off.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileTokenApi {
    /// Default `/api/white-label/token`.
    pub white_label_token: String,
    /// Default `/api/white-label/users`.
    pub white_label_users: String,
    /// Default `/api/v1/global/users/gettokenbycustomerid`.
    pub customer_id_token: String,
    /// Default `/api/v1/apiClient/token`.
    pub sub_account_token: String,
    /// Default `/api/v1/global/generate-token`.
    pub session_exchange: String,
    /// Default `/api/v1/global/verify`.
    pub session_verify: String,
    /// Default `/api/v1/user/api-tokens`.
    pub personal_access_token: String,
}

impl Default for FileTokenApi {
    fn default() -> Self {
        Self {
            white_label_token: "/api/white-label/token".into(),
            white_label_users: "/api/white-label/users".into(),
            customer_id_token: "/api/v1/global/users/gettokenbycustomerid".into(),
            sub_account_token: "/api/v1/apiClient/token".into(),
            session_exchange: "/api/v1/global/generate-token".into(),
            session_verify: "/api/v1/global/verify".into(),
            personal_access_token: "/api/v1/user/api-tokens".into(),
        }
    }
}

/// The forward-auth endpoint's default path.
pub const DEFAULT_FORWARD_AUTH_PATH: &str = "/_tokengate/auth";

/// `[forward_auth]`: the endpoint front proxies (nginx `auth_request`,
/// Caddy `forward_auth`, Traefik ForwardAuth, Envoy ext_authz) ask before
/// they forward a request themselves. On by default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileForwardAuth {
    /// Where it is served on the public listener, with everything below it
    /// (Envoy's `path_prefix` form). Default `/_tokengate/auth`; `""` turns
    /// it off.
    pub path: String,
}

/// `[log]`: the format of every log line and the access log.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileLog {
    /// `text` (default; colour only on a terminal) or `json`.
    pub format: String,
    /// One line per request, after its response. Default true.
    pub access: bool,
    /// Where access lines go: a file, opened for appending (created if
    /// missing). Default: none, standard output (the diagnostic log goes
    /// to standard error).
    pub access_file: Option<PathBuf>,
}

impl Default for FileLog {
    fn default() -> Self {
        Self {
            format: "text".into(),
            access: true,
            access_file: None,
        }
    }
}

impl Default for FileForwardAuth {
    fn default() -> Self {
        Self {
            path: DEFAULT_FORWARD_AUTH_PATH.into(),
        }
    }
}

// ---------------------------------------------------------------------------
// Stage 2: the validated runtime config.
// ---------------------------------------------------------------------------

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Listeners and connection handling.
    pub server: ServerConfig,
    /// The token store.
    pub store: StoreConfig,
    /// The token-record cache.
    pub cache: CacheConfig,
    /// Token prefixes and legacy acceptance.
    pub tokens: TokenFormat,
    /// Names of the headers sent upstream.
    pub headers: HeaderNames,
    /// Upstreams, in file order.
    pub upstreams: Vec<UpstreamConfig>,
    /// Routes, in file order (the route table sorts them).
    pub routes: Vec<RouteConfig>,
    /// Paths of the seed token flows; `None` = turned off.
    pub token_api: TokenApiPaths,
    /// The forward-auth endpoint.
    pub forward_auth: ForwardAuthConfig,
    /// Rate-limit policies, where counts are kept, the quota flush period.
    pub rate_limits: RateLimitConfig,
    /// Log format and the access log.
    pub log: LogConfig,
    /// The public listener's TLS; `None`: plain TCP.
    pub tls: Option<TlsSettings>,
    /// The admin listener's TLS; `None`: plain TCP.
    pub admin_tls: Option<TlsSettings>,
}

impl Config {
    /// The distinct `route` label values, in series order
    /// ([`RouteConfig::series`] indexes it).
    pub fn route_labels(&self) -> Vec<&str> {
        let mut labels: Vec<&str> = Vec::new();
        for r in &self.routes {
            if r.series == labels.len() {
                labels.push(&r.label);
            }
        }
        labels
    }
}

/// Validated `[forward_auth]`.
#[derive(Clone, Debug, Default)]
pub struct ForwardAuthConfig {
    /// Normalised, no trailing slash, never `/`; `None` = turned off.
    pub path: Option<String>,
}

/// Validated `[server]`.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Public listener.
    pub listen: SocketAddr,
    /// Operator listener.
    pub admin_listen: SocketAddr,
    /// Bound on finishing in-flight requests at shutdown.
    pub shutdown_grace: Duration,
    /// Bound on receiving request headers (the first request's from the
    /// accept, a later one's from its first byte).
    pub header_read_timeout: Duration,
    /// Bound on a connection with no request in flight.
    pub idle_timeout: Duration,
    /// HTTP/2 streams per client connection.
    pub h2_max_concurrent_streams: u32,
    /// Whether plain HTTP/1.1 requests take the fast path.
    pub fast_path: bool,
    /// Whether a client's well-formed `X-Request-Id` is kept.
    pub trust_request_id: bool,
}

/// Validated `[store]`.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Where the store is.
    pub url: DatabaseUrl,
    /// Pool size.
    pub max_connections: u32,
    /// Connection acquire / query bound.
    pub timeout: Duration,
    /// Period of last-used flushes.
    pub last_used_flush: Duration,
    /// Least time between two writes of one token's last-used time.
    pub last_used_resolution: Duration,
}

/// Paths of the seed token flows (`None` = off).
#[derive(Clone, Debug, Default)]
pub struct TokenApiPaths {
    /// White-label mint.
    pub white_label_token: Option<String>,
    /// White-label user list.
    pub white_label_users: Option<String>,
    /// Token by customer id.
    pub customer_id_token: Option<String>,
    /// Sub-account token.
    pub sub_account_token: Option<String>,
    /// Session exchange.
    pub session_exchange: Option<String>,
    /// Session-exchange verify step.
    pub session_verify: Option<String>,
    /// Personal access token.
    pub personal_access_token: Option<String>,
}

/// Where and what a TOML error is, as `line L, column C: message`. Never
/// the line itself (toml's `Display` quotes it, caret and all): a line of
/// the config can hold a secret (`store.url` with its password, a Redis
/// URL), and this message is logged at every failed reload.
fn parse_message(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end();
    let Some(at) = e.span().map(|s| s.start.min(text.len())) else {
        return message.to_string();
    };
    let before = text.get(..at).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    format!("line {line}, column {column}: {message}")
}

impl Config {
    /// Reads and validates a config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(path, &text)
    }

    /// Parses and validates TOML text; `path` only names the source in errors.
    pub fn from_toml(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: path.to_path_buf(),
            message: parse_message(text, &e),
        })?;
        Self::validate(path, file)
    }

    /// Validates a parsed file.
    pub fn validate(path: &Path, f: FileConfig) -> Result<Self, ConfigError> {
        let server = validate_server(path, &f.server)?;
        let store = validate_store(path, &f.store)?;
        let cache = validate_cache(path, &f.cache)?;
        let tokens = validate_tokens(path, &f.tokens)?;
        let headers = validate_headers(path, &f.headers)?;
        let rate_limits = RateLimitConfig::validate(&f.rate_limits).map_err(|(key, message)| {
            ConfigError::Invalid {
                file: path.to_path_buf(),
                key,
                message,
            }
        })?;
        let upstreams = validate_upstreams(path, &f.upstreams)?;
        let routes = validate_routes(path, &f.routes, &upstreams, &rate_limits)?;
        let log = validate_log(path, &f.log)?;
        let token_api = validate_token_api(path, &f.token_api)?;
        let forward_auth = validate_forward_auth(path, &f.forward_auth, &token_api)?;

        // Last: reads the certificate files, once the rest is known good.
        let tls = validate_tls(path, "tls", &f.tls)?;
        let admin_tls = validate_tls(path, "admin_tls", &f.admin_tls)?;

        Ok(Config {
            server,
            store,
            cache,
            tokens,
            headers,
            upstreams,
            routes,
            token_api,
            forward_auth,
            rate_limits,
            tls,
            admin_tls,
            log,
        })
    }
}

/// Makes the errors of one config file: each names the file and the key.
#[derive(Clone, Copy)]
struct Check<'a>(&'a Path);

impl Check<'_> {
    fn invalid(self, key: &str, message: String) -> ConfigError {
        ConfigError::Invalid {
            file: self.0.to_path_buf(),
            key: key.to_string(),
            message,
        }
    }

    fn addr(self, key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
        s.parse::<SocketAddr>()
            .map_err(|e| self.invalid(key, format!("{s:?} is not a socket address: {e}")))
    }

    fn positive(self, key: &str, v: u64) -> Result<u64, ConfigError> {
        if v == 0 {
            Err(self.invalid(key, "must be at least 1".into()))
        } else {
            Ok(v)
        }
    }
}

/// `[server]`.
fn validate_server(path: &Path, s: &FileServer) -> Result<ServerConfig, ConfigError> {
    let c = Check(path);
    let server = ServerConfig {
        listen: c.addr("server.listen", &s.listen)?,
        admin_listen: c.addr("server.admin_listen", &s.admin_listen)?,
        shutdown_grace: Duration::from_secs(s.shutdown_grace_seconds),
        header_read_timeout: Duration::from_secs(c.positive(
            "server.header_read_timeout_seconds",
            s.header_read_timeout_seconds,
        )?),
        idle_timeout: Duration::from_secs(
            c.positive("server.idle_timeout_seconds", s.idle_timeout_seconds)?,
        ),
        h2_max_concurrent_streams: u32::try_from(c.positive(
            "server.h2_max_concurrent_streams",
            u64::from(s.h2_max_concurrent_streams),
        )?)
        .unwrap_or(u32::MAX),
        fast_path: s.fast_path,
        trust_request_id: s.trust_request_id,
    };
    if server.listen == server.admin_listen && server.listen.port() != 0 {
        return Err(c.invalid(
            "server.admin_listen",
            "must differ from server.listen".into(),
        ));
    }
    Ok(server)
}

/// `[store]`.
fn validate_store(path: &Path, s: &FileStore) -> Result<StoreConfig, ConfigError> {
    let c = Check(path);
    let url = s.url.trim();
    if !(url.starts_with("sqlite:")
        || url.starts_with("postgres://")
        || url.starts_with("postgresql://"))
    {
        return Err(c.invalid(
            "store.url",
            "must start with sqlite:, postgres:// or postgresql://".into(),
        ));
    }
    let store = StoreConfig {
        url: DatabaseUrl::new(url),
        max_connections: u32::try_from(
            c.positive("store.max_connections", u64::from(s.max_connections))?,
        )
        .unwrap_or(8),
        timeout: Duration::from_secs(c.positive("store.timeout_seconds", s.timeout_seconds)?),
        last_used_flush: Duration::from_secs(
            c.positive("store.last_used_flush_seconds", s.last_used_flush_seconds)?,
        ),
        last_used_resolution: Duration::from_secs(s.last_used_resolution_seconds),
    };
    Ok(store)
}

/// `[cache]`.
fn validate_cache(path: &Path, k: &FileCache) -> Result<CacheConfig, ConfigError> {
    let c = Check(path);
    let cache = CacheConfig {
        ttl: Duration::from_secs(c.positive("cache.ttl_seconds", k.ttl_seconds)?),
        negative_ttl: Duration::from_secs(
            c.positive("cache.negative_ttl_seconds", k.negative_ttl_seconds)?,
        ),
        max_entries: c.positive("cache.max_entries", k.max_entries)?,
    };
    Ok(cache)
}

/// `[tokens]`: the four prefixes, distinct, and the legacy switch.
fn validate_tokens(path: &Path, t: &FileTokens) -> Result<TokenFormat, ConfigError> {
    let c = Check(path);
    let prefixes = [
        ("tokens.root_prefix", t.root_prefix.clone()),
        ("tokens.tenant_admin_prefix", t.tenant_admin_prefix.clone()),
        ("tokens.session_prefix", t.session_prefix.clone()),
        ("tokens.api_prefix", t.api_prefix.clone()),
    ];
    let mut seen = HashSet::new();
    for (key, p) in &prefixes {
        if p.is_empty() || p.len() > MAX_PREFIX_LEN || !p.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(c.invalid(
                key,
                format!("{p:?} must be 1 to {MAX_PREFIX_LEN} ASCII letters or digits"),
            ));
        }
        if !seen.insert(p.clone()) {
            return Err(c.invalid(key, format!("prefix {p:?} is used twice")));
        }
    }
    let tokens = TokenFormat::new(prefixes.map(|(_, p)| p), t.accept_legacy);
    Ok(tokens)
}

/// `[[upstreams]]`.
fn validate_upstreams(
    path: &Path,
    list: &[FileUpstream],
) -> Result<Vec<UpstreamConfig>, ConfigError> {
    let c = Check(path);
    let mut upstreams = Vec::with_capacity(list.len());
    for (i, u) in list.iter().enumerate() {
        let key = |k: &str| format!("upstreams[{i}].{k}");
        if u.name.is_empty() {
            return Err(c.invalid(&key("name"), "must not be empty".into()));
        }
        if upstreams.iter().any(|x: &UpstreamConfig| x.name == u.name) {
            return Err(c.invalid(&key("name"), format!("{:?} is defined twice", u.name)));
        }
        let uri: Uri = u
            .url
            .parse()
            .map_err(|e| c.invalid(&key("url"), format!("{:?} is not a URL: {e}", u.url)))?;
        let scheme = match uri.scheme_str() {
            Some("http") => http::uri::Scheme::HTTP,
            Some("https") => http::uri::Scheme::HTTPS,
            _ => return Err(c.invalid(&key("url"), "scheme must be http or https".into())),
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| c.invalid(&key("url"), "needs a host".into()))?;
        if uri.query().is_some() {
            return Err(c.invalid(&key("url"), "must not have a query string".into()));
        }
        let base_path = uri.path().trim_end_matches('/').to_string();
        let protocol = match u.protocol.as_deref() {
            None | Some("http1") => UpstreamProtocol::Http1,
            Some("h2") => UpstreamProtocol::H2,
            Some(other) => {
                return Err(c.invalid(
                    &key("protocol"),
                    format!("{other:?} is not one of \"http1\", \"h2\""),
                ))
            }
        };
        let host_header = http::HeaderValue::from_str(authority.as_str())
            .map_err(|_| c.invalid(&key("url"), "host is not a valid Host header".into()))?;
        upstreams.push(UpstreamConfig {
            name: u.name.clone(),
            scheme,
            host_header,
            authority,
            base_path,
            protocol,
            connect_timeout: Duration::from_millis(c.positive(
                &key("connect_timeout_ms"),
                u.connect_timeout_ms.unwrap_or(3_000),
            )?),
            response_timeout: Duration::from_millis(c.positive(
                &key("response_timeout_ms"),
                u.response_timeout_ms.unwrap_or(30_000),
            )?),
            pool_idle_timeout: Duration::from_secs(u.pool_idle_timeout_seconds.unwrap_or(60)),
            pool_max_idle: u.pool_max_idle.unwrap_or(256),
            max_connections: usize::try_from(c.positive(
                &key("max_connections"),
                u.max_connections.unwrap_or(512) as u64,
            )?)
            .unwrap_or(usize::MAX),
        });
    }
    Ok(upstreams)
}

/// `[[routes]]`, each naming one of `upstreams`.
fn validate_routes(
    path: &Path,
    list: &[FileRoute],
    upstreams: &[UpstreamConfig],
    rate_limits: &RateLimitConfig,
) -> Result<Vec<RouteConfig>, ConfigError> {
    let c = Check(path);
    let mut routes = Vec::with_capacity(list.len());
    for (i, r) in list.iter().enumerate() {
        let key = |k: &str| format!("routes[{i}].{k}");
        if !r.path.starts_with('/') {
            return Err(c.invalid(&key("path"), format!("{:?} must start with /", r.path)));
        }
        let mut path = normalize_path(&r.path)
            .map_err(|e| c.invalid(&key("path"), format!("{:?}: {e}", r.path)))?
            .into_owned();
        if path != r.path.trim_end_matches('/') && path != r.path {
            return Err(c.invalid(
                &key("path"),
                format!("{:?} is not normalised; write {path:?}", r.path),
            ));
        }
        if path.len() > 1 && path.ends_with('/') {
            path.pop();
        }
        let upstream = upstreams
            .iter()
            .position(|u| u.name == r.upstream)
            .ok_or_else(|| {
                c.invalid(
                    &key("upstream"),
                    format!("no upstream named {:?}", r.upstream),
                )
            })?;
        let mut methods = Vec::with_capacity(r.methods.len());
        for m in &r.methods {
            let m = Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                .map_err(|_| c.invalid(&key("methods"), format!("{m:?} is not a method")))?;
            methods.push(m);
        }
        let auth = match r.auth.as_deref() {
            None | Some("required") => AuthMode::Required,
            Some("optional") => AuthMode::Optional,
            Some("none") => AuthMode::None,
            Some(other) => {
                return Err(c.invalid(
                    &key("auth"),
                    format!("{other:?} is not one of \"required\", \"optional\", \"none\""),
                ))
            }
        };
        let mut abilities = Vec::with_capacity(r.abilities.len());
        for a in &r.abilities {
            abilities.push(
                Ability::parse(a)
                    .map_err(|e| c.invalid(&key("abilities"), format!("{a:?}: {e}")))?,
            );
        }
        if auth == AuthMode::None && !abilities.is_empty() {
            return Err(c.invalid(
                &key("abilities"),
                "a route with auth = \"none\" cannot require abilities".into(),
            ));
        }
        if routes.iter().any(|x: &RouteConfig| {
            x.path == path
                && (x.methods.is_empty()
                    || methods.is_empty()
                    || x.methods.iter().any(|m| methods.contains(m)))
        }) {
            return Err(c.invalid(
                &key("path"),
                format!("{path:?} overlaps an earlier route with the same path and methods"),
            ));
        }
        let route_limits = rate_limits
            .resolve(&r.rate_limits)
            .map_err(|m| c.invalid(&key("rate_limits"), m))?;
        if let Some(name) = &r.name {
            check_route_name(name).map_err(|m| c.invalid(&key("name"), m))?;
        }
        // Each label names one series: a name is used once, and by no
        // other route's path; unnamed routes on one path (split by
        // method) share theirs.
        let label = route_label(r.name.as_deref(), &path);
        let same = routes.iter().find(|x: &&RouteConfig| x.label == label);
        let series = match same {
            Some(x) if r.name.is_none() && x.label == x.path => x.series,
            Some(_) => {
                // Blame the key that made the label.
                let k = if r.name.is_some() { "name" } else { "path" };
                return Err(c.invalid(
                    &key(k),
                    format!("{label:?} is already the name or path of an earlier route"),
                ));
            }
            None => routes.iter().map(|x| x.series + 1).max().unwrap_or(0),
        };
        routes.push(RouteConfig {
            path,
            upstream,
            methods,
            auth,
            abilities,
            rate_limits: route_limits,
            label,
            series,
        });
    }
    Ok(routes)
}

/// `[tls]` or `[admin_tls]` (`table`): reads and checks every certificate
/// and key it names.
fn validate_tls(
    path: &Path,
    table: &str,
    t: &Option<FileTls>,
) -> Result<Option<TlsSettings>, ConfigError> {
    t.as_ref()
        .map(|t| crate::tls::build(table, t))
        .transpose()
        .map_err(|e| Check(path).invalid(&e.key, e.message))
}

/// `[log]`.
fn validate_log(path: &Path, l: &FileLog) -> Result<LogConfig, ConfigError> {
    let c = Check(path);
    let log = LogConfig {
        format: match l.format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(c.invalid(
                    "log.format",
                    format!("{other:?} is not one of \"text\", \"json\""),
                ))
            }
        },
        access: l.access,
        access_file: l.access_file.clone(),
    };
    if log
        .access_file
        .as_ref()
        .is_some_and(|p| p.as_os_str().is_empty())
    {
        return Err(c.invalid("log.access_file", "must not be empty".into()));
    }
    Ok(log)
}

/// `headers.omit` as bits of [`HEADER_KEYS`] positions.
fn omitted(path: &Path, keys: &[String]) -> Result<u16, ConfigError> {
    keys.iter().try_fold(0u16, |bits, key| {
        match HEADER_KEYS.iter().position(|k| k == key) {
            Some(i) => Ok(bits | 1 << i),
            None => Err(ConfigError::Invalid {
                file: path.to_path_buf(),
                key: "headers.omit".into(),
                message: format!("{key:?} is not one of {}", HEADER_KEYS.join(", ")),
            }),
        }
    })
}

fn validate_headers(path: &Path, h: &FileHeaders) -> Result<HeaderNames, ConfigError> {
    let name = |key: &str, v: &str| {
        HeaderName::from_bytes(v.as_bytes()).map_err(|_| ConfigError::Invalid {
            file: path.to_path_buf(),
            key: format!("headers.{key}"),
            message: format!("{v:?} is not a header name"),
        })
    };
    let names = HeaderNames {
        tenant_id: name("tenant_id", &h.tenant_id)?,
        account_id: name("account_id", &h.account_id)?,
        workspace_id: name("workspace_id", &h.workspace_id)?,
        token_id: name("token_id", &h.token_id)?,
        token_name: name("token_name", &h.token_name)?,
        token_abilities: name("token_abilities", &h.token_abilities)?,
        request_id: name("request_id", &h.request_id)?,
        forwarded_for: name("forwarded_for", &h.forwarded_for)?,
        forwarded_proto: name("forwarded_proto", &h.forwarded_proto)?,
        forwarded_host: name("forwarded_host", &h.forwarded_host)?,
        omit: omitted(path, &h.omit)?,
    };
    let mut seen = HashSet::new();
    for n in names.all() {
        if !seen.insert(n.as_str()) {
            return Err(ConfigError::Invalid {
                file: path.to_path_buf(),
                key: "headers".into(),
                message: format!("{n} is used for two headers"),
            });
        }
        if crate::fields::is_reserved_header(n) {
            return Err(ConfigError::Invalid {
                file: path.to_path_buf(),
                key: "headers".into(),
                message: format!("{n} is a hop-by-hop or credential header"),
            });
        }
    }
    Ok(names)
}

fn validate_token_api(path: &Path, t: &FileTokenApi) -> Result<TokenApiPaths, ConfigError> {
    let mut seen = HashSet::new();
    let mut check = |key: &str, v: &str| -> Result<Option<String>, ConfigError> {
        if v.is_empty() {
            return Ok(None);
        }
        let invalid = |message: String| ConfigError::Invalid {
            file: path.to_path_buf(),
            key: format!("token_api.{key}"),
            message,
        };
        let n = normalize_path(v)
            .map_err(|e| invalid(format!("{v:?}: {e}")))?
            .into_owned();
        if n != v {
            return Err(invalid(format!("{v:?} is not normalised; write {n:?}")));
        }
        if !seen.insert(n.clone()) {
            return Err(invalid(format!("{v:?} is used by two flows")));
        }
        Ok(Some(n))
    };
    Ok(TokenApiPaths {
        white_label_token: check("white_label_token", &t.white_label_token)?,
        white_label_users: check("white_label_users", &t.white_label_users)?,
        customer_id_token: check("customer_id_token", &t.customer_id_token)?,
        sub_account_token: check("sub_account_token", &t.sub_account_token)?,
        session_exchange: check("session_exchange", &t.session_exchange)?,
        session_verify: check("session_verify", &t.session_verify)?,
        personal_access_token: check("personal_access_token", &t.personal_access_token)?,
    })
}

fn validate_forward_auth(
    path: &Path,
    f: &FileForwardAuth,
    token_api: &TokenApiPaths,
) -> Result<ForwardAuthConfig, ConfigError> {
    let v = f.path.as_str();
    if v.is_empty() {
        return Ok(ForwardAuthConfig { path: None });
    }
    let invalid = |message: String| ConfigError::Invalid {
        file: path.to_path_buf(),
        key: "forward_auth.path".into(),
        message,
    };
    let n = normalize_path(v).map_err(|e| invalid(format!("{v:?}: {e}")))?;
    if n == "/" {
        return Err(invalid(
            "\"/\" would take every request; use a path of its own, or \"\" to turn it off".into(),
        ));
    }
    let n = n.trim_end_matches('/');
    if n != v {
        return Err(invalid(format!("{v:?} is not normalised; write {n:?}")));
    }
    let seeds = [
        &token_api.white_label_token,
        &token_api.white_label_users,
        &token_api.customer_id_token,
        &token_api.sub_account_token,
        &token_api.session_exchange,
        &token_api.session_verify,
        &token_api.personal_access_token,
    ];
    if let Some(p) = seeds
        .into_iter()
        .flatten()
        .find(|p| crate::route::prefix_matches(n, p))
    {
        return Err(invalid(format!(
            "{v:?} would take the seed token endpoint {p:?} (token_api)"
        )));
    }
    Ok(ForwardAuthConfig {
        path: Some(n.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(Path::new("t.toml"), text)
    }

    const MINIMAL: &str = r#"
        [[upstreams]]
        name = "api"
        url = "http://127.0.0.1:3000"
        [[routes]]
        path = "/"
        upstream = "api"
    "#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.server.admin_listen.to_string(), "127.0.0.1:8081");
        assert_eq!(c.cache.ttl, Duration::from_secs(30));
        assert_eq!(c.cache.negative_ttl, Duration::from_secs(5));
        assert_eq!(c.routes[0].auth, AuthMode::Required);
        assert_eq!(c.headers.tenant_id.as_str(), "x-tenant-id");
        assert!(c.headers.sends(GatewayHeader::TokenName));
        // Each key turns off its own header and no other, and a client's
        // copy of it is still stripped (it stays in `all()`).
        for (i, key) in HEADER_KEYS.iter().enumerate() {
            let c = parse(&format!("{MINIMAL}\n[headers]\nomit = [\"{key}\"]\n")).unwrap();
            for (j, h) in GatewayHeader::ALL.iter().enumerate() {
                assert_eq!(c.headers.sends(*h), i != j, "omit {key}: {h:?}");
            }
            let name = c.headers.all()[i].as_str().to_string();
            assert_eq!(name, format!("x-{}", key.replace('_', "-")));
        }
        let c = parse(MINIMAL).unwrap();
        assert_eq!(
            c.token_api.white_label_token.as_deref(),
            Some("/api/white-label/token")
        );
        assert_eq!(c.forward_auth.path.as_deref(), Some("/_tokengate/auth"));
    }

    #[test]
    fn forward_auth_path_is_set_or_turned_off() {
        let c = parse(&format!(
            "{MINIMAL}\n[forward_auth]\npath = \"/auth/check\"\n"
        ))
        .unwrap();
        assert_eq!(c.forward_auth.path.as_deref(), Some("/auth/check"));
        let c = parse(&format!("{MINIMAL}\n[forward_auth]\npath = \"\"\n")).unwrap();
        assert_eq!(c.forward_auth.path, None);
        // A seed endpoint moved out of the way frees its old path.
        let c = parse(&format!(
            "{MINIMAL}\n[forward_auth]\npath = \"/api/v1/global\"\n[token_api]\nsession_exchange = \"\"\nsession_verify = \"\"\ncustomer_id_token = \"/other\"\n"
        ))
        .unwrap();
        assert_eq!(c.forward_auth.path.as_deref(), Some("/api/v1/global"));
    }

    #[test]
    fn route_names_label_series_and_are_checked() {
        let up = "[[upstreams]]\nname = \"a\"\nurl = \"http://x\"\n";
        let route = |path: &str, name: Option<&str>, methods: &str| {
            let name = name.map_or(String::new(), |n| format!("name = {n:?}\n"));
            format!("[[routes]]\npath = {path:?}\nupstream = \"a\"\nmethods = [{methods}]\n{name}")
        };
        let c = parse(&format!(
            "{up}{}{}{}{}",
            route("/api", None, "\"GET\""),
            route("/api", None, "\"POST\""),
            route("/api/calls", Some("calls"), ""),
            route("/b", None, ""),
        ))
        .unwrap();
        let series: Vec<(&str, usize)> = c
            .routes
            .iter()
            .map(|r| (r.label.as_str(), r.series))
            .collect();
        assert_eq!(series, [("/api", 0), ("/api", 0), ("calls", 1), ("/b", 2)]);
        assert_eq!(c.route_labels(), ["/api", "calls", "/b"]);
        assert!(c.log.access);
        assert_eq!(c.log.format, LogFormat::Text);
        assert!(!c.server.trust_request_id);
        for (text, key) in [
            (
                format!(
                    "{up}{}{}",
                    route("/a", Some("x"), ""),
                    route("/b", Some("x"), "")
                ),
                "routes[1].name",
            ),
            (
                format!(
                    "{up}{}{}",
                    route("/a", None, ""),
                    route("/b", Some("/a"), "")
                ),
                "routes[1].name",
            ),
            (
                format!(
                    "{up}{}{}",
                    route("/a", Some("/b"), ""),
                    route("/b", None, "")
                ),
                "routes[1].path",
            ),
            (
                format!("{up}{}", route("/a", Some("a b"), "")),
                "routes[0].name",
            ),
            (
                format!("{up}{}", route("/a", Some("a\"b"), "")),
                "routes[0].name",
            ),
            (
                format!("{up}{}", route("/a", Some(""), "")),
                "routes[0].name",
            ),
            (
                format!("{up}{}", route("/a", Some("none"), "")),
                "routes[0].name",
            ),
            (
                format!("{up}{}", route("/a", Some(&"n".repeat(65)), "")),
                "routes[0].name",
            ),
            ("[log]\nformat = \"xml\"\n".into(), "log.format"),
            ("[log]\naccess_file = \"\"\n".into(), "log.access_file"),
        ] {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        let c = parse("[log]\nformat = \"json\"\naccess = false\naccess_file = \"/tmp/a.log\"\n[server]\ntrust_request_id = true\n").unwrap();
        assert_eq!(c.log.format, LogFormat::Json);
        assert!(!c.log.access);
        assert!(c.server.trust_request_id);
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = parse("[cache]\nttl_secs = 3\n").unwrap_err().to_string();
        assert!(err.contains("ttl_secs"), "{err}");
        let err = parse("[[routes]]\npath = \"/\"\nupstream = \"a\"\nability = []\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ability"), "{err}");
    }

    #[test]
    fn toml_errors_show_file_line_and_column_never_the_line() {
        let err = parse("[cache]\nttl_seconds = 3\n\n[server]\nlisten = \n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("t.toml: line 5, column 10: "), "{err}");

        // Unknown keys too: named, with their line.
        let err = parse("[cache]\nttl_secs = 3\n").unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("ttl_secs"), "{err}");

        // A line that holds a secret is never quoted.
        let err = parse("[store]\nurl = \"postgres://gw:S3CRET@db/x\" x\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(!err.contains("S3CRET"), "{err}");
    }

    #[test]
    fn errors_name_file_and_key() {
        let cases = [
            (
                "[[routes]]\npath = \"/\"\nupstream = \"nope\"\n",
                "routes[0].upstream",
            ),
            ("[server]\nlisten = \"nowhere\"\n", "server.listen"),
            ("[store]\nurl = \"mysql://x\"\n", "store.url"),
            ("[cache]\nttl_seconds = 0\n", "cache.ttl_seconds"),
            ("[tokens]\napi_prefix = \"tg_k\"\n", "tokens.api_prefix"),
            ("[tokens]\napi_prefix = \"tgr\"\n", "tokens.api_prefix"),
            ("[headers]\ntenant_id = \"bad header\"\n", "headers.tenant_id"),
            ("[headers]\ntenant_id = \"Authorization\"\n", "headers"),
            ("[headers]\nomit = [\"token_name\", \"x-token-name\"]\n", "headers.omit"),
            (
                "[[upstreams]]\nname = \"a\"\nurl = \"ftp://x\"\n",
                "upstreams[0].url",
            ),
            (
                "[[upstreams]]\nname = \"a\"\nurl = \"http://x\"\nprotocol = \"h3\"\n",
                "upstreams[0].protocol",
            ),
            (
                "[[upstreams]]\nname = \"a\"\nurl = \"http://x\"\n[[routes]]\npath = \"/a/../b\"\nupstream = \"a\"\n",
                "routes[0].path",
            ),
            (
                "[[upstreams]]\nname = \"a\"\nurl = \"http://x\"\n[[routes]]\npath = \"/\"\nupstream = \"a\"\nauth = \"maybe\"\n",
                "routes[0].auth",
            ),
            (
                "[[upstreams]]\nname = \"a\"\nurl = \"http://x\"\n[[routes]]\npath = \"/\"\nupstream = \"a\"\nrate_limits = [\"nope\"]\n",
                "routes[0].rate_limits",
            ),
            (
                "[[rate_limits.policies]]\nname = \"p\"\nrequests = 0\nwindow_seconds = 60\nby = \"token\"\n",
                "rate_limits.policies[0].requests",
            ),
            (
                "[[upstreams]]\nname = \"a\"\nurl = \"http://x\"\n[[routes]]\npath = \"/\"\nupstream = \"a\"\nabilities = [\"a b\"]\n",
                "routes[0].abilities",
            ),
            (
                "[[upstreams]]\nname = \"a\"\nurl = \"http://x\"\n[[routes]]\npath = \"/\"\nupstream = \"a\"\n[[routes]]\npath = \"/\"\nupstream = \"a\"\n",
                "routes[1].path",
            ),
            ("[token_api]\nwhite_label_token = \"no-slash\"\n", "token_api.white_label_token"),
            ("[forward_auth]\npath = \"no-slash\"\n", "forward_auth.path"),
            ("[forward_auth]\npath = \"/\"\n", "forward_auth.path"),
            ("[forward_auth]\npath = \"/a/../auth\"\n", "forward_auth.path"),
            ("[forward_auth]\npath = \"/auth/\"\n", "forward_auth.path"),
            ("[forward_auth]\npath = \"/a%2Fb\"\n", "forward_auth.path"),
            ("[forward_auth]\nurl = \"/auth\"\n", "url"),
            ("[forward_auth]\npath = \"/api/white-label\"\n", "forward_auth.path"),
            ("[forward_auth]\npath = \"/api/v1/global/verify\"\n", "forward_auth.path"),
        ];
        for (text, key) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.starts_with("t.toml: "), "{err}");
            assert!(err.contains(key), "expected {key} in: {err}");
        }
    }

    #[test]
    fn routes_are_normalised_and_methods_parsed() {
        let c = parse(
            r#"
            [[upstreams]]
            name = "api"
            url = "http://127.0.0.1:3000/base/"
            protocol = "h2"
            [[routes]]
            path = "/api/calls/"
            methods = ["get", "POST"]
            upstream = "api"
            abilities = ["calls:read"]
            "#,
        )
        .unwrap();
        assert_eq!(c.routes[0].path, "/api/calls");
        assert_eq!(c.routes[0].methods, vec![Method::GET, Method::POST]);
        assert_eq!(c.upstreams[0].base_path, "/base");
        assert_eq!(c.upstreams[0].protocol, UpstreamProtocol::H2);
    }

    #[test]
    fn database_url_hides_password() {
        let u = DatabaseUrl::new("postgres://app:hunter2@db:5432/tg?password=hunter2");
        let shown = format!("{u} {u:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("postgres://app:***@db:5432/tg"), "{shown}");
        assert_eq!(
            DatabaseUrl::new("sqlite://data/x.db").to_string(),
            "sqlite://data/x.db"
        );
    }

    #[test]
    fn shipped_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_CONFIG_PATH);
        Config::from_file(&path).unwrap();
    }
}
