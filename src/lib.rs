//! tokengate: an authenticating reverse-proxy gateway.
//!
//! tokengate stands in front of existing HTTP APIs, issues API tokens, checks
//! every request's token against a hashed store behind an in-memory cache,
//! enforces the token's abilities and expiry, and forwards allowed requests
//! upstream with headers naming the calling tenant, account and workspace.
//!
//! # Layout
//!
//! Layers, bottom up: a module uses only modules of lower layers
//! (`.ci/layers.py` lists them, and `.ci/run` fails when one reaches up or
//! sideways). The decision (`rules`, `auth`, `gateway`) holds no hyper
//! type: each codec hands it the request's fields through
//! [`fields::RequestFields`] and takes the rewrite through a sink
//! ([`rules::RequestSink`]). Modules shown without a link are internal.
//!
//! | layer | module | job |
//! |---|---|---|
//! | vocabulary | [`fields`] | header names and lists, `Connection` list reading, the field-access trait both codecs give |
//! | | `ability` | permission strings and which grants which |
//! | | [`token`] | the token format: prefix, base62 secret, CRC32 checksum, SHA-256 |
//! | | [`clock`] | the clock expiry is judged by, injectable for tests; the wall-clock time of a request's one monotonic reading |
//! | | [`metrics`] | counters, per-route and per-upstream series sharded per thread, process series, Prometheus text |
//! | | `tunnel` | WebSocket tunnels: bytes both ways, ended by the gateway with close 1008 |
//! | | `deadline` | the deadlines of connections served by hyper: first head, idle, head after idle |
//! | limits | [`ratelimit`] | rate-limit policies and their config, sliding windows per key, token limits and quota counts, counts shared through Redis, the `RateLimit` fields |
//! | data | [`route`] | path normalisation, the longest-prefix route table, route config |
//! | | [`trace`] | request identity: W3C `traceparent` continued or started, the request id (trusted or ours) |
//! | | [`store`] | the `TokenStore` trait, SQLite and PostgreSQL, the database URL |
//! | | [`tls`] | `[tls]` / `[admin_tls]`: PEM certificates and keys checked, rustls configs, SNI choice |
//! | | `error` | every request-path denial and its status, code and JSON, in one place |
//! | | [`cache`] | moka cache of token records (hits read from a dashmap index), single-flight loads, revocation races |
//! | | `usage` | last-used times batched in memory, flushed periodically |
//! | | [`signals`] | one record per request feeding the metric series and the access log (its writer thread), `[log]` |
//! | | [`issuer`] | the issuing service: mint, revoke, block, always cache-coherent |
//! | | `upstream` | upstream config and connections: the cap, one idle stack and waiter queue for both pools, the HTTP/1.1 pool, the fast path's sockets, hyper-util's client |
//! | rules | [`rules`] | the request rule book: what is stripped, refused and added, and the gateway's header names |
//! | | [`config`] | `tokengate.toml -> FileConfig -> Config`, errors that name the key |
//! | | `body` | the body of every response; a denial as a response |
//! | | [`auth`] | credential extraction, the in-memory decision |
//! | request path | [`gateway`] | the shared state, the reloadable snapshot (routes, upstreams, header rules), and the decision both codecs call: route, admit, tunnel re-checks |
//! | | `forward_auth` | the answer front proxies ask for (nginx `auth_request`, Caddy, Traefik, Envoy): the same decision, not forwarded |
//! | | `reload` | SIGHUP: the config and certificates read and checked, then the gateway's snapshot swapped |
//! | control plane | [`api`] | what the control plane shares: JSON bodies, the native API's errors |
//! | | `flows` | the five documented token-issuing APIs, on the public listener |
//! | | [`admin`] | the admin listener: the native API, health, readiness, metrics, OpenAPI |
//! | edges | `proxy` | hyper's edge: dispatch, forwarding, streaming, upgrades, h2 upstreams |
//! | | [`fast`] | the HTTP/1.1 fast path: plain requests parsed and passed through without hyper |
//! | | [`echo`] | `tokengate echo`: an upstream that answers with the request it received |
//! | top | [`server`] | listeners, connections, graceful shutdown, the last-used flusher |
//! | | [`cli`] | the command line |

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub(crate) mod ability;
pub mod admin;
pub mod api;
pub mod auth;
pub(crate) mod body;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod config;
pub(crate) mod deadline;
pub mod echo;
pub(crate) mod error;
pub mod fast;
pub mod fields;
pub(crate) mod flows;
pub(crate) mod forward_auth;
pub mod gateway;
pub mod issuer;
pub mod metrics;
pub(crate) mod proxy;
pub mod ratelimit;
pub(crate) mod reload;
pub mod route;
pub mod rules;
pub mod server;
pub mod signals;
pub mod store;
pub mod tls;
pub mod token;
pub mod trace;
pub(crate) mod tunnel;
pub(crate) mod upstream;
pub(crate) mod usage;
