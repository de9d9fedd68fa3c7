//! containers-registries.d(5): where a registry's GPG signatures are kept ("lookaside").
//!
//! ```yaml
//! default-docker:
//!   lookaside: file:///var/lib/containers/sigstore
//! docker:
//!   registry.example.com:5000/ns:
//!     lookaside: https://sigs.example.com/ns
//! ```
//! The most specific `docker` entry (reference, repository, its namespaces, host, `*.domain`)
//! with a lookaside wins, then `default-docker`, then `file:///var/lib/containers/sigstore` (what
//! containers/image uses for root). `sigstore` is the old name of `lookaside`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use husk_types::{Digest, Reference};
use serde::Deserialize;

pub const DEFAULT_LOOKASIDE: &str = "file:///var/lib/containers/sigstore";
pub const DEFAULT_DIR: &str = "/etc/containers/registries.d";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Entry {
    lookaside: Option<String>,
    sigstore: Option<String>,
    // Where signers write; readers ignore it.
    #[allow(dead_code)]
    lookaside_staging: Option<String>,
    #[allow(dead_code)]
    sigstore_staging: Option<String>,
    #[allow(dead_code)]
    use_sigstore_attachments: Option<bool>,
}

impl Entry {
    fn url(&self) -> Option<&str> {
        self.lookaside.as_deref().or(self.sigstore.as_deref())
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct File {
    default_docker: Option<Entry>,
    #[serde(default)]
    docker: BTreeMap<String, Entry>,
}

/// The merged configuration of a registries.d directory.
#[derive(Debug, Clone, Default)]
pub struct Registries {
    default_docker: Option<Entry>,
    docker: BTreeMap<String, Entry>,
}

impl Registries {
    /// Reads every `*.yaml` of `dir` (a missing directory is an empty configuration). The same
    /// scope in two files is an error naming both, as in containers/image.
    pub fn load(dir: &Path) -> Result<Registries, String> {
        let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(rd) => rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "yaml")).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Registries::default()),
            Err(e) => return Err(format!("cannot list {}: {e}", dir.display())),
        };
        files.sort();
        let mut out = Registries::default();
        let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
        for f in files {
            let text = std::fs::read_to_string(&f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
            let parsed: File = if text.trim().is_empty() {
                File::default()
            } else {
                serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: {e}", f.display()))?
            };
            if let Some(d) = parsed.default_docker {
                if let Some(prev) = seen.insert("default-docker".into(), f.clone()) {
                    return Err(format!("default-docker is set in both {} and {}", prev.display(), f.display()));
                }
                out.default_docker = Some(d);
            }
            for (scope, e) in parsed.docker {
                if let Some(prev) = seen.insert(scope.clone(), f.clone()) {
                    return Err(format!(
                        "docker scope {scope:?} is set in both {} and {}",
                        prev.display(),
                        f.display()
                    ));
                }
                out.docker.insert(scope, e);
            }
        }
        Ok(out)
    }

    /// The lookaside base URL for `r`: its scopes are matched as policy.json's are.
    pub fn lookaside(&self, r: &Reference) -> String {
        crate::policy::docker_scopes(r)
            .iter()
            .find_map(|s| self.docker.get(s).and_then(Entry::url))
            .or_else(|| self.default_docker.as_ref().and_then(Entry::url))
            .unwrap_or(DEFAULT_LOOKASIDE)
            .trim_end_matches('/')
            .to_string()
    }
}

/// Where signature `n` (from 1) of `r`'s manifest `digest` is: `BASE/REPO@sha256=HEX/signature-N`,
/// REPO being the repository path without the host.
pub fn signature_url(base: &str, r: &Reference, digest: &Digest, n: usize) -> String {
    format!("{base}/{}@{}={}/signature-{n}", r.repository, digest.algorithm(), digest.hex())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        Reference::parse(s).unwrap().normalized()
    }

    #[test]
    fn the_most_specific_lookaside_wins() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("a.yaml"),
            "default-docker:\n  lookaside: file:///def\ndocker:\n  h:5:\n    lookaside: file:///host/\n  h:5/ns/repo:\n    sigstore: https://s.example/r\n",
        )
        .unwrap();
        std::fs::write(d.path().join("ignored.txt"), "not: [yaml").unwrap();
        let reg = Registries::load(d.path()).unwrap();
        assert_eq!(reg.lookaside(&r("h:5/ns/repo:1")), "https://s.example/r");
        assert_eq!(reg.lookaside(&r("h:5/ns/other")), "file:///host");
        assert_eq!(reg.lookaside(&r("q.example/x")), "file:///def");
        assert_eq!(Registries::default().lookaside(&r("q.example/x")), DEFAULT_LOOKASIDE);
        assert!(Registries::load(Path::new("/nonexistent")).is_ok());
    }

    #[test]
    fn duplicate_scopes_and_bad_yaml_name_the_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.yaml"), "docker:\n  h:\n    lookaside: file:///a\n").unwrap();
        std::fs::write(d.path().join("b.yaml"), "docker:\n  h:\n    lookaside: file:///b\n").unwrap();
        let e = Registries::load(d.path()).unwrap_err();
        assert!(e.contains("a.yaml") && e.contains("b.yaml"), "{e}");
        std::fs::write(d.path().join("b.yaml"), "docker: [").unwrap();
        assert!(Registries::load(d.path()).unwrap_err().contains("b.yaml"));
    }

    #[test]
    fn signature_urls_follow_containers_image() {
        let dg: Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        assert_eq!(
            signature_url("file:///s", &r("h:5/ns/repo:1"), &dg, 2),
            format!("file:///s/ns/repo@sha256={}/signature-2", "ab".repeat(32))
        );
    }
}
