//! One load process: a current-thread runtime with a `LocalSet`, one task per connection,
//! shared state in a [`Ctx`], and the coordinator that moves all connections through the
//! phases of the run.
//!
//! Timeline (message scenarios): connect and join (setup) → start barrier → sending for
//! `--duration` → drain for up to `--drain` → close. `connect`: barrier → connect → hold
//! for `--hold` → close.

use std::cell::{Cell, RefCell};
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::LocalSet;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::args::{Args, Scenario};
use crate::flow::FlowControl;
use crate::proto::{self, Encoder};
use crate::scenario::{self, Plan};
use crate::stats::{ProcResult, Stats, expected};
use crate::timer::{Clock, Timer};
use crate::values::split_url;

/// Phase of the run, shared by all connections of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Connecting and joining.
    Setup,
    /// Senders follow their schedules.
    Running,
    /// Sending is over; deliveries still count.
    Draining,
    /// Connections close.
    Closing,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Setup => "setup",
            Phase::Running => "running",
            Phase::Draining => "draining",
            Phase::Closing => "closing",
        }
    }
}

/// A gateway endpoint.
pub struct Target {
    pub addr: SocketAddr,
    pub url: String,
}

/// State shared by the tasks of one process.
pub struct Ctx {
    pub args: Args,
    pub plan: Plan,
    pub targets: Vec<Target>,
    pub ws_config: WebSocketConfig,
    pub timer: Timer,
    pub stats: RefCell<Stats>,
    pub enc: RefCell<Encoder>,
    pub connect_sem: Semaphore,
    pub phase: Cell<Phase>,
    /// Woken (`notify_waiters`) on every phase change.
    pub signal: Notify,
    /// Clock ns at which sending starts / ends.
    pub start_ns: Cell<u64>,
    pub send_end_ns: Cell<u64>,
    /// User id of each local connection once welcomed.
    pub users: RefCell<Vec<Option<Rc<str>>>>,
    /// Connected users (local index, id), fixed at the start barrier: targets for `mixed`.
    pub live_users: RefCell<Vec<(usize, Rc<str>)>>,
    pub group_names: Vec<String>,
    pub group_heads: Vec<Box<[u8]>>,
    /// Connections done with setup (ready, or failed).
    pub settled: Cell<usize>,
    pub settled_notify: Notify,
    /// Connection tasks still running.
    pub live: Cell<usize>,
    pub done_notify: Notify,
    /// Most messages one connection sends in one go before reading again.
    pub burst: usize,
    /// `--rate max` flow control (inert otherwise).
    pub flow: FlowControl,
    /// CPU use of this process while sending (connect: while connecting), % of one core.
    pub cpu_pct: Cell<Option<f64>>,
    /// `--watch-pid` readings, once the measured window is over.
    pub server: RefCell<Option<crate::server::ServerUsage>>,
}

impl Ctx {
    /// A connection finished its setup (successfully or not).
    pub fn settle(&self) {
        self.settled.set(self.settled.get() + 1);
        if self.settled.get() >= self.plan.conns.len() {
            self.settled_notify.notify_one();
        }
    }

    /// A connection task ended.
    pub fn task_done(&self) {
        self.live.set(self.live.get().saturating_sub(1));
        if self.live.get() == 0 {
            self.done_notify.notify_one();
        }
    }

    fn set_phase(&self, p: Phase) {
        self.phase.set(p);
        self.signal.notify_waiters();
    }

    /// The URL to request for a connection (with `?token=` when a secret is set).
    pub fn request_url(&self, url: usize, index: usize) -> Result<String, String> {
        let base = &self.targets[url].url;
        let Some(secret) = &self.args.token_secret else { return Ok(base.clone()) };
        let token = jwt(secret, &format!("load-{index}"))?;
        let sep = if base.contains('?') { '&' } else { '?' };
        Ok(format!("{base}{sep}token={token}"))
    }
}

/// An HS256 token for `sub`, valid for a day.
fn jwt(secret: &str, sub: &str) -> Result<String, String> {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        iat: u64,
        exp: u64,
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let claims = Claims { sub, iat: now, exp: now + 86_400 };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| format!("cannot make a token: {e}"))
}

/// Resolves every URL's host once (connections then skip DNS).
async fn resolve(args: &Args) -> Result<Vec<Target>, String> {
    let want_v6 = args.src.first().map(|a| a.is_ipv6());
    let mut out = Vec::new();
    for url in &args.urls {
        let (hostport, _) = split_url(url)?;
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(hostport.as_str())
            .await
            .map_err(|e| format!("cannot resolve {hostport}: {e}"))?
            .collect();
        let addr = addrs
            .iter()
            .find(|a| want_v6.is_none_or(|v6| a.is_ipv6() == v6))
            .or(addrs.first())
            .copied()
            .ok_or_else(|| format!("{hostport} resolves to no address"))?;
        out.push(Target { addr, url: url.clone() });
    }
    Ok(out)
}

/// How this process talks to the outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Alone: progress on stderr, start at once.
    Single,
    /// Child of `--procs`: JSON lines on stdout, start on the parent's `go`.
    Child,
}

/// Writes one line to stdout (children's channel to the parent).
pub fn emit(v: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// Runs this process's share of the scenario to the end.
pub fn run(args: Args, mode: Mode) -> Result<ProcResult, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    LocalSet::new().block_on(&rt, drive(args, mode))
}

/// Lines from the parent on stdin (`go <epoch µs>`), read by a helper thread.
fn stdin_lines() -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Start barrier: clock ns at which sending (or connecting) begins.
async fn barrier(ctx: &Ctx, mode: Mode, go: &mut Option<mpsc::UnboundedReceiver<String>>) -> Result<u64, String> {
    let clock = *ctx.timer.clock();
    let Some(rx) = go.as_mut() else {
        // Leave a moment for senders to arm their timers.
        return Ok(clock.now_ns() + 20_000_000);
    };
    debug_assert_eq!(mode, Mode::Child);
    emit(&json!({"kind": "ready"}));
    loop {
        let line = rx.recv().await.ok_or("the parent process went away before `go`")?;
        if let Some(t) = line.strip_prefix("go ") {
            let us: u64 = t.trim().parse().map_err(|_| format!("bad go line {line:?}"))?;
            return Ok(clock.ns_of_epoch_us(us).max(clock.now_ns()));
        }
    }
}

async fn drive(args: Args, mode: Mode) -> Result<ProcResult, String> {
    let clock = Clock::new();
    let (proc_index, procs) = args.child.unwrap_or((0, 1));
    let plan = scenario::plan(&args, proc_index, procs);
    let targets = resolve(&args).await?;
    let run_id = args.run_id.clone().unwrap_or_else(|| format!("lt{:06x}", fastrand::u32(..1 << 24)));
    let group_names: Vec<String> = (0..plan.groups).map(|g| format!("{run_id}-g{g}")).collect();
    let group_heads = group_names.iter().enumerate().map(|(i, n)| proto::group_head(n, i)).collect();
    let frame_len = args.size.max(Encoder::min_content()) + 128;
    let burst = (256 * 1024 / frame_len).clamp(1, 1024);
    let write_buffer = args.read_buffer;
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(args.read_buffer)
        .write_buffer_size(write_buffer)
        .max_write_buffer_size(write_buffer + (burst + 16) * frame_len)
        .max_message_size(Some(16 << 20))
        .max_frame_size(Some(16 << 20));
    let timer = Timer::start(clock).map_err(|e| format!("cannot start the timer thread: {e}"))?;
    let n = plan.conns.len();
    let ctx = Rc::new(Ctx {
        stats: RefCell::new(Stats::new(plan.groups)),
        enc: RefCell::new(Encoder::new(args.size)),
        connect_sem: Semaphore::new(args.connect_concurrency),
        phase: Cell::new(Phase::Setup),
        signal: Notify::new(),
        start_ns: Cell::new(u64::MAX),
        send_end_ns: Cell::new(u64::MAX),
        users: RefCell::new(vec![None; n]),
        live_users: RefCell::new(Vec::new()),
        group_names,
        group_heads,
        settled: Cell::new(0),
        settled_notify: Notify::new(),
        live: Cell::new(0),
        done_notify: Notify::new(),
        burst,
        cpu_pct: Cell::new(None),
        server: RefCell::new(None),
        flow: if matches!(args.rate, crate::args::Rate::Max) {
            let local: Vec<usize> = plan.conns.iter().map(|c| c.index).collect();
            FlowControl::new(args.conns, plan.groups, &local, args.window.saturating_mul(2))
        } else {
            FlowControl::disabled()
        },
        args,
        plan,
        targets,
        ws_config,
        timer,
    });
    let c = ctx.clone();
    let timer_task = tokio::task::spawn_local(async move { c.timer.service().await });
    let c = ctx.clone();
    let progress_task = tokio::task::spawn_local(async move { progress(c, mode).await });
    let mut go = (mode == Mode::Child).then(stdin_lines);

    let result = coordinate(&ctx, mode, &mut go).await;
    progress_task.abort();
    timer_task.abort();
    result?;
    let st = ctx.stats.borrow();
    let mut r = st.result(n);
    r.cpu_pct = ctx.cpu_pct.get();
    r.server = ctx.server.borrow_mut().take();
    Ok(r)
}

fn spawn_connections(ctx: &Rc<Ctx>) {
    let clock = *ctx.timer.clock();
    ctx.stats.borrow_mut().marks.connect_start = clock.now_epoch_us();
    ctx.live.set(ctx.plan.conns.len());
    if ctx.plan.conns.is_empty() {
        ctx.settled_notify.notify_one();
        ctx.done_notify.notify_one();
    }
    for local in 0..ctx.plan.conns.len() {
        tokio::task::spawn_local(crate::conn::run(ctx.clone(), local));
    }
}

async fn wait_settled(ctx: &Ctx) {
    while ctx.settled.get() < ctx.plan.conns.len() {
        ctx.settled_notify.notified().await;
    }
}

/// Sleeps until clock ns `t`.
async fn sleep_until(clock: &Clock, t: u64) {
    let now = clock.now_ns();
    if t > now {
        tokio::time::sleep(Duration::from_nanos(t - now)).await;
    }
}

/// Drives the phases; the connection tasks follow `ctx.phase`.
async fn coordinate(ctx: &Rc<Ctx>, mode: Mode, go: &mut Option<mpsc::UnboundedReceiver<String>>) -> Result<(), String> {
    let clock = *ctx.timer.clock();
    let args = &ctx.args;
    let mut watch = crate::server::Watch::new(&args.watch_pids);
    if args.scenario == Scenario::Connect {
        let start = barrier(ctx, mode, go).await?;
        sleep_until(&clock, start).await;
        let cpu0 = cpu_seconds();
        watch.start();
        spawn_connections(ctx);
        wait_settled(ctx).await;
        ctx.cpu_pct.set(cpu_pct(cpu0, clock.now_ns() - start));
        watch.loaded();
        *ctx.server.borrow_mut() = watch.finish();
        // Nobody sends in this scenario; the phase only shows in the progress line.
        ctx.set_phase(Phase::Running);
        sleep_until(&clock, clock.now_ns() + args.hold.as_nanos() as u64).await;
    } else {
        spawn_connections(ctx);
        wait_settled(ctx).await;
        watch.loaded();
        if mode == Mode::Single && ctx.stats.borrow().c.connected == 0 && !ctx.plan.conns.is_empty() {
            // Nothing to measure; the report shows why.
            ctx.set_phase(Phase::Closing);
            return Ok(());
        }
        let start = barrier(ctx, mode, go).await?;
        let end = start + args.duration.as_nanos() as u64;
        ctx.start_ns.set(start);
        ctx.send_end_ns.set(end);
        {
            let users = ctx.users.borrow();
            let live = users.iter().enumerate().filter_map(|(i, u)| u.clone().map(|u| (i, u))).collect();
            *ctx.live_users.borrow_mut() = live;
            let mut st = ctx.stats.borrow_mut();
            st.marks.send_start = clock.epoch_us(start);
            st.marks.send_end = clock.epoch_us(end);
        }
        // Senders arm their (precise) timers for the start time now.
        ctx.set_phase(Phase::Running);
        sleep_until(&clock, start).await;
        let cpu0 = cpu_seconds();
        watch.start();
        sleep_until(&clock, end).await;
        ctx.cpu_pct.set(cpu_pct(cpu0, end - start));
        ctx.set_phase(Phase::Draining);
        let drain_end = end + args.drain.as_nanos() as u64;
        while clock.now_ns() < drain_end {
            if mode == Mode::Single && complete(ctx) {
                break;
            }
            let step = (drain_end - clock.now_ns().min(drain_end)).min(20_000_000);
            tokio::time::sleep(Duration::from_nanos(step)).await;
        }
        *ctx.server.borrow_mut() = watch.finish();
    }
    ctx.set_phase(Phase::Closing);
    let closing = async {
        while ctx.live.get() > 0 {
            ctx.done_notify.notified().await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), closing).await;
    Ok(())
}

/// CPU time (user + system, all threads) of this process so far, from `/proc/self/stat`.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, in USER_HZ (100 on Linux) ticks.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// Percent of one core used since `before`, over `wall_ns`.
fn cpu_pct(before: Option<f64>, wall_ns: u64) -> Option<f64> {
    let used = cpu_seconds()? - before?;
    (wall_ns > 0).then(|| (used / (wall_ns as f64 / 1e9) * 1000.0).round() / 10.0)
}

/// Single process: every message answered and every expected delivery in.
fn complete(ctx: &Ctx) -> bool {
    let st = ctx.stats.borrow();
    let c = &st.c;
    let answered = c.acked_sent + c.acked_offline + c.msg_errors;
    c.sent == answered && c.delivered >= expected(c.acked_sent_direct, &st.group_members, &st.group_acked)
}

/// Once a second: a progress line on stderr, or (child) a JSON line for the parent.
async fn progress(ctx: Rc<Ctx>, mode: Mode) {
    let clock = *ctx.timer.clock();
    let t0 = clock.now_ns();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let (mut prev_sent, mut prev_delivered, mut prev_t) = (0u64, 0u64, t0);
    // The latency histogram a second ago: the difference is this second's (one histogram
    // on the hot path instead of two).
    let mut prev_latency = crate::stats::histogram();
    loop {
        tick.tick().await;
        let now = clock.now_ns();
        let (up, sent, delivered, errors, p99) = {
            let st = ctx.stats.borrow();
            let mut last = st.latency.clone();
            let _ = last.subtract(&prev_latency);
            let p99 = if last.is_empty() { 0 } else { last.value_at_quantile(0.99) };
            prev_latency.clone_from(&st.latency);
            let c = &st.c;
            let errors = c.err_unavailable
                + c.err_rate_limited
                + c.err_not_member
                + c.err_bad_request
                + c.err_other
                + c.connect_failures
                + c.join_failures
                + c.disconnects;
            (st.up, c.sent, c.delivered, errors, p99)
        };
        let phase = match (ctx.args.scenario, ctx.phase.get()) {
            (Scenario::Connect, Phase::Running) => "holding",
            (_, p) => p.name(),
        };
        match mode {
            Mode::Child => emit(&json!({
                "kind": "progress", "phase": phase, "up": up, "sent": sent,
                "delivered": delivered, "errors": errors, "p99": p99,
            })),
            Mode::Single if !ctx.args.quiet => {
                let dt = (now - prev_t) as f64 / 1e9;
                eprintln!(
                    "{}",
                    progress_line(
                        (now - t0) as f64 / 1e9,
                        phase,
                        up,
                        ctx.plan.conns.len() as u64,
                        (sent - prev_sent) as f64 / dt,
                        (delivered - prev_delivered) as f64 / dt,
                        errors,
                        p99
                    )
                );
            }
            Mode::Single => {}
        }
        (prev_sent, prev_delivered, prev_t) = (sent, delivered, now);
    }
}

/// One progress line (shared with the `--procs` parent).
#[allow(clippy::too_many_arguments)]
pub fn progress_line(
    elapsed: f64,
    phase: &str,
    up: u64,
    conns: u64,
    sent_per_s: f64,
    delivered_per_s: f64,
    errors: u64,
    p99_us: u64,
) -> String {
    format!(
        "[{elapsed:6.1}s] {phase:<8} up {up}/{conns}  sent {sent_per_s:.0}/s  delivered {delivered_per_s:.0}/s  errors {errors}  p99 {}",
        crate::stats::ms(p99_us)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_accounting_reads_proc() {
        let before = cpu_seconds();
        assert!(before.is_some());
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_pct(before, 1_000_000_000).is_some_and(|p| p >= 0.0));
        assert_eq!(cpu_pct(None, 1), None);
    }

    #[test]
    fn progress_line_format() {
        let l = progress_line(1.0, "running", 10, 20, 5.0, 50.0, 0, 1500);
        assert_eq!(l, "[   1.0s] running  up 10/20  sent 5/s  delivered 50/s  errors 0  p99 1.500ms");
    }
}
