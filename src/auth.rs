//! Handshake checks: allowed origins and JWT identity.
//!
//! Both run before the upgrade and before any presence work, so a refused client costs no
//! backend round trip.

use hyper::HeaderMap;
use hyper::header::{AUTHORIZATION, ORIGIN};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::protocol::is_valid_name;

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
    jwt: Option<(DecodingKey, Validation)>,
    origins: Option<Vec<String>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").field("jwt", &self.jwt.is_some()).field("origins", &self.origins).finish()
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

impl Auth {
    /// `secret`: HS256 key (`None`: anonymous mode). `origins`: allowed `Origin` values
    /// (`None`: all).
    pub fn new(secret: Option<&str>, origins: Option<Vec<String>>) -> Auth {
        let jwt = secret.map(|s| {
            let mut v = Validation::new(Algorithm::HS256);
            v.leeway = 0;
            v.set_required_spec_claims(&["exp", "sub"]);
            (DecodingKey::from_secret(s.as_bytes()), v)
        });
        let origins = origins.map(|o| o.into_iter().map(|s| s.trim_end_matches('/').to_ascii_lowercase()).collect());
        Auth { jwt, origins }
    }

    /// Checks the origin, then the token. `Ok(Some(user))` for a verified token,
    /// `Ok(None)` in anonymous mode.
    pub fn check(&self, headers: &HeaderMap, query: Option<&str>) -> Result<Option<String>, Refusal> {
        if let (Some(allowed), Some(origin)) = (&self.origins, headers.get(ORIGIN)) {
            // Clients that send no Origin (non-browser) are not subject to it.
            let origin = origin.to_str().unwrap_or("").trim_end_matches('/').to_ascii_lowercase();
            if !allowed.iter().any(|a| a == "*" || *a == origin) {
                return Err(Refusal::Forbidden(format!("origin {origin:?} is not allowed")));
            }
        }
        let Some((key, validation)) = &self.jwt else { return Ok(None) };
        let token = bearer(headers)
            .or_else(|| query_param(query?, "token"))
            .ok_or_else(|| Refusal::Unauthorized("a token is required (?token= or Authorization: Bearer)".into()))?;
        let data = jsonwebtoken::decode::<Claims>(token, key, validation)
            .map_err(|e| Refusal::Unauthorized(format!("invalid token: {e}")))?;
        if !is_valid_name(&data.claims.sub) {
            return Err(Refusal::Unauthorized("token `sub` is not a valid user id".into()));
        }
        Ok(Some(data.claims.sub))
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
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

    fn headers(pairs: &[(hyper::header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn anonymous_mode_needs_nothing() {
        assert_eq!(Auth::new(None, None).check(&HeaderMap::new(), None), Ok(None));
    }

    #[test]
    fn tokens_by_query_or_header() {
        let auth = Auth::new(Some("k"), None);
        let t = token("k", "alice", 60);
        assert_eq!(auth.check(&HeaderMap::new(), Some(&format!("x=1&token={t}"))), Ok(Some("alice".into())));
        let h = headers(&[(AUTHORIZATION, &format!("Bearer {t}"))]);
        assert_eq!(auth.check(&h, None), Ok(Some("alice".into())));
    }

    #[test]
    fn bad_tokens_are_unauthorized() {
        let auth = Auth::new(Some("k"), None);
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
