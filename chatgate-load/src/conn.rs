//! One client connection: connect (optionally from a chosen source address), wait for the
//! `welcome`, join groups, then an event loop that reads frames, sends on schedule and
//! follows the phases of the run.
//!
//! The event loop is a single `poll_fn` over the WebSocket (read, flush, close), the send
//! timer and the phase signal, so one task owns the stream and nothing is split or locked.

use std::collections::HashMap;
use std::future::Future;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::futures::Notified;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::args::{Mix, Rate};
use crate::proto::{self, Incoming, Stamp};
use crate::run::{Ctx, Phase};
use crate::scenario::{ConnSpec, Role};

type Ws = WebSocketStream<TcpStream>;

/// Runs connection `local` of the plan to the end.
pub async fn run(ctx: Rc<Ctx>, local: usize) {
    let spec = &ctx.plan.conns[local];
    ctx.stats.borrow_mut().c.attempts += 1;
    let connected = {
        // Never closed, so acquiring cannot fail; without a permit we would just not be limited.
        let _permit = ctx.connect_sem.acquire().await;
        connect(&ctx, spec).await
    };
    let (ws, user) = match connected {
        Ok(c) => c,
        Err(e) => {
            let mut st = ctx.stats.borrow_mut();
            st.c.connect_failures += 1;
            st.conn_error(e);
            drop(st);
            ctx.settle();
            ctx.task_done();
            return;
        }
    };
    {
        let now = ctx.timer.clock().now_epoch_us();
        let mut st = ctx.stats.borrow_mut();
        st.c.connected += 1;
        st.up += 1;
        st.marks.connect_end = st.marks.connect_end.max(now);
    }
    ctx.users.borrow_mut()[local] = Some(user);
    let mut conn = Conn::new(ctx.clone(), local, ws);
    let end = conn.run().await;
    ctx.flow.closed(local);
    let closing = ctx.phase.get() == Phase::Closing;
    {
        let mut st = ctx.stats.borrow_mut();
        st.up -= 1;
        if !closing {
            st.c.disconnects += 1;
            st.conn_error(end);
        }
    }
    if !conn.ready {
        ctx.settle();
    }
    if closing {
        // Read to the server's FIN so the server, not us, holds TIME_WAIT.
        let mut sink = [0u8; 512];
        let tcp = conn.ws.get_mut();
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
    }
    ctx.task_done();
}

/// TCP connect (bound to the source address if any), upgrade, and the `welcome`; returns
/// the stream and the user id the server assigned.
async fn connect(ctx: &Ctx, spec: &ConnSpec) -> Result<(Ws, Rc<str>), String> {
    let clock = *ctx.timer.clock();
    let t0 = clock.now_ns();
    let target = &ctx.targets[spec.url];
    let attempt = async {
        let sock = if target.addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }
            .map_err(|e| format!("socket: {e}"))?;
        if let Some(src) = spec.src {
            sock.set_reuseaddr(true).map_err(|e| format!("SO_REUSEADDR: {e}"))?;
            sock.bind(std::net::SocketAddr::new(src, 0)).map_err(|e| format!("bind {src}: {e}"))?;
        }
        sock.set_nodelay(true).map_err(|e| format!("TCP_NODELAY: {e}"))?;
        let stream = sock.connect(target.addr).await.map_err(|e| format!("connect {}: {e}", target.addr))?;
        let url = ctx.request_url(spec.url, spec.index)?;
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(ctx.ws_config))
            .await
            .map_err(|e| handshake_error(&e))?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return welcome(t.as_bytes()).map(|user| (ws, user)),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(f))) => {
                    return Err(match f {
                        Some(f) => format!("closed before welcome: {} {}", u16::from(f.code), f.reason),
                        None => "closed before welcome".into(),
                    });
                }
                Some(Ok(_)) => return Err("first frame is not a text frame".into()),
                Some(Err(e)) => return Err(format!("before welcome: {e}")),
                None => return Err("closed before welcome".into()),
            }
        }
    };
    let out = tokio::time::timeout(ctx.args.connect_timeout, attempt)
        .await
        .map_err(|_| format!("no welcome within {:?}", ctx.args.connect_timeout))??;
    let us = (clock.now_ns() - t0) / 1000;
    crate::stats::record(&mut ctx.stats.borrow_mut().connect, us);
    Ok(out)
}

/// Describes a failed upgrade (HTTP status and body when the server refused).
fn handshake_error(e: &WsError) -> String {
    match e {
        WsError::Http(resp) => {
            let body = resp.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
            let body: String = body.chars().take(120).collect();
            format!("upgrade refused: HTTP {} {body}", resp.status())
        }
        other => format!("upgrade: {other}"),
    }
}

/// The user id from a `welcome` frame.
fn welcome(b: &[u8]) -> Result<Rc<str>, String> {
    #[derive(serde::Deserialize)]
    struct Welcome {
        #[serde(rename = "type")]
        ty: String,
        user: Option<String>,
    }
    let snippet = || String::from_utf8_lossy(&b[..b.len().min(120)]).into_owned();
    let w: Welcome = serde_json::from_slice(b).map_err(|_| format!("first frame is not JSON: {}", snippet()))?;
    match (w.ty.as_str(), w.user) {
        ("welcome", Some(u)) => Ok(u.into()),
        _ => Err(format!("first frame is not a welcome: {}", snippet())),
    }
}

/// Last sequence seen per sender stream, to spot duplicates and reordering cheaply: one
/// cached entry (most receivers hear few senders) in front of a map.
struct SeqTracker {
    key: u64,
    /// Last sequence + 1 for `key` (0: none).
    last: u32,
    others: HashMap<u64, u32, foldhash::fast::RandomState>,
}

impl SeqTracker {
    fn new() -> SeqTracker {
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

/// What woke the event loop.
enum Event {
    Frame(Message),
    /// Messages are due (or, with `--rate max`, the window has room).
    Due,
    /// The phase changed.
    Signal,
    /// Joins went unanswered for `--connect-timeout`.
    JoinTimeout,
    /// The connection ended; why.
    End(String),
}

/// What a sent frame was, for counting.
enum Sent {
    /// Group message to this group index.
    Group(usize),
    /// Direct message to this local connection.
    Direct(usize),
    Request,
}

struct Conn {
    ctx: Rc<Ctx>,
    local: usize,
    ws: Ws,
    /// Global index, the `s` of our stamps.
    index: u32,
    role: Role,
    joins_pending: usize,
    /// Clock ns by which every join must be answered.
    join_deadline: u64,
    join_failed: bool,
    /// Joined everything (or gave up on a failed join); counted in `ctx.settled`.
    ready: bool,
    flushing: bool,
    close_started: bool,
    close_done: bool,
    /// An error from `start_send`, reported by the next poll.
    failed: Option<String>,
    /// The server's close frame, if one came.
    server_close: Option<String>,
    // Sending.
    sending: bool,
    started: bool,
    rate_max: bool,
    window: u32,
    inflight: u32,
    seq: u32,
    t0: u64,
    interval: f64,
    scheduled: u64,
    next_due: u64,
    registered: u64,
    last_was_due: bool,
    head: Option<Box<[u8]>>,
    seen: SeqTracker,
    rng: fastrand::Rng,
}

impl Conn {
    fn new(ctx: Rc<Ctx>, local: usize, ws: Ws) -> Conn {
        let spec = &ctx.plan.conns[local];
        let (index, role) = (spec.index as u32, spec.role);
        let rate_max = matches!(ctx.args.rate, Rate::Max);
        let window = ctx.args.window;
        let interval = ctx.plan.interval_ns.unwrap_or(0.0);
        Conn {
            ctx,
            local,
            ws,
            index,
            role,
            joins_pending: 0,
            join_deadline: u64::MAX,
            join_failed: false,
            ready: false,
            flushing: false,
            close_started: false,
            close_done: false,
            failed: None,
            server_close: None,
            sending: false,
            started: false,
            rate_max,
            window,
            inflight: 0,
            seq: 0,
            t0: 0,
            interval,
            scheduled: 0,
            next_due: u64::MAX,
            registered: 0,
            last_was_due: false,
            head: None,
            seen: SeqTracker::new(),
            rng: fastrand::Rng::new(),
        }
    }

    /// The event loop; returns why the connection ended.
    async fn run(&mut self) -> String {
        let ctx = self.ctx.clone();
        let mut signal = pin!(ctx.signal.notified());
        self.join_groups();
        self.on_phase();
        loop {
            let ev = std::future::poll_fn(|cx| self.poll_event(cx, signal.as_mut())).await;
            match ev {
                Event::Frame(m) => self.on_frame(m),
                Event::Due => self.send_due(),
                Event::JoinTimeout => {
                    let mut st = ctx.stats.borrow_mut();
                    st.c.join_failures += self.joins_pending as u64;
                    st.conn_error(format!("join not answered within {:?}", ctx.args.connect_timeout));
                    drop(st);
                    self.join_failed = true;
                    self.joins_pending = 0;
                    self.set_ready();
                }
                Event::Signal => {
                    signal.set(ctx.signal.notified());
                    self.on_phase();
                }
                Event::End(why) => return why,
            }
        }
    }

    fn poll_event(&mut self, cx: &mut Context<'_>, signal: Pin<&mut Notified<'_>>) -> Poll<Event> {
        if let Some(e) = self.failed.take() {
            return Poll::Ready(Event::End(e));
        }
        if self.flushing {
            match self.ws.poll_flush_unpin(cx) {
                Poll::Ready(Ok(())) => self.flushing = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Event::End(self.describe(&e))),
                Poll::Pending => {}
            }
        }
        if self.close_started && !self.close_done {
            // Errors here just mean the connection is already gone; reading will tell.
            if self.ws.poll_close_unpin(cx).is_ready() {
                self.close_done = true;
            }
        }
        // Open loop: alternate sending and reading so a backlog cannot starve the acks.
        // `--rate max`: read everything available first, then refill the window in one
        // go (one write for all the acks that came in together).
        let due_first = !self.rate_max && !self.last_was_due;
        if due_first && self.poll_due(cx) {
            self.last_was_due = true;
            return Poll::Ready(Event::Due);
        }
        self.last_was_due = false;
        match self.ws.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(m))) => return Poll::Ready(Event::Frame(m)),
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Event::End(self.describe(&e))),
            Poll::Ready(None) => {
                let why = self.server_close.take().unwrap_or_else(|| "connection closed by the server".into());
                return Poll::Ready(Event::End(why));
            }
            Poll::Pending => {}
        }
        if signal.poll(cx).is_ready() {
            return Poll::Ready(Event::Signal);
        }
        if self.joins_pending > 0 && self.ctx.timer.poll_until(cx, self.join_deadline, &mut self.registered).is_ready()
        {
            return Poll::Ready(Event::JoinTimeout);
        }
        if !due_first && self.poll_due(cx) {
            self.last_was_due = true;
            return Poll::Ready(Event::Due);
        }
        Poll::Pending
    }

    fn describe(&self, e: &WsError) -> String {
        match (&self.server_close, e) {
            (Some(c), _) => c.clone(),
            (None, WsError::Io(io)) => format!("i/o: {}", io.kind()),
            (None, other) => other.to_string(),
        }
    }

    /// Whether messages can be sent now (registers the timer otherwise).
    fn poll_due(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.sending || self.flushing || self.close_started || self.failed.is_some() {
            return false;
        }
        if self.rate_max {
            if self.inflight >= self.window {
                return false;
            }
            if !self.ctx.flow.may_send(cx) {
                return false;
            }
        }
        self.ctx.timer.poll_until(cx, self.next_due, &mut self.registered).is_ready()
    }

    fn join_groups(&mut self) {
        let ctx = self.ctx.clone();
        let groups = &ctx.plan.conns[self.local].groups;
        for &g in groups {
            if let Err(e) = self.ws.start_send_unpin(proto::join(&ctx.group_names[g], g)) {
                self.failed = Some(format!("sending join: {e}"));
                return;
            }
        }
        self.joins_pending = groups.len();
        self.join_deadline = ctx.timer.clock().now_ns() + ctx.args.connect_timeout.as_nanos() as u64;
        self.flushing = true;
        if self.joins_pending == 0 {
            self.set_ready();
        }
    }

    fn set_ready(&mut self) {
        if !self.ready {
            self.ready = true;
            self.ctx.settle();
        }
    }

    fn on_phase(&mut self) {
        match self.ctx.phase.get() {
            Phase::Setup => {}
            Phase::Running => self.start_sending(),
            Phase::Draining => self.sending = false,
            Phase::Closing => {
                self.sending = false;
                self.close_started = true;
            }
        }
    }

    fn start_sending(&mut self) {
        if self.started {
            return;
        }
        self.started = true;
        if !self.ready || self.join_failed {
            return;
        }
        let ctx = self.ctx.clone();
        self.head = match self.role {
            Role::Receiver => return,
            Role::Group { group } => Some(ctx.group_heads[group].clone()),
            Role::Direct { peer } => match &ctx.users.borrow()[peer] {
                Some(user) => Some(proto::direct_head(user, peer)),
                // The peer never connected: this pair does not send.
                None => return,
            },
            Role::Mixed => None,
        };
        let start = ctx.start_ns.get();
        self.t0 = if self.rate_max { start } else { start + (self.rng.f64() * self.interval) as u64 };
        self.next_due = self.t0;
        self.sending = true;
    }

    /// Sends what is due: the schedule's backlog (up to a burst), or fills the window.
    fn send_due(&mut self) {
        let ctx = self.ctx.clone();
        let clock = *ctx.timer.clock();
        let now = clock.now_ns();
        let end = ctx.send_end_ns.get();
        if self.rate_max {
            if now >= end {
                self.sending = false;
                return;
            }
            let room = (self.window - self.inflight.min(self.window)) as usize;
            let t = clock.epoch_us(now);
            for _ in 0..room.min(ctx.burst) {
                self.send_one(t);
            }
        } else {
            for _ in 0..ctx.burst {
                if self.next_due > now {
                    break;
                }
                if self.next_due >= end {
                    self.sending = false;
                    break;
                }
                self.send_one(clock.epoch_us(self.next_due));
                crate::stats::record(&mut ctx.stats.borrow_mut().send_lag, (now - self.next_due) / 1000);
                self.scheduled += 1;
                self.next_due = self.t0 + (self.scheduled as f64 * self.interval) as u64;
            }
            if self.next_due >= end {
                self.sending = false;
            }
        }
        self.flushing = true;
    }

    /// Builds and queues one frame stamped with scheduled time `t` (epoch µs).
    fn send_one(&mut self, t: u64) {
        let ctx = self.ctx.clone();
        let stamp = Stamp { t, s: self.index, n: self.seq };
        let (msg, kind) = match (&self.role, &self.head) {
            (Role::Group { group }, Some(h)) => (ctx.enc.borrow_mut().message(&[h], stamp), Sent::Group(*group)),
            (Role::Direct { peer }, Some(h)) => (ctx.enc.borrow_mut().message(&[h], stamp), Sent::Direct(*peer)),
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
            self.seq = self.seq.wrapping_add(1);
        }
        self.inflight += 1;
        if let Err(e) = self.ws.start_send_unpin(msg) {
            self.failed = Some(self.describe(&e));
            self.sending = false;
        }
    }

    /// A message with ack id `id` will not be delivered (refused, or the user is offline).
    fn forgive(&self, id: Option<&[u8]>) {
        match (id.and_then(|i| i.first()), id.and_then(proto::id_index)) {
            (Some(b'd'), Some(target)) => self.ctx.flow.refused_direct(target),
            (Some(b'g'), Some(group)) => self.ctx.flow.refused_group(group, self.local),
            _ => {}
        }
    }

    /// A `mixed` action: group message, direct message to a random connected user, or a request.
    fn mixed_frame(&mut self, ctx: &Ctx, stamp: Stamp) -> (Message, Sent) {
        let Mix { group, direct, request } = ctx.args.mix;
        let groups = &ctx.plan.conns[self.local].groups;
        let r = self.rng.u64(..u64::from(group) + u64::from(direct) + u64::from(request));
        let mut enc = ctx.enc.borrow_mut();
        if r < u64::from(group) && !groups.is_empty() {
            let g = groups[self.rng.usize(..groups.len())];
            return (enc.message(&[&ctx.group_heads[g]], stamp), Sent::Group(g));
        }
        if r < u64::from(group) + u64::from(direct) {
            let users = ctx.live_users.borrow();
            if users.len() >= 2 {
                let mut j = self.rng.usize(..users.len());
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
        let msg = match (self.rng.u8(..3), groups.first()) {
            (0, _) => enc.text(&["{\"type\":\"online\",\"id\":\"o\"}"]),
            (1, Some(&g)) => enc.text(&["{\"type\":\"members\",\"group\":\"", &ctx.group_names[g], "\",\"id\":\"m\"}"]),
            _ => enc.text(&["{\"type\":\"ping\",\"id\":\"p\"}"]),
        };
        (msg, Sent::Request)
    }

    fn on_frame(&mut self, m: Message) {
        match m {
            Message::Text(t) => self.on_text(t.as_bytes()),
            Message::Close(f) if self.ctx.phase.get() != Phase::Closing => {
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
                self.inflight = self.inflight.saturating_sub(1);
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
                        self.inflight = self.inflight.saturating_sub(1);
                        self.forgive(id);
                    }
                    Some(b'o' | b'm' | b'p') => self.inflight = self.inflight.saturating_sub(1),
                    Some(b'j') => {
                        st.c.join_failures += 1;
                        drop(st);
                        self.join_failed = true;
                        self.join_answered();
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
                    self.join_answered();
                }
            }
            Incoming::Reply => {
                ctx.stats.borrow_mut().c.replies += 1;
                self.inflight = self.inflight.saturating_sub(1);
            }
            Incoming::Presence | Incoming::Welcome | Incoming::Other => {}
        }
    }

    fn join_answered(&mut self) {
        self.joins_pending = self.joins_pending.saturating_sub(1);
        if self.joins_pending == 0 {
            self.set_ready();
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

    #[test]
    fn welcome_parsing() {
        assert_eq!(&*welcome(br#"{"type":"welcome","user":"17","node":"n0"}"#).unwrap(), "17");
        assert!(welcome(br#"{"type":"error","code":"x"}"#).is_err());
        assert!(welcome(b"nope").is_err());
    }
}
