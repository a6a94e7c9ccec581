//! Ed25519 keys and signatures for reports, in the standard encodings an
//! auditor's tools already read: PKCS#8 PEM for the private key, SPKI
//! (`-----BEGIN PUBLIC KEY-----`) PEM for the public key, so
//! `openssl pkeyutl -verify` works on our reports without our binary.
//!
//! The key id is the SHA-256 of the public key's SPKI DER encoding, which
//! an auditor reproduces with
//! `openssl pkey -pubin -in public-key.pem -outform DER | sha256sum`.
//! Key generation needs randomness, which the engine does not own: callers
//! pass 32 random bytes (the operator reads them from the OS).

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use crate::ledger::Sha256Digest;

pub use ed25519_dalek::{
    Signature as Ed25519Signature, SigningKey as Ed25519SigningKey,
    VerifyingKey as Ed25519VerifyingKey,
};

/// A key problem, phrased for the person holding the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not an Ed25519 private key in PKCS#8 PEM form (-----BEGIN PRIVATE KEY-----): {0}")]
    BadPrivateKey(String),
    #[error("not an Ed25519 public key in SPKI PEM form (-----BEGIN PUBLIC KEY-----): {0}")]
    BadPublicKey(String),
    #[error("cannot encode the key: {0}")]
    Encode(String),
}

/// A signing key from 32 random bytes (the Ed25519 seed).
pub fn signing_key_from_seed(seed: &[u8; 32]) -> SigningKey {
    SigningKey::from_bytes(seed)
}

/// PKCS#8 PEM text of a private key.
pub fn private_key_pem(key: &SigningKey) -> Result<String, KeyError> {
    key.to_pkcs8_pem(LineEnding::LF)
        .map(|z| z.to_string())
        .map_err(|e| KeyError::Encode(e.to_string()))
}

/// SPKI PEM text of a public key.
pub fn public_key_pem(key: &VerifyingKey) -> Result<String, KeyError> {
    key.to_public_key_pem(LineEnding::LF)
        .map_err(|e| KeyError::Encode(e.to_string()))
}

/// Reads a PKCS#8 PEM private key.
pub fn parse_private_key_pem(pem: &str) -> Result<SigningKey, KeyError> {
    if pem.contains("BEGIN PUBLIC KEY") {
        return Err(KeyError::BadPrivateKey(
            "this is a public key; signing needs the private key".into(),
        ));
    }
    SigningKey::from_pkcs8_pem(pem).map_err(|e| KeyError::BadPrivateKey(e.to_string()))
}

/// Reads an SPKI PEM public key.
pub fn parse_public_key_pem(pem: &str) -> Result<VerifyingKey, KeyError> {
    if pem.contains("BEGIN PRIVATE KEY") {
        return Err(KeyError::BadPublicKey(
            "this is a private key; give the public key (public-key.pem) to verify".into(),
        ));
    }
    VerifyingKey::from_public_key_pem(pem).map_err(|e| KeyError::BadPublicKey(e.to_string()))
}

/// Reads every public key of a PEM bundle: one or more SPKI
/// `-----BEGIN PUBLIC KEY-----` blocks, as `cat old.pem new.pem` writes them
/// (text between blocks is ignored). A private key anywhere is refused.
pub fn parse_public_keys_pem(pem: &str) -> Result<Vec<VerifyingKey>, KeyError> {
    const BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
    const END: &str = "-----END PUBLIC KEY-----";
    if pem.contains("BEGIN PRIVATE KEY") {
        return parse_public_key_pem(pem).map(|k| vec![k]);
    }
    let mut keys = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find(BEGIN) {
        let block = &rest[start..];
        let Some(end) = block.find(END) else {
            return Err(KeyError::BadPublicKey(format!(
                "public key block {} has no {END} line",
                keys.len() + 1
            )));
        };
        let (one, after) = block.split_at(end + END.len());
        let n = keys.len() + 1;
        keys.push(parse_public_key_pem(one).map_err(|e| match e {
            KeyError::BadPublicKey(m) if n > 1 => {
                KeyError::BadPublicKey(format!("public key block {n}: {m}"))
            }
            other => other,
        })?);
        rest = after;
    }
    if keys.is_empty() {
        // No block at all: the single-key parser names what is wrong.
        return parse_public_key_pem(pem).map(|k| vec![k]);
    }
    Ok(keys)
}

/// The key id: SHA-256 of the public key's SPKI DER encoding.
pub fn key_id(key: &VerifyingKey) -> Sha256Digest {
    match key.to_public_key_der() {
        Ok(der) => Sha256Digest::of(der.as_bytes()),
        // The SPKI of an Ed25519 key is a fixed 44-byte structure
        // (12-byte header + 32-byte key); encoding it cannot fail. Fall back to
        // building it by hand rather than panicking.
        Err(_) => {
            let mut der = vec![
                0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
            ];
            der.extend_from_slice(key.as_bytes());
            Sha256Digest::of(&der)
        }
    }
}

/// Signs `message` (the canonical bytes of a report without its signature).
pub fn sign(key: &SigningKey, message: &[u8]) -> [u8; 64] {
    key.sign(message).to_bytes()
}

/// Checks an Ed25519 signature (strict: rejects malleable encodings).
pub fn verify(key: &VerifyingKey, message: &[u8], signature: &[u8]) -> bool {
    let Ok(bytes) = <[u8; 64]>::try_from(signature) else {
        return false;
    };
    let sig = Signature::from_bytes(&bytes);
    key.verify_strict(message, &sig).is_ok() && key.verify(message, &sig).is_ok()
}
