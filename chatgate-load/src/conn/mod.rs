//! One client connection: [`dial`] (connect, upgrade, `welcome`), join groups, then an
//! event loop that reads frames ([`recv`]), sends on schedule ([`send`]) and follows the
//! phases of the run; its life is the state machine of [`state`].
//!
//! The event loop is a single `poll_fn` over the WebSocket (read, flush, close), the send
//! timer and the phase signal, so one task owns the stream and nothing is split or locked.

mod dial;
mod recv;
mod send;
mod state;

use std::future::Future;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncReadExt;
use tokio::sync::futures::Notified;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::ctx::{Ctx, Phase};
use crate::proto;
use crate::scenario::Role;
use dial::Ws;
use recv::SeqTracker;
use send::Schedule;
use state::{Effect, Input, State};

/// Runs connection `local` of the plan to the end.
pub async fn run(ctx: Rc<Ctx>, local: usize) {
    let spec = &ctx.plan.conns[local];
    ctx.stats.borrow_mut().c.attempts += 1;
    let connected = {
        // Never closed, so acquiring cannot fail; without a permit we would just not be limited.
        let _permit = ctx.dial.permits.acquire().await;
        dial::connect(&ctx, spec).await
    };
    let (ws, user) = match connected {
        Ok(c) => c,
        Err(e) => {
            let mut st = ctx.stats.borrow_mut();
            st.c.connect_failures += 1;
            st.conn_error(e);
            drop(st);
            ctx.setup.done();
            ctx.tasks.done();
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
    ctx.users.welcomed(local, user);
    let mut conn = Conn::new(ctx.clone(), local, ws);
    let end = conn.run().await;
    ctx.flow.closed(local);
    let closing = ctx.timeline.phase() == Phase::Closing;
    {
        let mut st = ctx.stats.borrow_mut();
        st.up -= 1;
        if !closing {
            st.c.disconnects += 1;
            st.conn_error(end);
        }
    }
    if !conn.state.settled() {
        ctx.setup.done();
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
    ctx.tasks.done();
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

/// A welcomed connection and everything its event loop needs.
struct Conn {
    ctx: Rc<Ctx>,
    local: usize,
    ws: Ws,
    /// Global index, the `s` of our stamps.
    index: u32,
    role: Role,
    state: State,
    /// Frames were queued since the last completed flush.
    flushing: bool,
    /// The last event was `Due`: read before sending again (open loop).
    last_was_due: bool,
    /// The deadline the timer holds our waker for (joins or the next send).
    timer_key: u64,
    /// The server's close frame, if one came.
    server_close: Option<String>,
    send: Schedule,
    seen: SeqTracker,
}

impl Conn {
    fn new(ctx: Rc<Ctx>, local: usize, ws: Ws) -> Conn {
        let spec = &ctx.plan.conns[local];
        let (index, role) = (spec.index as u32, spec.role);
        let send = Schedule::new(&ctx);
        Conn {
            ctx,
            local,
            ws,
            index,
            role,
            state: State::Connected,
            flushing: false,
            last_was_due: false,
            timer_key: 0,
            server_close: None,
            send,
            seen: SeqTracker::new(),
        }
    }

    /// Feeds the state machine and carries out what it asks for.
    fn step(&mut self, input: Input) {
        match self.state.next(input) {
            Effect::None => {}
            Effect::Settle => self.ctx.setup.done(),
            Effect::StartSending => self.start_sending(),
        }
    }

    /// The event loop; returns why the connection ended.
    async fn run(&mut self) -> String {
        let ctx = self.ctx.clone();
        let mut signal = pin!(ctx.timeline.changed());
        self.join_groups();
        self.step(Input::Phase(ctx.timeline.phase()));
        loop {
            let ev = std::future::poll_fn(|cx| self.poll_event(cx, signal.as_mut())).await;
            match ev {
                Event::Frame(m) => self.on_frame(m),
                Event::Due => self.send_due(),
                Event::JoinTimeout => {
                    if let State::Joining { pending, .. } = self.state {
                        let mut st = ctx.stats.borrow_mut();
                        st.c.join_failures += pending as u64;
                        st.conn_error(format!("join not answered within {:?}", ctx.args.connect_timeout));
                    }
                    self.step(Input::JoinTimeout);
                }
                Event::Signal => {
                    signal.set(ctx.timeline.changed());
                    self.step(Input::Phase(ctx.timeline.phase()));
                }
                Event::End(why) => return why,
            }
        }
    }

    fn poll_event(&mut self, cx: &mut Context<'_>, signal: Pin<&mut Notified<'_>>) -> Poll<Event> {
        if let State::Broken(why) = &mut self.state {
            return Poll::Ready(Event::End(std::mem::take(why)));
        }
        if self.flushing {
            match self.ws.poll_flush_unpin(cx) {
                Poll::Ready(Ok(())) => self.flushing = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Event::End(self.describe(&e))),
                Poll::Pending => {}
            }
        }
        // Errors here just mean the connection is already gone; reading will tell.
        if matches!(self.state, State::Closing { sent: false }) && self.ws.poll_close_unpin(cx).is_ready() {
            self.step(Input::CloseSent);
        }
        // Open loop: alternate sending and reading so a backlog cannot starve the acks.
        // `--rate max`: read everything available first, then refill the window in one
        // go (one write for all the acks that came in together).
        let due_first = !self.send.rate_max && !self.last_was_due;
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
        if let State::Joining { deadline, .. } = self.state
            && self.ctx.timer.poll_until(cx, deadline, &mut self.timer_key).is_ready()
        {
            return Poll::Ready(Event::JoinTimeout);
        }
        if !due_first && self.poll_due(cx) {
            self.last_was_due = true;
            return Poll::Ready(Event::Due);
        }
        Poll::Pending
    }

    /// Why a read or write failed: the server's close frame if one came first.
    fn describe(&self, e: &WsError) -> String {
        match (&self.server_close, e) {
            (Some(c), _) => c.clone(),
            (None, WsError::Io(io)) => format!("i/o: {}", io.kind()),
            (None, other) => other.to_string(),
        }
    }

    /// Sends this connection's `join`s (none for most scenarios).
    fn join_groups(&mut self) {
        let ctx = self.ctx.clone();
        let groups = &ctx.plan.conns[self.local].groups;
        for &g in groups {
            if let Err(e) = self.ws.start_send_unpin(proto::join(&ctx.frames.group_names[g], g)) {
                self.step(Input::Failed(format!("sending join: {e}")));
                return;
            }
        }
        self.flushing = true;
        let deadline = ctx.timer.clock().now_ns() + ctx.args.connect_timeout.as_nanos() as u64;
        self.step(Input::JoinsSent { pending: groups.len(), deadline });
    }
}
