//! The sending side of a connection: its schedule (open loop: message n is due at
//! `t0 + n × interval`; `--rate max`: whenever the ack window has room), the frames of
//! each scenario, and the flow-control accounting of what was sent.

use std::task::Context;

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

use super::Conn;
use super::state::{Input, State};
use crate::args::{Mix, Rate};
use crate::ctx::Ctx;
use crate::proto::{self, Stamp};
use crate::scenario::Role;

/// A sender's schedule and window.
pub struct Schedule {
    pub rate_max: bool,
    /// `--window`: messages un-acked at most with `--rate max`.
    window: u32,
    /// Messages and requests sent and not yet answered.
    pub inflight: u32,
    /// Sequence of the next message (the `n` of its stamp).
    seq: u32,
    /// Clock ns of message 0 (the start plus a random phase).
    t0: u64,
    /// Nanoseconds between two messages (0 with `--rate max`).
    interval: f64,
    /// Messages sent on the schedule so far.
    scheduled: u64,
    /// Clock ns the next message is due.
    next_due: u64,
    /// The frame up to `"content":` (fanout and direct; `mixed` builds each one).
    head: Option<Box<[u8]>>,
    rng: fastrand::Rng,
}

impl Schedule {
    pub fn new(ctx: &Ctx) -> Schedule {
        Schedule {
            rate_max: matches!(ctx.args.rate, Rate::Max),
            window: ctx.args.window,
            inflight: 0,
            seq: 0,
            t0: 0,
            interval: ctx.plan.interval_ns.unwrap_or(0.0),
            scheduled: 0,
            next_due: u64::MAX,
            head: None,
            rng: fastrand::Rng::new(),
        }
    }

    /// A message or request was answered.
    pub fn answered(&mut self) {
        self.inflight = self.inflight.saturating_sub(1);
    }
}

/// What a sent frame was, for counting.
enum Sent {
    /// Group message to this group index.
    Group(usize),
    /// Direct message to this local connection.
    Direct(usize),
    Request,
}

impl Conn {
    /// The run started and this connection may send: what, and from when.
    pub(super) fn start_sending(&mut self) {
        let ctx = self.ctx.clone();
        self.send.head = match self.role {
            Role::Receiver => None,
            Role::Group { group } => Some(ctx.frames.group_heads[group].clone()),
            // The peer may never have connected: then this pair does not send.
            Role::Direct { peer } => ctx.users.get(peer).map(|user| proto::direct_head(&user, peer)),
            Role::Mixed => None,
        };
        if self.send.head.is_none() && self.role != Role::Mixed {
            self.step(Input::NothingToSend);
            return;
        }
        let start = ctx.timeline.start_ns();
        let s = &mut self.send;
        s.t0 = if s.rate_max { start } else { start + (s.rng.f64() * s.interval) as u64 };
        s.next_due = s.t0;
    }

    /// Whether messages can be sent now (registers the timer otherwise).
    pub(super) fn poll_due(&mut self, cx: &mut Context<'_>) -> bool {
        if !matches!(self.state, State::Sending) || self.flushing {
            return false;
        }
        if self.send.rate_max {
            if self.send.inflight >= self.send.window {
                return false;
            }
            if !self.ctx.flow.may_send(cx) {
                return false;
            }
        }
        self.ctx.timer.poll_until(cx, self.send.next_due, &mut self.timer_key).is_ready()
    }

    /// Sends what is due: the schedule's backlog (up to a burst), or fills the window.
    pub(super) fn send_due(&mut self) {
        let ctx = self.ctx.clone();
        let clock = *ctx.timer.clock();
        let now = clock.now_ns();
        let end = ctx.timeline.end_ns();
        if self.send.rate_max {
            if now >= end {
                self.step(Input::NothingToSend);
                return;
            }
            let room = (self.send.window - self.send.inflight.min(self.send.window)) as usize;
            let t = clock.epoch_us(now);
            for _ in 0..room.min(ctx.frames.burst) {
                self.send_one(t);
            }
        } else {
            for _ in 0..ctx.frames.burst {
                let due = self.send.next_due;
                if due > now || due >= end {
                    break;
                }
                self.send_one(clock.epoch_us(due));
                crate::stats::record(&mut ctx.stats.borrow_mut().send_lag, (now - due) / 1000);
                let s = &mut self.send;
                s.scheduled += 1;
                s.next_due = s.t0 + (s.scheduled as f64 * s.interval) as u64;
            }
            if self.send.next_due >= end {
                self.step(Input::NothingToSend);
            }
        }
        self.flushing = true;
    }

    /// Builds and queues one frame stamped with scheduled time `t` (epoch µs).
    fn send_one(&mut self, t: u64) {
        let ctx = self.ctx.clone();
        let stamp = Stamp { t, s: self.index, n: self.send.seq };
        let (msg, kind) = match (&self.role, &self.send.head) {
            (Role::Group { group }, Some(h)) => (ctx.frames.enc.borrow_mut().message(&[h], stamp), Sent::Group(*group)),
            (Role::Direct { peer }, Some(h)) => (ctx.frames.enc.borrow_mut().message(&[h], stamp), Sent::Direct(*peer)),
            (Role::Mixed, _) => self.mixed_frame(&ctx, stamp),
            _ => return,
        };
        {
            let mut st = ctx.stats.borrow_mut();
            match kind {
                Sent::Group(g) => {
                    st.c.sent += 1;
                    st.c.sent_group += 1;
                    ctx.flow.sent_group(g, self.local);
                }
                Sent::Direct(target) => {
                    st.c.sent += 1;
                    st.c.sent_direct += 1;
                    ctx.flow.sent_direct(target);
                }
                Sent::Request => st.c.requests += 1,
            }
        }
        if !matches!(kind, Sent::Request) {
            self.send.seq = self.send.seq.wrapping_add(1);
        }
        self.send.inflight += 1;
        if let Err(e) = self.ws.start_send_unpin(msg) {
            let why = self.describe(&e);
            self.step(Input::Failed(why));
        }
    }

    /// A `mixed` action: group message, direct message to a random connected user, or a request.
    fn mixed_frame(&mut self, ctx: &Ctx, stamp: Stamp) -> (Message, Sent) {
        let Mix { group, direct, request } = ctx.args.mix;
        let groups = &ctx.plan.conns[self.local].groups;
        let rng = &mut self.send.rng;
        let r = rng.u64(..u64::from(group) + u64::from(direct) + u64::from(request));
        let mut enc = ctx.frames.enc.borrow_mut();
        if r < u64::from(group) && !groups.is_empty() {
            let g = groups[rng.usize(..groups.len())];
            return (enc.message(&[&ctx.frames.group_heads[g]], stamp), Sent::Group(g));
        }
        if r < u64::from(group) + u64::from(direct) {
            let users = ctx.users.live();
            if users.len() >= 2 {
                let mut j = rng.usize(..users.len());
                if users[j].0 == self.local {
                    j = (j + 1) % users.len();
                }
                let (target, user) = (users[j].0, users[j].1.as_bytes());
                let mut idx = itoa::Buffer::new();
                let idx = idx.format(target).as_bytes();
                let head = [proto::DIRECT_TO, user, proto::DIRECT_ID, idx, proto::DIRECT_REST];
                return (enc.message(&head, stamp), Sent::Direct(target));
            }
        }
        let msg = match (rng.u8(..3), groups.first()) {
            (0, _) => enc.text(&["{\"type\":\"online\",\"id\":\"o\"}"]),
            (1, Some(&g)) => {
                enc.text(&["{\"type\":\"members\",\"group\":\"", &ctx.frames.group_names[g], "\",\"id\":\"m\"}"])
            }
            _ => enc.text(&["{\"type\":\"ping\",\"id\":\"p\"}"]),
        };
        (msg, Sent::Request)
    }

    /// A message with ack id `id` will not be delivered (refused, or the user is offline).
    pub(super) fn forgive(&self, id: Option<&[u8]>) {
        match (id.and_then(|i| i.first()), id.and_then(proto::id_index)) {
            (Some(b'd'), Some(target)) => self.ctx.flow.refused_direct(target),
            (Some(b'g'), Some(group)) => self.ctx.flow.refused_group(group, self.local),
            _ => {}
        }
    }
}
