//! How the writer should hand a burst of queued frames to the kernel: one `writev` over the
//! shared `Bytes` (what `writer.rs` does: no copy), or one copy into a contiguous buffer and a
//! plain `write`. Measured on a real loopback TCP socket drained by a reader thread, for the
//! burst sizes a writer sees (1 frame at low rates, tens to a hundred under load).
//!
//! `scripts/bench.sh --bench write`

use std::io::{IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

/// A connected pair: the writer end, and a thread that reads everything from the other end.
fn pair() -> TcpStream {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    let writer = TcpStream::connect(addr).expect("connect to the loopback listener");
    let (mut reader, _) = listener.accept().expect("accept the loopback connection");
    thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
    });
    writer.set_nodelay(true).expect("TCP_NODELAY");
    writer
}

fn frames(n: usize, size: usize) -> Vec<Bytes> {
    (0..n).map(|i| Bytes::from(vec![b'a' + (i % 26) as u8; size])).collect()
}

fn write_all_vectored(w: &mut TcpStream, frames: &[Bytes]) {
    let mut iov: Vec<IoSlice<'_>> = frames.iter().map(|f| IoSlice::new(f)).collect();
    let mut slices = &mut iov[..];
    while !slices.is_empty() {
        let n = w.write_vectored(slices).expect("writev to loopback");
        IoSlice::advance_slices(&mut slices, n);
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("writer_flush");
    for (n, size) in [(1usize, 120usize), (8, 120), (64, 120), (128, 120), (32, 2000)] {
        let fs = frames(n, size);
        g.throughput(Throughput::Elements(n as u64));
        let label = format!("{n}x{size}B");
        let mut w = pair();
        g.bench_with_input(BenchmarkId::new("writev_shared_bytes", &label), &fs, |b, fs| {
            b.iter(|| write_all_vectored(&mut w, fs))
        });
        let mut w = pair();
        let mut buf = BytesMut::with_capacity(n * size);
        g.bench_with_input(BenchmarkId::new("copy_then_write", &label), &fs, |b, fs| {
            b.iter(|| {
                buf.clear();
                for f in fs {
                    buf.extend_from_slice(f);
                }
                w.write_all(&buf).expect("write to loopback");
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
