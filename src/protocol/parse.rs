//! Client frame parsing.
//!
//! Two front ends find the raw JSON text of each top-level field; one shared back end
//! ([`classify`]) validates them into a [`ClientFrame`]:
//!
//! * [`parse_serde`]: serde_json with every field borrowed as `&RawValue`;
//! * [`parse_simd`]: simd-json validates the document into a reused tape, and its stage-1
//!   structural index (also reused) locates each top-level value in the original text.
//!
//! Both keep `content` and `id` as borrowed slices of the input, so forwarding is
//! byte-for-byte and allocation-free. `benches/parse.rs` compares them on the same
//! payloads; [`parse`] is whichever measured faster (see `benches/README.md`).

use std::borrow::Cow;
use std::cell::RefCell;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{ClientFrame, MAX_DEPTH, Request, is_valid_name};

/// Why a client frame was rejected (always the `bad_request` code). `id` is echoed when it
/// could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError<'a> {
    pub id: Option<&'a str>,
    pub message: Cow<'static, str>,
}

impl<'a> ParseError<'a> {
    fn new(id: Option<&'a str>, message: impl Into<Cow<'static, str>>) -> Self {
        ParseError { id, message: message.into() }
    }
}

/// Raw JSON text of the top-level fields the contract knows; others are ignored.
#[derive(Debug, Default, Clone, Copy)]
struct RawFields<'a> {
    ty: Option<&'a str>,
    id: Option<&'a str>,
    to: Option<&'a str>,
    group: Option<&'a str>,
    content: Option<&'a str>,
    token: Option<&'a str>,
}

impl<'a> RawFields<'a> {
    /// Records `value` under `key`; `Err` on a duplicate known field.
    fn set(&mut self, key: &str, value: &'a str) -> Result<(), &'static str> {
        let slot = match key {
            "type" => &mut self.ty,
            "id" => &mut self.id,
            "to" => &mut self.to,
            "group" => &mut self.group,
            "content" => &mut self.content,
            "token" => &mut self.token,
            _ => return Ok(()),
        };
        if slot.is_some() {
            return Err("duplicate field");
        }
        *slot = Some(value);
        Ok(())
    }
}

/// The parser used on the connection path. serde_json measured faster on chat-sized
/// frames (see `benches/README.md`); [`parse_simd`] stays for comparison and large frames.
pub fn parse(text: &str) -> Result<ClientFrame<'_>, ParseError<'_>> {
    parse_serde(text)
}

/// Parses with serde_json, borrowing every field as raw JSON text.
pub fn parse_serde(text: &str) -> Result<ClientFrame<'_>, ParseError<'_>> {
    #[derive(Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow, rename = "type", default, deserialize_with = "present")]
        ty: Option<&'a RawValue>,
        #[serde(borrow, default, deserialize_with = "present")]
        id: Option<&'a RawValue>,
        #[serde(borrow, default, deserialize_with = "present")]
        to: Option<&'a RawValue>,
        #[serde(borrow, default, deserialize_with = "present")]
        group: Option<&'a RawValue>,
        #[serde(borrow, default, deserialize_with = "present")]
        content: Option<&'a RawValue>,
        #[serde(borrow, default, deserialize_with = "present")]
        token: Option<&'a RawValue>,
    }

    // `Option<&RawValue>` would read `null` as absent; `content: null` is a valid message.
    fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
        <&RawValue>::deserialize(d).map(Some)
    }

    // serde would also accept a JSON array for a struct; the contract wants an object.
    if text.trim_start().as_bytes().first() != Some(&b'{') {
        return Err(ParseError::new(None, "frame must be a JSON object"));
    }
    let env: Envelope<'_> =
        serde_json::from_str(text).map_err(|e| ParseError::new(None, format!("invalid JSON: {e}")))?;
    classify(RawFields {
        ty: env.ty.map(RawValue::get),
        id: env.id.map(RawValue::get),
        to: env.to.map(RawValue::get),
        group: env.group.map(RawValue::get),
        content: env.content.map(RawValue::get),
        token: env.token.map(RawValue::get),
    })
}

/// Reusable buffers for [`parse_simd`]: the padded input copy, simd-json's stage buffers
/// and the tape. Kept per worker thread (see [`parse_simd_local`]) rather than per
/// connection, so idle connections hold none of it.
pub struct SimdScratch {
    input: Vec<u8>,
    buffers: simd_json::Buffers,
    tape: Option<simd_json::Tape<'static>>,
}

impl Default for SimdScratch {
    fn default() -> Self {
        SimdScratch {
            input: Vec::new(),
            buffers: simd_json::Buffers::new(1024),
            tape: Some(simd_json::Tape::null().reset()),
        }
    }
}

impl std::fmt::Debug for SimdScratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimdScratch").field("input_capacity", &self.input.capacity()).finish()
    }
}

/// [`parse_simd`] with this thread's scratch buffers.
pub fn parse_simd_local(text: &str) -> Result<ClientFrame<'_>, ParseError<'_>> {
    thread_local! {
        static SCRATCH: RefCell<SimdScratch> = RefCell::new(SimdScratch::default());
    }
    SCRATCH.with(|s| parse_simd(text, &mut s.borrow_mut()))
}

/// Parses with simd-json, reusing `scratch`.
pub fn parse_simd<'a>(text: &'a str, scratch: &mut SimdScratch) -> Result<ClientFrame<'a>, ParseError<'a>> {
    let len = text.len();
    scratch.input.clear();
    scratch.input.extend_from_slice(text.as_bytes());
    scratch.input.resize(len + simd_json::INPUT_PADDING, 0);
    let mut tape = scratch.tape.take().unwrap_or_else(simd_json::Tape::null).reset();
    let res = simd_json::fill_tape_padded(&mut scratch.input, len, &mut scratch.buffers, &mut tape);
    scratch.tape = Some(tape.reset());
    if let Err(e) = res {
        use simd_json::ErrorType as E;
        // simd-json refuses numbers it cannot represent (400-digit integers, 1e400) and
        // lone surrogate escapes; both are valid JSON to forward untouched.
        if matches!(e.error(), E::InvalidNumber | E::InvalidExponent | E::InvalidUnicodeCodepoint) {
            return parse_serde(text);
        }
        return Err(ParseError::new(None, format!("invalid JSON: {e}")));
    }
    let fields = top_level_fields(text, scratch.buffers.structural_indexes())?;
    classify(fields)
}

/// Walks simd-json's structural index of a validated document and returns the raw text of
/// each top-level field's value. Structural positions exclude anything inside strings, so
/// bracket depth tracking over them is exact.
fn top_level_fields<'a>(text: &'a str, idx: &[u32]) -> Result<RawFields<'a>, ParseError<'a>> {
    let b = text.as_bytes();
    let at = |i: usize| -> u8 { idx.get(i).and_then(|&p| b.get(p as usize)).copied().unwrap_or(0) };
    let pos = |i: usize| idx.get(i).map_or(b.len(), |&p| p as usize);
    if at(0) != b'{' {
        return Err(ParseError::new(None, "frame must be a JSON object"));
    }
    let mut fields = RawFields::default();
    let mut i = 1;
    if at(i) == b'}' {
        return Ok(fields);
    }
    loop {
        // key string, ':', value start, then the ',' or '}' that ends the value at depth 0.
        let raw_key = text[pos(i)..pos(i + 1)].trim_end();
        let start = pos(i + 2);
        let mut j = i + 2;
        let mut depth = 0usize;
        let end = loop {
            match at(j) {
                b'{' | b'[' => depth += 1,
                b'}' | b']' if depth == 0 => break j,
                b'}' | b']' => depth -= 1,
                b',' if depth == 0 => break j,
                0 => return Err(ParseError::new(None, "invalid JSON: truncated")),
                _ => {}
            }
            j += 1;
        };
        let value = text[start..pos(end)].trim_end();
        let key = decode_str(raw_key).map_err(|_| ParseError::new(None, "invalid JSON key"))?;
        fields.set(&key, value).map_err(|m| ParseError::new(None, m))?;
        if at(end) == b'}' {
            return Ok(fields);
        }
        i = end + 1;
    }
}

/// Decodes a raw JSON string token. Borrowed unless it contains escapes.
fn decode_str(raw: &str) -> Result<Cow<'_, str>, ()> {
    let inner = raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')).ok_or(())?;
    if !inner.contains('\\') {
        return Ok(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(raw).map(Cow::Owned).map_err(|_| ())
}

/// Validates raw top-level fields into a frame: the shared back end of both parsers.
fn classify(f: RawFields<'_>) -> Result<ClientFrame<'_>, ParseError<'_>> {
    let id = match f.id {
        None | Some("null") => None,
        Some(raw) if raw.starts_with('"') => Some(raw),
        Some(_) => return Err(ParseError::new(None, "field `id` must be a string")),
    };
    let err = |m: &'static str| ParseError::new(id, m);
    let ty = f.ty.ok_or_else(|| err("missing field `type`"))?;
    let ty = decode_str(ty).map_err(|_| err("field `type` must be a string"))?;
    let name = |raw, field| name_field(raw, field, id);
    let content = || match f.content {
        None => Err(err("missing field `content`")),
        Some(c) if !depth_within(c, MAX_DEPTH) => Err(err("`content` is nested too deeply")),
        Some(c) => Ok(c),
    };
    let request = match &*ty {
        "once" => Request::Once { to: name(f.to, "to")?, content: content()? },
        "group" => Request::Group { to: name(f.to, "to")?, content: content()? },
        "join" => Request::Join { group: name(f.group, "group")? },
        "leave" => Request::Leave { group: name(f.group, "group")? },
        "members" => Request::Members { group: name(f.group, "group")? },
        "online" => Request::Online,
        "ping" => Request::Ping,
        "refresh" => Request::Refresh { token: token_field(f.token, id)? },
        _ => return Err(err("unknown frame type")),
    };
    Ok(ClientFrame { id, request })
}

/// `true` if the JSON text `raw` nests arrays/objects at most `max` deep.
fn depth_within(raw: &str, max: usize) -> bool {
    // Fast path: fewer opening brackets than the limit (usual for chat) cannot exceed it.
    if raw.bytes().filter(|&b| b == b'[' || b == b'{').count() <= max {
        return true;
    }
    let (mut depth, mut in_str, mut esc) = (0usize, false, false);
    for b in raw.bytes() {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

fn name_field<'a>(
    raw: Option<&'a str>,
    field: &'static str,
    id: Option<&'a str>,
) -> Result<Cow<'a, str>, ParseError<'a>> {
    let raw = raw.ok_or_else(|| ParseError::new(id, missing(field)))?;
    let s = decode_str(raw).map_err(|_| ParseError::new(id, not_string(field)))?;
    if is_valid_name(&s) { Ok(s) } else { Err(ParseError::new(id, invalid_name(field))) }
}

/// A `refresh` frame's token: a non-empty string (verifying it is the session's job).
fn token_field<'a>(raw: Option<&'a str>, id: Option<&'a str>) -> Result<Cow<'a, str>, ParseError<'a>> {
    let raw = raw.ok_or_else(|| ParseError::new(id, "missing field `token`"))?;
    match decode_str(raw) {
        Ok(t) if !t.is_empty() => Ok(t),
        Ok(_) => Err(ParseError::new(id, "field `token` must not be empty")),
        Err(()) => Err(ParseError::new(id, "field `token` must be a string")),
    }
}

fn missing(field: &str) -> &'static str {
    match field {
        "to" => "missing field `to`",
        _ => "missing field `group`",
    }
}

fn not_string(field: &str) -> &'static str {
    match field {
        "to" => "field `to` must be a string",
        _ => "field `group` must be a string",
    }
}

fn invalid_name(field: &str) -> &'static str {
    match field {
        "to" => "field `to` must be 1-128 characters of A-Z a-z 0-9 _ . : @ -",
        _ => "field `group` must be 1-128 characters of A-Z a-z 0-9 _ . : @ -",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs both parsers and insists they agree, then returns the result.
    fn both(text: &str) -> Result<ClientFrame<'_>, ParseError<'_>> {
        let a = parse_serde(text);
        let mut scratch = SimdScratch::default();
        let b = parse_simd(text, &mut scratch);
        match (&a, &b) {
            (Ok(x), Ok(y)) => assert_eq!(x, y, "parsers disagree on {text:?}"),
            (Err(x), Err(y)) => assert_eq!(x.id, y.id, "parsers disagree on error id for {text:?}"),
            _ => panic!("parsers disagree on {text:?}: serde={a:?} simd={b:?}"),
        }
        a
    }

    fn req(text: &str) -> Request<'_> {
        both(text).expect("valid frame").request
    }

    fn bad(text: &str) -> ParseError<'_> {
        both(text).expect_err("invalid frame")
    }

    #[test]
    fn every_frame_type() {
        assert_eq!(
            req(r#"{"type":"once","to":"42","content":"hi"}"#),
            Request::Once { to: "42".into(), content: r#""hi""# }
        );
        assert_eq!(
            req(r#"{"type":"group","to":"room1","content":{"a":[1,2]}}"#),
            Request::Group { to: "room1".into(), content: r#"{"a":[1,2]}"# }
        );
        assert_eq!(req(r#"{"type":"join","group":"g"}"#), Request::Join { group: "g".into() });
        assert_eq!(req(r#"{"type":"leave","group":"g"}"#), Request::Leave { group: "g".into() });
        assert_eq!(req(r#"{"type":"members","group":"g"}"#), Request::Members { group: "g".into() });
        assert_eq!(req(r#"{"type":"online"}"#), Request::Online);
        assert_eq!(req(r#"{"type":"ping"}"#), Request::Ping);
        assert_eq!(req(r#"{"type":"refresh","token":"a.b.c"}"#), Request::Refresh { token: "a.b.c".into() });
    }

    #[test]
    fn refresh_needs_a_token_string() {
        for (text, needle) in [
            (r#"{"type":"refresh","id":"a"}"#, "missing field `token`"),
            (r#"{"type":"refresh","id":"a","token":7}"#, "must be a string"),
            (r#"{"type":"refresh","id":"a","token":null}"#, "must be a string"),
            (r#"{"type":"refresh","id":"a","token":""}"#, "must not be empty"),
        ] {
            let e = bad(text);
            assert_eq!(e.id, Some("\"a\""), "{text}");
            assert!(e.message.contains(needle), "{text}: {}", e.message);
        }
        bad(r#"{"type":"refresh","token":"a","token":"b"}"#);
    }

    #[test]
    fn id_is_echoed_raw() {
        let f = both(r#"{"type":"ping","id":"c\"7"}"#).unwrap();
        assert_eq!(f.id, Some(r#""c\"7""#));
        assert_eq!(both(r#"{"type":"ping","id":null}"#).unwrap().id, None);
        let e = bad(r#"{"type":"ping","id":7}"#);
        assert_eq!(e.id, None);
        assert!(e.message.contains("id"));
    }

    #[test]
    fn content_is_byte_for_byte() {
        let text =
            "{ \"type\" : \"once\" , \"to\":\"1\", \"content\" : {\"x\": 1.50e3 , \"y\":\"\\u00e9 }\"} , \"z\":1}";
        match req(text) {
            Request::Once { content, .. } => assert_eq!(content, "{\"x\": 1.50e3 , \"y\":\"\\u00e9 }\"}"),
            other => panic!("{other:?}"),
        }
        for content in ["null", "0", "-1.5e-300", "true", "[]", "{}", "\"\"", "[[[]]]"] {
            let text = format!(r#"{{"type":"group","to":"g","content":{content}}}"#);
            match req(&text) {
                Request::Group { content: c, .. } => assert_eq!(c, content),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn huge_numbers_are_forwarded_untouched() {
        let big = "9".repeat(400);
        let text = format!(r#"{{"type":"once","to":"1","content":{big}}}"#);
        match req(&text) {
            Request::Once { content, .. } => assert_eq!(content, big),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn escaped_names_are_decoded() {
        assert_eq!(req(r#"{"type":"join","group":"r\u006fom"}"#), Request::Join { group: "room".into() });
        assert_eq!(req(r#"{"\u0074ype":"ping"}"#), Request::Ping);
    }

    #[test]
    fn malformed_input() {
        for text in [
            "",
            "not json",
            "{",
            r#"{"type":"once","to":"1","content":"#,
            r#"{"type":"once","to":"1","content":"x"#,
            r#"{"type":"once","to":"1","content":{"a":1}"#,
            r#"{"type":"ping"} trailing"#,
            r#"["ping"]"#,
            "42",
            "\"ping\"",
            "null",
        ] {
            let e = bad(text);
            assert!(!e.message.is_empty(), "{text:?}");
        }
    }

    #[test]
    fn wrong_types_and_missing_fields_keep_the_id() {
        for (text, needle) in [
            (r#"{"id":"a"}"#, "type"),
            (r#"{"type":7,"id":"a"}"#, "type"),
            (r#"{"type":"nope","id":"a"}"#, "unknown"),
            (r#"{"type":"once","id":"a","content":1}"#, "to"),
            (r#"{"type":"once","id":"a","to":42,"content":1}"#, "to"),
            (r#"{"type":"once","id":"a","to":"42"}"#, "content"),
            (r#"{"type":"group","id":"a","to":["g"],"content":1}"#, "to"),
            (r#"{"type":"join","id":"a"}"#, "group"),
            (r#"{"type":"join","id":"a","group":null}"#, "group"),
            (r#"{"type":"members","id":"a","group":{}}"#, "group"),
        ] {
            let e = bad(text);
            assert_eq!(e.id, Some("\"a\""), "{text}");
            assert!(e.message.contains(needle), "{text}: {}", e.message);
        }
    }

    #[test]
    fn invalid_names() {
        for name in ["", "a b", "a/b", "é", &"x".repeat(129)] {
            let text = format!(r#"{{"type":"join","group":"{name}","id":"i"}}"#);
            let e = bad(&text);
            assert!(e.message.contains("1-128"), "{name}: {}", e.message);
        }
        let text = format!(r#"{{"type":"once","to":"{}","content":1}}"#, "x".repeat(128));
        assert!(matches!(req(&text), Request::Once { .. }));
    }

    #[test]
    fn duplicate_fields_are_rejected() {
        bad(r#"{"type":"once","to":"1","to":"2","content":1}"#);
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let text = format!(r#"{{"type":"once","to":"1","content":{deep}}}"#);
        bad(&text);
        let deep = "{\"a\":".repeat(50_000) + "1" + &"}".repeat(50_000);
        let text = format!(r#"{{"type":"once","to":"1","content":{deep}}}"#);
        bad(&text);
    }

    #[test]
    fn nesting_up_to_the_limit_is_fine() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(matches!(req(&format!(r#"{{"type":"once","to":"1","content":{ok}}}"#)), Request::Once { .. }));
        let over = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        let text = format!(r#"{{"type":"once","to":"1","content":{over},"id":"d"}}"#);
        let e = bad(&text);
        assert_eq!(e.id, Some("\"d\""));
        // Brackets inside strings do not count.
        let s = format!("\"{}\"", "[".repeat(1000));
        assert!(matches!(req(&format!(r#"{{"type":"once","to":"1","content":{s}}}"#)), Request::Once { .. }));
        assert!(depth_within(r#"[["\"[[[["]]"#, 2));
    }

    #[test]
    fn unknown_fields_are_ignored() {
        assert_eq!(req(r#"{"type":"ping","extra":{"deep":[1,{"x":"}"}]},"more":null}"#), Request::Ping);
    }

    #[test]
    fn scratch_is_reused_across_inputs() {
        let mut scratch = SimdScratch::default();
        let long = format!(r#"{{"type":"once","to":"1","content":"{}"}}"#, "x".repeat(10_000));
        assert!(parse_simd(&long, &mut scratch).is_ok());
        assert!(parse_simd(r#"{"type":"ping"}"#, &mut scratch).is_ok());
        assert!(parse_simd("{", &mut scratch).is_err());
        assert_eq!(parse_simd(r#"{"type":"online","id":"x"}"#, &mut scratch).unwrap().id, Some("\"x\""));
        assert!(parse_simd_local(r#"{"type":"ping"}"#).is_ok());
    }

    #[test]
    fn pseudo_random_inputs_never_panic_and_parsers_agree() {
        // Mutations of valid frames: truncation, byte flips, insertions of structural bytes.
        let seeds = [
            r#"{"type":"once","to":"42","content":{"t":[1,2,{"u":"v"}],"s":"a\"b"},"id":"c1"}"#,
            r#"{"type":"group","to":"room1","content":"hello","id":"c2"}"#,
            r#"{"type":"members","group":"g","id":"x"}"#,
        ];
        let alphabet = b"{}[]:,\"\\ 0aen-.";
        let mut rng = fastrand::Rng::with_seed(7);
        for seed in seeds {
            for _ in 0..3000 {
                let mut bytes = seed.as_bytes().to_vec();
                match rng.u8(0..3) {
                    0 => bytes.truncate(rng.usize(0..bytes.len())),
                    1 => {
                        let i = rng.usize(0..bytes.len());
                        bytes[i] = alphabet[rng.usize(0..alphabet.len())];
                    }
                    _ => {
                        let i = rng.usize(0..=bytes.len());
                        bytes.insert(i, alphabet[rng.usize(0..alphabet.len())]);
                    }
                }
                if let Ok(text) = std::str::from_utf8(&bytes) {
                    let _ = both(text);
                }
            }
        }
    }
}
