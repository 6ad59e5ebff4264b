//! Replays every input of the committed fuzz corpus (`fuzz/corpus/<target>/`) through the
//! same harness the libFuzzer targets run (`fuzz/harness.rs`), on the stable toolchain: an
//! input that once crashed (kept as a corpus file) stays a test.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let res = std::panic::catch_unwind(|| run(&data));
        assert!(res.is_ok(), "{target}: {} fails", path.display());
        n += 1;
    }
    assert!(n > 0, "{target}: an empty corpus");
}

#[test]
fn client_frame_corpus() {
    replay("client_frame", harness::client_frame);
}

#[test]
fn inter_node_batch_corpus() {
    replay("inter_node_batch", harness::inter_node_batch);
}

#[test]
fn ws_frame_header_corpus() {
    replay("ws_frame_header", harness::ws_frame_header);
}

#[test]
fn handshake_corpus() {
    replay("handshake", harness::handshake);
}
