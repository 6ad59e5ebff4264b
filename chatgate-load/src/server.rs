//! `--watch-pid`: the cost on the server side of what this run did, read from `/proc`.
//!
//! CPU is taken over exactly the measured window (sending plus draining; for `connect`, the
//! connecting), so connection set-up does not dilute the cost per message. Memory is read
//! before connecting, once everything is connected (and joined), and as the peak (`VmHWM`).

use serde::{Deserialize, Serialize};

use crate::procfs::{Proc, TICKS_PER_S, cpu_ticks, status_kb};

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
        w.usage.rss_before_kb = w.sum(|p| status_kb(Proc::Pid(p), "VmRSS"));
        w
    }

    fn sum(&self, f: impl Fn(u32) -> Option<u64>) -> u64 {
        self.pids.iter().filter_map(|&p| f(p)).sum()
    }

    /// Everything is connected: record the memory.
    pub fn loaded(&mut self) {
        self.usage.rss_loaded_kb = self.sum(|p| status_kb(Proc::Pid(p), "VmRSS"));
    }

    /// The measured window starts.
    pub fn start(&mut self) {
        self.cpu0 = self.sum(|p| cpu_ticks(Proc::Pid(p)));
    }

    /// The measured window ends.
    pub fn finish(mut self) -> Option<ServerUsage> {
        if self.pids.is_empty() {
            return None;
        }
        self.usage.cpu_s = self.sum(|p| cpu_ticks(Proc::Pid(p))).saturating_sub(self.cpu0) as f64 / TICKS_PER_S;
        self.usage.peak_rss_kb = self.sum(|p| status_kb(Proc::Pid(p), "VmHWM"));
        Some(self.usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_this_process() {
        let me = std::process::id();
        let mut w = Watch::new(&[me]);
        w.loaded();
        w.start();
        let u = w.finish().expect("usage");
        assert_eq!(u.pids, vec![me]);
        // The peak (VmHWM) is read last and never falls below an earlier RSS.
        assert!(u.cpu_s >= 0.0 && u.rss_loaded_kb > 0 && u.peak_rss_kb >= u.rss_loaded_kb);
        assert_eq!(Watch::new(&[]).finish(), None);
    }
}
