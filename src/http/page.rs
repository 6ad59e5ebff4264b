//! The web chat page served at `GET /`: one self-contained HTML file (CSS and plain
//! JavaScript inline) compiled into the binary, so it works offline and needs no build step.

use bytes::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use super::Body;

/// The page's source, `src/http/index.html`.
pub const INDEX_HTML: &str = include_str!("index.html");

/// `GET /`: the chat page.
pub fn index() -> Response<Body> {
    let mut r = Response::new(Body::new(Bytes::from_static(INDEX_HTML.as_bytes())));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    // The page changes only with the binary; revalidating keeps a rolled-out version from
    // being shadowed by a stale cached copy. It embeds no secrets, so shared caches may keep it.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Defence in depth on top of rendering all untrusted text with `textContent`: no foreign
    // script, style, frame or connection target. `connect-src 'self'` covers ws(s): to the
    // page's own host in current browsers.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    r
}
