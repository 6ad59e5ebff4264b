//! One WebSocket connection: the reader loop and its bookkeeping.
//!
//! tungstenite owns the protocol state of the read side (unmasking, fragments, UTF-8,
//! control frames, the close handshake). Whatever it writes on its own (pongs, the close
//! echo) goes through [`Duplex`] into the connection's outbox, so the writer task
//! ([`crate::writer`]) is the only thing that touches the socket's write half.

mod access;
mod duplex;
mod requests;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, error::CapacityError};
use tracing::{debug, warn};

use crate::backend::chain;
use crate::hub::Conn;
use crate::metrics::FrameKind;
use crate::node::{Admission, Handshake, Identity, Node};
use crate::outbox::{Outbox, Phase};
use crate::protocol::{ErrorCode, encode, ws};
use crate::ratelimit::{RateLimiter, Verdict};
use crate::transport::Transport;
use crate::writer::{CLOSE_LINGER, Finish};
use access::Access;
use duplex::Duplex;

/// Why the read loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client closed (with the code of its close frame; `None`: EOF, or the socket
    /// failed).
    Client(Option<u16>),
    /// The gateway queued a close frame.
    Server,
    /// The outbox overflowed (slow consumer) or the writer failed.
    Output,
}

/// Serves one upgraded connection to the end.
pub(crate) async fn run(
    node: Arc<Node>,
    upgraded: Upgraded,
    identity: Identity,
    _slot: Admission,
    handshake: Handshake,
) {
    let parts = match upgraded.downcast::<TokioIo<Transport>>() {
        Ok(parts) => parts,
        Err(_) => {
            warn!("upgraded connection is not the server's transport");
            node.release_identity(&identity).await;
            return;
        }
    };
    let (rd, mut wr) = parts.io.into_inner().split();
    // Bytes the client sent right behind its request. Copied out at once: `read_buf` is a
    // view of hyper's whole read buffer (8 KiB or more), which it would keep alive for the
    // life of the connection.
    let leftover = parts.read_buf.to_vec();
    drop(parts.read_buf);
    let cfg = &node.config;
    let conn = Arc::new(Conn::new(
        node.next_conn_id(),
        identity.user().into(),
        Outbox::with_congestion(cfg.outbox_frames, cfg.outbox_bytes, node.congestion.clone()),
    ));
    conn.seen(node.clock.now_ms());

    // The welcome is queued first and the writer starts only once presence knows this
    // connection: anything routed to the user from then on is queued behind the welcome.
    // An echo server says nothing it was not sent.
    if !cfg.echo {
        let _ = conn.outbox.push(encode::welcome(
            &conn.user,
            &cfg.node_id,
            cfg.heartbeat.as_millis() as u64,
            cfg.max_message_bytes,
        ));
    }
    node.hub.add_user(&conn);
    if let Err(e) = node.presence.connect(&conn.user).await {
        debug!(user = %conn.user, error = %chain(&e), "presence unavailable, refusing connection");
        node.hub.remove_user(&conn);
        node.release_identity(&identity).await;
        let close = ws::close_frame(ws::close::TRY_AGAIN_LATER, "presence store unavailable");
        let _ = tokio::time::timeout(crate::writer::CLOSE_LINGER, async {
            let _ = wr.write_all(&close).await;
            let _ = wr.shutdown().await;
        })
        .await;
        return;
    }
    if node.is_draining() {
        // Shutdown began while this connection was being set up.
        conn.outbox.close_with(crate::node::shutdown_close());
    }
    let writer = node.sessions.spawn(crate::writer::run(conn.clone(), wr, cfg.slow_consumer));

    let ws_config = WebSocketConfig::default()
        .read_buffer_size(cfg.read_buffer_bytes)
        .write_buffer_size(0)
        .max_write_buffer_size(64 << 10)
        .max_message_size(Some(cfg.max_message_bytes))
        .max_frame_size(Some(cfg.max_message_bytes));
    let duplex = Duplex { rd, conn: conn.clone() };
    let stream = WebSocketStream::from_partially_read(duplex, leftover, Role::Server, Some(ws_config)).await;
    let access = match identity {
        Identity::User(grant) => Some(Access::start(&node, &conn, grant)),
        Identity::Anonymous(_) => None,
    };

    let session = Session {
        limiter: RateLimiter::new(cfg.rate_limit, cfg.rate_burst, cfg.rate_limit_close),
        node: node.clone(),
        conn,
        groups: HashSet::default(),
        access,
        seq: 0,
        stream,
        _slot,
    };
    drop(handshake);
    // The connection's long life runs in a task of its own: this one, with all the set-up
    // state above, ends now instead of sitting in every idle connection's memory.
    node.sessions.spawn(serve(session, writer));
}

/// The established connection: read until it ends, then clean up and close in order.
/// Every byte of this future is held by every idle connection, so the end of life is boxed
/// and only allocated when it comes.
async fn serve(mut session: Session, writer: tokio::task::JoinHandle<Finish>) {
    let end = session.read_loop().await;
    Box::pin(session.finish(end, writer)).await;
}

/// How a connection ends when its outbox left `Open`.
fn end_of(phase: Phase) -> End {
    match phase {
        // A close frame is queued behind what the client is owed.
        Phase::Closing => End::Server,
        _ => End::Output,
    }
}

struct Session {
    node: Arc<Node>,
    conn: Arc<Conn>,
    /// Groups this connection has joined. Each was allowed by the token when joined, and a
    /// refresh leaves those its new token does not allow, so sending to one needs no check.
    groups: HashSet<Box<str>, foldhash::fast::RandomState>,
    /// The token's groups and expiry; `None` in anonymous mode (boxed: 8 bytes there).
    access: Option<Box<Access>>,
    limiter: RateLimiter,
    /// Per-connection message sequence, part of each `mid`.
    seq: u64,
    stream: WebSocketStream<Duplex>,
    /// The connection slot, given back when the session (its `finish` included) ends.
    _slot: Admission,
}

impl Session {
    async fn read_loop(&mut self) -> End {
        let node = self.node.clone();
        let conn = self.conn.clone();
        // Created once and polled in place: re-creating it per frame would register and
        // deregister a waiter on every message. Shutdown and heartbeat timeouts arrive this
        // way too (a close queued on the outbox), so an idle connection has no timer.
        let ended = conn.outbox.ended();
        tokio::pin!(ended);
        // Messages in flight to other nodes, at most: their acks then fit in half the outbox.
        let max_unacked = (node.config.outbox_frames / 2).max(1) as u32;
        loop {
            if conn.unacked() >= max_unacked {
                node.metrics.backpressure_pauses.inc();
                tokio::select! {
                    biased;
                    phase = &mut ended => break end_of(phase),
                    () = conn.unacked_below(max_unacked) => {}
                }
            }
            if node.congestion.is_congested() {
                // Fan-in control: this client's next frames wait in its own TCP buffers
                // until the node's writers have caught up.
                node.metrics.backpressure_pauses.inc();
                tokio::select! {
                    biased;
                    phase = &mut ended => break end_of(phase),
                    () = node.congestion.cleared() => {}
                }
            }
            tokio::select! {
                biased;
                msg = self.stream.next() => {
                    let msg = match msg {
                        Some(Ok(msg)) => msg,
                        None => break End::Client(None),
                        Some(Err(e)) => break self.on_read_error(e),
                    };
                    let now = Instant::now();
                    conn.seen(node.clock.ms_at(now));
                    if node.config.echo && matches!(msg, Message::Text(_) | Message::Binary(_)) {
                        self.echo(msg);
                        continue;
                    }
                    match msg {
                        Message::Text(text) => match self.on_text(&text, now) {
                            Ok(None) => {}
                            Ok(Some(call)) => {
                                drop(text);
                                self.call(call).await;
                            }
                            Err(end) => break end,
                        },
                        Message::Binary(_) => {
                            node.metrics.frame(FrameKind::Binary);
                            match self.rate_check(None, now) {
                                Ok(()) => self.error(None, ErrorCode::BadRequest, "binary frames are not supported; send JSON text frames"),
                                Err(Some(end)) => break end,
                                Err(None) => {}
                            }
                        }
                        Message::Ping(_) => {
                            if let Err(Some(end)) = self.rate_check(None, now) {
                                break end;
                            }
                        }
                        Message::Pong(_) | Message::Frame(_) => {}
                        Message::Close(frame) => {
                            // tungstenite has set the reply (the same code, or 1002 for a code
                            // a client may not send); flushing hands it to `Duplex`.
                            let _ = self.stream.flush().await;
                            break End::Client(Some(frame.map_or(1005, |f| u16::from(f.code))));
                        }
                    }
                }
                phase = &mut ended => break end_of(phase),
            }
        }
    }

    /// Conformance mode: data messages go back as they came, through the same outbox and
    /// writer as every other frame; control frames and closes follow the normal path.
    fn echo(&mut self, msg: Message) {
        match msg {
            Message::Text(t) => self.reply(ws::frame(ws::OP_TEXT, t.as_bytes())),
            Message::Binary(b) => self.reply(ws::frame(ws::OP_BINARY, &b)),
            _ => {}
        }
    }

    fn on_read_error(&self, e: WsError) -> End {
        match e {
            WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
                debug!(conn = self.conn.id, size, max_size, "frame too large");
                self.close(ws::close::TOO_BIG, "message too big")
            }
            WsError::Capacity(_) => self.close(ws::close::TOO_BIG, "message too big"),
            WsError::Protocol(p) => {
                debug!(conn = self.conn.id, error = %p, "protocol error");
                self.close(ws::close::PROTOCOL_ERROR, "protocol error")
            }
            WsError::Utf8(_) => self.close(1007, "invalid UTF-8"),
            // TLS: the TCP connection ended without close_notify. Plain TCP's EOF without a
            // close frame is a protocol error above; the same here, so both count alike.
            WsError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                debug!(conn = self.conn.id, "connection ended without a close");
                self.close(ws::close::PROTOCOL_ERROR, "protocol error")
            }
            // Resets, EOF without a close frame: I/O, not worth more than debug.
            e => {
                debug!(conn = self.conn.id, error = %e, "read ended");
                End::Client(None)
            }
        }
    }

    /// Queues a close frame after everything already queued.
    fn close(&self, code: u16, reason: &str) -> End {
        self.conn.outbox.close_with(ws::close_frame(code, reason));
        End::Server
    }

    fn reply(&self, frame: Bytes) {
        let _ = self.conn.outbox.push(frame);
    }

    fn error(&self, id: Option<&str>, code: ErrorCode, message: &str) {
        self.node.metrics.error(code);
        self.reply(encode::error(id, code, message));
    }

    /// Applies the rate limit to one frame. `Err(Some(end))` ends the connection; `Err(None)`
    /// means the frame was refused with a `rate_limited` error.
    fn rate_check(&mut self, id: Option<&str>, now: Instant) -> Result<(), Option<End>> {
        match self.limiter.check(now) {
            Verdict::Allow => Ok(()),
            Verdict::Reject => {
                self.error(id, ErrorCode::RateLimited, "rate limit exceeded");
                Err(None)
            }
            Verdict::Close => Err(Some(self.close(ws::close::POLICY, "rate limit exceeded"))),
        }
    }

    /// After the read loop: deregister, let the writer flush (it ends after the close frame,
    /// or at once if the socket died), then read until the client's FIN so the close is
    /// orderly.
    async fn finish(mut self, end: End, writer: tokio::task::JoinHandle<Finish>) {
        debug!(user = %self.conn.user, conn = self.conn.id, ?end, "connection ending");
        if matches!(end, End::Client(_)) {
            self.conn.outbox.close_with(Bytes::new());
        }
        let metrics = &self.node.metrics;
        metrics.disconnect(match end {
            End::Client(code) => code,
            End::Server => self.conn.outbox.close_code(),
            End::Output if self.conn.outbox.phase() == Phase::SlowConsumer => {
                metrics.slow_consumers.inc();
                Some(ws::close::TRY_AGAIN_LATER)
            }
            End::Output => None,
        });
        self.leave_everything().await;
        // The writer ends within its own linger (it resets a client that does not take the
        // close); then, after a clean close, read until the client's FIN, so the kernel never
        // answers unread input with a reset, for at most one more linger.
        let finish = writer.await.unwrap_or(Finish::Dead);
        if finish != Finish::Closed || end == End::Output {
            return;
        }
        let rd = &mut self.stream.get_mut().rd;
        let fin = async {
            let mut sink = [0u8; 512];
            while matches!(rd.read(&mut sink).await, Ok(n) if n > 0) {}
        };
        if tokio::time::timeout(CLOSE_LINGER, fin).await.is_err() {
            self.node.metrics.linger_timeouts.inc();
            rd.reset();
        }
    }

    /// Removes the connection from the hub and presence, and tells groups it left.
    async fn leave_everything(&mut self) {
        let node = &self.node;
        if let Some(access) = &self.access {
            node.expiry.cancel(access.deadline);
        }
        node.hub.remove_user(&self.conn);
        let groups: Vec<Box<str>> = self.groups.drain().collect();
        for g in &groups {
            node.hub.leave(g, &self.conn);
        }
        match node.presence.disconnect(&self.conn.user, &groups).await {
            Ok(left) => {
                for g in left {
                    node.router.presence(&g, &self.conn.user, false).await;
                }
            }
            Err(e) => warn!(user = %self.conn.user, error = %chain(&e), "could not record disconnect"),
        }
    }
}
