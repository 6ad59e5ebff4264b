//! The gateway as a WebSocket echo server, for Autobahn|Testsuite (`scripts/autobahn.sh`).
//!
//! This is the production server (`server::run`, `Node`, the session's tungstenite read side,
//! the outbox, the writer task, the close logic) with `Config::echo` on: every text or binary
//! message goes back as it came, control frames and closes take the normal path. `echo` has
//! no flag or variable, so only a program like this one can turn it on.
//!
//! Run: `cargo run --example echo [-- ADDR]` (or `CHAT_LISTEN=ADDR`; default 127.0.0.1:9001;
//! port 0 picks a free one). Prints `listening on ws://ADDR/ws` once it accepts connections.

use std::net::SocketAddr;
use std::time::Duration;

use chatgate::{Backends, Config, Node};
use tokio::net::TcpListener;

/// The largest message Autobahn sends in the sections we run (9.1.6 and 9.2.6: 16 MiB).
const MAX_MESSAGE: usize = 16 << 20;

fn config(listen: SocketAddr) -> Config {
    let mut c = Config::for_tests();
    c.listen = listen;
    c.echo = true;
    c.max_message_bytes = MAX_MESSAGE;
    // Section 9 sends thousands of messages back to back and expects every one echoed:
    // neither the rate limit nor the slow-consumer bound may step in.
    (c.rate_limit, c.rate_burst) = (1_000_000, 1_000_000);
    c.outbox_frames = 1 << 20;
    c.outbox_bytes = 4 * MAX_MESSAGE;
    // The heartbeat's pings would be frames the testsuite did not ask for.
    c.heartbeat = Duration::from_secs(3600);
    c.log_filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    c
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let addr = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("CHAT_LISTEN").ok())
        .unwrap_or_else(|| "127.0.0.1:9001".into());
    let listen: SocketAddr = match addr.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("echo: bad address {addr:?}: {e}");
            return std::process::ExitCode::from(64);
        }
    };
    let config = config(listen);
    chatgate::logging::init(config.log_format, &config.log_filter);
    let listener = match TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("echo: cannot listen on {listen}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let bound = listener.local_addr().unwrap_or(listen);
    let node = Node::new(config.clone(), Backends::embedded(&config.node_id));
    println!("listening on ws://{bound}/ws");
    chatgate::server::run(listener, node, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    std::process::ExitCode::SUCCESS
}
