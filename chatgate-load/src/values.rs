//! Parsers for option values: counts, rates, sizes, durations, weights, address ranges,
//! URLs. Each is a plain `&str → Result<T, String>` so that clap can call it and tests
//! can too; the message says what was wanted.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use crate::args::{Mix, Rate};

/// The values of one occurrence of a comma-separated list option (`--url a,b`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct List<T>(pub Vec<T>);

/// Concatenates every occurrence of a list option.
pub fn flatten<T>(lists: Vec<List<T>>) -> Vec<T> {
    lists.into_iter().flat_map(|l| l.0).collect()
}

/// A positive integer.
pub fn count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err("want a positive integer".into()),
    }
}

/// A positive integer that fits a `u32` (`--window`).
pub fn count_u32(s: &str) -> Result<u32, String> {
    u32::try_from(count(s)?).map_err(|_| "too large".into())
}

/// A non-negative integer (`--max-conn-errors`).
pub fn at_least_zero(s: &str) -> Result<u64, String> {
    s.parse().map_err(|_| "want a non-negative integer".into())
}

/// Messages per second, or `max`.
pub fn rate(s: &str) -> Result<Rate, String> {
    if s.eq_ignore_ascii_case("max") {
        return Ok(Rate::Max);
    }
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(Rate::PerSec(r)),
        _ => Err("want messages per second (> 0) or `max`".into()),
    }
}

/// Bytes with an optional `k` (KiB) or `m` (MiB) suffix.
pub fn bytes(s: &str) -> Result<usize, String> {
    let lower = s.trim().to_ascii_lowercase();
    let (num, mult) = if let Some(n) = lower.strip_suffix("kib").or_else(|| lower.strip_suffix('k')) {
        (n, 1024)
    } else if let Some(n) = lower.strip_suffix("mib").or_else(|| lower.strip_suffix('m')) {
        (n, 1024 * 1024)
    } else {
        (lower.strip_suffix('b').unwrap_or(&lower), 1)
    };
    let n: usize = num.trim().parse().map_err(|_| "want bytes, e.g. 100, 8k, 1m".to_string())?;
    n.checked_mul(mult).ok_or_else(|| "too large".to_string())
}

/// Seconds (fractions allowed) with an optional `ms`, `s` or `m` suffix.
pub fn duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 && v * scale <= 1e7 => Ok(Duration::from_secs_f64(v * scale)),
        _ => Err("want a duration, e.g. 10, 2.5s, 500ms, 1m".into()),
    }
}

/// Three weights `G:D:R`, not all zero.
pub fn mix(s: &str) -> Result<Mix, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let [g, d, r] = parts.as_slice() else { return Err("want three weights G:D:R, e.g. 60:30:10".into()) };
    let w = |x: &str| x.trim().parse::<u32>().map_err(|_| format!("{x:?} is not a weight (0..)"));
    let mix = Mix { group: w(g)?, direct: w(d)?, request: w(r)? };
    if mix.group as u64 + mix.direct as u64 + mix.request as u64 == 0 {
        return Err("at least one weight must be positive".into());
    }
    Ok(mix)
}

/// Maximum number of addresses a `--src` range may expand to.
const MAX_SRC: u32 = 1 << 16;

/// `127.0.0.1,127.0.0.2`, `127.0.0.1-127.0.0.8` or `127.0.0.1-8` (last octet), or a mix.
pub fn src(s: &str) -> Result<List<IpAddr>, String> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let Some((a, b)) = item.split_once('-') else {
            out.push(item.parse::<IpAddr>().map_err(|_| format!("{item:?} is not an IP address"))?);
            continue;
        };
        let first: Ipv4Addr = a.trim().parse().map_err(|_| format!("{a:?} is not an IPv4 address"))?;
        let last: Ipv4Addr = match b.trim().parse::<u8>() {
            Ok(octet) => {
                let o = first.octets();
                Ipv4Addr::new(o[0], o[1], o[2], octet)
            }
            Err(_) => b.trim().parse().map_err(|_| format!("{b:?} is not an IPv4 address or last octet"))?,
        };
        let (lo, hi) = (u32::from(first), u32::from(last));
        if hi < lo {
            return Err(format!("range {item:?} is empty"));
        }
        if hi - lo >= MAX_SRC {
            return Err(format!("range {item:?} has more than {MAX_SRC} addresses"));
        }
        out.extend((lo..=hi).map(|v| IpAddr::V4(Ipv4Addr::from(v))));
    }
    if out.is_empty() {
        return Err("no addresses".into());
    }
    Ok(List(out))
}

/// Comma-separated process ids (`--watch-pid`); empty items are skipped.
pub fn pids(s: &str) -> Result<List<u32>, String> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| p.trim().parse().map_err(|_| "want process ids".to_string()))
        .collect::<Result<_, _>>()
        .map(List)
}

/// Comma-separated `ws://` URLs (`--url`); empty items are skipped.
pub fn urls(s: &str) -> Result<List<String>, String> {
    let mut out = Vec::new();
    for u in s.split(',').filter(|u| !u.is_empty()) {
        split_url(u)?;
        out.push(u.to_string());
    }
    Ok(List(out))
}

/// `ws://host[:port]/path?query` (or `wss://`) → (`host:port` to connect to, path with query).
pub fn split_url(u: &str) -> Result<(String, String), String> {
    let (rest, default_port) = match u.strip_prefix("wss://") {
        Some(rest) => (rest, 443),
        None => (u.strip_prefix("ws://").ok_or("want a ws:// or wss:// URL")?, 80),
    };
    let cut = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(cut);
    if authority.is_empty() || authority.contains('@') {
        return Err("want ws://HOST:PORT/path".into());
    }
    let has_port = match authority.rfind(']') {
        Some(b) => authority[b..].contains(':'),
        None => authority.contains(':'),
    };
    let hostport = if has_port { authority.to_string() } else { format!("{authority}:{default_port}") };
    let path = if path.is_empty() { "/".to_string() } else { path.to_string() };
    Ok((hostport, path))
}

/// A non-empty string (`--token-secret`).
pub fn non_empty(s: &str) -> Result<String, String> {
    if s.is_empty() { Err("must not be empty".into()) } else { Ok(s.to_string()) }
}

/// `I/N` (`--child`); that `I < N` is checked with the other combinations.
pub fn child(s: &str) -> Result<(usize, usize), String> {
    let (i, n) = s.split_once('/').ok_or("want I/N")?;
    let i = i.parse().map_err(|_| "want I/N")?;
    let n = n.parse().map_err(|_| "want I/N")?;
    Ok((i, n))
}

/// A run id (`--run-id`), a prefix of group names: 1-64 of `A-Z a-z 0-9 -`.
pub fn run_id(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 64 || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err("want 1-64 of A-Z a-z 0-9 -".into());
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(duration("2.5s").unwrap(), Duration::from_millis(2500));
        assert_eq!(duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(duration("1m").unwrap(), Duration::from_secs(60));
        assert!(duration("-1").is_err());
        assert!(duration("abc").is_err());
        assert_eq!(bytes("100").unwrap(), 100);
        assert_eq!(bytes("8k").unwrap(), 8192);
        assert_eq!(bytes("8KiB").unwrap(), 8192);
        assert_eq!(bytes("1m").unwrap(), 1 << 20);
        assert!(bytes("x").is_err());
    }

    #[test]
    fn src_ranges() {
        let v = src("127.0.0.1-127.0.0.4").unwrap().0;
        assert_eq!(v.len(), 4);
        assert_eq!(v[3], "127.0.0.4".parse::<IpAddr>().unwrap());
        assert_eq!(src("127.0.0.1-8").unwrap().0.len(), 8);
        assert_eq!(src("127.0.0.255-127.0.1.0").unwrap().0.len(), 2);
        assert_eq!(src("127.0.0.1, ::1").unwrap().0.len(), 2);
        assert!(src("127.0.0.5-127.0.0.4").is_err());
        assert!(src("10.0.0.0-11.0.0.0").is_err());
        assert!(src("").is_err());
        assert!(src("host").is_err());
    }

    #[test]
    fn url_forms() {
        assert_eq!(split_url("ws://127.0.0.1:9000/ws").unwrap(), ("127.0.0.1:9000".into(), "/ws".into()));
        assert_eq!(split_url("ws://example.com/ws?a=b").unwrap(), ("example.com:80".into(), "/ws?a=b".into()));
        assert_eq!(split_url("ws://[::1]:9000").unwrap(), ("[::1]:9000".into(), "/".into()));
        assert_eq!(split_url("ws://[::1]/ws").unwrap().0, "[::1]:80");
        assert!(split_url("ws:///ws").is_err());
        assert_eq!(split_url("wss://example.com/ws").unwrap().0, "example.com:443");
        assert_eq!(split_url("wss://localhost:9443/ws").unwrap().0, "localhost:9443");
        assert_eq!(urls("ws://a/ws,,ws://b/ws").unwrap().0, vec!["ws://a/ws", "ws://b/ws"]);
        assert!(urls("ws://a/ws,http://b/").is_err());
    }

    #[test]
    fn mixes() {
        assert_eq!(mix("1:0:0").unwrap(), Mix { group: 1, direct: 0, request: 0 });
        assert!(mix("0:0:0").is_err());
        assert!(mix("1:2").is_err());
    }

    #[test]
    fn small_values() {
        assert_eq!(pids("1,,2, 3").unwrap().0, vec![1, 2, 3]);
        assert!(pids("x").is_err());
        assert_eq!(child("1/3").unwrap(), (1, 3));
        assert!(child("1").is_err());
        assert!(run_id("lt-ab12").is_ok());
        assert!(run_id("a b").is_err() && run_id("").is_err() && run_id(&"a".repeat(65)).is_err());
        assert!(count_u32("4294967296").is_err());
        assert!(non_empty("").is_err());
    }
}
