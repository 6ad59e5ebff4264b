//! The `chatgate` binary: configuration from the environment, logging, signals.

use std::process::ExitCode;

use chatgate::{Backends, Config, Node};
use tokio::net::TcpListener;
use tracing::{error, info};

/// `EX_USAGE` from sysexits.h: bad configuration.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        None => {}
        Some("-h" | "--help") => {
            print!("{}", chatgate::config::help());
            return ExitCode::SUCCESS;
        }
        Some("-V" | "--version") => {
            println!("chatgate {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("chatgate: unknown argument {other:?}; configuration is by environment (see --help)");
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("chatgate: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    chatgate::logging::init(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(config.workers).enable_all().build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> ExitCode {
    let listener = match listen(config.listen) {
        Ok(l) => l,
        Err(e) => {
            error!(addr = %config.listen, error = %e, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().map_or_else(|_| config.listen.to_string(), |a| a.to_string());
    let backends = match Backends::from_config(&config) {
        Ok(b) => b,
        Err(e) => {
            error!(error = %e, "cannot set up backends");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let mode = if config.cluster.is_some() { "cluster" } else { "embedded" };
    info!(%addr, node = %config.node_id, mode, "listening");
    let node = Node::new(config, backends);
    chatgate::server::run(listener, node, shutdown_signal()).await;
    ExitCode::SUCCESS
}

/// Binds with a deep accept backlog: a burst of connects (a reconnect storm after a node
/// restart) must wait in the queue, not overflow it into 1 s SYN retransmits.
fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
}
