//! Value parsers for the settings, and the rules that involve several of them.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use redis::IntoConnectionInfo;

use super::{ClusterConfig, ConfigError, Endpoints, Secret};
use crate::protocol::is_valid_name;
use crate::transport::{ServerTls, TlsError};

/// The default of `CHAT_NODE_ID`: readable, and distinct across restarts so a restarted
/// node never inherits its previous incarnation's presence.
pub const NODE_ID_DEFAULT: &str = "<hostname>-<random>";

/// `host:port`, resolving a host name (`localhost:8080`) to its first address.
pub fn listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    let mut addrs = s.to_socket_addrs().map_err(|e| format!("{e} (want host:port)"))?;
    addrs.next().ok_or_else(|| format!("{s} resolves to no address (want host:port)"))
}

/// A network (`10.0.0.0/8`) or a single address (`127.0.0.1`, `::1`).
pub fn net(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is not an address or network (10.0.0.0/8, ::1)"))
}

/// A number in `lo..=hi`.
pub fn ranged<T>(lo: T, hi: T) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: FromStr + PartialOrd + std::fmt::Display + Copy + Send + Sync + 'static,
{
    move |s| {
        let n: T = s.trim().parse().map_err(|_| "not a number".to_owned())?;
        if n < lo || n > hi {
            return Err(format!("must be between {lo} and {hi}"));
        }
        Ok(n)
    }
}

/// Milliseconds in `lo..=hi`, as a duration.
pub fn millis(lo: u64, hi: u64) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    let n = ranged(lo, hi);
    move |s| n(s).map(Duration::from_millis)
}

/// Whole seconds in `lo..=hi`, as a duration.
pub fn seconds(lo: u64, hi: u64) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    let n = ranged(lo, hi);
    move |s| n(s).map(Duration::from_secs)
}

/// Microseconds in `lo..=hi`, as a duration.
pub fn micros(lo: u64, hi: u64) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    let n = ranged(lo, hi);
    move |s| n(s).map(Duration::from_micros)
}

/// A count in `1..=hi`, or `cores` / `<k> x cores` (the machine's available parallelism).
pub fn per_core(hi: usize) -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync + 'static {
    let n = ranged(1, hi);
    move |s| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let v = match s.trim() {
            "cores" => cores,
            t => match t.strip_suffix("x cores").map(str::trim) {
                Some(mult) => mult.parse::<usize>().map_err(|_| "not a number".to_owned())?.saturating_mul(cores),
                None => n(t)?,
            },
        };
        Ok(v.clamp(1, hi))
    }
}

/// `CHAT_RATE_BURST`: a number, or its default (resolved to twice the rate; 0 stands for it).
pub fn burst(s: &str) -> Result<u32, String> {
    if s == super::BURST_DEFAULT {
        return Ok(0);
    }
    ranged(1, u32::MAX)(s)
}

/// A node id; the default text makes one up.
pub fn node_id(s: &str) -> Result<String, String> {
    if s == NODE_ID_DEFAULT {
        return Ok(default_node_id());
    }
    if !is_valid_name(s) {
        return Err("must be 1-128 of A-Z a-z 0-9 _ . : @ -".into());
    }
    Ok(s.to_owned())
}

/// A name (`A-Z a-z 0-9 _ . : @ -`) of at most `max` bytes.
pub fn name(max: usize) -> impl Fn(&str) -> Result<String, String> + Clone + Send + Sync + 'static {
    move |s| {
        if !is_valid_name(s) || s.len() > max {
            return Err(format!("must be 1-{max} of A-Z a-z 0-9 _ . : @ -"));
        }
        Ok(s.to_owned())
    }
}

/// A secret that must not be empty (unset it instead).
pub fn non_empty(s: &str) -> Result<Secret, String> {
    if s.is_empty() {
        return Err("must not be empty (unset it instead)".into());
    }
    Ok(s.into())
}

/// A non-empty value (unset it instead).
pub fn text(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("must not be empty (unset it instead)".into());
    }
    Ok(s.to_owned())
}

/// `CHAT_JWT_PUBLIC_KEY_FILE`: the file is read and its key parsed here, once.
pub fn public_key_file(s: &str) -> Result<super::PublicKey, String> {
    super::PublicKey::read(std::path::Path::new(s))
}

/// `url` with its password (the part between `:` and `@` after the scheme) hidden.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:<redacted>@{host}")
        }
        None => url.to_owned(),
    }
}

/// A `tracing-subscriber` filter that parses.
pub fn log_filter(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(s).map_err(|e| format!("not a log filter: {e}"))?;
    Ok(s.to_owned())
}

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

fn bad(var: &'static str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError { var, value: value.to_owned(), reason: reason.into() }
}

/// Cluster mode needs both RabbitMQ and Redis; either alone is a mistake worth stopping for.
/// An empty variable counts as unset (compose files often write `REDIS_ADDR=`).
pub fn endpoints(c: &ClusterConfig) -> Result<Option<Endpoints>, ConfigError> {
    let set = |v: &Option<Secret>| v.as_ref().map(|s| s.expose().to_owned()).filter(|s| !s.is_empty());
    let amqp = set(&c.rabbit_mq_url);
    let addr = c.redis_addr.clone().filter(|s| !s.is_empty());
    let redis = match (set(&c.redis_url), addr) {
        (Some(url), _) => {
            if !url.starts_with("redis://") && !url.starts_with("rediss://") {
                return Err(bad("REDIS_URL", &redact_url(&url), "must start with redis:// or rediss://"));
            }
            Some(url.as_str().into_connection_info().map_err(|e| bad("REDIS_URL", &redact_url(&url), e.to_string()))?)
        }
        (None, Some(addr)) => {
            let (host, port) = addr
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
                .filter(|(h, _)| !h.is_empty() && !h.contains('/'))
                .ok_or_else(|| bad("REDIS_ADDR", &addr, "want host:port"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let mut info =
                (host.to_owned(), port).into_connection_info().map_err(|e| bad("REDIS_ADDR", &addr, e.to_string()))?;
            if let Some(pw) = set(&c.redis_password) {
                let settings = info.redis_settings().clone().set_password(pw);
                info = info.set_redis_settings(settings);
            }
            Some(info)
        }
        (None, None) => None,
    };
    match (amqp, redis) {
        (None, None) => Ok(None),
        (Some(amqp_url), Some(redis)) => {
            if !amqp_url.starts_with("amqp://") && !amqp_url.starts_with("amqps://") {
                return Err(bad("RABBIT_MQ_URL", &redact_url(&amqp_url), "must start with amqp:// or amqps://"));
            }
            amqp_url.parse::<lapin::uri::AMQPUri>().map_err(|e| bad("RABBIT_MQ_URL", &redact_url(&amqp_url), e))?;
            let redis_ca = ca_file("CHAT_REDIS_CA_FILE", c.redis_ca_file.as_deref())?;
            if redis_ca.is_some() && !matches!(redis.addr(), redis::ConnectionAddr::TcpTls { .. }) {
                return Err(bad("CHAT_REDIS_CA_FILE", "", "a CA file needs a rediss:// REDIS_URL"));
            }
            if c.amqp_ca_file.is_some() && !amqp_url.starts_with("amqps://") {
                return Err(bad("CHAT_AMQP_CA_FILE", "", "a CA file needs an amqps:// RABBIT_MQ_URL"));
            }
            let amqp_ca = ca_file("CHAT_AMQP_CA_FILE", c.amqp_ca_file.as_deref())?
                .map(|pem| String::from_utf8(pem).map_err(|_| bad("CHAT_AMQP_CA_FILE", "", "not a PEM file")))
                .transpose()?;
            Ok(Some(Endpoints { amqp_url, redis, redis_ca, amqp_ca }))
        }
        (Some(_), None) => Err(bad("REDIS_ADDR", "", "cluster mode needs Redis too (RABBIT_MQ_URL is set)")),
        (None, Some(_)) => Err(bad("RABBIT_MQ_URL", "", "cluster mode needs RabbitMQ too (Redis is set)")),
    }
}

/// `CHAT_TLS_CERT_FILE` and `CHAT_TLS_KEY_FILE`: both or neither; read and checked here.
pub fn server_tls(cert: Option<&Path>, key: Option<&Path>) -> Result<Option<Arc<ServerTls>>, ConfigError> {
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => ServerTls::load(cert, key).map(|tls| Some(Arc::new(tls))).map_err(|e| {
            // The key is at fault when it cannot be read or does not match the certificate.
            let key_at_fault = match &e {
                TlsError::Read { path, .. } => path == key,
                TlsError::Rustls(_) => true,
                TlsError::NoCertificate(_) => false,
            };
            let (var, file) = if key_at_fault { ("CHAT_TLS_KEY_FILE", key) } else { ("CHAT_TLS_CERT_FILE", cert) };
            bad(var, &file.display().to_string(), e.to_string())
        }),
        (Some(_), None) => Err(bad("CHAT_TLS_KEY_FILE", "", "CHAT_TLS_CERT_FILE is set; TLS needs the key too")),
        (None, Some(_)) => {
            Err(bad("CHAT_TLS_CERT_FILE", "", "CHAT_TLS_KEY_FILE is set; TLS needs the certificate too"))
        }
    }
}

/// A CA file's contents: PEM with at least one certificate, read once at start-up.
fn ca_file(var: &'static str, path: Option<&Path>) -> Result<Option<Vec<u8>>, ConfigError> {
    use tokio_rustls::rustls::pki_types::{CertificateDer, pem::PemObject};
    let Some(path) = path else { return Ok(None) };
    let shown = path.display().to_string();
    let pem = std::fs::read(path).map_err(|e| bad(var, &shown, e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(var, &shown, e.to_string()))?;
    if certs.is_empty() {
        return Err(bad(var, &shown, "holds no PEM certificate"));
    }
    Ok(Some(pem))
}
