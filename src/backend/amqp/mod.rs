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

mod consumer;
mod publisher;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use lapin::options::ExchangeDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use super::{BackendError, BoxFuture, Broker, Inbox};
use crate::tasks::Tasks;
use publisher::Publisher;

/// Requests queued for the publisher before `publish` fails fast.
const PUBLISH_QUEUE: usize = 65_536;

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
    /// AMQP heartbeat in seconds (0: off) unless the URL sets one: a broker that stops
    /// answering (hung, partitioned) is detected within two heartbeats.
    pub heartbeat: u16,
    /// PEM certificates trusted for `amqps://` besides the system's (`CHAT_AMQP_CA_FILE`).
    pub ca: Option<String>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl AmqpConfig {
    pub(super) fn exchange(&self) -> String {
        format!("{}.nodes", self.cluster)
    }
    pub(super) fn queue(&self, node: &str) -> String {
        format!("{}.node.{node}", self.cluster)
    }
}

/// Outcome of a publish that the broker confirmed.
pub type Routed = bool;

pub(super) enum Request {
    Publish { node: String, batch: Bytes, deadline: Instant, done: oneshot::Sender<Result<Routed, BackendError>> },
    DeleteQueue { node: String, done: oneshot::Sender<()> },
    Close { done: oneshot::Sender<()> },
}

pub(super) struct Shared {
    pub(super) cfg: AmqpConfig,
    pub(super) publisher_up: AtomicBool,
    pub(super) consumer_up: AtomicBool,
    pub(super) stop_consumer: Notify,
    pub(super) consumer_stopped: Notify,
    pub(super) consumer_running: AtomicBool,
}

/// The RabbitMQ implementation of [`Broker`].
pub struct AmqpBroker {
    shared: Arc<Shared>,
    requests: mpsc::Sender<Request>,
    /// The publisher, until [`Broker::start`] spawns it.
    idle: Mutex<Option<(Publisher, mpsc::Receiver<Request>)>>,
}

impl std::fmt::Debug for AmqpBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpBroker").field("node", &self.shared.cfg.node).finish_non_exhaustive()
    }
}

impl AmqpBroker {
    /// Sets up the broker; spawns nothing. [`Broker::start`] spawns the publisher and the
    /// consumer, which connect in the background.
    pub fn new(cfg: AmqpConfig) -> Result<AmqpBroker, BackendError> {
        cfg.url.parse::<lapin::uri::AMQPUri>().map_err(|e| BackendError::broker(format!("invalid AMQP URL: {e}")))?;
        let shared = Arc::new(Shared {
            cfg,
            publisher_up: AtomicBool::new(false),
            consumer_up: AtomicBool::new(false),
            stop_consumer: Notify::new(),
            consumer_stopped: Notify::new(),
            consumer_running: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel(PUBLISH_QUEUE);
        let publisher = Publisher::new(shared.clone());
        Ok(AmqpBroker { shared, requests: tx, idle: Mutex::new(Some((publisher, rx))) })
    }
}

impl Broker for AmqpBroker {
    fn publish(&self, node: &str, batch: Bytes, deadline: Instant) -> BoxFuture<'static, Result<Routed, BackendError>> {
        let (done, rx) = oneshot::channel();
        let req = Request::Publish { node: node.to_owned(), batch, deadline, done };
        if self.requests.try_send(req).is_err() {
            return Box::pin(std::future::ready(Err(BackendError::broker("publish queue full"))));
        }
        Box::pin(async move { rx.await.unwrap_or_else(|_| Err(BackendError::broker("publisher stopped"))) })
    }

    fn start(&self, inbox: Inbox, tasks: &Tasks) {
        let Some((publisher, rx)) = self.idle.lock().take() else { return };
        let stopped = tasks.stopped();
        tasks.spawn(async move {
            tokio::select! {
                () = publisher.run(rx) => {}
                () = stopped => {}
            }
        });
        self.shared.consumer_running.store(true, Ordering::Relaxed);
        let (shared, stopped) = (self.shared.clone(), tasks.stopped());
        tasks.spawn(async move {
            tokio::select! {
                () = consumer::run(shared, inbox) => {}
                () = stopped => {}
            }
        });
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
pub(super) async fn connect(cfg: &AmqpConfig, role: &str) -> lapin::Result<Connection> {
    let name = format!("chatgate {} {role}", cfg.node);
    let props = ConnectionProperties::default().with_connection_name(name.into());
    let mut uri: lapin::uri::AMQPUri = cfg.url.parse().map_err(|e: String| {
        lapin::Error::from(lapin::ErrorKind::IOError(std::io::Error::new(std::io::ErrorKind::InvalidInput, e).into()))
    })?;
    if uri.query.heartbeat.is_none() {
        uri.query.heartbeat = Some(cfg.heartbeat);
    }
    let tls = lapin::tcp::OwnedTLSConfig { identity: None, cert_chain: cfg.ca.clone() };
    let connect = Connection::connect_uri_with_config(uri, props, tls, lapin::runtime::default_runtime()?);
    match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(res) => res,
        Err(_) => Err(lapin::ErrorKind::IOError(std::io::Error::from(std::io::ErrorKind::TimedOut).into()).into()),
    }
}

pub(super) async fn declare_exchange(ch: &Channel, cfg: &AmqpConfig) -> lapin::Result<()> {
    // auto_delete: the exchange goes once the last node queue of the cluster is gone.
    let opts = ExchangeDeclareOptions { durable: true, auto_delete: true, ..Default::default() };
    ch.exchange_declare(cfg.exchange().into(), ExchangeKind::Direct, opts, FieldTable::default()).await
}
