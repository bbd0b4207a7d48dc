//! An upstream whose answer never ends, for tests of what the gateway does
//! when its client stops reading.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An upstream whose answer never ends: a chunked body written as fast as
/// the gateway takes it. `closed` counts the connections on which a write
/// failed (the gateway closed them).
pub async fn spawn() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let closed = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&closed);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let c = Arc::clone(&c);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let mut out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                let chunk = vec![b'x'; 64 * 1024];
                loop {
                    out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    out.extend_from_slice(&chunk);
                    out.extend_from_slice(b"\r\n");
                    if s.write_all(&out).await.is_err() {
                        break;
                    }
                    out.clear();
                }
                c.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, closed)
}
