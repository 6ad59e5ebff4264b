//! The accept loop and graceful shutdown.
//!
//! `run(listener, node, shutdown)` serves until `shutdown` resolves: tests pass a oneshot,
//! `main` passes SIGTERM/SIGINT. Then it stops accepting, lets hyper finish in-flight HTTP
//! requests, closes every WebSocket with 1001 after its queued frames, releases presence,
//! stops the node's background tasks and returns, all within `CHAT_SHUTDOWN_GRACE_MS`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::backend::chain;
use crate::node::Node;
use crate::transport::Transport;

/// Serves `listener` until `shutdown` resolves, then shuts down gracefully.
///
/// While draining, the listener stays open: `/readyz` answers 503 and new WebSocket
/// upgrades are refused with 503, so a load balancer sees the node leave instead of
/// connection errors.
pub async fn run(listener: TcpListener, node: Arc<Node>, shutdown: impl Future<Output = ()>) {
    node.start();
    let (http_stop_tx, http_stop_rx) = watch::channel(());
    let http_conns = tokio_util::task::TaskTracker::new();
    tokio::pin!(shutdown);
    let mut deadline = None;
    loop {
        let (stream, peer) = tokio::select! {
            res = listener.accept() => match res {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; the listener stays.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown, if deadline.is_none() => {
                info!(node = %node.config.node_id, "shutting down: closing connections");
                let grace = node.config.shutdown_grace;
                deadline = Some(tokio::time::Instant::now() + grace - release_budget(grace));
                node.begin_shutdown();
                continue;
            }
            () = node.sessions_finished(), if deadline.is_some() => break,
            () = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                warn!(remaining = node.connection_count(), "shutdown grace period over; dropping remaining connections");
                break;
            }
        };
        let _ = stream.set_nodelay(true);
        let unsent = node.config.kernel_unsent_bytes;
        if unsent > 0 {
            // Bounds what a client that stops reading can park in the kernel: writes stall
            // there early and the outbox's bounds (slow consumer, 1013) take over.
            let _ = socket2::SockRef::from(&stream).set_tcp_notsent_lowat(unsent);
        }
        let (head_timeout, head_bytes) = (node.config.header_read_timeout, node.config.max_request_head_bytes);
        let tls = node.config.tls.as_ref().map(|t| t.acceptor());
        let node = node.clone();
        let mut stop = http_stop_rx.clone();
        http_conns.spawn(async move {
            let io = match tls {
                None => Transport::Plain(stream),
                Some(acceptor) => match accept_tls(acceptor, stream, head_timeout, &mut stop).await {
                    None => return,
                    Some(Ok(tls)) => {
                        node.metrics.tls_handshake(true);
                        Transport::Tls(Box::new(tls))
                    }
                    Some(Err(e)) => {
                        node.metrics.tls_handshake(false);
                        debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                },
            };
            let svc = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(crate::http::Peer(peer));
                let node = node.clone();
                async move { Ok::<_, Infallible>(crate::http::handle(req, node).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                // Slow-loris guard, and a bounded head: hyper answers 431 past the buffer.
                .header_read_timeout(head_timeout)
                .max_buf_size(head_bytes)
                .serve_connection(TokioIo::new(io), svc)
                .with_upgrades();
            tokio::pin!(conn);
            let res = tokio::select! {
                res = conn.as_mut() => res,
                _ = stop.changed() => {
                    // Finish the request in flight, then close; keep polling to get there.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = res {
                debug!(%peer, error = %e, "http connection ended with error");
            }
        });
    }
    drop(listener);
    let _ = http_stop_tx.send(());
    http_conns.close();
    let budget = release_budget(node.config.shutdown_grace);
    let release = async {
        if let Err(e) = node.release().await {
            warn!(error = %chain(&e), "could not release presence");
        }
    };
    let finish = async { tokio::join!(release, http_conns.wait()) };
    if tokio::time::timeout(budget, finish).await.is_err() {
        warn!(tasks = node.background_tasks(), "releasing backends or closing HTTP connections timed out");
    }
    info!("shutdown complete");
}

/// A client's TLS handshake, bounded like a request head (a client that starts one and stalls
/// holds a task and a socket for at most `limit`); `None` when shutdown begins meanwhile.
async fn accept_tls(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    limit: Duration,
    stop: &mut watch::Receiver<()>,
) -> Option<std::io::Result<tokio_rustls::server::TlsStream<TcpStream>>> {
    tokio::select! {
        res = tokio::time::timeout(limit, acceptor.accept(stream)) => {
            Some(res.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())))
        }
        _ = stop.changed() => None,
    }
}

/// Part of the grace period kept for releasing presence and closing backends after the
/// clients are gone, so the whole shutdown fits in `CHAT_SHUTDOWN_GRACE_MS`.
fn release_budget(grace: Duration) -> Duration {
    (grace / 4).clamp(Duration::from_millis(1).min(grace), Duration::from_secs(2))
}
