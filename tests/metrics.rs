//! `GET /metrics`: the Prometheus exposition moves with real traffic, and the Grafana
//! dashboard queries only metrics that exist.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::collections::BTreeSet;

use common::inprocess::InProcess;
use common::*;
use serde_json::json;

/// `name{labels} value` lines of an exposition, as (series, value).
fn samples(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn value(text: &str, series: &str) -> f64 {
    samples(text).into_iter().find(|(s, _)| s == series).map_or_else(|| panic!("no {series} in\n{text}"), |(_, v)| v)
}

#[tokio::test]
async fn metrics_move_with_traffic() {
    let gw = Gateway::start().await;
    let r = gw.http("GET", "/metrics", &[], "").await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap_or_default().starts_with("text/plain; version=0.0.4"));
    let before = r.body;
    assert_eq!(value(&before, "chatgate_connections"), 0.0);

    let mut a = gw.client().await;
    let mut b = gw.client().await;
    a.join("g").await;
    b.join("g").await;
    assert_eq!(a.request(json!({"type":"once","to":b.user,"content":1}), "1").await["status"], "sent");
    assert_eq!(a.request(json!({"type":"once","to":"nobody","content":1}), "2").await["status"], "offline");
    assert_eq!(a.request(json!({"type":"group","to":"g","content":2}), "3").await["status"], "sent");
    a.send_text("not json").await;
    assert_eq!(a.recv_type("error").await["code"], "bad_request");
    let text = gw.http("GET", "/metrics", &[], "").await.body;
    assert_eq!(value(&text, "chatgate_connections"), 2.0);
    assert_eq!(value(&text, "chatgate_connections_accepted_total"), 2.0);
    assert_eq!(value(&text, r#"chatgate_frames_received_total{type="once"}"#), 2.0);
    assert_eq!(value(&text, r#"chatgate_frames_received_total{type="group"}"#), 1.0);
    assert_eq!(value(&text, r#"chatgate_frames_received_total{type="join"}"#), 2.0);
    assert_eq!(value(&text, r#"chatgate_frames_received_total{type="invalid"}"#), 1.0);
    assert_eq!(value(&text, r#"chatgate_acks_total{status="sent"}"#), 2.0);
    assert_eq!(value(&text, r#"chatgate_acks_total{status="offline"}"#), 1.0);
    assert_eq!(value(&text, r#"chatgate_errors_total{code="bad_request"}"#), 1.0);
    // b got the direct message, the group message and a's join event after its own.
    assert!(value(&text, "chatgate_messages_delivered_total") >= 3.0);
    assert_eq!(value(&text, "chatgate_routing_latency_seconds_count"), 3.0);
    assert!(value(&text, "chatgate_uptime_seconds") >= 0.0);
    assert!(text.contains("chatgate_build_info{version=\""));

    // A close frame without a status code: 1005.
    b.close().await;
    eventually("b's disconnect counted", || async {
        let text = gw.http("GET", "/metrics", &[], "").await.body;
        value(&text, r#"chatgate_disconnects_total{code="1005"}"#) == 1.0
    })
    .await;
    drop(a);
}

#[tokio::test]
async fn refusals_are_counted_by_reason() {
    let gw = Gateway::start_with(|c| {
        c.jwt_secret = Some("s".into());
        c.max_connections = 1;
    })
    .await;
    assert!(tokio_tungstenite::connect_async(gw.url()).await.is_err());
    let r = gw.http("GET", "/ws", &[], "").await;
    assert_eq!(r.status, 426);
    let text = gw.http("GET", "/metrics", &[], "").await.body;
    assert_eq!(value(&text, r#"chatgate_connections_refused_total{reason="unauthorized"}"#), 1.0);
    assert_eq!(value(&text, r#"chatgate_connections_refused_total{reason="bad_request"}"#), 1.0);
}

#[tokio::test]
async fn broker_metrics_move_across_nodes() {
    let c = InProcess::start(2, std::time::Duration::from_millis(300), |_| {}).await;
    let mut a = c.client(0).await;
    let mut b = c.client(1).await;
    assert_eq!(a.request(json!({"type":"once","to":b.user,"content":1}), "x").await["status"], "sent");
    b.recv_type("once").await;
    let sender = c.nodes[0].http("GET", "/metrics", &[], "").await.body;
    assert!(value(&sender, "chatgate_broker_published_total") >= 1.0);
    assert!(value(&sender, "chatgate_broker_frames_per_message_count") >= 1.0);
    assert!(value(&sender, "chatgate_broker_confirm_latency_seconds_count") >= 1.0);
    // Confirmed and acked: nothing waits in the dispatcher shards.
    assert_eq!(value(&sender, "chatgate_dispatch_queued"), 0.0);
    let receiver = c.nodes[1].http("GET", "/metrics", &[], "").await.body;
    assert!(value(&receiver, "chatgate_broker_consumed_total") >= 1.0);
}

/// Every metric the Grafana dashboard queries is in the exposition.
#[tokio::test]
async fn the_dashboard_queries_only_metrics_that_exist() {
    let dashboard =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/chatgate.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "panels with queries: {}", exprs.len());
    let queried: BTreeSet<String> = exprs
        .iter()
        .flat_map(|e| {
            e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("chatgate_"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    let gw = Gateway::start().await;
    let text = gw.http("GET", "/metrics", &[], "").await.body;
    let exposed: BTreeSet<String> =
        samples(&text).into_iter().map(|(series, _)| series.split('{').next().unwrap_or_default().to_owned()).collect();
    let missing: Vec<&String> = queried.iter().filter(|m| !exposed.contains(*m)).collect();
    assert!(missing.is_empty(), "the dashboard queries {missing:?}, which /metrics lacks");
    for family in ["connections", "broker", "presence", "routing_latency"] {
        assert!(queried.iter().any(|m| m.contains(family)), "a panel on {family}");
    }
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}
