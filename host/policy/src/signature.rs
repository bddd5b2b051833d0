//! Package signatures: ed25519 over what a package *is* — its name, exact version and
//! component digest, in one framed message — so a signature cannot be moved to another
//! package or version, and covers the bytes through their digest. Keys and signatures
//! travel as text: `ed25519:<64 hex>` for a public key, 128 hex digits for a signature.
//! `ring` (already the TLS stack's) does the cryptography.

use std::fmt;
use std::str::FromStr;

use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use crate::package::PackageName;

/// What is signed for `package@version` with component `digest`.
pub fn message(package: &PackageName, version: &str, digest: &str) -> Vec<u8> {
    format!("hoist-package-signature-v1\n{package}\n{version}\n{digest}\n").into_bytes()
}

/// An ed25519 public key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

/// Why a key, signature or key file is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct SignatureError(String);

use crate::encoding::hex;

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            let pair = text.get(i..i + 2)?;
            if !pair
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return None;
            }
            u8::from_str_radix(pair, 16).ok()
        })
        .collect()
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ed25519:{}", hex(&self.0))
    }
}

impl FromStr for PublicKey {
    type Err = SignatureError;
    fn from_str(s: &str) -> Result<Self, SignatureError> {
        let bytes = s
            .strip_prefix("ed25519:")
            .and_then(unhex)
            .and_then(|b| <[u8; 32]>::try_from(b).ok());
        bytes.map(Self).ok_or_else(|| {
            SignatureError(format!(
                "`{}` is not a public key (ed25519: and 64 lowercase hex digits, as `hoist plugin keygen` prints)",
                s.escape_debug()
            ))
        })
    }
}

impl PublicKey {
    /// Whether `signature` (hex) is this key's over `message`.
    pub fn verifies(&self, message: &[u8], signature: &str) -> bool {
        let Some(sig) = unhex(signature).filter(|s| s.len() == 64) else {
            return false;
        };
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(message, &sig)
            .is_ok()
    }
}

/// A private signing key (PKCS#8, as `ring` reads and writes it).
pub struct SigningKey {
    pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.public())
    }
}

impl SigningKey {
    /// A new key from the system's randomness.
    pub fn generate() -> Result<Self, SignatureError> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| SignatureError("the system's randomness failed".into()))?;
        Self::from_pkcs8(doc.as_ref())
    }

    /// A key from its PKCS#8 bytes.
    pub fn from_pkcs8(bytes: &[u8]) -> Result<Self, SignatureError> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(bytes)
            .map_err(|e| SignatureError(format!("not an ed25519 private key: {e}")))?;
        Ok(Self {
            pair,
            pkcs8: bytes.to_vec(),
        })
    }

    /// What a key file holds: the PKCS#8 bytes in hex, one line.
    pub fn to_file_text(&self) -> String {
        format!("{}\n", hex(&self.pkcs8))
    }

    /// A key from a key file's text.
    pub fn from_file_text(text: &str) -> Result<Self, SignatureError> {
        let bytes = unhex(text.trim())
            .ok_or_else(|| SignatureError("a key file holds one line of hex digits".into()))?;
        Self::from_pkcs8(&bytes)
    }

    /// Its public key.
    pub fn public(&self) -> PublicKey {
        let mut key = [0u8; 32];
        key.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey(key)
    }

    /// The signature (hex) over `message`.
    pub fn sign(&self, message: &[u8]) -> String {
        hex(self.pair.sign(message).as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_for_its_key_package_version_and_digest() {
        let key = SigningKey::generate().unwrap();
        let other = SigningKey::generate().unwrap();
        let pkg: PackageName = "acme/x".parse().unwrap();
        let d = format!("sha256:{}", "ab".repeat(32));
        let msg = message(&pkg, "1.0.0", &d);
        let sig = key.sign(&msg);
        assert!(key.public().verifies(&msg, &sig));
        assert!(!other.public().verifies(&msg, &sig), "another key");
        assert!(
            !key.public().verifies(&message(&pkg, "1.0.1", &d), &sig),
            "another version"
        );
        let other_pkg: PackageName = "acme/y".parse().unwrap();
        assert!(
            !key.public()
                .verifies(&message(&other_pkg, "1.0.0", &d), &sig),
            "another package"
        );
        let d2 = format!("sha256:{}", "cd".repeat(32));
        assert!(
            !key.public().verifies(&message(&pkg, "1.0.0", &d2), &sig),
            "another digest"
        );
        assert!(!key.public().verifies(&msg, "zz"), "not hex");
        assert!(!key.public().verifies(&msg, &sig[..64]), "short");

        let back = SigningKey::from_file_text(&key.to_file_text()).unwrap();
        assert_eq!(back.public(), key.public());
        let shown = key.public().to_string();
        assert_eq!(shown.parse::<PublicKey>().unwrap(), key.public());
        for bad in ["ed25519:zz", "rsa:00", "ed25519:ABCD", &shown[..20]] {
            assert!(bad.parse::<PublicKey>().is_err(), "{bad}");
        }
        assert!(SigningKey::from_file_text("not a key").is_err());
    }
}
