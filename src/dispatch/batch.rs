//! The inter-node batch: many already-framed messages for one node in one AMQP message.
//!
//! RabbitMQ's cost is per message, not per byte, so the dispatcher packs everything it has
//! for a node into one batch (bounded by bytes and count). Layout, all integers big-endian:
//!
//! ```text
//! batch  = version:u8 (=1) entry*
//! entry  = kind:u8 (1 user, 2 group) target_len:u8 target:bytes frame_len:u32 frame:bytes
//! ```
//!
//! `frame` is the complete WebSocket frame, so the receiving node slices it out of the
//! delivery (no copy) and pushes the same `Bytes` to every local recipient.

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::Target;
use crate::protocol::is_valid_name;

const VERSION: u8 = 1;
const KIND_USER: u8 = 1;
const KIND_GROUP: u8 = 2;

/// Builds one batch.
#[derive(Debug)]
pub struct BatchBuf {
    buf: BytesMut,
    entries: usize,
}

impl Default for BatchBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchBuf {
    pub fn new() -> Self {
        let mut buf = BytesMut::with_capacity(1024);
        buf.put_u8(VERSION);
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

/// Iterates a batch's entries; frames are zero-copy slices of `batch`.
pub fn decode(batch: &Bytes) -> impl Iterator<Item = Result<(Target<&str>, Bytes), BatchError>> + '_ {
    let mut pos = 1usize;
    let mut failed = false;
    let version_ok = batch.first() == Some(&VERSION);
    std::iter::from_fn(move || {
        if failed || pos >= batch.len() {
            return None;
        }
        if !version_ok {
            failed = true;
            return Some(Err(BatchError { at: 0, what: "unknown version" }));
        }
        let res = entry(batch, &mut pos);
        failed = res.is_err();
        Some(res)
    })
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

    #[test]
    fn round_trip() {
        let mut b = BatchBuf::new();
        b.push(Target::User("42"), b"\x81\x02hi");
        b.push(Target::Group("room.1"), &vec![7u8; 70_000]);
        b.push(Target::User(&"u".repeat(128)), b"");
        assert_eq!(b.entries(), 3);
        let expected_len = 1
            + BatchBuf::entry_len(Target::User("42"), b"\x81\x02hi")
            + BatchBuf::entry_len(Target::Group("room.1"), &[0; 70_000])
            + BatchBuf::entry_len(Target::User(&"u".repeat(128)), b"");
        assert_eq!(b.len(), expected_len);
        let bytes = b.finish();
        let got: Vec<_> = decode(&bytes).collect::<Result<_, _>>().unwrap();
        assert_eq!(got[0], (Target::User("42"), Bytes::from_static(b"\x81\x02hi")));
        assert_eq!(got[1].0, Target::Group("room.1"));
        assert_eq!(got[1].1.len(), 70_000);
        assert_eq!(got[2].1.len(), 0);
    }

    #[test]
    fn malformed_batches_are_errors_not_panics() {
        let mut b = BatchBuf::new();
        b.push(Target::User("1"), b"abcdef");
        let good = b.finish();
        for cut in 0..good.len() {
            let partial = good.slice(..cut);
            let items: Vec<_> = decode(&partial).collect();
            if cut > 1 {
                assert!(items.last().unwrap().is_err(), "cut at {cut}");
            }
        }
        let mut bad_kind = good.to_vec();
        bad_kind[1] = 9;
        assert!(decode(&Bytes::from(bad_kind)).next().unwrap().is_err());
        let mut bad_name = good.to_vec();
        bad_name[3] = b' ';
        assert!(decode(&Bytes::from(bad_name)).next().unwrap().is_err());
        let mut bad_version = good.to_vec();
        bad_version[0] = 2;
        assert_eq!(decode(&Bytes::from(bad_version)).count(), 1);
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..2000 {
            let junk: Vec<u8> = (0..rng.usize(0..64)).map(|_| rng.u8(..)).collect();
            let _ = decode(&Bytes::from(junk)).count();
        }
    }
}
