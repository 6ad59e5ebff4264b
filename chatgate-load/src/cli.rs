//! Command-line parsing: `chatgate-load <scenario> --url ws://HOST:PORT/ws [options]`.
//!
//! Hand-rolled (no argument-parsing dependency): every option takes exactly one value,
//! given as the next argument or after `=` (`--rate=max`).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// Printed by `--help`.
pub const USAGE: &str = "\
chatgate-load: load generator for the chatgate WebSocket protocol

USAGE:
    chatgate-load <SCENARIO> [--url ws://HOST:PORT/ws]... [OPTIONS]

SCENARIOS:
    fanout    C connections spread round-robin over G groups; S of them send group messages
              to their group, R messages/s in total
    direct    P pairs; pair i's sender is on url[i % n], its receiver on url[(i+1) % n], so
              with several nodes every message crosses nodes; R messages/s in total
    connect   open N connections as fast as --connect-concurrency allows, hold them for
              --hold, close; reports connections/s, handshake latency and failures
    mixed     chat-like: every connection joins --groups-per-conn static groups and sends
              group messages, direct messages to random connected users (of its process) and
              online/members/ping requests, weighted by --mix; R actions/s in total

OPTIONS:
    --url URL                 gateway endpoint, ws:// only; repeat or comma-separate for
                              several nodes (connections round-robin) [default: ws://127.0.0.1:9000/ws]
    --conns N                 connections [fanout/connect/mixed: 1000, direct: 2000 = 1000 pairs]
    --pairs N                 direct: sender/receiver pairs (same as --conns 2N)
    --groups G                groups [fanout: 1, mixed: conns/20]
    --groups-per-conn K       groups each connection joins [fanout: 1, mixed: 2; at most G]
    --senders S               fanout: sending connections, spread round-robin over the
                              groups [default: 1]
    --rate R|max              total messages/s over all senders, open loop: with r = R/senders,
                              a sender's message n is due at start + phase + n/r (random phase);
                              a late sender sends its backlog at once and latency counts from
                              the due time
                              [default: 1000]. `max`: each sender keeps up to --window
                              messages un-acked, and senders wait while a connection of their
                              process is owed more than 2 x --window deliveries by them
    --window W                in-flight messages per sender with --rate max [default: 64]
    --size B                  content bytes per message; k/m suffixes [default: 100]
    --duration T              sending time; s (default unit), ms or m suffix [default: 10]
    --hold T                  connect: how long the connections stay open [default: 5]
    --drain T                 after sending, wait up to T for outstanding acks and
                              deliveries (a single process stops early once all are in) [default: 3]
    --mix G:D:R               mixed: weights of group messages, direct messages and
                              requests [default: 60:30:10]
    --src LIST                source addresses, round-robin over connections (each address
                              has its own ~28k ephemeral ports): addresses and ranges,
                              comma-separated: 127.0.0.1-127.0.0.8 or 127.0.0.1-8
    --procs N                 run N child processes (this binary with --child I/N), each
                              with every N-th connection and its share of senders and rate;
                              a start barrier syncs them, results are merged [default: 1]
    --connect-concurrency N   handshakes in flight per process [default: 256]
    --connect-timeout T       per connection: TCP connect + upgrade + welcome, and joins
                              [default: 10]
    --read-buffer B           per-connection WebSocket read buffer [default: 8k]
    --token-secret S          connect with ?token=<HS256 JWT, sub load-<connection index>>
    --max-conn-errors N       tolerated connection errors: failed connects or joins and
                              connections closed before the end [default: 0]
    --watch-pid LIST          server processes (gateways, RabbitMQ, Redis) on this machine:
                              report their CPU seconds over the measured window (sending +
                              draining; connect: connecting), per delivered message, and
                              their memory before connecting, loaded and at peak (/proc)
    --json                    print the final report as one JSON object on stdout
    --quiet                   no per-second progress line on stderr
    -h, --help                this text

OUTPUT:
    stderr: a progress line per second (elapsed, phase, connections up, sent/s,
    delivered/s, errors, p99 latency of that second) and a summary table at the end.
    stdout with --json: scenario, urls, procs, connections, connected, connect_failures,
    join_failures, disconnects, connections_per_s, connect_us, groups, rate, size,
    duration_s, sent (+ sent_group, sent_direct), sent_per_s, acked_sent, acked_offline,
    unacked, errors (+ unavailable, rate_limited, not_member, bad_request, other_errors),
    expected, delivered (+ delivered_group, delivered_direct), lost, excess, out_of_order,
    unstamped, delivered_per_s, latency_of, latency_us, send_lag_us, requests, replies,
    tool_cpu_pct, close_codes, conn_errors, ok, and with --watch-pid a `server` object:
    pids, cpu_s, cpu_us_per_delivery, cpu_us_per_message, cpu_s_per_1000_delivered,
    rss_before_kb, rss_loaded_kb, peak_rss_kb, rss_per_conn_bytes. Latency objects have p50, p90, p99, p999,
    max, mean, count in microseconds.

    Latency is end to end: the due time (epoch microseconds) travels in the content,
    {\"t\":<due>,\"s\":<sender>,\"n\":<seq>,\"p\":\"xx..\"}, and is subtracted from
    the receive time (across machines, clocks must be synchronised). send_lag_us is how
    late sends left; tool_cpu_pct is the busiest load process's CPU use while sending.
    Expected deliveries: 1 per direct message acked sent, members - 1 per group message
    acked sent (members summed over all processes); lost = expected - delivered.

EXIT STATUS:
    0  every delivery owed for messages acked `sent` arrived; connection errors within limit
    1  lost deliveries, or more connection errors than --max-conn-errors
    2  bad arguments or set-up failure
";

/// Parsed arguments for unit tests (panics on a parse error or `--help`).
#[cfg(test)]
pub fn test_args(a: &[&str]) -> Args {
    match parse(a.iter().map(|s| s.to_string())) {
        Ok(Command::Run(a)) => *a,
        other => panic!("not a run: {other:?}"),
    }
}

/// Which workload to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Fanout,
    Direct,
    Connect,
    Mixed,
}

impl Scenario {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Fanout => "fanout",
            Scenario::Direct => "direct",
            Scenario::Connect => "connect",
            Scenario::Mixed => "mixed",
        }
    }
}

/// Sending rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    /// Messages per second over all senders, on a fixed schedule.
    PerSec(f64),
    /// As fast as acks return, with a window of un-acked messages per sender.
    Max,
}

/// Relative weights of the actions of a `mixed` sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    pub group: u32,
    pub direct: u32,
    pub request: u32,
}

/// Fully resolved options (scenario defaults applied).
#[derive(Debug, Clone, PartialEq)]
pub struct Args {
    pub scenario: Scenario,
    pub urls: Vec<String>,
    pub conns: usize,
    pub groups: usize,
    pub groups_per_conn: usize,
    pub senders: usize,
    pub rate: Rate,
    pub window: u32,
    pub size: usize,
    pub duration: Duration,
    pub hold: Duration,
    pub drain: Duration,
    pub mix: Mix,
    pub src: Vec<IpAddr>,
    pub procs: usize,
    pub connect_concurrency: usize,
    pub connect_timeout: Duration,
    pub read_buffer: usize,
    pub token_secret: Option<String>,
    pub max_conn_errors: u64,
    /// `--watch-pid`: server processes whose CPU and memory are reported.
    pub watch_pids: Vec<u32>,
    pub json: bool,
    pub quiet: bool,
    /// Hidden: `--child I/N`, this process is child I of N started by `--procs`.
    pub child: Option<(usize, usize)>,
    /// Hidden: `--run-id ID`, shared by all children (prefix of group names).
    pub run_id: Option<String>,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Help,
    Run(Box<Args>),
}

/// Options as given, before scenario defaults.
#[derive(Default)]
struct Given {
    urls: Vec<String>,
    conns: Option<usize>,
    pairs: Option<usize>,
    groups: Option<usize>,
    groups_per_conn: Option<usize>,
    senders: Option<usize>,
    rate: Option<Rate>,
    window: Option<u32>,
    size: Option<usize>,
    duration: Option<Duration>,
    hold: Option<Duration>,
    drain: Option<Duration>,
    mix: Option<Mix>,
    src: Vec<IpAddr>,
    procs: Option<usize>,
    connect_concurrency: Option<usize>,
    connect_timeout: Option<Duration>,
    read_buffer: Option<usize>,
    token_secret: Option<String>,
    watch_pids: Vec<u32>,
    max_conn_errors: Option<u64>,
    json: bool,
    quiet: bool,
    child: Option<(usize, usize)>,
    run_id: Option<String>,
}

/// Default endpoint when no `--url` is given.
pub const DEFAULT_URL: &str = "ws://127.0.0.1:9000/ws";

/// Parses the arguments after the program name.
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Command, String> {
    let mut it = args.into_iter();
    let mut scenario = None;
    let mut g = Given::default();
    while let Some(arg) = it.next() {
        if arg == "-h" || arg == "--help" || arg == "help" {
            return Ok(Command::Help);
        }
        if !arg.starts_with('-') {
            if scenario.is_some() {
                return Err(format!("unexpected argument {arg:?}"));
            }
            scenario = Some(parse_scenario(&arg)?);
            continue;
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        // Flags without a value.
        match name.as_str() {
            "--json" | "--quiet" => {
                if inline.is_some() {
                    return Err(format!("{name} takes no value"));
                }
                if name == "--json" {
                    g.json = true;
                } else {
                    g.quiet = true;
                }
                continue;
            }
            _ => {}
        }
        let value = match inline {
            Some(v) => v,
            None => it.next().ok_or_else(|| format!("{name} needs a value"))?,
        };
        let v = value.as_str();
        let bad = |what: &str| format!("{name} {v:?}: {what}");
        match name.as_str() {
            "--url" => {
                for u in v.split(',').filter(|u| !u.is_empty()) {
                    check_url(u).map_err(|e| bad(&e))?;
                    g.urls.push(u.to_string());
                }
            }
            "--conns" => g.conns = Some(count(v).map_err(|e| bad(&e))?),
            "--pairs" => g.pairs = Some(count(v).map_err(|e| bad(&e))?),
            "--groups" => g.groups = Some(count(v).map_err(|e| bad(&e))?),
            "--groups-per-conn" => g.groups_per_conn = Some(count(v).map_err(|e| bad(&e))?),
            "--senders" => g.senders = Some(count(v).map_err(|e| bad(&e))?),
            "--rate" => g.rate = Some(parse_rate(v).map_err(|e| bad(&e))?),
            "--window" => {
                let w = count(v).map_err(|e| bad(&e))?;
                g.window = Some(u32::try_from(w).map_err(|_| bad("too large"))?);
            }
            "--size" => g.size = Some(parse_bytes(v).map_err(|e| bad(&e))?),
            "--duration" => g.duration = Some(parse_duration(v).map_err(|e| bad(&e))?),
            "--hold" => g.hold = Some(parse_duration(v).map_err(|e| bad(&e))?),
            "--drain" => g.drain = Some(parse_duration(v).map_err(|e| bad(&e))?),
            "--mix" => g.mix = Some(parse_mix(v).map_err(|e| bad(&e))?),
            "--src" => g.src.extend(parse_src(v).map_err(|e| bad(&e))?),
            "--procs" => g.procs = Some(count(v).map_err(|e| bad(&e))?),
            "--connect-concurrency" => g.connect_concurrency = Some(count(v).map_err(|e| bad(&e))?),
            "--connect-timeout" => g.connect_timeout = Some(parse_duration(v).map_err(|e| bad(&e))?),
            "--read-buffer" => g.read_buffer = Some(parse_bytes(v).map_err(|e| bad(&e))?),
            "--token-secret" => {
                if v.is_empty() {
                    return Err(bad("must not be empty"));
                }
                g.token_secret = Some(value.clone());
            }
            "--watch-pid" => {
                for pid in v.split(',').filter(|p| !p.is_empty()) {
                    g.watch_pids.push(pid.trim().parse().map_err(|_| bad("want process ids"))?);
                }
            }
            "--max-conn-errors" => g.max_conn_errors = Some(v.parse().map_err(|_| bad("want a non-negative integer"))?),
            "--child" => g.child = Some(parse_child(v).map_err(|e| bad(&e))?),
            "--run-id" => {
                if v.is_empty() || v.len() > 64 || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                    return Err(bad("want 1-64 of A-Z a-z 0-9 -"));
                }
                g.run_id = Some(value.clone());
            }
            _ => return Err(format!("unknown option {name:?} (see --help)")),
        }
    }
    let scenario = scenario.ok_or("missing scenario: fanout, direct, connect or mixed (see --help)")?;
    resolve(scenario, g).map(|a| Command::Run(Box::new(a)))
}

/// Applies the scenario's defaults and checks the combination.
fn resolve(scenario: Scenario, g: Given) -> Result<Args, String> {
    let conns = match (scenario, g.pairs, g.conns) {
        (Scenario::Direct, Some(p), _) => p.checked_mul(2).ok_or("--pairs too large")?,
        (Scenario::Direct, None, Some(c)) => {
            if c < 2 {
                return Err("direct needs --conns of at least 2 (one pair)".into());
            }
            c / 2 * 2
        }
        (Scenario::Direct, None, None) => 2000,
        (_, Some(_), _) => return Err("--pairs is for the direct scenario".into()),
        (_, None, c) => c.unwrap_or(1000),
    };
    let groups = match scenario {
        Scenario::Mixed => g.groups.unwrap_or((conns / 20).max(1)),
        _ => g.groups.unwrap_or(1),
    };
    if matches!(scenario, Scenario::Fanout | Scenario::Mixed) && groups > conns {
        return Err(format!("--groups {groups} is more than --conns {conns}: some groups would be empty"));
    }
    let groups_per_conn = match scenario {
        Scenario::Mixed => g.groups_per_conn.unwrap_or(2).min(groups),
        _ => g.groups_per_conn.unwrap_or(1),
    };
    if groups_per_conn > groups {
        return Err(format!("--groups-per-conn {groups_per_conn} is more than --groups {groups}"));
    }
    let senders = g.senders.unwrap_or(1);
    if scenario == Scenario::Fanout && senders > conns {
        return Err(format!("--senders {senders} is more than --conns {conns}"));
    }
    if g.senders.is_some() && scenario != Scenario::Fanout {
        return Err("--senders is for the fanout scenario (direct: --pairs; mixed: every connection sends)".into());
    }
    let procs = g.procs.unwrap_or(1);
    let units = if scenario == Scenario::Direct { conns / 2 } else { conns };
    if procs > units {
        return Err(format!("--procs {procs} is more than the {units} connections (pairs) to share"));
    }
    if let Some((i, n)) = g.child
        && (n == 0 || i >= n)
    {
        return Err("--child wants I/N with I < N".into());
    }
    let mut urls = g.urls;
    if urls.is_empty() {
        urls.push(DEFAULT_URL.to_string());
    }
    let size = g.size.unwrap_or(100);
    if size > 16 << 20 {
        return Err("--size is at most 16m".into());
    }
    let read_buffer = g.read_buffer.unwrap_or(8 * 1024);
    if !(256..=16 << 20).contains(&read_buffer) {
        return Err("--read-buffer must be between 256 and 16m".into());
    }
    let mix = g.mix.unwrap_or(Mix { group: 60, direct: 30, request: 10 });
    if scenario == Scenario::Mixed && mix.direct > 0 && conns / procs < 2 {
        return Err("mixed with direct messages needs at least 2 connections per process".into());
    }
    Ok(Args {
        scenario,
        urls,
        conns,
        groups,
        groups_per_conn,
        senders,
        rate: g.rate.unwrap_or(Rate::PerSec(1000.0)),
        window: g.window.unwrap_or(64),
        size,
        duration: g.duration.unwrap_or(Duration::from_secs(10)),
        hold: g.hold.unwrap_or(Duration::from_secs(5)),
        drain: g.drain.unwrap_or(Duration::from_secs(3)),
        mix,
        src: g.src,
        procs,
        connect_concurrency: g.connect_concurrency.unwrap_or(256),
        connect_timeout: g.connect_timeout.unwrap_or(Duration::from_secs(10)),
        read_buffer,
        token_secret: g.token_secret,
        max_conn_errors: g.max_conn_errors.unwrap_or(0),
        watch_pids: g.watch_pids,
        json: g.json,
        quiet: g.quiet,
        child: g.child,
        run_id: g.run_id,
    })
}

fn parse_scenario(s: &str) -> Result<Scenario, String> {
    match s {
        "fanout" => Ok(Scenario::Fanout),
        "direct" => Ok(Scenario::Direct),
        "connect" => Ok(Scenario::Connect),
        "mixed" => Ok(Scenario::Mixed),
        _ => Err(format!("unknown scenario {s:?}: want fanout, direct, connect or mixed")),
    }
}

/// A positive integer.
fn count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err("want a positive integer".into()),
    }
}

fn parse_rate(s: &str) -> Result<Rate, String> {
    if s.eq_ignore_ascii_case("max") {
        return Ok(Rate::Max);
    }
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(Rate::PerSec(r)),
        _ => Err("want messages per second (> 0) or `max`".into()),
    }
}

/// Bytes with an optional `k` (KiB) or `m` (MiB) suffix.
pub fn parse_bytes(s: &str) -> Result<usize, String> {
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
pub fn parse_duration(s: &str) -> Result<Duration, String> {
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

fn parse_mix(s: &str) -> Result<Mix, String> {
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
pub fn parse_src(s: &str) -> Result<Vec<IpAddr>, String> {
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
    Ok(out)
}

fn parse_child(s: &str) -> Result<(usize, usize), String> {
    let (i, n) = s.split_once('/').ok_or("want I/N")?;
    let i = i.parse().map_err(|_| "want I/N")?;
    let n = n.parse().map_err(|_| "want I/N")?;
    Ok((i, n))
}

/// Checks the parts of a URL this tool needs; see [`split_url`].
fn check_url(u: &str) -> Result<(), String> {
    split_url(u).map(|_| ())
}

/// `ws://host[:port]/path?query` → (`host:port` to connect to, path with query).
pub fn split_url(u: &str) -> Result<(String, String), String> {
    if u.starts_with("wss://") {
        return Err("wss:// is not supported (this tool speaks plain ws://)".into());
    }
    let rest = u.strip_prefix("ws://").ok_or("want a ws:// URL")?;
    let cut = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(cut);
    if authority.is_empty() || authority.contains('@') {
        return Err("want ws://HOST:PORT/path".into());
    }
    let has_port = match authority.rfind(']') {
        Some(b) => authority[b..].contains(':'),
        None => authority.contains(':'),
    };
    let hostport = if has_port { authority.to_string() } else { format!("{authority}:80") };
    let path = if path.is_empty() { "/".to_string() } else { path.to_string() };
    Ok((hostport, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Args, String> {
        match parse(args.iter().map(|s| s.to_string()))? {
            Command::Run(a) => Ok(*a),
            Command::Help => Err("help".into()),
        }
    }

    #[test]
    fn defaults_per_scenario() {
        let a = run(&["fanout"]).unwrap();
        assert_eq!((a.conns, a.groups, a.senders, a.groups_per_conn), (1000, 1, 1, 1));
        assert_eq!(a.rate, Rate::PerSec(1000.0));
        assert_eq!(a.urls, vec![DEFAULT_URL.to_string()]);
        assert_eq!(a.size, 100);
        assert_eq!(a.window, 64);
        assert_eq!(a.read_buffer, 8192);
        assert_eq!(a.drain, Duration::from_secs(3));
        assert_eq!(run(&["direct"]).unwrap().conns, 2000);
        assert_eq!(run(&["connect"]).unwrap().hold, Duration::from_secs(5));
        let m = run(&["mixed"]).unwrap();
        assert_eq!((m.conns, m.groups, m.groups_per_conn), (1000, 50, 2));
        assert_eq!(m.mix, Mix { group: 60, direct: 30, request: 10 });
    }

    #[test]
    fn options_and_forms() {
        let a = run(&[
            "fanout",
            "--url",
            "ws://127.0.0.1:9000/ws,ws://127.0.0.1:9001/ws",
            "--url=ws://h/ws",
            "--conns",
            "500",
            "--groups=5",
            "--senders",
            "5",
            "--rate",
            "max",
            "--window",
            "8",
            "--size",
            "1k",
            "--duration",
            "500ms",
            "--drain",
            "1.5",
            "--src",
            "127.0.0.1-3,127.0.1.1",
            "--procs",
            "2",
            "--json",
            "--token-secret",
            "s3cret",
            "--max-conn-errors",
            "3",
        ])
        .unwrap();
        assert_eq!(a.urls.len(), 3);
        assert_eq!((a.conns, a.groups, a.senders, a.window, a.size), (500, 5, 5, 8, 1024));
        assert_eq!(a.rate, Rate::Max);
        assert_eq!(a.duration, Duration::from_millis(500));
        assert_eq!(a.drain, Duration::from_millis(1500));
        assert_eq!(a.src.len(), 4);
        assert_eq!((a.procs, a.json, a.max_conn_errors), (2, true, 3));
        assert_eq!(a.token_secret.as_deref(), Some("s3cret"));
    }

    #[test]
    fn direct_pairs() {
        assert_eq!(run(&["direct", "--pairs", "10"]).unwrap().conns, 20);
        assert_eq!(run(&["direct", "--conns", "21"]).unwrap().conns, 20);
        assert!(run(&["direct", "--conns", "1"]).is_err());
        assert!(run(&["fanout", "--pairs", "3"]).is_err());
        assert!(run(&["direct", "--senders", "3"]).is_err());
    }

    #[test]
    fn rejects_bad_input() {
        assert!(run(&[]).is_err());
        assert!(run(&["nope"]).is_err());
        assert!(run(&["fanout", "--conns"]).is_err());
        assert!(run(&["fanout", "--conns", "0"]).is_err());
        assert!(run(&["fanout", "--conns", "-3"]).is_err());
        assert!(run(&["fanout", "--rate", "0"]).is_err());
        assert!(run(&["fanout", "--rate", "fast"]).is_err());
        assert!(run(&["fanout", "--url", "http://x/ws"]).is_err());
        assert!(run(&["fanout", "--url", "wss://x/ws"]).is_err());
        assert!(run(&["fanout", "--senders", "2000"]).is_err());
        assert!(run(&["fanout", "--groups", "3", "--groups-per-conn", "4"]).is_err());
        assert!(run(&["fanout", "--frobnicate", "1"]).is_err());
        assert!(run(&["fanout", "--json=1"]).is_err());
        assert!(run(&["fanout", "--procs", "1001"]).is_err());
        assert!(run(&["fanout", "--child", "2/2"]).is_err());
        assert!(run(&["fanout", "fanout"]).is_err());
        assert_eq!(parse(["fanout".to_string(), "--help".to_string()]).unwrap(), Command::Help);
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2.5s").unwrap(), Duration::from_millis(2500));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("abc").is_err());
        assert_eq!(parse_bytes("100").unwrap(), 100);
        assert_eq!(parse_bytes("8k").unwrap(), 8192);
        assert_eq!(parse_bytes("8KiB").unwrap(), 8192);
        assert_eq!(parse_bytes("1m").unwrap(), 1 << 20);
        assert!(parse_bytes("x").is_err());
    }

    #[test]
    fn src_ranges() {
        let v = parse_src("127.0.0.1-127.0.0.4").unwrap();
        assert_eq!(v.len(), 4);
        assert_eq!(v[3], "127.0.0.4".parse::<IpAddr>().unwrap());
        assert_eq!(parse_src("127.0.0.1-8").unwrap().len(), 8);
        assert_eq!(parse_src("127.0.0.255-127.0.1.0").unwrap().len(), 2);
        assert_eq!(parse_src("127.0.0.1, ::1").unwrap().len(), 2);
        assert!(parse_src("127.0.0.5-127.0.0.4").is_err());
        assert!(parse_src("10.0.0.0-11.0.0.0").is_err());
        assert!(parse_src("").is_err());
        assert!(parse_src("host").is_err());
    }

    #[test]
    fn urls() {
        assert_eq!(split_url("ws://127.0.0.1:9000/ws").unwrap(), ("127.0.0.1:9000".into(), "/ws".into()));
        assert_eq!(split_url("ws://example.com/ws?a=b").unwrap(), ("example.com:80".into(), "/ws?a=b".into()));
        assert_eq!(split_url("ws://[::1]:9000").unwrap(), ("[::1]:9000".into(), "/".into()));
        assert_eq!(split_url("ws://[::1]/ws").unwrap().0, "[::1]:80");
        assert!(split_url("ws:///ws").is_err());
    }

    #[test]
    fn mix() {
        assert_eq!(parse_mix("1:0:0").unwrap(), Mix { group: 1, direct: 0, request: 0 });
        assert!(parse_mix("0:0:0").is_err());
        assert!(parse_mix("1:2").is_err());
    }
}
