//! Bringing an image into the store from any source of blobs (a registry, an OCI layout, a
//! docker archive): one code path, so every source gets the same verification and atomicity.
//!
//! Each layer is streamed once: the bytes go into the blob file (hashed, checked against the
//! descriptor's digest and size) and, at the same time, through the decompressor into a fresh
//! tree in `tmp/` (the uncompressed bytes hashed and checked against the config's diff_id). Only
//! when both match are the blob and the tree renamed into place. Layers are ingested in parallel.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Mutex;

use husk_types::Digest;
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};

use crate::error::{FetchError, StoreError, UnpackError};
use crate::store::{remove_any, ImageRecord, LayerMeta, LayerRecord, Store, STORE_FORMAT_VERSION};
use crate::unpack::{self, HashingReader, Mode};

pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MANIFEST_TYPES: &[&str] = &[MT_OCI_MANIFEST, MT_OCI_INDEX, MT_DOCKER_MANIFEST, MT_DOCKER_LIST];

/// Progress of a fetch, reported by the library; only the binary draws it.
pub trait Progress: Send + Sync {
    fn layer_start(&self, _digest: &Digest, _size: u64) {}
    fn layer_bytes(&self, _digest: &Digest, _bytes: u64) {}
    fn layer_done(&self, _digest: &Digest, _cached: bool) {}
}

pub struct NoProgress;
impl Progress for NoProgress {}

/// A place blobs can be read from.
pub trait BlobSource: Sync {
    fn open(&self, digest: &Digest, size: u64) -> Result<Box<dyn Read + Send + '_>, FetchError>;
}

/// The kind of a manifest document, from its `mediaType` field or the transport's type.
pub fn manifest_kind(bytes: &[u8], transport_type: Option<&str>) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        layers: Option<serde_json::Value>,
    }
    let p: Probe = serde_json::from_slice(bytes).ok()?;
    p.media_type.or_else(|| transport_type.map(str::to_string)).or_else(|| {
        if p.manifests.is_some() {
            Some(MT_OCI_INDEX.to_string())
        } else if p.layers.is_some() {
            Some(MT_OCI_MANIFEST.to_string())
        } else {
            None
        }
    })
}

/// The architecture name OCI uses for the host.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Picks the host platform's manifest from an index.
pub fn select_platform(image: &str, index_bytes: &[u8]) -> Result<(Digest, u64), FetchError> {
    check_metadata_size(image, "image index", index_bytes.len() as u64)?;
    let idx: ImageIndex = serde_json::from_slice(index_bytes).map_err(|e| FetchError::Invalid {
        image: image.to_string(),
        what: "image index",
        why: e.to_string(),
    })?;
    let mut available = Vec::new();
    for m in idx.manifests() {
        if let Some(p) = m.platform() {
            let (os, arch) = (p.os().to_string(), p.architecture().to_string());
            if os == "linux" && arch == host_arch() {
                let d = m.digest().to_string().parse::<Digest>().map_err(|e| FetchError::Invalid {
                    image: image.to_string(),
                    what: "image index",
                    why: e.to_string(),
                })?;
                return Ok((d, m.size()));
            }
            available.push(format!("{os}/{arch}"));
        }
    }
    Err(FetchError::NoPlatform {
        image: image.to_string(),
        platform: format!("linux/{}", host_arch()),
        available: available.join(", "),
    })
}

/// The largest manifest, index or image config husk reads (the OCI distribution spec's guidance:
/// registries may refuse manifests over 4 MiB). These are parsed in memory; a bigger one from an
/// untrusted source is refused instead of read.
pub const MAX_METADATA_SIZE: u64 = 4 << 20;

/// Refuses a manifest, index or config of `len` bytes when over [`MAX_METADATA_SIZE`].
pub fn check_metadata_size(image: &str, what: &'static str, len: u64) -> Result<(), FetchError> {
    if len > MAX_METADATA_SIZE {
        return Err(FetchError::Invalid {
            image: image.to_string(),
            what,
            why: format!("it is {len} bytes; husk reads at most {MAX_METADATA_SIZE} (4 MiB, the OCI limit)"),
        });
    }
    Ok(())
}

/// Parses an image manifest (OCI or Docker v2s2): its media type and contents.
pub(crate) fn parse_manifest(image: &str, bytes: &[u8]) -> Result<(String, ImageManifest), FetchError> {
    check_metadata_size(image, "manifest", bytes.len() as u64)?;
    let media_type = manifest_kind(bytes, None).unwrap_or_else(|| MT_OCI_MANIFEST.to_string());
    if media_type != MT_OCI_MANIFEST && media_type != MT_DOCKER_MANIFEST {
        return Err(FetchError::UnsupportedMediaType { image: image.to_string(), media_type });
    }
    let manifest: ImageManifest = serde_json::from_slice(bytes).map_err(|e| FetchError::Invalid {
        image: image.to_string(),
        what: "manifest",
        why: e.to_string(),
    })?;
    Ok((media_type, manifest))
}

/// The layers of a manifest, each with its diff_id from the config: what an image record keeps.
pub(crate) fn layer_records(
    image: &str,
    manifest: &ImageManifest,
    config_bytes: &[u8],
) -> Result<Vec<LayerRecord>, FetchError> {
    let config: ImageConfiguration = serde_json::from_slice(config_bytes).map_err(|e| FetchError::Invalid {
        image: image.to_string(),
        what: "image config",
        why: e.to_string(),
    })?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(FetchError::Invalid {
            image: image.to_string(),
            what: "image config",
            why: format!(
                "{} layers in the manifest but {} diff_ids in the config",
                manifest.layers().len(),
                diff_ids.len()
            ),
        });
    }
    let mut layers = Vec::new();
    for (desc, diff) in manifest.layers().iter().zip(diff_ids) {
        let mt = desc.media_type().to_string();
        if !unpack::layer_media_type_supported(&mt) {
            return Err(FetchError::UnsupportedMediaType { image: image.to_string(), media_type: mt });
        }
        layers.push(LayerRecord {
            digest: parse_digest(image, desc.digest().as_ref())?,
            media_type: mt,
            size: desc.size(),
            diff_id: parse_digest(image, diff)?,
        });
    }
    Ok(layers)
}

/// Everything needed to ingest one image whose manifest is already known.
pub struct Ingest<'a> {
    pub store: &'a Store,
    /// The name shown in errors and stored as the source.
    pub image: &'a str,
    pub manifest_bytes: &'a [u8],
    pub manifest_digest: Digest,
    pub progress: &'a dyn Progress,
    /// How many layers to ingest at once.
    pub parallel: usize,
}

impl Ingest<'_> {
    fn store_err(&self, source: StoreError) -> FetchError {
        FetchError::Store { image: self.image.to_string(), source }
    }

    /// Stores manifest, config and layers; returns the image record (not yet named).
    pub fn run(&self, blobs: &dyn BlobSource) -> Result<ImageRecord, FetchError> {
        let image = self.image;
        let (media_type, manifest) = parse_manifest(image, self.manifest_bytes)?;
        let cfg_desc = manifest.config();
        let cfg_digest: Digest = parse_digest(image, cfg_desc.digest().as_ref())?;
        check_metadata_size(image, "image config", cfg_desc.size())?;
        let config_bytes = if self.store.has_blob(&cfg_digest) {
            self.store.read_blob(&cfg_digest).map_err(|e| self.store_err(e))?
        } else {
            let mut buf = Vec::new();
            blobs.open(&cfg_digest, cfg_desc.size())?.take(MAX_METADATA_SIZE + 1).read_to_end(&mut buf).map_err(
                |e| FetchError::Source { image: image.to_string(), why: format!("reading config {cfg_digest}: {e}") },
            )?;
            check_size(&cfg_digest, cfg_desc.size(), buf.len() as u64).map_err(|e| self.store_err(e))?;
            self.store.put_blob(&buf, Some(&cfg_digest)).map_err(|e| self.store_err(e))?;
            buf
        };
        // The descriptor's size must match the bytes even when the blob was stored before (by
        // another image whose descriptor was right).
        check_size(&cfg_digest, cfg_desc.size(), config_bytes.len() as u64).map_err(|e| self.store_err(e))?;
        let layers = layer_records(image, &manifest, &config_bytes)?;

        // Layers in parallel, bounded; the first error wins and the rest stop at their next chunk.
        let next = Mutex::new(0usize);
        let first_err: Mutex<Option<FetchError>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..self.parallel.max(1).min(layers.len().max(1)) {
                s.spawn(|| loop {
                    let i = {
                        let mut n = next.lock().unwrap();
                        if first_err.lock().unwrap().is_some() || *n >= layers.len() {
                            return;
                        }
                        *n += 1;
                        *n - 1
                    };
                    if let Err(e) = self.layer(&layers[i], blobs) {
                        first_err.lock().unwrap().get_or_insert(e);
                        return;
                    }
                });
            }
        });
        if let Some(e) = first_err.into_inner().unwrap() {
            return Err(e);
        }

        let _ = self.store.put_blob(self.manifest_bytes, Some(&self.manifest_digest)).map_err(|e| self.store_err(e))?;
        let rec = ImageRecord {
            format_version: STORE_FORMAT_VERSION,
            id: cfg_digest.clone(),
            manifest: self.manifest_digest.clone(),
            manifest_media_type: media_type,
            config: cfg_digest,
            layers,
            fetched: chrono::Utc::now(),
            source: image.to_string(),
        };
        self.store.write_image(&rec).map_err(|e| self.store_err(e))?;
        Ok(rec)
    }

    fn layer(&self, l: &LayerRecord, blobs: &dyn BlobSource) -> Result<(), FetchError> {
        let store = self.store;
        let key = format!("layer-{}", l.diff_id.hex());
        let _lock = store.lock_key(&key).map_err(|e| self.store_err(e))?;
        let have_blob = store.has_blob(&l.digest);
        if have_blob {
            let p = store.blob_path(&l.digest);
            let len = std::fs::metadata(&p).map_err(|e| self.store_err(StoreError::io(&p, "inspect blob", e)))?.len();
            check_size(&l.digest, l.size, len).map_err(|e| self.store_err(e))?;
        }
        // Not root: the blob only; root unpacks it when it first runs the image.
        let have_tree = store.has_layer(&l.diff_id) || !store.unpacks();
        self.progress.layer_start(&l.digest, l.size);
        if have_blob && have_tree {
            self.progress.layer_done(&l.digest, true);
            return Ok(());
        }
        let unpack_err = |source: UnpackError| FetchError::Unpack {
            image: self.image.to_string(),
            digest: l.digest.clone(),
            source,
        };

        // Source: the stored blob when we have it, else the remote one teed into the store.
        let writer = if have_blob {
            None
        } else {
            Some(store.blob_writer(Some((l.digest.clone(), l.size)), &key).map_err(|e| self.store_err(e))?)
        };
        let raw: Box<dyn Read + Send + '_> = if have_blob {
            Box::new(store.open_blob(&l.digest).map_err(|e| self.store_err(e))?)
        } else {
            blobs.open(&l.digest, l.size)?
        };
        let failure = RefCell::new(None);
        let mut tee = Tee { inner: raw, out: writer, progress: self.progress, digest: &l.digest, failure: &failure };
        let tee_err = |fallback: FetchError| match failure.borrow_mut().take() {
            Some(TeeFailure::Read(e)) => self.source_err(l, e),
            Some(TeeFailure::Write(e)) => self.store_err(StoreError::io(&store.blob_path(&l.digest), "write blob", e)),
            None => fallback,
        };

        let tree_tmp = store.tree_staging_path(&key);
        let result = (|| -> Result<(), FetchError> {
            if !have_tree {
                std::fs::create_dir(&tree_tmp).map_err(|e| self.store_err(StoreError::io(&tree_tmp, "create", e)))?;
                let rootfs = tree_tmp.join("rootfs");
                std::fs::create_dir(&rootfs).map_err(|e| self.store_err(StoreError::io(&rootfs, "create", e)))?;
                let decompressed =
                    unpack::decompressor(&mut tee).map_err(|e| tee_err(unpack_err(UnpackError::Tar(e))))?;
                let mut hashing = HashingReader::new(decompressed);
                let stats = unpack::unpack(&mut hashing, &rootfs, Mode::Overlay).map_err(|e| tee_err(unpack_err(e)))?;
                let got = hashing.finish().map_err(|e| tee_err(unpack_err(UnpackError::Tar(e))))?;
                if got != l.diff_id {
                    return Err(unpack_err(UnpackError::DiffIdMismatch { expected: l.diff_id.clone(), actual: got }));
                }
                let (tree_digest, size, files) =
                    unpack::tree_digest(&rootfs).map_err(|e| self.store_err(StoreError::io(&rootfs, "hash", e)))?;
                tracing::debug!("layer {} unpacked: {} entries, {} bytes", l.diff_id, stats.entries, stats.bytes);
                Store::write_layer_meta(&tree_tmp, &LayerMeta { diff_id: l.diff_id.clone(), tree_digest, size, files })
                    .map_err(|e| self.store_err(e))?;
            }
            // Drain what the decompressor did not need (or the whole blob when only it is missing).
            io::copy(&mut tee, &mut io::sink()).map_err(|e| tee_err(self.source_err(l, e)))?;
            if let Some(w) = tee.out.take() {
                w.commit().map_err(|e| self.store_err(e))?;
            }
            if !have_tree {
                store.publish_layer(&tree_tmp, &l.diff_id).map_err(|e| self.store_err(e))?;
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = remove_any(&tree_tmp);
        }
        result?;
        self.progress.layer_done(&l.digest, false);
        Ok(())
    }

    fn source_err(&self, l: &LayerRecord, e: io::Error) -> FetchError {
        FetchError::Source { image: self.image.to_string(), why: format!("reading layer {}: {e}", l.digest) }
    }
}

/// A descriptor's size against the bytes it describes.
fn check_size(digest: &Digest, expected: u64, actual: u64) -> Result<(), StoreError> {
    if expected != actual {
        return Err(StoreError::SizeMismatch { digest: digest.clone(), expected, actual });
    }
    Ok(())
}

pub fn parse_digest(image: &str, s: &str) -> Result<Digest, FetchError> {
    s.parse().map_err(|e: husk_types::DigestError| FetchError::Invalid {
        image: image.to_string(),
        what: "digest",
        why: e.to_string(),
    })
}

enum TeeFailure {
    Read(io::Error),
    Write(io::Error),
}

/// Reads from the source, copying every byte into the blob writer and reporting progress. The
/// cause of a failure is kept aside so that it is reported as what it is (a broken download, a
/// full disk) rather than as the corrupt layer the unpacker would see.
struct Tee<'a, 'p> {
    inner: Box<dyn Read + Send + 'a>,
    out: Option<crate::store::BlobWriter>,
    progress: &'p dyn Progress,
    digest: &'p Digest,
    failure: &'p RefCell<Option<TeeFailure>>,
}

impl Read for Tee<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                self.failure.borrow_mut().get_or_insert(TeeFailure::Read(e));
                return Err(copy);
            }
        };
        if let Some(w) = self.out.as_mut() {
            if let Err(e) = w.write_all(&buf[..n]) {
                let copy = io::Error::new(e.kind(), e.to_string());
                self.failure.borrow_mut().get_or_insert(TeeFailure::Write(e));
                return Err(copy);
            }
        }
        self.progress.layer_bytes(self.digest, n as u64);
        Ok(n)
    }
}

/// Blobs in an OCI image layout directory.
pub struct LayoutBlobs<'a> {
    pub dir: &'a Path,
    pub image: &'a str,
}

impl BlobSource for LayoutBlobs<'_> {
    fn open(&self, digest: &Digest, _size: u64) -> Result<Box<dyn Read + Send + '_>, FetchError> {
        let p = self.dir.join("blobs/sha256").join(digest.hex());
        let f = husk_sys::fsutil::open_regular(&p).map_err(|e| FetchError::Source {
            image: self.image.to_string(),
            why: format!("missing blob {}: {e}", p.display()),
        })?;
        Ok(Box::new(f))
    }
}
