//! What the tasks of one process share: the [`Ctx`], built once by [`crate::run`] and
//! read by every connection task ([`crate::conn`]) through an `Rc`.
//!
//! It is a current-thread runtime, so shared mutable state is `Cell`/`RefCell`, never a
//! lock; borrows are short and never held across an `.await`. The parts are grouped by
//! who writes them: fixed set-up ([`Dial`], [`Frames`]), the coordinator's [`Timeline`],
//! the connections' [`Users`] and [`Countdown`]s, and the counting ([`Stats`],
//! [`FlowControl`]).

use std::cell::{Cell, OnceCell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;

use tokio::sync::futures::Notified;
use tokio::sync::{Notify, Semaphore};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::args::{Args, Rate};
use crate::flow::FlowControl;
use crate::proto::{self, Encoder};
use crate::scenario::Plan;
use crate::stats::Stats;
use crate::timer::Timer;
use crate::values::split_url;

/// Phase of the run, shared by all connections of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Connecting and joining.
    Setup,
    /// Senders follow their schedules.
    Running,
    /// Sending is over; deliveries still count.
    Draining,
    /// Connections close.
    Closing,
}

impl Phase {
    /// The name in progress lines.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Setup => "setup",
            Phase::Running => "running",
            Phase::Draining => "draining",
            Phase::Closing => "closing",
        }
    }
}

/// State shared by the tasks of one process.
pub struct Ctx {
    pub args: Args,
    pub plan: Plan,
    pub dial: Dial,
    pub frames: Frames,
    pub timer: Timer,
    pub timeline: Timeline,
    pub users: Users,
    /// Connections still connecting or joining.
    pub setup: Countdown,
    /// Connection tasks still running.
    pub tasks: Countdown,
    pub stats: RefCell<Stats>,
    /// `--rate max` flow control (inert otherwise).
    pub flow: FlowControl,
}

impl Ctx {
    /// The context of a process that runs `plan`; group names start with `run_id`.
    pub fn new(args: Args, plan: Plan, dial: Dial, timer: Timer, run_id: &str) -> Ctx {
        let n = plan.conns.len();
        let flow = if matches!(args.rate, Rate::Max) {
            let local: Vec<usize> = plan.conns.iter().map(|c| c.index).collect();
            FlowControl::new(args.conns, plan.groups, &local, args.window.saturating_mul(2))
        } else {
            FlowControl::disabled()
        };
        Ctx {
            frames: Frames::new(&args, run_id, plan.groups),
            stats: RefCell::new(Stats::new(plan.groups)),
            timeline: Timeline::new(),
            users: Users::new(n),
            setup: Countdown::new(n),
            tasks: Countdown::new(n),
            flow,
            args,
            plan,
            dial,
            timer,
        }
    }
}

/// A gateway endpoint.
pub struct Target {
    pub addr: SocketAddr,
    pub url: String,
}

/// How connections reach the gateways.
pub struct Dial {
    /// One per `--url`, resolved once (connections then skip DNS).
    pub targets: Vec<Target>,
    pub ws_config: WebSocketConfig,
    /// `--connect-concurrency`: handshakes in flight.
    pub permits: Semaphore,
    /// For wss:// URLs.
    pub tls: Option<tokio_tungstenite::Connector>,
}

impl Dial {
    /// Resolves every URL's host (preferring the address family of `--src`) and sizes the
    /// WebSocket buffers so that a burst of `burst` frames fits the write buffer.
    pub async fn resolve(args: &Args) -> Result<Dial, String> {
        let want_v6 = args.src.first().map(|a| a.is_ipv6());
        let mut targets = Vec::new();
        for url in &args.urls {
            let (hostport, _) = split_url(url)?;
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host(hostport.as_str())
                .await
                .map_err(|e| format!("cannot resolve {hostport}: {e}"))?
                .collect();
            let addr = addrs
                .iter()
                .find(|a| want_v6.is_none_or(|v6| a.is_ipv6() == v6))
                .or(addrs.first())
                .copied()
                .ok_or_else(|| format!("{hostport} resolves to no address"))?;
            targets.push(Target { addr, url: url.clone() });
        }
        let (frame_len, burst) = burst(args);
        let write_buffer = args.read_buffer;
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(args.read_buffer)
            .write_buffer_size(write_buffer)
            .max_write_buffer_size(write_buffer + (burst + 16) * frame_len)
            .max_message_size(Some(16 << 20))
            .max_frame_size(Some(16 << 20));
        let tls = if args.urls.iter().any(|u| u.starts_with("wss://")) { Some(tls_client(args)?) } else { None };
        Ok(Dial { targets, ws_config, permits: Semaphore::new(args.connect_concurrency), tls })
    }
}

/// The TLS client for wss://: `--ca`'s certificates or the system's roots; no session
/// resumption, so every connection pays a full handshake (what a crowd of new clients costs).
fn tls_client(args: &Args) -> Result<tokio_tungstenite::Connector, String> {
    use tokio_rustls::rustls::pki_types::{CertificateDer, pem::PemObject};
    use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, client::Resumption};
    let mut roots = RootCertStore::empty();
    match &args.ca {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("--ca {}: {e}", path.display()))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!("--ca {}: no certificate", path.display()));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_tungstenite::Connector::Rustls(std::sync::Arc::new(config)))
}

/// The largest message frame and how many of them one connection sends in one go (about
/// 256 KiB) before it reads again.
fn burst(args: &Args) -> (usize, usize) {
    let frame_len = args.size.max(Encoder::min_content()) + 128;
    (frame_len, (256 * 1024 / frame_len).clamp(1, 1024))
}

/// What outgoing frames are built from.
pub struct Frames {
    pub enc: RefCell<Encoder>,
    /// `<run id>-g<index>`, shared by all processes of a run.
    pub group_names: Vec<String>,
    /// Each group's message head, up to `"content":`.
    pub group_heads: Vec<Box<[u8]>>,
    /// Most messages one connection sends in one go before reading again.
    pub burst: usize,
}

impl Frames {
    fn new(args: &Args, run_id: &str, groups: usize) -> Frames {
        let group_names: Vec<String> = (0..groups).map(|g| format!("{run_id}-g{g}")).collect();
        let group_heads = group_names.iter().enumerate().map(|(i, n)| proto::group_head(n, i)).collect();
        Frames { enc: RefCell::new(Encoder::new(args.size)), group_names, group_heads, burst: burst(args).1 }
    }
}

/// The run's phase and sending window: written by the coordinator, followed by every
/// connection.
pub struct Timeline {
    phase: Cell<Phase>,
    /// Woken (`notify_waiters`) on every phase change.
    changed: Notify,
    /// Clock ns at which sending starts / ends (`u64::MAX` until the start barrier).
    start_ns: Cell<u64>,
    end_ns: Cell<u64>,
}

impl Timeline {
    fn new() -> Timeline {
        Timeline {
            phase: Cell::new(Phase::Setup),
            changed: Notify::new(),
            start_ns: Cell::new(u64::MAX),
            end_ns: Cell::new(u64::MAX),
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase.get()
    }

    /// Moves the run to phase `p` and wakes every connection.
    pub fn set_phase(&self, p: Phase) {
        self.phase.set(p);
        self.changed.notify_waiters();
    }

    /// Completes at the next phase change after this call (not a missed one).
    pub fn changed(&self) -> Notified<'_> {
        self.changed.notified()
    }

    /// Fixes the sending window, in clock ns.
    pub fn set_window(&self, start_ns: u64, end_ns: u64) {
        self.start_ns.set(start_ns);
        self.end_ns.set(end_ns);
    }

    pub fn start_ns(&self) -> u64 {
        self.start_ns.get()
    }

    pub fn end_ns(&self) -> u64 {
        self.end_ns.get()
    }
}

/// User ids the server gave the local connections.
pub struct Users {
    by_local: RefCell<Vec<Option<Rc<str>>>>,
    /// Connected users (local index, id), fixed at the start barrier: `mixed` targets.
    live: OnceCell<Vec<(usize, Rc<str>)>>,
}

impl Users {
    fn new(n: usize) -> Users {
        Users { by_local: RefCell::new(vec![None; n]), live: OnceCell::new() }
    }

    /// Local connection `local` was welcomed as `user`.
    pub fn welcomed(&self, local: usize, user: Rc<str>) {
        if let Some(slot) = self.by_local.borrow_mut().get_mut(local) {
            *slot = Some(user);
        }
    }

    /// The user id of local connection `local`, if it was welcomed.
    pub fn get(&self, local: usize) -> Option<Rc<str>> {
        self.by_local.borrow().get(local).cloned().flatten()
    }

    /// Takes the list of connected users for [`Users::live`] (once; later calls keep it).
    pub fn fix_live(&self) {
        let live = self.by_local.borrow().iter().enumerate().filter_map(|(i, u)| u.clone().map(|u| (i, u))).collect();
        let _ = self.live.set(live);
    }

    /// The users connected at the start barrier (empty before it).
    pub fn live(&self) -> &[(usize, Rc<str>)] {
        self.live.get().map_or(&[], Vec::as_slice)
    }
}

/// A number of outstanding things, and a wake-up when none are left.
pub struct Countdown {
    left: Cell<usize>,
    zero: Notify,
}

impl Countdown {
    pub fn new(n: usize) -> Countdown {
        Countdown { left: Cell::new(n), zero: Notify::new() }
    }

    /// One is done.
    pub fn done(&self) {
        self.left.set(self.left.get().saturating_sub(1));
        if self.left.get() == 0 {
            self.zero.notify_one();
        }
    }

    /// Completes once none are left (at once if none are).
    pub async fn zero(&self) {
        while self.left.get() > 0 {
            self.zero.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn countdown_wakes_at_zero() {
        let c = Rc::new(Countdown::new(2));
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let c2 = c.clone();
                let waiter = tokio::task::spawn_local(async move { c2.zero().await });
                tokio::task::yield_now().await;
                c.done();
                assert!(!waiter.is_finished());
                c.done();
                c.done();
                waiter.await.unwrap();
                // Done more often than counted: still zero.
                c.zero().await;
                Countdown::new(0).zero().await;
            })
            .await;
    }

    #[test]
    fn users_and_the_live_list() {
        let u = Users::new(3);
        assert!(u.live().is_empty());
        u.welcomed(2, "b".into());
        u.welcomed(0, "a".into());
        u.welcomed(9, "ignored".into());
        assert_eq!(u.get(2).as_deref(), Some("b"));
        assert_eq!(u.get(1), None);
        u.fix_live();
        u.welcomed(1, "late".into());
        u.fix_live();
        let live: Vec<(usize, &str)> = u.live().iter().map(|(i, s)| (*i, &**s)).collect();
        assert_eq!(live, vec![(0, "a"), (2, "b")]);
    }
}
