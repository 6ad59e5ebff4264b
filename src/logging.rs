//! Structured logs through `tracing`: human-readable or one JSON object per line.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber with `filter` (already validated by the configuration).
/// Logs go to stderr.
pub fn init(format: LogFormat, filter: &str) {
    let mut filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    if !filter.to_string().contains("rustls") {
        // rustls warns about what a client's TLS does wrong (a bad record, an alert): one
        // line per misbehaving client, which the gateway counts instead
        // (`chatgate_tls_handshakes_total`). Its errors stay.
        if let Ok(directive) = "rustls=error".parse() {
            filter = filter.add_directive(directive);
        }
    }
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
