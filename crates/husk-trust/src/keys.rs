//! Public keys a user trusts, and the two kinds of signature check made with them: an OpenPGP
//! signed message (GPG "simple signing", as `skopeo copy --sign-by` writes it) and a cosign
//! key-based signature (a raw signature over the payload bytes).

use std::fmt;

use base64::Engine as _;
use pgp::composed::{Deserializable, Message, SignedPublicKey};
use pgp::types::KeyDetails as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// What a key is, as `trust list` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    /// An OpenPGP certificate (verifies GPG simple-signing signatures).
    Gpg,
    /// PEM SPKI keys (verify cosign key-based signatures).
    P256,
    Ed25519,
    Rsa,
}

impl KeyType {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Gpg => "gpg",
            KeyType::P256 => "p256",
            KeyType::Ed25519 => "ed25519",
            KeyType::Rsa => "rsa",
        }
    }

    /// The signature format this kind of key verifies.
    pub fn signature_kind(self) -> SignatureKind {
        match self {
            KeyType::Gpg => SignatureKind::Gpg,
            _ => SignatureKind::Cosign,
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The two signature formats husk verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureKind {
    /// OpenPGP simple signing, in a lookaside store (containers-registries.d).
    Gpg,
    /// Cosign key-based, in the registry under the `sha256-HEX.sig` tag.
    Cosign,
}

impl fmt::Display for SignatureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SignatureKind::Gpg => "gpg",
            SignatureKind::Cosign => "cosign",
        })
    }
}

#[derive(Clone)]
enum Material {
    Gpg(Box<SignedPublicKey>),
    P256(p256::ecdsa::VerifyingKey),
    Ed25519(ed25519_dalek::VerifyingKey),
    Rsa(Box<rsa::RsaPublicKey>),
}

/// One trusted public key.
#[derive(Clone)]
pub struct PublicKey {
    pub key_type: KeyType,
    /// GPG: the primary key's fingerprint (upper-case hex, as gpg prints it). PEM keys:
    /// `SHA256:` and the hex digest of the DER SubjectPublicKeyInfo.
    pub fingerprint: String,
    /// GPG user IDs (none for PEM keys).
    pub user_ids: Vec<String>,
    material: Material,
}

impl PublicKey {
    /// An OpenPGP certificate, armored (for the trust store); Err for other keys.
    pub(crate) fn gpg_armored(&self, opts: pgp::composed::ArmorOptions<'_>) -> Result<Vec<u8>, String> {
        match &self.material {
            Material::Gpg(k) => k.to_armored_bytes(opts).map_err(|e| e.to_string()),
            _ => Err("not an OpenPGP key".into()),
        }
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} key {}", self.key_type, self.fingerprint)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("no public key in it: {why}")]
    NotAKey { why: String },
    #[error("it holds a secret key; give the public key only (gpg --export, or openssl pkey -pubout)")]
    Secret,
    #[error("the PEM public key is not P-256, Ed25519 or RSA (the key types cosign signs with)")]
    UnsupportedPem,
    #[error("OpenPGP key {fingerprint} is {why}; it cannot vouch for anything")]
    Unusable { fingerprint: String, why: String },
}

const PEM_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----";

/// Parses a key file: a PEM SPKI public key, or OpenPGP certificates (armored or binary; a
/// keyring gives several keys).
pub fn parse_keys(bytes: &[u8]) -> Result<Vec<PublicKey>, KeyError> {
    let text = std::str::from_utf8(bytes).ok();
    if let Some(t) = text {
        if t.contains("PRIVATE KEY-----") {
            return Err(KeyError::Secret);
        }
        if t.contains(PEM_PUBLIC) {
            return parse_pem(t).map(|k| vec![k]);
        }
    }
    let armored = text.is_some_and(|t| t.trim_start().starts_with("-----BEGIN PGP"));
    if text.is_some_and(|t| t.contains("BEGIN PGP PRIVATE KEY")) {
        return Err(KeyError::Secret);
    }
    let not_key = |e: pgp::errors::Error| KeyError::NotAKey { why: e.to_string() };
    let keys: Vec<SignedPublicKey> = if armored {
        let (iter, _) = SignedPublicKey::from_armor_many(bytes).map_err(not_key)?;
        iter.collect::<Result<_, _>>().map_err(not_key)?
    } else {
        SignedPublicKey::from_bytes_many(bytes).map_err(not_key)?.collect::<Result<_, _>>().map_err(not_key)?
    };
    if keys.is_empty() {
        return Err(KeyError::NotAKey { why: "neither a PEM public key nor an OpenPGP certificate".into() });
    }
    keys.into_iter()
        .map(|k| {
            k.verify_bindings()
                .map_err(|e| KeyError::NotAKey { why: format!("its self-signatures are invalid: {e}") })?;
            if let Some(why) = gpg_unusable(&k, std::time::SystemTime::now()) {
                return Err(KeyError::Unusable { fingerprint: format!("{:X}", k.fingerprint()), why });
            }
            Ok(PublicKey {
                key_type: KeyType::Gpg,
                fingerprint: format!("{:X}", k.fingerprint()),
                user_ids: k.details.users.iter().map(|u| String::from_utf8_lossy(u.id.id()).into_owned()).collect(),
                material: Material::Gpg(Box::new(k)),
            })
        })
        .collect()
}

/// Why an OpenPGP certificate must not be used at `now`: revoked (it carries a revocation
/// signature of its own), or past the expiry its newest self-signature sets. gpg refuses such
/// keys too; rPGP's `verify` checks only the mathematics.
fn gpg_unusable(k: &SignedPublicKey, now: std::time::SystemTime) -> Option<String> {
    if let Some(r) = k.details.revocation_signatures.iter().find(|r| r.verify_key(&k.primary_key).is_ok()) {
        let when: Option<std::time::SystemTime> = r.created().map(Into::into);
        return Some(match when.map(chrono::DateTime::<chrono::Utc>::from) {
            Some(t) => format!("revoked (since {})", t.format("%Y-%m-%d")),
            None => "revoked".into(),
        });
    }
    let newest =
        k.details.users.iter().flat_map(|u| u.signatures.iter()).max_by_key(|s| s.created().map(|t| t.as_secs()));
    let lifetime = newest.and_then(|s| s.key_expiration_time()).filter(|d| d.as_secs() > 0)?;
    let created: std::time::SystemTime = k.primary_key.created_at().into();
    let expires = created + std::time::Duration::from(lifetime);
    (expires <= now)
        .then(|| format!("expired (on {})", chrono::DateTime::<chrono::Utc>::from(expires).format("%Y-%m-%d")))
}

/// The DER bytes of the first PEM block labelled PUBLIC KEY. Hand-written because it is six
/// lines: the `pem` machinery of the key crates decodes into their own types only.
fn pem_der(text: &str) -> Option<Vec<u8>> {
    let start = text.find(PEM_PUBLIC)? + PEM_PUBLIC.len();
    let end = start + text[start..].find("-----END PUBLIC KEY-----")?;
    let b64: String = text[start..end].chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

fn parse_pem(text: &str) -> Result<PublicKey, KeyError> {
    use p256::pkcs8::DecodePublicKey as _;
    let der = pem_der(text).ok_or_else(|| KeyError::NotAKey { why: "the PEM block is not valid base64".into() })?;
    let fingerprint = format!("SHA256:{}", hex::encode(Sha256::digest(&der)));
    let (key_type, material) = if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_der(&der) {
        (KeyType::P256, Material::P256(k))
    } else if let Ok(k) = ed25519_dalek::VerifyingKey::from_public_key_der(&der) {
        (KeyType::Ed25519, Material::Ed25519(k))
    } else if let Ok(k) = rsa::RsaPublicKey::from_public_key_der(&der) {
        (KeyType::Rsa, Material::Rsa(Box::new(k)))
    } else {
        return Err(KeyError::UnsupportedPem);
    };
    Ok(PublicKey { key_type, fingerprint, user_ids: Vec::new(), material })
}

/// Why a signature did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigFailure {
    #[error("it is not an OpenPGP signed message ({0})")]
    Malformed(String),
    #[error("it was made by key {issuer}, which is not trusted here")]
    UntrustedKey { issuer: String },
    #[error("it does not verify with trusted key {fingerprint}: the signature or its payload was altered")]
    Invalid { fingerprint: String },
    #[error("it does not verify with any of the {keys} trusted key(s): altered, or made with another key")]
    NoKeyVerifies { keys: usize },
    #[error("its signature annotation is not valid base64")]
    BadEncoding,
}

/// Verifies a GPG simple-signing signature (an OpenPGP signed message, possibly compressed,
/// armored or binary) with `keys`; returns the signed payload and the key that made it.
pub fn verify_gpg<'k>(keys: &[&'k PublicKey], signature: &[u8]) -> Result<(Vec<u8>, &'k PublicKey), SigFailure> {
    let malformed = |e: &dyn fmt::Display| SigFailure::Malformed(e.to_string());
    let armored = signature.starts_with(b"-----BEGIN PGP");
    let msg = if armored {
        Message::from_armor(std::io::BufReader::new(signature)).map(|(m, _)| m).map_err(|e| malformed(&e))?
    } else {
        Message::from_bytes(signature).map_err(|e| malformed(&e))?
    };
    let mut msg = if msg.is_compressed() { msg.decompress().map_err(|e| malformed(&e))? } else { msg };
    if !matches!(msg, Message::Signed { .. }) {
        return Err(SigFailure::Malformed("the message is not signed".into()));
    }
    let payload = msg.as_data_vec().map_err(|e| malformed(&e))?;
    let mut issuers: Vec<String> = Vec::new();
    if let Message::Signed { reader, .. } = &msg {
        if let Some(sig) = reader.signature(0) {
            issuers.extend(sig.issuer_fingerprint().iter().map(|f| format!("{f:X}")));
            issuers.extend(sig.issuer_key_id().iter().map(|k| hex::encode_upper(k.as_ref())));
        }
    }
    let mut issuer_trusted: Option<&PublicKey> = None;
    for key in keys {
        let Material::Gpg(cert) = &key.material else { continue };
        let mut candidates: Vec<(String, String)> =
            vec![(format!("{:X}", cert.fingerprint()), hex::encode_upper(cert.legacy_key_id().as_ref()))];
        candidates.extend(
            cert.public_subkeys
                .iter()
                .map(|s| (format!("{:X}", s.key.fingerprint()), hex::encode_upper(s.key.legacy_key_id().as_ref()))),
        );
        let named = candidates.iter().any(|(fp, id)| issuers.iter().any(|i| i == fp || i == id));
        if named {
            issuer_trusted = Some(key);
        }
        if msg.verify(cert.as_ref()).is_ok() || cert.public_subkeys.iter().any(|s| msg.verify(s).is_ok()) {
            return Ok((payload, key));
        }
    }
    match (issuer_trusted, issuers.first()) {
        (Some(k), _) => Err(SigFailure::Invalid { fingerprint: k.fingerprint.clone() }),
        (None, Some(i)) => Err(SigFailure::UntrustedKey { issuer: i.clone() }),
        (None, None) => Err(SigFailure::NoKeyVerifies { keys: keys.len() }),
    }
}

/// Verifies a cosign key-based signature: `signature_b64` (the layer's
/// `dev.cosignproject.cosign/signature` annotation) over the exact `payload` bytes. ECDSA
/// signatures are ASN.1 DER over SHA-256, RSA ones PKCS#1 v1.5 over SHA-256, Ed25519 ones over
/// the payload itself, as cosign makes them.
pub fn verify_cosign<'k>(
    keys: &[&'k PublicKey],
    payload: &[u8],
    signature_b64: &str,
) -> Result<&'k PublicKey, SigFailure> {
    use p256::ecdsa::signature::Verifier as _;
    let sig =
        base64::engine::general_purpose::STANDARD.decode(signature_b64.trim()).map_err(|_| SigFailure::BadEncoding)?;
    for key in keys {
        let ok = match &key.material {
            Material::Gpg(_) => false,
            Material::P256(k) => p256::ecdsa::Signature::from_der(&sig).is_ok_and(|s| k.verify(payload, &s).is_ok()),
            Material::Ed25519(k) => {
                ed25519_dalek::Signature::from_slice(&sig).is_ok_and(|s| k.verify_strict(payload, &s).is_ok())
            }
            Material::Rsa(k) => {
                let vk = rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new((**k).clone());
                rsa::pkcs1v15::Signature::try_from(sig.as_slice()).is_ok_and(|s| vk.verify(payload, &s).is_ok())
            }
        };
        if ok {
            return Ok(key);
        }
    }
    Err(SigFailure::NoKeyVerifies { keys: keys.len() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Signer as _;
    use p256::pkcs8::{EncodePublicKey as _, LineEnding};

    fn p256_pair() -> (p256::ecdsa::SigningKey, PublicKey) {
        let sk = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
        let pem = sk.verifying_key().to_public_key_pem(LineEnding::LF).unwrap();
        let k = parse_keys(pem.as_bytes()).unwrap().pop().unwrap();
        (sk, k)
    }

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    #[test]
    fn p256_signatures_verify_only_over_the_exact_payload_and_key() {
        let (sk, k) = p256_pair();
        assert_eq!(k.key_type, KeyType::P256);
        assert!(k.fingerprint.starts_with("SHA256:") && k.fingerprint.len() == 7 + 64);
        let sig: p256::ecdsa::Signature = sk.sign(b"payload");
        let der = b64(sig.to_der().as_bytes());
        assert_eq!(verify_cosign(&[&k], b"payload", &der).unwrap().fingerprint, k.fingerprint);
        assert_eq!(verify_cosign(&[&k], b"payloaD", &der).unwrap_err(), SigFailure::NoKeyVerifies { keys: 1 });
        let (_, other) = p256_pair();
        assert!(verify_cosign(&[&other], b"payload", &der).is_err());
        assert_eq!(verify_cosign(&[&other, &k], b"payload", &der).unwrap().fingerprint, k.fingerprint);
        assert_eq!(verify_cosign(&[&k], b"payload", "%%%").unwrap_err(), SigFailure::BadEncoding);
        assert!(verify_cosign(&[&k], b"payload", &b64(b"not der")).is_err());
    }

    #[test]
    fn ed25519_keys_verify_cosign_signatures() {
        use ed25519_dalek::pkcs8::EncodePublicKey as _;
        let sk = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
        let pem = sk.verifying_key().to_public_key_pem(LineEnding::LF).unwrap();
        let k = parse_keys(pem.as_bytes()).unwrap().pop().unwrap();
        assert_eq!(k.key_type, KeyType::Ed25519);
        let sig = ed25519_dalek::Signer::sign(&sk, b"payload");
        assert!(verify_cosign(&[&k], b"payload", &b64(&sig.to_bytes())).is_ok());
        assert!(verify_cosign(&[&k], b"other", &b64(&sig.to_bytes())).is_err());
    }

    #[test]
    fn secret_keys_and_garbage_are_refused_with_a_reason() {
        assert_eq!(
            parse_keys(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap_err(),
            KeyError::Secret
        );
        assert!(matches!(parse_keys(b"hello").unwrap_err(), KeyError::NotAKey { .. }));
        assert!(matches!(parse_keys(b"").unwrap_err(), KeyError::NotAKey { .. }));
        let bad = format!("{PEM_PUBLIC}\nMAA=\n-----END PUBLIC KEY-----\n");
        assert_eq!(parse_keys(bad.as_bytes()).unwrap_err(), KeyError::UnsupportedPem);
    }

    #[test]
    fn a_gpg_signature_is_not_mistaken_for_anything_else() {
        let (_, k) = p256_pair();
        assert!(matches!(verify_gpg(&[&k], b"junk"), Err(SigFailure::Malformed(_))));
    }
}
