//! WebSocket clients through the gateway, to the mock upstream's `/ws`
//! echo.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use super::raw::WAIT;

pub type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// A WebSocket through the gateway at `addr` to the mock's echo
/// (`/ws/chat`), with `Authorization: Bearer <token>`.
pub async fn open(addr: SocketAddr, token: &str) -> Ws {
    let mut req = format!("ws://{addr}/ws/chat")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let stream = TcpStream::connect(addr).await.unwrap();
    let (ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(req, stream))
        .await
        .expect("the upgrade was answered in time")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws
}

/// Sends `msg` and expects it back.
pub async fn echo(ws: &mut Ws, msg: &str) {
    ws.send(Message::Text(msg.into())).await.unwrap();
    let back = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("the echo came back")
        .unwrap()
        .unwrap();
    assert_eq!(back.into_text().unwrap(), msg);
}

/// Whether the gateway closes the tunnel within `secs`.
pub async fn closed_within(ws: &mut Ws, secs: u64) -> bool {
    tokio::time::timeout(Duration::from_secs(secs), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .is_ok()
}
