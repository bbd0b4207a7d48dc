//! Upgraded (WebSocket) tunnels: bytes copied both ways until either side
//! closes, or until the gateway ends the tunnel because its token stopped
//! admitting it (`Gateway::tunnel_end`).
//!
//! Ending a tunnel is not a bare TCP close: the client is sent a WebSocket
//! close frame with code 1008 (policy violation, RFC 6455 7.4.1) first, so
//! a client library reports why rather than an abnormal closure (1006).
//! A close frame must not land inside a frame the upstream is sending, so
//! the copy towards the client follows the upstream's frame boundaries
//! ([`Frames`]); an end that comes mid-frame lets that frame finish first
//! (for at most [`FINISH_FRAME`]; one that does not finish in time is cut
//! without a close frame, as before).

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How long a frame the upstream is in the middle of may take to finish
/// once the tunnel is to end.
pub const FINISH_FRAME: Duration = Duration::from_secs(1);

/// The close frame sent to the client: FIN + close opcode, unmasked (a
/// server's frame), payload code 1008 and a reason.
const CLOSE_1008: &[u8] = b"\x88\x17\x03\xf0token no longer valid";

/// Where a stream of WebSocket frames is up to: in a frame header, in a
/// payload, or between frames.
#[derive(Debug, Default)]
pub struct Frames {
    /// Header bytes of the frame being read (at most 14).
    head: Vec<u8>,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
}

impl Frames {
    /// Whether the bytes seen so far end on a frame boundary.
    pub fn at_boundary(&self) -> bool {
        self.head.is_empty() && self.payload_left == 0
    }

    /// Follows `data`; with `stop_at_boundary`, stops at the first frame
    /// boundary. Returns how many bytes of `data` it took.
    pub fn advance(&mut self, data: &[u8], stop_at_boundary: bool) -> usize {
        let mut i = 0;
        while i < data.len() {
            if self.payload_left > 0 {
                let take = usize::try_from(self.payload_left)
                    .unwrap_or(usize::MAX)
                    .min(data.len() - i);
                self.payload_left -= take as u64;
                i += take;
                continue;
            }
            if stop_at_boundary && self.head.is_empty() {
                break;
            }
            self.head.push(data[i]);
            i += 1;
            if let Some(len) = self.header_complete() {
                self.head.clear();
                self.payload_left = len;
            }
        }
        i
    }

    /// The payload length once `head` holds a whole frame header.
    fn header_complete(&self) -> Option<u64> {
        let h = &self.head;
        if h.len() < 2 {
            return None;
        }
        let masked = h[1] & 0x80 != 0;
        let (ext, len7) = match h[1] & 0x7f {
            126 => (2, None),
            127 => (8, None),
            n => (0, Some(u64::from(n))),
        };
        let need = 2 + ext + if masked { 4 } else { 0 };
        if h.len() < need {
            return None;
        }
        Some(len7.unwrap_or_else(|| {
            h[2..2 + ext]
                .iter()
                .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
        }))
    }
}

/// How the copy towards the client ended.
enum Down {
    /// The upstream closed (or failed); the client was told (FIN).
    Closed,
    /// The gateway ended the tunnel.
    Ended,
}

/// Copies bytes both ways until both directions are done, or until `end`
/// resolves: then the client gets a 1008 close frame and both connections
/// are closed.
pub async fn run<C, U>(client: C, upstream: U, end: impl Future<Output = ()>)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut ur, mut uw) = tokio::io::split(upstream);
    let up = async {
        let _ = tokio::io::copy(&mut cr, &mut uw).await;
        let _ = uw.shutdown().await;
    };
    let down = downward(&mut ur, &mut cw, end);
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        tokio::select! {
            () = &mut up, if !up_done => up_done = true,
            d = &mut down, if !down_done => match d {
                Down::Closed => down_done = true,
                // Dropping both halves of both sides closes them.
                Down::Ended => return,
            },
        }
    }
}

/// Upstream to client, frame-aware, until the upstream closes or `end`.
async fn downward<R, W>(from: &mut R, to: &mut W, end: impl Future<Output = ()>) -> Down
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    tokio::pin!(end);
    let mut frames = Frames::default();
    let mut buf = vec![0u8; 16 * 1024];
    // Set once the tunnel is to end, while a frame is still unfinished.
    let mut finish_by: Option<tokio::time::Instant> = None;
    loop {
        let give_up = async {
            match finish_by {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let n = tokio::select! {
            biased;
            () = &mut end, if finish_by.is_none() => {
                if frames.at_boundary() {
                    let _ = to.write_all(CLOSE_1008).await;
                    let _ = to.flush().await;
                    return Down::Ended;
                }
                finish_by = Some(tokio::time::Instant::now() + FINISH_FRAME);
                continue;
            }
            () = give_up => return Down::Ended,
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return Down::Closed;
                }
                Ok(n) => n,
            },
        };
        let ending = finish_by.is_some();
        let take = frames.advance(&buf[..n], ending);
        if to.write_all(&buf[..take]).await.is_err() {
            return Down::Closed;
        }
        if ending && frames.at_boundary() {
            let _ = to.write_all(CLOSE_1008).await;
            let _ = to.flush().await;
            return Down::Ended;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn frame(payload_len: usize, masked: bool) -> Vec<u8> {
        let mut f = vec![0x82];
        let m = if masked { 0x80 } else { 0 };
        match payload_len {
            0..=125 => f.push(m | payload_len as u8),
            126..=65535 => {
                f.push(m | 126);
                f.extend_from_slice(&(payload_len as u16).to_be_bytes());
            }
            _ => {
                f.push(m | 127);
                f.extend_from_slice(&(payload_len as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(0xAB, payload_len));
        f
    }

    #[test]
    fn boundaries_are_found_whatever_the_split() {
        let mut stream = Vec::new();
        for (len, masked) in [
            (0, false),
            (5, true),
            (125, false),
            (126, true),
            (70_000, false),
        ] {
            stream.extend(frame(len, masked));
        }
        for split in [1, 2, 3, 7, 100, 4096] {
            let mut f = Frames::default();
            for piece in stream.chunks(split) {
                assert_eq!(f.advance(piece, false), piece.len());
            }
            assert!(f.at_boundary(), "split {split}");
        }
    }

    #[test]
    fn stopping_at_a_boundary_takes_only_the_current_frame() {
        let mut stream = frame(10, false);
        let first = stream.len();
        stream.extend(frame(3, false));
        let mut f = Frames::default();
        assert_eq!(f.advance(&stream[..4], false), 4);
        assert!(!f.at_boundary());
        assert_eq!(f.advance(&stream[4..], true), first - 4);
        assert!(f.at_boundary());
    }

    #[test]
    fn the_close_frame_says_1008() {
        assert_eq!(CLOSE_1008[0], 0x88);
        assert_eq!(usize::from(CLOSE_1008[1]), CLOSE_1008.len() - 2);
        assert_eq!(u16::from_be_bytes([CLOSE_1008[2], CLOSE_1008[3]]), 1008);
    }

    #[tokio::test]
    async fn an_ended_tunnel_sends_1008_after_the_frame_in_progress() {
        let (client, mut client_peer) = tokio::io::duplex(1 << 16);
        let (upstream, mut upstream_peer) = tokio::io::duplex(1 << 16);
        let (end_tx, end_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run(client, upstream, async move {
            let _ = end_rx.await;
        }));
        let f = frame(10, false);
        upstream_peer.write_all(&f[..5]).await.unwrap();
        let mut got = vec![0u8; 5];
        client_peer.read_exact(&mut got).await.unwrap();
        let _ = end_tx.send(());
        tokio::task::yield_now().await;
        upstream_peer.write_all(&f[5..]).await.unwrap();
        upstream_peer.write_all(&frame(2, false)).await.unwrap();
        let mut rest = Vec::new();
        client_peer.read_to_end(&mut rest).await.unwrap();
        let mut want = f[5..].to_vec();
        want.extend_from_slice(CLOSE_1008);
        assert_eq!(rest, want);
        task.await.unwrap();
    }
}
