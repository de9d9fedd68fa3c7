//! The effective policy: husk's trust store, policy.json and husk.toml's default, combined.
//! Plan, then check: [`Trust::decide`] picks the scope and its requirements (pure); the caller
//! gathers the signatures the decision needs; [`verify`] checks them (pure); [`Trust::admit`]
//! re-checks a stored image against today's policy before it runs.

use std::collections::BTreeMap;

use husk_types::{Digest, Reference};
use serde::{Deserialize, Serialize};

use crate::identity::SignedIdentity;
use crate::keys::{verify_cosign, verify_gpg, KeyType, PublicKey, SignatureKind};
use crate::policy::{Policy, Requirement, SignedBy, Target};
use crate::registries::Registries;

/// husk.toml's `[trust] default`: what an image without any trust root gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultRule {
    /// Accepted, with a notice on stderr.
    Accept,
    /// Refused.
    Require,
}

/// The trust configuration of one husk invocation.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// husk's trust store, by prefix: the usable keys, and why the others are not.
    prefixes: BTreeMap<String, (Vec<PublicKey>, Vec<String>)>,
    policy: Option<Policy>,
    default: Option<DefaultRule>,
    pub registries: Registries,
}

/// What a fetch must satisfy.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The scope that matched, for messages: `husk trust prefix P`, `policy.json scope S`, …
    pub scope: String,
    pub requirements: Vec<Requirement>,
    /// Set when the image is accepted only because nothing vouches for its name.
    pub notice: Option<String>,
}

impl Decision {
    /// Whether some requirement needs signatures of `kind` gathered.
    pub fn needs(&self, kind: SignatureKind) -> bool {
        self.requirements
            .iter()
            .any(|r| matches!(r, Requirement::Signed(s) if s.keys.iter().any(|k| k.key_type.signature_kind() == kind)))
    }
}

/// A GPG signature from a lookaside store.
#[derive(Debug, Clone)]
pub struct GpgSignature {
    /// Its URL, for messages.
    pub origin: String,
    pub bytes: Vec<u8>,
}

/// One layer of a cosign signature manifest.
#[derive(Debug, Clone)]
pub struct CosignSignature {
    /// `TAG layer N`, for messages.
    pub origin: String,
    pub payload: Vec<u8>,
    /// The `dev.cosignproject.cosign/signature` annotation.
    pub signature: Option<String>,
    /// Carries a Fulcio certificate or a Rekor bundle.
    pub keyless: bool,
}

/// The signatures gathered for one manifest, and where they were looked for.
#[derive(Debug, Clone, Default)]
pub struct Found {
    pub gpg: Vec<GpgSignature>,
    pub cosign: Vec<CosignSignature>,
    pub looked: Vec<String>,
}

/// What the policy checked when an image was fetched, kept in its image record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustRecord {
    pub checked: chrono::DateTime<chrono::Utc>,
    /// `docker`, `oci`, `oci-archive` or `docker-archive`.
    pub transport: String,
    /// The reference (docker) or absolute path (local) the policy was applied to.
    pub location: String,
    /// The scope whose requirements were met.
    pub scope: String,
    /// The signatures that satisfied it; empty when the scope accepts unsigned images.
    pub signatures: Vec<VerifiedSignature>,
}

impl TrustRecord {
    fn new(target: &Target<'_>, scope: &str, signatures: Vec<VerifiedSignature>) -> TrustRecord {
        let location = match target {
            Target::Docker(r) => r.to_string(),
            Target::Local { path, .. } => path.display().to_string(),
        };
        TrustRecord {
            checked: chrono::Utc::now(),
            transport: target.transport().to_string(),
            location,
            scope: scope.to_string(),
            signatures,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifiedSignature {
    pub kind: SignatureKind,
    pub key_type: KeyType,
    pub fingerprint: String,
    /// The name the signature vouches for.
    pub identity: String,
}

/// An image the policy refuses, and why (each signature's reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{image}: refused by the trust policy ({scope}): {}", reasons.join("; "))]
pub struct Rejected {
    pub image: String,
    pub scope: String,
    pub reasons: Vec<String>,
}

impl Trust {
    pub fn new(
        store: crate::store::Loaded,
        policy: Option<Policy>,
        default: Option<DefaultRule>,
        registries: Registries,
    ) -> Trust {
        let mut prefixes: BTreeMap<String, (Vec<PublicKey>, Vec<String>)> = BTreeMap::new();
        for k in store.keys {
            prefixes.entry(k.prefix).or_default().0.push(k.key);
        }
        // A prefix whose keys all expired still requires a signature: it refuses, saying why,
        // rather than falling back to "no trust root".
        for u in store.unusable {
            prefixes.entry(u.prefix).or_default().1.push(u.why);
        }
        Trust { prefixes, policy, default, registries }
    }

    /// The scope of `target` and what it requires. A scope of husk's trust store and one of
    /// policy.json with the same name are one scope: all their requirements apply.
    pub fn decide(&self, target: &Target<'_>) -> Decision {
        let policy_scopes = self.policy.as_ref().and_then(|p| p.transports.get(target.transport()));
        let mut scopes = target.scopes();
        scopes.push(String::new());
        for scope in &scopes {
            let mut requirements = Vec::new();
            let mut names = Vec::new();
            if let (Target::Docker(_), Some((keys, unusable))) = (target, self.prefixes.get(scope.as_str())) {
                requirements.push(if keys.is_empty() {
                    Requirement::Reject {
                        why: format!("no usable key is trusted for {scope}: {}", unusable.join("; ")),
                    }
                } else {
                    Requirement::Signed(SignedBy {
                        keys: keys.clone(),
                        identity: SignedIdentity::default(),
                        origin: format!("husk trust prefix {scope}"),
                    })
                });
                names.push(format!("husk trust prefix {scope}"));
            }
            if let Some(reqs) = policy_scopes.and_then(|s| s.get(scope.as_str())) {
                requirements.extend(reqs.iter().cloned());
                let path = self.policy.as_ref().map(|p| p.path.display().to_string()).unwrap_or_default();
                names.push(if scope.is_empty() {
                    format!("{path}: the {} transport's default", target.transport())
                } else {
                    format!("{path}: scope {scope}")
                });
            }
            if !requirements.is_empty() {
                return Decision { scope: names.join(" and "), requirements, notice: None };
            }
        }
        let name = match target {
            Target::Docker(r) => r.name(),
            Target::Local { path, .. } => path.display().to_string(),
        };
        let notice = match target {
            Target::Docker(_) => Some(format!("unsigned: no trust root for {name}")),
            // A file of one's own is not an "unsigned download"; podman says nothing either.
            Target::Local { .. } => None,
        };
        match (self.default, &self.policy) {
            (Some(DefaultRule::Require), _) => Decision {
                scope: "husk.toml [trust] default".into(),
                requirements: vec![Requirement::Reject {
                    why: format!(
                        "nothing vouches for {name} (no trusted key for any prefix of it) and husk.toml sets \
                         [trust] default = \"require\""
                    ),
                }],
                notice: None,
            },
            (None, Some(p)) => {
                let all_accept = p.default.iter().all(|r| matches!(r, Requirement::Accept));
                Decision {
                    scope: format!("{}: default", p.path.display()),
                    requirements: p.default.clone(),
                    notice: notice.filter(|_| all_accept),
                }
            }
            (Some(DefaultRule::Accept), _) | (None, None) => {
                Decision { scope: "default".into(), requirements: vec![Requirement::Accept], notice }
            }
        }
    }

    /// Whether an image already in the store may run under today's policy: a signature it was
    /// verified with must come from a key its scope trusts now.
    pub fn admit(&self, image: &str, target: &Target<'_>, record: Option<&TrustRecord>) -> Result<Decision, Rejected> {
        let d = self.decide(target);
        let mut reasons = Vec::new();
        for r in &d.requirements {
            match r {
                Requirement::Accept => {}
                Requirement::Reject { why } => reasons.push(why.clone()),
                Requirement::Signed(s) => {
                    let ok = record.is_some_and(|t| {
                        t.signatures.iter().any(|v| s.keys.iter().any(|k| k.fingerprint == v.fingerprint))
                    });
                    if !ok {
                        let what = match record {
                            None => "it was stored without a verified signature".to_string(),
                            Some(t) => format!(
                                "it was verified with {}, none of which {} trusts now",
                                t.signatures.iter().map(|v| v.fingerprint.as_str()).collect::<Vec<_>>().join(", "),
                                s.origin
                            ),
                        };
                        reasons.push(format!("{what}; fetch it again (husk fetch --pull-policy=update) to verify it"));
                    }
                }
            }
        }
        if reasons.is_empty() {
            Ok(d)
        } else {
            Err(Rejected { image: image.to_string(), scope: d.scope, reasons })
        }
    }
}

fn check_payload(
    bytes: &[u8],
    kind: SignatureKind,
    image: &Reference,
    digest: &Digest,
    identity: &SignedIdentity,
) -> Result<String, String> {
    let p = crate::payload::parse(bytes, kind)?;
    if p.manifest_digest != digest.to_string() {
        return Err(format!("it is for manifest {}, not {digest}", p.manifest_digest));
    }
    identity.check(image, &p.docker_reference)?;
    Ok(p.docker_reference)
}

fn check_signed(
    s: &SignedBy,
    image: &Reference,
    digest: &Digest,
    found: &Found,
) -> Result<VerifiedSignature, Vec<String>> {
    let gpg_keys: Vec<&PublicKey> = s.keys.iter().filter(|k| k.key_type == KeyType::Gpg).collect();
    let cosign_keys: Vec<&PublicKey> = s.keys.iter().filter(|k| k.key_type != KeyType::Gpg).collect();
    // A signature that verified with `key`: what its payload vouches for, if it is this image.
    let vouched = |kind: SignatureKind, key: &PublicKey, payload: &[u8]| -> Result<VerifiedSignature, String> {
        let identity = check_payload(payload, kind, image, digest, &s.identity)?;
        Ok(VerifiedSignature { kind, key_type: key.key_type, fingerprint: key.fingerprint.clone(), identity })
    };
    let mut reasons = Vec::new();
    let mut seen = 0;
    if !gpg_keys.is_empty() {
        for sig in &found.gpg {
            seen += 1;
            let r = verify_gpg(&gpg_keys, &sig.bytes)
                .map_err(|e| e.to_string())
                .and_then(|(payload, key)| vouched(SignatureKind::Gpg, key, &payload));
            match r {
                Ok(v) => return Ok(v),
                Err(why) => reasons.push(format!("{}: {why}", sig.origin)),
            }
        }
    }
    if !cosign_keys.is_empty() {
        for sig in &found.cosign {
            seen += 1;
            let Some(b64) = &sig.signature else {
                reasons.push(if sig.keyless {
                    format!("{}: a keyless (Fulcio/Rekor) signature, which husk does not verify", sig.origin)
                } else {
                    format!("{}: no dev.cosignproject.cosign/signature annotation", sig.origin)
                });
                continue;
            };
            let r = verify_cosign(&cosign_keys, &sig.payload, b64)
                .map_err(|e| {
                    if sig.keyless {
                        format!("{e} (it is a keyless Fulcio/Rekor signature, which husk does not verify)")
                    } else {
                        e.to_string()
                    }
                })
                .and_then(|key| vouched(SignatureKind::Cosign, key, &sig.payload));
            match r {
                Ok(v) => return Ok(v),
                Err(why) => reasons.push(format!("{}: {why}", sig.origin)),
            }
        }
    }
    if seen == 0 {
        reasons.push(format!("no signature found (looked in {})", found.looked.join(" and ")));
    }
    Err(reasons)
}

/// Checks the gathered signatures of `image` (as fetched, default tag filled in) whose
/// manifest is `digest` against `decision`.
pub fn verify(decision: &Decision, image: &Reference, digest: &Digest, found: &Found) -> Result<TrustRecord, Rejected> {
    let mut reasons = Vec::new();
    let mut verified = Vec::new();
    for r in &decision.requirements {
        match r {
            Requirement::Accept => {}
            Requirement::Reject { why } => reasons.push(why.clone()),
            Requirement::Signed(s) => match check_signed(s, image, digest, found) {
                Ok(v) => verified.push(v),
                Err(mut why) => reasons.append(&mut why),
            },
        }
    }
    if !reasons.is_empty() {
        return Err(Rejected { image: image.to_string(), scope: decision.scope.clone(), reasons });
    }
    Ok(TrustRecord::new(&Target::Docker(image), &decision.scope, verified))
}

/// The refusal for a local image whose scope requires a signature: OCI layouts and archives
/// carry none that husk (or containers/image) can verify.
pub fn check_local(decision: &Decision, image: &str, target: &Target<'_>) -> Result<TrustRecord, Rejected> {
    let transport = target.transport();
    let reasons: Vec<String> = decision
        .requirements
        .iter()
        .filter_map(|r| match r {
            Requirement::Accept => None,
            Requirement::Reject { why } => Some(why.clone()),
            Requirement::Signed(_) => Some(format!(
                "it requires a signature, and a local {transport} image carries none husk can verify; \
                 push it to a registry with its signature, or accept the transport in the policy"
            )),
        })
        .collect();
    if reasons.is_empty() {
        Ok(TrustRecord::new(target, &decision.scope, Vec::new()))
    } else {
        Err(Rejected { image: image.to_string(), scope: decision.scope.clone(), reasons })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::make;
    use crate::store::TrustedKey;
    use base64::Engine as _;
    use p256::ecdsa::signature::Signer as _;
    use p256::pkcs8::EncodePublicKey as _;

    struct Signer {
        sk: p256::ecdsa::SigningKey,
        key: PublicKey,
    }

    fn signer() -> Signer {
        let sk = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
        let pem = sk.verifying_key().to_public_key_pem(p256::pkcs8::LineEnding::LF).unwrap();
        let key = crate::keys::parse_keys(pem.as_bytes()).unwrap().pop().unwrap();
        Signer { sk, key }
    }

    impl Signer {
        fn sign(&self, reference: &str, digest: &Digest) -> CosignSignature {
            let payload = make(reference, &digest.to_string(), SignatureKind::Cosign);
            let sig: p256::ecdsa::Signature = self.sk.sign(&payload);
            CosignSignature {
                origin: "sig".into(),
                payload,
                signature: Some(base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes())),
                keyless: false,
            }
        }
    }

    fn r(s: &str) -> Reference {
        Reference::parse(s).unwrap().normalized()
    }

    fn digest(b: u8) -> Digest {
        format!("sha256:{}", hex::encode([b; 32])).parse().unwrap()
    }

    fn trust(keys: &[(&str, &PublicKey)], default: Option<DefaultRule>) -> Trust {
        let keys = keys
            .iter()
            .map(|(p, k)| TrustedKey { prefix: p.to_string(), key: (*k).clone(), path: "/x".into() })
            .collect();
        Trust::new(crate::store::Loaded { keys, unusable: vec![] }, None, default, Registries::default())
    }

    fn found(sigs: Vec<CosignSignature>) -> Found {
        Found { gpg: vec![], cosign: sigs, looked: vec!["tag sha256-x.sig".into()] }
    }

    #[test]
    fn a_valid_signature_from_a_trusted_prefix_is_recorded() {
        let s = signer();
        let t = trust(&[("h:5/a", &s.key)], None);
        let img = r("h:5/a/app:1");
        let d = t.decide(&Target::Docker(&img));
        assert_eq!(d.scope, "husk trust prefix h:5/a");
        assert!(d.needs(SignatureKind::Cosign) && !d.needs(SignatureKind::Gpg));
        let rec = verify(&d, &img, &digest(1), &found(vec![s.sign("h:5/a/app:1", &digest(1))])).unwrap();
        assert_eq!((rec.transport.as_str(), rec.location.as_str()), ("docker", "h:5/a/app:1"));
        assert_eq!(rec.signatures[0].fingerprint, s.key.fingerprint);
        assert_eq!(rec.signatures[0].identity, "h:5/a/app:1");
        assert!(t.admit("x", &Target::Docker(&img), Some(&rec)).is_ok());
    }

    #[test]
    fn each_failure_is_named() {
        let s = signer();
        let t = trust(&[("h:5/a", &s.key)], None);
        let img = r("h:5/a/app:1");
        let d = t.decide(&Target::Docker(&img));
        let why = |sigs| verify(&d, &img, &digest(1), &found(sigs)).unwrap_err().to_string();
        assert!(why(vec![s.sign("h:5/a/app:1", &digest(2))]).contains("is for manifest"), "other digest");
        assert!(why(vec![s.sign("h:5/a/other:1", &digest(1))]).contains("does not match"), "other repository");
        let mut tampered = s.sign("h:5/a/app:1", &digest(1));
        tampered.payload[10] ^= 1;
        assert!(why(vec![tampered]).contains("does not verify"));
        let mut corrupt = s.sign("h:5/a/app:1", &digest(1));
        corrupt.signature = Some("AAAA".into());
        assert!(why(vec![corrupt]).contains("does not verify"));
        let other = signer();
        assert!(why(vec![other.sign("h:5/a/app:1", &digest(1))]).contains("does not verify"), "untrusted key");
        assert!(why(vec![]).contains("no signature found (looked in tag sha256-x.sig)"));
        let keyless = CosignSignature { origin: "l".into(), payload: vec![], signature: None, keyless: true };
        assert!(why(vec![keyless]).contains("keyless"));
        // One good signature among bad ones is enough.
        let good = verify(
            &d,
            &img,
            &digest(1),
            &found(vec![other.sign("h:5/a/app:1", &digest(1)), s.sign("h:5/a/app:1", &digest(1))]),
        );
        assert_eq!(good.unwrap().signatures.len(), 1);
    }

    #[test]
    fn prefixes_scope_keys_and_the_default_applies_elsewhere() {
        let s = signer();
        let t = trust(&[("h:5/a", &s.key)], None);
        let b = r("h:5/b/app:1");
        let d = t.decide(&Target::Docker(&b));
        assert_eq!(d.notice.as_deref(), Some("unsigned: no trust root for h:5/b/app"));
        assert!(verify(&d, &b, &digest(1), &Found::default()).unwrap().signatures.is_empty());
        let strict = trust(&[("h:5/a", &s.key)], Some(DefaultRule::Require));
        let d = strict.decide(&Target::Docker(&b));
        assert!(verify(&d, &b, &digest(1), &Found::default()).unwrap_err().to_string().contains("require"));
        let local = Target::Local { transport: "oci", path: std::path::Path::new("/srv/x") };
        assert_eq!(t.decide(&local).notice, None, "local files get no notice");
    }

    #[test]
    fn admit_follows_todays_keys() {
        let (s1, s2) = (signer(), signer());
        let img = r("h:5/a/app:1");
        let rec = TrustRecord {
            checked: chrono::Utc::now(),
            transport: "docker".into(),
            location: "h:5/a/app:1".into(),
            scope: "x".into(),
            signatures: vec![VerifiedSignature {
                kind: SignatureKind::Cosign,
                key_type: KeyType::P256,
                fingerprint: s1.key.fingerprint.clone(),
                identity: "h:5/a/app:1".into(),
            }],
        };
        let now = trust(&[("h:5/a", &s2.key)], None);
        let e = now.admit("h:5/a/app:1", &Target::Docker(&img), Some(&rec)).unwrap_err();
        assert!(e.to_string().contains("none of which husk trust prefix h:5/a trusts now"), "{e}");
        assert!(now.admit("x", &Target::Docker(&img), None).unwrap_err().to_string().contains("without a verified"));
        let none = trust(&[], None);
        assert!(none.admit("x", &Target::Docker(&img), None).is_ok());
        let strict = trust(&[], Some(DefaultRule::Require));
        assert!(strict.admit("x", &Target::Docker(&img), Some(&rec)).is_err());
    }

    #[test]
    fn a_prefix_whose_keys_all_expired_refuses() {
        let unusable = vec![crate::store::UnusableKey {
            prefix: "h:5/a".into(),
            path: "/k.gpg".into(),
            why: "OpenPGP key AB is expired (on 2020-01-02)".into(),
        }];
        let t = Trust::new(crate::store::Loaded { keys: vec![], unusable }, None, None, Registries::default());
        let img = r("h:5/a/app:1");
        let e = verify(&t.decide(&Target::Docker(&img)), &img, &digest(1), &Found::default()).unwrap_err();
        assert!(e.to_string().contains("no usable key is trusted for h:5/a: OpenPGP key AB is expired"), "{e}");
    }

    #[test]
    fn policy_and_trust_store_scopes_combine() {
        let s = signer();
        let p = Policy::parse(
            br#"{"default":[{"type":"reject"}],"transports":{"docker":{"h:5/a":[{"type":"reject"}]},
                 "oci":{"":[{"type":"insecureAcceptAnything"}]}}}"#,
            std::path::Path::new("/p.json"),
        )
        .unwrap();
        let t = Trust::new(
            crate::store::Loaded {
                keys: vec![TrustedKey { prefix: "h:5/a".into(), key: s.key.clone(), path: "/x".into() }],
                unusable: vec![],
            },
            Some(p),
            None,
            Registries::default(),
        );
        let img = r("h:5/a/app:1");
        let d = t.decide(&Target::Docker(&img));
        assert_eq!(d.scope, "husk trust prefix h:5/a and /p.json: scope h:5/a");
        assert_eq!(d.requirements.len(), 2);
        let d = t.decide(&Target::Docker(&r("q.io/x")));
        assert_eq!(d.scope, "/p.json: default");
        assert!(verify(&d, &r("q.io/x"), &digest(1), &Found::default()).is_err());
        let local = Target::Local { transport: "oci", path: std::path::Path::new("/srv/x") };
        assert_eq!(check_local(&t.decide(&local), "x", &local).unwrap().location, "/srv/x");
        let archive = Target::Local { transport: "oci-archive", path: std::path::Path::new("/srv/x.tar") };
        assert!(check_local(&t.decide(&archive), "x", &archive).is_err(), "the policy's default rejects");
    }
}
