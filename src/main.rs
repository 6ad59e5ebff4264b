//! The `chatgate` binary: configuration from flags and the environment, logging, signals.
//!
//! Exit codes: 0 after a clean shutdown (or `--help`, `--version`); 64 for an invalid
//! setting; 1 when the process cannot serve (the listen address is in use or not
//! permitted, the runtime cannot start).

use std::process::ExitCode;

use chatgate::config::EXIT_CONFIG;
use chatgate::{Backends, Config, Node};
use tokio::net::TcpListener;
use tracing::{error, info, warn};

fn main() -> ExitCode {
    let config = match Config::load() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(EXIT_CONFIG) } else { ExitCode::SUCCESS };
        }
    };
    chatgate::logging::init(config.log_format, &config.log_filter);
    // One crypto provider for every rustls user (the client port, rediss://, amqps://):
    // redis builds its TLS client from the process default, which rustls only picks by
    // itself while exactly one provider is compiled in.
    let _ = tokio_rustls::rustls::crypto::aws_lc_rs::default_provider().install_default();
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
            error!(error = %chatgate::backend::chain(&e), "cannot set up backends");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let shutdown = shutdown_signal();
    if let Some(tls) = config.tls.clone() {
        reload_on_hangup(tls);
    }
    let mode = if config.is_cluster() { "cluster" } else { "embedded" };
    info!(config = ?config, "effective configuration (secrets redacted)");
    if config.api_key.is_none() {
        warn!(
            "CHAT_API_KEY is unset: GET /api/* (online count, nodes, group members) is open to anyone who can reach \
             this port, and POST /api/publish is disabled"
        );
    }
    let scheme = if config.tls.is_some() { "https" } else { "http" };
    info!(%addr, node = %config.node_id, mode, scheme, "listening");
    let node = Node::new(config, backends);
    chatgate::server::run(listener, node, shutdown).await;
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

/// Resolves on SIGTERM or SIGINT. The handlers are installed here, at the call, not at the
/// first poll: a signal sent as soon as `listening` is logged must drain, not kill.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            error!("cannot install signal handlers; stop with SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received"),
            _ = int.recv() => info!("SIGINT received"),
        }
    }
}

/// Reads the TLS certificate and key again on every SIGHUP (a renewed certificate): new
/// handshakes use them, established connections keep theirs. A file that does not load is
/// logged and the previous identity stays. The handler is installed before `listening` is
/// logged, like the shutdown handlers.
fn reload_on_hangup(tls: std::sync::Arc<chatgate::transport::ServerTls>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot install the SIGHUP handler; the TLS certificate is not reloaded");
            return;
        }
    };
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            match tls.reload() {
                Ok(()) => info!(?tls, "TLS certificate reloaded"),
                Err(e) => error!(?tls, error = %e, "TLS certificate not reloaded; the previous one stays in use"),
            }
        }
    });
}
