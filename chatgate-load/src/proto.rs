//! The wire format as this tool needs it: outgoing frames built with one copy into a
//! shared arena, incoming frames recognised by byte search instead of a JSON parse.
//!
//! Every message this tool sends carries `content` of exactly `--size` bytes (or the
//! minimum that fits the stamp): `{"t":<scheduled send, epoch µs>,"s":<sender>,"n":<seq>,"p":"xxx…"}`.
//! The gateway forwards `content` byte-for-byte, so on delivery the stamp is found by
//! searching for `{"t":`.

use bytes::{BufMut, Bytes, BytesMut};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Fields of the content stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Scheduled send time, microseconds since the Unix epoch.
    pub t: u64,
    /// Global index of the sending connection.
    pub s: u32,
    /// Per-sender message sequence.
    pub n: u32,
}

/// What an incoming text frame is; borrowed slices point into the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// A delivered message (`group` or `once`) and its stamp, if it carries one of ours.
    Delivery { group: bool, stamp: Option<Stamp> },
    /// `ack` for a message: `sent` or (`sent == false`) `offline`.
    Ack { id: Option<&'a [u8]>, sent: bool },
    /// `error` with its code.
    Error { id: Option<&'a [u8]>, code: &'a [u8] },
    /// `joined` reply.
    Joined { id: Option<&'a [u8]> },
    /// `online`, `members`, `pong` or `left` reply.
    Reply,
    /// Presence event (ignored).
    Presence,
    /// `welcome` (only expected as the first frame).
    Welcome,
    /// Anything else.
    Other,
}

/// Position of the first `b` in `hay`, eight bytes at a time (SWAR).
#[inline]
pub fn find_byte(hay: &[u8], b: u8) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let pat = LO * u64::from(b);
    let mut chunks = hay.chunks_exact(8);
    let mut at = 0;
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let x = u64::from_le_bytes(w) ^ pat;
        // Lowest set bit marks the first zero byte of x (borrows only affect higher bytes).
        let found = x.wrapping_sub(LO) & !x & HI;
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    chunks.remainder().iter().position(|&c| c == b).map(|p| at + p)
}

/// Finds `needle` in `hay` (scan for the first byte, then compare; frames are small). The
/// needle's length is a constant so the comparison compiles to a few loads.
pub fn find<const N: usize>(hay: &[u8], needle: &[u8; N]) -> Option<usize> {
    let first = *needle.first()?;
    let last_start = hay.len().checked_sub(N)?;
    let mut i = 0;
    while i <= last_start {
        i += find_byte(&hay[i..=last_start], first)?;
        if hay[i..i + N] == needle[..] {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// The value of the first string field `"key": "value"` (no unescaping: the values this
/// tool looks at are ids, codes and type names).
pub fn string_field<'a, const N: usize>(b: &'a [u8], key: &[u8; N]) -> Option<&'a [u8]> {
    let mut from = 0;
    loop {
        let at = from + find(&b[from..], key)?;
        from = at + N;
        // The key must be a whole JSON string: `"key"`.
        if at == 0 || b[at - 1] != b'"' || b.get(from) != Some(&b'"') {
            continue;
        }
        let mut i = from + 1;
        while b.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        if b.get(i) != Some(&b':') {
            continue;
        }
        i += 1;
        while b.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let start = i + 1;
        let len = b[start..].iter().position(|&c| c == b'"')?;
        return Some(&b[start..start + len]);
    }
}

/// Parses leading ASCII digits: the value and the number of digits.
fn digits(b: &[u8]) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    let mut n = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            break;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
        n += 1;
    }
    (n > 0).then_some((v, n))
}

/// Extracts the stamp from a delivered frame.
pub fn stamp(b: &[u8]) -> Option<Stamp> {
    let at = find(b, b"{\"t\":")? + 5;
    let (t, n1) = digits(&b[at..])?;
    let rest = b[at + n1..].strip_prefix(b",\"s\":")?;
    let (s, n2) = digits(rest)?;
    let rest = rest[n2..].strip_prefix(b",\"n\":")?;
    let (n, _) = digits(rest)?;
    Some(Stamp { t, s: u32::try_from(s).ok()?, n: u32::try_from(n).ok()? })
}

/// Just the timestamp (for content stamped by another tool with only `"t"`).
pub fn stamp_time(b: &[u8]) -> Option<u64> {
    let at = find(b, b"{\"t\":")? + 5;
    digits(&b[at..]).map(|(t, _)| t)
}

/// Recognises a frame from its `type` and the few fields that matter.
pub fn classify(b: &[u8]) -> Incoming<'_> {
    let Some(ty) = string_field(b, b"type") else { return Incoming::Other };
    match ty {
        b"group" | b"once" => Incoming::Delivery { group: ty == b"group", stamp: stamp(b) },
        b"ack" => Incoming::Ack { id: string_field(b, b"id"), sent: string_field(b, b"status") == Some(b"sent") },
        b"error" => Incoming::Error { id: string_field(b, b"id"), code: string_field(b, b"code").unwrap_or(b"") },
        b"joined" => Incoming::Joined { id: string_field(b, b"id") },
        b"online" | b"members" | b"pong" | b"left" => Incoming::Reply,
        b"presence" => Incoming::Presence,
        b"welcome" => Incoming::Welcome,
        _ => Incoming::Other,
    }
}

/// Parses a decimal index after a one-letter id prefix (`g12` → 12).
pub fn id_index(id: &[u8]) -> Option<usize> {
    let (v, n) = digits(id.get(1..)?)?;
    (n + 1 == id.len()).then(|| usize::try_from(v).ok()).flatten()
}

/// Builds outgoing frames in one arena: a fresh allocation only every ~64 KiB of frames
/// (once the previous frames have been written and dropped the space is reused).
pub struct Encoder {
    arena: BytesMut,
    /// `size` padding bytes, sliced as needed.
    pad: Box<[u8]>,
    /// Wanted content size.
    size: usize,
}

/// Bytes of the stamp without padding: `{"t":` `,"s":` `,"n":` `,"p":"` `"}`.
const STAMP_FIXED: usize = 5 + 5 + 5 + 6 + 2;
const ARENA: usize = 64 * 1024;

impl Encoder {
    /// An encoder for `size`-byte contents.
    pub fn new(size: usize) -> Encoder {
        Encoder { arena: BytesMut::with_capacity(ARENA), pad: vec![b'x'; size].into_boxed_slice(), size }
    }

    /// The smallest content this tool can send (a stamp with 16-digit time, no padding).
    pub fn min_content() -> usize {
        STAMP_FIXED + 16 + 1 + 1
    }

    fn reserve(&mut self, n: usize) {
        if self.arena.capacity() < n {
            self.arena.reserve(n.max(ARENA));
        }
    }

    fn content(&mut self, st: Stamp) {
        let mut t = itoa::Buffer::new();
        let mut s = itoa::Buffer::new();
        let mut n = itoa::Buffer::new();
        let (t, s, n) = (t.format(st.t).as_bytes(), s.format(st.s).as_bytes(), n.format(st.n).as_bytes());
        let pad = self.size.saturating_sub(STAMP_FIXED + t.len() + s.len() + n.len());
        let a = &mut self.arena;
        a.put_slice(b"{\"t\":");
        a.put_slice(t);
        a.put_slice(b",\"s\":");
        a.put_slice(s);
        a.put_slice(b",\"n\":");
        a.put_slice(n);
        a.put_slice(b",\"p\":\"");
        a.put_slice(&self.pad[..pad]);
        a.put_slice(b"\"}");
    }

    fn take(&mut self) -> Message {
        let bytes: Bytes = self.arena.split().freeze();
        // Only ASCII and `&str` pieces are ever written, so this cannot fail.
        Message::Text(Utf8Bytes::try_from(bytes).unwrap_or_else(|_| Utf8Bytes::from_static("{}")))
    }

    /// A message frame: the `head` pieces are everything up to and including `"content":`.
    pub fn message(&mut self, head: &[&[u8]], st: Stamp) -> Message {
        self.reserve(head.iter().map(|h| h.len()).sum::<usize>() + self.size + 64);
        for h in head {
            self.arena.put_slice(h);
        }
        self.content(st);
        self.arena.put_u8(b'}');
        self.take()
    }

    /// A frame from string pieces (requests, joins, heads for one-off targets).
    pub fn text(&mut self, parts: &[&str]) -> Message {
        self.reserve(parts.iter().map(|p| p.len()).sum());
        for p in parts {
            self.arena.put_slice(p.as_bytes());
        }
        self.take()
    }
}

/// Head of a group message to group `name` (index `idx`, echoed in the ack id).
pub fn group_head(name: &str, idx: usize) -> Box<[u8]> {
    format!("{{\"type\":\"group\",\"to\":\"{name}\",\"id\":\"g{idx}\",\"content\":").into_bytes().into_boxed_slice()
}

/// A direct message's head is `DIRECT_TO`, the user id, `DIRECT_ID`, the recipient's local
/// connection index (echoed in the ack id `d<index>`), `DIRECT_REST`.
pub const DIRECT_TO: &[u8] = b"{\"type\":\"once\",\"to\":\"";
/// See [`DIRECT_TO`].
pub const DIRECT_ID: &[u8] = b"\",\"id\":\"d";
/// See [`DIRECT_TO`].
pub const DIRECT_REST: &[u8] = b"\",\"content\":";

/// Head of a direct message to `user`, the local connection `target`.
pub fn direct_head(user: &str, target: usize) -> Box<[u8]> {
    [DIRECT_TO, user.as_bytes(), DIRECT_ID, itoa::Buffer::new().format(target).as_bytes(), DIRECT_REST]
        .concat()
        .into_boxed_slice()
}

/// A `join` request for group `name` (index `idx`, echoed as `j<idx>`).
pub fn join(name: &str, idx: usize) -> Message {
    Message::text(format!("{{\"type\":\"join\",\"group\":\"{name}\",\"id\":\"j{idx}\"}}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &Message) -> &str {
        match m {
            Message::Text(t) => t.as_str(),
            _ => panic!("not text"),
        }
    }

    #[test]
    fn find_byte_matches_naive() {
        let hay: Vec<u8> = (0..200u32).map(|i| (i * 7 % 13) as u8 + b'a').collect();
        for start in 0..40 {
            for len in 0..60 {
                let h = &hay[start..start + len];
                for b in b'a'..=b'o' {
                    assert_eq!(find_byte(h, b), h.iter().position(|&c| c == b), "{start} {len} {b}");
                }
            }
        }
        assert_eq!(find_byte(&[0x80, 0x7b, 0x7b], b'{'), Some(1));
        assert_eq!(find_byte(&[0xff; 17], 0xff), Some(0));
        assert_eq!(find_byte(&[0, 0, 0, 0, 0, 0, 0, 0, 1], 1), Some(8));
    }

    #[test]
    fn find_works() {
        assert_eq!(find(b"hello", b"llo"), Some(2));
        assert_eq!(find(b"hello", b"hello"), Some(0));
        assert_eq!(find(b"hello", b"helloo"), None);
        assert_eq!(find(b"aab", b"ab"), Some(1));
        assert_eq!(find(b"", b"a"), None);
        assert_eq!(find(b"abc", b""), None);
    }

    #[test]
    fn stamp_from_gateway_frame() {
        let f = br#"{"type":"group","from":"17","to":"lt1-g0","content":{"t":1764230400123456,"s":3,"n":99,"p":"xx"},"mid":"0000abcd-1-2","ts":1764230400123}"#;
        assert_eq!(
            classify(f),
            Incoming::Delivery { group: true, stamp: Some(Stamp { t: 1764230400123456, s: 3, n: 99 }) }
        );
        let o = br#"{"type":"once","from":"1","to":"2","content":{"t":5},"mid":"m","ts":1}"#;
        assert_eq!(classify(o), Incoming::Delivery { group: false, stamp: None });
        assert_eq!(stamp_time(o), Some(5));
        // Content that is not ours.
        let x = br#"{"type":"once","from":"1","to":"2","content":"hi","mid":"m","ts":1}"#;
        assert_eq!(classify(x), Incoming::Delivery { group: false, stamp: None });
        assert_eq!(stamp_time(x), None);
        // Overflowing digits are rejected, not wrapped.
        assert_eq!(stamp_time(br#"{"t":99999999999999999999999}"#), None);
    }

    #[test]
    fn replies() {
        assert_eq!(
            classify(br#"{"type":"ack","id":"g12","mid":"0000abcd-1-2","status":"sent"}"#),
            Incoming::Ack { id: Some(b"g12"), sent: true }
        );
        assert_eq!(
            classify(br#"{"type":"ack","mid":"x","status":"offline"}"#),
            Incoming::Ack { id: None, sent: false }
        );
        // Other field orders and whitespace (another deployment's encoder).
        assert_eq!(
            classify(br#"{ "status" : "sent", "mid":"x", "id" : "d", "type" : "ack" }"#),
            Incoming::Ack { id: Some(b"d"), sent: true }
        );
        assert_eq!(
            classify(br#"{"type":"error","id":"d","code":"rate_limited","message":"slow down \"id\""}"#),
            Incoming::Error { id: Some(b"d"), code: b"rate_limited" }
        );
        assert_eq!(
            classify(br#"{"type":"error","code":"bad_request","message":"x"}"#),
            Incoming::Error { id: None, code: b"bad_request" }
        );
        assert_eq!(classify(br#"{"type":"joined","group":"g","id":"j3"}"#), Incoming::Joined { id: Some(b"j3") });
        assert_eq!(classify(br#"{"type":"pong","id":"p"}"#), Incoming::Reply);
        assert_eq!(classify(br#"{"type":"online","count":3}"#), Incoming::Reply);
        assert_eq!(classify(br#"{"type":"presence","group":"g","user":"1","event":"join"}"#), Incoming::Presence);
        assert_eq!(classify(br#"{"type":"welcome","user":"1"}"#), Incoming::Welcome);
        assert_eq!(classify(br#"{"type":"new"}"#), Incoming::Other);
        assert_eq!(classify(b"garbage"), Incoming::Other);
        // `mid` must not be taken for `id`.
        assert_eq!(string_field(br#"{"mid":"a","id":"b"}"#, b"id"), Some(&b"b"[..]));
        assert_eq!(string_field(br#"{"mid":"a"}"#, b"id"), None);
    }

    #[test]
    fn id_indices() {
        assert_eq!(id_index(b"g12"), Some(12));
        assert_eq!(id_index(b"j0"), Some(0));
        assert_eq!(id_index(b"g"), None);
        assert_eq!(id_index(b"g1x"), None);
        assert_eq!(id_index(b""), None);
    }

    #[test]
    fn encoded_message_has_exact_size_and_round_trips() {
        let mut e = Encoder::new(100);
        let head = group_head("lt1-g0", 0);
        let st = Stamp { t: 1764230400123456, s: 12, n: 345 };
        let m = e.message(&[&head], st);
        let s = text(&m);
        let v: serde_json::Value = serde_json::from_str(s).unwrap();
        assert_eq!(v["type"], "group");
        assert_eq!(v["to"], "lt1-g0");
        assert_eq!(v["id"], "g0");
        let content = serde_json::to_string(&v["content"]).unwrap();
        assert_eq!(content.len(), 100);
        assert_eq!(stamp(s.as_bytes()), Some(st));
        // Too small a size: the stamp alone.
        let mut small = Encoder::new(10);
        let m = small.message(&[DIRECT_TO, b"42", DIRECT_ID, b"7", DIRECT_REST], st);
        assert_eq!(*direct_head("42", 7), [DIRECT_TO, b"42", DIRECT_ID, b"7", DIRECT_REST].concat()[..]);
        let v: serde_json::Value = serde_json::from_str(text(&m)).unwrap();
        assert_eq!(v["content"]["p"], "");
        assert_eq!(v["to"], "42");
        assert_eq!(v["id"], "d7");
        // Many frames through one arena stay intact.
        let frames: Vec<Message> = (0..2000).map(|n| e.message(&[&head], Stamp { n, ..st })).collect();
        for (n, f) in frames.iter().enumerate() {
            assert_eq!(stamp(text(f).as_bytes()).map(|s| s.n as usize), Some(n));
        }
        assert_eq!(text(&e.text(&["{\"type\":\"ping\"", "}"])), "{\"type\":\"ping\"}");
        assert!(Encoder::min_content() <= 50);
    }

    #[test]
    fn join_frame() {
        let v: serde_json::Value = serde_json::from_str(text(&join("room", 7))).unwrap();
        assert_eq!(
            (v["type"].as_str(), v["group"].as_str(), v["id"].as_str()),
            (Some("join"), Some("room"), Some("j7"))
        );
    }
}
