//! JWT verification: the keys, the algorithm each one verifies, and the claims a token must
//! carry. `jsonwebtoken` checks the signature and the registered claims.
//!
//! Each configured key verifies exactly one algorithm: the secret HS256, the public key
//! RS256 (RSA) or ES256 (P-256). A token's header `alg` picks the key; an `alg` no configured
//! key verifies is refused before any signature check. That is what defeats algorithm
//! confusion: an HS256 token "signed" with the public key as its HMAC secret is checked, if at
//! all, against the configured secret, never against the public key.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::groups::Groups;
use crate::config::{Config, PublicKey};
use crate::protocol::is_valid_name;

/// What a verified token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The `sub` claim: the user id.
    pub user: String,
    /// The `exp` claim, seconds since the epoch.
    pub exp: u64,
    /// The `groups` claim; `None` (absent or `null`): every group.
    pub groups: Option<Groups>,
}

impl Grant {
    /// Whether this token allows `join`, `group` and `history` for `group`.
    pub fn allows(&self, group: &str) -> bool {
        self.groups.as_ref().is_none_or(|g| g.allows(group))
    }
}

/// The claims read; `jsonwebtoken` validates `exp`, `nbf`, `iss` and `aud` itself.
#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    groups: Option<Vec<String>>,
}

struct Key {
    algorithm: Algorithm,
    key: DecodingKey,
    validation: Validation,
}

/// The configured keys and claim rules.
pub struct Verifier {
    keys: Vec<Key>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.keys.iter().map(|k| k.algorithm)).finish()
    }
}

/// The claim rules shared by every key.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub leeway: Duration,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

impl Verifier {
    /// `None` when no key is configured (anonymous mode).
    pub fn from_config(c: &Config) -> Option<Verifier> {
        let rules = Rules { leeway: c.jwt_leeway, issuer: c.jwt_issuer.clone(), audience: c.jwt_audience.clone() };
        Self::new(c.jwt_secret.as_deref(), c.jwt_public_key_file.as_ref(), &rules)
    }

    pub fn new(secret: Option<&str>, public: Option<&PublicKey>, rules: &Rules) -> Option<Verifier> {
        let mut keys = Vec::new();
        if let Some(s) = secret {
            keys.push(Key::new(Algorithm::HS256, DecodingKey::from_secret(s.as_bytes()), rules));
        }
        if let Some(p) = public {
            keys.push(Key::new(p.algorithm(), p.decoding_key().clone(), rules));
        }
        (!keys.is_empty()).then_some(Verifier { keys })
    }

    /// Verifies `token`; `Err` says why not (for the 401 body or the `forbidden` error).
    pub fn verify(&self, token: &str) -> Result<Grant, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("invalid token: {e}"))?;
        let key = self.keys.iter().find(|k| k.algorithm == header.alg).ok_or_else(|| {
            let accepted: Vec<String> = self.keys.iter().map(|k| format!("{:?}", k.algorithm)).collect();
            format!("invalid token: algorithm {:?} is not accepted (accepted: {})", header.alg, accepted.join(", "))
        })?;
        let claims = jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation)
            .map_err(|e| format!("invalid token: {e}"))?
            .claims;
        if !is_valid_name(&claims.sub) {
            return Err("invalid token: `sub` is not a valid user id (1-128 of A-Z a-z 0-9 _ . : @ -)".into());
        }
        let groups =
            claims.groups.as_deref().map(Groups::parse).transpose().map_err(|e| format!("invalid token: {e}"))?;
        Ok(Grant { user: claims.sub, exp: claims.exp, groups })
    }
}

impl Key {
    fn new(algorithm: Algorithm, key: DecodingKey, rules: &Rules) -> Key {
        let mut v = Validation::new(algorithm);
        v.leeway = rules.leeway.as_secs();
        v.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(iss) = &rules.issuer {
            v.set_issuer(&[iss]);
            // Without this a token with no `iss` at all would pass.
            required.push("iss");
        }
        match &rules.audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                required.push("aud");
            }
            // jsonwebtoken refuses any `aud` it was not told about; unset means unchecked.
            None => v.validate_aud = false,
        }
        v.set_required_spec_claims(&required);
        Key { algorithm, key, validation: v }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::{Value, json};

    fn now() -> i64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
    }

    fn sign(alg: Algorithm, claims: Value) -> String {
        encode(&Header::new(alg), &claims, &EncodingKey::from_secret(b"k")).unwrap()
    }

    fn verifier(rules: Rules) -> Verifier {
        Verifier::new(Some("k"), None, &rules).unwrap()
    }

    fn five_s() -> Rules {
        Rules { leeway: Duration::from_secs(5), ..Rules::default() }
    }

    #[test]
    fn exp_and_nbf_within_the_leeway() {
        let v = verifier(five_s());
        let t = now();
        for (claims, ok) in [
            (json!({"sub":"a","exp":t + 60}), true),
            (json!({"sub":"a","exp":t - 3}), true),
            (json!({"sub":"a","exp":t - 30}), false),
            (json!({"sub":"a","exp":t + 60,"nbf":t + 3}), true),
            (json!({"sub":"a","exp":t + 60,"nbf":t + 30}), false),
            (json!({"sub":"a","exp":t + 60,"nbf":"soon"}), false),
            (json!({"sub":"a"}), false),
            (json!({"sub":"a","exp":"later"}), false),
            (json!({"exp":t + 60}), false),
            (json!({"sub":"","exp":t + 60}), false),
            (json!({"sub":7,"exp":t + 60}), false),
        ] {
            assert_eq!(v.verify(&sign(Algorithm::HS256, claims.clone())).is_ok(), ok, "{claims}");
        }
        let strict = verifier(Rules::default());
        assert!(strict.verify(&sign(Algorithm::HS256, json!({"sub":"a","exp":t - 3}))).is_err(), "no leeway");
    }

    #[test]
    fn issuer_and_audience_when_configured() {
        let exp = now() + 60;
        let v = verifier(Rules { issuer: Some("auth.example".into()), audience: Some("chat".into()), ..five_s() });
        for (claims, ok) in [
            (json!({"sub":"a","exp":exp,"iss":"auth.example","aud":"chat"}), true),
            (json!({"sub":"a","exp":exp,"iss":"auth.example","aud":["other","chat"]}), true),
            (json!({"sub":"a","exp":exp,"aud":"chat"}), false),
            (json!({"sub":"a","exp":exp,"iss":"evil.example","aud":"chat"}), false),
            (json!({"sub":"a","exp":exp,"iss":"auth.example"}), false),
            (json!({"sub":"a","exp":exp,"iss":"auth.example","aud":"other"}), false),
        ] {
            assert_eq!(v.verify(&sign(Algorithm::HS256, claims.clone())).is_ok(), ok, "{claims}");
        }
        // Unset, neither is checked: tokens made for several services still work.
        let open = verifier(five_s());
        assert!(open.verify(&sign(Algorithm::HS256, json!({"sub":"a","exp":exp,"iss":"x","aud":"y"}))).is_ok());
    }

    #[test]
    fn only_the_configured_algorithm() {
        let v = verifier(five_s());
        let claims = json!({"sub":"a","exp":now() + 60});
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            let e = v.verify(&sign(alg, claims.clone())).unwrap_err();
            assert!(e.contains("not accepted"), "{alg:?}: {e}");
        }
        let t = sign(Algorithm::HS256, claims);
        let (head, rest) = t.split_once('.').unwrap();
        assert!(v.verify(&format!("{head}.{rest}x")).is_err(), "tampered signature");
        assert!(v.verify(head).is_err());
    }

    #[test]
    fn groups_claim() {
        let v = verifier(five_s());
        let exp = now() + 60;
        let g = v.verify(&sign(Algorithm::HS256, json!({"sub":"a","exp":exp,"groups":["room1","team.*"]}))).unwrap();
        assert!(g.allows("room1") && g.allows("team.x") && !g.allows("room2"));
        assert_eq!(g.exp, exp as u64);
        for absent in [json!({"sub":"a","exp":exp}), json!({"sub":"a","exp":exp,"groups":null})] {
            assert!(v.verify(&sign(Algorithm::HS256, absent)).unwrap().allows("anything"));
        }
        let none = v.verify(&sign(Algorithm::HS256, json!({"sub":"a","exp":exp,"groups":[]}))).unwrap();
        assert!(!none.allows("room1"));
        for bad in [json!("room1"), json!(["a b"]), json!([1]), json!({"room1":true})] {
            let claims = json!({"sub":"a","exp":exp,"groups":bad});
            assert!(v.verify(&sign(Algorithm::HS256, claims.clone())).is_err(), "{claims}");
        }
    }
}
