//! The command line, run as a real process against a temp SQLite store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

use tokengate::token::{Checked, TokenFormat, TokenKind};

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cfg = format!(
            "[store]\nurl = \"sqlite://{}\"\n\n[[upstreams]]\nname = \"api\"\nurl = \"http://127.0.0.1:9\"\n\n[[routes]]\npath = \"/\"\nupstream = \"api\"\n",
            dir.path().join("data/tg.db").display()
        );
        std::fs::write(dir.path().join("tokengate.toml"), cfg).unwrap();
        Self { dir }
    }

    fn config(&self) -> std::path::PathBuf {
        self.dir.path().join("tokengate.toml")
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_tokengate"))
            .arg("--config")
            .arg(self.config())
            .args(args)
            .env_remove("TOKENGATE_CONFIG")
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> (String, String) {
        let out = self.run(args);
        let stdout = String::from_utf8(out.stdout).unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(out.status.success(), "{args:?} failed: {stderr}");
        (stdout, stderr)
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args).0).unwrap()
    }
}

#[test]
fn operator_workflow() {
    let env = Env::new();
    let (_, said) = env.ok(&["check-config"]);
    assert!(
        said.contains(": ok (")
            && said.contains("public listener plain HTTP, admin listener plain HTTP)"),
        "{said}"
    );
    env.ok(&["migrate"]);
    assert!(
        env.dir.path().join("data/tg.db").exists(),
        "store created with its directory"
    );

    // init: the token alone on stdout, nothing secret on stderr.
    let (stdout, stderr) = env.ok(&["init"]);
    let root = stdout.trim_end_matches('\n');
    assert_eq!(stdout.lines().count(), 1);
    assert_eq!(
        TokenFormat::default().check(root),
        Ok(Checked::Native(TokenKind::Root))
    );
    assert!(!stderr.contains(&root[4..]));
    let again = env.run(&["init"]);
    assert!(!again.status.success(), "second init needs --force");
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    let tenant = env.json(&["tenant", "create", "--name", "Acme"]);
    let tenant_id = tenant["id"].as_i64().unwrap();
    assert_rfc3339(&tenant["created_at"]);
    assert_eq!(
        TokenFormat::default().check(tenant["admin_token"].as_str().unwrap()),
        Ok(Checked::Native(TokenKind::TenantAdmin))
    );

    let acc = env.json(&[
        "account",
        "create",
        "--tenant",
        &tenant_id.to_string(),
        "--email",
        "ann@example.com",
        "--name",
        "Ann",
    ]);
    let account_id = acc["id"].as_i64().unwrap();
    assert_eq!(acc["customer_id"].as_str().unwrap().len(), 12);
    assert!(acc["workspace_id"].is_i64());
    assert_rfc3339(&acc["created_at"]);
    let accounts = env.json(&["account", "list", "--tenant", &tenant_id.to_string()]);
    assert_eq!(
        accounts,
        serde_json::json!([acc.clone()]),
        "listed as created"
    );
    let dup = env.run(&[
        "account",
        "create",
        "--tenant",
        &tenant_id.to_string(),
        "--email",
        "ann@example.com",
        "--name",
        "Ann",
    ]);
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"));

    let (stdout, _) = env.ok(&[
        "token",
        "issue",
        "--account",
        &account_id.to_string(),
        "--name",
        "ci",
        "--ability",
        "calls:read",
        "--expires-in-days",
        "30",
    ]);
    let api = stdout.trim().to_string();
    assert_eq!(
        TokenFormat::default().check(&api),
        Ok(Checked::Native(TokenKind::Api))
    );

    let list = env.json(&["token", "list", "--account", &account_id.to_string()]);
    let listing = list.to_string();
    assert!(!listing.contains(&api[4..]), "secret in listing");
    assert!(listing.contains(&api[..8]), "display prefix in listing");
    let row = &list[0];
    assert_eq!(row["abilities"], serde_json::json!(["calls:read"]));
    // Times as the API prints them, not Unix seconds.
    assert_rfc3339(&row["created_at"]);
    assert_rfc3339(&row["expires_at"]);
    assert_eq!(row["revoked_at"], serde_json::Value::Null);
    assert_eq!(
        row["workspace_id"], acc["workspace_id"],
        "bound to the default workspace"
    );
    let id = row["id"].as_str().unwrap();

    let revoked = env.json(&["token", "revoke", id]);
    assert_rfc3339(&revoked["revoked_at"]);
    let missing = env.run(&["token", "revoke", "no-such-id"]);
    assert!(!missing.status.success());

    let blocked = env.json(&["account", "block", &account_id.to_string()]);
    assert_eq!(blocked["status"], "blocked");
    assert_rfc3339(&blocked["created_at"]);
    let tenants = env.json(&["tenant", "list"]);
    assert_eq!(tenants[0]["name"], "Acme");
    assert_rfc3339(&tenants[0]["created_at"]);
    let t = env.json(&["tenant", "block", &tenant_id.to_string()]);
    assert_rfc3339(&t["created_at"]);
}

/// `2026-11-30T12:00:00Z`: what the API prints, and never a bare number.
fn assert_rfc3339(v: &serde_json::Value) {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("not an RFC 3339 string: {v}"));
    let b = s.as_bytes();
    assert!(
        s.len() == 20
            && b[4] == b'-'
            && b[7] == b'-'
            && b[10] == b'T'
            && b[13] == b':'
            && b[16] == b':'
            && s.ends_with('Z'),
        "not RFC 3339 UTC: {s}"
    );
}

#[test]
fn bad_config_is_refused_with_the_key_named() {
    let env = Env::new();
    std::fs::write(env.config(), "[cache]\nttl_seconds = 0\n").unwrap();
    let out = env.run(&["check-config"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cache.ttl_seconds"), "{err}");

    std::fs::write(env.config(), "[server]\nlisten_addr = \"x\"\n").unwrap();
    let err = String::from_utf8_lossy(&env.run(&["check-config"]).stderr).to_string();
    assert!(err.contains("listen_addr"), "{err}");

    // A TOML error: the file, the line and column, what is wrong; never
    // the line itself (it may hold a password).
    std::fs::write(
        env.config(),
        "[server]\nlisten = \"127.0.0.1:8080\"\nadmin_listen = 8081\n",
    )
    .unwrap();
    let out = env.run(&["serve"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let file = env.config().display().to_string();
    assert!(
        err.starts_with(&format!("tokengate: {file}: ")),
        "file first: {err}"
    );
    assert!(err.contains("line 3, column 16"), "{err}");
    assert!(!err.contains("admin_listen = 8081"), "{err}");
    assert!(err.contains("expected a string"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(["--config", "/nonexistent/tokengate.toml", "check-config"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/tokengate.toml"));
}

#[test]
fn shipped_configs_check() {
    for file in ["config/tokengate.toml", "config/compose.toml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        let out = Command::new(env!("CARGO_BIN_EXE_tokengate"))
            .arg("--config")
            .arg(path)
            .arg("check-config")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn compose_points_the_gateway_at_its_echo_service() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cfg = tokengate::config::Config::from_file(&root.join("config/compose.toml")).unwrap();
    let echo = cfg.upstreams.iter().find(|u| u.name == "echo").unwrap();
    assert_eq!(echo.authority.host(), "echo", "the compose service name");
    let port = echo.authority.port_u16().unwrap();
    let compose = std::fs::read_to_string(root.join("docker-compose.yml")).unwrap();
    assert!(
        compose.contains(&format!(
            "command: [\"echo\", \"--listen\", \"0.0.0.0:{port}\"]"
        )),
        "docker-compose.yml's echo service must listen on {port}"
    );
    // The first instance's admin port is published on loopback only.
    assert!(
        compose.contains("\"127.0.0.1:8081:8081\""),
        "admin port exposed"
    );
}

#[test]
fn serve_answers_and_stops_on_sigterm() {
    use std::io::{BufRead, BufReader, Read, Write};
    let env = Env::new();
    let cfg = std::fs::read_to_string(env.config()).unwrap();
    std::fs::write(
        env.config(),
        format!("[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{cfg}"),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .arg("--config")
        .arg(env.config())
        .arg("serve")
        .env("RUST_LOG", "info")
        // Colour is for terminals: none in a pipe, NO_COLOR or not.
        .env_remove("NO_COLOR")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let (public, admin) = loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "serve exited early"
        );
        if line.contains("listening") {
            let addr = |key: &str| {
                let rest = &line[line.find(key).unwrap() + key.len()..];
                rest.split_whitespace().next().unwrap().to_string()
            };
            break (addr("public_addr="), addr("admin_addr="));
        }
    };
    let get = |addr: &str, path: &str| {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    assert!(get(&admin, "/healthz").starts_with("HTTP/1.1 200"));
    assert!(get(&admin, "/readyz").starts_with("HTTP/1.1 200"));
    let denied = get(&public, "/anything");
    assert!(denied.starts_with("HTTP/1.1 401"), "{denied}");
    assert!(denied.contains("TOKEN_MISSING"));

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "serve exits cleanly on SIGTERM: {status:?}"
    );
    // The access log, on standard output by default, written out before
    // the process ended: one line for the one public request.
    let mut access = String::new();
    stdout.read_to_string(&mut access).unwrap();
    let lines: Vec<&str> = access.lines().collect();
    assert_eq!(lines.len(), 1, "{access}");
    assert!(lines[0].contains(" GET /anything 401 "), "{access}");
    assert!(lines[0].contains(" code=TOKEN_MISSING "), "{access}");
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(
        !rest.contains('\u{1b}') && !line.contains('\u{1b}'),
        "colour in a pipe: {rest}"
    );
}

#[test]
fn echo_needs_no_config_and_answers_with_the_request() {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut child = Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args([
            "--config",
            "/nonexistent/tokengate.toml",
            "echo",
            "--listen",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "echo exited early"
        );
        if let Some(i) = line.find("addr=") {
            break line[i + 5..].split_whitespace().next().unwrap().to_string();
        }
    };
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        s,
        "POST /a/b?c=d HTTP/1.1\r\nHost: x\r\nX-Tenant-Id: 1\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let body: serde_json::Value =
        serde_json::from_str(out.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["method"], "POST");
    assert_eq!(body["path"], "/a/b?c=d");
    assert_eq!(body["headers"]["x-tenant-id"], "1");
    assert_eq!(body["body_bytes"], 3);

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    assert!(
        child.wait().unwrap().success(),
        "echo exits cleanly on SIGTERM"
    );
}

#[test]
fn an_unreachable_store_is_named_with_its_cause_and_no_password() {
    let env = Env::new();
    // Port 1 on loopback: nothing listens there, so connecting is refused.
    std::fs::write(
        env.config(),
        "[store]\nurl = \"postgres://app:s3cret-pw@127.0.0.1:1/tg\"\ntimeout_seconds = 1\n\n\
         [[upstreams]]\nname = \"api\"\nurl = \"http://127.0.0.1:9\"\n\n[[routes]]\npath = \"/\"\nupstream = \"api\"\n",
    )
    .unwrap();
    for cmd in ["serve", "migrate"] {
        let out = env.run(&[cmd]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(err.contains("PostgreSQL at 127.0.0.1:1"), "{cmd}: {err}");
        assert!(err.contains("connection refused"), "{cmd}: {err}");
        assert!(!err.contains("s3cret-pw"), "{cmd}: password shown: {err}");
        assert!(!err.contains("pool timed out"), "{cmd}: {err}");
    }
}

#[test]
fn a_listener_address_in_use_is_named() {
    // Held for the whole test, so `serve` cannot bind it.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap();
    for (key, which) in [
        ("listen", "public listener (server.listen)"),
        ("admin_listen", "admin listener (server.admin_listen)"),
    ] {
        let env = Env::new();
        let other = if key == "listen" {
            "admin_listen"
        } else {
            "listen"
        };
        let cfg = std::fs::read_to_string(env.config()).unwrap();
        std::fs::write(
            env.config(),
            format!("[server]\n{key} = \"{taken}\"\n{other} = \"127.0.0.1:0\"\n\n{cfg}"),
        )
        .unwrap();
        let out = env.run(&["serve"]);
        assert!(!out.status.success(), "serve started on a taken address");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(
            stderr.contains(&format!("cannot bind the {which} to {taken}")),
            "{stderr}"
        );
        assert!(stderr.contains("in use"), "{stderr}");
    }
    drop(held);
}

#[test]
fn log_format_json_writes_json_lines() {
    use std::io::{BufRead, BufReader};
    let env = Env::new();
    let cfg = std::fs::read_to_string(env.config()).unwrap();
    let access = env.dir.path().join("access.log");
    std::fs::write(
        env.config(),
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\naccess_file = {:?}\n{cfg}",
            access.to_str().unwrap()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .arg("--config")
        .arg(env.config())
        .arg("serve")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let listening = loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "serve exited early"
        );
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        if v["fields"]["message"] == "tokengate listening" {
            break v;
        }
    };
    assert_eq!(listening["level"], "INFO");
    let public = listening["fields"]["public_addr"]
        .as_str()
        .unwrap()
        .to_owned();
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&public).unwrap();
        write!(
            s,
            "GET /x?k=v HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 401"), "{out}");
    }
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    assert!(child.wait().unwrap().success());
    // Written out at shutdown, to the configured file.
    let lines = std::fs::read_to_string(&access).unwrap();
    let v: serde_json::Value = serde_json::from_str(lines.trim()).unwrap();
    assert_eq!(v["path"], "/x");
    assert_eq!(v["status"], 401);
    assert_eq!(v["code"], "TOKEN_MISSING");
}
