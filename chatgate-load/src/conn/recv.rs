//! The reading side of a connection: deliveries (latency, order), acks and errors (the
//! window and what is owed), join answers, and the server's close frame.

use std::collections::HashMap;

use tokio_tungstenite::tungstenite::Message;

use super::Conn;
use super::state::Input;
use crate::ctx::Phase;
use crate::proto::{self, Incoming};

/// Last sequence seen per sender stream, to spot duplicates and reordering cheaply: one
/// cached entry (most receivers hear few senders) in front of a map.
pub struct SeqTracker {
    key: u64,
    /// Last sequence + 1 for `key` (0: none).
    last: u32,
    others: HashMap<u64, u32, foldhash::fast::RandomState>,
}

impl SeqTracker {
    pub fn new() -> SeqTracker {
        SeqTracker { key: u64::MAX, last: 0, others: HashMap::default() }
    }

    /// `false` if `n` is not above the last sequence seen for `key`.
    fn fresh(&mut self, key: u64, n: u32) -> bool {
        if key != self.key {
            if self.last != 0 {
                self.others.insert(self.key, self.last);
            }
            self.key = key;
            self.last = self.others.remove(&key).unwrap_or(0);
        }
        let v = n.saturating_add(1);
        if v > self.last {
            self.last = v;
            true
        } else {
            false
        }
    }
}

impl Conn {
    pub(super) fn on_frame(&mut self, m: Message) {
        match m {
            Message::Text(t) => self.on_text(t.as_bytes()),
            Message::Close(f) if self.ctx.timeline.phase() != Phase::Closing => {
                let (code, why) = match &f {
                    Some(f) => {
                        (u16::from(f.code).to_string(), format!("closed by server: {} {}", u16::from(f.code), f.reason))
                    }
                    None => ("none".to_string(), "closed by server without a code".to_string()),
                };
                *self.ctx.stats.borrow_mut().close_codes.entry(code).or_default() += 1;
                self.server_close = Some(why);
            }
            _ => {}
        }
    }

    fn on_text(&mut self, b: &[u8]) {
        let ctx = &self.ctx;
        match proto::classify(b) {
            Incoming::Delivery { group, stamp } => {
                let now = ctx.timer.clock().now_epoch_us();
                let fresh = stamp.map(|s| self.seen.fresh(u64::from(s.s) << 1 | u64::from(group), s.n));
                if let Some(s) = stamp {
                    ctx.flow.delivered(self.local, s.s as usize);
                }
                let mut st = ctx.stats.borrow_mut();
                st.c.delivered += 1;
                if group {
                    st.c.delivered_group += 1;
                } else {
                    st.c.delivered_direct += 1;
                }
                match stamp.map(|s| s.t).or_else(|| proto::stamp_time(b)) {
                    Some(t) => st.latency(now.saturating_sub(t)),
                    None => st.c.unstamped += 1,
                }
                if fresh == Some(false) {
                    st.c.out_of_order += 1;
                }
                st.marks.last_delivery = now;
            }
            Incoming::Ack { id, sent } => {
                self.send.answered();
                if !sent {
                    ctx.stats.borrow_mut().c.acked_offline += 1;
                    self.forgive(id);
                    return;
                }
                let mut st = ctx.stats.borrow_mut();
                st.c.acked_sent += 1;
                match id {
                    Some(id) if id.first() == Some(&b'd') => st.c.acked_sent_direct += 1,
                    Some(id) if id.first() == Some(&b'g') => {
                        if let Some(slot) = proto::id_index(id).and_then(|g| st.group_acked.get_mut(g)) {
                            *slot += 1;
                        }
                    }
                    _ => {}
                }
            }
            Incoming::Error { id, code } => {
                let mut st = ctx.stats.borrow_mut();
                st.error_code(code);
                match id.and_then(|i| i.first()) {
                    Some(b'g' | b'd') => {
                        st.c.msg_errors += 1;
                        drop(st);
                        self.send.answered();
                        self.forgive(id);
                    }
                    Some(b'o' | b'm' | b'p') => self.send.answered(),
                    Some(b'j') => {
                        st.c.join_failures += 1;
                        drop(st);
                        self.step(Input::JoinAnswered { ok: false });
                    }
                    _ => {}
                }
            }
            Incoming::Joined { id } => {
                if let Some(g) = id.and_then(proto::id_index) {
                    if let Some(m) = ctx.stats.borrow_mut().group_members.get_mut(g) {
                        *m += 1;
                    }
                    ctx.flow.joined(g, self.local);
                    self.step(Input::JoinAnswered { ok: true });
                }
            }
            Incoming::Reply => {
                ctx.stats.borrow_mut().c.replies += 1;
                self.send.answered();
            }
            Incoming::Presence | Incoming::Welcome | Incoming::Other => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_tracker() {
        let mut t = SeqTracker::new();
        assert!(t.fresh(1, 0));
        assert!(t.fresh(1, 1));
        assert!(!t.fresh(1, 1), "duplicate");
        assert!(t.fresh(2, 5));
        assert!(t.fresh(1, 2), "other sender's state kept");
        assert!(!t.fresh(2, 4), "reordered");
        assert!(t.fresh(2, 6));
        assert!(t.fresh(3, u32::MAX));
        assert!(!t.fresh(3, u32::MAX));
    }
}
