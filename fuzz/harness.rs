//! What each fuzz target does with its input, shared by the libFuzzer targets
//! (`fuzz/fuzz_targets/*.rs`, `cargo +nightly fuzz run <target>`) and by the replay of the
//! committed corpus in the ordinary test suite (`tests/fuzz_corpus.rs`, stable toolchain).
//! Each function panics only on a real bug: a panic in the code under test, or a property
//! that does not hold.

// Each target uses one of these functions.
#![allow(dead_code)]

use std::io::Cursor;

use bytes::Bytes;
use chatgate::dispatch::batch::{BatchBuf, Origin, decode};
use chatgate::protocol::{SimdScratch, Target, parse_serde, parse_simd, ws};
use hyper::Method;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

/// A client frame: both JSON parsers accept exactly the same frames and agree on them.
pub fn client_frame(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let a = parse_serde(text);
    let b = parse_simd(text, &mut SimdScratch::default());
    match (&a, &b) {
        (Ok(x), Ok(y)) => assert_eq!(x, y, "parsers disagree on {text:?}"),
        (Err(x), Err(y)) => assert_eq!(x.id, y.id, "parsers disagree on the error's id for {text:?}"),
        _ => panic!("parsers disagree on {text:?}: serde={a:?} simd={b:?}"),
    }
}

/// Bytes from the broker: decoding never panics, and what decodes encodes back to a batch
/// that decodes to the same entries.
pub fn inter_node_batch(data: &[u8]) {
    let batch = Bytes::copy_from_slice(data);
    let Ok((origin, entries)) = decode(&batch) else { return };
    let entries: Vec<(Target<&str>, Bytes)> = entries.map_while(Result::ok).collect();
    let origin = origin.unwrap_or(Origin { node: "n", incarnation: 0, seq: 0 });
    let mut again = BatchBuf::new(origin);
    for (to, frame) in &entries {
        again.push(*to, frame);
    }
    let again = again.finish();
    let (origin2, entries2) = decode(&again).expect("a batch we encoded decodes");
    assert_eq!(origin2, Some(origin));
    let entries2: Vec<(Target<&str>, Bytes)> = entries2.map(|e| e.expect("a batch we encoded decodes")).collect();
    assert_eq!(entries, entries2);
}

/// The server's frame header: what `ws::frame` writes, tungstenite reads back as the same
/// final frame, opcode and length; and tungstenite's header parser survives any bytes.
pub fn ws_frame_header(data: &[u8]) {
    let _ = FrameHeader::parse(&mut Cursor::new(data));
    let Some((&sel, rest)) = data.split_first() else { return };
    let opcode = [ws::OP_TEXT, ws::OP_BINARY, ws::OP_CLOSE, ws::OP_PING][usize::from(sel & 3)];
    // Lengths across the 7-bit, 16-bit and 64-bit encodings; control frames stay small.
    let len = match (sel >> 2) & 3 {
        0 => rest.len().min(125),
        1 => 126 + rest.len() * 7 % 65_410,
        2 => 65_536 + rest.len() % 4096,
        _ => rest.len(),
    };
    let len = if opcode >= ws::OP_CLOSE { len.min(125) } else { len };
    let payload: Vec<u8> = rest.iter().copied().cycle().take(len).chain(std::iter::repeat(0)).take(len).collect();
    let frame = ws::frame(opcode, &payload);
    let mut cursor = Cursor::new(&frame[..]);
    let (header, size) = FrameHeader::parse(&mut cursor).expect("a header we wrote parses").expect("complete");
    assert!(header.is_final);
    assert!(header.mask.is_none(), "server frames are unmasked");
    assert_eq!(u8::from(header.opcode), opcode);
    assert_eq!(size, len as u64);
    assert_eq!(&frame[cursor.position() as usize..], &payload[..]);
}

/// An upgrade request's method and headers (`Name: value` lines after a method line): the
/// checks never panic, and an accepted handshake has a 16-byte base64 key.
pub fn handshake(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let method = lines.next().and_then(|m| Method::from_bytes(m.trim().as_bytes()).ok()).unwrap_or(Method::GET);
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name.trim().as_bytes()), HeaderValue::from_bytes(value.trim().as_bytes()))
        else {
            continue;
        };
        headers.append(name, value);
    }
    if let Ok(accept) = chatgate::http::check_handshake(&method, &headers) {
        let key = headers.get("sec-websocket-key").expect("accepted with a key");
        assert_eq!(key.len(), 24, "accepted key {key:?}");
        assert_eq!(accept.len(), 28);
    }
}
