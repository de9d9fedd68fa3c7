//! The test signers: GPG simple signing through Debian's `skopeo copy --sign-by` (a throwaway
//! key per test in its own GNUPGHOME), and cosign key-based signatures made with `openssl`
//! (P-256, Ed25519, RSA keys generated per run) and pushed to the loopback registry in cosign's
//! layout: an OCI manifest under the tag `sha256-HEX.sig` whose layers are simple-signing
//! payloads, each with its signature in the `dev.cosignproject.cosign/signature` annotation.
//! Nothing is checked in but this code.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use sha2::Digest as _;

fn run(what: &str, c: &mut Command) -> Vec<u8> {
    let o = c.output().unwrap_or_else(|e| panic!("{what}: {e} (scripts/install-deps.sh installs it)"));
    assert!(o.status.success(), "{what} failed: {}", String::from_utf8_lossy(&o.stderr));
    o.stdout
}

pub fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

/// A GPG key of its own, and skopeo to sign with it.
pub struct Gpg {
    pub home: PathBuf,
    pub fingerprint: String,
}

impl Gpg {
    pub fn new(dir: &Path, name: &str) -> Gpg {
        let home = dir.join(format!("gnupg-{name}"));
        std::fs::create_dir_all(&home).unwrap();
        std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let mut g = Gpg { home, fingerprint: String::new() };
        g.gpg(&[
            "--passphrase",
            "",
            "--quick-gen-key",
            &format!("{name} <{name}@husk.invalid>"),
            "ed25519",
            "sign",
            "never",
        ]);
        let list = String::from_utf8(g.gpg(&["--list-keys", "--with-colons"])).unwrap();
        g.fingerprint = list.lines().find(|l| l.starts_with("fpr:")).unwrap().split(':').nth(9).unwrap().to_string();
        g
    }

    pub fn gpg(&self, args: &[&str]) -> Vec<u8> {
        run(
            "gpg",
            Command::new("gpg")
                .env("GNUPGHOME", &self.home)
                .args(["--batch", "--yes", "--pinentry-mode", "loopback"])
                .args(args),
        )
    }

    /// The armored public key, written to `dir/NAME.asc`.
    pub fn export(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.gpg(&["--export", "--armor"])).unwrap();
        path.to_path_buf()
    }

    /// `skopeo copy --sign-by`: `src` to `dest` (docker references), the signature written to
    /// the lookaside store `registries_d` names for the destination.
    pub fn sign_copy(&self, registries_d: &Path, src: &str, dest: &str) {
        run(
            "skopeo copy --sign-by",
            Command::new("skopeo").env("GNUPGHOME", &self.home).args([
                "copy",
                "-q",
                "--src-tls-verify=false",
                "--dest-tls-verify=false",
                "--registries.d",
                registries_d.to_str().unwrap(),
                "--sign-by",
                &self.fingerprint,
                &format!("docker://{src}"),
                &format!("docker://{dest}"),
            ]),
        );
    }
}

/// gpg starts an agent per GNUPGHOME; it must not outlive the test.
impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf").env("GNUPGHOME", &self.home).args(["--kill", "all"]).status();
    }
}

/// An unsigned copy of an image within the loopback registry.
pub fn copy(src: &str, dest: &str) {
    run(
        "skopeo copy",
        Command::new("skopeo").args([
            "copy",
            "-q",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &format!("docker://{src}"),
            &format!("docker://{dest}"),
        ]),
    );
}

/// The digest of the manifest `reference` names in the registry.
pub fn manifest_digest(reference: &str) -> String {
    let raw = run(
        "skopeo inspect --raw",
        Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false", &format!("docker://{reference}")]),
    );
    sha256(&raw)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Alg {
    P256,
    Ed25519,
    Rsa,
}

/// A cosign-style key pair, made by openssl.
pub struct CosignKey {
    pub private: PathBuf,
    pub public: PathBuf,
    pub alg: Alg,
}

impl CosignKey {
    pub fn new(dir: &Path, name: &str, alg: Alg) -> CosignKey {
        let private = dir.join(format!("{name}.key"));
        let public = dir.join(format!("{name}.pub"));
        let spec: &[&str] = match alg {
            Alg::P256 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            Alg::Ed25519 => &["-algorithm", "ed25519"],
            Alg::Rsa => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        };
        run("openssl genpkey", Command::new("openssl").arg("genpkey").args(spec).arg("-out").arg(&private));
        run(
            "openssl pkey -pubout",
            Command::new("openssl").args(["pkey", "-pubout", "-in"]).arg(&private).arg("-out").arg(&public),
        );
        CosignKey { private, public, alg }
    }

    /// The base64 signature over `payload`, as cosign writes it (ECDSA: DER over SHA-256; RSA:
    /// PKCS#1 v1.5 over SHA-256; Ed25519: over the payload itself).
    pub fn sign(&self, payload: &[u8]) -> String {
        let dir = self.private.parent().unwrap();
        let input = dir.join(format!("payload-{}", rand_name()));
        std::fs::write(&input, payload).unwrap();
        let mut c = Command::new("openssl");
        match self.alg {
            Alg::Ed25519 => c.args(["pkeyutl", "-sign", "-rawin", "-inkey"]).arg(&self.private).arg("-in").arg(&input),
            _ => c.args(["dgst", "-sha256", "-sign"]).arg(&self.private).arg(&input),
        };
        let sig = run("openssl sign", &mut c);
        base64::engine::general_purpose::STANDARD.encode(sig)
    }
}

fn rand_name() -> String {
    format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos())
}

/// A simple-signing payload of cosign's type.
pub fn cosign_payload(reference: &str, digest: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "critical": {
            "identity": {"docker-reference": reference},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature",
        },
        "optional": {"creator": "husk tests"},
    }))
    .unwrap()
}

fn curl(args: &[&str]) -> (String, String) {
    let o = Command::new("curl")
        .args(["-sS", "-D", "-", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    let code = out.lines().last().unwrap_or_default().to_string();
    (out, code)
}

/// Pushes a blob to `registry/repo`; returns its digest.
pub fn push_blob(registry: &str, repo: &str, data: &[u8]) -> String {
    let digest = sha256(data);
    let (headers, code) = curl(&["-X", "POST", &format!("http://{registry}/v2/{repo}/blobs/uploads/")]);
    assert_eq!(code, "202", "{headers}");
    let location = headers
        .lines()
        .find_map(|l| l.strip_prefix("Location: ").or_else(|| l.strip_prefix("location: ")))
        .unwrap()
        .trim()
        .to_string();
    let location = if location.starts_with('/') { format!("http://{registry}{location}") } else { location };
    let sep = if location.contains('?') { '&' } else { '?' };
    let file = std::env::temp_dir().join(format!("husk-blob-{}", rand_name()));
    std::fs::write(&file, data).unwrap();
    let (h, code) = curl(&[
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/octet-stream",
        "--data-binary",
        &format!("@{}", file.display()),
        &format!("{location}{sep}digest={digest}"),
    ]);
    let _ = std::fs::remove_file(&file);
    assert_eq!(code, "201", "{h}");
    digest
}

/// Pushes `manifest` (an OCI image manifest) to `registry/repo:tag`.
pub fn push_manifest(registry: &str, repo: &str, tag: &str, manifest: &[u8]) {
    let file = std::env::temp_dir().join(format!("husk-manifest-{}", rand_name()));
    std::fs::write(&file, manifest).unwrap();
    let (h, code) = curl(&[
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/vnd.oci.image.manifest.v1+json",
        "--data-binary",
        &format!("@{}", file.display()),
        &format!("http://{registry}/v2/{repo}/manifests/{tag}"),
    ]);
    let _ = std::fs::remove_file(&file);
    assert_eq!(code, "201", "{h}");
}

/// One layer of a cosign signature manifest.
pub struct CosignLayer {
    pub payload: Vec<u8>,
    pub signature: Option<String>,
    /// Extra annotations (a Fulcio certificate, for a keyless signature).
    pub annotations: Vec<(String, String)>,
}

impl CosignLayer {
    pub fn signed(key: &CosignKey, payload: Vec<u8>) -> CosignLayer {
        let signature = Some(key.sign(&payload));
        CosignLayer { payload, signature, annotations: vec![] }
    }
}

/// Attaches cosign signatures to `registry/repo@digest`: the `sha256-HEX.sig` tag.
pub fn attach(registry: &str, repo: &str, digest: &str, layers: &[CosignLayer]) {
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        let d = push_blob(registry, repo, &l.payload);
        let mut ann = serde_json::Map::new();
        if let Some(s) = &l.signature {
            ann.insert("dev.cosignproject.cosign/signature".into(), s.clone().into());
        }
        for (k, v) in &l.annotations {
            ann.insert(k.clone(), v.clone().into());
        }
        descs.push(serde_json::json!({
            "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
            "size": l.payload.len(), "digest": d, "annotations": ann,
        }));
        diff_ids.push(d);
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "", "os": "", "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let cd = push_blob(registry, repo, &config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": config.len(), "digest": cd},
        "layers": descs,
    }))
    .unwrap();
    let tag = format!("sha256-{}.sig", digest.trim_start_matches("sha256:"));
    push_manifest(registry, repo, &tag, &manifest);
}
