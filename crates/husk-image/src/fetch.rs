//! `husk fetch`: any image source into the store, under a pull policy.

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use husk_sys::LockKind;
use husk_trust::{SignatureKind, Target, Trust, TrustRecord};
use husk_types::{ImageSource, Reference};

use crate::error::FetchError;
use crate::ingest::{
    manifest_kind, select_platform, BlobSource, Ingest, LayoutBlobs, Progress, MT_DOCKER_LIST, MT_OCI_INDEX,
};
use crate::layout::{docker_archive, extract_archive, layout_manifest};
use crate::registry::{Registry, RegistryOptions};
use crate::store::{ImageRecord, Store};

/// When to contact the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Only when the store has no image under that name.
    New,
    /// Always ask the registry; download only what changed.
    Update,
    /// Never; the image must be in the store.
    Never,
}

pub struct FetchOptions<'a> {
    pub policy: PullPolicy,
    pub registry: RegistryOptions,
    pub progress: &'a dyn Progress,
    /// The name to store a local image under (default: derived from the file name).
    pub name: Option<String>,
    /// Layers ingested at once.
    pub parallel: usize,
    /// An async caller's runtime, for a [`fetch`] run on one of its blocking threads
    /// (`spawn_blocking`); None: the registry client starts its own.
    pub runtime: Option<tokio::runtime::Handle>,
    /// The trust policy every image must satisfy before it is stored; None skips
    /// verification (`--insecure-options=image`).
    pub trust: Option<&'a Trust>,
}

#[derive(Debug)]
pub struct Fetched {
    pub name: String,
    pub record: ImageRecord,
    /// True when nothing had to be downloaded.
    pub cached: bool,
    /// One line for the user: the image was accepted although nothing vouches for its name.
    pub notice: Option<String>,
    /// What the trust policy checked for this name (now, or when it was stored).
    pub trust: Option<TrustRecord>,
}

/// The name an image from `source` is stored under.
pub fn stored_name(source: &ImageSource, override_name: Option<&str>) -> String {
    if let Some(n) = override_name {
        return Reference::parse(n).map(|r| r.normalized().to_string()).unwrap_or_else(|_| n.to_string());
    }
    let local = |p: &Path, tag: Option<&str>| {
        let stem = p.file_stem().map(|s| s.to_string_lossy().to_lowercase()).unwrap_or_else(|| "image".into());
        let clean: String =
            stem.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' }).collect();
        format!("localhost/{}:{}", clean.trim_matches(|c: char| !c.is_ascii_alphanumeric()), tag.unwrap_or("latest"))
    };
    match source {
        ImageSource::Registry(r) => r.clone().normalized().to_string(),
        ImageSource::OciLayout { dir, tag } => local(dir, tag.as_deref()),
        ImageSource::OciArchive { file, tag } => local(file, tag.as_deref()),
        ImageSource::DockerArchive { file } => local(file, None),
    }
}

pub fn fetch(store: &Store, source: &ImageSource, opts: &FetchOptions<'_>) -> Result<Fetched, FetchError> {
    let mut name = stored_name(source, opts.name.as_deref());
    let store_err = |image: &str, source| FetchError::Store { image: image.to_string(), source };
    let existing = store.read_ref(&name).map_err(|e| store_err(&name, e))?;
    if let ImageSource::Registry(_) = source {
        match (opts.policy, &existing) {
            (PullPolicy::New | PullPolicy::Never, Some(r)) => {
                if let Ok(record) = store.read_ref_image(r) {
                    return Ok(Fetched { name, record, cached: true, notice: None, trust: r.trust.clone() });
                }
            }
            (PullPolicy::Never, None) => return Err(FetchError::NotInStore { image: name }),
            _ => {}
        }
    }
    let _shared = store.lock_store(LockKind::Shared).map_err(|e| store_err(&name, e))?;
    if let Err(e) = store.clean_tmp() {
        tracing::debug!("could not clean leftovers: {e}");
    }
    let ingest = |bytes: &[u8], digest, blobs: &dyn crate::ingest::BlobSource, image: &str| {
        Ingest {
            store,
            image,
            manifest_bytes: bytes,
            manifest_digest: digest,
            progress: opts.progress,
            parallel: opts.parallel,
        }
        .run(blobs)
    };
    let mut notice = None;
    // A local image is checked against its transport's rules before anything is read.
    let local_trust = |transport: &'static str, path: &Path| -> Result<Option<TrustRecord>, FetchError> {
        let Some(t) = opts.trust else { return Ok(None) };
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let target = Target::Local { transport, path: &path };
        Ok(Some(husk_trust::check_local(&t.decide(&target), &name, &target)?))
    };
    let (record, cached, trust) = match source {
        ImageSource::Registry(r) => {
            let reg = Registry::new(r, &opts.registry, opts.runtime.clone())?;
            let (top_bytes, top) = reg.manifest(None)?;
            // Signatures name what the reference names (an index, for a multi-platform image).
            // They are checked while the layers download, so that their round trips cost no
            // time; a refusal stops the download and no name is written (blobs already stored
            // stay for `image gc`).
            let cancel = AtomicBool::new(false);
            let (checked, ingested) = std::thread::scope(|s| {
                let checker = opts.trust.map(|t| {
                    let (reg, top, cancel) = (&reg, &top, &cancel);
                    s.spawn(move || {
                        let r = check_remote(t, reg, r, top);
                        if r.is_err() {
                            cancel.store(true, Ordering::Relaxed);
                        }
                        r
                    })
                });
                // The record, whether nothing was downloaded, whether the record is new.
                let ingested = (|| -> Result<(ImageRecord, bool, bool), FetchError> {
                    let (bytes, digest) = platform_manifest(&reg, &name, top_bytes, top.clone())?;
                    let unchanged = existing.as_ref().is_some_and(|e| e.manifest == digest);
                    match (unchanged, existing.as_ref().map(|e| store.read_ref_image(e))) {
                        (true, Some(Ok(rec)))
                            if rec.layers.iter().all(|l| store.has_blob(&l.digest) && store.has_layer(&l.diff_id)) =>
                        {
                            Ok((rec, true, false))
                        }
                        _ => {
                            let new = !store.image_path(&digest).is_file();
                            let blobs = Cancellable { inner: &reg, cancel: &cancel, image: &name };
                            Ok((ingest(&bytes, digest, &blobs, &name)?, false, new))
                        }
                    }
                })();
                if ingested.is_err() {
                    cancel.store(true, Ordering::Relaxed);
                }
                (checker.map(|h| h.join().expect("the signature check does not panic")), ingested)
            });
            // A refusal wins over whatever the cancelled download reported; a record this fetch
            // created for the refused manifest goes too (its blobs stay for `image gc`).
            let trust = match checked {
                Some(Ok((rec, n))) => {
                    notice = n;
                    Some(rec)
                }
                Some(Err(e)) => {
                    if let Ok((rec, _, true)) = &ingested {
                        if let Err(err) = store.remove_image(&rec.manifest) {
                            tracing::warn!("could not remove the record of refused {}: {err}", rec.manifest);
                        }
                    }
                    return Err(e);
                }
                None => None,
            };
            let (rec, cached, _) = ingested?;
            (rec, cached, trust)
        }
        ImageSource::OciLayout { dir, tag } => {
            let trust = local_trust("oci", dir)?;
            let (bytes, digest) = layout_manifest(dir, tag.as_deref(), &name)?;
            (ingest(&bytes, digest, &LayoutBlobs { dir, image: &name }, &name)?, false, trust)
        }
        ImageSource::OciArchive { file, tag } => {
            let trust = local_trust("oci-archive", file)?;
            let scratch = extract_archive(store, file, &name)?;
            let (bytes, digest) = layout_manifest(&scratch.path, tag.as_deref(), &name)?;
            (ingest(&bytes, digest, &LayoutBlobs { dir: &scratch.path, image: &name }, &name)?, false, trust)
        }
        ImageSource::DockerArchive { file } => {
            let trust = local_trust("docker-archive", file)?;
            let da = docker_archive(store, file, &name)?;
            if opts.name.is_none() {
                if let Some(t) = &da.repo_tag {
                    name = stored_name(
                        &ImageSource::Registry(
                            Reference::parse(t)
                                .map_err(|e| FetchError::Source { image: name.clone(), why: e.to_string() })?,
                        ),
                        None,
                    );
                }
            }
            let blobs = LayoutBlobs { dir: &da.scratch.path, image: &name };
            let rec = ingest(&da.manifest, da.digest.clone(), &blobs, &name)?;
            (rec, false, trust)
        }
    };
    store.write_ref(&name, &record, trust.clone()).map_err(|e| store_err(&name, e))?;
    Ok(Fetched { name, record, cached, notice, trust })
}

/// Gathers and verifies the signatures of `r`'s manifest `digest` (see husk_trust's model).
fn check_remote(
    t: &Trust,
    reg: &Registry,
    r: &Reference,
    digest: &husk_types::Digest,
) -> Result<(TrustRecord, Option<String>), FetchError> {
    let reference = r.clone().normalized();
    let decision = t.decide(&Target::Docker(&reference));
    let found = if decision.needs(SignatureKind::Gpg) || decision.needs(SignatureKind::Cosign) {
        crate::signatures::gather(t, &decision, reg, &reference, digest)?
    } else {
        husk_trust::Found::default()
    };
    Ok((husk_trust::verify(&decision, &reference, digest, &found)?, decision.notice))
}

/// The manifest to ingest: `bytes` itself, or the entry of this platform when it is an index.
fn platform_manifest(
    reg: &Registry,
    name: &str,
    bytes: Vec<u8>,
    digest: husk_types::Digest,
) -> Result<(Vec<u8>, husk_types::Digest), FetchError> {
    let Some(kind) = manifest_kind(&bytes, None) else { return Ok((bytes, digest)) };
    if kind != MT_OCI_INDEX && kind != MT_DOCKER_LIST {
        return Ok((bytes, digest));
    }
    let (d, size) = select_platform(name, &bytes)?;
    let (bytes, digest) = reg.manifest(Some(&d))?;
    if size != bytes.len() as u64 {
        return Err(FetchError::Store {
            image: name.to_string(),
            source: crate::StoreError::SizeMismatch { digest, expected: size, actual: bytes.len() as u64 },
        });
    }
    Ok((bytes, digest))
}

/// A blob source whose reads fail once `cancel` is set (a refused signature check).
struct Cancellable<'a> {
    inner: &'a dyn BlobSource,
    cancel: &'a AtomicBool,
    image: &'a str,
}

struct CancellableRead<'a> {
    inner: Box<dyn Read + Send + 'a>,
    cancel: &'a AtomicBool,
}

fn cancelled() -> std::io::Error {
    std::io::Error::other("stopped: the image's signatures were refused")
}

impl BlobSource for Cancellable<'_> {
    fn open(&self, digest: &husk_types::Digest, size: u64) -> Result<Box<dyn Read + Send + '_>, FetchError> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(FetchError::Source { image: self.image.to_string(), why: cancelled().to_string() });
        }
        Ok(Box::new(CancellableRead { inner: self.inner.open(digest, size)?, cancel: self.cancel }))
    }
}

impl Read for CancellableRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(cancelled());
        }
        self.inner.read(buf)
    }
}

/// Makes a stored image ready for a pod, as root: its manifest and config re-hashed (a member of
/// the husk group may have written them; they are small), and every layer tree that is missing
/// (a member's fetch stores blobs only) unpacked from its stored blob, checked against the
/// config's diff_id as any unpack is.
pub fn prepare_for_run(store: &Store, name: &str, rec: &ImageRecord) -> Result<(), FetchError> {
    let err = |source| FetchError::Store { image: name.to_string(), source };
    let read_checked = |d: &husk_types::Digest, what: &str| {
        let bytes = store.read_blob(d).map_err(err)?;
        crate::store::check_blob(d, bytes.len() as u64, &bytes).map_err(|e| {
            tracing::debug!("{what} of {name} does not match its digest");
            err(e)
        })?;
        Ok::<_, FetchError>(bytes)
    };
    let manifest = read_checked(&rec.manifest, "manifest")?;
    let config = read_checked(&rec.config, "config")?;
    // The record's layers must be the manifest's: a member may have rewritten the record.
    let (_, parsed) = crate::ingest::parse_manifest(name, &manifest)?;
    if parsed.config().digest().to_string() != rec.config.to_string()
        || crate::ingest::layer_records(name, &parsed, &config)? != rec.layers
    {
        return Err(FetchError::Invalid {
            image: name.to_string(),
            what: "image record",
            why: format!("it does not match manifest {}; fetch the image again as root", rec.manifest),
        });
    }
    // Only a member's fetch leaves trees to unpack; a tree missing from root's own image is
    // damage, which the pod's preparation reports (naming the fix).
    if rec.layers.iter().all(|l| store.has_layer(&l.diff_id)) || !store.unpacks() || !store.trees_pending(rec) {
        return Ok(());
    }
    let _shared = store.lock_store(LockKind::Shared).map_err(err)?;
    Ingest {
        store,
        image: name,
        manifest_bytes: &manifest,
        manifest_digest: rec.manifest.clone(),
        progress: &crate::ingest::NoProgress,
        parallel: 4,
    }
    .run(&StoredBlobs { image: name })?;
    Ok(())
}

/// The store as its own blob source: every blob an unpack needs is there already.
struct StoredBlobs<'a> {
    image: &'a str,
}

impl BlobSource for StoredBlobs<'_> {
    fn open(&self, digest: &husk_types::Digest, _size: u64) -> Result<Box<dyn Read + Send + '_>, FetchError> {
        Err(FetchError::Source {
            image: self.image.to_string(),
            why: format!("blob {digest} is not in the store; fetch the image again"),
        })
    }
}

/// Whether an image stored under `name` may run under today's policy, which may have tightened
/// since it was fetched (see [`Trust::admit`]). `checked` is what was checked then; a name
/// without (fetched before husk verified, or with `--insecure-options=image`) is judged as a
/// docker reference. Root does not take another user's word for a signature: the signatures a
/// member of the husk group's fetch recorded count for nothing here (root verifies by fetching
/// the name itself).
pub fn admit(
    store: &Store,
    trust: &Trust,
    name: &str,
    checked: Option<&TrustRecord>,
) -> Result<husk_trust::Decision, FetchError> {
    let me = rustix::process::geteuid().as_raw();
    let writer = store.ref_owner(name).filter(|u| *u != me && me == 0);
    let stripped = checked.filter(|_| writer.is_some()).map(|t| TrustRecord { signatures: vec![], ..t.clone() });
    let checked = if writer.is_some() { stripped.as_ref() } else { checked };
    let (transport, location) = checked.map_or(("docker", name), |t| (t.transport.as_str(), t.location.as_str()));
    let local = |transport: &'static str| {
        let path = Path::new(location);
        trust.admit(name, &Target::Local { transport, path }, checked)
    };
    let decision = match transport {
        "oci" => local("oci"),
        "oci-archive" => local("oci-archive"),
        "docker-archive" => local("docker-archive"),
        _ => match Reference::parse(location) {
            Ok(r) => trust.admit(name, &Target::Docker(&r.normalized()), checked),
            // Not a reference (a record of an old local import): the transports' defaults apply.
            Err(_) => local("oci"),
        },
    };
    decision.map_err(|mut rejected| {
        if let Some(uid) = writer {
            rejected.reasons.push(format!(
                "{name} was fetched by uid {uid}, and root does not take another user's word for a signature: \
                 `husk fetch --pull-policy=update {name}` as root verifies it"
            ));
        }
        FetchError::Untrusted(rejected)
    })
}
