//! Live reload (DESIGN section 9): on `SIGHUP`, build, validate, swap.
//!
//! ```text
//!  SIGHUP ─▶ read + validate the config file ─▶ keys needing a restart ─▶ build ─▶ swap
//!            and every certificate and key      logged, kept as running    Snapshot  (Gateway::install)
//!            (any error: nothing changes)
//! ```
//!
//! [`reload`] reads the file the gateway was started with, through the
//! same validation as at start-up ([`Config::from_file`], certificates
//! included), and only when all of it is good builds a new
//! [`Snapshot`] and swaps it in at once. A bad file or certificate changes
//! nothing: the error (naming the file and the key) is logged and counted
//! (`tokengate_config_reloads_total{result="error"}`), and the old config
//! stays in force. What a reload changes: routes, upstreams, header names,
//! forward auth, the token API paths, TLS certificates (new handshakes).
//! What needs a restart ([`keep_restart_keys`]): `[server]` (listeners and
//! timeouts), `[store]`, `[cache]`, `[tokens]`, `[log]`, `rate_limits.store`
//! and `.quota_flush_seconds` (rate-limit policies reload with their
//! routes, their counts kept by name), and turning TLS on or off
//! on a listener; such a change is logged by key and left as running,
//! while the rest of the reload applies. Requests in flight finish with
//! the snapshot they started with.

use std::path::Path;
use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::gateway::{Gateway, Snapshot};

/// Reloads the config file at `path` into `gateway`; see the module docs.
/// Logs and counts the result either way.
pub fn reload(gateway: &Gateway, path: &Path) -> Result<(), ConfigError> {
    match apply(gateway, path) {
        Ok(()) => {
            gateway.metrics.config_reloads_ok.inc();
            Ok(())
        }
        Err(e) => {
            gateway.metrics.config_reloads_error.inc();
            tracing::error!(error = %e, "config reload failed; the running config stays in force");
            Err(e)
        }
    }
}

fn apply(gateway: &Gateway, path: &Path) -> Result<(), ConfigError> {
    let next = Config::from_file(path)?;
    let current = gateway.snapshot();
    let (config, kept) = keep_restart_keys(&current.config, next);
    for key in &kept {
        tracing::warn!(
            key = %key,
            file = %path.display(),
            "changed, but takes effect only after a restart; kept as running"
        );
    }
    // Metric series and access-log labels are fixed at start-up.
    let started = &gateway.config;
    let labels = started.route_labels();
    for r in config
        .routes
        .iter()
        .filter(|r| !labels.contains(&r.label.as_str()))
    {
        tracing::warn!(
            route = %r.label,
            "a route the reload added: counted as route \"none\" in metrics and the access log until a restart"
        );
    }
    for u in config
        .upstreams
        .iter()
        .filter(|u| !started.upstreams.iter().any(|s| s.name == u.name))
    {
        tracing::warn!(
            upstream = %u.name,
            "an upstream the reload added: no upstream series or access-log name until a restart"
        );
    }
    let snapshot = Snapshot::build(config, Some(&current), started);
    let (routes, upstreams) = (snapshot.config.routes.len(), snapshot.upstreams().len());
    let certificates =
        |t: &Option<crate::tls::TlsSettings>| t.as_ref().map_or(0, |t| t.files.len());
    let tls_files = certificates(&snapshot.config.tls) + certificates(&snapshot.config.admin_tls);
    gateway.install(snapshot);
    tracing::info!(
        file = %path.display(),
        routes,
        upstreams,
        tls_files,
        restart_needed = kept.len(),
        "config reloaded"
    );
    Ok(())
}

/// `next` with the keys only a restart can change put back to `running`'s,
/// and the dotted names of those that differed.
pub fn keep_restart_keys(running: &Config, mut next: Config) -> (Config, Vec<String>) {
    let mut kept = Vec::new();
    let mut check = |key: &str, same: bool| {
        if !same {
            kept.push(key.to_string());
        }
    };
    let (r, n) = (&running.server, &next.server);
    check("server.listen", r.listen == n.listen);
    check("server.admin_listen", r.admin_listen == n.admin_listen);
    check(
        "server.shutdown_grace_seconds",
        r.shutdown_grace == n.shutdown_grace,
    );
    check(
        "server.header_read_timeout_seconds",
        r.header_read_timeout == n.header_read_timeout,
    );
    check(
        "server.idle_timeout_seconds",
        r.idle_timeout == n.idle_timeout,
    );
    check(
        "server.h2_max_concurrent_streams",
        r.h2_max_concurrent_streams == n.h2_max_concurrent_streams,
    );
    check("server.fast_path", r.fast_path == n.fast_path);
    check(
        "server.trust_request_id",
        r.trust_request_id == n.trust_request_id,
    );
    let (r, n) = (&running.store, &next.store);
    check("store.url", r.url == n.url);
    check(
        "store.max_connections",
        r.max_connections == n.max_connections,
    );
    check("store.timeout_seconds", r.timeout == n.timeout);
    check(
        "store.last_used_flush_seconds",
        r.last_used_flush == n.last_used_flush,
    );
    check(
        "store.last_used_resolution_seconds",
        r.last_used_resolution == n.last_used_resolution,
    );
    let (r, n) = (&running.cache, &next.cache);
    check("cache.ttl_seconds", r.ttl == n.ttl);
    check(
        "cache.negative_ttl_seconds",
        r.negative_ttl == n.negative_ttl,
    );
    check("cache.max_entries", r.max_entries == n.max_entries);
    // Prefixes and a flag, nothing secret in its `Debug`.
    check(
        "tokens",
        format!("{:?}", running.tokens) == format!("{:?}", next.tokens),
    );
    // The log format and the access log's writer are set up at start-up.
    check(
        "log",
        format!("{:?}", running.log) == format!("{:?}", next.log),
    );
    // Where rate-limit counts are kept and how often quota counts are
    // written are set up at start-up; the policies reload with the routes
    // that carry them.
    let (r, n) = (&running.rate_limits, &next.rate_limits);
    check("rate_limits.store", r.store == n.store);
    check(
        "rate_limits.quota_flush_seconds",
        r.quota_flush == n.quota_flush,
    );
    let tls_same = running.tls.is_some() == next.tls.is_some();
    check("tls (on or off)", tls_same);
    let admin_tls_same = running.admin_tls.is_some() == next.admin_tls.is_some();
    check("admin_tls (on or off)", admin_tls_same);

    next.server = running.server.clone();
    next.store = running.store.clone();
    next.cache = running.cache.clone();
    next.tokens = running.tokens.clone();
    next.log = running.log.clone();
    next.rate_limits.store = running.rate_limits.store.clone();
    next.rate_limits.quota_flush = running.rate_limits.quota_flush;
    if !tls_same {
        next.tls = running.tls.clone();
    }
    if !admin_tls_same {
        next.admin_tls = running.admin_tls.clone();
    }
    (next, kept)
}

/// Reloads `path` into `gateway` on every `SIGHUP` until the process
/// ends. The handler is installed before this returns, so a `SIGHUP` from
/// then on never kills the process (its default action).
#[cfg(unix)]
pub fn on_sighup(
    gateway: Arc<Gateway>,
    path: std::path::PathBuf,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!(file = %path.display(), "SIGHUP: reloading the config");
            let _ = reload(&gateway, &path);
        }
    }))
}

/// Reloads are asked for by `SIGHUP`, which only Unix has.
#[cfg(not(unix))]
pub fn on_sighup(
    _gateway: Arc<Gateway>,
    _path: std::path::PathBuf,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    Ok(tokio::spawn(async {}))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::from_toml(Path::new("t.toml"), text).unwrap()
    }

    #[test]
    fn restart_keys_are_kept_and_named_the_rest_applies() {
        let running = config(
            "[server]\nlisten = \"127.0.0.1:1000\"\n[store]\nurl = \"sqlite://a.db\"\n\
             [[upstreams]]\nname = \"a\"\nurl = \"http://127.0.0.1:9\"\n\
             [[routes]]\npath = \"/a\"\nupstream = \"a\"\n",
        );
        let next = config(
            "[server]\nlisten = \"127.0.0.1:2000\"\nfast_path = false\n\
             [store]\nurl = \"sqlite://b.db\"\n[cache]\nttl_seconds = 5\n\
             [tokens]\napi_prefix = \"zzz\"\n\
             [[upstreams]]\nname = \"a\"\nurl = \"http://127.0.0.1:9\"\n\
             [[routes]]\npath = \"/b\"\nupstream = \"a\"\nabilities = [\"x:y\"]\n",
        );
        let (kept_config, kept) = keep_restart_keys(&running, next);
        assert_eq!(
            kept,
            [
                "server.listen",
                "server.fast_path",
                "store.url",
                "cache.ttl_seconds",
                "tokens"
            ]
        );
        assert_eq!(kept_config.server.listen, running.server.listen);
        assert!(kept_config.server.fast_path);
        assert_eq!(kept_config.store.url, running.store.url);
        assert_eq!(kept_config.cache.ttl, running.cache.ttl);
        assert_eq!(kept_config.routes[0].path, "/b");

        let same =
            config("[server]\nlisten = \"127.0.0.1:1000\"\n[store]\nurl = \"sqlite://a.db\"\n");
        assert!(keep_restart_keys(&running, same).1.is_empty());
    }
}
