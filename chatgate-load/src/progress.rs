//! What a process says while it runs: a progress line on stderr each second (alone), or
//! JSON lines on stdout for the `--procs` parent (child).

use std::io::Write;
use std::rc::Rc;
use std::time::Duration;

use serde_json::json;

use crate::args::Scenario;
use crate::ctx::{Ctx, Phase};

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

/// Once a second: a progress line on stderr, or (child) a JSON line for the parent.
pub async fn report(ctx: Rc<Ctx>, mode: Mode) {
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
            (st.up, c.sent, c.delivered, c.error_frames() + c.conn_errors(), p99)
        };
        let phase = match (ctx.args.scenario, ctx.timeline.phase()) {
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
                    line(
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
pub fn line(
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
        crate::report::ms(p99_us)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_format() {
        let l = line(1.0, "running", 10, 20, 5.0, 50.0, 0, 1500);
        assert_eq!(l, "[   1.0s] running  up 10/20  sent 5/s  delivered 50/s  errors 0  p99 1.500ms");
    }
}
