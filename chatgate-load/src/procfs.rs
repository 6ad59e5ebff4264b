//! The few `/proc` readings this tool takes: CPU time and memory of a process.

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on Linux).
pub const TICKS_PER_S: f64 = 100.0;

/// A process to read: this one, or another by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proc {
    Me,
    Pid(u32),
}

impl Proc {
    fn path(self, file: &str) -> String {
        match self {
            Proc::Me => format!("/proc/self/{file}"),
            Proc::Pid(p) => format!("/proc/{p}/{file}"),
        }
    }
}

/// CPU time (user + system, all threads) of `p` so far, in ticks.
pub fn cpu_ticks(p: Proc) -> Option<u64> {
    parse_stat_ticks(&std::fs::read_to_string(p.path("stat")).ok()?)
}

/// CPU seconds of this process so far.
pub fn own_cpu_seconds() -> Option<f64> {
    cpu_ticks(Proc::Me).map(|t| t as f64 / TICKS_PER_S)
}

/// A `/proc/<pid>/status` field in kB (`VmRSS`, `VmHWM`).
pub fn status_kb(p: Proc, field: &str) -> Option<u64> {
    parse_status_kb(&std::fs::read_to_string(p.path("status")).ok()?, field)
}

/// utime + stime from a `stat` line.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    // The command name is parenthesised and may contain spaces: count fields after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn parse_status_kb(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.split_whitespace().next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        assert!(cpu_ticks(Proc::Me).is_some());
        assert!(cpu_ticks(Proc::Pid(std::process::id())).is_some());
        assert!(own_cpu_seconds().is_some_and(|s| s >= 0.0));
        assert!(status_kb(Proc::Me, "VmRSS").is_some_and(|kb| kb > 0));
    }

    #[test]
    fn parsing() {
        let stat = "4242 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1";
        assert_eq!(parse_stat_ticks(stat), Some(300));
        assert_eq!(parse_stat_ticks("4242 (x) S 1"), None);
        let s = "Name:\tchatgate\nVmHWM:\t  123456 kB\nVmRSS:\t   98765 kB\n";
        assert_eq!(parse_status_kb(s, "VmRSS"), Some(98765));
        assert_eq!(parse_status_kb(s, "VmHWM"), Some(123456));
        assert_eq!(parse_status_kb(s, "VmSwap"), None);
    }
}
