//! The echo mode that `examples/echo.rs` and `scripts/autobahn.sh` (Autobahn|Testsuite) test
//! the WebSocket path through: data messages come back as sent, nothing else is said
//! unasked, control frames and the close take the normal path; and it cannot be turned on
//! from outside.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use common::*;

const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xa;

#[tokio::test]
async fn echo_mode_returns_data_messages_and_sends_nothing_unasked() {
    let gw = Gateway::start_with(|c| {
        c.echo = true;
        c.max_message_bytes = 1 << 20;
    })
    .await;
    let mut c = RawClient::connect(gw.addr, "/ws").await;
    let big = vec![0xa5u8; 70_000]; // a 64-bit length header both ways
    c.send_frame(OP_TEXT, "héllo, not JSON".as_bytes()).await;
    c.send_frame(OP_BINARY, &[0, 1, 2, 255]).await;
    c.send_frame(OP_PING, b"p").await;
    c.send_frame(OP_BINARY, &big).await;
    c.send_frame(OP_TEXT, b"").await;
    // No welcome first: the testsuite counts every frame it is sent.
    let f = c.read_frame().await.unwrap();
    assert_eq!((f.opcode, f.payload.as_slice()), (OP_TEXT, "héllo, not JSON".as_bytes()));
    let f = c.read_frame().await.unwrap();
    assert_eq!((f.opcode, f.payload.as_slice()), (OP_BINARY, &[0u8, 1, 2, 255][..]));
    let f = c.read_frame().await.unwrap();
    assert_eq!((f.opcode, f.payload.as_slice()), (OP_PONG, &b"p"[..]));
    let f = c.read_frame().await.unwrap();
    assert_eq!(f.opcode, OP_BINARY);
    assert!(f.payload == big, "70 000 bytes back intact");
    let f = c.read_frame().await.unwrap();
    assert_eq!((f.opcode, f.payload.len()), (OP_TEXT, 0));
    // Invalid UTF-8 is still refused (1007), not echoed.
    c.send_frame(OP_TEXT, &[0xce, 0xba, 0xff]).await;
    assert_eq!(c.close_code().await, 1007);
    assert!(c.read_frame().await.is_none(), "then the server closes TCP");

    let mut c = RawClient::connect(gw.addr, "/ws").await;
    c.send_frame(OP_CLOSE, &1000u16.to_be_bytes()).await;
    assert_eq!(c.close_code().await, 1000, "the close is answered as in production");
    assert!(c.read_frame().await.is_none());
}

#[tokio::test]
async fn echo_mode_is_off_unless_a_program_sets_it() {
    assert!(!chatgate::Config::for_tests().echo);
    assert!(chatgate::Config::from_args(["chatgate", "--echo"]).is_err(), "no flag turns it on");
    let gw = Gateway::start().await;
    let mut c = RawClient::connect(gw.addr, "/ws").await;
    let welcome = c.read_frame().await.unwrap();
    assert!(String::from_utf8(welcome.payload).unwrap().contains(r#""type":"welcome""#));
    c.send_frame(OP_TEXT, b"plain text").await;
    let reply = String::from_utf8(c.read_frame().await.unwrap().payload).unwrap();
    assert!(reply.contains(r#""code":"bad_request""#), "a request, not an echo: {reply}");
}
