//! Gathering the signatures a trust [`Decision`] needs, for one manifest: GPG signatures from
//! the lookaside store registries.d names (`file://` or `http(s)://`), cosign signatures from
//! the registry's `sha256-HEX.sig` tag. Checking them is husk-trust's (pure) business.

use std::io::Read as _;

use husk_trust::{CosignSignature, Decision, Found, GpgSignature, SignatureKind, Trust};
use husk_types::{Digest, Reference};

use crate::error::FetchError;
use crate::registry::Registry;

/// At most this many GPG signatures per manifest are read (containers/image reads until the
/// first missing one; a bound keeps a hostile store from making us read forever).
const MAX_SIGNATURES: usize = 64;
/// A signature (or a cosign payload) larger than this is refused.
pub const MAX_SIGNATURE_SIZE: u64 = 4 << 20;

const COSIGN_LAYER: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
const COSIGN_SIGNATURE: &str = "dev.cosignproject.cosign/signature";
const COSIGN_CERTIFICATE: &str = "dev.sigstore.cosign/certificate";
const COSIGN_BUNDLE: &str = "dev.sigstore.cosign/bundle";

fn err(image: &Reference, why: String) -> FetchError {
    FetchError::Signatures { image: image.to_string(), why }
}

/// Reads what `decision` needs.
pub fn gather(
    trust: &Trust,
    decision: &Decision,
    reg: &Registry,
    image: &Reference,
    digest: &Digest,
) -> Result<Found, FetchError> {
    let mut found = Found::default();
    if decision.needs(SignatureKind::Gpg) {
        let base = trust.registries.lookaside(image);
        found.looked.push(format!("the lookaside store {base}"));
        for n in 1..=MAX_SIGNATURES {
            let url = husk_trust::registries::signature_url(&base, image, digest, n);
            match read_url(reg, &url).map_err(|why| err(image, format!("{url}: {why}")))? {
                Some(bytes) => found.gpg.push(GpgSignature { origin: url, bytes }),
                None => break,
            }
        }
    }
    if decision.needs(SignatureKind::Cosign) {
        let tag = format!("{}-{}.sig", digest.algorithm(), digest.hex());
        found.looked.push(format!("the registry tag {tag}"));
        if let Some(manifest) = reg.tagged_manifest(&tag)? {
            found.cosign = cosign_layers(reg, image, &tag, &manifest)?;
        }
    }
    Ok(found)
}

fn cosign_layers(
    reg: &Registry,
    image: &Reference,
    tag: &str,
    manifest: &[u8],
) -> Result<Vec<CosignSignature>, FetchError> {
    let m: oci_spec::image::ImageManifest = serde_json::from_slice(manifest)
        .map_err(|e| err(image, format!("the signature manifest {tag} is invalid: {e}")))?;
    let mut out = Vec::new();
    for (i, layer) in m.layers().iter().enumerate() {
        if layer.media_type().to_string() != COSIGN_LAYER {
            continue;
        }
        let origin = format!("{tag} layer {}", i + 1);
        if layer.size() > MAX_SIGNATURE_SIZE {
            return Err(err(image, format!("{origin}: the payload is {} bytes, more than husk reads", layer.size())));
        }
        let d: Digest = layer.digest().to_string().parse().map_err(|e| err(image, format!("{origin}: {e}")))?;
        let payload = reg.small_blob(&d, layer.size())?;
        let ann = layer.annotations().clone().unwrap_or_default();
        out.push(CosignSignature {
            origin,
            payload,
            signature: ann.get(COSIGN_SIGNATURE).cloned(),
            keyless: ann.contains_key(COSIGN_CERTIFICATE) || ann.contains_key(COSIGN_BUNDLE),
        });
    }
    Ok(out)
}

/// A lookaside file: `Ok(None)` when it does not exist (the end of the list).
fn read_url(reg: &Registry, url: &str) -> Result<Option<Vec<u8>>, String> {
    if let Some(path) = url.strip_prefix("file://") {
        let f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let mut buf = Vec::new();
        f.take(MAX_SIGNATURE_SIZE + 1).read_to_end(&mut buf).map_err(|e| e.to_string())?;
        if buf.len() as u64 > MAX_SIGNATURE_SIZE {
            return Err("larger than a signature can be".into());
        }
        return Ok(Some(buf));
    }
    if url.starts_with("http://") || url.starts_with("https://") {
        return reg.http_get(url, MAX_SIGNATURE_SIZE);
    }
    Err("a lookaside URL must be file://, http:// or https://".into())
}
