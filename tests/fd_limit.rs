//! With its file descriptors used up by connections that never send a
//! whole request head, the gateway still answers a legitimate client once
//! their header deadline has passed (DESIGN section 8).
//!
//! The gateway runs as the real binary under `prlimit --nofile` (a limit
//! on this test's own process would starve the other tests); skipped,
//! saying so, where `prlimit` is missing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Connections the attacker opens: more than the descriptors the gateway
/// may have.
const HOSTILE: usize = 120;

/// The gateway's descriptor limit.
const NOFILE: usize = 64;

async fn ok_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    addr
}

/// Kills the gateway when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the binary under the descriptor limit; returns it and its
/// public address (read from its start-up log line).
fn start_gateway(
    dir: &std::path::Path,
    fast_path: bool,
    upstream: SocketAddr,
) -> (Child, SocketAddr) {
    let config = dir.join("tokengate.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
header_read_timeout_seconds = 1
fast_path = {fast_path}

[store]
url = "sqlite://{db}"

[[upstreams]]
name = "up"
url = "http://{upstream}"

[[routes]]
path = "/"
upstream = "up"
auth = "none"
"#,
            db = dir.join("tg.db").display()
        ),
    )
    .unwrap();
    let mut child = Command::new("prlimit")
        .arg(format!("--nofile={NOFILE}:{NOFILE}"))
        .arg(env!("CARGO_BIN_EXE_tokengate"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let child = Child(child);
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the gateway exited before listening")
            .unwrap();
        if let Some(rest) = line.split("public_addr=").nth(1) {
            let addr = rest.split_whitespace().next().unwrap();
            break addr.parse().unwrap();
        }
    };
    // Keep draining its log so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legitimate_request_is_answered_once_held_connections_pass_their_deadline() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        eprintln!("skipped: prlimit is not installed");
        return;
    }
    let upstream = ok_upstream().await;
    for fast_path in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (_child, addr) = start_gateway(dir.path(), fast_path, upstream);
        // Connections that send half the HTTP/2 preface and then nothing:
        // more than the gateway has descriptors for. The kernel completes
        // their handshakes; the gateway accepts what it can.
        let mut hostile = Vec::with_capacity(HOSTILE);
        for _ in 0..HOSTILE {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let _ = s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM").await;
            hostile.push(s);
        }
        // Queued behind them all, a legitimate request.
        let answered = tokio::time::timeout(Duration::from_secs(60), async {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got).await;
            got
        })
        .await
        .expect("a legitimate request got no answer");
        let text = String::from_utf8_lossy(&answered);
        assert!(
            text.starts_with("HTTP/1.1 200"),
            "fast_path = {fast_path}: {text}"
        );
        drop(hostile);
    }
}
