//! The public key of `CHAT_JWT_PUBLIC_KEY_FILE`: read, parsed and checked once, at start-up,
//! so a wrong file stops the gateway (exit 64) instead of refusing every token later.

use std::path::{Path, PathBuf};

use jsonwebtoken::{Algorithm, DecodingKey};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;

/// Smallest RSA modulus accepted, in bits: a shorter key is a configuration mistake.
pub const MIN_RSA_BITS: usize = 2048;

/// A token-verifying public key and the one algorithm it verifies: RS256 for an RSA key,
/// ES256 for a P-256 key.
#[derive(Clone)]
pub struct PublicKey {
    path: PathBuf,
    algorithm: Algorithm,
    key: DecodingKey,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicKey").field("path", &self.path).field("algorithm", &self.algorithm).finish()
    }
}

impl PublicKey {
    /// Reads and parses the PEM file at `path`.
    pub fn read(path: &Path) -> Result<PublicKey, String> {
        let pem = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut key = Self::from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))?;
        key.path = path.to_owned();
        Ok(key)
    }

    /// Parses a PEM public key: `PUBLIC KEY` (SubjectPublicKeyInfo, RSA or P-256) or
    /// `RSA PUBLIC KEY` (PKCS#1).
    pub fn from_pem(pem: &str) -> Result<PublicKey, String> {
        let pem = pem.trim();
        let label = pem
            .strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.split_once("-----"))
            .map(|(label, _)| label)
            .ok_or("not a PEM file (no -----BEGIN line first)")?;
        let rsa = match label {
            "PUBLIC KEY" => match rsa::RsaPublicKey::from_public_key_pem(pem) {
                Ok(key) => key,
                Err(_) => {
                    let key = p256::PublicKey::from_public_key_pem(pem)
                        .map_err(|e| format!("a PUBLIC KEY that is neither RSA nor P-256 (ES256): {e}"))?;
                    let point = key.to_encoded_point(false);
                    return Ok(Self::new(Algorithm::ES256, DecodingKey::from_ec_der(point.as_bytes())));
                }
            },
            "RSA PUBLIC KEY" => rsa::RsaPublicKey::from_pkcs1_pem(pem).map_err(|e| format!("invalid RSA key: {e}"))?,
            l if l.contains("PRIVATE KEY") => return Err("holds a private key; give the public key".into()),
            "CERTIFICATE" => {
                return Err("holds a certificate; give its public key (openssl x509 -pubkey -noout)".into());
            }
            l => return Err(format!("a PEM {l:?}, not a PUBLIC KEY")),
        };
        let bits = rsa.n().bits();
        if bits < MIN_RSA_BITS {
            return Err(format!("a {bits}-bit RSA key; at least {MIN_RSA_BITS} bits are needed"));
        }
        let key = DecodingKey::from_rsa_raw_components(&rsa.n().to_bytes_be(), &rsa.e().to_bytes_be());
        Ok(Self::new(Algorithm::RS256, key))
    }

    fn new(algorithm: Algorithm, key: DecodingKey) -> PublicKey {
        PublicKey { path: PathBuf::new(), algorithm, key }
    }

    /// RS256 or ES256.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn decoding_key(&self) -> &DecodingKey {
        &self.key
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs1::EncodeRsaPublicKey;
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};

    /// RFC 8410's example Ed25519 public key: a valid `PUBLIC KEY` of another kind.
    const ED25519: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";

    #[test]
    fn rsa_and_p256_keys_pick_their_algorithm() {
        let rsa = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), MIN_RSA_BITS).unwrap().to_public_key();
        let spki = rsa.to_public_key_pem(LineEnding::LF).unwrap();
        assert_eq!(PublicKey::from_pem(&spki).unwrap().algorithm(), Algorithm::RS256);
        let pkcs1 = rsa.to_pkcs1_pem(LineEnding::LF).unwrap();
        assert_eq!(PublicKey::from_pem(&pkcs1).unwrap().algorithm(), Algorithm::RS256);
        let ec = p256::SecretKey::random(&mut rand::thread_rng()).public_key();
        let pem = ec.to_public_key_pem(LineEnding::CRLF).unwrap();
        assert_eq!(PublicKey::from_pem(&format!("\n{pem}\n")).unwrap().algorithm(), Algorithm::ES256);
    }

    #[test]
    fn anything_else_is_refused_with_a_reason() {
        let ec = p256::SecretKey::random(&mut rand::thread_rng());
        let private = ec.to_pkcs8_pem(LineEnding::LF).unwrap();
        let weak = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 1024).unwrap().to_public_key();
        let weak = weak.to_public_key_pem(LineEnding::LF).unwrap();
        let cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let broken = "-----BEGIN PUBLIC KEY-----\nnot base64!\n-----END PUBLIC KEY-----\n";
        for (pem, needle) in [
            (private.as_str(), "private key"),
            (weak.as_str(), "1024-bit"),
            (cert, "certificate"),
            (ED25519, "neither RSA nor P-256"),
            (broken, "neither RSA nor P-256"),
            ("hello", "not a PEM"),
            ("", "not a PEM"),
        ] {
            let e = PublicKey::from_pem(pem).unwrap_err();
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }

    #[test]
    fn a_file_that_cannot_be_read_names_its_path() {
        let e = PublicKey::read(Path::new("/nonexistent/key.pem")).unwrap_err();
        assert!(e.contains("/nonexistent/key.pem"), "{e}");
    }
}
