//! Native TLS on the client port (`CHAT_TLS_CERT_FILE`, `CHAT_TLS_KEY_FILE`): `wss://` and
//! `https://` with certificates made at test time; what a client that does not speak TLS, or
//! stalls in the handshake, gets; and the close handshake over TLS. The certificate reload on
//! SIGHUP is in `tests/binary.rs` (it signals a process).

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::sync::Arc;
use std::time::Duration;

use chatgate::transport::ServerTls;
use common::tls::TestPki;
use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn tls_gateway(pki: &TestPki, tune: impl FnOnce(&mut chatgate::Config)) -> Gateway {
    let tls = Arc::new(ServerTls::load(&pki.cert, &pki.key).unwrap());
    Gateway::start_with(|c| {
        c.tls = Some(tls);
        tune(c);
    })
    .await
}

fn wss(gw: &Gateway) -> String {
    format!("wss://localhost:{}/ws", gw.addr.port())
}

#[tokio::test]
async fn wss_clients_chat_and_https_endpoints_answer() {
    let pki = TestPki::new();
    let gw = tls_gateway(&pki, |_| {}).await;
    let mut a = Client::connect_with(&wss(&gw), Some(pki.connector())).await;
    let mut b = Client::connect_with(&wss(&gw), Some(pki.connector())).await;

    // Small and large messages both ways (a large one takes several TLS records and writes).
    for content in ["hi".to_owned(), "x".repeat(60_000)] {
        let ack = a.request(json!({"type":"once","to":b.user,"content":content}), "m").await;
        assert_eq!(ack["status"], "sent", "{ack}");
        let msg = b.recv_type("once").await;
        assert_eq!(msg["content"], content.as_str());
    }
    b.join("room").await;
    a.join("room").await;
    let ack = a.request(json!({"type":"group","to":"room","content":"all"}), "g").await;
    assert_eq!(ack["status"], "sent");
    assert_eq!(b.recv_type("group").await["content"], "all");

    let health = http_on(pki.connect(gw.addr).await, gw.addr, "GET", "/healthz", &[], "").await;
    assert_eq!(health.status, 200, "{}", health.head);
    let online = http_on(pki.connect(gw.addr).await, gw.addr, "GET", "/api/online", &[], "").await;
    assert_eq!(online.status, 200);
    assert_eq!(online.json()["count"], 2, "{}", online.body);
    let (_, session) = pki.connect(gw.addr).await.into_inner();
    assert_eq!(session.alpn_protocol(), Some(&b"http/1.1"[..]), "ALPN picks HTTP/1.1");
    // The server finishes a TLS 1.3 handshake after the client does: wait for the last one.
    eventually("five handshakes counted", || async { gw.node.metrics.tls_handshakes(true) == 5 }).await;
    assert_eq!(gw.node.metrics.tls_handshakes(false), 0);
    a.close().await;
    b.close().await;
    eventually("both closes counted", || async { gw.node.metrics.disconnects_with(1005) == 2 }).await;
    assert_eq!(gw.node.metrics.linger_timeouts.get(), 0, "each close ended with the client's close_notify or FIN");
    gw.shutdown().await;
}

/// Records rustls has encrypted but a full socket has not taken are flushed when the socket
/// drains, with no further output to carry them: a burst smaller than rustls's buffer, to
/// a client whose receive window is tiny and that reads only after the burst was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_to_a_client_with_a_full_socket_arrives_whole() {
    let pki = TestPki::new();
    let gw = tls_gateway(&pki, |c| c.kernel_unsent_bytes = 4096).await;
    let mut a = Client::connect_with(&wss(&gw), Some(pki.connector())).await;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let tcp = sock.connect(gw.addr).await.unwrap();
    let mut b = Client::over(tcp, &wss(&gw), Some(pki.connector())).await;

    let content = "y".repeat(10_000);
    for i in 0..5 {
        let ack = a.request(json!({"type":"once","to":b.user,"content":content}), &format!("m{i}")).await;
        assert_eq!(ack["status"], "sent");
    }
    // The writer has taken all five from the outbox (and written what the socket took).
    eventually("b's outbox drained into its socket", || async {
        let metrics = http_on(pki.connect(gw.addr).await, gw.addr, "GET", "/metrics", &[], "").await;
        metrics.body.lines().any(|l| l == "chatgate_outbox_queued_bytes 0")
    })
    .await;
    for _ in 0..5 {
        assert_eq!(b.recv_type("once").await["content"].as_str().map(str::len), Some(10_000));
    }
    a.close().await;
    b.close().await;
    gw.shutdown().await;
}

#[tokio::test]
async fn a_client_that_does_not_speak_tls_is_dropped_and_others_are_served() {
    let pki = TestPki::new();
    let gw = tls_gateway(&pki, |_| {}).await;
    let mut plain = TcpStream::connect(gw.addr).await.unwrap();
    plain.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    // rustls may answer with an alert record; never with HTTP.
    let _ = tokio::time::timeout(WAIT, plain.read_to_end(&mut answer)).await.expect("the server ends the connection");
    assert!(!answer.starts_with(b"HTTP/"), "no plain HTTP on a TLS port: {answer:?}");
    eventually("the failed handshake is counted", || async { gw.node.metrics.tls_handshakes(false) == 1 }).await;

    // A plain ws:// client gets nothing either; a wss:// one is served.
    let refused = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(gw.url())).await.unwrap();
    assert!(refused.is_err());
    Client::connect_with(&wss(&gw), Some(pki.connector())).await.close().await;
    gw.shutdown().await;
}

#[tokio::test]
async fn a_client_that_trusts_another_ca_cannot_connect() {
    let (pki, other) = (TestPki::new(), TestPki::new());
    let gw = tls_gateway(&pki, |_| {}).await;
    let connect = tokio_tungstenite::connect_async_tls_with_config(wss(&gw), None, false, Some(other.connector()));
    let res = tokio::time::timeout(WAIT, connect).await.unwrap();
    let Err(err) = res else { panic!("an unknown issuer is refused by the client") };
    let err = err.to_string();
    assert!(err.contains("UnknownIssuer") || err.contains("certificate"), "{err}");
    Client::connect_with(&wss(&gw), Some(pki.connector())).await.close().await;
    gw.shutdown().await;
}

#[tokio::test]
async fn a_stalled_tls_handshake_is_cut_at_the_head_timeout() {
    let pki = TestPki::new();
    let gw = tls_gateway(&pki, |c| c.header_read_timeout = Duration::from_millis(200)).await;
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, silent.read(&mut buf)).await.expect("closed by the server");
    assert!(matches!(n, Ok(0) | Err(_)), "nothing is sent to a client that never says hello");
    eventually("the timed-out handshake is counted", || async { gw.node.metrics.tls_handshakes(false) == 1 }).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_wss_clients_with_1001_after_what_they_were_owed() {
    let pki = TestPki::new();
    let mut gw = tls_gateway(&pki, |_| {}).await;
    let mut a = Client::connect_with(&wss(&gw), Some(pki.connector())).await;
    let mut b = Client::connect_with(&wss(&gw), Some(pki.connector())).await;
    for i in 0..50 {
        a.send(json!({"type":"once","to":b.user,"content":i})).await;
    }
    // All 50 were routed (acked) before shutdown starts.
    let mut acks = 0;
    while acks < 50 {
        if a.recv().await["type"] == "ack" {
            acks += 1;
        }
    }
    let stopped = gw.begin_shutdown();
    let (close, frames) = b.until_close().await;
    let received = frames.iter().filter(|f| f.contains(r#""type":"once""#)).count();
    assert_eq!(received, 50, "every message owed arrives before the close");
    assert_eq!(close.map(|c| u16::from(c.code)), Some(1001));
    assert_eq!(a.close_code().await, 1001);
    tokio::time::timeout(WAIT, stopped).await.unwrap().unwrap();
}
