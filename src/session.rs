//! One WebSocket connection: the reader loop and its bookkeeping.
//!
//! tungstenite owns the protocol state of the read side (unmasking, fragments, UTF-8,
//! control frames, the close handshake). Whatever it writes on its own (pongs, the close
//! echo) goes through [`Duplex`] into the connection's outbox, so the writer task
//! ([`crate::writer`]) is the only thing that touches the socket's write half.

use std::collections::HashSet;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes, error::CapacityError};
use tracing::{debug, warn};

use crate::hub::Conn;
use crate::node::{Admission, Identity, Node};
use crate::outbox::Outbox;
use crate::protocol::{self, ErrorCode, MessageId, Request, encode, ws};
use crate::ratelimit::{RateLimiter, Verdict};
use crate::router::{AckTo, Dest};

/// After the gateway sends a close frame, how long it keeps reading for the client's close
/// and FIN before dropping the socket (closing with unread input would send a RST).
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Read-side buffer: enough for typical chat frames, small enough for many idle sockets.
const READ_BUFFER: usize = 4096;

/// Read half for tungstenite, write half into the outbox.
struct Duplex {
    rd: OwnedReadHalf,
    conn: Arc<Conn>,
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

/// Why the read loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client closed (close frame or EOF) or the socket failed.
    Client,
    /// The gateway queued a close frame.
    Server,
    /// The outbox overflowed (slow consumer) or the writer failed.
    Output,
}

/// Serves one upgraded connection to the end.
pub(crate) async fn run(node: Arc<Node>, upgraded: Upgraded, identity: Identity, _slot: Admission) {
    let parts = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => parts,
        Err(_) => {
            warn!("upgraded connection is not a TCP stream");
            node.release_identity(&identity).await;
            return;
        }
    };
    let (rd, mut wr) = parts.io.into_inner().into_split();
    let cfg = &node.config;
    let conn = Arc::new(Conn {
        id: node.next_conn_id(),
        user: identity.user().into(),
        outbox: Outbox::new(cfg.outbox_frames, cfg.outbox_bytes),
    });

    // The welcome is queued first and the writer starts only once presence knows this
    // connection: anything routed to the user from then on is queued behind the welcome.
    let _ = conn.outbox.push(encode::welcome(
        &conn.user,
        &cfg.node_id,
        cfg.heartbeat.as_millis() as u64,
        cfg.max_message_bytes,
    ));
    node.hub.add_user(&conn);
    if let Err(e) = node.presence.connect(&conn.user).await {
        debug!(user = %conn.user, error = %e, "presence unavailable, refusing connection");
        node.hub.remove_user(&conn);
        node.release_identity(&identity).await;
        let close = ws::close_frame(ws::close::TRY_AGAIN_LATER, "presence store unavailable");
        let _ = tokio::time::timeout(CLOSE_LINGER, async {
            let _ = wr.write_all(&close).await;
            let _ = wr.shutdown().await;
        })
        .await;
        return;
    }
    let writer = tokio::spawn(crate::writer::run(conn.clone(), wr));

    let ws_config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(64 << 10)
        .max_message_size(Some(cfg.max_message_bytes))
        .max_frame_size(Some(cfg.max_message_bytes));
    let duplex = Duplex { rd, conn: conn.clone() };
    let stream =
        WebSocketStream::from_partially_read(duplex, parts.read_buf.to_vec(), Role::Server, Some(ws_config)).await;

    let mut session = Session {
        limiter: RateLimiter::new(cfg.rate_limit, cfg.rate_burst, cfg.rate_limit_close),
        node: node.clone(),
        conn: conn.clone(),
        groups: HashSet::default(),
        seq: 0,
    };
    let (mut stream, end) = session.read_loop(stream).await;
    debug!(user = %conn.user, conn = conn.id, ?end, "connection ending");
    if end == End::Client {
        conn.outbox.close_with(Bytes::new());
    }
    session.leave_everything().await;

    // Let the writer flush (it ends after the close frame, or at once if the socket died),
    // then read until the client's FIN so the close is orderly.
    let linger = async {
        let _ = writer.await;
        if end != End::Output {
            let mut sink = [0u8; 1024];
            while matches!(stream.get_mut().rd.read(&mut sink).await, Ok(n) if n > 0) {}
        }
    };
    let _ = tokio::time::timeout(CLOSE_LINGER + crate::writer::SLOW_CLOSE_TIMEOUT, linger).await;
}

/// Resolves once shutdown has begun (at once if it already has).
async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|&stop| stop).await;
}

struct Session {
    node: Arc<Node>,
    conn: Arc<Conn>,
    /// Groups this connection has joined.
    groups: HashSet<Box<str>, foldhash::fast::RandomState>,
    limiter: RateLimiter,
    /// Per-connection message sequence, part of each `mid`.
    seq: u64,
}

impl Session {
    async fn read_loop(&mut self, mut stream: WebSocketStream<Duplex>) -> (WebSocketStream<Duplex>, End) {
        let node = self.node.clone();
        let hb = node.config.heartbeat;
        let mut shutdown = node.shutdown_signal();
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + hb, hb);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_seen = Instant::now();
        let end = loop {
            tokio::select! {
                biased;
                msg = stream.next() => {
                    let msg = match msg {
                        Some(Ok(msg)) => msg,
                        None => break End::Client,
                        Some(Err(e)) => break self.on_read_error(e),
                    };
                    last_seen = Instant::now();
                    match msg {
                        Message::Text(text) => {
                            if let Some(end) = self.on_text(text, last_seen).await {
                                break end;
                            }
                        }
                        Message::Binary(_) => match self.rate_check(None, last_seen) {
                            Ok(()) => self.error(None, ErrorCode::BadRequest, "binary frames are not supported; send JSON text frames"),
                            Err(Some(end)) => break end,
                            Err(None) => {}
                        },
                        Message::Ping(_) => {
                            if let Err(Some(end)) = self.rate_check(None, last_seen) {
                                break end;
                            }
                        }
                        Message::Pong(_) | Message::Frame(_) => {}
                        // tungstenite has queued the close echo through `Duplex`.
                        Message::Close(_) => break End::Client,
                    }
                }
                () = self.conn.outbox.failed() => break End::Output,
                _ = heartbeat.tick() => {
                    if last_seen.elapsed() >= 2 * hb {
                        break self.close(ws::close::HEARTBEAT_TIMEOUT, "heartbeat timeout");
                    }
                    let _ = self.conn.outbox.push(ws::ping_frame());
                }
                () = stopped(&mut shutdown) => {
                    break self.close(ws::close::GOING_AWAY, "server shutting down");
                }
            }
        };
        (stream, end)
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
            // Resets, EOF without a close frame: I/O, not worth more than debug.
            e => {
                debug!(conn = self.conn.id, error = %e, "read ended");
                End::Client
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

    async fn on_text(&mut self, text: Utf8Bytes, now: Instant) -> Option<End> {
        let parsed = protocol::parse(text.as_str());
        let id = match &parsed {
            Ok(frame) => frame.id,
            Err(e) => e.id,
        };
        if let Err(end) = self.rate_check(id, now) {
            return end;
        }
        let frame = match parsed {
            Ok(frame) => frame,
            Err(e) => {
                self.error(e.id, ErrorCode::BadRequest, &e.message);
                return None;
            }
        };
        let id = frame.id;
        match frame.request {
            Request::Once { to, content } => {
                let (mid, ts) = self.stamp();
                let msg = encode::message(encode::MessageKind::Once, &self.conn.user, &to, content, &mid, ts);
                self.node.router.send(Dest::User(&to), &msg, AckTo { conn: &self.conn, id, mid });
            }
            Request::Group { to, content } => {
                if !self.groups.contains(&*to) {
                    self.error(id, ErrorCode::NotMember, "join the group before sending to it");
                    return None;
                }
                let (mid, ts) = self.stamp();
                let msg = encode::message(encode::MessageKind::Group, &self.conn.user, &to, content, &mid, ts);
                self.node.router.send(Dest::Group(&to), &msg, AckTo { conn: &self.conn, id, mid });
            }
            Request::Join { group } => self.join(group.into(), id).await,
            Request::Leave { group } => self.leave(&group, id).await,
            Request::Online => match self.node.presence.online_count().await {
                Ok(n) => self.reply(encode::online(n, id)),
                Err(e) => self.error(id, ErrorCode::Unavailable, &e.to_string()),
            },
            Request::Members { group } => match self.node.presence.members(&group).await {
                Ok(users) => self.reply(encode::members(&group, &users, id)),
                Err(e) => self.error(id, ErrorCode::Unavailable, &e.to_string()),
            },
            Request::Ping => self.reply(encode::pong(id)),
        }
        None
    }

    fn stamp(&mut self) -> (MessageId, u64) {
        self.seq += 1;
        let mid = MessageId { incarnation: self.node.incarnation, conn: self.conn.id, seq: self.seq };
        let ts = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        (mid, ts)
    }

    async fn join(&mut self, group: Box<str>, id: Option<&str>) {
        if self.groups.contains(&group) {
            return self.reply(encode::membership_reply(true, &group, id));
        }
        if self.groups.len() >= self.node.config.max_groups {
            return self.error(id, ErrorCode::BadRequest, "too many groups joined on this connection");
        }
        // Local membership first, so nothing routed after the presence write is missed.
        self.node.hub.join(&group, &self.conn);
        match self.node.presence.join(&self.conn.user, &group).await {
            Ok(first) => {
                self.reply(encode::membership_reply(true, &group, id));
                if first {
                    self.node.router.presence(&group, &self.conn.user, true);
                }
                self.groups.insert(group);
            }
            Err(e) => {
                self.node.hub.leave(&group, &self.conn);
                self.error(id, ErrorCode::Unavailable, &e.to_string());
            }
        }
    }

    async fn leave(&mut self, group: &str, id: Option<&str>) {
        if !self.groups.contains(group) {
            return self.reply(encode::membership_reply(false, group, id));
        }
        match self.node.presence.leave(&self.conn.user, group).await {
            Ok(last) => {
                self.groups.remove(group);
                self.node.hub.leave(group, &self.conn);
                self.reply(encode::membership_reply(false, group, id));
                if last {
                    self.node.router.presence(group, &self.conn.user, false);
                }
            }
            Err(e) => self.error(id, ErrorCode::Unavailable, &e.to_string()),
        }
    }

    /// Removes the connection from the hub and presence, and tells groups it left.
    async fn leave_everything(&mut self) {
        let node = &self.node;
        node.hub.remove_user(&self.conn);
        let groups: Vec<Box<str>> = self.groups.drain().collect();
        for g in &groups {
            node.hub.leave(g, &self.conn);
        }
        match node.presence.disconnect(&self.conn.user, &groups).await {
            Ok(left) => {
                for g in left {
                    node.router.presence(&g, &self.conn.user, false);
                }
            }
            Err(e) => warn!(user = %self.conn.user, error = %e, "could not record disconnect"),
        }
    }
}
