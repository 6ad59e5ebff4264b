//! What a run is asked to do, with every default applied: [`Args`] (built by
//! [`crate::cli::parse`]) and the small types of its fields.

use std::net::IpAddr;
use std::time::Duration;

/// Which workload to run. The doc lines are the scenarios' `--help` text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// C connections spread round-robin over G groups; S of them send group messages to
    /// their group, R messages/s in total
    Fanout,
    /// P pairs; pair i's sender is on url[i % n], its receiver on url[(i+1) % n], so with
    /// several nodes every message crosses nodes; R messages/s in total
    Direct,
    /// open N connections as fast as --connect-concurrency allows, hold them for --hold,
    /// close; reports connections/s, handshake latency and failures
    Connect,
    /// chat-like: every connection joins --groups-per-conn static groups and sends group
    /// messages, direct messages to random connected users (of its process) and
    /// online/members/ping requests, weighted by --mix; R actions/s in total
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

/// Default endpoint when no `--url` is given.
pub const DEFAULT_URL: &str = "ws://127.0.0.1:9000/ws";

/// Fully resolved options (scenario defaults applied, combinations checked).
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
    /// `--ca`: roots for wss:// (else the system's).
    pub ca: Option<std::path::PathBuf>,
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
