//! `chatgate-load`: a load generator for the chatgate WebSocket protocol (see `--help`).
//!
//! # Layout
//!
//! | module | concern |
//! |---|---|
//! | [`cli`] | the command line (clap): options, `--help`, combination checks |
//! | [`args`] | the resolved options every other module reads |
//! | [`values`] | option value parsers: sizes, durations, address ranges, URLs |
//! | [`scenario`] | which connection goes where, joins what and sends to whom |
//! | [`run`] | one process: current-thread runtime, the coordinator and its phases |
//! | [`ctx`] | what the tasks of a process share: phase, users, countdowns, stats |
//! | [`conn`] | one connection's task: dial, join, send on schedule, count; its state machine |
//! | [`proto`] | outgoing frames and cheap recognition of incoming ones |
//! | [`flow`] | `--rate max` flow control |
//! | [`timer`] | the clock and a sub-millisecond send timer |
//! | [`stats`] | counters, histograms, the per-process result and merging |
//! | [`report`] | the final report: JSON, verdict and table |
//! | [`progress`] | per-second progress, and the JSON lines a child sends its parent |
//! | [`procs`] | `--procs N`: the parent of N child processes |
//! | [`server`] | `--watch-pid`: the server processes' CPU and memory |
//! | [`procfs`] | reading CPU time and memory from `/proc` |
//!
//! Imports run one way: `main` → `procs`/`run` → `conn` → `ctx` → the leaves.
#![forbid(unsafe_code)]
// The report is one large `json!` literal.
#![recursion_limit = "256"]

mod args;
mod cli;
mod conn;
mod ctx;
mod flow;
mod procfs;
mod procs;
mod progress;
mod proto;
mod report;
mod run;
mod scenario;
mod server;
mod stats;
mod timer;
mod values;

use std::process::ExitCode;

use args::Scenario;
use progress::Mode;

/// Bad arguments or set-up failure.
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let args = match cli::parse(std::env::args_os()) {
        Ok(a) => a,
        // Help and version (exit 0) or bad arguments (exit 2, our EXIT_USAGE).
        Err(e) => e.exit(),
    };
    if let Some((i, _)) = args.child {
        return match run::run(args, Mode::Child) {
            Ok(r) => {
                progress::emit(&serde_json::json!({"kind": "result", "result": r}));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("chatgate-load (child {i}): {e}");
                ExitCode::from(EXIT_USAGE)
            }
        };
    }
    if args.scenario != Scenario::Connect && args.size < proto::Encoder::min_content() {
        eprintln!(
            "chatgate-load: note: --size {} is below the {}-byte timestamp; contents will be about {} bytes",
            args.size,
            proto::Encoder::min_content(),
            proto::Encoder::min_content()
        );
    }
    let results = if args.procs > 1 {
        // Every argument parsed, so each one is valid UTF-8 and this is exact.
        let raw: Vec<String> = std::env::args_os().skip(1).map(|a| a.to_string_lossy().into_owned()).collect();
        procs::run(&args, &raw)
    } else {
        run::run(args.clone(), Mode::Single).map(|r| vec![r])
    };
    let results = match results {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chatgate-load: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let merged = stats::merge(&results);
    let summary = report::summarize(&args, &merged);
    eprint!("{}", report::table(&summary));
    if args.json {
        println!("{}", summary.json);
    }
    if summary.failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
