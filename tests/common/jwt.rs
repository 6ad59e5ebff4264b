//! Tokens made at test time: an HS256 secret, and RSA and P-256 key pairs generated once per
//! test binary, their public halves written to PEM files the gateway reads.

use std::path::PathBuf;
use std::sync::OnceLock;

use chatgate::config::PublicKey;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use serde_json::Value;

pub const SECRET: &str = "test-secret";

/// base64url of `{"alg":"none","typ":"JWT"}`.
const NONE_HEADER: &str = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";

pub struct Keys {
    rsa_private_der: Vec<u8>,
    pub rsa_public_pem: String,
    ec_private_der: Vec<u8>,
    pub ec_public_pem: String,
    /// Holds the PEM files for the life of the test binary.
    dir: tempfile::TempDir,
}

pub fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut rng = rand::thread_rng();
        let rsa = rsa::RsaPrivateKey::new(&mut rng, 2048).expect("RSA key");
        let ec = p256::SecretKey::random(&mut rng);
        let dir = tempfile::tempdir().expect("temp dir");
        let keys = Keys {
            rsa_private_der: rsa.to_pkcs1_der().unwrap().as_bytes().to_vec(),
            rsa_public_pem: rsa.to_public_key().to_public_key_pem(LineEnding::LF).unwrap(),
            ec_private_der: ec.to_pkcs8_der().unwrap().as_bytes().to_vec(),
            ec_public_pem: ec.public_key().to_public_key_pem(LineEnding::LF).unwrap(),
            dir,
        };
        std::fs::write(keys.dir.path().join("rsa.pem"), &keys.rsa_public_pem).unwrap();
        std::fs::write(keys.dir.path().join("ec.pem"), &keys.ec_public_pem).unwrap();
        keys
    })
}

impl Keys {
    pub fn rsa_file(&self) -> PathBuf {
        self.dir.path().join("rsa.pem")
    }

    pub fn ec_file(&self) -> PathBuf {
        self.dir.path().join("ec.pem")
    }

    /// The RSA public key as the gateway reads it, from its PEM file.
    pub fn rsa_public(&self) -> PublicKey {
        PublicKey::read(&self.rsa_file()).expect("RSA public key file")
    }

    pub fn ec_public(&self) -> PublicKey {
        PublicKey::read(&self.ec_file()).expect("EC public key file")
    }
}

pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Alice's claims for an issuer and audience checking gateway (`iss` auth.example, `aud`
/// chat), valid from `t` for a minute, with `extra` laid over them (a `null` removes a claim).
pub fn claims_at(t: i64, extra: Value) -> Value {
    let mut c = serde_json::json!({"sub":"alice","exp":t + 60,"iss":"auth.example","aud":"chat"});
    for (k, v) in extra.as_object().expect("an object of claims") {
        if v.is_null() {
            c.as_object_mut().expect("an object").remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

pub fn hs256(claims: &Value) -> String {
    hmac(Algorithm::HS256, SECRET.as_bytes(), claims)
}

/// An HMAC token with any secret (e.g. the public key's PEM: the algorithm confusion attack).
pub fn hmac(alg: Algorithm, secret: &[u8], claims: &Value) -> String {
    encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret)).unwrap()
}

pub fn rsa(alg: Algorithm, claims: &Value) -> String {
    encode(&Header::new(alg), claims, &EncodingKey::from_rsa_der(&keys().rsa_private_der)).unwrap()
}

pub fn es256(claims: &Value) -> String {
    encode(&Header::new(Algorithm::ES256), claims, &EncodingKey::from_ec_der(&keys().ec_private_der)).unwrap()
}

/// `alg: none`, no signature: the claims of `signed` under an unsigned header.
pub fn unsigned(signed: &str) -> String {
    let claims = signed.split('.').nth(1).expect("a JWT");
    format!("{NONE_HEADER}.{claims}.")
}

/// `token` with one character in the middle of its signature changed (the last one may only
/// carry padding bits).
pub fn tampered_signature(token: &str) -> String {
    let sig_start = token.rfind('.').expect("a JWT") + 1;
    let i = sig_start + (token.len() - sig_start) / 2;
    let mut bytes = token.as_bytes().to_vec();
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

/// `token` with its claims swapped for those of `other` (signature kept).
pub fn swapped_claims(token: &str, other: &str) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let claims = other.split('.').nth(1).expect("a JWT");
    format!("{}.{claims}.{}", parts[0], parts[2])
}
