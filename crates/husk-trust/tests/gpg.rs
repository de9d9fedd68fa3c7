//! GPG simple signing against signatures made by the real `gpg` (what skopeo's `--sign-by`
//! drives through gpgme): a signed, compressed OpenPGP message around the payload.

use std::path::Path;
use std::process::Command;

use husk_trust::keys::{parse_keys, verify_gpg, SigFailure};

struct Gpg {
    home: tempfile::TempDir,
}

/// gpg starts an agent per GNUPGHOME; it must not outlive the test.
impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf").env("GNUPGHOME", self.home.path()).args(["--kill", "all"]).status();
    }
}

impl Gpg {
    fn new(algo: &str) -> Gpg {
        let home = tempfile::tempdir().unwrap();
        let g = Gpg { home };
        g.run(&["--quick-gen-key", "husk test <test@husk.invalid>", algo, "sign", "never"], None);
        g
    }

    fn run(&self, args: &[&str], input: Option<&Path>) -> Vec<u8> {
        let mut c = Command::new("gpg");
        c.env("GNUPGHOME", self.home.path()).args([
            "--batch",
            "--yes",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
        ]);
        c.args(args);
        if let Some(i) = input {
            c.arg(i);
        }
        let o = c.output().expect("gpg is installed (scripts/install-deps.sh installs gnupg)");
        assert!(o.status.success(), "gpg {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        o.stdout
    }

    fn public(&self, armor: bool) -> Vec<u8> {
        self.run(if armor { &["--export", "--armor"] } else { &["--export"] }, None)
    }

    fn sign(&self, payload: &[u8], armor: bool) -> Vec<u8> {
        let f = self.home.path().join("payload");
        std::fs::write(&f, payload).unwrap();
        self.run(if armor { &["--sign", "--armor", "--output", "-"] } else { &["--sign", "--output", "-"] }, Some(&f))
    }
}

#[test]
fn gpg_signed_messages_verify_with_the_signers_key_only() {
    for algo in ["ed25519", "rsa2048"] {
        let signer = Gpg::new(algo);
        let other = Gpg::new("ed25519");
        let key = parse_keys(&signer.public(false)).unwrap().pop().unwrap();
        let armored_key = parse_keys(&signer.public(true)).unwrap().pop().unwrap();
        assert_eq!(key.fingerprint, armored_key.fingerprint);
        assert_eq!(key.user_ids, ["husk test <test@husk.invalid>"]);
        let other_key = parse_keys(&other.public(true)).unwrap().pop().unwrap();

        let payload = br#"{"critical":{}}"#;
        for armor in [false, true] {
            let sig = signer.sign(payload, armor);
            let (got, by) = verify_gpg(&[&other_key, &key], &sig).unwrap();
            assert_eq!(got, payload, "{algo}");
            assert_eq!(by.fingerprint, key.fingerprint);
            match verify_gpg(&[&other_key], &sig).unwrap_err() {
                SigFailure::UntrustedKey { issuer } => assert!(key.fingerprint.ends_with(&issuer[issuer.len() - 16..])),
                e => panic!("{algo}: {e:?}"),
            }
        }
        // A flipped byte inside the signed message: refused, never accepted.
        let mut sig = signer.sign(payload, false);
        let n = sig.len();
        sig[n - 5] ^= 0x40;
        assert!(verify_gpg(&[&key], &sig).is_err(), "{algo}: corrupted signature accepted");
        assert!(matches!(
            verify_gpg(&[&key], &sig[..n / 2]),
            Err(SigFailure::Malformed(_) | SigFailure::Invalid { .. })
        ));
    }
}

/// gpg refuses revoked and expired keys; so does husk, when the key is added and when a stored
/// key is read.
#[test]
fn revoked_and_expired_keys_are_refused() {
    let g = Gpg::new("ed25519");
    let fpr = parse_keys(&g.public(true)).unwrap().pop().unwrap().fingerprint;
    // Expired: a validity that ended a second after it began, backdated by gpg's --faked-system-time.
    let e = Gpg { home: tempfile::tempdir().unwrap() };
    e.run(
        &[
            "--faked-system-time",
            "20200101T000000",
            "--quick-gen-key",
            "old <old@husk.invalid>",
            "ed25519",
            "sign",
            "1d",
        ],
        None,
    );
    match parse_keys(&e.public(true)).unwrap_err() {
        husk_trust::keys::KeyError::Unusable { why, .. } => assert!(why.starts_with("expired (on 2020-01-02"), "{why}"),
        other => panic!("{other:?}"),
    }
    // Revoked: the certificate with its own revocation signature imported.
    let rev = g.home.path().join("openpgp-revocs.d").join(format!("{fpr}.rev"));
    let text = std::fs::read_to_string(&rev).unwrap().replace(":-----BEGIN", "-----BEGIN");
    let cert = g.home.path().join("rev.asc");
    std::fs::write(&cert, text).unwrap();
    g.run(&["--import"], Some(&cert));
    match parse_keys(&g.public(true)).unwrap_err() {
        husk_trust::keys::KeyError::Unusable { why, .. } => assert!(why.starts_with("revoked"), "{why}"),
        other => panic!("{other:?}"),
    }
}
