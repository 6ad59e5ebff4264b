//! Shared helpers for end-to-end tests: a gateway on `127.0.0.1:0`, a WebSocket client that
//! speaks JSON frames, a raw-socket client for what tungstenite would hide, and a minimal
//! HTTP/1.1 client.
#![allow(dead_code)]

pub mod cluster;
pub mod inprocess;
pub mod jwt;
pub mod services;
pub mod tls;
pub mod traffic;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chatgate::{Backends, Config, Node};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Upper bound for anything a test waits for; reaching it is a failure, not a pacing.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct Gateway {
    pub addr: SocketAddr,
    pub node: Arc<Node>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Gateway {
    pub async fn start() -> Gateway {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tune: impl FnOnce(&mut Config)) -> Gateway {
        let mut config = Config::for_tests();
        tune(&mut config);
        let backends = Backends::embedded(&config.node_id);
        Self::start_node(config, backends).await
    }

    pub async fn start_node(config: Config, backends: Backends) -> Gateway {
        let listener = TcpListener::bind(config.listen).await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let node = Node::new(config, backends);
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(chatgate::server::run(listener, node.clone(), async {
            let _ = stopped.await;
        }));
        Gateway { addr, node, stop: Some(stop), task: Some(task) }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Begins graceful shutdown; the returned handle finishes when the server has stopped.
    pub fn begin_shutdown(&mut self) -> JoinHandle<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().expect("not yet shut down")
    }

    pub async fn shutdown(mut self) {
        let task = self.begin_shutdown();
        tokio::time::timeout(WAIT, task).await.expect("shutdown in time").unwrap();
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.url()).await
    }

    pub async fn http(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> HttpResponse {
        http(self.addr, method, path, headers, body).await
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Client {
    pub ws: Ws,
    pub user: String,
    pub welcome: Value,
}

impl Client {
    /// Connects and reads the welcome frame.
    pub async fn connect(url: &str) -> Client {
        Self::connect_with(url, None).await
    }

    /// [`Client::connect`] with a TLS set-up for `wss://` (`None`: the default).
    pub async fn connect_with(url: &str, tls: Option<tokio_tungstenite::Connector>) -> Client {
        Self::handshake(tokio_tungstenite::connect_async_tls_with_config(url, None, false, tls)).await
    }

    /// [`Client::connect_with`] over a TCP connection already made (with its own socket options).
    pub async fn over(tcp: TcpStream, url: &str, tls: Option<tokio_tungstenite::Connector>) -> Client {
        Self::handshake(tokio_tungstenite::client_async_tls_with_config(url, tcp, None, tls)).await
    }

    async fn handshake<R>(
        connect: impl std::future::Future<Output = Result<(Ws, R), tokio_tungstenite::tungstenite::Error>>,
    ) -> Client {
        let (ws, _) = tokio::time::timeout(WAIT, connect).await.expect("connect in time").expect("connect");
        let mut c = Client { ws, user: String::new(), welcome: Value::Null };
        let welcome = c.recv().await;
        assert_eq!(welcome["type"], "welcome", "first frame is the welcome: {welcome}");
        c.user = welcome["user"].as_str().expect("user id").to_owned();
        c.welcome = welcome;
        c
    }

    pub async fn send(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    /// Next JSON frame (control frames are skipped; tungstenite answers pings).
    pub async fn recv(&mut self) -> Value {
        let text = self.recv_text().await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("server sent invalid JSON {text:?}: {e}"))
    }

    /// Next text frame, raw.
    pub async fn recv_text(&mut self) -> String {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("connection open")
                .expect("frame");
            match msg {
                Message::Text(t) => return t.to_string(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Next frame of type `ty`, skipping others (e.g. presence events).
    pub async fn recv_type(&mut self, ty: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == ty {
                return v;
            }
        }
    }

    /// Next presence event about `user`, skipping other frames and other users' events.
    pub async fn presence_of(&mut self, user: &str) -> Value {
        loop {
            let ev = self.recv_type("presence").await;
            if ev["user"] == user {
                return ev;
            }
        }
    }

    /// Sends `v` with `"id": id` and returns the reply carrying that id.
    pub async fn request(&mut self, mut v: Value, id: &str) -> Value {
        v["id"] = json!(id);
        self.send(v).await;
        loop {
            let r = self.recv().await;
            if r["id"] == id {
                return r;
            }
        }
    }

    pub async fn join(&mut self, group: &str) {
        let r = self.request(json!({"type":"join","group":group}), &format!("join-{group}")).await;
        assert_eq!(r["type"], "joined", "{r}");
    }

    /// Reads until the server's close frame and returns it. Text frames before it are
    /// returned too, in order.
    pub async fn until_close(&mut self) -> (Option<CloseFrame>, Vec<String>) {
        let mut texts = Vec::new();
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await.expect("close in time") {
                Some(Ok(Message::Close(frame))) => return (frame, texts),
                Some(Ok(Message::Text(t))) => texts.push(t.to_string()),
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("connection failed before a close frame: {e}"),
                None => panic!("connection ended without a close frame"),
            }
        }
    }

    pub async fn close_code(&mut self) -> u16 {
        let (frame, _) = self.until_close().await;
        frame.map(|f| u16::from(f.code)).expect("close frame with a code")
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        // Drain until the server's close echo and EOF.
        while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, self.ws.next()).await {}
    }
}

/// A WebSocket client on a raw socket: it never answers pings and never reads unless asked.
pub struct RawClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// One server frame as seen on the wire.
#[derive(Debug)]
pub struct RawFrame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr, path: &str) -> RawClient {
        Self::handshake(TcpStream::connect(addr).await.unwrap(), addr, path).await
    }

    /// [`connect`](Self::connect) with `SO_RCVBUF` set first (a window that shuts early).
    pub async fn connect_with_receive_buffer(addr: SocketAddr, path: &str, bytes: u32) -> RawClient {
        let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() };
        let socket = socket.unwrap();
        socket.set_recv_buffer_size(bytes).unwrap();
        Self::handshake(socket.connect(addr).await.unwrap(), addr, path).await
    }

    async fn handshake(mut stream: TcpStream, addr: SocketAddr, path: &str) -> RawClient {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let head_end = loop {
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(WAIT, stream.read(&mut chunk)).await.unwrap().unwrap();
            assert!(n > 0, "eof during handshake");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "accept key: {head}");
        buf.drain(..head_end);
        RawClient { stream, buf }
    }

    /// Sends a masked client frame.
    pub async fn send_frame(&mut self, opcode: u8, payload: &[u8]) {
        self.send_raw(0x80 | opcode, payload).await
    }

    /// Sends a masked frame whose first byte (FIN, RSV1-3, opcode) is `first` as given.
    pub async fn send_raw(&mut self, first: u8, payload: &[u8]) {
        let mask = [1u8, 2, 3, 4];
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 65535 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&out).await.unwrap();
    }

    /// Reads the next frame; `None` at EOF.
    pub async fn read_frame(&mut self) -> Option<RawFrame> {
        loop {
            if self.buf.len() >= 2 {
                let len7 = (self.buf[1] & 0x7f) as usize;
                let (hdr, len) = match len7 {
                    126 if self.buf.len() >= 4 => (4, u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize),
                    127 if self.buf.len() >= 10 => {
                        (10, u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (2, n),
                };
                if hdr != usize::MAX && self.buf.len() >= hdr + len {
                    assert_eq!(self.buf[1] & 0x80, 0, "server frames are unmasked");
                    let opcode = self.buf[0] & 0x0f;
                    let payload = self.buf[hdr..hdr + len].to_vec();
                    self.buf.drain(..hdr + len);
                    return Some(RawFrame { opcode, payload });
                }
            }
            let mut chunk = [0u8; 8192];
            let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk)).await.expect("read in time").ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads frames until a close frame and returns its code.
    pub async fn close_code(&mut self) -> u16 {
        loop {
            let f = self.read_frame().await.expect("close frame before EOF");
            if f.opcode == 0x8 {
                return u16::from_be_bytes([f.payload[0], f.payload[1]]);
            }
        }
    }
}

pub struct HttpResponse {
    pub status: u16,
    /// Header lines after the status line, as sent.
    pub head: String,
    pub body: String,
}

impl HttpResponse {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body {:?} is not JSON: {e}", self.body))
    }
}

/// One HTTP/1.1 request with `Connection: close`.
pub async fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> HttpResponse {
    let stream = TcpStream::connect(addr).await.expect("connect");
    http_on(stream, addr, method, path, headers, body).await
}

/// [`http`] over a connection already made (a TLS stream).
pub async fn http_on(
    mut stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> HttpResponse {
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw)).await.expect("response in time").unwrap();
    let raw = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status line");
    HttpResponse { status, head: head.to_owned(), body: body.to_owned() }
}

/// Polls `check` until it holds (each poll is a real request, not a timer), failing at WAIT.
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(what, WAIT, check).await
}

/// [`eventually`] with its own failure bound (a broker restarting on a loaded machine).
pub async fn eventually_within<F, Fut>(what: &str, bound: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + bound;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn text_payload(b: &Bytes) -> String {
    String::from_utf8_lossy(b).to_string()
}
