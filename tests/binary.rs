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

/// Log lines a child has written so far.
type Logs = std::sync::Arc<parking_lot::Mutex<Vec<String>>>;

/// Starts the binary on an ephemeral port and returns it with the address it logged.
fn start(extra: &[(&str, &str)]) -> (Child, SocketAddr) {
    let (child, addr, _) = start_logged(extra);
    (child, addr)
}

/// [`start`], keeping the log lines.
fn start_logged(extra: &[(&str, &str)]) -> (Child, SocketAddr, Logs) {
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
    let logs = Logs::default();
    let deadline = Instant::now() + WAIT;
    let addr = loop {
        let line = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("a 'listening' log line");
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        logs.lock().push(line);
        if v["message"] == "listening" {
            break v["addr"].as_str().expect("addr field").parse().expect("socket address");
        }
    };
    // Keep draining stderr so the child never blocks on a full pipe.
    let sink = logs.clone();
    std::thread::spawn(move || {
        while let Ok(line) = rx.recv() {
            sink.lock().push(line);
        }
    });
    (child, addr, logs)
}

const GRACE_OVER: &str = "shutdown grace period over";

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
    let dir = tempfile::tempdir().unwrap();
    let not_a_key = dir.path().join("key.pem");
    std::fs::write(&not_a_key, "-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n").unwrap();
    for (var, value) in [
        ("CHAT_RATE_LIMIT", "lots"),
        ("CHAT_LISTEN", "nowhere"),
        ("CHAT_LOG_FORMAT", "yaml"),
        // Cluster settings are checked in embedded mode too.
        ("CHAT_NODE_TTL_MS", "abc"),
        ("RUST_LOG", "chatgate=loud"),
        ("RABBIT_MQ_URL", "amqp://h"),
        ("CHAT_JWT_PUBLIC_KEY_FILE", "/nonexistent/key.pem"),
        ("CHAT_JWT_PUBLIC_KEY_FILE", not_a_key.to_str().unwrap()),
        ("CHAT_JWT_LEEWAY_S", "soon"),
    ] {
        let out = chatgate().env(var, value).output().unwrap();
        assert_eq!(out.status.code(), Some(64), "{var}={value}");
        let err = String::from_utf8_lossy(&out.stderr);
        let named = if var == "RABBIT_MQ_URL" { "REDIS_ADDR" } else { var };
        assert!(err.contains(named), "stderr names {named}: {err}");
    }
    let out = chatgate().arg("--no-such-flag").output().unwrap();
    assert_eq!(out.status.code(), Some(64), "unknown flag");
}

#[test]
fn version_and_flags() {
    let out = chatgate().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("chatgate {}", env!("CARGO_PKG_VERSION")));
    // Every variable is a flag too; a flag wins over the variable.
    let out = chatgate().env("CHAT_RATE_LIMIT", "5").args(["--rate-limit", "lots"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[tokio::test]
async fn listen_accepts_a_host_name_and_a_taken_port_exits_1() {
    let (mut child, addr) = start(&[("CHAT_LISTEN", "localhost:0")]);
    assert!(addr.ip().is_loopback(), "{addr}");
    // The same port again: in use.
    let out = chatgate().env("CHAT_LISTEN", addr.to_string()).env("CHAT_LOG_FORMAT", "json").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "a taken port exits 1");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen"));
    signal(&child, "TERM");
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut child)).await.unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn sigterm_drains_closes_1001_and_exits_0() {
    let (mut child, addr, logs) = start_logged(&[("CHAT_SHUTDOWN_GRACE_MS", "8000")]);
    let mut a = Client::connect(&format!("ws://{addr}/ws")).await;
    // A client that reads its close frame but never hangs up keeps the node draining.
    let mut lingering = RawClient::connect(addr, "/ws").await;
    assert_eq!(http(addr, "GET", "/readyz", &[], "").await.status, 200);

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
    let logs = logs.lock();
    assert!(!logs.iter().any(|l| l.contains(GRACE_OVER)), "every client left within the grace period");
    assert!(logs.iter().any(|l| l.contains("shutdown complete")), "{logs:?}");
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
    // A client that never reads and never hangs up would hold the node forever; the grace
    // period ends it: the node says so, and exits 0 while the client is still connected.
    let (mut child, addr, logs) = start_logged(&[("CHAT_SHUTDOWN_GRACE_MS", "500")]);
    let stuck = RawClient::connect(addr, "/ws").await;
    signal(&child, "TERM");
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut child)).await.unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(logs.lock().iter().any(|l| l.contains(GRACE_OVER)), "the bound ended the drain");
    drop(stuck);
}

#[tokio::test]
async fn start_up_logs_the_effective_configuration_without_secrets() {
    let (mut child, _addr, logs) = start_logged(&[("CHAT_API_KEY", "hunter2-key"), ("CHAT_JWT_SECRET", "hunter2-jwt")]);
    signal(&child, "TERM");
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut child)).await.unwrap();
    assert_eq!(status.code(), Some(0));
    let logs = logs.lock();
    let line = logs.iter().find(|l| l.contains("effective configuration")).expect("the configuration is logged");
    assert!(line.contains("max_connections") && line.contains("api_key"), "{line}");
    assert!(!logs.iter().any(|l| l.contains("hunter2")), "a secret reached the log");
    assert!(!logs.iter().any(|l| l.contains("CHAT_API_KEY is unset")), "no warning with a key");
}

#[tokio::test]
async fn start_up_warns_when_the_api_is_open() {
    let (mut child, _addr, logs) = start_logged(&[]);
    // The warning comes before the `listening` line `start_logged` waited for.
    let warning = logs.lock().iter().find(|l| l.contains("CHAT_API_KEY is unset")).cloned();
    signal(&child, "TERM");
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut child)).await.unwrap();
    assert_eq!(status.code(), Some(0));
    let warning = warning.expect("a warning that /api/* is open");
    let v: serde_json::Value = serde_json::from_str(&warning).unwrap();
    assert_eq!(v["level"], "WARN", "{warning}");
}

#[tokio::test]
async fn sighup_reloads_the_tls_certificate_and_a_bad_one_keeps_the_last() {
    let pki = common::tls::TestPki::new();
    let (cert, key) = (pki.cert.to_str().unwrap(), pki.key.to_str().unwrap());
    let (mut child, addr, logs) = start_logged(&[("CHAT_TLS_CERT_FILE", cert), ("CHAT_TLS_KEY_FILE", key)]);
    assert!(logs.lock().iter().any(|l| l.contains(r#""scheme":"https""#)), "the listening line says https");
    let served = || async {
        let tls = pki.connect(addr).await;
        tls.get_ref().1.peer_certificates().expect("a certificate")[0].to_vec()
    };
    let logged = |what: &'static str, n: usize| {
        let logs = logs.clone();
        async move {
            let seen = || logs.lock().iter().filter(|l| l.contains(what)).count();
            eventually(what, || async { seen() == n }).await;
        }
    };
    let wss = format!("wss://localhost:{}/ws", addr.port());
    let mut before = Client::connect_with(&wss, Some(pki.connector())).await;
    let first = served().await;

    let renewed = pki.issue("renewed");
    assert_ne!(first, renewed);
    signal(&child, "HUP");
    logged("TLS certificate reloaded", 1).await;
    assert_eq!(served().await, renewed, "new handshakes get the new certificate");
    // A connection made before the reload goes on as it was.
    let me = before.user.clone();
    let ack = before.request(serde_json::json!({"type":"once","to":me,"content":"still here"}), "r").await;
    assert_eq!(ack["status"], "sent");

    std::fs::write(&pki.cert, "not a certificate").unwrap();
    signal(&child, "HUP");
    logged("TLS certificate not reloaded", 1).await;
    assert_eq!(served().await, renewed, "a file that does not load leaves the last certificate in use");

    signal(&child, "TERM");
    assert_eq!(before.close_code().await, 1001);
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut child)).await.unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn tls_settings_come_in_pairs_and_must_load() {
    let pki = common::tls::TestPki::new();
    let (cert, key) = (pki.cert.to_str().unwrap(), pki.key.to_str().unwrap());
    let missing = pki.path("missing.pem");
    let cases: [(&[(&str, &str)], &str); 4] = [
        (&[("CHAT_TLS_CERT_FILE", cert)], "CHAT_TLS_KEY_FILE"),
        (&[("CHAT_TLS_KEY_FILE", key)], "CHAT_TLS_CERT_FILE"),
        (&[("CHAT_TLS_CERT_FILE", key), ("CHAT_TLS_KEY_FILE", key)], "CHAT_TLS_CERT_FILE"),
        (&[("CHAT_TLS_CERT_FILE", cert), ("CHAT_TLS_KEY_FILE", missing.to_str().unwrap())], "CHAT_TLS_KEY_FILE"),
    ];
    for (env, var) in cases {
        let out = chatgate().envs(env.iter().copied()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{env:?}: {stderr}");
        assert!(stderr.contains(var), "{env:?} names {var}: {stderr}");
    }
}
