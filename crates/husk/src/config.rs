//! husk.toml: per-registry settings and paths. Looked up in the config dir (`--config-dir`,
//! default /etc/husk). Missing file = defaults.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub registries: BTreeMap<String, RegistryConfig>,
    #[serde(default)]
    pub paths: Paths,
    #[serde(default)]
    pub trust: TrustConfig,
    #[serde(default)]
    pub stage1: Stage1Config,
}

/// `[stage1]`: settings of the stage1 flavors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage1Config {
    #[serde(default)]
    pub kvm: KvmConfig,
}

/// `[stage1.kvm]`: the kvm flavor's virtual machines (docs/kvm.md).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvmConfig {
    /// Where the guest kernel, its modules, qemu and the helpers are (default: $HUSK_KVM_DIR, else
    /// /usr/lib/husk/kvm; `scripts/setup-kvm.sh` fills it).
    pub dir: Option<PathBuf>,
    /// "auto" (KVM when it can run a stock guest, else TCG), "kvm" or "tcg".
    pub accel: Option<husk_types::pod::Accel>,
    /// The guest's memory when no app has a --memory limit (default 512M).
    pub memory: Option<String>,
    /// What the guest's kernel and init need beside the apps' limits (default 128M).
    pub overhead: Option<String>,
    /// The guest's CPUs when no app has a --cpu limit (default 1).
    pub cpus: Option<u32>,
}

/// `[trust]`: image signature policy (docs/trust.md).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustConfig {
    /// What an image with no trust root for its name gets: "accept" (with a notice) or
    /// "require" (refused). Unset: policy.json's default when that file exists, else accept.
    pub default: Option<husk_trust::DefaultRule>,
    /// containers-policy.json to honour (default /etc/containers/policy.json, when present).
    pub policy: Option<PathBuf>,
    /// containers-registries.d directory: where GPG signatures are looked up
    /// (default /etc/containers/registries.d).
    pub registries_d: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// `http` (plain HTTP) and/or `tls` (do not verify certificates).
    #[serde(default)]
    pub insecure: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Paths {
    /// Where the stage1 executables are (default: next to the husk binary).
    pub stage1_dir: Option<PathBuf>,
    /// Where CNI plugins are (default: /usr/lib/cni, /opt/cni/bin).
    pub cni_plugin_dirs: Option<Vec<PathBuf>>,
}

impl Config {
    pub fn load(dir: &Path) -> anyhow::Result<Config> {
        let p = dir.join("husk.toml");
        match std::fs::read_to_string(&p) {
            Ok(s) => {
                let c: Config =
                    toml::from_str(&s).with_context(|| format!("invalid configuration file {}", p.display()))?;
                for (name, r) in &c.registries {
                    for i in &r.insecure {
                        if i != "http" && i != "tls" {
                            anyhow::bail!(
                                "{}: registry {name}: unknown insecure option {i:?} (use \"http\" or \"tls\")",
                                p.display()
                            );
                        }
                    }
                }
                Ok(c)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_registries() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("husk.toml"), "[registries.\"127.0.0.1:5000\"]\ninsecure = [\"http\"]\n").unwrap();
        let c = Config::load(d.path()).unwrap();
        assert_eq!(c.registries["127.0.0.1:5000"].insecure, vec!["http"]);
    }

    #[test]
    fn parses_trust() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("husk.toml"), "[trust]\ndefault = \"require\"\npolicy = \"/p.json\"\n").unwrap();
        let c = Config::load(d.path()).unwrap();
        assert_eq!(c.trust.default, Some(husk_trust::DefaultRule::Require));
        assert_eq!(c.trust.policy.as_deref(), Some(Path::new("/p.json")));
        std::fs::write(d.path().join("husk.toml"), "[trust]\ndefault = \"maybe\"\n").unwrap();
        assert!(Config::load(d.path()).unwrap_err().to_string().contains("husk.toml"));
    }

    #[test]
    fn refuses_unknown_keys_with_the_file_name() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("husk.toml"), "[registries.x]\ninsecure = [\"nope\"]\n").unwrap();
        let e = Config::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("husk.toml") && e.contains("nope"), "{e}");
        assert!(Config::load(Path::new("/nonexistent")).is_ok());
    }
}
