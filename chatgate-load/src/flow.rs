//! `--rate max` flow control.
//!
//! An ack only says the gateway has queued a message. A gateway that fans out faster than
//! this process reads would fill its per-connection queues and close the receivers as
//! slow consumers. So with `--rate max`, besides the ack window, every local connection
//! counts the deliveries owed to it by local senders and not yet received; while any
//! connection is more than the limit (`2 × --window`) behind, senders wait.
//!
//! Only senders in this process are accounted: with `--procs`, recipients in other
//! processes are assumed to keep pace with the local ones.

use std::cell::{Cell, RefCell};
use std::task::{Context, Waker};

/// Not a local connection.
const REMOTE: u32 = u32::MAX;

/// The flow-control state of one process (inert unless built with [`FlowControl::new`]).
pub struct FlowControl {
    enabled: bool,
    /// Local index of each global connection index ([`REMOTE`] if in another process).
    local_of: Vec<u32>,
    /// Per local connection: deliveries owed by local senders and not yet received.
    owed: Vec<Cell<u32>>,
    /// Per local connection: counted in `over`.
    over_flag: Vec<Cell<bool>>,
    /// Per local connection: closed, no longer accounted.
    dead: Vec<Cell<bool>>,
    /// Deliveries a connection may be owed before senders wait; they resume when it is
    /// down to half. (The gateway's default queue bound is 1024 frames per connection.)
    limit: u32,
    /// Connections more than `limit` behind.
    over: Cell<usize>,
    /// Local members of each group.
    members: RefCell<Vec<Vec<u32>>>,
    /// Senders waiting for `over` to reach 0.
    waiters: RefCell<Vec<Waker>>,
}

impl FlowControl {
    /// No flow control (open-loop rates).
    pub fn disabled() -> FlowControl {
        FlowControl {
            enabled: false,
            local_of: Vec::new(),
            owed: Vec::new(),
            over_flag: Vec::new(),
            dead: Vec::new(),
            limit: u32::MAX,
            over: Cell::new(0),
            members: RefCell::new(Vec::new()),
            waiters: RefCell::new(Vec::new()),
        }
    }

    /// Flow control for `total` connections and `groups` groups; `local` lists the global
    /// indices of this process's connections in local order; `limit` is how many
    /// deliveries a connection may be owed before senders wait.
    pub fn new(total: usize, groups: usize, local: &[usize], limit: u32) -> FlowControl {
        let mut local_of = vec![REMOTE; total];
        for (l, &g) in local.iter().enumerate() {
            if let Some(slot) = local_of.get_mut(g) {
                *slot = l as u32;
            }
        }
        let n = local.len();
        FlowControl {
            enabled: true,
            local_of,
            owed: (0..n).map(|_| Cell::new(0)).collect(),
            over_flag: (0..n).map(|_| Cell::new(false)).collect(),
            dead: (0..n).map(|_| Cell::new(false)).collect(),
            limit: limit.max(2),
            over: Cell::new(0),
            members: RefCell::new(vec![Vec::new(); groups]),
            waiters: RefCell::new(Vec::new()),
        }
    }

    /// Local connection `local` joined `group`.
    pub fn joined(&self, group: usize, local: usize) {
        if !self.enabled {
            return;
        }
        if let Some(m) = self.members.borrow_mut().get_mut(group) {
            m.push(local as u32);
        }
    }

    fn inc(&self, local: usize) {
        let (Some(o), Some(flag)) = (self.owed.get(local), self.over_flag.get(local)) else { return };
        if self.dead.get(local).is_some_and(Cell::get) {
            return;
        }
        o.set(o.get() + 1);
        if o.get() > self.limit && !flag.get() {
            flag.set(true);
            self.over.set(self.over.get() + 1);
        }
    }

    fn dec(&self, local: usize) {
        let (Some(o), Some(flag)) = (self.owed.get(local), self.over_flag.get(local)) else { return };
        o.set(o.get().saturating_sub(1));
        if flag.get() && o.get() <= self.limit / 2 {
            self.clear(local);
        }
    }

    /// Takes `local` out of the over-limit count (and wakes senders if it was the last).
    fn clear(&self, local: usize) {
        if let Some(flag) = self.over_flag.get(local)
            && flag.get()
        {
            flag.set(false);
            self.over.set(self.over.get().saturating_sub(1));
            if self.over.get() == 0 {
                for w in self.waiters.borrow_mut().drain(..) {
                    w.wake();
                }
            }
        }
    }

    /// Local connection `sender` sent a message to `group`: its other local members are owed it.
    pub fn sent_group(&self, group: usize, sender: usize) {
        self.other_members(group, sender, |r| self.inc(r));
    }

    /// A direct message to local connection `target`.
    pub fn sent_direct(&self, target: usize) {
        if self.enabled {
            self.inc(target);
        }
    }

    /// The group message from `sender` was refused: nobody is owed it.
    pub fn refused_group(&self, group: usize, sender: usize) {
        self.other_members(group, sender, |r| self.dec(r));
    }

    /// Calls `f` with each local member of `group` other than `sender` (when tracking).
    fn other_members(&self, group: usize, sender: usize, f: impl Fn(usize)) {
        if !self.enabled {
            return;
        }
        if let Some(m) = self.members.borrow().get(group) {
            for &r in m {
                if r as usize != sender {
                    f(r as usize);
                }
            }
        }
    }

    /// The direct message to `target` was refused or found it offline.
    pub fn refused_direct(&self, target: usize) {
        if self.enabled {
            self.dec(target);
        }
    }

    /// Local connection `local` received a message from sender `sender` (global index).
    #[inline]
    pub fn delivered(&self, local: usize, sender: usize) {
        if self.enabled && self.local_of.get(sender).is_some_and(|&l| l != REMOTE) {
            self.dec(local);
        }
    }

    /// Local connection `local` closed: it will receive nothing more.
    pub fn closed(&self, local: usize) {
        if !self.enabled {
            return;
        }
        if let Some(d) = self.dead.get(local) {
            d.set(true);
        }
        self.clear(local);
    }

    /// Whether senders may send now; if not, the task is woken when no connection is
    /// more than half the limit behind any more.
    pub fn may_send(&self, cx: &mut Context<'_>) -> bool {
        if self.over.get() == 0 {
            return true;
        }
        self.waiters.borrow_mut().push(cx.waker().clone());
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: u32 = 100;

    fn cx() -> Context<'static> {
        Context::from_waker(Waker::noop())
    }

    #[test]
    fn group_fanout_blocks_on_the_slowest_receiver() {
        // Global connections 10, 11, 12 are local 0, 1, 2; all in group 0; 10 sends.
        let f = FlowControl::new(20, 1, &[10, 11, 12], LIMIT);
        for l in 0..3 {
            f.joined(0, l);
        }
        for _ in 0..=LIMIT {
            f.sent_group(0, 0);
        }
        assert_eq!(f.owed[0].get(), 0, "the sender is not owed its own message");
        assert!(!f.may_send(&mut cx()));
        // Local 1 catches up; local 2 is still behind.
        for _ in 0..=LIMIT {
            f.delivered(1, 10);
        }
        assert!(!f.may_send(&mut cx()));
        // Deliveries from another process's sender do not count.
        f.delivered(2, 5);
        assert_eq!(f.owed[2].get(), LIMIT + 1);
        for _ in 0..LIMIT / 2 {
            f.delivered(2, 10);
        }
        assert!(!f.may_send(&mut cx()), "hysteresis: not yet down to half");
        f.delivered(2, 10);
        assert!(f.may_send(&mut cx()));
        assert!(f.waiters.borrow().is_empty(), "waiters were woken");
    }

    #[test]
    fn refusals_and_closes_release() {
        let f = FlowControl::new(2, 1, &[0, 1], LIMIT);
        f.joined(0, 0);
        f.joined(0, 1);
        for _ in 0..=LIMIT {
            f.sent_direct(1);
        }
        assert!(!f.may_send(&mut cx()));
        for _ in 0..LIMIT {
            f.refused_direct(1);
        }
        assert!(f.may_send(&mut cx()));
        for _ in 0..=LIMIT {
            f.sent_group(0, 0);
        }
        assert!(!f.may_send(&mut cx()));
        f.closed(1);
        assert!(f.may_send(&mut cx()));
        // A closed connection is no longer owed anything.
        for _ in 0..=LIMIT {
            f.sent_group(0, 0);
        }
        assert!(f.may_send(&mut cx()));
        f.refused_group(0, 0);
    }

    #[test]
    fn disabled_never_blocks() {
        let f = FlowControl::disabled();
        f.joined(0, 0);
        for _ in 0..1000 {
            f.sent_direct(0);
            f.sent_group(0, 1);
        }
        f.delivered(0, 0);
        f.closed(0);
        assert!(f.may_send(&mut cx()));
    }
}
