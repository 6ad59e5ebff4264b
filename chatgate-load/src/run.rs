//! One load process: a current-thread runtime with a `LocalSet`, one task per connection
//! ([`crate::conn`]), state shared in a [`Ctx`], and the coordinator that moves all
//! connections through the phases of the run.
//!
//! Timeline (message scenarios): connect and join (setup) → start barrier → sending for
//! `--duration` → drain for up to `--drain` → close. `connect`: barrier → connect → hold
//! for `--hold` → close.

use std::io::BufRead;
use std::rc::Rc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::LocalSet;

use crate::args::{Args, Scenario};
use crate::ctx::{Ctx, Dial, Phase};
use crate::progress::{self, Mode, emit};
use crate::scenario;
use crate::server::{ServerUsage, Watch};
use crate::stats::{ProcResult, expected};
use crate::timer::{Clock, Timer};

/// Runs this process's share of the scenario to the end.
pub fn run(args: Args, mode: Mode) -> Result<ProcResult, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    LocalSet::new().block_on(&rt, drive(args, mode))
}

/// What the coordinator measured besides the counters.
#[derive(Default)]
struct Measured {
    /// CPU use of this process while sending (connect: while connecting), % of one core.
    cpu_pct: Option<f64>,
    /// `--watch-pid` readings over the measured window.
    server: Option<ServerUsage>,
}

async fn drive(args: Args, mode: Mode) -> Result<ProcResult, String> {
    let clock = Clock::new();
    let (proc_index, procs) = args.child.unwrap_or((0, 1));
    let plan = scenario::plan(&args, proc_index, procs);
    let dial = Dial::resolve(&args).await?;
    let run_id = args.run_id.clone().unwrap_or_else(|| format!("lt{:06x}", fastrand::u32(..1 << 24)));
    let timer = Timer::start(clock).map_err(|e| format!("cannot start the timer thread: {e}"))?;
    let ctx = Rc::new(Ctx::new(args, plan, dial, timer, &run_id));
    let c = ctx.clone();
    let timer_task = tokio::task::spawn_local(async move { c.timer.service().await });
    let progress_task = tokio::task::spawn_local(progress::report(ctx.clone(), mode));
    let mut go = (mode == Mode::Child).then(stdin_lines);

    let result = coordinate(&ctx, mode, &mut go).await;
    progress_task.abort();
    timer_task.abort();
    let measured = result?;
    let mut r = ctx.stats.borrow().result(ctx.plan.conns.len());
    r.cpu_pct = measured.cpu_pct;
    r.server = measured.server;
    Ok(r)
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

fn spawn_connections(ctx: &Rc<Ctx>) {
    ctx.stats.borrow_mut().marks.connect_start = ctx.timer.clock().now_epoch_us();
    for local in 0..ctx.plan.conns.len() {
        tokio::task::spawn_local(crate::conn::run(ctx.clone(), local));
    }
}

/// Sleeps until clock ns `t`.
async fn sleep_until(clock: &Clock, t: u64) {
    let now = clock.now_ns();
    if t > now {
        tokio::time::sleep(Duration::from_nanos(t - now)).await;
    }
}

/// Drives the phases; the connection tasks follow `ctx.timeline`.
async fn coordinate(
    ctx: &Rc<Ctx>,
    mode: Mode,
    go: &mut Option<mpsc::UnboundedReceiver<String>>,
) -> Result<Measured, String> {
    let clock = *ctx.timer.clock();
    let args = &ctx.args;
    let mut measured = Measured::default();
    let mut watch = Watch::new(&args.watch_pids);
    if args.scenario == Scenario::Connect {
        let start = barrier(ctx, mode, go).await?;
        sleep_until(&clock, start).await;
        let cpu0 = crate::procfs::own_cpu_seconds();
        watch.start();
        spawn_connections(ctx);
        ctx.setup.zero().await;
        measured.cpu_pct = cpu_pct(cpu0, clock.now_ns() - start);
        watch.loaded();
        measured.server = watch.finish();
        // Nobody sends in this scenario; the phase only shows in the progress line.
        ctx.timeline.set_phase(Phase::Running);
        sleep_until(&clock, clock.now_ns() + args.hold.as_nanos() as u64).await;
    } else {
        spawn_connections(ctx);
        ctx.setup.zero().await;
        watch.loaded();
        if mode == Mode::Single && ctx.stats.borrow().c.connected == 0 && !ctx.plan.conns.is_empty() {
            // Nothing to measure; the report shows why.
            ctx.timeline.set_phase(Phase::Closing);
            return Ok(measured);
        }
        let start = barrier(ctx, mode, go).await?;
        let end = start + args.duration.as_nanos() as u64;
        ctx.timeline.set_window(start, end);
        ctx.users.fix_live();
        {
            let mut st = ctx.stats.borrow_mut();
            st.marks.send_start = clock.epoch_us(start);
            st.marks.send_end = clock.epoch_us(end);
        }
        // Senders arm their (precise) timers for the start time now.
        ctx.timeline.set_phase(Phase::Running);
        sleep_until(&clock, start).await;
        let cpu0 = crate::procfs::own_cpu_seconds();
        watch.start();
        sleep_until(&clock, end).await;
        measured.cpu_pct = cpu_pct(cpu0, end - start);
        ctx.timeline.set_phase(Phase::Draining);
        let drain_end = end + args.drain.as_nanos() as u64;
        while clock.now_ns() < drain_end {
            if mode == Mode::Single && complete(ctx) {
                break;
            }
            let step = (drain_end - clock.now_ns().min(drain_end)).min(20_000_000);
            tokio::time::sleep(Duration::from_nanos(step)).await;
        }
        measured.server = watch.finish();
    }
    ctx.timeline.set_phase(Phase::Closing);
    let _ = tokio::time::timeout(Duration::from_secs(5), ctx.tasks.zero()).await;
    Ok(measured)
}

/// Percent of one core used since `before` (CPU seconds), over `wall_ns`.
fn cpu_pct(before: Option<f64>, wall_ns: u64) -> Option<f64> {
    let used = crate::procfs::own_cpu_seconds()? - before?;
    (wall_ns > 0).then(|| (used / (wall_ns as f64 / 1e9) * 1000.0).round() / 10.0)
}

/// Single process: every message answered and every expected delivery in.
fn complete(ctx: &Ctx) -> bool {
    let st = ctx.stats.borrow();
    let c = &st.c;
    c.sent == c.answered() && c.delivered >= expected(c.acked_sent_direct, &st.group_members, &st.group_acked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_accounting_reads_proc() {
        let before = crate::procfs::own_cpu_seconds();
        assert!(before.is_some());
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_pct(before, 1_000_000_000).is_some_and(|p| p >= 0.0));
        assert_eq!(cpu_pct(None, 1), None);
    }
}
