//! Cluster-side pure work: packing and unpacking inter-node batches (one AMQP message per
//! destination node), and building the presence write pipeline.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use chatgate::backend::redis::{Commands, Write};
use chatgate::delivery::Target;
use chatgate::dispatch::batch::{BatchBuf, Origin, decode};

const ORIGIN: Origin<'static> = Origin { node: "node-1", incarnation: 7, seq: 1 };
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn frames(n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n).map(|i| ((1000 + i).to_string(), vec![b'x'; 150])).collect()
}

fn batch(c: &mut Criterion) {
    let mut g = c.benchmark_group("batch");
    for n in [1usize, 64, 512] {
        let fs = frames(n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("encode", n), &fs, |b, fs| {
            b.iter(|| {
                let mut batch = BatchBuf::new(ORIGIN);
                for (user, frame) in fs {
                    batch.push(Target::User(user.as_str()), frame);
                }
                black_box(batch.finish())
            })
        });
        let mut batch = BatchBuf::new(ORIGIN);
        for (user, frame) in &fs {
            batch.push(Target::User(user.as_str()), frame);
        }
        let bytes = batch.finish();
        g.bench_with_input(BenchmarkId::new("decode", n), &bytes, |b, bytes| {
            b.iter(|| {
                let mut total = 0;
                let Ok((_, entries)) = decode(black_box(bytes)) else { return 0 };
                for entry in entries {
                    total += entry.unwrap().1.len();
                }
                black_box(total)
            })
        });
    }
    g.finish();
}

fn presence_pipeline(c: &mut Criterion) {
    let cmds = Commands::new("chatgate", "node-a");
    let users: Vec<String> = (0..256).map(|i| (1000 + i).to_string()).collect();
    let groups: Vec<Box<str>> = vec!["room.1".into(), "room.2".into()];
    let mut g = c.benchmark_group("presence");
    g.throughput(Throughput::Elements(users.len() as u64));
    g.bench_function("pipeline_256_writes", |b| {
        b.iter(|| {
            let writes = users.iter().enumerate().map(|(i, u)| match i % 4 {
                0 => Write::AdjustUser { user: u, delta: 1, anon: true },
                1 => Write::AdjustMember { group: "room.1", user: u, delta: 1 },
                2 => Write::Disconnect { user: u, groups: &groups },
                _ => Write::Allocate,
            });
            // Building and serializing: what the writer pays before the round trip.
            black_box(cmds.pipeline(writes).get_packed_pipeline())
        })
    });
    g.finish();
}

criterion_group!(benches, batch, presence_pipeline);
criterion_main!(benches);
