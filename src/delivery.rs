//! How the sender of a routed message learns the outcome.
//!
//! [`decide`] is the one rule that turns a routing result into the `ack` (or `unavailable`)
//! the contract names, whether the message stayed on this node or crossed the broker.
//! Messages are addressed with [`Target`], the one "user or group" type (defined with the
//! wire contract, re-exported here).

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;

use crate::backend::BackendError;
use crate::hub::Conn;
use crate::metrics::Metrics;
pub use crate::protocol::Target;
use crate::protocol::{AckStatus, ErrorCode, MessageId, encode};

/// The ack rule. `delivered`: some connection (here or on another node) took the message;
/// `undelivered`: what to answer when none did (`offline` for a direct message, `sent` for a
/// member's group message: the group has a live connection, its sender's); `failed`: a
/// node that holds recipients could not be reached, so the message may be lost there.
pub fn decide(
    delivered: bool,
    undelivered: AckStatus,
    failed: Option<BackendError>,
) -> Result<AckStatus, BackendError> {
    match failed {
        Some(e) => Err(e),
        None if delivered => Ok(AckStatus::Sent),
        None => Ok(undelivered),
    }
}

/// The sender of a client message, borrowed from its session (no allocation when the
/// message is settled at once).
#[derive(Debug, Clone, Copy)]
pub struct AckTo<'a> {
    pub conn: &'a Arc<Conn>,
    /// The client's raw id token, echoed.
    pub id: Option<&'a str>,
    pub mid: MessageId,
    /// When the message was read (routing latency is measured from here).
    pub read_at: Instant,
}

impl AckTo<'_> {
    /// Queues the answer on the sender's connection.
    pub fn answer(self, res: Result<AckStatus, BackendError>, metrics: &Metrics) {
        record(&res, self.read_at, metrics);
        answer_conn(self.conn, self.id, &self.mid, res, metrics);
    }

    /// An owned [`Ack`], for a message that waits for the broker.
    pub fn to_owned(self) -> Ack {
        Ack::Conn { conn: Unacked::new(self.conn), id: self.id.map(Into::into), mid: self.mid }
    }
}

/// Who learns the outcome of a queued message.
#[derive(Debug)]
pub enum Ack {
    /// Presence events: nobody.
    None,
    /// A client's message: an `ack` (or `unavailable` error) frame on its connection.
    Conn { conn: Unacked, id: Option<Box<str>>, mid: MessageId },
    /// `POST /api/publish`.
    Reply(oneshot::Sender<Result<AckStatus, BackendError>>),
}

impl Ack {
    /// Answers a message read at `read_at`.
    pub fn answer(self, res: Result<AckStatus, BackendError>, read_at: Instant, metrics: &Metrics) {
        match self {
            Ack::None => {}
            Ack::Reply(tx) => {
                record(&res, read_at, metrics);
                let _ = tx.send(res);
            }
            Ack::Conn { conn, id, mid } => {
                record(&res, read_at, metrics);
                answer_conn(&conn.0, id.as_deref(), &mid, res, metrics);
            }
        }
    }
}

/// A connection's message counted in flight until its answer is queued (or it is dropped
/// unanswered, at shutdown).
#[derive(Debug)]
pub struct Unacked(Arc<Conn>);

impl Unacked {
    fn new(conn: &Arc<Conn>) -> Self {
        conn.add_unacked();
        Unacked(conn.clone())
    }
}

impl Drop for Unacked {
    fn drop(&mut self) {
        self.0.settle_unacked();
    }
}

/// The routing latency and outcome of one message (once per message, never per recipient).
#[inline]
fn record(res: &Result<AckStatus, BackendError>, read_at: Instant, metrics: &Metrics) {
    metrics.routing_latency.observe_duration(read_at.elapsed());
    match res {
        Ok(status) => metrics.ack(*status),
        Err(_) => {
            metrics.unavailable.inc();
        }
    }
}

fn answer_conn(conn: &Conn, id: Option<&str>, mid: &MessageId, res: Result<AckStatus, BackendError>, m: &Metrics) {
    let frame = match res {
        Ok(status) => encode::ack(id, mid, status),
        Err(e) => {
            m.error(ErrorCode::Unavailable);
            encode::error(id, ErrorCode::Unavailable, &format!("not sent: {e}"))
        }
    };
    // A closing connection no longer needs its acks.
    let _ = conn.outbox.push(frame);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ack_rule() {
        use AckStatus::*;
        assert_eq!(decide(true, Offline, None).unwrap(), Sent);
        assert_eq!(decide(false, Offline, None).unwrap(), Offline);
        assert_eq!(decide(false, Sent, None).unwrap(), Sent, "a member's group message");
        let down = BackendError::broker("down");
        assert!(decide(true, Offline, Some(down)).is_err(), "a node holding recipients missed it");
    }
}
