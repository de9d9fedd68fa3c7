//! Exit codes and the error type every command returns.
//!
//! An app's exit status passes through `husk run` unchanged; husk's own failures use the codes
//! below, in a band apps rarely use (120-125, as podman uses 125), plus the shell's 126 and 127
//! for a command that cannot be executed or found. `husk status` always tells which it was.

use std::fmt;

pub const USAGE: i32 = 120;
pub const IMAGE: i32 = 121;
pub const POD: i32 = 122;
pub const DAMAGED: i32 = 123;
pub const TIMEOUT: i32 = 124;
pub const ENGINE: i32 = 125;

/// A failure to report: the message chain, an optional hint, and the exit code.
pub struct Failure {
    pub code: i32,
    pub error: anyhow::Error,
    pub hint: Option<String>,
}

impl Failure {
    pub fn new(code: i32, error: impl Into<anyhow::Error>) -> Self {
        Failure { code, error: error.into(), hint: None }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn usage(msg: impl fmt::Display) -> Self {
        Failure::new(USAGE, anyhow::anyhow!("{msg}"))
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::new(ENGINE, e)
    }
}

/// What to suggest for a fetch failure (flags and commands are the CLI's to name).
fn fetch_hint(e: &husk_image::FetchError) -> Option<String> {
    use husk_image::FetchError;
    if e.is_disk_full() {
        return Some("the disk holding the data dir is full; free space or run `husk image gc`".into());
    }
    match e {
        // A name that does not resolve: nothing insecure would help (the old hint said so).
        FetchError::Unreachable { registry, why, .. } if is_dns_failure(why) => Some(format!(
            "the registry name {} does not resolve: check its spelling and this host's DNS",
            registry.split(':').next().unwrap_or(registry)
        )),
        FetchError::Unreachable { registry, why, .. }
            if ["tls", "certificate", "handshake", "InvalidContentType", "wrong version"]
                .iter()
                .any(|w| why.contains(w)) =>
        {
            Some(format!(
                "if {registry} serves plain HTTP or a self-signed certificate, pass --insecure-options=http,tls \
                 or set `insecure = [\"http\", \"tls\"]` for it in husk.toml"
            ))
        }
        FetchError::Unreachable { .. } => Some("check the registry address and that it is running".into()),
        FetchError::Denied { registry, .. } => Some(format!(
            "log in with `docker login {registry}`: husk reads the credentials from $DOCKER_CONFIG/config.json \
             or ~/.docker/config.json, credential helpers included"
        )),
        FetchError::NotFound { .. } => Some("check the image name and tag".into()),
        FetchError::NotInStore { .. } => Some("fetch it first (husk fetch) or use --pull-policy=new".into()),
        FetchError::Untrusted(_) => Some(
            "see the trusted keys with `husk trust list` and docs/trust.md; --insecure-options=image skips \
             verification for one command"
                .into(),
        ),
        FetchError::Signatures { .. } => {
            Some("check the lookaside URL in registries.d (docs/trust.md) and that the registry is reachable".into())
        }
        _ => None,
    }
}

/// Whether a connection failed at the name lookup.
fn is_dns_failure(why: &str) -> bool {
    ["dns error", "failed to lookup address", "Name or service not known", "No address associated"]
        .iter()
        .any(|w| why.contains(w))
}

impl From<husk_image::FetchError> for Failure {
    fn from(e: husk_image::FetchError) -> Self {
        let hint = fetch_hint(&e);
        let code = match &e {
            _ if e.is_disk_full() => ENGINE,
            husk_image::FetchError::Store { source, .. }
                if !matches!(
                    source,
                    husk_image::StoreError::DigestMismatch { .. } | husk_image::StoreError::SizeMismatch { .. }
                ) =>
            {
                ENGINE
            }
            _ => IMAGE,
        };
        Failure { code, error: e.into(), hint }
    }
}

impl From<husk_trust::store::StoreError> for Failure {
    fn from(e: husk_trust::store::StoreError) -> Self {
        use husk_trust::store::StoreError as S;
        let (code, hint) = match &e {
            S::BadPrefix { .. } => {
                (USAGE, Some("a prefix looks like docker.io/library or registry.example.com:5000/team"))
            }
            S::BadKey { .. } => {
                (USAGE, Some("export a public key with `gpg --export --armor KEYID` or `cosign public-key`"))
            }
            S::NoSuchKey { .. } | S::Ambiguous { .. } => (USAGE, Some("list trusted keys with `husk trust list`")),
            S::Io { .. } => (ENGINE, Some("the trust store is in the config dir: run as root, or pass --config-dir")),
        };
        Failure { code, error: e.into(), hint: hint.map(String::from) }
    }
}

impl From<husk_image::StoreError> for Failure {
    fn from(e: husk_image::StoreError) -> Self {
        let Failure { code, hint, .. } = clone_store_failure(&e);
        Failure { code, error: e.into(), hint }
    }
}

/// The one mapping of pod errors to exit codes and hints.
impl From<husk_pod::PodError> for Failure {
    fn from(e: husk_pod::PodError) -> Self {
        use husk_pod::PodError as P;
        let (code, hint): (i32, Option<String>) = match &e {
            P::Unknown(_) => (POD, Some("list pods with `husk list`".into())),
            P::Ambiguous { .. } => (POD, None),
            P::WrongPhase { phase, .. } if phase == "running" => (POD, Some("stop it first with `husk stop`".into())),
            P::WrongPhase { .. } => (POD, None),
            P::Busy { .. } => (POD, Some("try again in a moment".into())),
            P::App { .. } | P::Invalid { .. } | P::Request(_) => (USAGE, None),
            P::Lock(husk_sys::LockError::Timeout { .. }) => (TIMEOUT, None),
            P::Store(s) => {
                let f: Failure = clone_store_failure(s);
                (f.code, f.hint)
            }
            P::Stage1 { .. } => {
                (ENGINE, Some("install the stage1 binaries next to husk or set paths.stage1_dir in husk.toml".into()))
            }
            P::PrivateUsersCannotReach { dir } => (
                USAGE,
                Some(format!("allow it with `chmod o+x {}`, or keep the data dir elsewhere (--dir)", dir.display())),
            ),
            P::PortTaken { .. } => (
                ENGINE,
                Some("choose another host port, or stop the pod that forwards it (husk list shows ports)".into()),
            ),
            P::StartFailed { uuid, .. } => {
                let short = &uuid[..uuid.len().min(8)];
                (ENGINE, Some(format!("see `husk status {short}` and `husk logs {short}`")))
            }
            P::Io { source, .. }
                if source.raw_os_error() == Some(libc::EPERM) || source.raw_os_error() == Some(libc::EACCES) =>
            {
                (ENGINE, Some("pods need root: run husk as root".into()))
            }
            _ => (ENGINE, None),
        };
        Failure { code, error: e.into(), hint }
    }
}

/// The code and hint a store error gets (without taking it: it stays the pod error's cause).
fn clone_store_failure(s: &husk_image::StoreError) -> Failure {
    use husk_image::StoreError as S;
    let (code, hint) = match s {
        S::UnknownImage { .. } => {
            (IMAGE, Some("list images with `husk image list`, or fetch it with `husk fetch`".to_string()))
        }
        S::Ambiguous { .. } | S::InUse { .. } | S::DigestMismatch { .. } | S::SizeMismatch { .. } => (IMAGE, None),
        S::LayersMissing { name, .. } => (
            IMAGE,
            Some(format!("unpack it again with `husk fetch --pull-policy=update {name}`, then check the store with `husk image verify`")),
        ),
        S::DanglingRef { name, .. } => {
            (IMAGE, Some(format!("fetch it again with `husk fetch --pull-policy=update {name}`")))
        }
        S::NewerFormat { .. } => (ENGINE, None),
        S::Lock(husk_sys::LockError::Timeout { .. }) => (TIMEOUT, None),
        _ if s.is_disk_full() => {
            (ENGINE, Some("the disk holding the data dir is full; free space or run `husk image gc`".into()))
        }
        _ => (ENGINE, None),
    };
    Failure { code, error: anyhow::anyhow!("{s}"), hint }
}

/// Prints a failure as `husk: <message>: <cause>: …` and a `hint:` line.
pub fn report(f: &Failure) {
    let mut msg = f.error.to_string();
    let mut src = f.error.source();
    while let Some(s) = src {
        let s_text = s.to_string();
        if !msg.contains(&s_text) {
            msg.push_str(": ");
            msg.push_str(&s_text);
        }
        src = s.source();
    }
    eprintln!("husk: {msg}");
    if let Some(h) = &f.hint {
        eprintln!("hint: {h}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unreachable(why: &str) -> husk_image::FetchError {
        husk_image::FetchError::Unreachable {
            image: "reg.example/x".into(),
            registry: "reg.example:5000".into(),
            why: why.into(),
        }
    }

    /// A DNS failure suggested --insecure-options=http,tls.
    #[test]
    fn fetch_hints_fit_the_cause() {
        let dns = fetch_hint(&unreachable(
            "error sending request for url (https://reg.example:5000/v2/): dns error: failed to lookup address information",
        ))
        .unwrap();
        assert!(dns.contains("does not resolve") && !dns.contains("insecure"), "{dns}");
        let tls = fetch_hint(&unreachable("invalid peer certificate: UnknownIssuer")).unwrap();
        assert!(tls.contains("--insecure-options=http,tls"), "{tls}");
        let refused = fetch_hint(&unreachable(
            "error sending request for url (https://reg.example:5000/v2/): connection refused",
        ))
        .unwrap();
        assert!(refused.contains("is running"), "{refused}");
    }
}
