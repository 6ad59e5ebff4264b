//! Routing of encoded frames to their recipients.
//!
//! The session hands every `once`/`group` message and presence event here, already encoded.
//! On a single node everything is local: the frame is pushed to the recipients' outboxes
//! and the sender's `ack` is queued at once.

use std::sync::Arc;

use bytes::Bytes;

use crate::hub::{Conn, Hub};
use crate::protocol::{AckStatus, MessageId, encode};

/// Where a message goes.
#[derive(Debug, Clone, Copy)]
pub enum Dest<'a> {
    /// Every connection of this user.
    User(&'a str),
    /// Every member connection of this group but the sender's.
    Group(&'a str),
}

/// Who gets the `ack` for a message, and what it says.
#[derive(Debug, Clone, Copy)]
pub struct AckTo<'a> {
    pub conn: &'a Arc<Conn>,
    /// The client's raw id token, echoed.
    pub id: Option<&'a str>,
    pub mid: MessageId,
}

/// Routes frames to this node's connections.
#[derive(Debug)]
pub struct Router {
    hub: Arc<Hub>,
}

impl Router {
    pub fn new(hub: Arc<Hub>) -> Self {
        Router { hub }
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Routes a client's message and queues its `ack` on the sender's connection.
    pub fn send(&self, dest: Dest<'_>, frame: &Bytes, ack: AckTo<'_>) {
        let status = match dest {
            Dest::User(user) if self.hub.deliver_user(user, frame) > 0 => AckStatus::Sent,
            Dest::User(_) => AckStatus::Offline,
            Dest::Group(group) => {
                self.hub.deliver_group(group, frame, ack.conn.id);
                // The sender is a member, so the group has a live connection on this node.
                AckStatus::Sent
            }
        };
        let _ = ack.conn.outbox.push(encode::ack(ack.id, &ack.mid, status));
    }

    /// Routes a message that has no connection to ack (`POST /api/publish`). `Offline` when
    /// no connection took it (for a group: no member is online).
    pub fn publish(&self, dest: Dest<'_>, frame: &Bytes) -> AckStatus {
        let n = match dest {
            Dest::User(user) => self.hub.deliver_user(user, frame),
            Dest::Group(group) => self.hub.deliver_group(group, frame, u64::MAX),
        };
        if n > 0 { AckStatus::Sent } else { AckStatus::Offline }
    }

    /// Tells `group`'s members that `user` joined or left it.
    pub fn presence(&self, group: &str, user: &str, join: bool) {
        self.hub.deliver_group(group, &encode::presence(group, user, join), u64::MAX);
    }
}
