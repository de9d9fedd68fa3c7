//! Byte strings for what reaches an app unchanged: its arguments and environment values.
//!
//! Linux hands a program bytes, not text; an argument or a value need not be UTF-8. In the pod
//! manifest (JSON) a byte string is a plain JSON string when it is valid UTF-8, which is the
//! common case and keeps `cat-manifest` readable, and otherwise an object `{"hex": "…"}`.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct ByteStr(pub Vec<u8>);

impl ByteStr {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn as_os_str(&self) -> &OsStr {
        OsStr::from_bytes(&self.0)
    }

    /// The bytes as text, with invalid sequences replaced (for messages only).
    pub fn to_string_lossy(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for ByteStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(&self.0) {
            Ok(s) => fmt::Debug::fmt(s, f),
            Err(_) => write!(f, "b{:?}", self.to_string_lossy()),
        }
    }
}

impl fmt::Display for ByteStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_string_lossy())
    }
}

impl From<&str> for ByteStr {
    fn from(s: &str) -> Self {
        ByteStr(s.as_bytes().to_vec())
    }
}

impl From<String> for ByteStr {
    fn from(s: String) -> Self {
        ByteStr(s.into_bytes())
    }
}

impl From<OsString> for ByteStr {
    fn from(s: OsString) -> Self {
        ByteStr(s.into_vec())
    }
}

impl From<&OsStr> for ByteStr {
    fn from(s: &OsStr) -> Self {
        ByteStr(s.as_bytes().to_vec())
    }
}

impl PartialEq<&str> for ByteStr {
    fn eq(&self, other: &&str) -> bool {
        self.0 == other.as_bytes()
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl Serialize for ByteStr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => {
                use serde::ser::SerializeMap;
                let hex: String = self
                    .0
                    .iter()
                    .flat_map(|b| [HEX[(b >> 4) as usize] as char, HEX[(b & 15) as usize] as char])
                    .collect();
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("hex", &hex)?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for ByteStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Text(String),
            Hex { hex: String },
        }
        match Repr::deserialize(d)? {
            Repr::Text(t) => Ok(ByteStr(t.into_bytes())),
            Repr::Hex { hex } => {
                let nib = |c: u8| match c {
                    b'0'..=b'9' => Some(c - b'0'),
                    b'a'..=b'f' => Some(c - b'a' + 10),
                    b'A'..=b'F' => Some(c - b'A' + 10),
                    _ => None,
                };
                let h = hex.as_bytes();
                if h.len() % 2 != 0 {
                    return Err(serde::de::Error::custom("a hex byte string has an odd number of digits"));
                }
                h.chunks(2)
                    .map(|p| Some(nib(p[0])? << 4 | nib(p[1])?))
                    .collect::<Option<Vec<u8>>>()
                    .map(ByteStr)
                    .ok_or_else(|| serde::de::Error::custom("invalid hex digit in a byte string"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn text_stays_a_json_string() {
        assert_eq!(serde_json::to_string(&ByteStr::from("a b")).unwrap(), "\"a b\"");
        assert_eq!(serde_json::from_str::<ByteStr>("\"x\"").unwrap(), ByteStr::from("x"));
    }

    #[test]
    fn invalid_utf8_round_trips_as_hex() {
        let b = ByteStr(vec![0x66, 0xff, 0x00, 0x80]);
        let j = serde_json::to_string(&b).unwrap();
        assert_eq!(j, r#"{"hex":"66ff0080"}"#);
        assert_eq!(serde_json::from_str::<ByteStr>(&j).unwrap(), b);
        assert!(serde_json::from_str::<ByteStr>(r#"{"hex":"6"}"#).is_err());
        assert!(serde_json::from_str::<ByteStr>(r#"{"hex":"zz"}"#).is_err());
    }

    proptest! {
        #[test]
        fn any_bytes_round_trip(v in proptest::collection::vec(any::<u8>(), 0..64)) {
            let b = ByteStr(v);
            let j = serde_json::to_string(&b).unwrap();
            prop_assert_eq!(serde_json::from_str::<ByteStr>(&j).unwrap(), b);
        }
    }
}
