//! The v1 (and v1.1) wire contract (`docs/PROTOCOL.md`) as pure functions over bytes.
//!
//! * [`parse`] turns one client text frame into a [`ClientFrame`] borrowing the input;
//!   nothing here touches a socket, so it is unit-tested, fuzzed and benched in isolation.
//! * [`encode`] builds every server frame once, already framed for WebSocket, as a `Bytes`
//!   that is shared (reference-counted) with every recipient.
//! * [`ws`] is the few bytes of RFC 6455 framing the server writes itself.

pub mod encode;
pub mod parse;
pub mod ws;

use std::borrow::Cow;

pub use parse::{ParseError, SimdScratch, parse, parse_serde, parse_simd};

/// Longest user id or group name, in bytes (all allowed characters are ASCII).
pub const MAX_NAME_LEN: usize = 128;

/// Deepest array/object nesting accepted inside `content`: recipients' parsers may recurse.
pub const MAX_DEPTH: usize = 128;

/// A client request, after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// Direct message to every connection of a user.
    Once {
        to: Cow<'a, str>,
        content: &'a str,
    },
    /// Message to every member of a group the sender has joined.
    Group {
        to: Cow<'a, str>,
        content: &'a str,
    },
    Join {
        group: Cow<'a, str>,
    },
    Leave {
        group: Cow<'a, str>,
    },
    Online,
    Members {
        group: Cow<'a, str>,
    },
    Ping,
    /// A new token for this connection (token mode).
    Refresh {
        token: Cow<'a, str>,
    },
}

/// One parsed client frame.
///
/// `id` is the client's correlation id as its raw JSON string token (quotes and escapes
/// included), so replies echo it byte-for-byte without re-escaping. `content` is likewise
/// the raw JSON text of the value, forwarded untouched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFrame<'a> {
    pub id: Option<&'a str>,
    pub request: Request<'a>,
}

/// Error codes of the contract's `error` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    BadRequest,
    NotMember,
    RateLimited,
    Unavailable,
    /// v1.1: the token does not allow this group, or a `refresh` token was refused.
    Forbidden,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 5] = [
        ErrorCode::BadRequest,
        ErrorCode::NotMember,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
        ErrorCode::Forbidden,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::NotMember => "not_member",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Forbidden => "forbidden",
        }
    }
}

/// `true` if `s` is a valid user id or group name: 1 to 128 of `A-Z a-z 0-9 _ . : @ -`.
pub fn is_valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'-'))
}

/// Where a message goes. `S` is `&str` on the hot path and `Box<str>` once it is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target<S = Box<str>> {
    /// Every connection of this user.
    User(S),
    /// Every member connection of this group (but the sender's).
    Group(S),
}

impl<S: AsRef<str>> Target<S> {
    /// The user id or group name.
    pub fn name(&self) -> &str {
        match self {
            Target::User(s) | Target::Group(s) => s.as_ref(),
        }
    }

    pub fn is_group(&self) -> bool {
        matches!(self, Target::Group(_))
    }

    pub fn as_deref(&self) -> Target<&str> {
        match self {
            Target::User(s) => Target::User(s.as_ref()),
            Target::Group(s) => Target::Group(s.as_ref()),
        }
    }

    /// An owned copy, for queueing.
    pub fn to_owned(&self) -> Target {
        match self {
            Target::User(s) => Target::User(s.as_ref().into()),
            Target::Group(s) => Target::Group(s.as_ref().into()),
        }
    }
}

/// Outcome of a `once`/`group` message, as reported in its `ack`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckStatus {
    Sent,
    Offline,
}

impl AckStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AckStatus::Sent => "sent",
            AckStatus::Offline => "offline",
        }
    }
}

/// Server-assigned message id: unique per node incarnation, connection and sequence.
///
/// Written as `<incarnation hex>-<conn hex>-<seq hex>`; stamping it costs no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageId {
    pub incarnation: u32,
    pub conn: u64,
    pub seq: u64,
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:08x}-{:x}-{:x}", self.incarnation, self.conn, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_valid_name("17"));
        assert!(is_valid_name("room.1:a@b-c_d"));
        assert!(is_valid_name(&"a".repeat(128)));
        assert!(!is_valid_name(&"a".repeat(129)));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("has space"));
        assert!(!is_valid_name("slash/"));
        assert!(!is_valid_name("é"));
        assert!(!is_valid_name("quote\""));
    }

    #[test]
    fn targets_borrow_and_own() {
        let t = Target::Group("room");
        assert_eq!(t.to_owned(), Target::Group(Box::<str>::from("room")));
        assert_eq!(t.to_owned().as_deref(), t);
        assert_eq!(t.name(), "room");
        assert!(t.is_group() && !Target::User("1").is_group());
    }

    #[test]
    fn message_id_format() {
        let mid = MessageId { incarnation: 0xab, conn: 0x1f, seq: 2 };
        assert_eq!(mid.to_string(), "000000ab-1f-2");
    }
}
