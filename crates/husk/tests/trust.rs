//! Image trust (issue 12): signatures verified at fetch against the loopback registry —
//! GPG simple signing written by Debian's `skopeo copy --sign-by` into a file:// lookaside
//! store, and cosign key-based signatures (P-256, Ed25519, RSA) in the registry — keys trusted
//! per prefix with `husk trust`, containers-policy.json honoured, and run refusing what
//! today's policy no longer accepts.

mod common;
#[path = "common/signing.rs"]
mod signing;

use std::path::{Path, PathBuf};

use common::{image, registry, Env};
use signing::{attach, copy, cosign_payload, manifest_digest, Alg, CosignKey, CosignLayer, Gpg};

/// An Env whose husk.toml points the trust settings into the test's own directory: no host
/// policy.json (unless `policy` is given) and a registries.d with a file:// lookaside store.
struct Trusting {
    env: Env,
    regd: PathBuf,
    lookaside: PathBuf,
}

impl Trusting {
    fn new(extra: &str) -> Trusting {
        let env = Env::new();
        let t = env.tmp.path();
        let (regd, lookaside) = (t.join("registries.d"), t.join("sigstore"));
        std::fs::create_dir_all(&regd).unwrap();
        std::fs::write(
            regd.join("test.yaml"),
            format!("docker:\n  {}:\n    lookaside: file://{}\n", registry(), lookaside.display()),
        )
        .unwrap();
        std::fs::write(
            t.join("etc/husk.toml"),
            format!(
                "[registries.\"{}\"]\ninsecure = [\"http\"]\n[trust]\npolicy = \"{}\"\nregistries_d = \"{}\"\n{extra}",
                registry(),
                t.join("no-policy.json").display(),
                regd.display()
            ),
        )
        .unwrap();
        Trusting { env, regd, lookaside }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.env.tmp.path().join(p)
    }

    fn trust(&self, prefix: &str, key: &Path) -> String {
        self.env.ok(&["trust", "add", "--yes", "--prefix", prefix, key.to_str().unwrap()]).trim().to_string()
    }

    /// Fetches `reference`, expecting refusal; returns stderr and checks that no name points
    /// at it afterwards.
    fn refused(&self, reference: &str, why: &str) -> String {
        let err = self.env.fails(&["fetch", "-q", reference], 121);
        assert!(
            err.contains("refused by the trust policy") && err.contains(why),
            "{reference}: expected {why:?}:\n{err}"
        );
        let list = self.env.json(&["image", "list", "--format", "json"]);
        for i in list.as_array().unwrap() {
            assert!(!i["names"].as_array().unwrap().is_empty(), "a refused image left a record: {list}");
            assert!(
                !i["names"].to_string().contains(&format!("\"{reference}\"")),
                "a refused image got a name: {list}"
            );
        }
        err
    }

    /// The trust record `image list` shows for `name`.
    fn trust_of(&self, name: &str) -> serde_json::Value {
        let list = self.env.json(&["image", "list", "--format", "json"]);
        list.as_array().unwrap().iter().find_map(|i| i["trust"].get(name).cloned()).unwrap_or_default()
    }
}

fn at(repo: &str) -> String {
    format!("{}/{repo}:latest", registry())
}

#[test]
fn gpg_signatures_written_by_skopeo_are_verified() {
    let t = Trusting::new("");
    let (good, other) = (Gpg::new(t.env.tmp.path(), "signer"), Gpg::new(t.env.tmp.path(), "stranger"));
    let src = image("busybox");
    let prefix = format!("{}/trust-gpg", registry());
    let fp = t.trust(&prefix, &good.export(&t.path("signer.asc")));
    assert_eq!(fp, good.fingerprint);
    let listed = t.env.json(&["trust", "list", "--format", "json"]);
    assert_eq!(listed[0]["prefix"], prefix.as_str());
    assert_eq!(listed[0]["type"], "gpg");
    assert_eq!(listed[0]["fingerprint"], fp.as_str());

    // Valid: fetched, recorded, listed, runs.
    good.sign_copy(&t.regd, &src, &at("trust-gpg/app"));
    let out = t.env.husk(&["fetch", "-q", &at("trust-gpg/app")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("unsigned"), "a verified image gets no notice");
    let rec = t.trust_of(&at("trust-gpg/app"));
    assert_eq!(rec["signatures"][0]["fingerprint"], fp.as_str(), "{rec}");
    assert_eq!(rec["signatures"][0]["kind"], "gpg");
    assert_eq!(rec["signatures"][0]["identity"], at("trust-gpg/app").as_str());
    assert_eq!(rec["scope"], format!("husk trust prefix {prefix}").as_str());
    let table = t.env.ok(&["image", "list"]);
    assert!(table.contains(&format!("gpg {}", &fp[fp.len() - 16..])), "{table}");
    let cat = t.env.json(&["image", "cat-manifest", "--format", "json", &at("trust-gpg/app")]);
    assert_eq!(cat["trust"][at("trust-gpg/app")]["signatures"][0]["fingerprint"], fp.as_str());
    assert_eq!(t.env.ok(&["run", "--net=none", &at("trust-gpg/app"), "--", "echo", "ok"]).trim(), "ok");

    // The same lookaside store over http://, as a registry's signature server would serve it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = std::process::Command::new("python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string(), "--directory"])
        .arg(&t.lookaside)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let http_regd = t.path("registries-http.d");
    std::fs::create_dir_all(&http_regd).unwrap();
    std::fs::write(
        http_regd.join("t.yaml"),
        format!("docker:\n  {}:\n    lookaside: http://127.0.0.1:{port}\n", registry()),
    )
    .unwrap();
    let toml = std::fs::read_to_string(t.path("etc/husk.toml")).unwrap();
    std::fs::write(
        t.path("etc/husk.toml"),
        toml.replace(&t.regd.display().to_string(), &http_regd.display().to_string()),
    )
    .unwrap();
    let up = (0..50).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(up, "the lookaside http server did not start");
    let fetched = t.env.husk(&["fetch", "-q", "--pull-policy=update", &at("trust-gpg/app")]);
    let _ = server.kill();
    let _ = server.wait();
    assert!(fetched.status.success(), "over http: {}", String::from_utf8_lossy(&fetched.stderr));
    assert_eq!(t.trust_of(&at("trust-gpg/app"))["signatures"][0]["fingerprint"], fp.as_str());
    std::fs::write(t.path("etc/husk.toml"), toml).unwrap();

    // A key nobody trusts.
    other.sign_copy(&t.regd, &src, &at("trust-gpg/stranger"));
    t.refused(&at("trust-gpg/stranger"), "which is not trusted here");

    // The app's signature copied to another repository: a valid signature for another name.
    copy(&src, &at("trust-gpg/copied"));
    let digest = manifest_digest(&at("trust-gpg/app"));
    let sigdir = |repo: &str| t.lookaside.join(format!("{repo}@sha256={}", digest.trim_start_matches("sha256:")));
    std::fs::create_dir_all(sigdir("trust-gpg/copied")).unwrap();
    std::fs::copy(sigdir("trust-gpg/app").join("signature-1"), sigdir("trust-gpg/copied").join("signature-1")).unwrap();
    t.refused(&at("trust-gpg/copied"), "does not match");

    // A corrupted signature file.
    good.sign_copy(&t.regd, &src, &at("trust-gpg/corrupt"));
    let f = sigdir("trust-gpg/corrupt").join("signature-1");
    let mut b = std::fs::read(&f).unwrap();
    let n = b.len();
    b[n - 8] ^= 0x55;
    std::fs::write(&f, b).unwrap();
    t.refused(&at("trust-gpg/corrupt"), "signature-1");

    // No signature at all, under a trusted prefix.
    copy(&src, &at("trust-gpg/unsigned"));
    let err = t.refused(&at("trust-gpg/unsigned"), "no signature found");
    assert!(err.contains(&format!("lookaside store file://{}", t.lookaside.display())), "{err}");

    // The same key from policy.json (signedBy) instead of husk's trust store.
    let key = good.export(&t.path("signer.gpg"));
    let policy = t.path("policy.json");
    std::fs::write(
        &policy,
        serde_json::json!({
            "default": [{"type": "reject"}],
            "transports": {"docker": {prefix.clone(): [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": key}]}},
        })
        .to_string(),
    )
    .unwrap();
    t.env.ok(&["trust", "rm", &fp]);
    let p = format!("--policy={}", policy.display());
    t.env.ok(&[&p, "fetch", "-q", "--pull-policy=update", &at("trust-gpg/app")]);
    let err = t.env.fails(&[&p, "fetch", "-q", &src], 121);
    assert!(err.contains("rejects it"), "{err}");
}

#[test]
fn cosign_signatures_in_the_registry_are_verified() {
    let t = Trusting::new("");
    let dir = t.env.tmp.path();
    let (key, stranger) = (CosignKey::new(dir, "cosign", Alg::P256), CosignKey::new(dir, "stranger", Alg::P256));
    let src = image("busybox");
    let reg = registry();
    let prefix = format!("{reg}/trust-cosign");
    let fp = t.trust(&prefix, &key.public);
    assert!(fp.starts_with("SHA256:"), "{fp}");
    let digest = manifest_digest(&src);
    // Each case: a repository, its signature layers.
    let case = |repo: &str, layers: Vec<CosignLayer>| {
        copy(&src, &at(repo));
        if !layers.is_empty() {
            attach(&reg, repo, &digest, &layers);
        }
        at(repo)
    };
    let payload = |repo: &str| cosign_payload(&at(repo), &digest);

    let ok = case("trust-cosign/ok", vec![CosignLayer::signed(&key, payload("trust-cosign/ok"))]);
    t.env.ok(&["fetch", "-q", &ok]);
    let rec = t.trust_of(&ok);
    assert_eq!(rec["signatures"][0]["fingerprint"], fp.as_str(), "{rec}");
    assert_eq!(rec["signatures"][0]["kind"], "cosign");
    assert_eq!(rec["signatures"][0]["key_type"], "p256");

    let other_digest = format!("sha256:{}", "0".repeat(64));
    let r = case(
        "trust-cosign/digest",
        vec![CosignLayer::signed(&key, cosign_payload(&at("trust-cosign/digest"), &other_digest))],
    );
    t.refused(&r, "is for manifest sha256:000");

    let r = case("trust-cosign/repo", vec![CosignLayer::signed(&key, payload("trust-cosign/ok"))]);
    t.refused(&r, "does not match");

    let mut tampered = CosignLayer::signed(&key, payload("trust-cosign/tampered"));
    tampered.payload = String::from_utf8(tampered.payload).unwrap().replace("husk tests", "husk Tests").into_bytes();
    let r = case("trust-cosign/tampered", vec![tampered]);
    t.refused(&r, "does not verify");

    let mut corrupt = CosignLayer::signed(&key, payload("trust-cosign/corrupt"));
    {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut raw = b64.decode(corrupt.signature.as_ref().unwrap()).unwrap();
        let n = raw.len();
        raw[n - 3] ^= 0x10; // inside the DER's s value: still DER, no longer the signature
        corrupt.signature = Some(b64.encode(raw));
    }
    let r = case("trust-cosign/corrupt", vec![corrupt]);
    t.refused(&r, "does not verify");

    let r = case("trust-cosign/stranger", vec![CosignLayer::signed(&stranger, payload("trust-cosign/stranger"))]);
    t.refused(&r, "does not verify with any of the 1 trusted key(s)");

    let r = case(
        "trust-cosign/two",
        vec![
            CosignLayer::signed(&stranger, payload("trust-cosign/two")),
            CosignLayer::signed(&key, payload("trust-cosign/two")),
        ],
    );
    t.env.ok(&["fetch", "-q", &r]);
    assert_eq!(t.trust_of(&r)["signatures"][0]["fingerprint"], fp.as_str());

    let r = case("trust-cosign/missing", vec![]);
    let err = t.refused(&r, "no signature found");
    assert!(err.contains(&format!("the registry tag sha256-{}.sig", digest.trim_start_matches("sha256:"))), "{err}");

    let keyless = CosignLayer {
        payload: payload("trust-cosign/keyless"),
        signature: None,
        annotations: vec![("dev.sigstore.cosign/certificate".into(), "-----BEGIN CERTIFICATE-----".into())],
    };
    let r = case("trust-cosign/keyless", vec![keyless]);
    t.refused(&r, "keyless (Fulcio/Rekor)");

    // Ed25519 and RSA keys, trusted for their own prefixes.
    for (alg, repo) in [(Alg::Ed25519, "trust-ed/app"), (Alg::Rsa, "trust-rsa/app")] {
        let k = CosignKey::new(dir, repo.split('/').next().unwrap(), alg);
        let fp = t.trust(&format!("{reg}/{}", repo.split('/').next().unwrap()), &k.public);
        let r = case(repo, vec![CosignLayer::signed(&k, payload(repo))]);
        t.env.ok(&["fetch", "-q", &r]);
        assert_eq!(t.trust_of(&r)["signatures"][0]["fingerprint"], fp.as_str(), "{alg:?}");
    }

    // A key for one prefix does not vouch for a sibling: that one has no trust root.
    let sibling = case("trust-cosign-b/app", vec![CosignLayer::signed(&key, payload("trust-cosign-b/app"))]);
    let o = t.env.husk(&["fetch", "-q", &sibling]);
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim(), format!("unsigned: no trust root for {reg}/trust-cosign-b/app"), "{err}");
    assert!(t.trust_of(&sibling)["signatures"].as_array().unwrap().is_empty());
}

#[test]
fn the_default_the_policy_file_and_insecure_options_decide_unsigned_images() {
    let t = Trusting::new("default = \"require\"\n");
    let src = image("busybox");
    let err = t.refused(&src, "default = \"require\"");
    assert!(err.contains("hint: see the trusted keys with `husk trust list`"), "{err}");

    // --insecure-options=image: fetched, loudly; but run (without it) refuses what nothing vouches for.
    let o = t.env.husk(&["--insecure-options=image", "fetch", "-q", &src]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("signatures are NOT verified"));
    let err = t.env.fails(&["run", "--net=none", &src, "--", "true"], 121);
    assert!(err.contains("require"), "{err}");
    t.env.ok(&["--insecure-options=image", "run", "--net=none", &src, "--", "true"]);

    // Local images follow the transports' rules: refused under `require`, accepted where the
    // policy accepts the oci transport.
    let layout = format!("oci:{}:latest", common::images_dir().join("busybox").display());
    let err = t.env.fails(&["fetch", "-q", &layout], 121);
    assert!(err.contains("refused by the trust policy"), "{err}");
    let policy = t.path("policy.json");
    std::fs::write(
        &policy,
        r#"{"default":[{"type":"reject"}],"transports":{"oci":{"":[{"type":"insecureAcceptAnything"}]}}}"#,
    )
    .unwrap();
    let p = format!("--policy={}", policy.display());
    let mut toml = std::fs::read_to_string(t.path("etc/husk.toml")).unwrap();
    toml = toml.replace("default = \"require\"\n", "");
    std::fs::write(t.path("etc/husk.toml"), &toml).unwrap();
    t.env.ok(&[&p, "fetch", "-q", &layout]);
    let err = t.env.fails(&[&p, "fetch", "-q", "--pull-policy=update", &src], 121);
    assert!(err.contains("rejects it"), "the policy's reject default: {err}");
    let err = t.env.fails(&["--policy=/nonexistent/policy.json", "fetch", "-q", &src], 120);
    assert!(err.contains("/nonexistent/policy.json does not exist"), "{err}");
    std::fs::write(&policy, r#"{"default":[{"type":"signedSomehow"}]}"#).unwrap();
    let err = t.env.fails(&[&p, "fetch", "-q", &src], 120);
    assert!(err.contains("unknown requirement type \"signedSomehow\""), "{err}");
}

#[test]
fn removing_a_key_tightens_run_and_trust_add_asks_first() {
    let t = Trusting::new("");
    let dir = t.env.tmp.path();
    let (k1, k2) = (CosignKey::new(dir, "k1", Alg::P256), CosignKey::new(dir, "k2", Alg::P256));
    let reg = registry();
    let prefix = format!("{reg}/trust-tight");
    let repo = "trust-tight/app";
    copy(&image("busybox"), &at(repo));
    let digest = manifest_digest(&at(repo));
    attach(&reg, repo, &digest, &[CosignLayer::signed(&k1, cosign_payload(&at(repo), &digest))]);

    // Not on a terminal: refused without --yes, and nothing written.
    let err = t.env.fails(&["trust", "add", "--prefix", &prefix, k1.public.to_str().unwrap()], 120);
    assert!(err.contains("pass --yes") && err.contains("SHA256:"), "{err}");
    assert!(t.env.json(&["trust", "list", "--format", "json"]).as_array().unwrap().is_empty());
    let err = t.env.fails(&["trust", "add", "--yes", "--prefix", "busybox", k1.public.to_str().unwrap()], 120);
    assert!(err.contains("invalid prefix"), "{err}");
    let err = t.env.fails(&["trust", "add", "--yes", "--prefix", &prefix, k1.private.to_str().unwrap()], 120);
    assert!(err.contains("secret key"), "{err}");

    // On a terminal it asks: "n" leaves nothing, "y" trusts.
    for (answer, trusted) in [("n", false), ("y", true)] {
        let mut cmd = t.env.cmd();
        cmd.args(["trust", "add", "--prefix", &prefix, k1.public.to_str().unwrap()]);
        let (mut child, pty) = husk_sys::tty::spawn_on_pty(&mut cmd, 24, 80).unwrap();
        let mut master = std::fs::File::from(pty.master.try_clone().unwrap());
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&seen).contains("[y/N]") {
            use std::io::Read as _;
            let n = master.read(&mut buf).unwrap();
            assert!(n > 0, "no prompt: {}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
        assert!(String::from_utf8_lossy(&seen).contains("p256 key SHA256:"), "the fingerprint is shown first");
        std::io::Write::write_all(&mut master, format!("{answer}\n").as_bytes()).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.success(), trusted, "{answer}");
        let n = t.env.json(&["trust", "list", "--format", "json"]).as_array().unwrap().len();
        assert_eq!(n, usize::from(trusted), "{answer}");
    }
    // Adding it again (with --yes) rewrites the same file.
    let fp1 = t.trust(&prefix, &k1.public);
    assert_eq!(t.env.json(&["trust", "list", "--format", "json"]).as_array().unwrap().len(), 1);
    t.env.ok(&["fetch", "-q", &at(repo)]);
    assert_eq!(t.env.ok(&["run", "--net=none", &at(repo), "--", "echo", "ok"]).trim(), "ok");
    // The prefix now trusts k2 only: the stored image, verified with k1, no longer runs.
    t.trust(&prefix, &k2.public);
    t.env.ok(&["trust", "rm", "--prefix", &prefix, &fp1]);
    let err = t.env.fails(&["run", "--net=none", &at(repo), "--", "true"], 121);
    assert!(err.contains("none of which husk trust prefix") && err.contains("fetch it again"), "{err}");
    let err = t.env.fails(&["fetch", "-q", "--pull-policy=update", &at(repo)], 121);
    assert!(err.contains("does not verify"), "{err}");
    let err = t.env.fails(&["trust", "rm", &fp1], 120);
    assert!(err.contains("no trusted key matches"), "{err}");
}
