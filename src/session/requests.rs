//! A session's requests: parse and route one text frame, and the requests that wait for
//! the presence store (join, leave, online, members, refresh, room in a full dispatcher).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{End, Session, access};
use crate::backend::BackendError;
use crate::delivery::{AckTo, Target};
use crate::metrics::FrameKind;
use crate::protocol::{self, ErrorCode, MessageId, Request, encode};
use crate::router::Waiting;

/// The metrics label of a request.
fn frame_kind(r: &Request<'_>) -> FrameKind {
    match r {
        Request::Once { .. } => FrameKind::Once,
        Request::Group { .. } => FrameKind::Group,
        Request::Join { .. } => FrameKind::Join,
        Request::Leave { .. } => FrameKind::Leave,
        Request::Online => FrameKind::Online,
        Request::Members { .. } => FrameKind::Members,
        Request::Ping => FrameKind::Ping,
        Request::Refresh { .. } => FrameKind::Refresh,
    }
}

/// A request that needs a presence round trip, with what its reply needs (owned).
pub(super) enum Call {
    /// A message for other nodes whose dispatcher is full: wait for room before reading on.
    Wait(Waiting),
    Join(Box<str>, Option<Box<str>>),
    Leave(Box<str>, Option<Box<str>>),
    Online(Option<Box<str>>),
    Members(Box<str>, Option<Box<str>>),
    Refresh(Box<str>, Option<Box<str>>),
}

impl Session {
    /// Handles one text frame. Requests that need the presence store come back as a
    /// [`Call`] of owned values, awaited by the read loop: the frame (borrowing `text`) is
    /// then not part of the state an idle connection's task keeps.
    pub(super) fn on_text(&mut self, text: &Utf8Bytes, now: Instant) -> Result<Option<Call>, End> {
        let parsed = protocol::parse(text.as_str());
        let id = match &parsed {
            Ok(frame) => frame.id,
            Err(e) => e.id,
        };
        match self.rate_check(id, now) {
            Ok(()) => {}
            Err(Some(end)) => return Err(end),
            Err(None) => return Ok(None),
        }
        let frame = match parsed {
            Ok(frame) => frame,
            Err(e) => {
                self.node.metrics.frame(FrameKind::Invalid);
                self.error(e.id, ErrorCode::BadRequest, &e.message);
                return Ok(None);
            }
        };
        self.node.metrics.frame(frame_kind(&frame.request));
        let id = frame.id;
        let owned_id = || id.map(Box::<str>::from);
        match frame.request {
            Request::Once { to, content } => {
                let (mid, ts) = self.stamp();
                let msg = encode::message(encode::MessageKind::Once, &self.conn.user, &to, content, &mid, ts);
                let ack = AckTo { conn: &self.conn, id, mid, read_at: now };
                return Ok(self.node.router.send(Target::User(&to), &msg, ack).map(Call::Wait));
            }
            Request::Group { to, content } => {
                if !self.groups.contains(&*to) {
                    // Only the refusal consults the token: a joined group is an allowed one.
                    if self.may_use(&to) {
                        self.error(id, ErrorCode::NotMember, "join the group before sending to it");
                    } else {
                        self.error(id, ErrorCode::Forbidden, access::NOT_ALLOWED);
                    }
                    return Ok(None);
                }
                let (mid, ts) = self.stamp();
                let msg = encode::message(encode::MessageKind::Group, &self.conn.user, &to, content, &mid, ts);
                let ack = AckTo { conn: &self.conn, id, mid, read_at: now };
                return Ok(self.node.router.send(Target::Group(&to), &msg, ack).map(Call::Wait));
            }
            Request::Join { group } => return Ok(Some(Call::Join(group.into(), owned_id()))),
            Request::Leave { group } => return Ok(Some(Call::Leave(group.into(), owned_id()))),
            Request::Online => return Ok(Some(Call::Online(owned_id()))),
            Request::Members { group } => return Ok(Some(Call::Members(group.into(), owned_id()))),
            Request::Ping => self.reply(encode::pong(id)),
            Request::Refresh { token } => return Ok(Some(Call::Refresh(token.into(), owned_id()))),
        }
        Ok(None)
    }

    /// A request that waits for the presence store.
    pub(super) async fn call(&mut self, call: Call) {
        match call {
            // Boxed: only a congested connection pays for the wait's state.
            Call::Wait(waiting) => Box::pin(self.node.router.wait(waiting)).await,
            Call::Join(group, id) => self.join(group, id.as_deref()).await,
            // Inline rather than a `leave` fn around `leave_group`: one future layer less in
            // the state every idle connection's task holds.
            Call::Leave(group, id) => match self.leave_group(&group).await {
                Ok(()) => self.reply(encode::membership_reply(false, &group, id.as_deref())),
                Err(e) => self.error(id.as_deref(), ErrorCode::Unavailable, &e.to_string()),
            },
            Call::Online(id) => match self.node.presence.online_count().await {
                Ok(n) => self.reply(encode::online(n, id.as_deref())),
                Err(e) => self.error(id.as_deref(), ErrorCode::Unavailable, &e.to_string()),
            },
            Call::Members(group, id) => match self.node.presence.members(&group).await {
                Ok(users) => self.reply(encode::members(&group, &users, id.as_deref())),
                Err(e) => self.error(id.as_deref(), ErrorCode::Unavailable, &e.to_string()),
            },
            // Boxed: rare, and its state would otherwise enlarge every idle connection's future.
            Call::Refresh(token, id) => Box::pin(self.refresh(&token, id.as_deref())).await,
        }
    }

    fn stamp(&mut self) -> (MessageId, u64) {
        self.seq += 1;
        let mid = MessageId { incarnation: self.node.incarnation, conn: self.conn.id, seq: self.seq };
        let ts = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        (mid, ts)
    }

    async fn join(&mut self, group: Box<str>, id: Option<&str>) {
        if !self.may_use(&group) {
            return self.error(id, ErrorCode::Forbidden, access::NOT_ALLOWED);
        }
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
                    // Boxed: its wait for dispatcher room would otherwise sit in every idle
                    // connection's task.
                    Box::pin(self.node.router.presence(&group, &self.conn.user, true)).await;
                }
                self.groups.insert(group);
            }
            Err(e) => {
                self.node.hub.leave(&group, &self.conn);
                self.error(id, ErrorCode::Unavailable, &e.to_string());
            }
        }
    }

    /// Leaves `group` if joined: presence first (on failure nothing changes), then the hub,
    /// then the presence `leave` event if this was the user's last connection in it.
    pub(super) async fn leave_group(&mut self, group: &str) -> Result<(), BackendError> {
        if !self.groups.contains(group) {
            return Ok(());
        }
        let last = self.node.presence.leave(&self.conn.user, group).await?;
        self.groups.remove(group);
        self.node.hub.leave(group, &self.conn);
        if last {
            // Boxed: its wait for dispatcher room would otherwise sit in every idle
            // connection's task.
            Box::pin(self.node.router.presence(group, &self.conn.user, false)).await;
        }
        Ok(())
    }
}
