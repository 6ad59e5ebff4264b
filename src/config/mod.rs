//! Configuration: every setting is a `CHAT_*` (or `RABBIT_MQ_URL`, `REDIS_*`, `RUST_LOG`)
//! environment variable and the same-named `--flag`, declared once below with its default
//! and doc line. clap reads both and writes `--help`; values are validated once, at
//! start-up. An invalid value stops start-up with a message naming the variable (the value
//! name in every message is the variable), exit code 64.
//!
//! Defaults that depend on the machine (`4 x cores`, `<hostname>-<random>`) are written as
//! that text, which the value parser understands: the text in `--help`, in the README's
//! table and in the code is the same string.

mod keys;
mod parse;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, ValueEnum};

pub use keys::PublicKey;

use crate::transport::ServerTls;
use parse::{listen, log_filter, millis, name, node_id, non_empty, per_core, ranged};

/// `EX_USAGE` from sysexits.h: the exit code for bad configuration.
pub const EXIT_CONFIG: u8 = 64;

/// The default of `CHAT_RATE_BURST`, resolved against `CHAT_RATE_LIMIT`.
const BURST_DEFAULT: &str = "2 x CHAT_RATE_LIMIT";

/// Validated configuration.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "chatgate",
    version,
    about = "chatgate: a real-time chat gateway (WebSocket clients, RabbitMQ routing, Redis presence)",
    after_help = "Every option is also read from the environment variable it names (a flag wins over the \
                  variable). An invalid value exits with code 64."
)]
pub struct Config {
    /// Address to serve HTTP and WebSocket on (host:port; a host name is resolved).
    #[arg(long, env = "CHAT_LISTEN", value_name = "CHAT_LISTEN", default_value = "0.0.0.0:8080", value_parser = listen)]
    pub listen: SocketAddr,
    /// This node's id (1-128 of A-Z a-z 0-9 _ . : @ -); unique per cluster.
    #[arg(long, env = "CHAT_NODE_ID", value_name = "CHAT_NODE_ID", default_value = parse::NODE_ID_DEFAULT, value_parser = node_id)]
    pub node_id: String,
    /// Largest client frame accepted; larger closes the connection with 1009.
    #[arg(long, env = "CHAT_MAX_MESSAGE_BYTES", value_name = "CHAT_MAX_MESSAGE_BYTES", default_value = "65536", value_parser = ranged::<usize>(64, 64 << 20))]
    pub max_message_bytes: usize,
    /// Client frames per second per connection.
    #[arg(long, env = "CHAT_RATE_LIMIT", value_name = "CHAT_RATE_LIMIT", default_value = "100", value_parser = ranged::<u32>(1, 1_000_000))]
    pub rate_limit: u32,
    /// Token-bucket burst for the rate limit.
    #[arg(long, env = "CHAT_RATE_BURST", value_name = "CHAT_RATE_BURST", default_value = BURST_DEFAULT, value_parser = parse::burst)]
    pub rate_burst: u32,
    /// Close with 1008 once a connection has been rate limited this long without a break.
    #[arg(long = "rate-limit-close-ms", env = "CHAT_RATE_LIMIT_CLOSE_MS", value_name = "CHAT_RATE_LIMIT_CLOSE_MS", default_value = "10000", value_parser = millis(1, 86_400_000))]
    pub rate_limit_close: Duration,
    /// Frames queued for one connection. Past half of it the node's senders wait (fan-in control); a client that takes nothing meanwhile is closed 1013 as a slow consumer; twice it is never exceeded.
    #[arg(long, env = "CHAT_OUTBOX_FRAMES", value_name = "CHAT_OUTBOX_FRAMES", default_value = "1024", value_parser = ranged::<usize>(8, 1 << 24))]
    pub outbox_frames: usize,
    /// Bytes queued for one connection, same rules.
    #[arg(long, env = "CHAT_OUTBOX_BYTES", value_name = "CHAT_OUTBOX_BYTES", default_value = "1048576", value_parser = ranged::<usize>(1024, 1 << 32))]
    pub outbox_bytes: usize,
    /// A client whose socket takes nothing for this long while its outbox is past half a bound is a slow consumer (1013). Until then a full outbox holds the node's senders back (fan-in control).
    #[arg(long = "slow-consumer-ms", env = "CHAT_SLOW_CONSUMER_MS", value_name = "CHAT_SLOW_CONSUMER_MS", default_value = "1000", value_parser = millis(10, 600_000))]
    pub slow_consumer: Duration,
    /// Server ping interval; two silent intervals close the connection (4000).
    #[arg(long = "heartbeat-ms", env = "CHAT_HEARTBEAT_MS", value_name = "CHAT_HEARTBEAT_MS", default_value = "25000", value_parser = millis(10, 3_600_000))]
    pub heartbeat: Duration,
    /// On SIGTERM/SIGINT: time allowed to flush clients, close them 1001 and release presence.
    #[arg(long = "shutdown-grace-ms", env = "CHAT_SHUTDOWN_GRACE_MS", value_name = "CHAT_SHUTDOWN_GRACE_MS", default_value = "10000", value_parser = millis(0, 3_600_000))]
    pub shutdown_grace: Duration,
    /// WebSocket connections per node; more get HTTP 503.
    #[arg(long, env = "CHAT_MAX_CONNECTIONS", value_name = "CHAT_MAX_CONNECTIONS", default_value = "100000", value_parser = ranged::<usize>(1, 10_000_000))]
    pub max_connections: usize,
    /// WebSocket connections per client address, an IPv6 client counted by its /64 (0: no cap); more get HTTP 503. The address is the peer's, or what a trusted proxy says (CHAT_TRUSTED_PROXIES).
    #[arg(long = "max-connections-per-ip", env = "CHAT_MAX_CONNECTIONS_PER_IP", value_name = "CHAT_MAX_CONNECTIONS_PER_IP", default_value = "0", value_parser = ranged::<usize>(0, 10_000_000))]
    pub max_connections_per_ip: usize,
    /// Comma list of proxy addresses or networks (10.0.0.0/8, ::1) whose X-Forwarded-For names the client; from anyone else the header is ignored. Unset: none.
    #[arg(long, env = "CHAT_TRUSTED_PROXIES", value_name = "CHAT_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse::net)]
    pub trusted_proxies: Option<Vec<ipnet::IpNet>>,
    /// WebSocket handshakes in progress at once (token check, id allocation, presence registration); more get HTTP 503.
    #[arg(long, env = "CHAT_MAX_HANDSHAKES", value_name = "CHAT_MAX_HANDSHAKES", default_value = "1024", value_parser = ranged::<usize>(1, 1_000_000))]
    pub max_handshakes: usize,
    /// Bytes read from a client's socket at a time; the read buffer every connection holds, idle or not (a larger frame is read in several reads).
    #[arg(long, env = "CHAT_READ_BUFFER_BYTES", value_name = "CHAT_READ_BUFFER_BYTES", default_value = "4096", value_parser = ranged::<usize>(256, 1 << 20))]
    pub read_buffer_bytes: usize,
    /// Most bytes a connection's socket may hold unsent in the kernel (TCP_NOTSENT_LOWAT); the rest waits in the outbox, whose bounds then apply to a client that stops reading. 0: the kernel's default (megabytes).
    #[arg(long, env = "CHAT_KERNEL_UNSENT_BYTES", value_name = "CHAT_KERNEL_UNSENT_BYTES", default_value = "131072", value_parser = ranged::<u32>(0, 1 << 30))]
    pub kernel_unsent_bytes: u32,
    /// Time a client has to send a request's head (request line and headers), on a new connection or between keep-alive requests; slower clients are disconnected (slow-loris guard).
    #[arg(long = "header-read-timeout-ms", env = "CHAT_HEADER_READ_TIMEOUT_MS", value_name = "CHAT_HEADER_READ_TIMEOUT_MS", default_value = "10000", value_parser = millis(100, 600_000))]
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers) accepted; a larger one gets HTTP 431 and the connection is closed.
    #[arg(long, env = "CHAT_MAX_REQUEST_HEAD_BYTES", value_name = "CHAT_MAX_REQUEST_HEAD_BYTES", default_value = "16384", value_parser = ranged::<usize>(8192, 1 << 20))]
    pub max_request_head_bytes: usize,
    /// PEM certificate chain (leaf first) for TLS on CHAT_LISTEN: clients then use wss:// and https://. Needs CHAT_TLS_KEY_FILE. Both files are read again on SIGHUP. Unset: plain TCP (terminate TLS in front).
    #[arg(long, env = "CHAT_TLS_CERT_FILE", value_name = "CHAT_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of CHAT_TLS_CERT_FILE's certificate.
    #[arg(long, env = "CHAT_TLS_KEY_FILE", value_name = "CHAT_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// The loaded identity, when both files are set.
    #[arg(skip)]
    pub tls: Option<Arc<ServerTls>>,
    /// Groups one connection may join.
    #[arg(long = "max-groups-per-conn", env = "CHAT_MAX_GROUPS_PER_CONN", value_name = "CHAT_MAX_GROUPS_PER_CONN", default_value = "1000", value_parser = ranged::<usize>(1, 1_000_000))]
    pub max_groups: usize,
    /// Bearer token every /api/* request needs (Authorization: Bearer), else HTTP 401. Unset: POST /api/publish answers 404 and the read endpoints are open.
    #[arg(long, env = "CHAT_API_KEY", value_name = "CHAT_API_KEY", hide_env_values = true, value_parser = non_empty)]
    pub api_key: Option<Secret>,
    /// HS256 secret. With it (or CHAT_JWT_PUBLIC_KEY_FILE), a connection needs a token (?token= or Authorization: Bearer) whose `sub` is the user id; otherwise HTTP 401. Unset (both): anonymous ids.
    #[arg(long, env = "CHAT_JWT_SECRET", value_name = "CHAT_JWT_SECRET", hide_env_values = true, value_parser = non_empty)]
    pub jwt_secret: Option<Secret>,
    /// PEM file with the public key for RS256 (an RSA key) or ES256 (a P-256 key) tokens, read once at start-up. May be set together with CHAT_JWT_SECRET: a token's `alg` picks the key.
    #[arg(long, env = "CHAT_JWT_PUBLIC_KEY_FILE", value_name = "CHAT_JWT_PUBLIC_KEY_FILE", value_parser = parse::public_key_file)]
    pub jwt_public_key_file: Option<PublicKey>,
    /// Clock skew allowed on a token's `exp` and `nbf`, in seconds; a connection is closed 4001 this long after its token's `exp`.
    #[arg(long = "jwt-leeway-s", env = "CHAT_JWT_LEEWAY_S", value_name = "CHAT_JWT_LEEWAY_S", default_value = "5", value_parser = parse::seconds(0, 3600))]
    pub jwt_leeway: Duration,
    /// When set, a token's `iss` must be this value.
    #[arg(long, env = "CHAT_JWT_ISSUER", value_name = "CHAT_JWT_ISSUER", value_parser = parse::text)]
    pub jwt_issuer: Option<String>,
    /// When set, a token's `aud` must be (or list) this value. Unset: `aud` is not checked.
    #[arg(long, env = "CHAT_JWT_AUDIENCE", value_name = "CHAT_JWT_AUDIENCE", value_parser = parse::text)]
    pub jwt_audience: Option<String>,
    /// Comma list of allowed Origin values for WebSocket upgrades (* allows all); others get HTTP 403. Unset: any; clients that send no Origin are not checked.
    #[arg(long, env = "CHAT_ALLOWED_ORIGINS", value_name = "CHAT_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Option<Vec<String>>,
    /// Router shards (rounded up to a power of two).
    #[arg(long, env = "CHAT_SHARDS", value_name = "CHAT_SHARDS", default_value = "4 x cores", value_parser = per_core(4096))]
    pub shards: usize,
    /// Tokio worker threads.
    #[arg(long, env = "CHAT_WORKERS", value_name = "CHAT_WORKERS", default_value = "cores", value_parser = per_core(1024))]
    pub workers: usize,
    /// Log format: pretty, or json (one object per line, on stderr).
    #[arg(long, env = "CHAT_LOG_FORMAT", value_name = "CHAT_LOG_FORMAT", default_value = "pretty")]
    pub log_format: LogFormat,
    /// Log filter (tracing-subscriber EnvFilter syntax). Nothing is logged per message at info.
    #[arg(long, env = "RUST_LOG", value_name = "RUST_LOG", default_value = "info", value_parser = log_filter)]
    pub log_filter: String,
    #[command(flatten)]
    pub cluster: ClusterConfig,
    /// Echo every client message back instead of treating it as a request (the conformance
    /// harness, `examples/echo.rs`): no variable or flag, so never on in production.
    #[arg(skip)]
    pub echo: bool,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Cluster mode: all nodes of a cluster use the same Redis, RabbitMQ and `CHAT_CLUSTER`.
/// Without Redis and RabbitMQ the node runs embedded; the other settings are still checked.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Cluster mode")]
pub struct ClusterConfig {
    /// RabbitMQ URL, e.g. amqp://guest:guest@127.0.0.1:5672/%2f. With Redis set, turns on cluster mode.
    #[arg(long = "rabbit-mq-url", env = "RABBIT_MQ_URL", value_name = "RABBIT_MQ_URL", hide_env_values = true)]
    pub rabbit_mq_url: Option<Secret>,
    /// Redis host:port.
    #[arg(long, env = "REDIS_ADDR", value_name = "REDIS_ADDR")]
    pub redis_addr: Option<String>,
    /// Password for REDIS_ADDR.
    #[arg(long, env = "REDIS_PASSWORD", value_name = "REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<Secret>,
    /// Full Redis URL (redis://[:password@]host:port[/db]); overrides REDIS_ADDR/REDIS_PASSWORD.
    #[arg(long, env = "REDIS_URL", value_name = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<Secret>,
    /// Cluster name: the hash tag of every Redis key and the prefix of RabbitMQ names.
    #[arg(long = "cluster", env = "CHAT_CLUSTER", value_name = "CHAT_CLUSTER", default_value = "chatgate", value_parser = name(64))]
    pub name: String,
    /// Node lease. A node that stops refreshing it is swept by the others within 2 x this.
    #[arg(long = "node-ttl-ms", env = "CHAT_NODE_TTL_MS", value_name = "CHAT_NODE_TTL_MS", default_value = "10000", value_parser = millis(300, 3_600_000))]
    pub node_ttl: Duration,
    /// Messages each dispatcher shard (one per worker) queues for other nodes. While a shard is full its senders wait (back-pressure); it bounds the memory of cross-node traffic.
    #[arg(long, env = "CHAT_DISPATCH_QUEUE", value_name = "CHAT_DISPATCH_QUEUE", default_value = "16384", value_parser = ranged::<usize>(16, 1 << 24))]
    pub dispatch_queue: usize,
    /// During a RabbitMQ outage (down, or up but not confirming), how long a message may wait for it, counted from when it was read, before being answered unavailable.
    #[arg(long = "broker-buffer-ms", env = "CHAT_BROKER_BUFFER_MS", value_name = "CHAT_BROKER_BUFFER_MS", default_value = "5000", value_parser = millis(0, 3_600_000))]
    pub broker_buffer: Duration,
    /// Bytes of messages held during a RabbitMQ outage; beyond, unavailable.
    #[arg(long, env = "CHAT_BROKER_BUFFER_BYTES", value_name = "CHAT_BROKER_BUFFER_BYTES", default_value = "67108864", value_parser = ranged::<usize>(0, 1 << 40))]
    pub broker_buffer_bytes: usize,
    /// Largest AMQP message (one batch of frames for one node).
    #[arg(long = "publish-batch-bytes", env = "CHAT_PUBLISH_BATCH_BYTES", value_name = "CHAT_PUBLISH_BATCH_BYTES", default_value = "131072", value_parser = ranged::<usize>(1024, 64 << 20))]
    pub batch_bytes: usize,
    /// Most frames in one AMQP message.
    #[arg(long = "publish-batch-frames", env = "CHAT_PUBLISH_BATCH_FRAMES", value_name = "CHAT_PUBLISH_BATCH_FRAMES", default_value = "512", value_parser = ranged::<usize>(1, 1 << 20))]
    pub batch_frames: usize,
    /// While traffic to a node flows, at most one AMQP message to it per this many us (0: off); a node idle for that long gets its next message at once.
    #[arg(long = "publish-pacing-us", env = "CHAT_PUBLISH_PACING_US", value_name = "CHAT_PUBLISH_PACING_US", default_value = "1000", value_parser = parse::micros(0, 1_000_000))]
    pub publish_pacing: Duration,
    /// Unacknowledged AMQP messages a node's consumer may hold.
    #[arg(long = "amqp-prefetch", env = "CHAT_AMQP_PREFETCH", value_name = "CHAT_AMQP_PREFETCH", default_value = "256", value_parser = ranged::<u16>(1, u16::MAX))]
    pub prefetch: u16,
    /// AMQP heartbeat in seconds (0: off), unless RABBIT_MQ_URL sets heartbeat=: a broker that stops answering (hung, partitioned) is detected within two heartbeats and the connection is made again.
    #[arg(long = "amqp-heartbeat-s", env = "CHAT_AMQP_HEARTBEAT_S", value_name = "CHAT_AMQP_HEARTBEAT_S", default_value = "5", value_parser = ranged::<u16>(0, 3600))]
    pub amqp_heartbeat: u16,
    /// Persistent messages: a batch acked sent survives a RabbitMQ restart.
    #[arg(long = "amqp-persistent", env = "CHAT_AMQP_PERSISTENT", value_name = "CHAT_AMQP_PERSISTENT", default_value = "true", action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub persistent: bool,
    /// PEM file of the CA certificate(s) a rediss:// server's certificate must chain to, instead of the system's roots. Needs a rediss:// REDIS_URL. Read at start-up.
    #[arg(long, env = "CHAT_REDIS_CA_FILE", value_name = "CHAT_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,
    /// PEM file of CA certificate(s) trusted for an amqps:// RABBIT_MQ_URL, besides the system's roots. Read at start-up.
    #[arg(long, env = "CHAT_AMQP_CA_FILE", value_name = "CHAT_AMQP_CA_FILE")]
    pub amqp_ca_file: Option<PathBuf>,
    /// Where Redis and RabbitMQ are, once validated; `None`: embedded.
    #[arg(skip)]
    endpoints: Option<Endpoints>,
}

/// The cluster backends' addresses.
#[derive(Clone)]
pub struct Endpoints {
    pub amqp_url: String,
    pub redis: redis::ConnectionInfo,
    /// `CHAT_REDIS_CA_FILE`'s contents.
    pub redis_ca: Option<Vec<u8>>,
    /// `CHAT_AMQP_CA_FILE`'s contents.
    pub amqp_ca: Option<String>,
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoints")
            .field("amqp", &parse::redact_url(&self.amqp_url))
            .field("redis", &self.redis.addr().to_string())
            .field("redis_ca", &self.redis_ca.is_some())
            .field("amqp_ca", &self.amqp_ca.is_some())
            .finish()
    }
}

/// A value that is never logged (`Debug` prints `"<redacted>"`).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Secret {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_owned())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

impl ClusterConfig {
    /// Redis and RabbitMQ, when both are configured.
    pub fn endpoints(&self) -> Option<&Endpoints> {
        self.endpoints.as_ref()
    }
}

/// A variable held a value the gateway cannot use. Start-up stops with exit code 64.
#[derive(Debug, thiserror::Error)]
#[error("invalid {var}={value:?}: {reason}")]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub reason: String,
}

impl Config {
    /// Reads flags and the environment. `Err` carries clap's message (or help and version
    /// text: exit 0 for those, [`EXIT_CONFIG`] otherwise).
    pub fn load() -> Result<Config, clap::Error> {
        Self::from_matches(Self::command().try_get_matches()?)
    }

    /// Parses `args` (the program name first) ignoring the environment: for tests.
    pub fn from_args<I, T>(args: I) -> Result<Config, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let cmd = Self::command().mut_args(|a| a.env(None::<&str>));
        Self::from_matches(cmd.try_get_matches_from(args)?)
    }

    fn from_matches(m: clap::ArgMatches) -> Result<Config, clap::Error> {
        let mut c = Config::from_arg_matches(&m)?;
        c.resolve().map_err(|e| Self::command().error(clap::error::ErrorKind::ValueValidation, e))?;
        Ok(c)
    }

    /// Defaults for tests and embedding: listens on `127.0.0.1:0`.
    pub fn for_tests() -> Config {
        let mut c = Config::from_args(["chatgate"]).expect("defaults are valid");
        c.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        c
    }

    /// Whether connections need a token (a secret or a public key is configured).
    pub fn tokens_required(&self) -> bool {
        self.jwt_secret.is_some() || self.jwt_public_key_file.is_some()
    }

    /// Whether Redis and RabbitMQ are configured.
    pub fn is_cluster(&self) -> bool {
        self.cluster.endpoints.is_some()
    }

    /// Cross-setting rules, and the values that depend on others.
    fn resolve(&mut self) -> Result<(), ConfigError> {
        if self.rate_burst == 0 {
            self.rate_burst = self.rate_limit.saturating_mul(2);
        }
        self.cluster.endpoints = parse::endpoints(&self.cluster)?;
        self.tls = parse::server_tls(self.tls_cert_file.as_deref(), self.tls_key_file.as_deref())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
