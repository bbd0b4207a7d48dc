//! PostgreSQL for tests: each test gets a schema of its own in the database
//! `TOKENGATE_TEST_DATABASE_URL` names, so runs (and tests within a run)
//! never collide, notification channels included (they are named after the
//! schema).
//!
//! A PostgreSQL test is `#[ignore = "needs PostgreSQL: set
//! TOKENGATE_TEST_DATABASE_URL; run by .ci/run"]`, its name starts with
//! `pg_`, and it gets its database from [`url`] or [`fresh_url`]: plain
//! `cargo test` reports it ignored (never passed), and `cargo test --
//! --ignored pg_` (what `.ci/run` runs) fails it when the variable is
//! missing or the database cannot be reached.

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;

/// The env var naming the test database.
pub const ENV: &str = "TOKENGATE_TEST_DATABASE_URL";

/// The base URL from [`ENV`]; panics (failing the test) without it.
pub fn url() -> String {
    match std::env::var(ENV) {
        Ok(u) if !u.is_empty() => u,
        _ => panic!(
            "{ENV} is not set: this PostgreSQL test needs it \
             (e.g. postgres://postgres@127.0.0.1:5432/test; .ci/run sets it)"
        ),
    }
}

/// A fresh schema on the database [`ENV`] names: (base URL, URL of the
/// schema). Panics without the variable or when the database cannot be
/// reached.
pub async fn fresh_url() -> (String, String) {
    let base = url();
    let schema = fresh_schema(&base).await;
    (base, schema)
}

/// The base URL, or `None` after printing that `test` is skipped. For
/// optional uses (the propagation bench); a test uses [`url`], so that
/// running it without a database fails instead of passing.
pub fn base_url(test: &str) -> Option<String> {
    match std::env::var(ENV) {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            // Straight to the stderr handle: libtest captures `eprintln!`
            // of passing tests, and a skip must be visible.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "skipped {test}: {ENV} is not set (PostgreSQL tests need it)"
            );
            None
        }
    }
}

/// Creates a fresh schema; returns a URL whose connections use it.
pub async fn fresh_schema(base: &str) -> String {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect(base)
        .await
        .expect("connect to TOKENGATE_TEST_DATABASE_URL");
    let schema = format!(
        "tgt_{}_{}",
        std::process::id(),
        uuid::Uuid::now_v7().simple()
    );
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&pool)
        .await
        .unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}")
}

/// Runs SQL on the base database (e.g. `pg_terminate_backend`).
pub async fn exec(base: &str, sql: &str) -> u64 {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(base)
        .await
        .unwrap();
    sqlx::query(sql)
        .execute(&pool)
        .await
        .unwrap()
        .rows_affected()
}
