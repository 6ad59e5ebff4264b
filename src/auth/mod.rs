//! Handshake checks: allowed origins and JWT identity.
//!
//! Both run before the upgrade and before any presence work, so a refused client costs no
//! backend round trip.
//!
//! | file | concern |
//! |---|---|
//! | `token` | keys, algorithms, claims: a token into a [`Grant`] |
//! | `groups` | the `groups` claim's exact names and `prefix*` patterns |

mod groups;
mod token;

use hyper::HeaderMap;
use hyper::header::{AUTHORIZATION, ORIGIN};

pub use groups::Groups;
pub use token::{Grant, Rules, Verifier};

use crate::config::Config;

/// Why a handshake was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// HTTP 401: token missing, invalid or expired.
    Unauthorized(String),
    /// HTTP 403: origin not allowed.
    Forbidden(String),
}

/// The configured checks.
pub struct Auth {
    tokens: Option<Verifier>,
    origins: Option<Vec<String>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").field("tokens", &self.tokens).field("origins", &self.origins).finish()
    }
}

impl Auth {
    pub fn from_config(c: &Config) -> Auth {
        Auth::new(Verifier::from_config(c), c.allowed_origins.clone())
    }

    /// `tokens`: `None` is anonymous mode. `origins`: allowed `Origin` values (`None`: all).
    pub fn new(tokens: Option<Verifier>, origins: Option<Vec<String>>) -> Auth {
        let origins = origins.map(|o| o.into_iter().map(|s| s.trim_end_matches('/').to_ascii_lowercase()).collect());
        Auth { tokens, origins }
    }

    /// Whether connections present tokens (else they get anonymous ids).
    pub fn tokens_required(&self) -> bool {
        self.tokens.is_some()
    }

    /// Checks the origin, then the token. `Ok(Some(grant))` for a verified token,
    /// `Ok(None)` in anonymous mode.
    pub fn check(&self, headers: &HeaderMap, query: Option<&str>) -> Result<Option<Grant>, Refusal> {
        if let (Some(allowed), Some(origin)) = (&self.origins, headers.get(ORIGIN)) {
            // Clients that send no Origin (non-browser) are not subject to it.
            let origin = origin.to_str().unwrap_or("").trim_end_matches('/').to_ascii_lowercase();
            if !allowed.iter().any(|a| a == "*" || *a == origin) {
                return Err(Refusal::Forbidden(format!("origin {origin:?} is not allowed")));
            }
        }
        let Some(tokens) = &self.tokens else { return Ok(None) };
        let token = bearer(headers)
            .or_else(|| query_param(query?, "token"))
            .ok_or_else(|| Refusal::Unauthorized("a token is required (?token= or Authorization: Bearer)".into()))?;
        tokens.verify(token).map(Some).map_err(Refusal::Unauthorized)
    }

    /// Verifies a token presented on an open connection (`refresh`). `Err` in anonymous mode.
    pub fn verify(&self, token: &str) -> Result<Grant, String> {
        match &self.tokens {
            Some(t) => t.verify(token),
            None => Err("this server assigns anonymous ids and takes no tokens".into()),
        }
    }
}

/// The credentials of an `Authorization: Bearer <credentials>` header (the scheme is
/// case-insensitive, RFC 7235).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credentials) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| credentials.trim())
}

/// The raw value of `name` in a query string (tokens need no decoding: base64url and dots).
fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;
    use jsonwebtoken::{EncodingKey, Header, encode};

    fn token(secret: &str, sub: &str, exp_in: i64) -> String {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        let claims = serde_json::json!({ "sub": sub, "exp": now + exp_in });
        encode(&Header::default(), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
    }

    fn hs256(secret: &str) -> Auth {
        Auth::new(Verifier::new(Some(secret), None, &Rules::default()), None)
    }

    fn user(r: Result<Option<Grant>, Refusal>) -> Option<String> {
        r.ok().flatten().map(|g| g.user)
    }

    fn headers(pairs: &[(hyper::header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn anonymous_mode_needs_nothing() {
        let auth = Auth::new(None, None);
        assert_eq!(auth.check(&HeaderMap::new(), None), Ok(None));
        assert!(!auth.tokens_required());
        assert!(auth.verify(&token("k", "alice", 60)).is_err(), "no tokens to refresh");
    }

    #[test]
    fn tokens_by_query_or_header() {
        let auth = hs256("k");
        let t = token("k", "alice", 60);
        assert_eq!(user(auth.check(&HeaderMap::new(), Some(&format!("x=1&token={t}")))), Some("alice".into()));
        for scheme in ["Bearer", "bearer", "BEARER"] {
            let h = headers(&[(AUTHORIZATION, &format!("{scheme} {t}"))]);
            assert_eq!(user(auth.check(&h, None)), Some("alice".into()), "{scheme}");
        }
        let h = headers(&[(AUTHORIZATION, &format!("Basic {t}"))]);
        assert!(matches!(auth.check(&h, None), Err(Refusal::Unauthorized(_))), "not a bearer token");
    }

    #[test]
    fn bad_tokens_are_unauthorized() {
        let auth = hs256("k");
        for q in [
            None,
            Some("token=garbage".to_owned()),
            Some(format!("token={}", token("other", "alice", 60))),
            Some(format!("token={}", token("k", "alice", -10))),
            Some(format!("token={}", token("k", "has space", 60))),
        ] {
            assert!(matches!(auth.check(&HeaderMap::new(), q.as_deref()), Err(Refusal::Unauthorized(_))), "{q:?}");
        }
    }

    #[test]
    fn origins() {
        let auth = Auth::new(None, Some(vec!["https://chat.example".into()]));
        assert_eq!(auth.check(&headers(&[(ORIGIN, "https://chat.example")]), None), Ok(None));
        assert_eq!(auth.check(&headers(&[(ORIGIN, "https://CHAT.example/")]), None), Ok(None));
        assert!(matches!(auth.check(&headers(&[(ORIGIN, "https://evil.example")]), None), Err(Refusal::Forbidden(_))));
        assert_eq!(auth.check(&HeaderMap::new(), None), Ok(None), "no Origin header: not a browser");
        let any = Auth::new(None, Some(vec!["*".into()]));
        assert_eq!(any.check(&headers(&[(ORIGIN, "https://x")]), None), Ok(None));
    }
}
