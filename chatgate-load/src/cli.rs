//! The command line: `chatgate-load <SCENARIO> [--url ws://HOST:PORT/ws]... [OPTIONS]`, on
//! clap. [`Cli`] is what was typed; [`parse`] checks the combination and applies the
//! scenario defaults into an [`Args`].
//!
//! Every option takes exactly one value, as the next argument or after `=`; the value may
//! start with `-` (a secret, or a negative number that the parser then refuses). A repeated
//! option keeps its last value, except the lists (`--url`, `--src`, `--watch-pid`), which
//! add up.

use std::ffi::OsString;
use std::net::IpAddr;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{CommandFactory, FromArgMatches, Parser};

use crate::args::{Args, DEFAULT_URL, Mix, Rate, Scenario};
use crate::values::{self, List, flatten};

/// Printed after the options by `--help`.
const AFTER_HELP: &str = "\
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
    rss_before_kb, rss_loaded_kb, peak_rss_kb, rss_per_conn_bytes. Latency objects have
    p50, p90, p99, p999, max, mean, count in microseconds.

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

/// The options as typed; scenario-dependent defaults are `None` here.
#[derive(Debug, Parser)]
#[command(
    name = "chatgate-load",
    version,
    about = "chatgate-load: load generator for the chatgate WebSocket protocol",
    override_usage = "chatgate-load <SCENARIO> [--url ws://HOST:PORT/ws]... [OPTIONS]",
    after_help = AFTER_HELP,
    args_override_self = true,
    max_term_width = 100
)]
pub struct Cli {
    /// The workload
    #[arg(value_enum)]
    scenario: Scenario,
    /// Gateway endpoint, ws:// or wss://; repeat or comma-separate for several nodes
    /// (connections round-robin)
    #[arg(long = "url", value_name = "URL", default_value = DEFAULT_URL, value_parser = values::urls)]
    urls: Vec<List<String>>,
    /// Connections [fanout/connect/mixed: 1000, direct: 2000 = 1000 pairs]
    #[arg(long, value_name = "N", value_parser = values::count)]
    conns: Option<usize>,
    /// direct: sender/receiver pairs (same as --conns 2N)
    #[arg(long, value_name = "N", value_parser = values::count)]
    pairs: Option<usize>,
    /// Groups [fanout: 1, mixed: conns/20]
    #[arg(long, value_name = "G", value_parser = values::count)]
    groups: Option<usize>,
    /// Groups each connection joins [fanout: 1, mixed: 2; at most G]
    #[arg(long, value_name = "K", value_parser = values::count)]
    groups_per_conn: Option<usize>,
    /// fanout: sending connections, spread round-robin over the groups [default: 1]
    #[arg(long, value_name = "S", value_parser = values::count)]
    senders: Option<usize>,
    /// Total messages/s over all senders, or `max`.
    ///
    /// Open loop: with r = R/senders, a sender's message n is due at start + phase + n/r
    /// (random phase); a late sender sends its backlog at once and latency counts from the
    /// due time. `max`: each sender keeps up to --window messages un-acked, and senders wait
    /// while a connection of their process is owed more than 2 x --window deliveries by them
    #[arg(long, value_name = "R|max", default_value = "1000", value_parser = values::rate)]
    rate: Rate,
    /// In-flight messages per sender with --rate max
    #[arg(long, value_name = "W", default_value = "64", value_parser = values::count_u32)]
    window: u32,
    /// Content bytes per message; k/m suffixes
    #[arg(long, value_name = "B", default_value = "100", value_parser = values::bytes)]
    size: usize,
    /// Sending time; s (default unit), ms or m suffix
    #[arg(long, value_name = "T", default_value = "10", value_parser = values::duration)]
    duration: Duration,
    /// connect: how long the connections stay open
    #[arg(long, value_name = "T", default_value = "5", value_parser = values::duration)]
    hold: Duration,
    /// After sending, wait up to T for outstanding acks and deliveries (a single process
    /// stops early once all are in)
    #[arg(long, value_name = "T", default_value = "3", value_parser = values::duration)]
    drain: Duration,
    /// mixed: weights of group messages, direct messages and requests
    #[arg(long, value_name = "G:D:R", default_value = "60:30:10", value_parser = values::mix)]
    mix: Mix,
    /// Source addresses, round-robin over connections (each address has its own ~28k
    /// ephemeral ports): addresses and ranges, comma-separated: 127.0.0.1-127.0.0.8 or
    /// 127.0.0.1-8
    #[arg(long, value_name = "LIST", value_parser = values::src)]
    src: Vec<List<IpAddr>>,
    /// Run N child processes (this binary with --child I/N), each with every N-th
    /// connection and its share of senders and rate; a start barrier syncs them, results
    /// are merged
    #[arg(long, value_name = "N", default_value = "1", value_parser = values::count)]
    procs: usize,
    /// Handshakes in flight per process
    #[arg(long, value_name = "N", default_value = "256", value_parser = values::count)]
    connect_concurrency: usize,
    /// Per connection: TCP connect + upgrade + welcome, and joins
    #[arg(long, value_name = "T", default_value = "10", value_parser = values::duration)]
    connect_timeout: Duration,
    /// Per-connection WebSocket read buffer
    #[arg(long, value_name = "B", default_value = "8k", value_parser = values::bytes)]
    read_buffer: usize,
    /// wss://: trust the CA certificate(s) in this PEM file instead of the system's roots.
    /// Every connection makes a full TLS handshake (no session resumption)
    #[arg(long, value_name = "FILE")]
    ca: Option<std::path::PathBuf>,
    /// Connect with ?token=<HS256 JWT, sub load-<connection index>>
    #[arg(long, value_name = "S", value_parser = values::non_empty)]
    token_secret: Option<String>,
    /// Tolerated connection errors: failed connects or joins and connections closed before
    /// the end
    #[arg(long, value_name = "N", default_value = "0", value_parser = values::at_least_zero)]
    max_conn_errors: u64,
    /// Server processes (gateways, RabbitMQ, Redis) on this machine: report their CPU
    /// seconds over the measured window (sending + draining; connect: connecting), per
    /// delivered message, and their memory before connecting, loaded and at peak (/proc)
    #[arg(long = "watch-pid", value_name = "LIST", value_parser = values::pids)]
    watch_pids: Vec<List<u32>>,
    /// Print the final report as one JSON object on stdout
    #[arg(long)]
    json: bool,
    /// No per-second progress line on stderr
    #[arg(long)]
    quiet: bool,
    /// This process is child I of N (set by --procs).
    #[arg(long, hide = true, value_name = "I/N", value_parser = values::child)]
    child: Option<(usize, usize)>,
    /// Shared by the children of one --procs run: the prefix of group names.
    #[arg(long, hide = true, value_name = "ID", value_parser = values::run_id)]
    run_id: Option<String>,
}

/// Parses a command line (program name first). `--help`, `--version` and errors come back
/// as the `Err`, which `clap::Error::exit` prints and exits with (0, or 2 for bad arguments).
pub fn parse<I, T>(argv: I) -> Result<Args, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let mut argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    // `chatgate-load help`, which the earlier hand-written parser accepted, is `--help`.
    if let Some(first) = argv.get_mut(1).filter(|a| *a == "help") {
        *first = "--help".into();
    }
    let cli = Cli::from_arg_matches(&command().try_get_matches_from(argv)?)?;
    resolve(cli).map_err(|msg| command().error(ErrorKind::ArgumentConflict, msg))
}

/// [`Cli`]'s command, where every option value may start with `-` (a secret like `-x`;
/// a negative count is then refused by its parser, not taken for an unknown option).
fn command() -> clap::Command {
    Cli::command().mut_args(|a| {
        let takes_value = a.get_long().is_some() && a.get_action().takes_values();
        a.allow_hyphen_values(takes_value)
    })
}

/// Parsed arguments for unit tests (panics on an error or `--help`).
#[cfg(test)]
pub fn test_args(a: &[&str]) -> Args {
    parse(std::iter::once("chatgate-load").chain(a.iter().copied())).unwrap_or_else(|e| panic!("{a:?}: {e}"))
}

/// Applies the scenario's defaults and checks the combination.
fn resolve(g: Cli) -> Result<Args, String> {
    let scenario = g.scenario;
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
    let procs = g.procs;
    let units = if scenario == Scenario::Direct { conns / 2 } else { conns };
    if procs > units {
        return Err(format!("--procs {procs} is more than the {units} connections (pairs) to share"));
    }
    if let Some((i, n)) = g.child
        && (n == 0 || i >= n)
    {
        return Err("--child wants I/N with I < N".into());
    }
    let mut urls = flatten(g.urls);
    if urls.is_empty() {
        // `--url ""`: nothing given after all.
        urls.push(DEFAULT_URL.to_string());
    }
    if g.size > 16 << 20 {
        return Err("--size is at most 16m".into());
    }
    if !(256..=16 << 20).contains(&g.read_buffer) {
        return Err("--read-buffer must be between 256 and 16m".into());
    }
    if scenario == Scenario::Mixed && g.mix.direct > 0 && conns / procs < 2 {
        return Err("mixed with direct messages needs at least 2 connections per process".into());
    }
    Ok(Args {
        scenario,
        urls,
        conns,
        groups,
        groups_per_conn,
        senders,
        rate: g.rate,
        window: g.window,
        size: g.size,
        duration: g.duration,
        hold: g.hold,
        drain: g.drain,
        mix: g.mix,
        src: flatten(g.src),
        procs,
        connect_concurrency: g.connect_concurrency,
        connect_timeout: g.connect_timeout,
        read_buffer: g.read_buffer,
        token_secret: g.token_secret,
        ca: g.ca,
        max_conn_errors: g.max_conn_errors,
        watch_pids: flatten(g.watch_pids),
        json: g.json,
        quiet: g.quiet,
        child: g.child,
        run_id: g.run_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Args, clap::Error> {
        parse(std::iter::once("chatgate-load").chain(args.iter().copied()))
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
        assert_eq!(a.duration, Duration::from_secs(10));
        assert_eq!(a.connect_timeout, Duration::from_secs(10));
        assert_eq!((a.procs, a.connect_concurrency, a.max_conn_errors), (1, 256, 0));
        assert_eq!((a.json, a.quiet, a.child, a.run_id.as_deref()), (false, false, None, None));
        assert!(a.src.is_empty() && a.watch_pids.is_empty() && a.token_secret.is_none());
        assert_eq!(run(&["direct"]).unwrap().conns, 2000);
        assert_eq!(run(&["connect"]).unwrap().hold, Duration::from_secs(5));
        let m = run(&["mixed"]).unwrap();
        assert_eq!((m.conns, m.groups, m.groups_per_conn), (1000, 50, 2));
        assert_eq!(m.mix, Mix { group: 60, direct: 30, request: 10 });
        assert_eq!(run(&["fanout", "--url", ""]).unwrap().urls, vec![DEFAULT_URL.to_string()]);
    }

    #[test]
    fn options_and_forms() {
        let line = "fanout --url ws://127.0.0.1:9000/ws,ws://127.0.0.1:9001/ws --url=ws://h/ws --conns 500 \
                    --groups=5 --senders 5 --rate max --window 8 --size 1k --duration 500ms --drain 1.5 \
                    --src 127.0.0.1-3,127.0.1.1 --procs 2 --json --token-secret s3cret --max-conn-errors 3";
        let a = run(&line.split_whitespace().collect::<Vec<_>>()).unwrap();
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
    fn order_repeats_and_hidden_options() {
        // Options before the scenario; the last of a repeated option wins; lists add up.
        let a = run(&["--conns", "10", "--url", "ws://a/ws", "fanout", "--conns=20", "--url", "ws://b/ws", "--json"])
            .unwrap();
        assert_eq!(a.conns, 20);
        assert_eq!(a.urls, vec!["ws://a/ws", "ws://b/ws"]);
        let a = run(&["fanout", "--watch-pid", "1,2", "--watch-pid=3", "--src", "::1", "--src", "127.0.0.1"]).unwrap();
        assert_eq!((a.watch_pids, a.src.len()), (vec![1, 2, 3], 2));
        let c = run(&["fanout", "--child", "1/3", "--run-id", "lt00ab12", "--token-secret", "-dash"]).unwrap();
        assert_eq!(
            (c.child, c.run_id.as_deref(), c.token_secret.as_deref()),
            (Some((1, 3)), Some("lt00ab12"), Some("-dash"))
        );
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
        let bad = |a: &[&str]| run(a).map(|_| ()).unwrap_err().kind();
        assert_eq!(bad(&[]), ErrorKind::MissingRequiredArgument);
        assert_eq!(bad(&["nope"]), ErrorKind::InvalidValue);
        assert_eq!(bad(&["fanout", "--conns"]), ErrorKind::InvalidValue);
        assert_eq!(bad(&["fanout", "--frobnicate", "1"]), ErrorKind::UnknownArgument);
        assert_eq!(bad(&["fanout", "--json=1"]), ErrorKind::TooManyValues);
        assert_eq!(bad(&["fanout", "fanout"]), ErrorKind::UnknownArgument);
        for a in [
            &["fanout", "--conns", "0"][..],
            &["fanout", "--conns", "-3"],
            &["fanout", "--rate", "0"],
            &["fanout", "--rate", "fast"],
            &["fanout", "--url", "http://x/ws"],
            &["fanout", "--run-id", "a b"],
            &["fanout", "--token-secret", ""],
        ] {
            assert_eq!(bad(a), ErrorKind::ValueValidation, "{a:?}");
        }
        for a in [
            &["fanout", "--senders", "2000"][..],
            &["fanout", "--groups", "3", "--groups-per-conn", "4"],
            &["fanout", "--procs", "1001"],
            &["fanout", "--child", "2/2"],
            &["fanout", "--size", "17m"],
            &["fanout", "--read-buffer", "100"],
            &["mixed", "--conns", "3", "--procs", "2"],
        ] {
            assert_eq!(bad(a), ErrorKind::ArgumentConflict, "{a:?}");
        }
        // Every error exits 2; --help and --version are not errors.
        assert_eq!(run(&["fanout", "--bogus"]).unwrap_err().exit_code(), 2);
        assert_eq!(run(&["fanout", "--help"]).unwrap_err().kind(), ErrorKind::DisplayHelp);
        assert_eq!(run(&["--version"]).unwrap_err().kind(), ErrorKind::DisplayVersion);
        assert_eq!(run(&["-h"]).unwrap_err().exit_code(), 0);
        assert_eq!(run(&["help"]).unwrap_err().kind(), ErrorKind::DisplayHelp);
        assert!(run(&["fanout", "help"]).is_err(), "help is only a first word");
    }

    #[test]
    fn help_lists_every_option_and_the_report() {
        let help = command().render_help().to_string();
        for opt in [
            "--url",
            "--conns",
            "--pairs",
            "--groups",
            "--groups-per-conn",
            "--senders",
            "--rate",
            "--window",
            "--size",
            "--duration",
            "--hold",
            "--drain",
            "--mix",
            "--src",
            "--procs",
            "--connect-concurrency",
            "--connect-timeout",
            "--read-buffer",
            "--token-secret",
            "--max-conn-errors",
            "--watch-pid",
            "--json",
            "--quiet",
            "--help",
            "--version",
            "fanout",
            "direct",
            "connect",
            "mixed",
            "EXIT STATUS",
        ] {
            assert!(help.contains(opt), "{opt} missing from --help");
        }
        assert!(!help.contains("--child <") && !help.contains("--run-id"), "hidden options shown");
        command().debug_assert();
    }
}
