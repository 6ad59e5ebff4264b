//! The publisher task: its own connection in confirm mode, pipelined confirms, and the
//! bounded buffer that holds batches while RabbitMQ is unreachable.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeleteOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use tokio::sync::mpsc;
use tracing::{debug, info, trace, warn};

use super::{Request, Shared, connect, declare_exchange};
use tokio::time::Instant;

use crate::backend::{BackendError, BoxFuture, chain, retry};
use crate::metrics::Link;

/// A broker that has not confirmed anything for this long, with publishes outstanding, or
/// that does not take a publish for this long, is hung: not ready; the channel is given up.
const STALL: Duration = Duration::from_secs(2);

/// A confirm may arrive this long after its batch's deadline and still count.
pub(super) const CONFIRM_GRACE: Duration = Duration::from_millis(500);

pub(super) struct Publisher {
    shared: Arc<Shared>,
    /// Batches waiting for a connection, oldest first.
    buffer: VecDeque<Request>,
    buffered_bytes: usize,
    /// Connections made so far (the second and later are reconnects).
    connections: u64,
}

type Inflight = FuturesUnordered<BoxFuture<'static, ()>>;

impl Publisher {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Publisher { shared, buffer: VecDeque::new(), buffered_bytes: 0, connections: 0 }
    }

    /// Connects, publishes, reconnects, until a `Close` request (or every handle is gone).
    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut delays = retry::reconnect();
        // The first failure of a streak is a warning (why RabbitMQ is unreachable: refused,
        // a certificate, credentials); its retries are debug.
        let mut failing = false;
        loop {
            let conn = match self.connect().await {
                Ok(c) => {
                    delays = retry::reconnect();
                    failing = false;
                    c
                }
                Err(e) => {
                    self.shared.publisher_up.store(false, Ordering::Relaxed);
                    if std::mem::replace(&mut failing, true) {
                        debug!(error = %chain(&e), "publisher cannot connect");
                    } else {
                        warn!(error = %chain(&e), "cannot connect to RabbitMQ; retrying");
                    }
                    // Keep taking requests (into the buffer) while waiting to retry.
                    let until = tokio::time::Instant::now() + retry::next(&mut delays);
                    loop {
                        self.expire();
                        tokio::select! {
                            req = rx.recv() => match req {
                                Some(req) => if self.hold(req) { return },
                                None => return,
                            },
                            () = tokio::time::sleep_until(until) => break,
                        }
                    }
                    continue;
                }
            };
            let (connection, channel) = conn;
            info!("publisher connected to RabbitMQ");
            self.connections += 1;
            if self.connections > 1 {
                self.shared.cfg.metrics.broker.reconnected(Link::Publish);
            }
            self.shared.publisher_up.store(true, Ordering::Relaxed);
            let closing = self.serve(&channel, &mut rx).await;
            self.shared.publisher_up.store(false, Ordering::Relaxed);
            if closing {
                let _ = connection.close(200, "node shutting down".into()).await;
                return;
            }
            warn!("publisher lost its RabbitMQ connection; reconnecting");
            let _ = connection.close(200, "reconnecting".into()).now_or_never();
        }
    }

    async fn connect(&self) -> lapin::Result<(Connection, Channel)> {
        let cfg = &self.shared.cfg;
        let conn = connect(cfg, "publish").await?;
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        declare_exchange(&ch, cfg).await?;
        Ok((conn, ch))
    }

    /// Publishes the outage buffer's size.
    fn gauge(&self) {
        self.shared.cfg.metrics.broker.buffered_bytes.set(self.buffered_bytes as i64);
    }

    /// Buffers a request while disconnected. Returns `true` on `Close`.
    fn hold(&mut self, req: Request) -> bool {
        match req {
            Request::Publish { ref batch, .. } => {
                if self.buffered_bytes + batch.len() > self.shared.cfg.buffer_bytes {
                    if let Request::Publish { done, .. } = req {
                        let _ = done.send(Err(BackendError::broker("unreachable, and its outage buffer is full")));
                    }
                } else {
                    self.buffered_bytes += batch.len();
                    self.gauge();
                    self.buffer.push_back(req);
                }
                false
            }
            Request::DeleteQueue { done, .. } => {
                let _ = done.send(());
                false
            }
            Request::Close { done } => {
                for req in self.buffer.drain(..) {
                    if let Request::Publish { done, .. } = req {
                        let _ = done.send(Err(BackendError::broker("node shutting down")));
                    }
                }
                let _ = done.send(());
                true
            }
        }
    }

    /// Fails buffered batches whose deadline has passed.
    fn expire(&mut self) {
        let now = Instant::now();
        if !self.buffer.iter().any(|r| matches!(r, Request::Publish { deadline, .. } if *deadline <= now)) {
            return;
        }
        for req in std::mem::take(&mut self.buffer) {
            match req {
                Request::Publish { batch, done, deadline, .. } if deadline <= now => {
                    self.buffered_bytes -= batch.len();
                    let _ = done.send(Err(BackendError::broker("unreachable for longer than the outage bound")));
                }
                req => self.buffer.push_back(req),
            }
        }
        self.gauge();
    }

    /// Publishes until the connection fails (`false`) or a `Close` is served (`true`).
    async fn serve(&mut self, ch: &Channel, rx: &mut mpsc::Receiver<Request>) -> bool {
        let mut inflight: Inflight = FuturesUnordered::new();
        self.expire();
        while let Some(req) = self.buffer.pop_front() {
            if let Request::Publish { batch, .. } = &req {
                self.buffered_bytes -= batch.len();
                self.gauge();
            }
            if let Err(req) = self.send(ch, req, &mut inflight).await {
                // Still unreachable: put it back and reconnect.
                self.hold_front(req);
                return false;
            }
        }
        let mut check = tokio::time::interval(Duration::from_millis(250));
        // When a confirm last arrived (or the channel opened): a broker that takes publishes
        // but confirms nothing for `STALL` is hung, and the node says so in `/readyz`.
        let mut last_confirm = Instant::now();
        loop {
            tokio::select! {
                req = rx.recv() => {
                    let Some(req) = req else { return true };
                    if let Request::Close { done } = req {
                        // Let outstanding confirms arrive (bounded), then close.
                        let _ = tokio::time::timeout(Duration::from_secs(2), async {
                            while inflight.next().await.is_some() {}
                        }).await;
                        let _ = done.send(());
                        return true;
                    }
                    if inflight.is_empty() {
                        last_confirm = Instant::now();
                    }
                    if let Err(req) = self.send(ch, req, &mut inflight).await {
                        self.hold_front(req);
                        return false;
                    }
                }
                Some(()) = inflight.next() => {
                    last_confirm = Instant::now();
                    self.shared.publisher_up.store(true, Ordering::Relaxed);
                }
                _ = check.tick() => {
                    if !ch.status().connected() {
                        return false;
                    }
                    let stalled = !inflight.is_empty() && last_confirm.elapsed() > STALL;
                    if stalled && self.shared.publisher_up.swap(false, Ordering::Relaxed) {
                        warn!(unconfirmed = inflight.len(), "RabbitMQ confirms nothing; not ready until it does");
                    }
                }
            }
        }
    }

    fn hold_front(&mut self, req: Request) {
        if let Request::Publish { batch, .. } = &req {
            self.buffered_bytes += batch.len();
            self.gauge();
        }
        self.buffer.push_front(req);
    }

    /// Sends one request; hands it back if the channel is unusable.
    async fn send(&mut self, ch: &Channel, req: Request, inflight: &mut Inflight) -> Result<(), Request> {
        let cfg = &self.shared.cfg;
        match req {
            Request::Publish { node, batch, deadline, done } => {
                if deadline <= Instant::now() {
                    let _ = done.send(Err(BackendError::broker("unreachable for longer than the outage bound")));
                    return Ok(());
                }
                trace!(%node, bytes = batch.len(), "basic.publish");
                let mut properties = BasicProperties::default();
                if cfg.persistent {
                    properties = properties.with_delivery_mode(2);
                }
                let opts = BasicPublishOptions { mandatory: true, ..Default::default() };
                let publish = ch.basic_publish(cfg.exchange().into(), node.as_str().into(), opts, &batch, properties);
                // A hung broker can stop taking frames: give up on the channel, reconnect.
                match tokio::time::timeout(STALL, publish).await {
                    Ok(Ok(confirm)) => {
                        inflight.push(Box::pin(async move {
                            // Past the deadline (plus a grace for a confirm on its way) the
                            // answer is `unavailable`; the batch may still have been delivered.
                            let confirmation = tokio::time::timeout_at(deadline + CONFIRM_GRACE, confirm).await;
                            trace!(?confirmation, "publisher confirm");
                            let res = match confirmation {
                                Ok(Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested)) => Ok(true),
                                Ok(Ok(Confirmation::Ack(Some(_)))) => Ok(false),
                                Ok(Ok(Confirmation::Nack(_))) => Err(BackendError::broker("refused the batch")),
                                Ok(Err(e)) => Err(e.into()),
                                Err(_) => Err(BackendError::broker("no confirm within the outage bound")),
                            };
                            let _ = done.send(res);
                        }));
                        Ok(())
                    }
                    Ok(Err(_)) | Err(_) => Err(Request::Publish { node, batch, deadline, done }),
                }
            }
            Request::DeleteQueue { node, done } => {
                let q = cfg.queue(&node);
                match ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()).await {
                    Ok(n) => info!(queue = %q, messages = n, "deleted a dead node's queue"),
                    Err(e) => debug!(queue = %q, error = %e, "could not delete queue"),
                }
                let _ = done.send(());
                Ok(())
            }
            Request::Close { done } => {
                let _ = done.send(());
                Ok(())
            }
        }
    }
}
