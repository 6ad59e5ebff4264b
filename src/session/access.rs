//! A token connection's access: what its token's `groups` claim allows, when it expires,
//! and the `refresh` frame that replaces both.
//!
//! The permission check is [`Session::may_use`], the one place that reads the claim: `join`
//! calls it, a `group` message calls it only to choose the refusal for a group not joined,
//! and `history` (not built yet) is to call it too. Sending to a joined group needs no check:
//! every joined group was allowed when it was joined, and a refresh leaves the joined groups
//! its new token no longer allows before it takes effect.

use std::sync::Arc;

use super::Session;
use crate::auth::{Grant, Groups};
use crate::hub::Conn;
use crate::node::{Deadline, Node};
use crate::protocol::{ErrorCode, encode};

/// The `forbidden` error's message for a group outside the token's `groups`.
pub(super) const NOT_ALLOWED: &str = "your token does not allow this group";

/// What the current token allows; kept for the life of the connection.
#[derive(Debug)]
pub(super) struct Access {
    /// `None`: the token has no `groups` claim; every group is allowed.
    groups: Option<Groups>,
    /// When the node closes the connection with 4001 (the token's `exp` plus the leeway).
    pub(super) deadline: Deadline,
}

impl Access {
    /// The access of a connection that presented `grant`; schedules its expiry.
    pub(super) fn start(node: &Node, conn: &Arc<Conn>, grant: Grant) -> Box<Access> {
        Box::new(Access { deadline: node.expiry.schedule(conn, grant.exp), groups: grant.groups })
    }
}

impl Session {
    /// Whether this connection's token allows `join`, `group` and `history` for `group`
    /// (always, in anonymous mode and for a token without a `groups` claim).
    pub(super) fn may_use(&self, group: &str) -> bool {
        self.access.as_ref().and_then(|a| a.groups.as_ref()).is_none_or(|g| g.allows(group))
    }

    /// `refresh`: a new token for the same user. Its `groups` replace the old ones (joined
    /// groups it does not allow are left, with the presence `leave` event but no `left`
    /// reply: the client did not ask to leave) and its `exp` the old deadline. A token that is
    /// invalid or for another user is `forbidden` and changes nothing: the old token stays in
    /// force until it expires.
    pub(super) async fn refresh(&mut self, token: &str, id: Option<&str>) {
        if self.access.is_none() {
            return self.error(
                id,
                ErrorCode::BadRequest,
                "refresh needs token mode; this server assigns anonymous ids",
            );
        }
        let grant = match self.node.auth.verify(token) {
            Ok(g) => g,
            Err(why) => return self.error(id, ErrorCode::Forbidden, &why),
        };
        if *grant.user != *self.conn.user {
            return self.error(id, ErrorCode::Forbidden, "the new token is for another user (its `sub` differs)");
        }
        let revoked: Vec<Box<str>> = self.groups.iter().filter(|g| !grant.allows(g)).cloned().collect();
        for group in revoked {
            // If the presence store cannot record a leave, the refresh fails as a whole: the
            // old token, which allows every group still joined, stays in force.
            if let Err(e) = self.leave_group(&group).await {
                return self.error(id, ErrorCode::Unavailable, &e.to_string());
            }
        }
        let exp = grant.exp;
        if let Some(access) = self.access.as_mut() {
            self.node.expiry.cancel(access.deadline);
            access.deadline = self.node.expiry.schedule(&self.conn, exp);
            access.groups = grant.groups;
        }
        self.reply(encode::refreshed(exp, id));
    }
}

#[cfg(test)]
mod tests {
    /// Every idle connection holds one `serve` future, so token state must not grow it: the
    /// access is one boxed pointer in the session, a refresh is boxed when it runs, and expiry
    /// is the node's map, not a timer here. 1,560 bytes in a debug build with and without
    /// tokens when they were added; 1,608 since the session holds its connection slot with
    /// its client address's share (16 bytes). The bound leaves a little room.
    #[test]
    fn token_state_keeps_the_session_future_small() {
        fn future_size<A, B, F: std::future::Future>(_: fn(A, B) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let serve = future_size(super::super::serve);
        assert!(serve <= 1640, "the serve future grew to {serve} bytes");
        assert_eq!(std::mem::size_of::<Option<Box<super::Access>>>(), 8);
    }
}
