//! The `chatgate` binary itself: `--help`, configuration errors, signals.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn chatgate() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatgate"));
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    cmd
}

/// Starts the binary on an ephemeral port and returns it with the address it logged.
fn start(extra: &[(&str, &str)]) -> (Child, SocketAddr) {
    let mut cmd = chatgate();
    cmd.env("CHAT_LISTEN", "127.0.0.1:0").env("CHAT_LOG_FORMAT", "json").env("RUST_LOG", "info");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let mut child = cmd.stderr(Stdio::piped()).stdout(Stdio::null()).spawn().expect("spawn chatgate");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + WAIT;
    let addr = loop {
        let line = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("a 'listening' log line");
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        if v["message"] == "listening" {
            break v["addr"].as_str().expect("addr field").parse().expect("socket address");
        }
    };
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || while rx.recv().is_ok() {});
    (child, addr)
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill").arg(format!("-{sig}")).arg(child.id().to_string()).status().unwrap().success();
    assert!(ok, "kill -{sig}");
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "process did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn help_lists_the_settings() {
    let out = chatgate().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for var in [
        "CHAT_LISTEN",
        "CHAT_NODE_ID",
        "CHAT_MAX_MESSAGE_BYTES",
        "CHAT_RATE_LIMIT",
        "CHAT_OUTBOX_FRAMES",
        "CHAT_HEARTBEAT_MS",
        "CHAT_SHUTDOWN_GRACE_MS",
        "CHAT_LOG_FORMAT",
        "RUST_LOG",
    ] {
        assert!(text.contains(var), "--help mentions {var}");
    }
}

#[test]
fn invalid_configuration_exits_64_naming_the_variable() {
    for (var, value) in [("CHAT_RATE_LIMIT", "lots"), ("CHAT_LISTEN", "nowhere"), ("CHAT_LOG_FORMAT", "yaml")] {
        let out = chatgate().env(var, value).output().unwrap();
        assert_eq!(out.status.code(), Some(64), "{var}={value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(var), "stderr names {var}: {err}");
    }
}

#[tokio::test]
async fn sigterm_drains_closes_1001_and_exits_0() {
    let (mut child, addr) = start(&[("CHAT_SHUTDOWN_GRACE_MS", "8000")]);
    let mut a = Client::connect(&format!("ws://{addr}/ws")).await;
    // A client that reads its close frame but never hangs up keeps the node draining.
    let mut lingering = RawClient::connect(addr, "/ws").await;
    assert_eq!(http(addr, "GET", "/readyz", &[], "").await.status, 200);

    let started = Instant::now();
    signal(&child, "TERM");
    assert_eq!(a.close_code().await, 1001);
    drop(a);
    assert_eq!(lingering.close_code().await, 1001);
    assert_eq!(http(addr, "GET", "/readyz", &[], "").await.status, 503, "not ready while draining");
    assert!(
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await.is_err(),
        "no new sessions while draining"
    );
    drop(lingering);
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut child)).await.unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(8), "within the grace period: {:?}", started.elapsed());
}

#[tokio::test]
async fn sigint_exits_0() {
    let (mut child, addr) = start(&[]);
    let mut a = Client::connect(&format!("ws://{addr}/ws")).await;
    signal(&child, "INT");
    assert_eq!(a.close_code().await, 1001);
    drop(a);
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut child)).await.unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn grace_period_bounds_shutdown() {
    // Without the grace bound the stuck client would hold the exit for the 2 s close linger
    // (or longer), so a grace of 0.5 s and an exit well under 2 s show the bound at work.
    let (mut child, addr) = start(&[("CHAT_SHUTDOWN_GRACE_MS", "500")]);
    // Never reads, never hangs up.
    let _stuck = RawClient::connect(addr, "/ws").await;
    let started = Instant::now();
    signal(&child, "TERM");
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut child)).await.unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(started.elapsed() < Duration::from_millis(1800), "exit within the grace: {:?}", started.elapsed());
}
