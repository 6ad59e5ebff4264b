//! Client frame parsing: simd-json (reused buffers) against serde_json (borrowed), on the
//! same payloads. The faster one is `protocol::parse`; see benches/README.md.
#![allow(clippy::unwrap_used)]

use chatgate::protocol::{SimdScratch, parse_serde, parse_simd};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

/// Representative client frames: a ~150-byte direct message, a small control frame, a
/// structured 1 KiB message, a 16 KiB message.
pub fn payloads() -> Vec<(&'static str, String)> {
    let once = r#"{"type":"once","to":"4711","id":"c-000123","content":{"text":"hello there, how are you doing today?","ts":1764230400123}}"#.to_owned();
    let ping = r#"{"type":"ping","id":"p1"}"#.to_owned();
    let items: Vec<String> = (0..20).map(|i| format!(r#"{{"k":"key{i}","v":[{i},{i}.5,"s{i}"],"ok":true}}"#)).collect();
    let structured =
        format!(r#"{{"type":"group","to":"room.42","id":"g7","content":{{"items":[{}]}}}}"#, items.join(","));
    let big = format!(r#"{{"type":"group","to":"room.42","id":"g8","content":"{}"}}"#, "lorem ipsum ".repeat(1365));
    vec![("once_150B", once), ("ping", ping), ("structured_1KiB", structured), ("text_16KiB", big)]
}

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    let mut scratch = SimdScratch::default();
    for (name, text) in payloads() {
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_with_input(BenchmarkId::new("serde_json", name), &text, |b, t| {
            b.iter(|| black_box(parse_serde(black_box(t)).is_ok()))
        });
        g.bench_with_input(BenchmarkId::new("simd_json", name), &text, |b, t| {
            b.iter(|| black_box(parse_simd(black_box(t), &mut scratch).is_ok()))
        });
    }
    g.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
