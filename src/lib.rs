//! tokengate: an authenticating reverse-proxy gateway.
//!
//! tokengate stands in front of existing HTTP APIs, issues API tokens, checks
//! every request's token against a hashed store behind an in-memory cache,
//! enforces the token's abilities and expiry, and forwards allowed requests
//! upstream with headers naming the calling tenant, account and workspace.
//!
//! # Layout
//!
//! One module per job, in the order a request meets them:
//!
//! | module | job |
//! |---|---|
//! | [`config`] | `tokengate.toml -> FileConfig -> Config`, errors that name the key |
//! | [`server`] | listeners, connections, graceful shutdown, the last-used flusher |
//! | [`deadline`] | the deadlines of connections served by hyper: first head, idle, head after idle |
//! | [`fast`] | the HTTP/1.1 fast path: plain requests parsed and passed through without hyper |
//! | [`gateway`] | the request path: normalise, route, authenticate, decide, forward |
//! | [`forward_auth`] | the answer front proxies ask for (nginx `auth_request`, Caddy, Traefik, Envoy): the same decision, not forwarded |
//! | [`route`] | path normalisation and the longest-prefix route table |
//! | [`auth`] | credential extraction, abilities, the in-memory decision |
//! | [`token`] | the token format: prefix, base62 secret, CRC32 checksum, SHA-256 |
//! | [`cache`] | moka cache of token records (hits read from a dashmap index), single-flight loads, revocation races |
//! | [`store`] | the `TokenStore` trait and its SQLite implementation |
//! | [`proxy`] | forwarding: header rewriting, streaming, upgrades, h2 upstreams |
//! | [`pool`] | HTTP/1.1 upstream connections, pooled and driven on the request's task |
//! | [`cap`] | the cap on connections to one upstream, across both paths |
//! | [`tunnel`] | WebSocket tunnels: bytes both ways, ended by the gateway with close 1008 |
//! | [`error`] | every request-path denial mapped to its JSON response, in one place |
//! | [`issuer`] | the issuing service: mint, revoke, block, always cache-coherent |
//! | [`admin`] | the admin listener: the native API, health, readiness, metrics, OpenAPI |
//! | [`flows`] | the five documented token-issuing APIs, on the public listener |
//! | [`api`] | what the control plane shares: JSON bodies, the native API's errors |
//! | [`usage`] | last-used times batched in memory, flushed periodically |
//! | [`metrics`] | counters, Prometheus text |
//! | [`clock`] | the clock expiry is judged by, injectable for tests |
//! | [`cli`] | the command line |

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod api;
pub mod auth;
pub mod cache;
pub mod cap;
pub mod cli;
pub mod clock;
pub mod config;
pub mod deadline;
pub mod error;
pub mod fast;
pub mod flows;
pub mod forward_auth;
pub mod gateway;
pub mod issuer;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod route;
pub mod server;
pub mod store;
pub mod token;
pub mod tunnel;
pub mod usage;
