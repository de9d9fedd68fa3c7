//! `husk fetch`: any image source into the store, under a pull policy.

use std::path::Path;

use husk_sys::LockKind;
use husk_types::{ImageSource, Reference};

use crate::error::FetchError;
use crate::ingest::{manifest_kind, select_platform, Ingest, LayoutBlobs, Progress, MT_DOCKER_LIST, MT_OCI_INDEX};
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
}

#[derive(Debug)]
pub struct Fetched {
    pub name: String,
    pub record: ImageRecord,
    /// True when nothing had to be downloaded.
    pub cached: bool,
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
                    return Ok(Fetched { name, record, cached: true });
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
    let (record, cached) = match source {
        ImageSource::Registry(r) => {
            let reg = Registry::new(r, &opts.registry, opts.runtime.clone())?;
            let (mut bytes, mut digest) = reg.manifest(None)?;
            if let Some(kind) = manifest_kind(&bytes, None) {
                if kind == MT_OCI_INDEX || kind == MT_DOCKER_LIST {
                    let (d, size) = select_platform(&name, &bytes)?;
                    (bytes, digest) = reg.manifest(Some(&d))?;
                    if size != bytes.len() as u64 {
                        return Err(FetchError::Store {
                            image: name,
                            source: crate::StoreError::SizeMismatch {
                                digest,
                                expected: size,
                                actual: bytes.len() as u64,
                            },
                        });
                    }
                }
            }
            let unchanged = existing.as_ref().is_some_and(|e| e.manifest == digest);
            match (unchanged, existing.as_ref().map(|e| store.read_ref_image(e))) {
                (true, Some(Ok(rec)))
                    if rec.layers.iter().all(|l| store.has_blob(&l.digest) && store.has_layer(&l.diff_id)) =>
                {
                    (rec, true)
                }
                _ => (ingest(&bytes, digest, &reg, &name)?, false),
            }
        }
        ImageSource::OciLayout { dir, tag } => {
            let (bytes, digest) = layout_manifest(dir, tag.as_deref(), &name)?;
            (ingest(&bytes, digest, &LayoutBlobs { dir, image: &name }, &name)?, false)
        }
        ImageSource::OciArchive { file, tag } => {
            let scratch = extract_archive(store, file, &name)?;
            let (bytes, digest) = layout_manifest(&scratch.path, tag.as_deref(), &name)?;
            (ingest(&bytes, digest, &LayoutBlobs { dir: &scratch.path, image: &name }, &name)?, false)
        }
        ImageSource::DockerArchive { file } => {
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
            let rec =
                ingest(&da.manifest, da.digest.clone(), &LayoutBlobs { dir: &da.scratch.path, image: &name }, &name)?;
            (rec, false)
        }
    };
    store.write_ref(&name, &record).map_err(|e| store_err(&name, e))?;
    Ok(Fetched { name, record, cached })
}
