//! Upstreams that count the connections the gateway closes on them, for
//! tests of when it lets an exchange go: one that stalls mid-body, one
//! whose answer never ends.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream on 127.0.0.1:0 that reads each connection's request head,
/// then hands the connection to `answer`; the count is of the
/// connections `answer` has returned on (the gateway closed them).
pub async fn head_then<F, Fut>(answer: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let closed = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&closed);
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let c = Arc::clone(&c);
            let answer = Arc::clone(&answer);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                answer(s).await;
                c.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, closed)
}

/// Answers with a chunked body, sends its first chunk (`hello`), then
/// stalls until the gateway closes the connection.
pub async fn stalling() -> (SocketAddr, Arc<AtomicUsize>) {
    head_then(|mut s| async move {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            .await;
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await
}

/// Answers with a chunked body that never ends, written as fast as the
/// gateway takes it, until a write fails (the gateway closed it).
pub async fn endless() -> (SocketAddr, Arc<AtomicUsize>) {
    head_then(|mut s| async move {
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
    })
    .await
}
