//! Image references: `docker://HOST[:PORT]/NAME[:TAG|@DIGEST]` (the scheme is optional),
//! `oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]` and `docker-archive:FILE`.
//!
//! The registry grammar follows the distribution project's reference grammar: the first path
//! component is a registry host when it contains a `.` or a `:` or is `localhost`; otherwise the
//! image is on Docker Hub (`docker.io`), where one-component names live under `library/`.

use std::fmt;
use std::path::PathBuf;

use crate::digest::Digest;

pub const DEFAULT_REGISTRY: &str = "docker.io";
pub const DEFAULT_TAG: &str = "latest";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("image reference is empty")]
    Empty,
    #[error("image reference {reference:?}: {why}")]
    Invalid { reference: String, why: String },
    #[error("image reference {shown}… is {len} characters long; a name may have at most {MAX_NAME_LEN}")]
    TooLong { shown: String, len: usize },
}

/// The longest registry + repository name (the distribution spec's limit).
pub const MAX_NAME_LEN: usize = 255;

fn too_long(s: &str) -> ReferenceError {
    ReferenceError::TooLong { shown: s.chars().take(40).collect(), len: s.len() }
}

fn invalid(reference: &str, why: impl Into<String>) -> ReferenceError {
    ReferenceError::Invalid { reference: reference.to_string(), why: why.into() }
}

/// A reference to an image in a registry, fully qualified.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    /// Parses a registry reference without scheme.
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        // name + ':' tag (128) + '@' digest (sha256: 71, up to 255 for others)
        if s.len() > MAX_NAME_LEN + 1 + 128 + 1 + 255 {
            return Err(too_long(s));
        }
        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => (n, Some(d.parse::<Digest>().map_err(|e| invalid(s, e.to_string()))?)),
            None => (s, None),
        };
        // The tag is after the last ':' that follows the last '/', so a registry port is not
        // mistaken for a tag.
        let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (&name_tag[..at], Some(name_tag[at + 1..].to_string()))
            }
            None => (name_tag, None),
        };
        if let Some(t) = &tag {
            validate_tag(s, t)?;
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest)) if first.contains('.') || first.contains(':') || first == "localhost" => {
                (first.to_string(), rest.to_string())
            }
            _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
        };
        validate_registry(s, &registry)?;
        let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        validate_repository(s, &repository)?;
        Ok(Reference { registry, repository, tag, digest })
    }

    /// `registry/repository`, the name an image is listed under.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The tag to resolve when neither tag nor digest was given.
    pub fn tag_or_default(&self) -> &str {
        self.tag.as_deref().unwrap_or(DEFAULT_TAG)
    }

    /// The reference with the default tag filled in when no digest pins it.
    pub fn normalized(mut self) -> Self {
        if self.tag.is_none() && self.digest.is_none() {
            self.tag = Some(DEFAULT_TAG.to_string());
        }
        self
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn validate_tag(full: &str, tag: &str) -> Result<(), ReferenceError> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(invalid(full, format!("tag {tag:?} must be 1-128 of [A-Za-z0-9_.-], not starting with . or -")))
    }
}

fn validate_registry(full: &str, registry: &str) -> Result<(), ReferenceError> {
    let (host, port) = match registry.rsplit_once(':') {
        Some((h, p)) if !h.contains(']') || h.ends_with(']') => (h, Some(p)),
        _ => (registry, None),
    };
    if host.is_empty() || !host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b)) {
        return Err(invalid(full, format!("registry host {host:?} is not a valid host name")));
    }
    if let Some(p) = port {
        if p.parse::<u16>().is_err() {
            return Err(invalid(full, format!("registry port {p:?} is not a number from 0 to 65535")));
        }
    }
    Ok(())
}

fn validate_repository(full: &str, repo: &str) -> Result<(), ReferenceError> {
    if repo.is_empty() {
        return Err(invalid(full, "repository name is empty"));
    }
    if repo.len() > MAX_NAME_LEN {
        return Err(too_long(full));
    }
    for component in repo.split('/') {
        let bytes = component.as_bytes();
        let ok = !bytes.is_empty()
            && bytes[0].is_ascii_lowercase() | bytes[0].is_ascii_digit()
            && bytes[bytes.len() - 1].is_ascii_lowercase() | bytes[bytes.len() - 1].is_ascii_digit()
            && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(b));
        if !ok {
            return Err(invalid(
                full,
                format!(
                    "repository component {component:?} must be lower-case letters and digits, \
                     separated by '.', '_' or '-'"
                ),
            ));
        }
    }
    Ok(())
}

/// Where an image comes from.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ImageSource {
    /// An OCI distribution registry.
    Registry(Reference),
    /// An OCI image layout directory, with an optional tag (`org.opencontainers.image.ref.name`).
    OciLayout { dir: PathBuf, tag: Option<String> },
    /// A tar archive of an OCI image layout.
    OciArchive { file: PathBuf, tag: Option<String> },
    /// A `docker save` archive.
    DockerArchive { file: PathBuf },
}

impl ImageSource {
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        if let Some(rest) = s.strip_prefix("docker://") {
            return Ok(ImageSource::Registry(Reference::parse(rest)?));
        }
        if let Some(rest) = s.strip_prefix("oci:") {
            let (dir, tag) = split_path_tag(s, rest)?;
            return Ok(ImageSource::OciLayout { dir, tag });
        }
        if let Some(rest) = s.strip_prefix("oci-archive:") {
            let (file, tag) = split_path_tag(s, rest)?;
            return Ok(ImageSource::OciArchive { file, tag });
        }
        if let Some(rest) = s.strip_prefix("docker-archive:") {
            if rest.is_empty() {
                return Err(invalid(s, "docker-archive: needs a file name"));
            }
            return Ok(ImageSource::DockerArchive { file: PathBuf::from(rest) });
        }
        if let Some((scheme, _)) = s.split_once("://") {
            return Err(invalid(
                s,
                format!("unknown transport {scheme:?}; use docker://, oci:, oci-archive: or docker-archive:"),
            ));
        }
        Ok(ImageSource::Registry(Reference::parse(s)?))
    }
}

/// `PATH[:TAG]`: a tag is the part after the last ':' when it has no '/'.
fn split_path_tag(full: &str, rest: &str) -> Result<(PathBuf, Option<String>), ReferenceError> {
    if rest.is_empty() {
        return Err(invalid(full, "needs a path"));
    }
    match rest.rsplit_once(':') {
        Some((path, tag)) if !tag.contains('/') && !path.is_empty() => {
            validate_tag(full, tag)?;
            Ok((PathBuf::from(path), Some(tag.to_string())))
        }
        _ => Ok((PathBuf::from(rest), None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    #[test]
    fn docker_hub_short_names_get_library_prefix() {
        let x = r("busybox");
        assert_eq!(
            (x.registry.as_str(), x.repository.as_str(), x.tag.as_deref()),
            ("docker.io", "library/busybox", None)
        );
        assert_eq!(r("busybox").normalized().to_string(), "docker.io/library/busybox:latest");
        assert_eq!(r("user/app:1.0").to_string(), "docker.io/user/app:1.0");
    }

    #[test]
    fn registry_port_is_not_a_tag() {
        let x = r("127.0.0.1:5000/husk/busybox");
        assert_eq!(x.registry, "127.0.0.1:5000");
        assert_eq!(x.repository, "husk/busybox");
        assert_eq!(x.tag, None);
        let y = r("localhost:5000/busybox:v1");
        assert_eq!((y.registry.as_str(), y.tag.as_deref()), ("localhost:5000", Some("v1")));
        assert_eq!(r("localhost/x").registry, "localhost");
    }

    #[test]
    fn digest_pins() {
        let d = format!("sha256:{}", "a".repeat(64));
        let x = r(&format!("quay.io/a/b:t@{d}"));
        assert_eq!(x.tag.as_deref(), Some("t"));
        assert_eq!(x.digest.unwrap().to_string(), d);
        assert!(Reference::parse("quay.io/a/b@sha256:zz").is_err());
    }

    #[test]
    fn refuses_bad_names() {
        for bad in ["", "UPPER/case", "a//b", "host:99999/x", "x:-tag", "x:", "/x", "a/b/"] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn an_over_long_repository_name_is_refused_by_length() {
        let long = format!("127.0.0.1:5000/{}", "a".repeat(5000));
        assert!(matches!(Reference::parse(&long), Err(ReferenceError::TooLong { len: 5015, .. })));
        let fits = format!("h/{}", "a".repeat(250));
        assert!(Reference::parse(&fits).is_ok());
        assert!(matches!(Reference::parse(&format!("h/{}", "a".repeat(256))), Err(ReferenceError::TooLong { .. })));
    }

    #[test]
    fn sources() {
        assert_eq!(
            ImageSource::parse("oci:/tmp/layout:v2").unwrap(),
            ImageSource::OciLayout { dir: "/tmp/layout".into(), tag: Some("v2".into()) }
        );
        assert_eq!(
            ImageSource::parse("oci:./dir/sub").unwrap(),
            ImageSource::OciLayout { dir: "./dir/sub".into(), tag: None }
        );
        assert_eq!(
            ImageSource::parse("oci-archive:/x.tar").unwrap(),
            ImageSource::OciArchive { file: "/x.tar".into(), tag: None }
        );
        assert_eq!(
            ImageSource::parse("docker-archive:/x.tar").unwrap(),
            ImageSource::DockerArchive { file: "/x.tar".into() }
        );
        assert!(matches!(ImageSource::parse("docker://busybox").unwrap(), ImageSource::Registry(_)));
        assert!(ImageSource::parse("ftp://x").is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            let _ = ImageSource::parse(&s);
        }

        #[test]
        fn display_round_trips(
            host in "[a-z]{1,8}\\.[a-z]{2,3}(:[0-9]{1,4})?",
            repo in "[a-z0-9]{1,6}(/[a-z0-9]{1,6}){0,2}",
            tag in proptest::option::of("[a-z0-9_][a-z0-9_.-]{0,10}"),
        ) {
            let s = match &tag { Some(t) => format!("{host}/{repo}:{t}"), None => format!("{host}/{repo}") };
            let parsed = Reference::parse(&s).unwrap();
            prop_assert_eq!(parsed.to_string(), s);
            prop_assert_eq!(Reference::parse(&parsed.to_string()).unwrap(), parsed);
        }
    }
}
