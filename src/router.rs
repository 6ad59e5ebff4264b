//! Routing of encoded frames to their recipients.
//!
//! The session hands every `once`/`group` message and presence event here, already encoded.
//! On a single node everything is local: the frame is pushed to the recipients' outboxes
//! and the sender's `ack` is queued at once. In a cluster the frame goes to a dispatcher
//! shard (see [`crate::cluster`]), which finds the recipients' nodes and acks once every
//! node holding a recipient has it. Sessions call the same three methods either way.

use std::hash::BuildHasher;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::backend::{BackendError, Target};
use crate::cluster::{Ack, Cluster, Job};
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

impl Dest<'_> {
    fn target(self) -> Target {
        match self {
            Dest::User(u) => Target::User(u.into()),
            Dest::Group(g) => Target::Group(g.into()),
        }
    }
}

/// Who gets the `ack` for a message, and what it says.
#[derive(Debug, Clone, Copy)]
pub struct AckTo<'a> {
    pub conn: &'a Arc<Conn>,
    /// The client's raw id token, echoed.
    pub id: Option<&'a str>,
    pub mid: MessageId,
}

/// Routes frames to their recipients, here or on other nodes.
#[derive(Debug)]
pub struct Router {
    hub: Arc<Hub>,
    cluster: Option<Arc<Cluster>>,
    hasher: foldhash::fast::FixedState,
}

impl Router {
    pub fn new(hub: Arc<Hub>, cluster: Option<Arc<Cluster>>) -> Self {
        Router { hub, cluster, hasher: Default::default() }
    }

    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// Routes a client's message and, once routed, queues its `ack` on the sender's
    /// connection.
    pub fn send(&self, dest: Dest<'_>, frame: &Bytes, ack: AckTo<'_>) {
        if let Some(cluster) = &self.cluster {
            let group = matches!(dest, Dest::Group(_));
            let job = Job {
                target: dest.target(),
                frame: frame.clone(),
                exclude: if group { ack.conn.id } else { u64::MAX },
                ack: Ack::Conn { conn: ack.conn.clone(), id: ack.id.map(Into::into), mid: ack.mid },
                group_sent: group,
            };
            // One shard per sender connection keeps its messages in order.
            cluster.submit(ack.conn.id, job);
            return;
        }
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
    pub async fn publish(&self, dest: Dest<'_>, frame: &Bytes) -> Result<AckStatus, BackendError> {
        if let Some(cluster) = &self.cluster {
            let (tx, rx) = oneshot::channel();
            let job = Job {
                target: dest.target(),
                frame: frame.clone(),
                exclude: u64::MAX,
                ack: Ack::Reply(tx),
                group_sent: false,
            };
            cluster.submit(fastrand::u64(..), job);
            return rx.await.unwrap_or_else(|_| Err(BackendError::Broker("router stopped".into())));
        }
        let n = match dest {
            Dest::User(user) => self.hub.deliver_user(user, frame),
            Dest::Group(group) => self.hub.deliver_group(group, frame, u64::MAX),
        };
        Ok(if n > 0 { AckStatus::Sent } else { AckStatus::Offline })
    }

    /// Tells `group`'s members, on every node, that `user` joined or left it.
    pub fn presence(&self, group: &str, user: &str, join: bool) {
        let frame = encode::presence(group, user, join);
        if let Some(cluster) = &self.cluster {
            // Events of one group share a shard, so a join is never overtaken by its leave.
            let job = Job {
                target: Target::Group(group.into()),
                frame,
                exclude: u64::MAX,
                ack: Ack::None,
                group_sent: false,
            };
            cluster.submit(self.hasher.hash_one(group), job);
            return;
        }
        self.hub.deliver_group(group, &frame, u64::MAX);
    }
}
