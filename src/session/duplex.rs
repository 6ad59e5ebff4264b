//! The transport tungstenite reads from: the socket's read half, and a write side that
//! queues whatever tungstenite writes on its own (pongs, the close echo) in the outbox.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::hub::Conn;
use crate::transport::ReadHalf;

/// Read half for tungstenite, write half into the outbox.
///
/// Reads go straight to the socket. (An earlier version skipped the read that follows a
/// short read, clearing the socket's readiness instead to save the EAGAIN system call; that
/// also erased the edge of data arriving in between, leaving a client's frame unread until
/// it sent another. See the `duplex_reads_data_that_arrived_after_a_short_read` test.)
pub(super) struct Duplex {
    pub(super) rd: ReadHalf,
    pub(super) conn: Arc<Conn>,
}

impl AsyncRead for Duplex {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.rd).poll_read(cx, buf)
    }
}

impl AsyncWrite for Duplex {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        // tungstenite hands over whole frames (pong, close echo). Once the connection is
        // closing they are moot, so a refused push is not an error.
        let _ = self.conn.outbox.push(Bytes::copy_from_slice(buf));
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Outbox;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A read that follows a short read must see data that arrived in between, even though
    /// no new readiness event comes for it (the socket was never drained to EAGAIN).
    #[tokio::test]
    async fn duplex_reads_data_that_arrived_after_a_short_read() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (rd, _wr) = server.into_split();
        let conn = Arc::new(Conn::new(1, "u".into(), Outbox::new(4, 1024)));
        let mut duplex = Duplex { rd: ReadHalf::Plain(rd), conn };
        let mut buf = [0u8; 64];

        client.write_all(b"first").await.unwrap();
        let n = duplex.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"first", "a short read");

        client.write_all(b"second").await.unwrap();
        // Wait until the bytes are in the socket's receive queue (peek leaves them there).
        let mut peeked = 0;
        let ReadHalf::Plain(rd) = &mut duplex.rd else { unreachable!() };
        while peeked < 6 {
            peeked = rd.peek(&mut buf).await.unwrap();
        }
        let n = tokio::time::timeout(Duration::from_secs(5), duplex.read(&mut buf))
            .await
            .expect("the queued bytes are read without another readiness event")
            .unwrap();
        assert_eq!(&buf[..n], b"second");
    }
}
