//! The per-connection writer task: drain the outbox, `writev` it, repeat.
//!
//! It owns the socket's write half. Each wake-up it takes everything queued (corking: under
//! load many frames go out in one system call) and writes the frames' shared `Bytes`
//! directly, without copying them into a per-connection buffer. (Over TLS, rustls copies
//! them once, as it encrypts; what it has encrypted and the socket has not taken yet is
//! flushed before the writer waits for more frames.)

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::hub::Conn;
use crate::outbox::Phase;
use crate::protocol::ws;
use crate::transport::WriteHalf;

/// Frames per `writev` call (the array lives on the stack only while polling).
const IOV_BATCH: usize = 128;

/// Once a connection is closing (any close: 1001, 1008, 1009, 1013, 4000, or the client's),
/// how long the writer may take to send what is left and the close frame. A client that
/// stops reading would otherwise hold the socket, its kernel buffers and the task forever:
/// past this the socket is reset.
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// How the writer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// Everything queued, the close frame last, was written, then FIN.
    Closed,
    /// The client did not take it within [`CLOSE_LINGER`]: the socket was reset.
    Aborted,
    /// The socket failed.
    Dead,
}

/// Runs until the connection's output ends. Never panics on I/O; failures mark the outbox
/// dead, which wakes the session. A client whose socket takes nothing for `slow_after`
/// while its outbox is full is a slow consumer ([`crate::outbox::Outbox::stalled`]).
pub async fn run(conn: Arc<Conn>, mut wr: WriteHalf, slow_after: Duration) -> Finish {
    let mut batch: VecDeque<Bytes> = VecDeque::new();
    // Set once the connection is closing: the end of its linger.
    let mut deadline: Option<Instant> = None;
    loop {
        if batch.is_empty() {
            match conn.outbox.take(&mut batch) {
                // TLS records already encrypted but not yet taken by the socket are
                // flushed first (`write_some` on an empty batch), like any other output.
                Phase::Open if batch.is_empty() && !wr.buffered() => {
                    // Idle: give the queue's allocation back rather than hold it for what
                    // may be a long silence (one allocation per wake-up when traffic is light).
                    if batch.capacity() > 0 {
                        batch = VecDeque::new();
                    }
                    conn.outbox.writer_wakeup().await;
                    continue;
                }
                Phase::Closing if batch.is_empty() => {
                    let until = *deadline.get_or_insert_with(|| Instant::now() + CLOSE_LINGER);
                    return match Box::pin(tokio::time::timeout_at(until, wr.shutdown())).await {
                        Ok(_) => Finish::Closed,
                        Err(_) => abort(&conn, &wr),
                    };
                }
                Phase::SlowConsumer => return Box::pin(slow_consumer(&conn, &mut wr, &mut batch)).await,
                Phase::Dead => return Finish::Dead,
                Phase::Closing => {
                    deadline.get_or_insert_with(|| Instant::now() + CLOSE_LINGER);
                }
                Phase::Open => {}
            }
        }
        tokio::select! {
            biased;
            res = write_some(&mut wr, &mut batch, slow_after) => match res {
                Ok(Wrote::Some) => {}
                // The socket took nothing for `slow_after`: a client with a full outbox is
                // not keeping up; one with little queued may take its time.
                Ok(Wrote::Waited) => {
                    if conn.outbox.stalled() {
                        return Box::pin(slow_consumer(&conn, &mut wr, &mut batch)).await;
                    }
                }
                Err(_) => {
                    conn.outbox.mark_dead();
                    return Finish::Dead;
                }
            },
            // Frames arriving while a write is pending only need a wake-up if they changed
            // the phase; otherwise the next `take` collects them.
            () = conn.outbox.writer_wakeup() => match conn.outbox.phase() {
                Phase::SlowConsumer => return Box::pin(slow_consumer(&conn, &mut wr, &mut batch)).await,
                Phase::Closing => {
                    deadline.get_or_insert_with(|| Instant::now() + CLOSE_LINGER);
                }
                _ => {}
            },
            () = sleep_until(deadline), if deadline.is_some() => return abort(&conn, &wr),
        }
    }
}

/// Finishes the frame already partly on the wire (so the stream stays well-formed), then
/// sends close 1013 and ends. Frames not yet started are dropped.
async fn slow_consumer(conn: &Conn, wr: &mut WriteHalf, batch: &mut VecDeque<Bytes>) -> Finish {
    // `write_some` advances the front frame as it is written, so a partly written frame is
    // the only one whose remaining bytes differ from a fresh frame: we cannot tell, so we
    // keep the front frame (complete or partial) and drop the rest.
    batch.truncate(1);
    batch.push_back(ws::close_frame(ws::close::TRY_AGAIN_LATER, "slow consumer"));
    let flush = async {
        while !batch.is_empty() {
            write_some(wr, batch, CLOSE_LINGER).await?;
        }
        wr.shutdown().await
    };
    match tokio::time::timeout(CLOSE_LINGER, flush).await {
        Ok(Ok(())) => Finish::Closed,
        Ok(Err(_)) => Finish::Dead,
        Err(_) => abort(conn, wr),
    }
}

/// Resets the socket ([`WriteHalf::reset`]) and marks the output dead.
fn abort(conn: &Conn, wr: &WriteHalf) -> Finish {
    wr.reset();
    conn.outbox.mark_dead();
    Finish::Aborted
}

/// Boxed: a timer only exists for a closing connection, not in every idle writer's task.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => Box::pin(tokio::time::sleep_until(d)).await,
        None => std::future::pending().await,
    }
}

/// What one [`write_some`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wrote {
    /// Bytes went out.
    Some,
    /// The socket refused everything for the whole patience.
    Waited,
}

/// One write of the front of `batch` (vectored when more than one frame is queued);
/// consumes what was written. Waits at most `patience` for the socket to take something: the
/// timer is only armed once the socket refuses, so a writable socket costs no timer.
async fn write_some(wr: &mut WriteHalf, batch: &mut VecDeque<Bytes>, patience: Duration) -> std::io::Result<Wrote> {
    let mut timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    let wrote = std::future::poll_fn(|cx| {
        let pinned = std::pin::Pin::new(&mut *wr);
        let res = match batch.len() {
            // Nothing queued: flush what the transport holds (TLS), waiting like a write.
            0 => match pinned.poll_flush(cx) {
                Poll::Ready(res) => return Poll::Ready(Some(res.map(|()| 0))),
                Poll::Pending => Poll::Pending,
            },
            // The common case at low rates: skip building an iovec array.
            1 => pinned.poll_write(cx, &batch[0]),
            n @ 2..=8 => pinned.poll_write_vectored(cx, &iovecs::<8>(batch)[..n]),
            n => pinned.poll_write_vectored(cx, &iovecs::<IOV_BATCH>(batch)[..n.min(IOV_BATCH)]),
        };
        match res {
            Poll::Ready(Ok(0)) => Poll::Ready(Some(Err(std::io::ErrorKind::WriteZero.into()))),
            Poll::Ready(res) => Poll::Ready(Some(res)),
            Poll::Pending => {
                let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(patience)));
                timer.as_mut().poll(cx).map(|()| None)
            }
        }
    })
    .await;
    match wrote {
        Some(n) => {
            advance(batch, n?);
            Ok(Wrote::Some)
        }
        None => Ok(Wrote::Waited),
    }
}

/// Up to `N` frames from the front of `batch`, as an iovec array (unused slots empty).
fn iovecs<const N: usize>(batch: &VecDeque<Bytes>) -> [IoSlice<'_>; N] {
    let mut iov = [IoSlice::new(&[]); N];
    for (slot, frame) in iov.iter_mut().zip(batch.iter()) {
        *slot = IoSlice::new(frame);
    }
    iov
}

/// Drops `n` written bytes from the front of `batch`.
fn advance(batch: &mut VecDeque<Bytes>, mut n: usize) {
    while n > 0 {
        let Some(front) = batch.front_mut() else { return };
        if n >= front.len() {
            n -= front.len();
            batch.pop_front();
        } else {
            front.advance(n);
            return;
        }
    }
    // Empty frames (nothing to write) would otherwise never leave the queue.
    while batch.front().is_some_and(Bytes::is_empty) {
        batch.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_across_frames() {
        let mut q: VecDeque<Bytes> =
            ["abc", "de", "", "fgh"].iter().map(|s| Bytes::from_static(s.as_bytes())).collect();
        advance(&mut q, 4);
        assert_eq!(q, [Bytes::from_static(b"e"), Bytes::new(), Bytes::from_static(b"fgh")]);
        advance(&mut q, 1);
        assert_eq!(q, [Bytes::from_static(b"fgh")]);
        advance(&mut q, 3);
        assert!(q.is_empty());
    }
}
