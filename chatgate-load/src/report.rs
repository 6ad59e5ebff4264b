//! The final report from merged results: expected deliveries, losses, rates and
//! percentiles as one JSON object (`--json`), the exit verdict, and the table on stderr.

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::args::{Args, Rate, Scenario};
use crate::stats::{Merged, expected};

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
    let unacked = c.sent.saturating_sub(c.answered());
    let errors = c.error_frames();
    let conn_errors = c.conn_errors();

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
    use crate::stats::{Marks, Stats, merge};

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
}
