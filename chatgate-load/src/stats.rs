//! Counting: live per-process statistics, the per-process result that children print,
//! merging results, and the final report (expected deliveries, losses, percentiles).

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::args::{Args, Rate, Scenario};

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

fn percentiles(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({"p50": 0, "p90": 0, "p99": 0, "p999": 0, "max": 0, "mean": 0.0, "count": 0});
    }
    json!({
        "p50": h.value_at_quantile(0.5),
        "p90": h.value_at_quantile(0.9),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
        "mean": (h.mean() * 10.0).round() / 10.0,
        "count": h.len(),
    })
}

fn secs(us: u64) -> f64 {
    us as f64 / 1e6
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The final numbers of a run.
pub struct Summary {
    pub json: Value,
    /// Reasons for a non-zero exit (empty: success).
    pub failures: Vec<String>,
    /// Notable but not failing observations.
    pub warnings: Vec<String>,
}

/// Computes the report from merged results.
pub fn summarize(args: &Args, m: &Merged) -> Summary {
    let c = &m.r.c;
    let mk = &m.r.marks;
    let expected = expected(c.acked_sent_direct, &m.r.group_members, &m.r.group_acked);
    let lost = expected.saturating_sub(c.delivered);
    let excess = c.delivered.saturating_sub(expected);
    let answered = c.acked_sent + c.acked_offline + c.msg_errors;
    let unacked = c.sent.saturating_sub(answered);
    let errors = c.err_unavailable + c.err_rate_limited + c.err_not_member + c.err_bad_request + c.err_other;
    let conn_errors = c.connect_failures + c.join_failures + c.disconnects;

    let connect_secs = secs(mk.connect_end.saturating_sub(mk.connect_start));
    let connections_per_s = if connect_secs > 0.0 { c.connected as f64 / connect_secs } else { 0.0 };
    let connect_scenario = args.scenario == Scenario::Connect;
    let duration = if connect_scenario { connect_secs } else { secs(mk.send_end.saturating_sub(mk.send_start)) };
    // Deliveries keep arriving after the last send; rate them over the span they took.
    let delivery_span = duration.max(secs(mk.last_delivery.saturating_sub(mk.send_start)));
    let per_s = |n: u64, d: f64| if d > 0.0 { round3(n as f64 / d) } else { 0.0 };
    let rate = match args.rate {
        _ if connect_scenario => Value::Null,
        Rate::Max => json!("max"),
        Rate::PerSec(r) => json!(r),
    };
    let connect_p = percentiles(&m.connect);
    let latency_p = if connect_scenario { connect_p.clone() } else { percentiles(&m.latency) };

    let json = json!({
        "scenario": args.scenario.name(),
        "urls": args.urls,
        "procs": args.procs,
        "connections": m.r.conns,
        "connected": c.connected,
        "connect_failures": c.connect_failures,
        "join_failures": c.join_failures,
        "disconnects": c.disconnects,
        "connections_per_s": round3(connections_per_s),
        "connect_us": connect_p,
        "groups": if matches!(args.scenario, Scenario::Fanout | Scenario::Mixed) { args.groups } else { 0 },
        "rate": rate,
        "size": args.size,
        "duration_s": round3(duration),
        "sent": c.sent,
        "sent_group": c.sent_group,
        "sent_direct": c.sent_direct,
        "sent_per_s": per_s(c.sent, duration),
        "acked_sent": c.acked_sent,
        "acked_offline": c.acked_offline,
        "unacked": unacked,
        "errors": errors,
        "unavailable": c.err_unavailable,
        "rate_limited": c.err_rate_limited,
        "not_member": c.err_not_member,
        "bad_request": c.err_bad_request,
        "other_errors": c.err_other,
        "expected": expected,
        "delivered": c.delivered,
        "delivered_group": c.delivered_group,
        "delivered_direct": c.delivered_direct,
        "lost": lost,
        "excess": excess,
        "out_of_order": c.out_of_order,
        "unstamped": c.unstamped,
        "delivered_per_s": per_s(c.delivered, delivery_span),
        "latency_of": if connect_scenario { "connect" } else { "message" },
        "latency_us": latency_p,
        "send_lag_us": percentiles(&m.send_lag),
        "requests": c.requests,
        "replies": c.replies,
        "tool_cpu_pct": m.r.cpu_pct,
        "close_codes": m.r.close_codes,
        "conn_errors": m.r.conn_errors,
    });

    let mut failures = Vec::new();
    if lost > 0 {
        failures.push(format!("{lost} of {expected} expected deliveries never arrived"));
    }
    if conn_errors > args.max_conn_errors {
        failures.push(format!(
            "{conn_errors} connection errors ({} failed connects, {} failed joins, {} disconnects) > --max-conn-errors {}",
            c.connect_failures, c.join_failures, c.disconnects, args.max_conn_errors
        ));
    }
    let mut warnings = Vec::new();
    if unacked > 0 {
        warnings.push(format!("{unacked} messages got neither an ack nor an error"));
    }
    if excess > 0 {
        warnings
            .push(format!("{excess} deliveries more than expected (duplicates, or deliveries of un-acked messages)"));
    }
    if c.out_of_order > 0 {
        warnings.push(format!("{} deliveries out of order or duplicated", c.out_of_order));
    }
    if errors > 0 {
        warnings.push(format!("{errors} error frames (see the error counts)"));
    }
    if let Some(cpu) = m.r.cpu_pct.filter(|&c| c >= 90.0) {
        warnings.push(format!(
            "a load process used {cpu:.0}% of a core: latencies include its own queueing \
             (spread the load with --procs on more cores, or over more machines)"
        ));
    }
    let mut json = json;
    if let Some(u) = &m.r.server {
        let per = |n: u64| (n > 0).then(|| (u.cpu_s * 1e6 / n as f64 * 100.0).round() / 100.0);
        let connected = c.connected.max(1);
        json["server"] = json!({
            "pids": u.pids,
            "cpu_s": u.cpu_s,
            "cpu_us_per_delivery": per(c.delivered),
            "cpu_us_per_message": per(c.sent),
            "cpu_s_per_1000_delivered": (c.delivered > 0).then(|| u.cpu_s * 1000.0 / c.delivered as f64),
            "rss_before_kb": u.rss_before_kb,
            "rss_loaded_kb": u.rss_loaded_kb,
            "peak_rss_kb": u.peak_rss_kb,
            "rss_per_conn_bytes": u.rss_loaded_kb.saturating_sub(u.rss_before_kb) * 1024 / connected,
        });
    }
    json["ok"] = json!(failures.is_empty());
    Summary { json, failures, warnings }
}

/// Milliseconds with sensible precision, from µs.
pub fn ms(us: u64) -> String {
    let v = us as f64 / 1000.0;
    if v < 10.0 {
        format!("{v:.3}ms")
    } else if v < 1000.0 {
        format!("{v:.1}ms")
    } else {
        format!("{:.2}s", v / 1000.0)
    }
}

/// The human-readable table for stderr.
pub fn table(s: &Summary) -> String {
    let j = &s.json;
    let n = |k: &str| j[k].as_u64().unwrap_or(0);
    let f = |k: &str| j[k].as_f64().unwrap_or(0.0);
    let p = |k: &str| {
        let h = &j[k];
        let g = |q: &str| ms(h[q].as_u64().unwrap_or(0));
        format!("p50 {}  p90 {}  p99 {}  p99.9 {}  max {}", g("p50"), g("p90"), g("p99"), g("p999"), g("max"))
    };
    let mut out = String::new();
    let mut line = |l: String| {
        out.push_str(&l);
        out.push('\n');
    };
    line(format!(
        "== chatgate-load {}: {} connections over {} url(s), {} process(es)",
        j["scenario"].as_str().unwrap_or(""),
        n("connections"),
        j["urls"].as_array().map_or(0, Vec::len),
        n("procs")
    ));
    line(format!(
        "  connect     {} ok, {} failed, {} join failures, {} disconnects; {:.0} conn/s",
        n("connected"),
        n("connect_failures"),
        n("join_failures"),
        n("disconnects"),
        f("connections_per_s")
    ));
    line(format!("  handshake   {}", p("connect_us")));
    if j["scenario"] != "connect" {
        let rate = j["rate"].as_str().map_or_else(|| format!("{}/s", j["rate"]), str::to_string);
        line(format!("  duration    {:.2}s at rate {rate} ({} B content)", f("duration_s"), n("size")));
        line(format!(
            "  sent        {} ({:.0}/s): acked sent {}, offline {}, unacked {}",
            n("sent"),
            f("sent_per_s"),
            n("acked_sent"),
            n("acked_offline"),
            n("unacked")
        ));
        line(format!(
            "  delivered   {} ({:.0}/s) of {} expected: lost {}, excess {}, out of order {}",
            n("delivered"),
            f("delivered_per_s"),
            n("expected"),
            n("lost"),
            n("excess"),
            n("out_of_order")
        ));
        line(format!("  latency     {}", p("latency_us")));
        if j["send_lag_us"]["count"].as_u64().unwrap_or(0) > 0 {
            line(format!("  send lag    {}", p("send_lag_us")));
        }
        if n("requests") > 0 {
            line(format!("  requests    {} ({} replies)", n("requests"), n("replies")));
        }
    }
    if let Some(cpu) = j["tool_cpu_pct"].as_f64() {
        line(format!("  tool cpu    {cpu:.1}% of one core (busiest process)"));
    }
    if let Some(s) = j.get("server") {
        let fmt_opt = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.2}"));
        line(format!(
            "  server cpu  {:.2} s: {} us per delivery, {} us per message sent",
            s["cpu_s"].as_f64().unwrap_or(0.0),
            fmt_opt(&s["cpu_us_per_delivery"]),
            fmt_opt(&s["cpu_us_per_message"])
        ));
        line(format!(
            "  server mem  {} kB before, {} kB loaded ({} B per connection), peak {} kB",
            s["rss_before_kb"], s["rss_loaded_kb"], s["rss_per_conn_bytes"], s["peak_rss_kb"]
        ));
    }
    line(format!(
        "  errors      {} (unavailable {}, rate_limited {}, not_member {}, bad_request {}, other {})",
        n("errors"),
        n("unavailable"),
        n("rate_limited"),
        n("not_member"),
        n("bad_request"),
        n("other_errors")
    ));
    if let Some(codes) = j["close_codes"].as_object().filter(|o| !o.is_empty()) {
        line(format!("  closed by server: {}", Value::Object(codes.clone())));
    }
    if let Some(errs) = j["conn_errors"].as_object() {
        for (msg, count) in errs {
            line(format!("  conn error  {count} x {msg}"));
        }
    }
    for w in &s.warnings {
        line(format!("  warning     {w}"));
    }
    for e in &s.failures {
        line(format!("  FAILED      {e}"));
    }
    if s.failures.is_empty() {
        line("  result      OK".to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::test_args as args;

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
    fn merge_adds_counts_and_groups() {
        let mut s0 = Stats::new(2);
        s0.c.sent = 5;
        s0.c.acked_sent = 5;
        s0.c.delivered = 7;
        s0.group_members = vec![2, 1];
        s0.group_acked = vec![5, 0];
        s0.marks =
            Marks { connect_start: 100, connect_end: 200, send_start: 300, send_end: 1_300, last_delivery: 1_350 };
        s0.conn_error("x".into());
        let mut s1 = Stats::new(2);
        s1.c.delivered = 8;
        s1.group_members = vec![2, 2];
        s1.marks =
            Marks { connect_start: 90, connect_end: 250, send_start: 301, send_end: 1_301, last_delivery: 1_400 };
        s1.conn_error("x".into());
        let (mut r0, mut r1) = (s0.result(3), s1.result(4));
        r0.cpu_pct = Some(40.0);
        r1.cpu_pct = Some(95.5);
        let m = merge(&[r0, r1]);
        assert_eq!(m.r.cpu_pct, Some(95.5));
        assert_eq!(m.r.conns, 7);
        assert_eq!(m.r.c.delivered, 15);
        assert_eq!(m.r.group_members, vec![4, 3]);
        assert_eq!(m.r.conn_errors["x"], 2);
        assert_eq!(m.r.marks.connect_start, 90);
        assert_eq!(m.r.marks.connect_end, 250);
        assert_eq!(m.r.marks.send_start, 300);
        assert_eq!(m.r.marks.last_delivery, 1_400);
        // 5 acks to a 4-member group → 15 expected; 15 delivered.
        let s = summarize(&args(&["fanout", "--groups", "2"]), &m);
        assert_eq!(s.json["expected"], 15);
        assert_eq!(s.json["lost"], 0);
        // conn_error counts as a sample only; failures are from the counters.
        assert!(s.failures.is_empty(), "{:?}", s.failures);
        assert_eq!(s.json["ok"], true);
    }

    #[test]
    fn failures_and_report() {
        let mut st = Stats::new(1);
        st.c.sent = 10;
        st.c.acked_sent = 10;
        st.c.acked_sent_direct = 10;
        st.c.delivered = 9;
        st.c.connect_failures = 1;
        st.marks = Marks { send_start: 1_000_000, send_end: 3_000_000, last_delivery: 3_000_000, ..Default::default() };
        for v in 1..=100 {
            st.latency(v * 10);
        }
        let m = merge(&[st.result(2)]);
        let s = summarize(&args(&["direct", "--pairs", "1"]), &m);
        assert_eq!(s.json["lost"], 1);
        assert_eq!(s.failures.len(), 2);
        assert_eq!(s.json["ok"], false);
        assert_eq!(s.json["duration_s"], 2.0);
        assert_eq!(s.json["delivered_per_s"], 4.5);
        assert_eq!(s.json["latency_us"]["p50"], 500);
        assert_eq!(s.json["latency_us"]["max"], 1000);
        let t = table(&s);
        assert!(t.contains("FAILED"));
        // --max-conn-errors tolerates the failed connect.
        let s = summarize(&args(&["direct", "--pairs", "1", "--max-conn-errors", "1"]), &m);
        assert_eq!(s.failures.len(), 1);
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
