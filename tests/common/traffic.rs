//! Steady traffic with full accounting, for fault tests: an open-loop sender of direct
//! messages (a fixed rate, whatever the answers do) and a receiver that records what
//! arrives. The [`Report`] says what a fault cost: answers by kind, deliveries, duplicates,
//! messages acked `sent` but lost, and how long each message waited for its answer.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use super::Client;

/// How the gateway answered one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `ack` with this status (`sent`, `offline`, ...).
    Ack(String),
    /// `error` with this code (`unavailable`, ...).
    Error(String),
}

#[derive(Default)]
struct Ledger {
    /// Send time of message `seq`, indexed by `seq`.
    sent_at: Vec<Instant>,
    answers: BTreeMap<u64, (Answer, Instant)>,
    answered_twice: u64,
    /// Deliveries of message `seq`: how many, and when the first arrived.
    deliveries: BTreeMap<u64, (u64, Instant)>,
    /// Connection ends and send failures, in order, with the time since the start.
    events: Vec<String>,
}

/// A running sender/receiver pair; [`finish`](Self::finish) stops it and returns the report.
pub struct Traffic {
    started: Instant,
    rate: u32,
    from: String,
    to: String,
    ledger: Arc<Mutex<Ledger>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Traffic {
    /// Starts `per_second` direct messages from `sender` to `receiver` (connected to other
    /// nodes for cross-node traffic). Each carries `{"seq":n,"sent_us":t}` (microseconds
    /// since the start) as its content and `t<n>` as its id.
    pub fn start(sender: Client, receiver: Client, per_second: u32) -> Traffic {
        let started = Instant::now();
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let (stop, mut stopped) = watch::channel(false);
        let (from, to) = (sender.user.clone(), receiver.user.clone());
        let (mut sink, mut acks) = sender.ws.split();
        let mut inbox = receiver.ws;

        let log = ledger.clone();
        let dest = to.clone();
        let sending = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second.max(1));
            loop {
                tokio::select! {
                    _ = stopped.changed() => return,
                    _ = tick.tick() => {}
                }
                let now = Instant::now();
                let seq = {
                    let mut l = log.lock();
                    l.sent_at.push(now);
                    l.sent_at.len() as u64 - 1
                };
                let content = json!({"seq": seq, "sent_us": (now - started).as_micros() as u64});
                let frame = json!({"type":"once","to":dest,"content":content,"id":format!("t{seq}")});
                if let Err(e) = sink.send(Message::text(frame.to_string())).await {
                    let mut l = log.lock();
                    l.sent_at.pop();
                    l.events.push(format!("{:.1?}: sender's send failed: {e}", started.elapsed()));
                    return;
                }
            }
        });

        let log = ledger.clone();
        let answering = tokio::spawn(async move {
            let end = loop {
                let text = match acks.next().await {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(frame))) => break format!("sender got close {frame:?}"),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => break format!("sender's connection failed: {e}"),
                    None => break "sender's connection ended".to_owned(),
                };
                let Ok(v) = serde_json::from_str::<Value>(&text) else { continue };
                let Some(seq) = v["id"].as_str().and_then(|id| id.strip_prefix('t')).and_then(|n| n.parse().ok())
                else {
                    continue;
                };
                let answer = match (v["type"].as_str(), v["status"].as_str(), v["code"].as_str()) {
                    (Some("ack"), Some(status), _) => Answer::Ack(status.to_owned()),
                    (Some("error"), _, Some(code)) => Answer::Error(code.to_owned()),
                    _ => continue,
                };
                let mut l = log.lock();
                match l.answers.entry(seq) {
                    Entry::Occupied(_) => l.answered_twice += 1,
                    Entry::Vacant(slot) => {
                        slot.insert((answer, Instant::now()));
                    }
                }
            };
            log.lock().events.push(format!("{:.1?}: {end}", started.elapsed()));
        });

        let log = ledger.clone();
        let sender_id = from.clone();
        let receiving = tokio::spawn(async move {
            let end = loop {
                let text = match inbox.next().await {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(frame))) => break format!("receiver got close {frame:?}"),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => break format!("receiver's connection failed: {e}"),
                    None => break "receiver's connection ended".to_owned(),
                };
                let Ok(v) = serde_json::from_str::<Value>(&text) else { continue };
                if v["type"] != "once" || v["from"] != sender_id.as_str() {
                    continue;
                }
                let Some(seq) = v["content"]["seq"].as_u64() else { continue };
                log.lock().deliveries.entry(seq).or_insert((0, Instant::now())).0 += 1;
            };
            log.lock().events.push(format!("{:.1?}: {end}", started.elapsed()));
        });

        Traffic { started, rate: per_second, from, to, ledger, stop, tasks: vec![sending, answering, receiving] }
    }

    /// Messages sent so far.
    pub fn sent(&self) -> u64 {
        self.ledger.lock().sent_at.len() as u64
    }

    /// Distinct messages delivered so far.
    pub fn delivered(&self) -> u64 {
        self.ledger.lock().deliveries.len() as u64
    }

    /// Distinct messages delivered so far among those sent from `seq` on.
    pub fn delivered_since(&self, seq: u64) -> u64 {
        self.ledger.lock().deliveries.range(seq..).count() as u64
    }

    /// The accounting so far (the traffic keeps running).
    pub fn report(&self) -> Report {
        Report::from_ledger(&self.ledger.lock(), self.started.elapsed(), self.rate, &self.from, &self.to)
    }

    /// Stops sending, then waits up to `drain` until every message is answered and every
    /// one acked `sent` is delivered, and returns the report. Late duplicates after that
    /// point are not seen.
    pub async fn finish(self, drain: Duration) -> Report {
        let _ = self.stop.send(true);
        let deadline = Instant::now() + drain;
        loop {
            let settled = {
                let l = self.ledger.lock();
                let sent = l.sent_at.len() as u64;
                let answered = l.answers.len() as u64 == sent;
                let acked_delivered = l
                    .answers
                    .iter()
                    .all(|(seq, (a, _))| *a != Answer::Ack("sent".into()) || l.deliveries.contains_key(seq));
                answered && acked_delivered
            };
            if settled || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let report = self.report();
        for t in &self.tasks {
            t.abort();
        }
        report
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// What happened to every message of a [`Traffic`] run.
#[derive(Debug, Clone)]
pub struct Report {
    pub from: String,
    pub to: String,
    pub rate: u32,
    pub duration: Duration,
    pub sent: u64,
    /// `ack` answers by status; `sent` and `offline` are the ones the protocol has here.
    pub acks: BTreeMap<String, u64>,
    /// `error` answers by code.
    pub errors: BTreeMap<String, u64>,
    /// Sequence numbers that got no answer at all.
    pub unanswered: Vec<u64>,
    /// Answers beyond the first for one message (the protocol gives each message one).
    pub answered_twice: u64,
    /// Distinct messages delivered.
    pub delivered: u64,
    /// Deliveries beyond the first of a message.
    pub duplicates: u64,
    /// Acked `sent`, never delivered.
    pub lost: Vec<u64>,
    /// Delivered although not acked `sent` (e.g. answered `unavailable`: an ambiguous answer).
    pub delivered_not_acked: Vec<u64>,
    /// Per message (index = seq): time from send to its answer, if answered.
    pub answer_times: Vec<Option<Duration>>,
    /// Slowest time from send to first delivery.
    pub slowest_delivery: Option<Duration>,
    /// Connection ends and failed sends, in order.
    pub events: Vec<String>,
}

impl Report {
    fn from_ledger(l: &Ledger, duration: Duration, rate: u32, from: &str, to: &str) -> Report {
        let sent = l.sent_at.len() as u64;
        let (mut acks, mut errors) = (BTreeMap::new(), BTreeMap::new());
        for (answer, _) in l.answers.values() {
            match answer {
                Answer::Ack(status) => *acks.entry(status.clone()).or_insert(0) += 1,
                Answer::Error(code) => *errors.entry(code.clone()).or_insert(0) += 1,
            }
        }
        let acked_sent = |seq: &u64| matches!(l.answers.get(seq), Some((Answer::Ack(s), _)) if s == "sent");
        let answer_times: Vec<Option<Duration>> = (0..sent)
            .map(|seq| l.answers.get(&seq).map(|(_, at)| at.saturating_duration_since(l.sent_at[seq as usize])))
            .collect();
        Report {
            from: from.to_owned(),
            to: to.to_owned(),
            rate,
            duration,
            sent,
            acks,
            errors,
            unanswered: (0..sent).filter(|seq| !l.answers.contains_key(seq)).collect(),
            answered_twice: l.answered_twice,
            delivered: l.deliveries.len() as u64,
            duplicates: l.deliveries.values().map(|(n, _)| n - 1).sum(),
            lost: (0..sent).filter(|seq| acked_sent(seq) && !l.deliveries.contains_key(seq)).collect(),
            delivered_not_acked: l.deliveries.keys().copied().filter(|seq| !acked_sent(seq)).collect(),
            answer_times,
            slowest_delivery: l
                .deliveries
                .iter()
                .filter_map(|(seq, (_, at))| Some(at.saturating_duration_since(*l.sent_at.get(*seq as usize)?)))
                .max(),
            events: l.events.clone(),
        }
    }

    /// Messages acked with `status`.
    pub fn acked(&self, status: &str) -> u64 {
        self.acks.get(status).copied().unwrap_or(0)
    }

    /// Messages answered with error `code`.
    pub fn errored(&self, code: &str) -> u64 {
        self.errors.get(code).copied().unwrap_or(0)
    }

    /// Sequence numbers whose answer took longer than `bound` (unanswered ones included).
    pub fn answered_later_than(&self, bound: Duration) -> Vec<u64> {
        (0..self.sent).filter(|&seq| self.answer_times[seq as usize].is_none_or(|t| t > bound)).collect()
    }

    /// The `q` quantile (0..=1) of answer times among answered messages.
    pub fn answer_time_quantile(&self, q: f64) -> Option<Duration> {
        let mut times: Vec<Duration> = self.answer_times.iter().flatten().copied().collect();
        times.sort();
        let last = times.len().checked_sub(1)?;
        Some(times[((last as f64) * q.clamp(0.0, 1.0)).round() as usize])
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{:.1} ms", d.as_secs_f64() * 1e3));
        writeln!(f, "traffic {} -> {}: {}/s for {:.1} s", self.from, self.to, self.rate, self.duration.as_secs_f64())?;
        let mut row = |name: &str, value: &dyn fmt::Display| writeln!(f, "  {name:<28} {value:>12}");
        row("sent", &self.sent)?;
        for (status, n) in &self.acks {
            row(&format!("acked {status}"), n)?;
        }
        for (code, n) in &self.errors {
            row(&format!("error {code}"), n)?;
        }
        row("unanswered", &self.unanswered.len())?;
        row("answered twice", &self.answered_twice)?;
        row("delivered", &self.delivered)?;
        row("duplicates delivered", &self.duplicates)?;
        row("acked sent but lost", &self.lost.len())?;
        row("delivered, not acked sent", &self.delivered_not_acked.len())?;
        row("answer time p50", &ms(self.answer_time_quantile(0.5)))?;
        row("answer time p99", &ms(self.answer_time_quantile(0.99)))?;
        row("answer time max", &ms(self.answer_time_quantile(1.0)))?;
        row("slowest delivery", &ms(self.slowest_delivery))?;
        for e in &self.events {
            writeln!(f, "  event: {e}")?;
        }
        Ok(())
    }
}
