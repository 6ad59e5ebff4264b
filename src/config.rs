//! Configuration from environment variables, validated once at start-up.
//!
//! Every setting has a named variable, a default and a doc line in [`SETTINGS`]; that table
//! drives `chatgate --help`, and a unit test keeps the README's table in step with it.

use std::net::SocketAddr;
use std::time::Duration;

/// One environment variable.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    pub name: &'static str,
    pub default: &'static str,
    pub doc: &'static str,
}

pub const ENV_LISTEN: &str = "CHAT_LISTEN";
pub const ENV_NODE_ID: &str = "CHAT_NODE_ID";
pub const ENV_MAX_MESSAGE_BYTES: &str = "CHAT_MAX_MESSAGE_BYTES";
pub const ENV_RATE_LIMIT: &str = "CHAT_RATE_LIMIT";
pub const ENV_RATE_BURST: &str = "CHAT_RATE_BURST";
pub const ENV_RATE_LIMIT_CLOSE_MS: &str = "CHAT_RATE_LIMIT_CLOSE_MS";
pub const ENV_OUTBOX_FRAMES: &str = "CHAT_OUTBOX_FRAMES";
pub const ENV_OUTBOX_BYTES: &str = "CHAT_OUTBOX_BYTES";
pub const ENV_HEARTBEAT_MS: &str = "CHAT_HEARTBEAT_MS";
pub const ENV_SHUTDOWN_GRACE_MS: &str = "CHAT_SHUTDOWN_GRACE_MS";
pub const ENV_MAX_CONNECTIONS: &str = "CHAT_MAX_CONNECTIONS";
pub const ENV_MAX_GROUPS: &str = "CHAT_MAX_GROUPS_PER_CONN";
pub const ENV_API_KEY: &str = "CHAT_API_KEY";
pub const ENV_SHARDS: &str = "CHAT_SHARDS";
pub const ENV_WORKERS: &str = "CHAT_WORKERS";
pub const ENV_LOG_FORMAT: &str = "CHAT_LOG_FORMAT";
pub const ENV_RUST_LOG: &str = "RUST_LOG";
pub const ENV_JWT_SECRET: &str = "CHAT_JWT_SECRET";
pub const ENV_ALLOWED_ORIGINS: &str = "CHAT_ALLOWED_ORIGINS";
pub const ENV_RABBIT_MQ_URL: &str = "RABBIT_MQ_URL";
pub const ENV_REDIS_ADDR: &str = "REDIS_ADDR";
pub const ENV_REDIS_PASSWORD: &str = "REDIS_PASSWORD";
pub const ENV_REDIS_URL: &str = "REDIS_URL";
pub const ENV_CLUSTER: &str = "CHAT_CLUSTER";
pub const ENV_NODE_TTL_MS: &str = "CHAT_NODE_TTL_MS";
pub const ENV_BROKER_BUFFER_MS: &str = "CHAT_BROKER_BUFFER_MS";
pub const ENV_BROKER_BUFFER_BYTES: &str = "CHAT_BROKER_BUFFER_BYTES";
pub const ENV_BATCH_BYTES: &str = "CHAT_PUBLISH_BATCH_BYTES";
pub const ENV_BATCH_FRAMES: &str = "CHAT_PUBLISH_BATCH_FRAMES";
pub const ENV_PACING_US: &str = "CHAT_PUBLISH_PACING_US";
pub const ENV_PREFETCH: &str = "CHAT_AMQP_PREFETCH";
pub const ENV_PERSISTENT: &str = "CHAT_AMQP_PERSISTENT";

/// Every variable the gateway reads, in `--help` order.
pub const SETTINGS: &[Setting] = &[
    Setting { name: ENV_LISTEN, default: "0.0.0.0:8080", doc: "Address to serve HTTP and WebSocket on." },
    Setting {
        name: ENV_NODE_ID,
        default: "<hostname>-<random>",
        doc: "This node's id (1-128 of A-Z a-z 0-9 _ . : @ -); unique per cluster.",
    },
    Setting {
        name: ENV_MAX_MESSAGE_BYTES,
        default: "65536",
        doc: "Largest client frame accepted; larger closes the connection with 1009.",
    },
    Setting { name: ENV_RATE_LIMIT, default: "100", doc: "Client frames per second per connection." },
    Setting { name: ENV_RATE_BURST, default: "2 x CHAT_RATE_LIMIT", doc: "Token-bucket burst for the rate limit." },
    Setting {
        name: ENV_RATE_LIMIT_CLOSE_MS,
        default: "10000",
        doc: "Close with 1008 once a connection has been rate limited this long without a break.",
    },
    Setting {
        name: ENV_OUTBOX_FRAMES,
        default: "1024",
        doc: "Frames queued for one connection before it is closed 1013 as a slow consumer.",
    },
    Setting { name: ENV_OUTBOX_BYTES, default: "1048576", doc: "Bytes queued for one connection, same rule." },
    Setting { name: ENV_HEARTBEAT_MS, default: "25000", doc: "Server ping interval; 2 silent intervals close." },
    Setting {
        name: ENV_SHUTDOWN_GRACE_MS,
        default: "10000",
        doc: "On SIGTERM/SIGINT: time allowed to flush clients, close them 1001 and release presence.",
    },
    Setting { name: ENV_MAX_CONNECTIONS, default: "100000", doc: "WebSocket connections per node; more get HTTP 503." },
    Setting { name: ENV_MAX_GROUPS, default: "1000", doc: "Groups one connection may join." },
    Setting {
        name: ENV_API_KEY,
        default: "(unset: POST /api/publish disabled)",
        doc: "Bearer token for POST /api/publish.",
    },
    Setting {
        name: ENV_JWT_SECRET,
        default: "(unset: anonymous ids)",
        doc: "HS256 secret. When set, connections need a token (?token= or Bearer); the user id is its `sub`.",
    },
    Setting {
        name: ENV_ALLOWED_ORIGINS,
        default: "(unset: any)",
        doc: "Comma list of allowed Origin values for WebSocket upgrades (* allows all); others get 403.",
    },
    Setting { name: ENV_SHARDS, default: "4 x cores", doc: "Router shards (rounded up to a power of two)." },
    Setting { name: ENV_WORKERS, default: "cores", doc: "Tokio worker threads." },
    Setting { name: ENV_LOG_FORMAT, default: "pretty", doc: "Log format: pretty or json." },
    Setting { name: ENV_RUST_LOG, default: "info", doc: "Log filter (tracing-subscriber EnvFilter syntax)." },
    Setting {
        name: ENV_RABBIT_MQ_URL,
        default: "(unset: embedded)",
        doc: "RabbitMQ URL (amqp://user:pass@host:5672/vhost). With Redis set, turns on cluster mode.",
    },
    Setting { name: ENV_REDIS_ADDR, default: "(unset: embedded)", doc: "Redis host:port for cluster state." },
    Setting { name: ENV_REDIS_PASSWORD, default: "(none)", doc: "Password for REDIS_ADDR." },
    Setting {
        name: ENV_REDIS_URL,
        default: "(unset)",
        doc: "Full Redis URL (redis://...); overrides REDIS_ADDR/PASSWORD.",
    },
    Setting {
        name: ENV_CLUSTER,
        default: "chatgate",
        doc: "Cluster name: Redis key hash tag and RabbitMQ name prefix. Nodes of one cluster share it.",
    },
    Setting {
        name: ENV_NODE_TTL_MS,
        default: "10000",
        doc: "Node lease. A node silent this long is presumed dead and swept by the others.",
    },
    Setting {
        name: ENV_BROKER_BUFFER_MS,
        default: "5000",
        doc: "During a broker outage, how long a message may wait before it is answered unavailable.",
    },
    Setting {
        name: ENV_BROKER_BUFFER_BYTES,
        default: "67108864",
        doc: "Bytes of messages held during a broker outage.",
    },
    Setting { name: ENV_BATCH_BYTES, default: "131072", doc: "Largest AMQP message (a batch of frames for one node)." },
    Setting { name: ENV_BATCH_FRAMES, default: "512", doc: "Most frames in one AMQP message." },
    Setting {
        name: ENV_PACING_US,
        default: "1000",
        doc: "While traffic to a node flows, at most one AMQP message to it per this many us (0: off).",
    },
    Setting { name: ENV_PREFETCH, default: "256", doc: "Unacknowledged AMQP messages a node's consumer may hold." },
    Setting {
        name: ENV_PERSISTENT,
        default: "true",
        doc: "Publish persistent messages (a confirmed batch survives a broker restart).",
    },
];

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to bind.
    pub listen: SocketAddr,
    /// This node's id, sent in `welcome` and used for routing.
    pub node_id: String,
    /// Largest accepted client frame, in bytes.
    pub max_message_bytes: usize,
    /// Sustained client frames per second.
    pub rate_limit: u32,
    /// Token-bucket size.
    pub rate_burst: u32,
    /// Continuous limiting for this long closes the connection with 1008.
    pub rate_limit_close: Duration,
    /// Outbox bound in frames.
    pub outbox_frames: usize,
    /// Outbox bound in bytes.
    pub outbox_bytes: usize,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Shutdown deadline.
    pub shutdown_grace: Duration,
    /// Connection cap.
    pub max_connections: usize,
    /// Groups per connection cap.
    pub max_groups: usize,
    /// Bearer token for `POST /api/publish`; `None` disables it.
    pub api_key: Option<String>,
    /// HS256 secret for connection tokens; `None` is anonymous mode.
    pub jwt_secret: Option<String>,
    /// Allowed `Origin` values; `None` allows any.
    pub allowed_origins: Option<Vec<String>>,
    /// Router shards (power of two).
    pub shards: usize,
    /// Tokio worker threads.
    pub workers: usize,
    /// Log format.
    pub log_format: LogFormat,
    /// Cluster mode settings; `None` runs on the embedded backends.
    pub cluster: Option<ClusterConfig>,
}

/// Settings that only matter in cluster mode.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// RabbitMQ URL.
    pub amqp_url: String,
    /// Redis URL (built from `REDIS_ADDR`/`REDIS_PASSWORD` unless `REDIS_URL` is given).
    pub redis_url: String,
    /// Cluster name (key hash tag, exchange/queue prefix).
    pub name: String,
    /// Node lease.
    pub node_ttl: Duration,
    /// Longest wait for an unreachable broker.
    pub broker_buffer: Duration,
    /// Bytes held for an unreachable broker.
    pub broker_buffer_bytes: usize,
    /// Largest batch in bytes.
    pub batch_bytes: usize,
    /// Most frames per batch.
    pub batch_frames: usize,
    /// Pacing of batches to one node while traffic flows.
    pub publish_pacing: Duration,
    /// Consumer prefetch.
    pub prefetch: u16,
    /// Persistent AMQP messages.
    pub persistent: bool,
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
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads settings through `get` (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let env = Env { get: &get };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let rate_limit: u32 = env.number(ENV_RATE_LIMIT, 100, 1..=1_000_000)?;
        let node_id = match env.raw(ENV_NODE_ID) {
            Some(id) if crate::protocol::is_valid_name(&id) => id,
            Some(id) => return Err(env.bad(ENV_NODE_ID, id, "must be 1-128 of A-Z a-z 0-9 _ . : @ -")),
            None => default_node_id(),
        };
        let log_format = match env.raw(ENV_LOG_FORMAT).as_deref() {
            None | Some("pretty") => LogFormat::Pretty,
            Some("json") => LogFormat::Json,
            Some(other) => return Err(env.bad(ENV_LOG_FORMAT, other.into(), "must be pretty or json")),
        };
        let listen = match env.raw(ENV_LISTEN) {
            None => SocketAddr::from(([0, 0, 0, 0], 8080)),
            Some(v) => v.parse().map_err(|e| env.bad(ENV_LISTEN, v.clone(), format!("{e} (want host:port)")))?,
        };
        let api_key = match env.raw(ENV_API_KEY) {
            Some(k) if k.is_empty() => return Err(env.bad(ENV_API_KEY, k, "must not be empty (unset it instead)")),
            k => k,
        };
        let shards: usize = env.number(ENV_SHARDS, cores * 4, 1..=4096)?;
        let cluster = cluster_config(&env)?;
        let jwt_secret = match env.raw(ENV_JWT_SECRET) {
            Some(k) if k.is_empty() => return Err(env.bad(ENV_JWT_SECRET, k, "must not be empty (unset it instead)")),
            k => k,
        };
        let allowed_origins = env
            .raw(ENV_ALLOWED_ORIGINS)
            .map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect::<Vec<_>>());
        Ok(Config {
            jwt_secret,
            allowed_origins,
            listen,
            node_id,
            max_message_bytes: env.number(ENV_MAX_MESSAGE_BYTES, 65536, 64..=(64 << 20))?,
            rate_limit,
            rate_burst: env.number(ENV_RATE_BURST, rate_limit.saturating_mul(2), 1..=u32::MAX)?,
            rate_limit_close: Duration::from_millis(env.number(ENV_RATE_LIMIT_CLOSE_MS, 10_000, 1..=86_400_000)?),
            outbox_frames: env.number(ENV_OUTBOX_FRAMES, 1024, 8..=1 << 24)?,
            outbox_bytes: env.number(ENV_OUTBOX_BYTES, 1 << 20, 1024..=1 << 32)?,
            heartbeat: Duration::from_millis(env.number(ENV_HEARTBEAT_MS, 25_000, 10..=3_600_000)?),
            shutdown_grace: Duration::from_millis(env.number(ENV_SHUTDOWN_GRACE_MS, 10_000, 0..=3_600_000)?),
            max_connections: env.number(ENV_MAX_CONNECTIONS, 100_000, 1..=10_000_000)?,
            max_groups: env.number(ENV_MAX_GROUPS, 1000, 1..=1_000_000)?,
            api_key,
            shards: shards.next_power_of_two(),
            workers: env.number(ENV_WORKERS, cores, 1..=1024)?,
            log_format,
            cluster,
        })
    }

    /// Defaults for tests and embedding: listens on `127.0.0.1:0`.
    pub fn for_tests() -> Config {
        let mut c = Config::from_lookup(|_| None).expect("defaults are valid");
        c.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        c
    }
}

fn cluster_config(env: &Env<'_>) -> Result<Option<ClusterConfig>, ConfigError> {
    let amqp = env.raw(ENV_RABBIT_MQ_URL).filter(|v| !v.is_empty());
    let redis =
        match (env.raw(ENV_REDIS_URL).filter(|v| !v.is_empty()), env.raw(ENV_REDIS_ADDR).filter(|v| !v.is_empty())) {
            (Some(url), _) => {
                if !url.starts_with("redis://") && !url.starts_with("rediss://") {
                    return Err(env.bad(ENV_REDIS_URL, url, "must start with redis:// or rediss://"));
                }
                Some(url)
            }
            (None, Some(addr)) => {
                if addr.contains('/') || !addr.contains(':') {
                    return Err(env.bad(ENV_REDIS_ADDR, addr, "want host:port"));
                }
                Some(match env.raw(ENV_REDIS_PASSWORD).filter(|p| !p.is_empty()) {
                    Some(pw) => format!("redis://:{}@{addr}/", percent_encode(&pw)),
                    None => format!("redis://{addr}/"),
                })
            }
            (None, None) => None,
        };
    let (amqp_url, redis_url) = match (amqp, redis) {
        (None, None) => return Ok(None),
        (Some(a), Some(r)) => (a, r),
        (Some(a), None) => {
            return Err(env.bad(
                ENV_REDIS_ADDR,
                String::new(),
                format!("cluster mode needs Redis too ({ENV_RABBIT_MQ_URL}={a:?} is set)"),
            ));
        }
        (None, Some(_)) => {
            return Err(env.bad(ENV_RABBIT_MQ_URL, String::new(), "cluster mode needs RabbitMQ too (Redis is set)"));
        }
    };
    if !amqp_url.starts_with("amqp://") && !amqp_url.starts_with("amqps://") {
        return Err(env.bad(ENV_RABBIT_MQ_URL, amqp_url, "must start with amqp:// or amqps://"));
    }
    let name = env.raw(ENV_CLUSTER).unwrap_or_else(|| "chatgate".into());
    if !crate::protocol::is_valid_name(&name) || name.len() > 64 {
        return Err(env.bad(ENV_CLUSTER, name, "must be 1-64 of A-Z a-z 0-9 _ . : @ -"));
    }
    let persistent = match env.raw(ENV_PERSISTENT).as_deref() {
        None | Some("true" | "1" | "yes") => true,
        Some("false" | "0" | "no") => false,
        Some(v) => return Err(env.bad(ENV_PERSISTENT, v.into(), "must be true or false")),
    };
    Ok(Some(ClusterConfig {
        amqp_url,
        redis_url,
        name,
        node_ttl: Duration::from_millis(env.number(ENV_NODE_TTL_MS, 10_000, 300..=3_600_000)?),
        broker_buffer: Duration::from_millis(env.number(ENV_BROKER_BUFFER_MS, 5_000, 0..=3_600_000)?),
        broker_buffer_bytes: env.number(ENV_BROKER_BUFFER_BYTES, 64 << 20, 0..=1 << 40)?,
        batch_bytes: env.number(ENV_BATCH_BYTES, 128 << 10, 1024..=64 << 20)?,
        batch_frames: env.number(ENV_BATCH_FRAMES, 512, 1..=1 << 20)?,
        publish_pacing: Duration::from_micros(env.number(ENV_PACING_US, 1000, 0..=1_000_000)?),
        prefetch: env.number(ENV_PREFETCH, 256, 1..=u16::MAX)?,
        persistent,
    }))
}

/// Percent-encodes everything but unreserved characters (for a password in a URL).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

struct Env<'a> {
    get: &'a dyn Fn(&str) -> Option<String>,
}

impl Env<'_> {
    fn raw(&self, var: &str) -> Option<String> {
        (self.get)(var)
    }

    fn bad(&self, var: &'static str, value: String, reason: impl Into<String>) -> ConfigError {
        ConfigError { var, value, reason: reason.into() }
    }

    fn number<T>(&self, var: &'static str, default: T, range: std::ops::RangeInclusive<T>) -> Result<T, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
    {
        let Some(v) = self.raw(var) else { return Ok(default) };
        let n: T = v.trim().parse().map_err(|_| self.bad(var, v.clone(), "not a number"))?;
        if !range.contains(&n) {
            return Err(self.bad(var, v, format!("must be between {} and {}", range.start(), range.end())));
        }
        Ok(n)
    }
}

/// `<hostname>-<4 hex>`: readable, and distinct across restarts so a restarted node never
/// inherits its previous incarnation's presence.
fn default_node_id() -> String {
    let host =
        std::env::var("HOSTNAME").ok().or_else(|| std::fs::read_to_string("/etc/hostname").ok()).unwrap_or_default();
    let mut host: String =
        host.trim().chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')).take(100).collect();
    if host.is_empty() {
        host.push_str("node");
    }
    format!("{host}-{:04x}", fastrand::u16(..))
}

/// The `--help` text.
pub fn help() -> String {
    let mut out = String::from(
        "chatgate: a real-time chat gateway (WebSocket, RabbitMQ routing, Redis presence)\n\n\
         USAGE: chatgate [--help] [--version]\n\n\
         Configured by environment variables:\n",
    );
    let width = SETTINGS.iter().map(|s| s.name.len()).max().unwrap_or(0);
    for s in SETTINGS {
        out.push_str(&format!("  {:width$}  {} [default: {}]\n", s.name, s.doc, s.default));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn with(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults() {
        let c = with(&[]).unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.max_message_bytes, 65536);
        assert_eq!(c.rate_limit, 100);
        assert_eq!(c.rate_burst, 200);
        assert_eq!(c.heartbeat, Duration::from_secs(25));
        assert_eq!(c.log_format, LogFormat::Pretty);
        assert!(c.shards.is_power_of_two());
        assert!(crate::protocol::is_valid_name(&c.node_id), "{}", c.node_id);
        assert!(c.api_key.is_none());
    }

    #[test]
    fn errors_name_the_variable() {
        for (var, value) in [
            (ENV_LISTEN, "nope"),
            (ENV_RATE_LIMIT, "fast"),
            (ENV_RATE_LIMIT, "0"),
            (ENV_MAX_MESSAGE_BYTES, "-1"),
            (ENV_HEARTBEAT_MS, "1"),
            (ENV_LOG_FORMAT, "xml"),
            (ENV_NODE_ID, "a b"),
            (ENV_API_KEY, ""),
        ] {
            let e = with(&[(var, value)]).unwrap_err();
            assert_eq!(e.var, var);
            assert!(e.to_string().contains(var), "{e}");
        }
    }

    #[test]
    fn cluster_mode_needs_both_backends() {
        assert!(with(&[]).unwrap().cluster.is_none());
        let c = with(&[
            (ENV_RABBIT_MQ_URL, "amqp://g:g@h:5672/%2f"),
            (ENV_REDIS_ADDR, "r:6379"),
            (ENV_REDIS_PASSWORD, "p@ss w"),
        ])
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!(c.redis_url, "redis://:p%40ss%20w@r:6379/");
        assert_eq!(c.name, "chatgate");
        assert!(c.persistent);
        let c =
            with(&[(ENV_RABBIT_MQ_URL, "amqp://h"), (ENV_REDIS_URL, "redis://x:1/2"), (ENV_REDIS_ADDR, "ignored:1")])
                .unwrap()
                .cluster
                .unwrap();
        assert_eq!(c.redis_url, "redis://x:1/2");
        assert_eq!(with(&[(ENV_RABBIT_MQ_URL, "amqp://h")]).unwrap_err().var, ENV_REDIS_ADDR);
        assert_eq!(with(&[(ENV_REDIS_ADDR, "r:1")]).unwrap_err().var, ENV_RABBIT_MQ_URL);
        assert_eq!(
            with(&[(ENV_RABBIT_MQ_URL, "http://h"), (ENV_REDIS_ADDR, "r:1")]).unwrap_err().var,
            ENV_RABBIT_MQ_URL
        );
        assert_eq!(with(&[(ENV_RABBIT_MQ_URL, "amqp://h"), (ENV_REDIS_ADDR, "r")]).unwrap_err().var, ENV_REDIS_ADDR);
        let both = [(ENV_RABBIT_MQ_URL, "amqp://h"), (ENV_REDIS_ADDR, "r:1")];
        assert_eq!(with(&[both[0], both[1], (ENV_CLUSTER, "a b")]).unwrap_err().var, ENV_CLUSTER);
        assert_eq!(with(&[both[0], both[1], (ENV_PERSISTENT, "maybe")]).unwrap_err().var, ENV_PERSISTENT);
        assert_eq!(with(&[both[0], both[1], (ENV_NODE_TTL_MS, "5")]).unwrap_err().var, ENV_NODE_TTL_MS);
    }

    #[test]
    fn burst_follows_rate() {
        assert_eq!(with(&[(ENV_RATE_LIMIT, "7")]).unwrap().rate_burst, 14);
        assert_eq!(with(&[(ENV_RATE_LIMIT, "7"), (ENV_RATE_BURST, "9")]).unwrap().rate_burst, 9);
    }

    #[test]
    fn help_lists_every_setting() {
        let h = help();
        for s in SETTINGS {
            assert!(h.contains(s.name));
        }
    }

    #[test]
    fn readme_documents_every_setting() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        for s in SETTINGS {
            assert!(readme.contains(&format!("`{}`", s.name)), "README.md lacks `{}`", s.name);
        }
    }
}
