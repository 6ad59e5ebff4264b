//! The binary as scripts and CI see it: `--help`/`--version`, exit statuses, and the shape
//! of the `--json` report (scripts/loadtest.sh and benches read its fields by name).
//!
//! The report test needs no gateway: its connections go to a listener that accepts TCP but
//! never upgrades, so every one fails by `--connect-timeout` and the report is complete.
//!
//! An integration test also makes `cargo test` build `target/debug/chatgate-load`, which the
//! smoke step of `.ci/run` (`scripts/loadtest.sh --debug`) runs.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::process::{Command, Output};

use serde_json::Value;

fn load(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chatgate-load")).args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn help_and_version_exit_zero() {
    let v = load(&["--version"]);
    assert_eq!(v.status.code(), Some(0));
    assert_eq!(text(&v.stdout).trim(), format!("chatgate-load {}", env!("CARGO_PKG_VERSION")));
    for flag in ["--help", "-h"] {
        let h = load(&[flag]);
        assert_eq!(h.status.code(), Some(0), "{flag}");
        let out = text(&h.stdout);
        for opt in ["--url", "--rate", "--procs", "--src", "--watch-pid", "--json", "fanout", "mixed"] {
            assert!(out.contains(opt), "{flag} lacks {opt}");
        }
    }
}

#[test]
fn bad_arguments_exit_two() {
    for args in [
        &["fanout", "--bogus"][..],
        &["fanout", "--conns"],
        &["fanout", "--conns", "0"],
        &["nope"],
        &[],
        &["fanout", "--senders", "5", "--conns", "2"],
    ] {
        let o = load(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o.stderr));
        assert!(text(&o.stderr).contains("error:"), "{args:?}");
        assert!(o.stdout.is_empty(), "{args:?}");
    }
    // An unknown flag is named as such, not taken for an option that wants a value.
    let o = load(&["fanout", "--frobnicate"]);
    assert!(text(&o.stderr).contains("unexpected argument '--frobnicate'"), "{}", text(&o.stderr));
}

/// Every field of the report, as scripts read them.
const REPORT: &[&str] = &[
    "acked_offline",
    "acked_sent",
    "bad_request",
    "close_codes",
    "conn_errors",
    "connect_failures",
    "connect_us",
    "connected",
    "connections",
    "connections_per_s",
    "delivered",
    "delivered_direct",
    "delivered_group",
    "delivered_per_s",
    "disconnects",
    "duration_s",
    "errors",
    "excess",
    "expected",
    "groups",
    "join_failures",
    "latency_of",
    "latency_us",
    "lost",
    "not_member",
    "ok",
    "other_errors",
    "out_of_order",
    "procs",
    "rate",
    "rate_limited",
    "replies",
    "requests",
    "scenario",
    "send_lag_us",
    "sent",
    "sent_direct",
    "sent_group",
    "sent_per_s",
    "server",
    "size",
    "tool_cpu_pct",
    "unacked",
    "unavailable",
    "unstamped",
    "urls",
];
const SERVER: &[&str] = &[
    "cpu_s",
    "cpu_s_per_1000_delivered",
    "cpu_us_per_delivery",
    "cpu_us_per_message",
    "peak_rss_kb",
    "pids",
    "rss_before_kb",
    "rss_loaded_kb",
    "rss_per_conn_bytes",
];
const LATENCY: &[&str] = &["count", "max", "mean", "p50", "p90", "p99", "p999"];

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object().unwrap().keys().map(String::as_str).collect()
}

#[test]
fn json_report_has_every_field_and_the_exit_status_follows_the_errors() {
    // Accepts TCP (the kernel's backlog) but never answers the upgrade.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/ws", silent.local_addr().unwrap());
    let me = std::process::id().to_string();
    let base = ["connect", "--url", &url, "--conns", "2", "--hold", "0", "--connect-timeout", "0.3"];
    let run = |extra: &[&str]| {
        let o = load(&[&base[..], &["--json", "--quiet", "--watch-pid", &me], extra].concat());
        let report: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o.stdout)));
        (o.status.code(), report, text(&o.stderr))
    };

    let (code, r, stderr) = run(&[]);
    assert_eq!(code, Some(1), "connection errors beyond --max-conn-errors 0: {stderr}");
    assert_eq!(keys(&r), REPORT.iter().copied().collect());
    assert_eq!(keys(&r["server"]), SERVER.iter().copied().collect());
    for h in ["latency_us", "connect_us", "send_lag_us"] {
        assert_eq!(keys(&r[h]), LATENCY.iter().copied().collect(), "{h}");
    }
    assert_eq!(
        (r["scenario"].as_str(), r["connections"].as_u64(), r["connect_failures"].as_u64()),
        (Some("connect"), Some(2), Some(2))
    );
    assert_eq!(
        (r["ok"].as_bool(), r["urls"][0].as_str(), r["procs"].as_u64()),
        (Some(false), Some(url.as_str()), Some(1))
    );
    assert_eq!(r["conn_errors"]["no welcome within 300ms"], 2, "{}", r["conn_errors"]);
    assert!(stderr.contains("FAILED"), "{stderr}");

    let (code, r, _) = run(&["--max-conn-errors", "2"]);
    assert_eq!((code, r["ok"].as_bool()), (Some(0), Some(true)));
}
