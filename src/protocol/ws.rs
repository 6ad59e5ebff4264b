//! The RFC 6455 framing the server writes itself.
//!
//! Server-to-client frames are never masked, so a frame's bytes are the same for every
//! recipient: the gateway frames each message once and writes the shared `Bytes` to every
//! socket with `writev`. Reading (masked client frames, control frames, the close
//! handshake) is left to tungstenite.

use bytes::{BufMut, Bytes, BytesMut};

/// Largest server frame header: 2 bytes plus a 64-bit length.
pub const MAX_HEADER: usize = 10;

pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;

/// Close codes the gateway sends.
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const UNSUPPORTED: u16 = 1003;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// No frame or pong from the client for two heartbeat intervals.
    pub const HEARTBEAT_TIMEOUT: u16 = 4000;
    /// The connection's token expired and was not refreshed.
    pub const TOKEN_EXPIRED: u16 = 4001;
}

/// Writes the header for a final, unmasked frame of `len` payload bytes into the end of
/// `dst` (which must be `MAX_HEADER` long) and returns how many bytes it used.
pub fn write_header(dst: &mut [u8; MAX_HEADER], opcode: u8, len: usize) -> usize {
    let first = 0x80 | opcode;
    if len < 126 {
        dst[8] = first;
        dst[9] = len as u8;
        2
    } else if len <= u16::MAX as usize {
        dst[6] = first;
        dst[7] = 126;
        dst[8..10].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        dst[0] = first;
        dst[1] = 127;
        dst[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// A complete unmasked frame with `payload`.
pub fn frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut hdr = [0u8; MAX_HEADER];
    let n = write_header(&mut hdr, opcode, payload.len());
    let mut out = BytesMut::with_capacity(n + payload.len());
    out.put_slice(&hdr[MAX_HEADER - n..]);
    out.put_slice(payload);
    out.freeze()
}

/// A close frame with `code` and a short UTF-8 `reason` (truncated to fit 125 bytes).
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    frame(OP_CLOSE, &payload)
}

/// The status code of a close frame built by [`close_frame`] (`None` for anything else).
pub fn close_code(frame: &[u8]) -> Option<u16> {
    match frame {
        [first, len, hi, lo, ..] if *first == 0x80 | OP_CLOSE && (2..126).contains(len) => {
            Some(u16::from_be_bytes([*hi, *lo]))
        }
        _ => None,
    }
}

/// The server's heartbeat ping (empty payload).
pub fn ping_frame() -> Bytes {
    Bytes::from_static(&[0x80 | OP_PING, 0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lengths() {
        let mut h = [0u8; MAX_HEADER];
        assert_eq!(write_header(&mut h, OP_TEXT, 0), 2);
        assert_eq!(&h[8..], &[0x81, 0]);
        assert_eq!(write_header(&mut h, OP_TEXT, 125), 2);
        assert_eq!(&h[8..], &[0x81, 125]);
        assert_eq!(write_header(&mut h, OP_TEXT, 126), 4);
        assert_eq!(&h[6..], &[0x81, 126, 0, 126]);
        assert_eq!(write_header(&mut h, OP_TEXT, 65535), 4);
        assert_eq!(&h[6..], &[0x81, 126, 0xff, 0xff]);
        assert_eq!(write_header(&mut h, OP_TEXT, 65536), 10);
        assert_eq!(&h[..], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    }

    #[test]
    fn close_frame_layout() {
        let f = close_frame(1013, "slow consumer");
        assert_eq!(&f[..4], &[0x88, 15, 0x03, 0xf5]);
        assert_eq!(close_code(&f), Some(1013));
        assert_eq!(close_code(&ping_frame()), None);
        assert_eq!(close_code(b""), None);
        assert_eq!(&f[4..], b"slow consumer");
        let long = "é".repeat(100);
        let f = close_frame(1000, &long);
        assert!(f.len() <= 2 + 125);
        assert!(std::str::from_utf8(&f[4..]).is_ok());
    }
}
