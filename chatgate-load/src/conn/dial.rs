//! Opening one connection: TCP connect (bound to the source address if any), TLS for
//! wss://, the WebSocket upgrade (with `?token=` when `--token-secret` is set) and the `welcome`.

use std::rc::Rc;

use futures_util::StreamExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::ctx::Ctx;
use crate::scenario::ConnSpec;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connects `spec` within `--connect-timeout`; returns the stream and the user id the
/// server assigned, and records the handshake time.
pub async fn connect(ctx: &Ctx, spec: &ConnSpec) -> Result<(Ws, Rc<str>), String> {
    let clock = *ctx.timer.clock();
    let t0 = clock.now_ns();
    let target = &ctx.dial.targets[spec.url];
    let attempt = async {
        let sock = if target.addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }
            .map_err(|e| format!("socket: {e}"))?;
        if let Some(src) = spec.src {
            sock.set_reuseaddr(true).map_err(|e| format!("SO_REUSEADDR: {e}"))?;
            sock.bind(std::net::SocketAddr::new(src, 0)).map_err(|e| format!("bind {src}: {e}"))?;
        }
        sock.set_nodelay(true).map_err(|e| format!("TCP_NODELAY: {e}"))?;
        let stream = sock.connect(target.addr).await.map_err(|e| format!("connect {}: {e}", target.addr))?;
        let url = request_url(ctx, spec.url, spec.index)?;
        // ws:// URLs stay plain; wss:// ones make the TLS handshake first (timed with the rest).
        let tls = ctx.dial.tls.clone();
        let (mut ws, _) = tokio_tungstenite::client_async_tls_with_config(url, stream, Some(ctx.dial.ws_config), tls)
            .await
            .map_err(|e| handshake_error(&e))?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return welcome(t.as_bytes()).map(|user| (ws, user)),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(f))) => {
                    return Err(match f {
                        Some(f) => format!("closed before welcome: {} {}", u16::from(f.code), f.reason),
                        None => "closed before welcome".into(),
                    });
                }
                Some(Ok(_)) => return Err("first frame is not a text frame".into()),
                Some(Err(e)) => return Err(format!("before welcome: {e}")),
                None => return Err("closed before welcome".into()),
            }
        }
    };
    let out = tokio::time::timeout(ctx.args.connect_timeout, attempt)
        .await
        .map_err(|_| format!("no welcome within {:?}", ctx.args.connect_timeout))??;
    let us = (clock.now_ns() - t0) / 1000;
    crate::stats::record(&mut ctx.stats.borrow_mut().connect, us);
    Ok(out)
}

/// The URL to request for connection `index` to URL number `url` (with `?token=` when a
/// secret is set).
fn request_url(ctx: &Ctx, url: usize, index: usize) -> Result<String, String> {
    let base = &ctx.dial.targets[url].url;
    let Some(secret) = &ctx.args.token_secret else { return Ok(base.clone()) };
    let token = jwt(secret, &format!("load-{index}"))?;
    let sep = if base.contains('?') { '&' } else { '?' };
    Ok(format!("{base}{sep}token={token}"))
}

/// An HS256 token for `sub`, valid for a day.
fn jwt(secret: &str, sub: &str) -> Result<String, String> {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        iat: u64,
        exp: u64,
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let claims = Claims { sub, iat: now, exp: now + 86_400 };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| format!("cannot make a token: {e}"))
}

/// Describes a failed upgrade (HTTP status and body when the server refused).
fn handshake_error(e: &WsError) -> String {
    match e {
        WsError::Http(resp) => {
            let body = resp.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
            let body: String = body.chars().take(120).collect();
            format!("upgrade refused: HTTP {} {body}", resp.status())
        }
        other => format!("upgrade: {other}"),
    }
}

/// The user id from a `welcome` frame.
fn welcome(b: &[u8]) -> Result<Rc<str>, String> {
    #[derive(serde::Deserialize)]
    struct Welcome {
        #[serde(rename = "type")]
        ty: String,
        user: Option<String>,
    }
    let snippet = || String::from_utf8_lossy(&b[..b.len().min(120)]).into_owned();
    let w: Welcome = serde_json::from_slice(b).map_err(|_| format!("first frame is not JSON: {}", snippet()))?;
    match (w.ty.as_str(), w.user) {
        ("welcome", Some(u)) => Ok(u.into()),
        _ => Err(format!("first frame is not a welcome: {}", snippet())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn welcome_parsing() {
        assert_eq!(&*welcome(br#"{"type":"welcome","user":"17","node":"n0"}"#).unwrap(), "17");
        assert!(welcome(br#"{"type":"error","code":"x"}"#).is_err());
        assert!(welcome(b"nope").is_err());
    }

    #[test]
    fn tokens_are_hs256_for_the_subject() {
        let t = jwt("s3cret", "load-7").unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.required_spec_claims.clear();
        let data =
            jsonwebtoken::decode::<serde_json::Value>(&t, &jsonwebtoken::DecodingKey::from_secret(b"s3cret"), &v)
                .unwrap();
        assert_eq!(data.claims["sub"], "load-7");
        assert!(data.claims["exp"].as_u64() > data.claims["iat"].as_u64());
    }
}
