//! `--procs N`: the parent re-executes itself N times with `--child I/N --run-id ID`,
//! holds a start barrier (children print `{"kind":"ready"}`, the parent answers
//! `go <epoch µs>` on their stdin), prints combined progress from the children's
//! `{"kind":"progress",..}` lines, and collects their `{"kind":"result",..}` lines.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::args::Args;
use crate::stats::ProcResult;
use crate::timer::Clock;

/// The children's arguments: ours without `--procs`/`--json`, plus the hidden ones.
pub fn child_args(raw: &[String], index: usize, procs: usize, run_id: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = raw.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--procs" | "--child" | "--run-id" => {
                it.next();
            }
            "--json" => {}
            s if s.starts_with("--procs=") || s.starts_with("--child=") || s.starts_with("--run-id=") => {}
            _ => out.push(a.clone()),
        }
    }
    out.extend(["--child".into(), format!("{index}/{procs}"), "--run-id".into(), run_id.to_string()]);
    out
}

/// A line from child `i` (`None`: its stdout closed).
type ChildLine = (usize, Option<String>);

/// Latest progress of one child.
#[derive(Default, Clone)]
struct Progress {
    phase: String,
    up: u64,
    sent: u64,
    delivered: u64,
    errors: u64,
    p99: u64,
}

/// Runs the children to the end and returns their results.
pub fn run(args: &Args, raw: &[String]) -> Result<Vec<ProcResult>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(parent(args, raw))
}

async fn parent(args: &Args, raw: &[String]) -> Result<Vec<ProcResult>, String> {
    let n = args.procs;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find my own executable: {e}"))?;
    let run_id = format!("lt{:06x}", fastrand::u32(..1 << 24));
    let (tx, mut rx) = mpsc::unbounded_channel::<ChildLine>();
    let mut children: Vec<Child> = Vec::new();
    let mut stdins: Vec<Option<ChildStdin>> = Vec::new();
    for i in 0..n {
        let mut child = Command::new(&exe)
            .args(child_args(raw, i, n, &run_id))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start child {i}: {e}"))?;
        stdins.push(child.stdin.take());
        let stdout = child.stdout.take().ok_or("child stdout missing")?;
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send((i, Some(line))).is_err() {
                    return;
                }
            }
            let _ = tx.send((i, None));
        });
        children.push(child);
    }
    drop(tx);

    let clock = Clock::new();
    let t0 = clock.now_ns();
    let mut ready = 0;
    let mut closed = vec![false; n];
    let mut results: Vec<Option<ProcResult>> = vec![None; n];
    let mut progress = vec![Progress::default(); n];
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let (mut prev_sent, mut prev_delivered, mut prev_t) = (0u64, 0u64, t0);
    let mut went = false;
    while closed.iter().any(|c| !c) {
        tokio::select! {
            msg = rx.recv() => {
                let Some((i, line)) = msg else { break };
                let Some(line) = line else {
                    closed[i] = true;
                    if !went {
                        return Err(format!("child {i} ended before it was ready (see its messages above)"));
                    }
                    continue;
                };
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    eprintln!("child {i}: {line}");
                    continue;
                };
                match v["kind"].as_str() {
                    Some("ready") => {
                        ready += 1;
                        if ready == n {
                            went = true;
                            // A moment in the future so every child sees it before it passes.
                            let go = clock.now_epoch_us() + 100_000 + 2_000 * n as u64;
                            for (j, stdin) in stdins.iter_mut().enumerate() {
                                if let Some(s) = stdin {
                                    s.write_all(format!("go {go}\n").as_bytes())
                                        .await
                                        .map_err(|e| format!("cannot signal child {j}: {e}"))?;
                                    let _ = s.flush().await;
                                }
                            }
                        }
                    }
                    Some("progress") => {
                        progress[i] = Progress {
                            phase: v["phase"].as_str().unwrap_or("").to_string(),
                            up: v["up"].as_u64().unwrap_or(0),
                            sent: v["sent"].as_u64().unwrap_or(0),
                            delivered: v["delivered"].as_u64().unwrap_or(0),
                            errors: v["errors"].as_u64().unwrap_or(0),
                            p99: v["p99"].as_u64().unwrap_or(0),
                        };
                    }
                    Some("result") => {
                        let r = serde_json::from_value(v["result"].clone())
                            .map_err(|e| format!("child {i}: unreadable result: {e}"))?;
                        results[i] = Some(r);
                    }
                    _ => eprintln!("child {i}: {line}"),
                }
            }
            _ = tick.tick() => {
                if args.quiet {
                    continue;
                }
                let now = clock.now_ns();
                let dt = (now - prev_t) as f64 / 1e9;
                let sum = |f: fn(&Progress) -> u64| progress.iter().map(f).sum::<u64>();
                let (sent, delivered) = (sum(|p| p.sent), sum(|p| p.delivered));
                eprintln!(
                    "{}",
                    crate::progress::line(
                        (now - t0) as f64 / 1e9,
                        progress.first().map_or("", |p| p.phase.as_str()),
                        sum(|p| p.up),
                        args.conns as u64,
                        sent.saturating_sub(prev_sent) as f64 / dt,
                        delivered.saturating_sub(prev_delivered) as f64 / dt,
                        sum(|p| p.errors),
                        progress.iter().map(|p| p.p99).max().unwrap_or(0),
                    )
                );
                (prev_sent, prev_delivered, prev_t) = (sent, delivered, now);
            }
        }
    }
    // Close their stdin so their reader threads end, then reap them.
    stdins.clear();
    for (i, child) in children.iter_mut().enumerate() {
        match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => return Err(format!("child {i} failed: {status}")),
            Ok(Err(e)) => return Err(format!("child {i}: {e}")),
            Err(_) => return Err(format!("child {i} did not exit")),
        }
    }
    results.into_iter().enumerate().map(|(i, r)| r.ok_or_else(|| format!("child {i} printed no result"))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_args_strip_and_add() {
        let raw: Vec<String> =
            ["fanout", "--procs", "3", "--json", "--conns", "10", "--procs=3"].iter().map(|s| s.to_string()).collect();
        assert_eq!(
            child_args(&raw, 1, 3, "ltabc"),
            vec!["fanout", "--conns", "10", "--child", "1/3", "--run-id", "ltabc"]
        );
    }
}
