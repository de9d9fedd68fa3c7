//! husk's own trust store: keys trusted per name prefix (`husk trust add --prefix`), as rkt had.
//!
//! ```text
//! <config dir>/trust/<escaped prefix>/<fingerprint>.gpg   an OpenPGP certificate
//! <config dir>/trust/<escaped prefix>/<fingerprint>.pem   a PEM public key (cosign)
//! ```
//! One file per key, written atomically. The prefix is escaped like a store reference (`/` as
//! `%2F`); a prefix is a scope of the docker transport, matched as policy.json scopes are.

use std::path::{Path, PathBuf};

use pgp::composed::ArmorOptions;

use crate::keys::{parse_keys, KeyType, PublicKey};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid prefix {prefix:?}: {why}")]
    BadPrefix { prefix: String, why: String },
    #[error("the key file {path}: {source}")]
    BadKey {
        path: PathBuf,
        #[source]
        source: crate::keys::KeyError,
    },
    #[error("failed to {action} {path}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("no trusted key matches {what}")]
    NoSuchKey { what: String },
    #[error("{what} matches {count} trusted keys; give the whole fingerprint or --prefix")]
    Ambiguous { what: String, count: usize },
}

fn io(path: &Path, action: &'static str) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { path, action, source }
}

/// A key and the prefix it is trusted for.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    pub prefix: String,
    pub key: PublicKey,
    pub path: PathBuf,
}

/// A stored key that cannot be used any more (expired, revoked): its prefix still requires a
/// signature, and refuses until the key is replaced.
#[derive(Debug, Clone)]
pub struct UnusableKey {
    pub prefix: String,
    pub path: PathBuf,
    pub why: String,
}

/// What the trust store holds.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub keys: Vec<TrustedKey>,
    pub unusable: Vec<UnusableKey>,
}

/// A key `remove` took out.
#[derive(Debug, Clone)]
pub struct Removed {
    pub prefix: String,
    /// `gpg key FPR`, `p256 key SHA256:…`, `unusable key FPR`.
    pub what: String,
    pub path: PathBuf,
}

/// The fingerprint a key file is stored under (its name).
pub fn stored_fingerprint(path: &Path) -> String {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    if path.extension().is_some_and(|x| x == "pem") {
        format!("SHA256:{stem}")
    } else {
        stem
    }
}

/// Checks and normalizes a prefix: `HOST[:PORT][/PATH…]` (lower case), or `*.DOMAIN`.
pub fn normalize_prefix(prefix: &str) -> Result<String, StoreError> {
    let bad = |why: &str| StoreError::BadPrefix { prefix: prefix.to_string(), why: why.to_string() };
    let p = prefix.trim().trim_start_matches("docker://").trim_end_matches('/').to_ascii_lowercase();
    if p.contains('@') {
        return Err(bad("a prefix names a registry, namespace or repository, never a digest"));
    }
    if let Some(domain) = p.strip_prefix("*.") {
        if domain.is_empty() || domain.contains(['/', ':', '*']) {
            return Err(bad("a wildcard prefix is *.DOMAIN, without port or path"));
        }
        return Ok(p);
    }
    let (host, path) = p.split_once('/').unwrap_or((&p, ""));
    let (name, port) = host.split_once(':').unwrap_or((host, ""));
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-') {
        return Err(bad("it must start with a registry host (HOST[:PORT]), e.g. docker.io/library"));
    }
    if !name.contains('.') && name != "localhost" && port.is_empty() {
        return Err(bad("the first component must be a registry host (with a dot or a port, or localhost)"));
    }
    if !port.is_empty() && port.parse::<u16>().is_err() {
        return Err(bad("the port must be a number from 0 to 65535"));
    }
    for c in path.split('/').filter(|_| !path.is_empty()) {
        if c.is_empty() || !c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)) {
            return Err(bad("path components are lower-case letters, digits, '.', '_' and '-'; no tag"));
        }
    }
    Ok(p)
}

fn escape(prefix: &str) -> String {
    prefix.replace('%', "%25").replace('/', "%2F")
}

fn unescape(s: &str) -> String {
    s.replace("%2F", "/").replace("%25", "%")
}

/// husk's trust store under a config dir.
#[derive(Debug, Clone)]
pub struct TrustStore {
    root: PathBuf,
}

impl TrustStore {
    pub fn new(config_dir: &Path) -> TrustStore {
        TrustStore { root: config_dir.join("trust") }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every usable trusted key, by prefix then fingerprint.
    pub fn keys(&self) -> Result<Vec<TrustedKey>, StoreError> {
        Ok(self.load()?.keys)
    }

    /// Every stored key: the usable ones, and those that expired or were revoked since they
    /// were added (a broken key file is an error: the store must not silently lose a key).
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let mut out = Vec::new();
        let mut unusable = Vec::new();
        let dirs = match std::fs::read_dir(&self.root) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::default()),
            Err(e) => return Err(io(&self.root, "list")(e)),
        };
        for d in dirs.flatten() {
            let prefix = unescape(&d.file_name().to_string_lossy());
            if prefix.starts_with('.') || !d.path().is_dir() {
                continue;
            }
            let dir = d.path();
            for f in std::fs::read_dir(&dir).map_err(io(&dir, "list"))?.flatten() {
                let path = f.path();
                if !path.extension().is_some_and(|x| x == "gpg" || x == "pem") {
                    continue;
                }
                let bytes = std::fs::read(&path).map_err(io(&path, "read"))?;
                match parse_keys(&bytes) {
                    Ok(keys) => out.extend(keys.into_iter().map(|key| TrustedKey {
                        prefix: prefix.clone(),
                        key,
                        path: path.clone(),
                    })),
                    Err(e @ crate::keys::KeyError::Unusable { .. }) => {
                        unusable.push(UnusableKey { prefix: prefix.clone(), path: path.clone(), why: e.to_string() })
                    }
                    Err(source) => return Err(StoreError::BadKey { path, source }),
                }
            }
        }
        out.sort_by(|a, b| (&a.prefix, &a.key.fingerprint).cmp(&(&b.prefix, &b.key.fingerprint)));
        unusable.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Loaded { keys: out, unusable })
    }

    /// Parses a key file without storing it (to show its fingerprint before asking).
    pub fn inspect(file: &Path, bytes: &[u8]) -> Result<Vec<PublicKey>, StoreError> {
        parse_keys(bytes).map_err(|source| StoreError::BadKey { path: file.to_path_buf(), source })
    }

    /// Trusts every key of `bytes` for `prefix` (already normalized), one file per key.
    pub fn add(&self, prefix: &str, file: &Path, bytes: &[u8]) -> Result<Vec<TrustedKey>, StoreError> {
        let keys = Self::inspect(file, bytes)?;
        let dir = self.root.join(escape(prefix));
        std::fs::create_dir_all(&dir).map_err(io(&dir, "create"))?;
        let mut out = Vec::new();
        for key in keys {
            let (name, data) = match key.key_type {
                KeyType::Gpg => {
                    let armored = key.gpg_armored(ArmorOptions::default()).map_err(|e| StoreError::BadKey {
                        path: file.to_path_buf(),
                        source: crate::keys::KeyError::NotAKey { why: e },
                    })?;
                    (format!("{}.gpg", key.fingerprint), armored)
                }
                _ => (format!("{}.pem", key.fingerprint.trim_start_matches("SHA256:")), bytes.to_vec()),
            };
            let path = dir.join(name);
            husk_sys::atomic_write(&path, &data, 0o644).map_err(io(&path, "write"))?;
            out.push(TrustedKey { prefix: prefix.to_string(), key, path });
        }
        Ok(out)
    }

    /// Removes the keys whose fingerprint starts with `what` (case-insensitive; `SHA256:`
    /// optional), only under `prefix` when given. Several matches need `all`.
    pub fn remove(&self, what: &str, prefix: Option<&str>, all: bool) -> Result<Vec<Removed>, StoreError> {
        let want = what.trim().to_ascii_uppercase();
        let want = want.strip_prefix("SHA256:").unwrap_or(&want).to_string();
        if want.len() < 8 {
            return Err(StoreError::NoSuchKey {
                what: format!("{what:?} (give at least 8 digits of the fingerprint)"),
            });
        }
        let loaded = self.load()?;
        let matches = |prefix_of: &str, fp: &str| {
            let fp = fp.to_ascii_uppercase();
            prefix.is_none_or(|p| p == prefix_of) && fp.strip_prefix("SHA256:").unwrap_or(&fp).starts_with(&want)
        };
        let mut matching: Vec<Removed> = loaded
            .keys
            .into_iter()
            .filter(|k| matches(&k.prefix, &k.key.fingerprint))
            .map(|k| Removed {
                prefix: k.prefix,
                what: format!("{} key {}", k.key.key_type, k.key.fingerprint),
                path: k.path,
            })
            .collect();
        // An unusable key is named by its file (the fingerprint it was stored under).
        matching.extend(loaded.unusable.into_iter().filter(|u| matches(&u.prefix, &stored_fingerprint(&u.path))).map(
            |u| Removed {
                prefix: u.prefix,
                what: format!("unusable key {}", stored_fingerprint(&u.path)),
                path: u.path,
            },
        ));
        if matching.is_empty() {
            let scope = prefix.map(|p| format!(" for prefix {p}")).unwrap_or_default();
            return Err(StoreError::NoSuchKey { what: format!("{what}{scope}") });
        }
        let mut paths: Vec<&Path> = matching.iter().map(|k| k.path.as_path()).collect();
        paths.dedup();
        if paths.len() > 1 && !all {
            return Err(StoreError::Ambiguous { what: what.to_string(), count: paths.len() });
        }
        for p in paths {
            std::fs::remove_file(p).map_err(io(p, "remove"))?;
            if let Some(dir) = p.parent() {
                husk_sys::fsync_dir(dir).map_err(io(dir, "sync"))?;
                // The prefix's directory goes with its last key.
                let _ = std::fs::remove_dir(dir);
            }
        }
        Ok(matching)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::pkcs8::EncodePublicKey as _;

    fn pem() -> String {
        let sk = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
        sk.verifying_key().to_public_key_pem(p256::pkcs8::LineEnding::LF).unwrap()
    }

    #[test]
    fn prefixes_are_registry_scopes() {
        assert_eq!(normalize_prefix("Quay.IO/Ns/").unwrap(), "quay.io/ns");
        assert_eq!(normalize_prefix("127.0.0.1:5000/husk/a").unwrap(), "127.0.0.1:5000/husk/a");
        assert_eq!(normalize_prefix("docker://localhost").unwrap(), "localhost");
        assert_eq!(normalize_prefix("*.example.com").unwrap(), "*.example.com");
        for bad in ["busybox", "", "h.io/a@sha256:00", "h.io:x", "h.io/a:tag", "h.io//a", "*.a/b", "h_x.io"] {
            assert!(normalize_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn add_list_remove() {
        let d = tempfile::tempdir().unwrap();
        let s = TrustStore::new(d.path());
        assert!(s.keys().unwrap().is_empty());
        let k1 = pem();
        let added = s.add("h.io/a", Path::new("k1.pem"), k1.as_bytes()).unwrap();
        s.add("h.io/b", Path::new("k2.pem"), pem().as_bytes()).unwrap();
        let keys = s.keys().unwrap();
        assert_eq!(keys.iter().map(|k| k.prefix.as_str()).collect::<Vec<_>>(), ["h.io/a", "h.io/b"]);
        assert!(added[0].path.starts_with(d.path().join("trust/h.io%2Fa")));
        let fp = added[0].key.fingerprint.clone();
        assert!(matches!(s.remove(&fp[7..20], Some("h.io/b"), false), Err(StoreError::NoSuchKey { .. })));
        assert!(matches!(s.remove("abc", None, false), Err(StoreError::NoSuchKey { .. })), "too short");
        let removed = s.remove(&fp[7..20], None, false).unwrap();
        assert_eq!(removed[0].what, format!("p256 key {fp}"));
        assert_eq!(stored_fingerprint(&added[0].path), fp);
        assert_eq!(s.keys().unwrap().len(), 1);
        assert!(!d.path().join("trust/h.io%2Fa").exists());
        assert!(matches!(s.add("h.io/a", Path::new("x"), b"junk"), Err(StoreError::BadKey { .. })));
    }
}
