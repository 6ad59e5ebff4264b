//! Server frames, encoded once into WebSocket-framed `Bytes`.
//!
//! A [`FrameBuf`] reserves [`ws::MAX_HEADER`] bytes of headroom, the JSON payload is written
//! after it, and [`FrameBuf::finish`] writes the header right-aligned into the headroom: one
//! allocation per frame whatever the number of recipients.

use bytes::{BufMut, Bytes, BytesMut};

use super::ws::{self, MAX_HEADER};
use super::{AckStatus, ErrorCode, MessageId};

/// Builder for one text frame.
#[derive(Debug)]
pub struct FrameBuf {
    buf: BytesMut,
}

impl FrameBuf {
    /// A buffer for a payload of about `payload` bytes.
    pub fn with_capacity(payload: usize) -> Self {
        let mut buf = BytesMut::with_capacity(MAX_HEADER + payload);
        buf.put_bytes(0, MAX_HEADER);
        FrameBuf { buf }
    }

    #[inline]
    pub fn raw(&mut self, s: &str) -> &mut Self {
        self.buf.put_slice(s.as_bytes());
        self
    }

    /// A JSON string literal, escaped.
    pub fn string(&mut self, s: &str) -> &mut Self {
        self.buf.put_u8(b'"');
        let bytes = s.as_bytes();
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let esc: &[u8] = match b {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0..=0x1f => b"",
                _ => continue,
            };
            self.buf.put_slice(&bytes[start..i]);
            if esc.is_empty() {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                self.buf.put_slice(b"\\u00");
                self.buf.put_u8(HEX[(b >> 4) as usize]);
                self.buf.put_u8(HEX[(b & 0xf) as usize]);
            } else {
                self.buf.put_slice(esc);
            }
            start = i + 1;
        }
        self.buf.put_slice(&bytes[start..]);
        self.buf.put_u8(b'"');
        self
    }

    /// A name (user id, group, node id) known to need no escaping.
    #[inline]
    pub fn name(&mut self, s: &str) -> &mut Self {
        debug_assert!(!s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20));
        self.buf.put_u8(b'"');
        self.buf.put_slice(s.as_bytes());
        self.buf.put_u8(b'"');
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        let mut tmp = itoa::Buffer::new();
        self.buf.put_slice(tmp.format(v).as_bytes());
        self
    }

    fn hex(&mut self, v: u64) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut tmp = [0u8; 16];
        let mut i = tmp.len();
        let mut v = v;
        loop {
            i -= 1;
            tmp[i] = HEX[(v & 0xf) as usize];
            v >>= 4;
            if v == 0 {
                break;
            }
        }
        self.buf.put_slice(&tmp[i..]);
    }

    pub fn mid(&mut self, mid: &MessageId) -> &mut Self {
        self.buf.put_u8(b'"');
        self.hex_fixed8(mid.incarnation);
        self.buf.put_u8(b'-');
        self.hex(mid.conn);
        self.buf.put_u8(b'-');
        self.hex(mid.seq);
        self.buf.put_u8(b'"');
        self
    }

    fn hex_fixed8(&mut self, v: u32) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for shift in (0..8).rev() {
            self.buf.put_u8(HEX[((v >> (shift * 4)) & 0xf) as usize]);
        }
    }

    /// `,"id":<raw>` when the client gave an id.
    #[inline]
    fn id(&mut self, id: Option<&str>) -> &mut Self {
        if let Some(id) = id {
            self.raw(",\"id\":").raw(id);
        }
        self
    }

    /// Writes the WebSocket header into the headroom and returns the whole frame.
    pub fn finish(self) -> Bytes {
        let mut buf = self.buf;
        let len = buf.len() - MAX_HEADER;
        let mut hdr = [0u8; MAX_HEADER];
        let n = ws::write_header(&mut hdr, ws::OP_TEXT, len);
        buf[MAX_HEADER - n..MAX_HEADER].copy_from_slice(&hdr[MAX_HEADER - n..]);
        let mut frame = buf.freeze();
        bytes::Buf::advance(&mut frame, MAX_HEADER - n);
        frame
    }
}

/// The JSON payload of a finished frame (for tests, logs and the HTTP API).
pub fn payload(frame: &[u8]) -> &[u8] {
    let skip = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        Some(_) => 2,
        None => frame.len(),
    };
    &frame[skip.min(frame.len())..]
}

pub fn welcome(user: &str, node: &str, heartbeat_ms: u64, max_message_bytes: usize) -> Bytes {
    let mut f = FrameBuf::with_capacity(96 + user.len() + node.len());
    f.raw("{\"type\":\"welcome\",\"user\":").name(user);
    f.raw(",\"node\":").name(node);
    f.raw(",\"heartbeat_ms\":").u64(heartbeat_ms);
    f.raw(",\"max_message_bytes\":").u64(max_message_bytes as u64).raw("}");
    f.finish()
}

/// Kind of a delivered message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Once,
    Group,
}

/// A delivered `once` or `group` message: the frame every recipient gets.
pub fn message(kind: MessageKind, from: &str, to: &str, content: &str, mid: &MessageId, ts: u64) -> Bytes {
    let mut f = FrameBuf::with_capacity(80 + from.len() + to.len() + content.len());
    f.raw(match kind {
        MessageKind::Once => "{\"type\":\"once\",\"from\":",
        MessageKind::Group => "{\"type\":\"group\",\"from\":",
    });
    f.name(from).raw(",\"to\":").name(to);
    f.raw(",\"content\":").raw(content);
    f.raw(",\"mid\":").mid(mid);
    f.raw(",\"ts\":").u64(ts).raw("}");
    f.finish()
}

pub fn ack(id: Option<&str>, mid: &MessageId, status: AckStatus) -> Bytes {
    let mut f = FrameBuf::with_capacity(64 + id.map_or(0, str::len));
    f.raw("{\"type\":\"ack\"").id(id);
    f.raw(",\"mid\":").mid(mid);
    f.raw(match status {
        AckStatus::Sent => ",\"status\":\"sent\"}",
        AckStatus::Offline => ",\"status\":\"offline\"}",
    });
    f.finish()
}

/// `joined` / `left` replies.
pub fn membership_reply(joined: bool, group: &str, id: Option<&str>) -> Bytes {
    let mut f = FrameBuf::with_capacity(40 + group.len() + id.map_or(0, str::len));
    f.raw(if joined { "{\"type\":\"joined\",\"group\":" } else { "{\"type\":\"left\",\"group\":" });
    f.name(group).id(id).raw("}");
    f.finish()
}

pub fn online(count: u64, id: Option<&str>) -> Bytes {
    let mut f = FrameBuf::with_capacity(48 + id.map_or(0, str::len));
    f.raw("{\"type\":\"online\",\"count\":").u64(count).id(id).raw("}");
    f.finish()
}

pub fn members<S: AsRef<str>>(group: &str, users: &[S], id: Option<&str>) -> Bytes {
    let names: usize = users.iter().map(|u| u.as_ref().len() + 3).sum();
    let mut f = FrameBuf::with_capacity(48 + group.len() + names + id.map_or(0, str::len));
    f.raw("{\"type\":\"members\",\"group\":").name(group).raw(",\"users\":[");
    for (i, u) in users.iter().enumerate() {
        if i > 0 {
            f.raw(",");
        }
        f.name(u.as_ref());
    }
    f.raw("]").id(id).raw("}");
    f.finish()
}

/// The reply to a `refresh`: the new token's `exp`.
pub fn refreshed(exp: u64, id: Option<&str>) -> Bytes {
    let mut f = FrameBuf::with_capacity(48 + id.map_or(0, str::len));
    f.raw("{\"type\":\"refreshed\",\"exp\":").u64(exp).id(id).raw("}");
    f.finish()
}

pub fn pong(id: Option<&str>) -> Bytes {
    let mut f = FrameBuf::with_capacity(24 + id.map_or(0, str::len));
    f.raw("{\"type\":\"pong\"").id(id).raw("}");
    f.finish()
}

/// Presence event: a user's first connection joined, or last connection left, a group.
pub fn presence(group: &str, user: &str, join: bool) -> Bytes {
    let mut f = FrameBuf::with_capacity(64 + group.len() + user.len());
    f.raw("{\"type\":\"presence\",\"group\":").name(group);
    f.raw(",\"user\":").name(user);
    f.raw(if join { ",\"event\":\"join\"}" } else { ",\"event\":\"leave\"}" });
    f.finish()
}

pub fn error(id: Option<&str>, code: ErrorCode, message: &str) -> Bytes {
    let mut f = FrameBuf::with_capacity(48 + message.len() + id.map_or(0, str::len));
    f.raw("{\"type\":\"error\"").id(id);
    f.raw(",\"code\":\"").raw(code.as_str()).raw("\",\"message\":").string(message).raw("}");
    f.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn json_of(frame: &Bytes) -> Value {
        assert_eq!(frame[0], 0x81, "final text frame");
        let p = payload(frame);
        let declared = match frame[1] {
            126 => u16::from_be_bytes([frame[2], frame[3]]) as usize,
            127 => u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize,
            n => n as usize,
        };
        assert_eq!(declared, p.len(), "header length matches payload");
        serde_json::from_slice(p).expect("valid JSON")
    }

    const MID: MessageId = MessageId { incarnation: 0x0a0b0c0d, conn: 0x2a, seq: 255 };

    #[test]
    fn welcome_frame() {
        let v = json_of(&welcome("17", "node-a", 25000, 65536));
        assert_eq!(
            v,
            json!({"type":"welcome","user":"17","node":"node-a","heartbeat_ms":25000,"max_message_bytes":65536})
        );
    }

    #[test]
    fn delivered_messages_keep_content_bytes() {
        let content = r#"{"b": 1.50e3, "a":"\u00e9"}"#;
        let f = message(MessageKind::Once, "17", "42", content, &MID, 1764230400123);
        let text = std::str::from_utf8(payload(&f)).unwrap();
        assert!(text.contains(content), "{text}");
        let v = json_of(&f);
        assert_eq!(v["type"], "once");
        assert_eq!(v["from"], "17");
        assert_eq!(v["to"], "42");
        assert_eq!(v["mid"], "0a0b0c0d-2a-ff");
        assert_eq!(v["ts"], 1764230400123u64);
        let g = json_of(&message(MessageKind::Group, "1", "room", "null", &MID, 5));
        assert_eq!(g["type"], "group");
        assert_eq!(g["content"], Value::Null);
    }

    #[test]
    fn large_frames_use_extended_lengths() {
        for n in [100, 200, 70_000] {
            let content = format!("\"{}\"", "x".repeat(n));
            let v = json_of(&message(MessageKind::Once, "1", "2", &content, &MID, 1));
            assert_eq!(v["content"].as_str().unwrap().len(), n);
        }
    }

    #[test]
    fn replies() {
        assert_eq!(
            json_of(&ack(Some("\"c1\""), &MID, AckStatus::Sent)),
            json!({"type":"ack","id":"c1","mid":"0a0b0c0d-2a-ff","status":"sent"})
        );
        assert_eq!(
            json_of(&ack(None, &MID, AckStatus::Offline)),
            json!({"type":"ack","mid":"0a0b0c0d-2a-ff","status":"offline"})
        );
        assert_eq!(
            json_of(&membership_reply(true, "g", Some("\"c3\""))),
            json!({"type":"joined","group":"g","id":"c3"})
        );
        assert_eq!(json_of(&membership_reply(false, "g", None)), json!({"type":"left","group":"g"}));
        assert_eq!(json_of(&online(1234, Some("\"c5\""))), json!({"type":"online","count":1234,"id":"c5"}));
        assert_eq!(
            json_of(&members("room1", &["17", "42"], Some("\"c6\""))),
            json!({"type":"members","group":"room1","users":["17","42"],"id":"c6"})
        );
        assert_eq!(json_of(&members::<&str>("g", &[], None)), json!({"type":"members","group":"g","users":[]}));
        assert_eq!(json_of(&pong(Some("\"c7\""))), json!({"type":"pong","id":"c7"}));
        assert_eq!(
            json_of(&refreshed(1764230400, Some("\"r1\""))),
            json!({"type":"refreshed","exp":1764230400,"id":"r1"})
        );
        assert_eq!(
            json_of(&presence("room1", "17", true)),
            json!({"type":"presence","group":"room1","user":"17","event":"join"})
        );
        assert_eq!(json_of(&presence("room1", "17", false))["event"], "leave");
    }

    #[test]
    fn error_messages_are_escaped() {
        let v = json_of(&error(Some("\"a\\\"b\""), ErrorCode::BadRequest, "bad \"x\"\n\u{1}"));
        assert_eq!(v, json!({"type":"error","id":"a\"b","code":"bad_request","message":"bad \"x\"\n\u{1}"}));
        for code in ErrorCode::ALL {
            assert_eq!(json_of(&error(None, code, "m"))["code"], code.as_str());
        }
    }
}
