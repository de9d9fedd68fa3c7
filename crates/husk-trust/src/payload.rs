//! The "simple signing" payload both signature formats sign: which manifest, under which name.
//!
//! ```json
//! {"critical": {"identity": {"docker-reference": "host/repo:tag"},
//!               "image": {"docker-manifest-digest": "sha256:…"},
//!               "type": "atomic container signature"},
//!  "optional": {…}}
//! ```
//! GPG signatures carry the type `atomic container signature`, cosign ones `cosign container
//! image signature`. As in containers/image, `critical` must hold exactly these three members:
//! a signer's extension we do not understand must not be ignored.

use serde::Deserialize;

use crate::keys::SignatureKind;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// The name the signer vouched for.
    pub docker_reference: String,
    /// The manifest the signer vouched for.
    pub manifest_digest: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Critical {
    identity: Identity,
    image: Image,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Identity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

#[derive(Deserialize)]
struct Raw {
    critical: Critical,
    #[serde(default)]
    #[allow(dead_code)] // informational (creator, timestamp); never trusted
    optional: Option<serde_json::Value>,
}

pub fn expected_type(kind: SignatureKind) -> &'static str {
    match kind {
        SignatureKind::Gpg => "atomic container signature",
        SignatureKind::Cosign => "cosign container image signature",
    }
}

/// Parses a signed payload of the given format.
pub fn parse(bytes: &[u8], kind: SignatureKind) -> Result<Payload, String> {
    let raw: Raw =
        serde_json::from_slice(bytes).map_err(|e| format!("its payload is not a simple-signing document: {e}"))?;
    let want = expected_type(kind);
    if raw.critical.kind != want {
        return Err(format!("its payload has type {:?}, not {want:?}", raw.critical.kind));
    }
    Ok(Payload {
        docker_reference: raw.critical.identity.docker_reference,
        manifest_digest: raw.critical.image.docker_manifest_digest,
    })
}

/// A payload for `reference` and `digest` (used by tests and by the test signer).
pub fn make(reference: &str, digest: &str, kind: SignatureKind) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "critical": {
            "identity": {"docker-reference": reference},
            "image": {"docker-manifest-digest": digest},
            "type": expected_type(kind),
        },
        "optional": null,
    }))
    .expect("json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_types_are_checked() {
        let p = make("h/r:t", "sha256:ab", SignatureKind::Cosign);
        assert_eq!(
            parse(&p, SignatureKind::Cosign).unwrap(),
            Payload { docker_reference: "h/r:t".into(), manifest_digest: "sha256:ab".into() }
        );
        assert!(parse(&p, SignatureKind::Gpg).unwrap_err().contains("not \"atomic container signature\""));
    }

    #[test]
    fn unknown_critical_members_and_junk_are_refused() {
        let extra = br#"{"critical":{"identity":{"docker-reference":"a/b"},"image":{"docker-manifest-digest":"sha256:a"},"type":"atomic container signature","new":1}}"#;
        assert!(parse(extra, SignatureKind::Gpg).is_err());
        assert!(parse(b"[]", SignatureKind::Gpg).is_err());
        assert!(parse(b"", SignatureKind::Gpg).is_err());
        let missing = br#"{"critical":{"identity":{},"image":{"docker-manifest-digest":"sha256:a"},"type":"atomic container signature"}}"#;
        assert!(parse(missing, SignatureKind::Gpg).is_err());
    }
}
