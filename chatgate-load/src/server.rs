//! `--watch-pid`: the cost on the server side of what this run did, read from `/proc`.
//!
//! CPU is taken over exactly the measured window (sending plus draining; for `connect`, the
//! connecting), so connection set-up does not dilute the cost per message. Memory is read
//! before connecting, once everything is connected (and joined), and as the peak (`VmHWM`).

use serde::{Deserialize, Serialize};

/// What the watched processes used. Sums over the pids.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerUsage {
    pub pids: Vec<u32>,
    /// CPU seconds (user + system, all threads) during the measured window.
    pub cpu_s: f64,
    /// Resident memory before this run connected anything.
    pub rss_before_kb: u64,
    /// Resident memory with every connection up.
    pub rss_loaded_kb: u64,
    /// Peak resident memory of the processes' lifetimes.
    pub peak_rss_kb: u64,
}

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on Linux).
const TICKS: f64 = 100.0;

/// utime + stime of `pid`, in ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is parenthesised and may contain spaces: count fields after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// A `/proc/<pid>/status` field in kB (`VmRSS`, `VmHWM`).
pub fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kb(&status, field)
}

fn parse_status_kb(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.split_whitespace().next()?.parse().ok())
}

/// Samples taken as the run goes.
#[derive(Debug, Default)]
pub struct Watch {
    pids: Vec<u32>,
    cpu0: u64,
    usage: ServerUsage,
}

impl Watch {
    /// Starts watching `pids` (no-op when empty); records the memory before connecting.
    pub fn new(pids: &[u32]) -> Watch {
        let mut w = Watch { pids: pids.to_vec(), ..Default::default() };
        w.usage.pids = w.pids.clone();
        w.usage.rss_before_kb = w.sum(|p| status_kb(p, "VmRSS"));
        w
    }

    fn sum(&self, f: impl Fn(u32) -> Option<u64>) -> u64 {
        self.pids.iter().filter_map(|&p| f(p)).sum()
    }

    /// Everything is connected: record the memory.
    pub fn loaded(&mut self) {
        self.usage.rss_loaded_kb = self.sum(|p| status_kb(p, "VmRSS"));
    }

    /// The measured window starts.
    pub fn start(&mut self) {
        self.cpu0 = self.sum(cpu_ticks);
    }

    /// The measured window ends.
    pub fn finish(mut self) -> Option<ServerUsage> {
        if self.pids.is_empty() {
            return None;
        }
        self.usage.cpu_s = self.sum(cpu_ticks).saturating_sub(self.cpu0) as f64 / TICKS;
        self.usage.peak_rss_kb = self.sum(|p| status_kb(p, "VmHWM"));
        Some(self.usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(cpu_ticks(me).is_some());
        assert!(status_kb(me, "VmRSS").is_some_and(|kb| kb > 0));
        let mut w = Watch::new(&[me]);
        w.loaded();
        w.start();
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(50) {}
        let u = w.finish().expect("usage");
        assert!(u.cpu_s >= 0.0 && u.peak_rss_kb >= u.rss_before_kb.min(u.peak_rss_kb));
        assert_eq!(Watch::new(&[]).finish(), None);
    }

    #[test]
    fn status_parsing() {
        let s = "Name:\tchatgate\nVmHWM:\t  123456 kB\nVmRSS:\t   98765 kB\n";
        assert_eq!(parse_status_kb(s, "VmRSS"), Some(98765));
        assert_eq!(parse_status_kb(s, "VmHWM"), Some(123456));
        assert_eq!(parse_status_kb(s, "VmSwap"), None);
    }
}
