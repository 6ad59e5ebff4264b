//! Counting: live per-process statistics, the per-process result that children print,
//! and merging results (the report on them is [`crate::report`]).

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Histogram range: 1 µs .. 60 s, 3 significant digits.
pub const HIST_LOW: u64 = 1;
pub const HIST_HIGH: u64 = 60_000_000;
pub const HIST_SIGFIG: u8 = 3;

/// A latency histogram with this tool's bounds.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(HIST_LOW, HIST_HIGH, HIST_SIGFIG).expect("constant histogram bounds are valid")
}

/// Records `us`, clamped into the histogram's range.
#[inline]
pub fn record(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.clamp(HIST_LOW, HIST_HIGH));
}

/// Compact form for a child's result line: `[value, count]` per recorded bucket.
pub fn hist_pairs(h: &Histogram<u64>) -> Vec<[u64; 2]> {
    h.iter_recorded().map(|v| [v.value_iterated_to(), v.count_at_value()]).collect()
}

/// Adds pairs from [`hist_pairs`] into `h`.
pub fn hist_add_pairs(h: &mut Histogram<u64>, pairs: &[[u64; 2]]) {
    for &[v, n] in pairs {
        // Values outside the range cannot come from hist_pairs of a histogram like ours;
        // clamp rather than fail on a hand-made line.
        let _ = h.record_n(v.clamp(HIST_LOW, HIST_HIGH), n);
    }
}

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// Event counts of one process (or, merged, of all).
        #[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(default)]
        pub struct Counters { $( $(#[$doc])* pub $name: u64, )* }

        impl Counters {
            /// Adds every count of `o`.
            pub fn add(&mut self, o: &Counters) { $( self.$name += o.$name; )* }
        }
    };
}

counters! {
    /// Connections attempted.
    attempts,
    /// Connections that got their `welcome`.
    connected,
    /// Connections that failed before their `welcome` (TCP, upgrade, timeout).
    connect_failures,
    /// `join` requests answered with an error.
    join_failures,
    /// Connections that ended before the closing phase.
    disconnects,
    /// Message frames sent (group + direct).
    sent,
    sent_group,
    sent_direct,
    /// Acks with status `sent`, all and for direct messages.
    acked_sent,
    acked_sent_direct,
    /// Acks with status `offline`.
    acked_offline,
    /// Error replies to message frames.
    msg_errors,
    /// Error frames by code.
    err_unavailable,
    err_rate_limited,
    err_not_member,
    err_bad_request,
    err_other,
    /// `online`/`members`/`ping` requests and their replies (mixed).
    requests,
    replies,
    /// Delivered messages, all and by kind.
    delivered,
    delivered_group,
    delivered_direct,
    /// Deliveries whose per-sender sequence did not increase (duplicate or reordered).
    out_of_order,
    /// Deliveries without a timestamp of ours (not in the latency histogram).
    unstamped,
}

impl Counters {
    /// Error frames, all codes.
    pub fn error_frames(&self) -> u64 {
        self.err_unavailable + self.err_rate_limited + self.err_not_member + self.err_bad_request + self.err_other
    }

    /// Connection errors: failed connects or joins, and early disconnects.
    pub fn conn_errors(&self) -> u64 {
        self.connect_failures + self.join_failures + self.disconnects
    }

    /// Message frames answered: acked either way, or refused.
    pub fn answered(&self) -> u64 {
        self.acked_sent + self.acked_offline + self.msg_errors
    }
}

/// Moments of a run, epoch microseconds (0 = not reached).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Marks {
    pub connect_start: u64,
    pub connect_end: u64,
    pub send_start: u64,
    pub send_end: u64,
    pub last_delivery: u64,
}

impl Marks {
    fn merge(&mut self, o: &Marks) {
        let min = |a: u64, b: u64| {
            if a == 0 {
                b
            } else if b == 0 {
                a
            } else {
                a.min(b)
            }
        };
        self.connect_start = min(self.connect_start, o.connect_start);
        self.send_start = min(self.send_start, o.send_start);
        self.connect_end = self.connect_end.max(o.connect_end);
        self.send_end = self.send_end.max(o.send_end);
        self.last_delivery = self.last_delivery.max(o.last_delivery);
    }
}

/// At most this many distinct error messages are kept.
const MAX_ERROR_KINDS: usize = 32;

/// Live statistics of one process, shared by its connection tasks (`Rc<RefCell<Stats>>`).
pub struct Stats {
    pub c: Counters,
    /// Connections currently open.
    pub up: u64,
    /// End-to-end message latency, µs.
    pub latency: Histogram<u64>,
    /// TCP connect + upgrade + welcome, µs.
    pub connect: Histogram<u64>,
    /// How late sends went out after their scheduled time, µs.
    pub send_lag: Histogram<u64>,
    /// Members per group (joins answered `joined`) in this process.
    pub group_members: Vec<u64>,
    /// Acks `sent` per group in this process.
    pub group_acked: Vec<u64>,
    pub marks: Marks,
    /// Connection error messages and how often each occurred.
    pub conn_errors: BTreeMap<String, u64>,
    /// Close codes received from the server before the closing phase.
    pub close_codes: BTreeMap<String, u64>,
}

impl Stats {
    pub fn new(groups: usize) -> Stats {
        Stats {
            c: Counters::default(),
            up: 0,
            latency: histogram(),
            connect: histogram(),
            send_lag: histogram(),
            group_members: vec![0; groups],
            group_acked: vec![0; groups],
            marks: Marks::default(),
            conn_errors: BTreeMap::new(),
            close_codes: BTreeMap::new(),
        }
    }

    /// Records one delivery latency.
    #[inline]
    pub fn latency(&mut self, us: u64) {
        record(&mut self.latency, us);
    }

    /// Remembers a connection error message (the first [`MAX_ERROR_KINDS`] kinds).
    pub fn conn_error(&mut self, msg: String) {
        if let Some(n) = self.conn_errors.get_mut(&msg) {
            *n += 1;
        } else if self.conn_errors.len() < MAX_ERROR_KINDS {
            self.conn_errors.insert(msg, 1);
        } else {
            *self.conn_errors.entry("(other errors)".into()).or_default() += 1;
        }
    }

    /// Counts an error frame by its code.
    pub fn error_code(&mut self, code: &[u8]) {
        match code {
            b"unavailable" => self.c.err_unavailable += 1,
            b"rate_limited" => self.c.err_rate_limited += 1,
            b"not_member" => self.c.err_not_member += 1,
            b"bad_request" => self.c.err_bad_request += 1,
            _ => self.c.err_other += 1,
        }
    }

    /// The serialisable result of this process.
    pub fn result(&self, conns: usize) -> ProcResult {
        ProcResult {
            conns: conns as u64,
            c: self.c.clone(),
            group_members: self.group_members.clone(),
            group_acked: self.group_acked.clone(),
            latency: hist_pairs(&self.latency),
            connect: hist_pairs(&self.connect),
            send_lag: hist_pairs(&self.send_lag),
            marks: self.marks,
            conn_errors: self.conn_errors.clone(),
            close_codes: self.close_codes.clone(),
            cpu_pct: None,
            server: None,
        }
    }
}

/// What one process reports (children: one JSON line); merged over processes.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcResult {
    /// Connections planned in this process.
    pub conns: u64,
    pub c: Counters,
    pub group_members: Vec<u64>,
    pub group_acked: Vec<u64>,
    pub latency: Vec<[u64; 2]>,
    pub connect: Vec<[u64; 2]>,
    pub send_lag: Vec<[u64; 2]>,
    pub marks: Marks,
    pub conn_errors: BTreeMap<String, u64>,
    pub close_codes: BTreeMap<String, u64>,
    /// CPU use of the process while sending (connect: connecting), % of one core.
    pub cpu_pct: Option<f64>,
    /// `--watch-pid`: the server processes over the same window.
    pub server: Option<crate::server::ServerUsage>,
}

fn add_vec(a: &mut Vec<u64>, b: &[u64]) {
    if a.len() < b.len() {
        a.resize(b.len(), 0);
    }
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

fn add_map(a: &mut BTreeMap<String, u64>, b: &BTreeMap<String, u64>) {
    for (k, v) in b {
        *a.entry(k.clone()).or_default() += v;
    }
}

/// Histograms of merged results.
pub struct Merged {
    pub r: ProcResult,
    pub latency: Histogram<u64>,
    pub connect: Histogram<u64>,
    pub send_lag: Histogram<u64>,
}

/// Adds up the results of all processes: counts, per-group vectors and histograms.
pub fn merge(results: &[ProcResult]) -> Merged {
    let mut m = Merged { r: ProcResult::default(), latency: histogram(), connect: histogram(), send_lag: histogram() };
    for r in results {
        m.r.conns += r.conns;
        m.r.c.add(&r.c);
        add_vec(&mut m.r.group_members, &r.group_members);
        add_vec(&mut m.r.group_acked, &r.group_acked);
        m.r.marks.merge(&r.marks);
        add_map(&mut m.r.conn_errors, &r.conn_errors);
        add_map(&mut m.r.close_codes, &r.close_codes);
        // Every process watched the same servers over the same window: keep one reading.
        if m.r.server.is_none() {
            m.r.server.clone_from(&r.server);
        }
        m.r.cpu_pct = match (m.r.cpu_pct, r.cpu_pct) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        hist_add_pairs(&mut m.latency, &r.latency);
        hist_add_pairs(&mut m.connect, &r.connect);
        hist_add_pairs(&mut m.send_lag, &r.send_lag);
    }
    m
}

/// Deliveries owed for what was acked `sent`: one per direct message, and for a group
/// message one per member except the sending connection. Inputs are sums over processes.
pub fn expected(direct_acked: u64, group_members: &[u64], group_acked: &[u64]) -> u64 {
    let group: u64 = group_acked
        .iter()
        .zip(group_members.iter().chain(std::iter::repeat(&0)))
        .map(|(a, m)| a * m.saturating_sub(1))
        .sum();
    direct_acked + group
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_counts() {
        // 10 direct acks; group 0 has 5 members (4 receive each message), group 1 has 1
        // member (the sender only: nobody receives).
        assert_eq!(expected(10, &[5, 1], &[3, 7]), 10 + 3 * 4);
        assert_eq!(expected(0, &[], &[]), 0);
        // Members summed over two processes: 3 + 4 = 7 → 6 recipients per message.
        let mut members = vec![3, 0];
        add_vec(&mut members, &[4, 2]);
        assert_eq!(expected(0, &members, &[2, 1]), 2 * 6 + 1);
        // A group with acks but no recorded members (cannot happen, must not underflow).
        assert_eq!(expected(0, &[0], &[5]), 0);
        assert_eq!(expected(0, &[3], &[1, 1]), 2);
    }

    #[test]
    fn histogram_merge_is_exact_per_bucket() {
        let mut a = histogram();
        let mut b = histogram();
        let mut both = histogram();
        for v in [1, 2, 3, 150, 999, 1000, 1001, 123_456, 59_000_000, 60_000_000] {
            record(&mut a, v);
            record(&mut both, v);
        }
        for v in [0, 5, 77, 1_234, 999_999, 70_000_000] {
            record(&mut b, v);
            record(&mut both, v);
        }
        let ra = ProcResult { latency: hist_pairs(&a), ..Default::default() };
        let rb = ProcResult { latency: hist_pairs(&b), ..Default::default() };
        // Through JSON, as children do.
        let ra: ProcResult = serde_json::from_str(&serde_json::to_string(&ra).unwrap()).unwrap();
        let m = merge(&[ra, rb]);
        assert_eq!(m.latency.len(), both.len());
        for q in [0.0, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(m.latency.value_at_quantile(q), both.value_at_quantile(q), "q={q}");
        }
        assert_eq!(m.latency.max(), both.max());
        assert_eq!(m.latency.min(), 1);
    }

    #[test]
    fn error_sample_is_bounded() {
        let mut s = Stats::new(0);
        for i in 0..100 {
            s.conn_error(format!("e{i}"));
        }
        assert_eq!(s.conn_errors.len(), MAX_ERROR_KINDS + 1);
        assert_eq!(s.conn_errors["(other errors)"], 100 - MAX_ERROR_KINDS as u64);
    }
}
