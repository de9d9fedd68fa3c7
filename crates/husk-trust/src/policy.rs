//! containers-policy.json(5): requirements per transport and scope, and how a scope is chosen.
//!
//! A docker reference `host:port/ns/repo:tag` is looked up as the reference itself, then
//! `host:port/ns/repo`, `host:port/ns`, `host:port`, then `*.domain` wildcards of the host
//! (the port dropped), then the transport's `""` scope, then the policy's `default`: the first
//! scope present wins and every requirement in it must pass.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use husk_types::Reference;
use serde_json::Value;

use crate::identity::SignedIdentity;
use crate::keys::{parse_keys, PublicKey, SignatureKind};

/// One requirement of a scope.
#[derive(Debug, Clone)]
pub enum Requirement {
    /// `insecureAcceptAnything`.
    Accept,
    /// `reject`, or a requirement husk cannot check (the reason says which and why).
    Reject { why: String },
    /// `signedBy` (GPG keys) or `sigstoreSigned` (key-based cosign): at least one signature
    /// made by one of `keys`, naming the fetched digest and an identity `identity` accepts.
    Signed(SignedBy),
}

#[derive(Debug, Clone)]
pub struct SignedBy {
    /// GPG keys (signedBy), PEM keys (sigstoreSigned), or both (a husk trust prefix): a valid
    /// signature by any of them satisfies the requirement.
    pub keys: Vec<PublicKey>,
    pub identity: SignedIdentity,
    /// Where the requirement comes from, for messages: `husk trust` or the policy file.
    pub origin: String,
}

/// What is being fetched, for scope matching.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    Docker(&'a Reference),
    /// `oci`, `oci-archive` or `docker-archive`, and the (absolute) path.
    Local {
        transport: &'static str,
        path: &'a Path,
    },
}

impl Target<'_> {
    pub fn transport(&self) -> &'static str {
        match self {
            Target::Docker(_) => "docker",
            Target::Local { transport, .. } => transport,
        }
    }

    /// The scopes to look up, most specific first (without the transport's `""`).
    pub fn scopes(&self) -> Vec<String> {
        match self {
            Target::Docker(r) => docker_scopes(r),
            Target::Local { path, .. } => path.ancestors().map(|p| p.display().to_string()).collect(),
        }
    }
}

/// The docker transport's scopes for `r`, as containers/image computes them.
pub fn docker_scopes(r: &Reference) -> Vec<String> {
    let mut out = vec![r.to_string()];
    let mut name = r.name();
    loop {
        if !out.contains(&name) {
            out.push(name.clone());
        }
        match name.rfind('/') {
            Some(i) => name.truncate(i),
            None => break,
        }
    }
    // Wildcards never carry a port.
    let mut host = match name.rfind(':') {
        Some(i) if !name.ends_with(']') => name[..i].to_string(),
        _ => name,
    };
    while let Some(i) = host.find('.') {
        host = host[i + 1..].to_string();
        out.push(format!("*.{host}"));
    }
    out
}

/// A parsed policy file.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub path: PathBuf,
    pub default: Vec<Requirement>,
    pub transports: BTreeMap<String, BTreeMap<String, Vec<Requirement>>>,
}

impl Policy {
    /// Reads a policy file; `Ok(None)` when it does not exist.
    pub fn load(path: &Path) -> Result<Option<Policy>, String> {
        match std::fs::read(path) {
            Ok(b) => Policy::parse(&b, path).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Parses policy.json. Unknown requirement types and malformed entries are errors (as in
    /// containers/image); a key file that cannot be read makes only its own requirement reject.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Policy, String> {
        let at = |what: &str| format!("{}: {what}", path.display());
        let v: Value = serde_json::from_slice(bytes).map_err(|e| at(&format!("not valid JSON: {e}")))?;
        let obj = v.as_object().ok_or_else(|| at("the policy must be a JSON object"))?;
        for k in obj.keys() {
            if k != "default" && k != "transports" {
                return Err(at(&format!("unknown member {k:?} (expected \"default\" and \"transports\")")));
            }
        }
        let base = path.parent().unwrap_or(Path::new("/"));
        let reqs = |v: &Value, where_: &str| -> Result<Vec<Requirement>, String> {
            let arr = v.as_array().ok_or_else(|| at(&format!("{where_} must be a list of requirements")))?;
            if arr.is_empty() {
                return Err(at(&format!("{where_} is an empty list; give at least one requirement")));
            }
            arr.iter()
                .map(|r| requirement(r, base, &path.display().to_string()).map_err(|e| at(&format!("{where_}: {e}"))))
                .collect()
        };
        let default =
            reqs(obj.get("default").ok_or_else(|| at("the \"default\" requirements are missing"))?, "default")?;
        let mut transports = BTreeMap::new();
        if let Some(t) = obj.get("transports") {
            let t = t.as_object().ok_or_else(|| at("\"transports\" must be an object"))?;
            for (transport, scopes) in t {
                let scopes =
                    scopes.as_object().ok_or_else(|| at(&format!("transport {transport:?} must be an object")))?;
                let mut m = BTreeMap::new();
                for (scope, r) in scopes {
                    m.insert(scope.clone(), reqs(r, &format!("transports.{transport}.{scope:?}"))?);
                }
                transports.insert(transport.clone(), m);
            }
        }
        Ok(Policy { path: path.to_path_buf(), default, transports })
    }

    /// The most specific scope of `target` present in this policy (the transport's `""`
    /// included), with its requirements.
    pub fn scope_for(&self, target: &Target<'_>) -> Option<(String, &[Requirement])> {
        let scopes = self.transports.get(target.transport())?;
        target
            .scopes()
            .into_iter()
            .chain(std::iter::once(String::new()))
            .find_map(|s| scopes.get(&s).map(|r| (s, r.as_slice())))
    }
}

fn keys_from(
    obj: &serde_json::Map<String, Value>,
    base: &Path,
    path_keys: [&str; 2],
    data_keys: [&str; 2],
) -> Result<Result<Vec<PublicKey>, String>, String> {
    let mut files: Vec<PathBuf> = Vec::new();
    let mut datas: Vec<Vec<u8>> = Vec::new();
    let strings = |k: &str| -> Result<Vec<String>, String> {
        match obj.get(k) {
            None => Ok(vec![]),
            Some(Value::String(s)) => Ok(vec![s.clone()]),
            Some(Value::Array(a)) => {
                a.iter().map(|x| x.as_str().map(String::from).ok_or_else(|| format!("{k} must hold strings"))).collect()
            }
            Some(_) => Err(format!("{k} must be a string or a list of strings")),
        }
    };
    for k in path_keys {
        files.extend(strings(k)?.into_iter().map(|p| base.join(p)));
    }
    for k in data_keys {
        for d in strings(k)? {
            datas.push(
                base64::engine::general_purpose::STANDARD.decode(d.trim()).map_err(|_| format!("{k} is not base64"))?,
            );
        }
    }
    if files.is_empty() && datas.is_empty() {
        return Err(format!("give the keys as {} or {}", path_keys.join("/"), data_keys.join("/")));
    }
    // A key that cannot be read rejects this requirement when it is used, not every fetch.
    let mut keys = Vec::new();
    for f in &files {
        match std::fs::read(f) {
            Ok(b) => match parse_keys(&b) {
                Ok(k) => keys.extend(k),
                Err(e) => return Ok(Err(format!("the key file {}: {e}", f.display()))),
            },
            Err(e) => return Ok(Err(format!("the key file {} cannot be read: {e}", f.display()))),
        }
    }
    for d in &datas {
        match parse_keys(d) {
            Ok(k) => keys.extend(k),
            Err(e) => return Ok(Err(format!("inline key data: {e}"))),
        }
    }
    Ok(Ok(keys))
}

fn requirement(v: &Value, base: &Path, origin: &str) -> Result<Requirement, String> {
    let obj = v.as_object().ok_or("a requirement must be an object")?;
    let kind = obj.get("type").and_then(Value::as_str).ok_or("a requirement needs a \"type\"")?;
    let allow = |members: &[&str]| -> Result<(), String> {
        match obj.keys().find(|k| k.as_str() != "type" && !members.contains(&k.as_str())) {
            Some(k) => Err(format!("{kind}: unknown member {k:?}")),
            None => Ok(()),
        }
    };
    let identity = || -> Result<SignedIdentity, String> {
        match obj.get("signedIdentity") {
            None => Ok(SignedIdentity::default()),
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| format!("{kind}: signedIdentity: {e}")),
        }
    };
    let signed = |want: SignatureKind, keys: Result<Vec<PublicKey>, String>| -> Result<Requirement, String> {
        let identity = identity()?;
        Ok(match keys {
            Ok(keys) if keys.iter().any(|k| k.key_type.signature_kind() != want) => Requirement::Reject {
                why: format!("{kind} in {origin} names a key of the wrong kind (signedBy takes GPG keys, sigstoreSigned PEM keys)"),
            },
            Ok(keys) => Requirement::Signed(SignedBy { keys, identity, origin: origin.to_string() }),
            Err(why) => Requirement::Reject { why },
        })
    };
    match kind {
        "insecureAcceptAnything" => {
            allow(&[])?;
            Ok(Requirement::Accept)
        }
        "reject" => {
            allow(&[])?;
            Ok(Requirement::Reject { why: format!("the policy {origin} rejects it") })
        }
        "signedBy" => {
            allow(&["keyType", "keyPath", "keyPaths", "keyData", "signedIdentity"])?;
            match obj.get("keyType").and_then(Value::as_str) {
                Some("GPGKeys") => {}
                Some(other) => {
                    return Ok(Requirement::Reject {
                        why: format!("signedBy keyType {other:?} is not supported (husk verifies GPGKeys)"),
                    })
                }
                None => return Err("signedBy needs \"keyType\": \"GPGKeys\"".into()),
            }
            let keys = keys_from(obj, base, ["keyPath", "keyPaths"], ["keyData", "keyData"])?;
            signed(SignatureKind::Gpg, keys)
        }
        "sigstoreSigned" => {
            allow(&[
                "keyPath",
                "keyPaths",
                "keyData",
                "keyDatas",
                "fulcio",
                "rekorPublicKeyPath",
                "rekorPublicKeyPaths",
                "rekorPublicKeyData",
                "rekorPublicKeyDatas",
                "signedIdentity",
            ])?;
            if obj.contains_key("fulcio") {
                return Ok(Requirement::Reject {
                    why: "keyless (Fulcio/Rekor) sigstore signatures are not supported by husk; \
                          require a key-based signature (keyPath) instead"
                        .into(),
                });
            }
            if obj.keys().any(|k| k.starts_with("rekor")) {
                return Ok(Requirement::Reject {
                    why: "Rekor transparency-log checks are not supported by husk; drop rekorPublicKey* to \
                          require the key-based signature alone"
                        .into(),
                });
            }
            let keys = keys_from(obj, base, ["keyPath", "keyPaths"], ["keyData", "keyDatas"])?;
            signed(SignatureKind::Cosign, keys)
        }
        "signedBaseLayer" => {
            Ok(Requirement::Reject { why: "signedBaseLayer requirements are not supported by husk".into() })
        }
        other => Err(format!("unknown requirement type {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        Reference::parse(s).unwrap().normalized()
    }

    #[test]
    fn docker_scopes_go_from_the_reference_to_wildcards() {
        assert_eq!(
            docker_scopes(&r("quay.example.com:5000/ns/sub/repo:tag")),
            [
                "quay.example.com:5000/ns/sub/repo:tag",
                "quay.example.com:5000/ns/sub/repo",
                "quay.example.com:5000/ns/sub",
                "quay.example.com:5000/ns",
                "quay.example.com:5000",
                "*.example.com",
                "*.com"
            ]
        );
        assert_eq!(
            docker_scopes(&r("busybox"))[..3],
            ["docker.io/library/busybox:latest", "docker.io/library/busybox", "docker.io/library"]
        );
        assert_eq!(docker_scopes(&r("localhost/a")), ["localhost/a:latest", "localhost/a", "localhost"]);
    }

    fn policy(j: &str) -> Result<Policy, String> {
        Policy::parse(j.as_bytes(), Path::new("/etc/containers/policy.json"))
    }

    #[test]
    fn the_most_specific_scope_wins() {
        let p = policy(
            r#"{"default":[{"type":"reject"}],"transports":{"docker":{
                "h:1/a":[{"type":"insecureAcceptAnything"}],
                "h:1/a/b:t":[{"type":"reject"}],
                "*.example.com":[{"type":"insecureAcceptAnything"}],
                "":[{"type":"reject"}]}}}"#,
        )
        .unwrap();
        let scope = |s: &str| p.scope_for(&Target::Docker(&r(s))).map(|(s, _)| s);
        assert_eq!(scope("h:1/a/b:t").as_deref(), Some("h:1/a/b:t"));
        assert_eq!(scope("h:1/a/b:u").as_deref(), Some("h:1/a"));
        assert_eq!(scope("h:1/ab").as_deref(), Some(""), "a scope matches whole components only");
        assert_eq!(scope("x.example.com/q").as_deref(), Some("*.example.com"));
        let local = Target::Local { transport: "oci", path: Path::new("/srv/img") };
        assert!(p.scope_for(&local).is_none(), "no oci transport: the default applies");
    }

    #[test]
    fn every_requirement_type_parses_and_unknown_ones_fail() {
        let p = policy(
            r#"{"default":[{"type":"insecureAcceptAnything"}],"transports":{"docker":{
                "a":[{"type":"signedBy","keyType":"GPGKeys","keyPath":"/nonexistent.gpg"}],
                "b":[{"type":"sigstoreSigned","keyPath":"/nonexistent.pem","signedIdentity":{"type":"matchRepository"}}],
                "c":[{"type":"sigstoreSigned","fulcio":{}}],
                "d":[{"type":"signedBy","keyType":"X509Certificates","keyPath":"/x"}]}}}"#,
        )
        .unwrap();
        let d = &p.transports["docker"];
        for s in ["a", "b"] {
            assert!(matches!(&d[s][0], Requirement::Reject { why } if why.contains("cannot be read")), "{s}");
        }
        assert!(matches!(&d["c"][0], Requirement::Reject { why } if why.contains("keyless")));
        assert!(matches!(&d["d"][0], Requirement::Reject { why } if why.contains("X509Certificates")));
        for bad in [
            r#"{"default":[]}"#,
            r#"{"transports":{}}"#,
            r#"{"default":[{"type":"nope"}]}"#,
            r#"{"default":[{"type":"reject","x":1}]}"#,
            r#"{"default":[{"type":"signedBy","keyType":"GPGKeys"}]}"#,
            r#"{"default":[{"type":"signedBy","keyType":"GPGKeys","keyData":"!!"}]}"#,
            r#"{"default":[{"type":"insecureAcceptAnything"}],"extra":1}"#,
            r#"[]"#,
            "",
        ] {
            let e = policy(bad).unwrap_err();
            assert!(e.starts_with("/etc/containers/policy.json: "), "{bad}: {e}");
        }
    }

    #[test]
    fn key_paths_are_relative_to_the_policy_file() {
        let d = tempfile::tempdir().unwrap();
        use p256::pkcs8::EncodePublicKey as _;
        let sk = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
        let pem = sk.verifying_key().to_public_key_pem(p256::pkcs8::LineEnding::LF).unwrap();
        std::fs::write(d.path().join("k.pem"), pem).unwrap();
        let p = Policy::parse(
            br#"{"default":[{"type":"sigstoreSigned","keyPath":"k.pem"}]}"#,
            &d.path().join("policy.json"),
        )
        .unwrap();
        assert!(
            matches!(&p.default[0], Requirement::Signed(s) if s.keys.len() == 1 && s.keys[0].key_type == crate::keys::KeyType::P256)
        );
    }
}
