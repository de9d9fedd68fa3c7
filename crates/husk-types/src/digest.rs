//! Content digests (`sha256:<64 hex>`), the key of everything in the store.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A validated sha256 digest. Other algorithms are refused: the OCI spec makes sha256 the one
/// every implementation must support, and the store is keyed by it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest {
    hex: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("digest {0:?} has no algorithm prefix (expected sha256:<64 hex digits>)")]
    NoAlgorithm(String),
    #[error("digest {0:?} uses an unsupported algorithm (only sha256 is supported)")]
    Unsupported(String),
    #[error("digest {0:?} is not 64 lower-case hex digits")]
    BadHex(String),
}

impl Digest {
    /// Builds a digest from the lower-case hex encoding of a sha256 sum.
    pub fn from_sha256_hex(hex: &str) -> Result<Self, DigestError> {
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(DigestError::BadHex(hex.to_string()));
        }
        Ok(Digest { hex: hex.to_string() })
    }

    /// Builds a digest from a raw 32-byte sha256 sum.
    pub fn from_sha256_bytes(bytes: &[u8; 32]) -> Self {
        let mut hex = String::with_capacity(64);
        for b in bytes {
            use std::fmt::Write;
            let _ = write!(hex, "{b:02x}");
        }
        Digest { hex }
    }

    pub fn algorithm(&self) -> &'static str {
        "sha256"
    }

    /// The 64 hex digits, used as a file name in the store.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The first 12 hex digits, as shown in tables.
    pub fn short(&self) -> &str {
        &self.hex[..12]
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((algo, hex)) = s.split_once(':') else {
            return Err(DigestError::NoAlgorithm(s.to_string()));
        };
        if algo != "sha256" {
            return Err(DigestError::Unsupported(s.to_string()));
        }
        Digest::from_sha256_hex(hex)
    }
}

impl TryFrom<String> for Digest {
    type Error = DigestError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.to_string()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_prints_round_trip() {
        let d: Digest = format!("sha256:{HEX}").parse().unwrap();
        assert_eq!(d.hex(), HEX);
        assert_eq!(d.short(), "e3b0c44298fc");
        assert_eq!(d.to_string(), format!("sha256:{HEX}"));
    }

    #[test]
    fn refuses_other_algorithms_and_bad_hex() {
        assert!(matches!("sha512:abc".parse::<Digest>(), Err(DigestError::Unsupported(_))));
        assert!(matches!(HEX.parse::<Digest>(), Err(DigestError::NoAlgorithm(_))));
        assert!(matches!("sha256:ABC".parse::<Digest>(), Err(DigestError::BadHex(_))));
        // A digest used as a file name must never carry a path separator.
        assert!("sha256:../../../../etc/passwd".parse::<Digest>().is_err());
    }

    #[test]
    fn from_bytes_matches_hex() {
        let d = Digest::from_sha256_bytes(&[0xab; 32]);
        assert_eq!(d.hex(), "ab".repeat(32));
    }
}
