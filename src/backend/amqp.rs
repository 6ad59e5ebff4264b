//! RabbitMQ broker (lapin): node-addressed batches over one direct exchange.
//!
//! Topology, all names prefixed with the cluster name `C`:
//! * exchange `C.nodes`, direct, durable;
//! * queue `C.node.<node>` per node, durable, bound with routing key `<node>`. The node
//!   that sweeps a dead one deletes its queue; `x-expires` (2 × the lease, at least a minute)
//!   removes it when no node is left to do so.
//!
//! Publishing and consuming use separate connections, each with its own reconnect loop
//! (declaring the topology again every time). Publishes are `mandatory` (a batch for a node
//! whose queue is gone comes back instead of vanishing), persistent by default (a confirmed
//! batch survives a broker restart), and confirmed with a window: the publisher never waits
//! for one confirm before sending the next. The consumer uses a prefetch window and acks with
//! `multiple` after each burst, only after the batch is in the local outboxes.
//!
//! While the publisher is disconnected, batches wait in a bounded buffer (bytes and age)
//! and go out after it reconnects; a batch that overflows the buffer or outlives its age
//! fails (`unavailable` for its messages). A batch in flight when the connection drops
//! fails too: it may or may not have been delivered, and is not sent twice.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::{debug, info, trace, warn};

use super::{BackendError, BoxFuture, Broker, Inbox};

/// Longest an AMQP delivery waits to be acknowledged (acks are batched).
const ACK_DELAY: Duration = Duration::from_millis(5);

/// How a node reaches RabbitMQ and how it publishes.
#[derive(Debug, Clone)]
pub struct AmqpConfig {
    pub url: String,
    pub cluster: String,
    pub node: String,
    /// Node lease; queues expire after twice this unused.
    pub lease: Duration,
    /// Persistent messages (survive a broker restart once confirmed).
    pub persistent: bool,
    /// Unacknowledged deliveries the broker may push to this node.
    pub prefetch: u16,
    /// Bytes of batches held while the broker is unreachable.
    pub buffer_bytes: usize,
    /// How long a batch may wait for the broker before its messages fail.
    pub buffer_for: Duration,
}

impl AmqpConfig {
    fn exchange(&self) -> String {
        format!("{}.nodes", self.cluster)
    }
    fn queue(&self, node: &str) -> String {
        format!("{}.node.{node}", self.cluster)
    }
}

/// Outcome of a publish that the broker confirmed.
pub type Routed = bool;

enum Request {
    Publish { node: String, batch: Bytes, at: Instant, done: oneshot::Sender<Result<Routed, BackendError>> },
    DeleteQueue { node: String, done: oneshot::Sender<()> },
    Close { done: oneshot::Sender<()> },
}

struct Shared {
    cfg: AmqpConfig,
    publisher_up: AtomicBool,
    consumer_up: AtomicBool,
    stop_consumer: Notify,
    consumer_stopped: Notify,
    consumer_running: AtomicBool,
}

/// The RabbitMQ implementation of [`Broker`].
pub struct AmqpBroker {
    shared: Arc<Shared>,
    requests: mpsc::Sender<Request>,
}

impl std::fmt::Debug for AmqpBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpBroker").field("node", &self.shared.cfg.node).finish_non_exhaustive()
    }
}

impl AmqpBroker {
    /// Starts the publisher (connecting in the background). Call [`Broker::start`] to consume.
    pub fn new(cfg: AmqpConfig) -> Result<AmqpBroker, BackendError> {
        cfg.url.parse::<lapin::uri::AMQPUri>().map_err(|e| BackendError::Broker(format!("invalid AMQP URL: {e}")))?;
        let shared = Arc::new(Shared {
            cfg,
            publisher_up: AtomicBool::new(false),
            consumer_up: AtomicBool::new(false),
            stop_consumer: Notify::new(),
            consumer_stopped: Notify::new(),
            consumer_running: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel(65_536);
        tokio::spawn(Publisher { shared: shared.clone(), buffer: VecDeque::new(), buffered_bytes: 0 }.run(rx));
        Ok(AmqpBroker { shared, requests: tx })
    }
}

impl Broker for AmqpBroker {
    fn publish(&self, node: &str, batch: Bytes) -> BoxFuture<'static, Result<Routed, BackendError>> {
        let (done, rx) = oneshot::channel();
        let req = Request::Publish { node: node.to_owned(), batch, at: Instant::now(), done };
        if self.requests.try_send(req).is_err() {
            return Box::pin(std::future::ready(Err(BackendError::Broker("publish queue full".into()))));
        }
        Box::pin(async move { rx.await.unwrap_or_else(|_| Err(BackendError::Broker("publisher stopped".into()))) })
    }

    fn start(&self, inbox: Inbox) {
        self.shared.consumer_running.store(true, Ordering::Relaxed);
        tokio::spawn(consume(self.shared.clone(), inbox));
    }

    fn remove_node<'a>(&'a self, node: &'a str) -> BoxFuture<'a, ()> {
        let (done, rx) = oneshot::channel();
        let req = Request::DeleteQueue { node: node.to_owned(), done };
        Box::pin(async move {
            if self.requests.send(req).await.is_ok() {
                let _ = rx.await;
            }
        })
    }

    fn is_healthy(&self) -> bool {
        self.shared.publisher_up.load(Ordering::Relaxed)
            && (!self.shared.consumer_running.load(Ordering::Relaxed)
                || self.shared.consumer_up.load(Ordering::Relaxed))
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // Consumer first: it deletes this node's queue, so other nodes' batches for it
            // come back as unroutable instead of piling up.
            if self.shared.consumer_running.load(Ordering::Relaxed) {
                let stopped = self.shared.consumer_stopped.notified();
                self.shared.stop_consumer.notify_one();
                let _ = tokio::time::timeout(Duration::from_secs(2), stopped).await;
            }
            let (done, rx) = oneshot::channel();
            if self.requests.send(Request::Close { done }).await.is_ok() {
                let _ = rx.await;
            }
        })
    }
}

/// Connects with a bounded wait: a half-up broker must not stall the reconnect loops.
async fn connect(url: &str, name: &str) -> lapin::Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    match tokio::time::timeout(Duration::from_secs(5), Connection::connect(url, props)).await {
        Ok(res) => res,
        Err(_) => Err(lapin::ErrorKind::IOError(std::io::Error::from(std::io::ErrorKind::TimedOut).into()).into()),
    }
}

async fn declare_exchange(ch: &Channel, cfg: &AmqpConfig) -> lapin::Result<()> {
    // auto_delete: the exchange goes once the last node queue of the cluster is gone.
    let opts = ExchangeDeclareOptions { durable: true, auto_delete: true, ..Default::default() };
    ch.exchange_declare(cfg.exchange().into(), ExchangeKind::Direct, opts, FieldTable::default()).await
}

struct Publisher {
    shared: Arc<Shared>,
    /// Batches waiting for a connection, oldest first.
    buffer: VecDeque<Request>,
    buffered_bytes: usize,
}

type Inflight = FuturesUnordered<BoxFuture<'static, ()>>;

impl Publisher {
    async fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let conn = match self.connect().await {
                Ok(c) => {
                    backoff = Duration::from_millis(100);
                    c
                }
                Err(e) => {
                    self.shared.publisher_up.store(false, Ordering::Relaxed);
                    debug!(error = %e, "publisher cannot connect");
                    // Keep taking requests (into the buffer) while waiting to retry.
                    let until = tokio::time::Instant::now() + backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
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
        let conn = connect(&cfg.url, &format!("chatgate {} publish", cfg.node)).await?;
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        declare_exchange(&ch, cfg).await?;
        Ok((conn, ch))
    }

    /// Buffers a request while disconnected. Returns `true` on `Close`.
    fn hold(&mut self, req: Request) -> bool {
        match req {
            Request::Publish { ref batch, .. } => {
                if self.buffered_bytes + batch.len() > self.shared.cfg.buffer_bytes {
                    if let Request::Publish { done, .. } = req {
                        let _ = done.send(Err(BackendError::Broker("broker unreachable and buffer full".into())));
                    }
                } else {
                    self.buffered_bytes += batch.len();
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
                        let _ = done.send(Err(BackendError::Broker("node shutting down".into())));
                    }
                }
                let _ = done.send(());
                true
            }
        }
    }

    /// Fails buffered batches older than the buffer age.
    fn expire(&mut self) {
        let max_age = self.shared.cfg.buffer_for;
        while let Some(Request::Publish { at, .. }) = self.buffer.front() {
            if at.elapsed() < max_age {
                break;
            }
            if let Some(Request::Publish { batch, done, .. }) = self.buffer.pop_front() {
                self.buffered_bytes -= batch.len();
                let _ = done.send(Err(BackendError::Broker("broker unreachable".into())));
            }
        }
    }

    /// Publishes until the connection fails (`false`) or a `Close` is served (`true`).
    async fn serve(&mut self, ch: &Channel, rx: &mut mpsc::Receiver<Request>) -> bool {
        let mut inflight: Inflight = FuturesUnordered::new();
        self.expire();
        while let Some(req) = self.buffer.pop_front() {
            if let Request::Publish { batch, .. } = &req {
                self.buffered_bytes -= batch.len();
            }
            if let Err(req) = self.send(ch, req, &mut inflight).await {
                // Still unreachable: put it back and reconnect.
                self.hold_front(req);
                return false;
            }
        }
        let mut check = tokio::time::interval(Duration::from_millis(250));
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
                    if let Err(req) = self.send(ch, req, &mut inflight).await {
                        self.hold_front(req);
                        return false;
                    }
                }
                Some(()) = inflight.next() => {}
                _ = check.tick() => {
                    if !ch.status().connected() {
                        return false;
                    }
                }
            }
        }
    }

    fn hold_front(&mut self, req: Request) {
        if let Request::Publish { batch, .. } = &req {
            self.buffered_bytes += batch.len();
        }
        self.buffer.push_front(req);
    }

    /// Sends one request; hands it back if the channel is unusable.
    async fn send(&mut self, ch: &Channel, req: Request, inflight: &mut Inflight) -> Result<(), Request> {
        let cfg = &self.shared.cfg;
        match req {
            Request::Publish { node, batch, at, done } => {
                trace!(%node, bytes = batch.len(), "basic.publish");
                let mut properties = BasicProperties::default();
                if cfg.persistent {
                    properties = properties.with_delivery_mode(2);
                }
                let opts = BasicPublishOptions { mandatory: true, ..Default::default() };
                match ch.basic_publish(cfg.exchange().into(), node.as_str().into(), opts, &batch, properties).await {
                    Ok(confirm) => {
                        inflight.push(Box::pin(async move {
                            let confirmation = confirm.await;
                            trace!(?confirmation, "publisher confirm");
                            let res = match confirmation {
                                Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => Ok(true),
                                Ok(Confirmation::Ack(Some(_))) => Ok(false),
                                Ok(Confirmation::Nack(_)) => {
                                    Err(BackendError::Broker("broker refused the batch".into()))
                                }
                                Err(e) => Err(BackendError::Broker(format!("confirm lost: {e}"))),
                            };
                            let _ = done.send(res);
                        }));
                        Ok(())
                    }
                    Err(_) => Err(Request::Publish { node, batch, at, done }),
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

/// The consumer: connect, declare, consume into `inbox`; on failure, reconnect.
async fn consume(shared: Arc<Shared>, inbox: Inbox) {
    let mut first = true;
    let mut backoff = Duration::from_millis(100);
    loop {
        let stop = shared.stop_consumer.notified();
        tokio::pin!(stop);
        let res = tokio::select! {
            res = consume_once(&shared, &inbox, first) => res,
            () = &mut stop => Ok(true),
        };
        shared.consumer_up.store(false, Ordering::Relaxed);
        match res {
            Ok(true) => {
                delete_own_queue(&shared).await;
                shared.consumer_stopped.notify_one();
                return;
            }
            Ok(false) => warn!("consumer lost its RabbitMQ connection; reconnecting"),
            Err(e) => debug!(error = %e, "consumer cannot connect"),
        }
        first = false;
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = &mut stop => {
                shared.consumer_stopped.notify_one();
                return;
            }
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// One consumer connection's life. `Ok(false)`: the connection ended.
async fn consume_once(shared: &Shared, inbox: &Inbox, first: bool) -> lapin::Result<bool> {
    let cfg = &shared.cfg;
    let conn = connect(&cfg.url, &format!("chatgate {} consume", cfg.node)).await?;
    let ch = conn.create_channel().await?;
    declare_exchange(&ch, cfg).await?;
    let queue = cfg.queue(&cfg.node);
    let mut args = FieldTable::default();
    // A dead node's queue is deleted by whoever sweeps it; expiry is the fallback for when
    // no node is left to sweep. It must outlast this node's own reconnects (broker restarts).
    let expires = (2 * cfg.lease.as_millis()).clamp(60_000, u32::MAX as u128) as u32;
    args.insert("x-expires".into(), AMQPValue::LongUInt(expires));
    let opts = QueueDeclareOptions { durable: true, ..Default::default() };
    ch.queue_declare(queue.as_str().into(), opts, args).await?;
    if first {
        // Whatever an earlier process with this node id left is for connections that are
        // gone (and whose ids may since belong to someone else).
        let n = ch.queue_purge(queue.as_str().into(), QueuePurgeOptions::default()).await?;
        if n > 0 {
            info!(messages = n, "purged batches left for a previous run of this node");
        }
    }
    ch.queue_bind(
        queue.as_str().into(),
        cfg.exchange().into(),
        cfg.node.as_str().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    ch.basic_qos(cfg.prefetch, BasicQosOptions::default()).await?;
    let opts = BasicConsumeOptions { exclusive: true, ..Default::default() };
    let mut consumer = ch
        .basic_consume(queue.as_str().into(), format!("chatgate-{}", cfg.node).into(), opts, FieldTable::default())
        .await?;
    info!(queue = %queue, "consuming from RabbitMQ");
    shared.consumer_up.store(true, Ordering::Relaxed);
    let mut unacked = None;
    let mut count = 0u32;
    loop {
        // Acks are batched (multiple): every 64 deliveries, or ACK_DELAY after the first
        // unacknowledged one, whichever comes first. Each batch is already in the local
        // outboxes when it is counted; a crash before the ack only means redelivery.
        let next = match consumer.next().now_or_never() {
            Some(next) => next,
            None if unacked.is_some() => match tokio::time::timeout(ACK_DELAY, consumer.next()).await {
                Ok(next) => next,
                Err(_) => {
                    if let Some(acker) = unacked.take() {
                        ack(&acker).await?;
                    }
                    count = 0;
                    continue;
                }
            },
            None => consumer.next().await,
        };
        let delivery = match next {
            Some(Ok(d)) => d,
            Some(Err(e)) => return Err(e),
            None => return Ok(false),
        };
        inbox(Bytes::from(delivery.data));
        unacked = Some(delivery.acker);
        count += 1;
        if count >= 64 {
            if let Some(acker) = unacked.take() {
                ack(&acker).await?;
            }
            count = 0;
        }
    }
}

async fn ack(acker: &lapin::Acker) -> lapin::Result<()> {
    acker.ack(BasicAckOptions { multiple: true }).await.map(|_| ())
}

async fn delete_own_queue(shared: &Shared) {
    let cfg = &shared.cfg;
    let res = async {
        let conn = connect(&cfg.url, &format!("chatgate {} cleanup", cfg.node)).await?;
        let ch = conn.create_channel().await?;
        ch.queue_delete(cfg.queue(&cfg.node).as_str().into(), QueueDeleteOptions::default()).await?;
        conn.close(200, "bye".into()).await
    };
    match tokio::time::timeout(Duration::from_secs(2), res).await {
        Ok(Ok(())) => info!("deleted this node's queue"),
        Ok(Err(e)) => warn!(error = %e, "could not delete this node's queue"),
        Err(_) => warn!("deleting this node's queue timed out"),
    }
}
