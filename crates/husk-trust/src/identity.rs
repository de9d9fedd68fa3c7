//! Which names a signature may carry for the image being fetched: containers-policy.json's
//! `signedIdentity` (containers-policy.json(5)), with the same semantics as containers/image.

use husk_types::Reference;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum SignedIdentity {
    /// Fetched by tag: the signature names the same repository and tag. Fetched by digest:
    /// the signature names the same repository (any tag; the digest is checked anyway).
    #[default]
    MatchRepoDigestOrExact,
    /// The signature names exactly the reference fetched (tag or digest).
    MatchExact,
    /// The signature names the same repository, whatever the tag.
    MatchRepository,
    /// The signature names exactly `dockerReference`, whatever was fetched.
    #[serde(rename_all = "camelCase")]
    ExactReference { docker_reference: String },
    /// The signature names the repository `dockerRepository`.
    #[serde(rename_all = "camelCase")]
    ExactRepository { docker_repository: String },
    /// A mirror: a fetched name starting with `prefix` is checked as if it started with
    /// `signedPrefix`, then as matchRepoDigestOrExact.
    #[serde(rename_all = "camelCase")]
    RemapIdentity { prefix: String, signed_prefix: String },
}

fn parse(s: &str) -> Result<Reference, String> {
    Reference::parse(s).map_err(|e| format!("the signed identity {s:?} is not an image reference: {e}"))
}

/// Name-only references (neither tag nor digest) never match an exact rule.
fn exact(a: &Reference, b: &Reference) -> bool {
    (a.tag.is_some() || a.digest.is_some()) && (b.tag.is_some() || b.digest.is_some()) && a.to_string() == b.to_string()
}

fn repo_digest_or_exact(image: &Reference, signed: &Reference) -> bool {
    if image.digest.is_some() {
        image.name() == signed.name()
    } else {
        exact(image, signed)
    }
}

impl SignedIdentity {
    /// Whether a signature naming `signed` vouches for `image` (the reference that was
    /// fetched, with its default tag filled in). Err says why not.
    pub fn check(&self, image: &Reference, signed: &str) -> Result<(), String> {
        let sig = parse(signed)?;
        let ok = match self {
            SignedIdentity::MatchRepoDigestOrExact => repo_digest_or_exact(image, &sig),
            SignedIdentity::MatchExact => exact(image, &sig),
            SignedIdentity::MatchRepository => image.name() == sig.name(),
            SignedIdentity::ExactReference { docker_reference } => exact(&parse(docker_reference)?, &sig),
            SignedIdentity::ExactRepository { docker_repository } => parse(docker_repository)?.name() == sig.name(),
            SignedIdentity::RemapIdentity { prefix, signed_prefix } => {
                let full = image.to_string();
                let remapped = match full.strip_prefix(prefix.as_str()) {
                    // A prefix matches at a component boundary only ("host/a" does not remap "host/ab").
                    Some(rest) if rest.is_empty() || rest.starts_with(['/', ':', '@']) || prefix.ends_with('/') => {
                        parse(&format!("{signed_prefix}{rest}"))?
                    }
                    _ => image.clone(),
                };
                repo_digest_or_exact(&remapped, &sig)
            }
        };
        if ok {
            Ok(())
        } else {
            Err(format!("it is signed for {signed}, which does not match {image} ({})", self.describe()))
        }
    }

    fn describe(&self) -> String {
        match self {
            SignedIdentity::MatchRepoDigestOrExact => "the same repository and tag".into(),
            SignedIdentity::MatchExact => "exactly the same reference".into(),
            SignedIdentity::MatchRepository => "the same repository".into(),
            SignedIdentity::ExactReference { docker_reference } => format!("exactly {docker_reference}"),
            SignedIdentity::ExactRepository { docker_repository } => format!("the repository {docker_repository}"),
            SignedIdentity::RemapIdentity { prefix, signed_prefix } => format!("{prefix} signed as {signed_prefix}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        Reference::parse(s).unwrap().normalized()
    }
    const D: &str = "sha256:0123456789012345678901234567890123456789012345678901234567890123";

    #[test]
    fn repo_digest_or_exact_by_tag_and_by_digest() {
        let id = SignedIdentity::default();
        assert!(id.check(&r("h:5/a/b:1"), "h:5/a/b:1").is_ok());
        assert!(id.check(&r("h:5/a/b:1"), "h:5/a/b:2").unwrap_err().contains("does not match"));
        assert!(id.check(&r("h:5/a/b:1"), "h:5/a/c:1").is_err());
        assert!(id.check(&r("h:5/a/b"), "h:5/a/b:latest").is_ok(), "the default tag is filled in");
        let by_digest = r(&format!("h:5/a/b@{D}"));
        assert!(id.check(&by_digest, "h:5/a/b:anything").is_ok());
        assert!(id.check(&by_digest, "h:5/a/other:anything").is_err());
        assert!(id.check(&r("busybox"), "docker.io/library/busybox:latest").is_ok());
        assert!(id.check(&r("h:5/a/b:1"), "Not A Ref").unwrap_err().contains("not an image reference"));
    }

    #[test]
    fn exact_and_repository_rules() {
        assert!(SignedIdentity::MatchExact.check(&r("h/a:1"), "h/a:1").is_ok());
        assert!(SignedIdentity::MatchExact.check(&r(&format!("h/a@{D}")), "h/a:1").is_err());
        assert!(SignedIdentity::MatchRepository.check(&r("h/a:1"), "h/a:2").is_ok());
        assert!(SignedIdentity::MatchRepository.check(&r("h/a:1"), "h/b:1").is_err());
        let er = SignedIdentity::ExactReference { docker_reference: "q/z:9".into() };
        assert!(er.check(&r("h/a:1"), "q/z:9").is_ok());
        assert!(er.check(&r("h/a:1"), "h/a:1").is_err());
        let erepo = SignedIdentity::ExactRepository { docker_repository: "q/z".into() };
        assert!(erepo.check(&r("h/a:1"), "q/z:anything").is_ok());
        assert!(erepo.check(&r("h/a:1"), "q/y:1").is_err());
    }

    #[test]
    fn remap_identity_for_mirrors() {
        let m = SignedIdentity::RemapIdentity {
            prefix: "mirror.local/m".into(),
            signed_prefix: "docker.io/library".into(),
        };
        assert!(m.check(&r("mirror.local/m/busybox:1"), "docker.io/library/busybox:1").is_ok());
        assert!(m.check(&r("mirror.local/m/busybox:1"), "docker.io/library/busybox:2").is_err());
        assert!(m.check(&r("mirror.local/mx/busybox:1"), "docker.io/library/busybox:1").is_err(), "component boundary");
        assert!(m.check(&r("other.local/busybox:1"), "other.local/busybox:1").is_ok(), "no prefix: as is");
    }

    #[test]
    fn policy_json_spelling() {
        let j = r#"{"type":"remapIdentity","prefix":"a","signedPrefix":"b"}"#;
        let id: SignedIdentity = serde_json::from_str(j).unwrap();
        assert_eq!(id, SignedIdentity::RemapIdentity { prefix: "a".into(), signed_prefix: "b".into() });
        let id: SignedIdentity =
            serde_json::from_str(r#"{"type":"exactReference","dockerReference":"h/a:1"}"#).unwrap();
        assert!(matches!(id, SignedIdentity::ExactReference { .. }));
        assert!(serde_json::from_str::<SignedIdentity>(r#"{"type":"matchSomething"}"#).is_err());
    }
}
