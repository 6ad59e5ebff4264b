//! The hot routing path on one node: parse + route + encode of a direct message, and
//! group fan-out to 10 / 1,000 / 10,000 local members (frame encoded once, `Bytes` cloned
//! into each outbox). Outboxes are drained outside the timed sections, as the writer tasks
//! would.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chatgate::delivery::Target;
use chatgate::hub::{Conn, Hub};
use chatgate::outbox::Outbox;
use chatgate::protocol::encode::{self, MessageKind};
use chatgate::protocol::{AckStatus, MessageId, Request, parse};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

/// A ~150-byte `once` frame, as a client sends it.
const ONCE: &str = r#"{"type":"once","to":"4711","id":"c-000123","content":{"text":"hello there, how are you doing today?","ts":1764230400123}}"#;

fn conn(id: u64, user: &str) -> Arc<Conn> {
    Arc::new(Conn::new(id, user.into(), Outbox::new(1 << 20, 1 << 30)))
}

/// Times `work` in runs of `chunk`, calling `drain` (untimed) between runs.
fn timed(iters: u64, chunk: u64, mut work: impl FnMut(), mut drain: impl FnMut()) -> Duration {
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let n = (iters - done).min(chunk);
        let start = Instant::now();
        for _ in 0..n {
            work();
        }
        total += start.elapsed();
        drain();
        done += n;
    }
    total
}

fn route_once(c: &mut Criterion) {
    let hub = Hub::new(8);
    // 10,000 users on the node; the recipient is one of them.
    let conns: Vec<Arc<Conn>> = (1..=10_000).map(|i| conn(i, &i.to_string())).collect();
    for c in &conns {
        hub.add_user(c);
    }
    let sender = conns[0].clone();
    let recipient = conns[4710].clone();
    let mut spare = VecDeque::new();
    let mut g = c.benchmark_group("route");
    g.throughput(Throughput::Elements(1));
    let mut seq = 0u64;
    g.bench_function("parse_route_encode_once_150B", |b| {
        b.iter_custom(|iters| {
            timed(
                iters,
                512,
                || {
                    let frame = parse(black_box(ONCE)).unwrap();
                    let Request::Once { to, content } = frame.request else { unreachable!() };
                    seq += 1;
                    let mid = MessageId { incarnation: 7, conn: sender.id, seq };
                    let msg = encode::message(MessageKind::Once, &sender.user, &to, content, &mid, 1_764_230_400_123);
                    let status = if hub.deliver(Target::User(&to), &msg, None) > 0 {
                        AckStatus::Sent
                    } else {
                        AckStatus::Offline
                    };
                    let _ = sender.outbox.push(encode::ack(frame.id, &mid, status));
                },
                || {
                    spare.clear();
                    recipient.outbox.take(&mut spare);
                    spare.clear();
                    sender.outbox.take(&mut spare);
                },
            )
        })
    });
    g.finish();
}

fn fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout");
    for members in [10usize, 1_000, 10_000] {
        let hub = Hub::new(8);
        let conns: Vec<Arc<Conn>> = (1..=members as u64).map(|i| conn(i, &i.to_string())).collect();
        for c in &conns {
            hub.add_user(c);
            hub.join("room", c);
        }
        let content = r#"{"text":"hello everyone in the room, this is a typical chat line","n":42}"#;
        let mut spare = VecDeque::new();
        let mut seq = 0u64;
        g.throughput(Throughput::Elements(members as u64));
        g.bench_with_input(BenchmarkId::new("encode_once_deliver", members), &members, |b, _| {
            b.iter_custom(|iters| {
                timed(
                    iters,
                    (2_000_000 / members as u64).max(1),
                    || {
                        seq += 1;
                        let mid = MessageId { incarnation: 7, conn: 1, seq };
                        let frame = encode::message(MessageKind::Group, "1", "room", content, &mid, 1_764_230_400_123);
                        black_box(hub.deliver(Target::Group("room"), &frame, Some(1)));
                    },
                    || {
                        for c in &conns {
                            spare.clear();
                            c.outbox.take(&mut spare);
                        }
                    },
                )
            })
        });
    }
    g.finish();
}

/// The per-recipient step alone: one refcount increment and one queue push.
fn outbox_push(c: &mut Criterion) {
    let o = Outbox::new(1 << 20, 1 << 30);
    let frame = Bytes::from_static(&[0u8; 150]);
    let mut spare = VecDeque::new();
    let mut g = c.benchmark_group("outbox");
    g.throughput(Throughput::Elements(1));
    g.bench_function("push", |b| {
        b.iter_custom(|iters| {
            timed(
                iters,
                4096,
                || {
                    let _ = o.push(black_box(frame.clone()));
                },
                || {
                    spare.clear();
                    o.take(&mut spare);
                },
            )
        })
    });
    g.finish();
}

criterion_group!(benches, route_once, fanout, outbox_push);
criterion_main!(benches);
