//! Prometheus metrics (`GET /metrics`), through `prometheus-client`.
//!
//! Cheap on the hot path: every counter a message touches is resolved once, here, to a
//! plain atomic (labelled families are looked up at start-up, never per message); the
//! per-message histogram is [`histogram::Histogram`], lock-free; deliveries are counted once
//! per message (`inc_by(recipients)`), never per recipient. What is cheaper to read than to
//! keep (connections open, bytes queued in outboxes, uptime) is computed at scrape time by
//! a collector the node registers.

pub mod histogram;

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

pub use histogram::Histogram;

use crate::protocol::{AckStatus, ErrorCode};

/// The `Content-Type` of what [`Metrics::render`] returns.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A counter family whose label values are known up front: one atomic per value.
#[derive(Debug)]
struct Labelled<const N: usize>([Counter; N]);

impl<const N: usize> Labelled<N> {
    fn register(registry: &mut Registry, name: &str, help: &str, key: &'static str, values: [&'static str; N]) -> Self {
        let family = Family::<[(&'static str, &'static str); 1], Counter>::default();
        registry.register(name, help, family.clone());
        Labelled(values.map(|v| family.get_or_create_owned(&[(key, v)])))
    }

    #[inline]
    fn inc(&self, i: usize) {
        if let Some(c) = self.0.get(i) {
            c.inc();
        }
    }

    fn get(&self, i: usize) -> u64 {
        self.0.get(i).map_or(0, Counter::get)
    }
}

/// Why an upgrade was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Limit,
    Draining,
    Unavailable,
    Unauthorized,
    Forbidden,
    BadRequest,
    PerIp,
    Handshakes,
}

const REFUSED: [&str; 8] =
    ["limit", "draining", "unavailable", "unauthorized", "forbidden", "bad_request", "per_ip", "handshakes"];

/// What a client frame was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    Once,
    Group,
    Join,
    Leave,
    Online,
    Members,
    Ping,
    Invalid,
    Binary,
    Refresh,
}

const FRAMES: [&str; 10] =
    ["once", "group", "join", "leave", "online", "members", "ping", "invalid", "binary", "refresh"];

/// Close codes counted apart; any other is `other`.
const CLOSE_CODES: [u16; 13] = [1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1011, 1013, 4000, 4001];
const CLOSES: [&str; 14] =
    ["1000", "1001", "1002", "1003", "1005", "1006", "1007", "1008", "1009", "1011", "1013", "4000", "4001", "other"];

/// Presence store operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceOp {
    Write,
    Locate,
    Read,
    Maintain,
}

const PRESENCE_OPS: [&str; 4] = ["write", "locate", "read", "maintain"];

/// Broker connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Publish,
    Consume,
}

const LINKS: [&str; 2] = ["publish", "consume"];

/// What the broker path records.
#[derive(Debug)]
pub struct BrokerMetrics {
    pub published: Counter,
    pub consumed: Counter,
    /// Batches the broker delivered again, dropped.
    pub duplicates: Counter,
    pub frames_per_message: Histogram,
    pub confirm_latency: Histogram,
    /// Bytes of batches held while the broker is unreachable.
    pub buffered_bytes: Gauge<i64, std::sync::atomic::AtomicI64>,
    reconnects: Labelled<2>,
}

impl BrokerMetrics {
    pub fn reconnected(&self, link: Link) {
        self.reconnects.inc(link as usize);
    }
}

/// What the presence store records.
#[derive(Debug)]
pub struct PresenceMetrics {
    ops: Labelled<4>,
    pub pipeline_size: Histogram,
    pub latency: Histogram,
    pub swept: Counter,
    pub resyncs: Counter,
}

impl PresenceMetrics {
    #[inline]
    pub fn op(&self, op: PresenceOp) {
        self.ops.inc(op as usize);
    }
}

/// Every metric of one node.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    pub accepted: Counter,
    refused: Labelled<8>,
    disconnects: Labelled<14>,
    frames: Labelled<10>,
    /// Frames pushed to client connections (one per recipient).
    pub delivered: Counter,
    acks: Labelled<2>,
    errors: Labelled<5>,
    pub unavailable: Counter,
    pub slow_consumers: Counter,
    /// Connections whose client never finished the close handshake within the linger.
    pub linger_timeouts: Counter,
    /// Times a session waited before reading its client's next frame (node congested, or
    /// its dispatcher full).
    pub backpressure_pauses: Counter,
    /// TLS handshakes on the client port, by result (`ok`, `failed`: refused or timed out).
    tls_handshakes: Labelled<2>,
    /// Message read → in every local outbox or confirmed by the broker.
    pub routing_latency: Histogram,
    pub broker: BrokerMetrics,
    pub presence: PresenceMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("chatgate");
        let counter = |r: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            r.register(name, help, c.clone());
            c
        };
        let accepted = counter(&mut r, "connections_accepted", "WebSocket upgrades accepted");
        let refused = Labelled::register(
            &mut r,
            "connections_refused",
            "WebSocket upgrades refused, by reason",
            "reason",
            REFUSED,
        );
        let disconnects = Labelled::register(&mut r, "disconnects", "Connections ended, by close code", "code", CLOSES);
        let frames = Labelled::register(&mut r, "frames_received", "Client frames received, by type", "type", FRAMES);
        let delivered = counter(&mut r, "messages_delivered", "Frames delivered to client connections (per recipient)");
        let tls_handshakes = Labelled::register(
            &mut r,
            "tls_handshakes",
            "TLS handshakes on the client port, by result",
            "result",
            ["ok", "failed"],
        );
        let acks = Labelled::register(&mut r, "acks", "Acks sent to senders, by status", "status", ["sent", "offline"]);
        let errors = Labelled::register(
            &mut r,
            "errors",
            "Error frames sent to clients, by code",
            "code",
            ErrorCode::ALL.map(ErrorCode::as_str),
        );
        let unavailable =
            counter(&mut r, "unavailable_answers", "Messages answered unavailable (broker or presence store down)");
        let slow_consumers = counter(&mut r, "slow_consumer_closes", "Connections closed 1013 as slow consumers");
        let linger_timeouts =
            counter(&mut r, "close_linger_timeouts", "Connections dropped because the client never finished the close");
        let backpressure_pauses = counter(
            &mut r,
            "backpressure_pauses",
            "Sessions that waited before reading more (outboxes behind their writers, or a full dispatcher)",
        );
        let routing_latency = Histogram::latency();
        r.register_with_unit(
            "routing_latency",
            "Message read to in every local outbox or confirmed by the broker",
            Unit::Seconds,
            routing_latency.clone(),
        );
        let broker = {
            let published = counter(&mut r, "broker_published", "AMQP messages (batches) published");
            let consumed = counter(&mut r, "broker_consumed", "AMQP messages (batches) consumed");
            let duplicates =
                counter(&mut r, "broker_duplicates", "Batches the broker delivered again, recognised and dropped");
            let frames_per_message = Histogram::counts();
            r.register("broker_frames_per_message", "Chat frames per AMQP message", frames_per_message.clone());
            let confirm_latency = Histogram::latency();
            r.register_with_unit(
                "broker_confirm_latency",
                "Publish to confirm",
                Unit::Seconds,
                confirm_latency.clone(),
            );
            let buffered_bytes = Gauge::default();
            r.register_with_unit(
                "broker_buffer",
                "Bytes held while the broker is unreachable",
                Unit::Bytes,
                buffered_bytes.clone(),
            );
            let reconnects =
                Labelled::register(&mut r, "broker_reconnects", "Broker connections re-established", "link", LINKS);
            BrokerMetrics {
                published,
                consumed,
                duplicates,
                frames_per_message,
                confirm_latency,
                buffered_bytes,
                reconnects,
            }
        };
        let presence = {
            let ops =
                Labelled::register(&mut r, "presence_operations", "Presence store round trips", "op", PRESENCE_OPS);
            let pipeline_size = Histogram::counts();
            r.register("presence_pipeline_size", "Writes per presence pipeline", pipeline_size.clone());
            let latency = Histogram::latency();
            r.register_with_unit("presence_latency", "Presence store round trip", Unit::Seconds, latency.clone());
            let swept = counter(&mut r, "presence_nodes_swept", "Dead nodes swept by this node");
            let resyncs = counter(&mut r, "presence_resyncs", "Re-syncs of this node's presence after store data loss");
            PresenceMetrics { ops, pipeline_size, latency, swept, resyncs }
        };
        r.register("build", "Build information", Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]));
        Metrics {
            registry: Mutex::new(r),
            accepted,
            refused,
            disconnects,
            frames,
            delivered,
            acks,
            errors,
            unavailable,
            slow_consumers,
            linger_timeouts,
            backpressure_pauses,
            tls_handshakes,
            routing_latency,
            broker,
            presence,
        }
    }

    /// Adds values computed at scrape time.
    pub fn register_collector(&self, collector: Box<dyn Collector>) {
        self.registry.lock().register_collector(collector);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 << 10);
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry.lock());
        out
    }

    #[inline]
    pub fn refused(&self, why: Refused) {
        self.refused.inc(why as usize);
    }

    /// A TLS handshake on the client port finished (`ok`) or failed or timed out.
    pub fn tls_handshake(&self, ok: bool) {
        self.tls_handshakes.inc(usize::from(!ok));
    }

    /// TLS handshakes with that result so far (tests).
    pub fn tls_handshakes(&self, ok: bool) -> u64 {
        self.tls_handshakes.get(usize::from(!ok))
    }

    #[inline]
    pub fn frame(&self, kind: FrameKind) {
        self.frames.inc(kind as usize);
    }

    #[inline]
    pub fn ack(&self, status: AckStatus) {
        self.acks.inc(status as usize);
    }

    #[inline]
    pub fn error(&self, code: ErrorCode) {
        self.errors.inc(code as usize);
    }

    /// A connection ended with `code` (`None`: no close frame either way, 1006).
    pub fn disconnect(&self, code: Option<u16>) {
        let code = code.unwrap_or(1006);
        let i = CLOSE_CODES.iter().position(|&c| c == code).unwrap_or(CLOSE_CODES.len());
        self.disconnects.inc(i);
    }

    /// Connections that ended with `code` (for tests and the dashboard check).
    pub fn disconnects_with(&self, code: u16) -> u64 {
        CLOSE_CODES.iter().position(|&c| c == code).map_or(0, |i| self.disconnects.get(i))
    }

    /// Handshakes refused for `reason` (a `chatgate_refused_total` label) so far.
    pub fn refused_with(&self, reason: &str) -> u64 {
        REFUSED.iter().position(|&r| r == reason).map_or(0, |i| self.refused.get(i))
    }
}

/// A gauge computed when scraped.
pub struct ScrapeGauge {
    pub name: &'static str,
    pub help: &'static str,
    pub unit: Option<Unit>,
    pub value: Box<dyn Fn() -> i64 + Send + Sync>,
}

impl std::fmt::Debug for ScrapeGauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScrapeGauge").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Collector for ScrapeGauge {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        let gauge = prometheus_client::metrics::gauge::ConstGauge::new((self.value)());
        let metric = encoder.encode_descriptor(self.name, self.help, self.unit.as_ref(), gauge.metric_type())?;
        gauge.encode(metric)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prefixed_names_with_units_and_totals() {
        let m = Metrics::new();
        m.frame(FrameKind::Once);
        m.ack(AckStatus::Offline);
        m.disconnect(Some(1001));
        m.disconnect(Some(4321));
        m.routing_latency.observe_duration(std::time::Duration::from_micros(200));
        m.register_collector(Box::new(ScrapeGauge {
            name: "connections",
            help: "open",
            unit: None,
            value: Box::new(|| 7),
        }));
        let text = m.render();
        for line in [
            "chatgate_frames_received_total{type=\"once\"} 1",
            "chatgate_acks_total{status=\"offline\"} 1",
            "chatgate_disconnects_total{code=\"1001\"} 1",
            "chatgate_disconnects_total{code=\"other\"} 1",
            "chatgate_routing_latency_seconds_count 1",
            "chatgate_routing_latency_seconds_bucket{le=\"0.00025\"} 1",
            "chatgate_connections 7",
            "chatgate_build_info{version=\"",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert_eq!(m.disconnects_with(1001), 1);
    }
}
