//! The inter-node batch: many already-framed messages for one node in one AMQP message.
//!
//! RabbitMQ's cost is per message, not per byte, so the dispatcher packs everything it has
//! for a node into one batch (bounded by bytes and count). Layout, all integers big-endian:
//!
//! ```text
//! batch  = version:u8 (=2) origin entry*
//! origin = node_len:u8 node:bytes incarnation:u32 seq:u64
//! entry  = kind:u8 (1 user, 2 group) target_len:u8 target:bytes frame_len:u32 frame:bytes
//! ```
//!
//! `frame` is the complete WebSocket frame, so the receiving node slices it out of the
//! delivery (no copy) and pushes the same `Bytes` to every local recipient. `origin` names
//! the sending process and numbers its batches, so a batch the broker delivers twice (after a
//! broker restart or a consumer reconnect) is recognised and dropped (see `dedup`). Version 1
//! batches (no origin) from older nodes are still read.

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::Target;
use crate::protocol::is_valid_name;

const VERSION: u8 = 2;
const VERSION_1: u8 = 1;
const KIND_USER: u8 = 1;
const KIND_GROUP: u8 = 2;

/// Builds one batch.
#[derive(Debug)]
pub struct BatchBuf {
    buf: BytesMut,
    entries: usize,
}

/// Who sent a batch: a node's process (its incarnation) and the batch's number in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin<'a> {
    pub node: &'a str,
    pub incarnation: u32,
    pub seq: u64,
}

impl BatchBuf {
    pub fn new(origin: Origin<'_>) -> Self {
        let mut buf = BytesMut::with_capacity(1024);
        buf.put_u8(VERSION);
        debug_assert!(origin.node.len() <= u8::MAX as usize);
        buf.put_u8(origin.node.len() as u8);
        buf.put_slice(origin.node.as_bytes());
        buf.put_u32(origin.incarnation);
        buf.put_u64(origin.seq);
        BatchBuf { buf, entries: 0 }
    }

    /// Bytes an entry for `addr` and `frame` adds.
    pub fn entry_len(to: Target<&str>, frame: &[u8]) -> usize {
        2 + to.name().len() + 4 + frame.len()
    }

    pub fn push(&mut self, to: Target<&str>, frame: &[u8]) {
        let (kind, target) = match to {
            Target::User(t) => (KIND_USER, t),
            Target::Group(t) => (KIND_GROUP, t),
        };
        debug_assert!(target.len() <= u8::MAX as usize);
        self.buf.reserve(Self::entry_len(to, frame));
        self.buf.put_u8(kind);
        self.buf.put_u8(target.len() as u8);
        self.buf.put_slice(target.as_bytes());
        self.buf.put_u32(frame.len() as u32);
        self.buf.put_slice(frame);
        self.entries += 1;
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn entries(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    pub fn finish(self) -> Bytes {
        self.buf.freeze()
    }
}

/// A batch that does not follow the layout (from a different version, or corrupted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed batch at byte {at}: {what}")]
pub struct BatchError {
    pub at: usize,
    pub what: &'static str,
}

/// A batch's origin (`None` for a version 1 batch) and its entries; frames are zero-copy
/// slices of `batch`.
pub fn decode(batch: &Bytes) -> Result<(Option<Origin<'_>>, Entries<'_>), BatchError> {
    let b = &batch[..];
    let err = |at, what| BatchError { at, what };
    let (origin, pos) = match b.first() {
        Some(&VERSION_1) => (None, 1),
        Some(&VERSION) => {
            let len = *b.get(1).ok_or(err(1, "truncated origin"))? as usize;
            let node = b.get(2..2 + len).ok_or(err(2, "truncated origin"))?;
            let node = std::str::from_utf8(node).ok().filter(|n| is_valid_name(n)).ok_or(err(2, "invalid origin"))?;
            let at = 2 + len;
            let fixed: [u8; 12] =
                b.get(at..at + 12).ok_or(err(at, "truncated origin"))?.try_into().map_err(|_| err(at, "origin"))?;
            let incarnation = u32::from_be_bytes([fixed[0], fixed[1], fixed[2], fixed[3]]);
            let seq =
                u64::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7], fixed[8], fixed[9], fixed[10], fixed[11]]);
            (Some(Origin { node, incarnation, seq }), at + 12)
        }
        _ => return Err(err(0, "unknown version")),
    };
    Ok((origin, Entries { batch, pos, failed: false }))
}

/// The entries of a batch, in order; stops after the first malformed one.
#[derive(Debug)]
pub struct Entries<'a> {
    batch: &'a Bytes,
    pos: usize,
    failed: bool,
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<(Target<&'a str>, Bytes), BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.batch.len() {
            return None;
        }
        let res = entry(self.batch, &mut self.pos);
        self.failed = res.is_err();
        Some(res)
    }
}

fn entry<'a>(batch: &'a Bytes, pos: &mut usize) -> Result<(Target<&'a str>, Bytes), BatchError> {
    let b = &batch[..];
    let at = *pos;
    let err = |what| BatchError { at, what };
    let (&kind, &tlen) = (b.get(at).ok_or(err("truncated"))?, b.get(at + 1).ok_or(err("truncated"))?);
    let t_start = at + 2;
    let t_end = t_start + tlen as usize;
    let target = b.get(t_start..t_end).ok_or(err("truncated target"))?;
    let target = std::str::from_utf8(target).ok().filter(|t| is_valid_name(t)).ok_or(err("invalid target"))?;
    let len_bytes: [u8; 4] =
        b.get(t_end..t_end + 4).ok_or(err("truncated length"))?.try_into().map_err(|_| err("length"))?;
    let f_start = t_end + 4;
    let f_end = f_start.checked_add(u32::from_be_bytes(len_bytes) as usize).ok_or(err("length overflow"))?;
    if f_end > b.len() {
        return Err(err("truncated frame"));
    }
    let addr = match kind {
        KIND_USER => Target::User(target),
        KIND_GROUP => Target::Group(target),
        _ => return Err(err("unknown kind")),
    };
    *pos = f_end;
    Ok((addr, batch.slice(f_start..f_end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: Origin<'static> = Origin { node: "n1", incarnation: 0xdead_beef, seq: 42 };

    type Decoded<'a> = (Option<Origin<'a>>, Vec<(Target<&'a str>, Bytes)>);

    /// Every entry of a batch, or the first error.
    fn all(batch: &Bytes) -> Result<Decoded<'_>, BatchError> {
        let (origin, entries) = decode(batch)?;
        Ok((origin, entries.collect::<Result<_, _>>()?))
    }

    #[test]
    fn round_trip() {
        let mut b = BatchBuf::new(ORIGIN);
        b.push(Target::User("42"), b"\x81\x02hi");
        b.push(Target::Group("room.1"), &vec![7u8; 70_000]);
        b.push(Target::User(&"u".repeat(128)), b"");
        assert_eq!(b.entries(), 3);
        let expected_len = 1
            + (1 + 2 + 4 + 8)
            + BatchBuf::entry_len(Target::User("42"), b"\x81\x02hi")
            + BatchBuf::entry_len(Target::Group("room.1"), &[0; 70_000])
            + BatchBuf::entry_len(Target::User(&"u".repeat(128)), b"");
        assert_eq!(b.len(), expected_len);
        let bytes = b.finish();
        let (origin, got) = all(&bytes).unwrap();
        assert_eq!(origin, Some(ORIGIN));
        assert_eq!(got[0], (Target::User("42"), Bytes::from_static(b"\x81\x02hi")));
        assert_eq!(got[1].0, Target::Group("room.1"));
        assert_eq!(got[1].1.len(), 70_000);
        assert_eq!(got[2].1.len(), 0);
    }

    #[test]
    fn version_1_batches_are_still_read() {
        let mut v1 = vec![1u8, 1, 2];
        v1.extend_from_slice(b"42");
        v1.extend_from_slice(&3u32.to_be_bytes());
        v1.extend_from_slice(b"abc");
        let v1 = Bytes::from(v1);
        let (origin, got) = all(&v1).unwrap();
        assert_eq!(origin, None);
        assert_eq!(got, [(Target::User("42"), Bytes::from_static(b"abc"))]);
    }

    #[test]
    fn malformed_batches_are_errors_not_panics() {
        let mut b = BatchBuf::new(ORIGIN);
        b.push(Target::User("1"), b"abcdef");
        let good = b.finish();
        let header = 1 + 1 + 2 + 12;
        for cut in 0..good.len() {
            let partial = good.slice(..cut);
            let res = all(&partial);
            if cut > header {
                assert!(res.is_err(), "cut at {cut}");
            } else if cut < header {
                assert!(res.is_err(), "a truncated origin at {cut}");
            }
        }
        let mut bad_kind = good.to_vec();
        bad_kind[header] = 9;
        assert!(all(&Bytes::from(bad_kind)).is_err());
        let mut bad_name = good.to_vec();
        bad_name[header + 2] = b' ';
        assert!(all(&Bytes::from(bad_name)).is_err());
        let mut bad_origin = good.to_vec();
        bad_origin[2] = b'/';
        assert!(decode(&Bytes::from(bad_origin)).is_err());
        let mut bad_version = good.to_vec();
        bad_version[0] = 3;
        assert!(decode(&Bytes::from(bad_version)).is_err());
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..2000 {
            let junk: Vec<u8> = (0..rng.usize(0..64)).map(|_| rng.u8(..)).collect();
            let _ = all(&Bytes::from(junk));
        }
    }
}
