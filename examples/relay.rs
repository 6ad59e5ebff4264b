//! A bare tokio-tungstenite relay: the baseline that `chatgate` is measured against under
//! overload (`scripts/loadtest.sh --relay`, benches/README.md "Overload").
//!
//! It speaks just enough of the chat protocol for `chatgate-load` (`welcome`, `join` ->
//! `joined`, `group` and `once` delivered with an `ack`), in the plainest way the stack
//! allows: tokio-tungstenite's own stream and sink per connection, serde_json to read a
//! frame, a bounded channel per client drained by a writer task that feeds everything queued
//! and flushes once. Each delivered frame is built once and shared (`Utf8Bytes` clones).
//! No presence, no rate limit, no heartbeat, no back-pressure: a client whose channel is
//! full loses the frame (counted, printed at exit), which is what a relay without flow
//! control does when it is behind.
//!
//! ```sh
//! cargo run --release --example relay -- 127.0.0.1:9000
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::{SinkExt, StreamExt};
use parking_lot::RwLock;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Frames queued for one client, as `CHAT_OUTBOX_FRAMES`' default.
const QUEUE: usize = 1024;

type Tx = mpsc::Sender<Message>;

#[derive(Default)]
struct Relay {
    users: RwLock<HashMap<u64, Tx>>,
    groups: RwLock<HashMap<String, Vec<(u64, Tx)>>>,
    next_id: AtomicU64,
    delivered: AtomicU64,
    dropped: AtomicU64,
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    ty: &'a str,
    #[serde(default)]
    to: Option<&'a str>,
    #[serde(default)]
    group: Option<&'a str>,
    #[serde(default)]
    id: Option<&'a str>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
}

impl Relay {
    /// Queues `msg` for one client; a full queue loses it.
    fn push(&self, tx: &Tx, msg: Message) {
        match tx.try_send(msg) {
            Ok(()) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn handle(&self, me: u64, tx: &Tx, text: &str) {
        let Ok(f) = serde_json::from_str::<Frame<'_>>(text) else { return };
        let id = f.id.unwrap_or("");
        match f.ty {
            "join" => {
                let g = f.group.unwrap_or("").to_owned();
                let reply = format!(r#"{{"type":"joined","group":"{g}","id":"{id}"}}"#);
                self.groups.write().entry(g).or_default().push((me, tx.clone()));
                self.push(tx, Message::text(reply));
            }
            "group" | "once" => {
                let (Some(to), Some(content)) = (f.to, f.content) else { return };
                let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                let frame: Utf8Bytes = format!(
                    r#"{{"type":"{}","from":"{me}","to":"{to}","content":{},"ts":{}}}"#,
                    f.ty,
                    content.get(),
                    ts.as_millis()
                )
                .into();
                if f.ty == "group" {
                    if let Some(members) = self.groups.read().get(to) {
                        for (_, member) in members.iter().filter(|(uid, _)| *uid != me) {
                            self.push(member, Message::Text(frame.clone()));
                        }
                    }
                } else if let Some(peer) = to.parse().ok().and_then(|u: u64| self.users.read().get(&u).cloned()) {
                    self.push(&peer, Message::Text(frame));
                }
                self.push(tx, Message::text(format!(r#"{{"type":"ack","id":"{id}","status":"sent"}}"#)));
            }
            "ping" => self.push(tx, Message::text(format!(r#"{{"type":"pong","id":"{id}"}}"#))),
            _ => {}
        }
    }

    fn forget(&self, me: u64) {
        self.users.write().remove(&me);
        for members in self.groups.write().values_mut() {
            members.retain(|(uid, _)| *uid != me);
        }
    }
}

async fn serve(relay: Arc<Relay>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut cfg = WebSocketConfig::default();
    cfg.read_buffer_size = 4096;
    cfg.max_message_size = Some(64 << 10);
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(cfg)).await else { return };
    let (mut sink, mut stream) = ws.split();
    let me = relay.next_id.fetch_add(1, Ordering::Relaxed) + 1;
    let (tx, mut rx) = mpsc::channel::<Message>(QUEUE);
    relay.users.write().insert(me, tx.clone());
    let writer = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            if sink.feed(first).await.is_err() {
                return;
            }
            // Corking: everything already queued goes out with one flush.
            while let Ok(more) = rx.try_recv() {
                if sink.feed(more).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    let welcome = format!(r#"{{"type":"welcome","user":"{me}","node":"relay"}}"#);
    relay.push(&tx, Message::text(welcome));
    while let Some(Ok(msg)) = stream.next().await {
        match msg {
            Message::Text(t) => relay.handle(me, &tx, t.as_str()),
            Message::Close(_) => break,
            _ => {}
        }
    }
    relay.forget(me);
    drop(tx);
    writer.abort();
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9000".to_owned());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(&addr).await?;
        eprintln!("relay listening on ws://{}/ws", listener.local_addr()?);
        let relay = Arc::new(Relay::default());
        let stats = relay.clone();
        let accept = async {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        tokio::spawn(serve(relay.clone(), stream));
                    }
                    // EMFILE and friends: back off as chatgate does, instead of spinning.
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
                }
            }
        };
        tokio::select! {
            () = accept => {}
            _ = tokio::signal::ctrl_c() => {}
            () = terminate() => {}
        }
        eprintln!(
            "relay: {} frames queued to clients, {} dropped (client queue full)",
            stats.delivered.load(Ordering::Relaxed),
            stats.dropped.load(Ordering::Relaxed)
        );
        Ok(())
    })
}

async fn terminate() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}
