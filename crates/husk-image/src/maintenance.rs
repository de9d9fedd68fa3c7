//! `image rm`, `image gc`, `image verify`, `image render`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use husk_sys::LockKind;
use husk_types::Digest;

use crate::error::{StoreError, UnpackError};
use crate::store::{hash_reader, remove_any, ImageRecord, Store, Via};
use crate::unpack::{self, Mode};

/// What `image rm` did.
#[derive(Debug)]
pub enum Removed {
    /// A name was removed; its manifest still has other names.
    Untagged(String),
    /// Image records (one per manifest) and all their names were removed.
    Image { id: Digest, manifests: Vec<Digest>, names: Vec<String> },
}

/// Removes a name, a manifest (by digest prefix) or an image (by ID prefix, with every manifest
/// of it). A name that is its manifest's last takes the manifest's record with it. `pods_using`
/// tells which pods use an image ID; removing the last record of an ID that pods use is refused
/// and nothing is removed (another manifest of the same ID keeps the trees those pods run).
pub fn remove(store: &Store, what: &str, pods_using: &dyn Fn(&Digest) -> Vec<String>) -> Result<Removed, StoreError> {
    let found = store.lookup(what)?;
    let rec = found.record;
    let records = match &found.via {
        Via::Name(n) => {
            if store.names_of(&rec.manifest)?.len() > 1 {
                store.remove_ref(n)?;
                return Ok(Removed::Untagged(n.clone()));
            }
            vec![rec.clone()]
        }
        Via::Manifest => vec![rec.clone()],
        Via::Id => store.records_of(&rec.id)?,
    };
    let remaining = store.records_of(&rec.id)?.len() - records.len();
    if remaining == 0 {
        let pods = pods_using(&rec.id);
        if !pods.is_empty() {
            let name = match found.via {
                Via::Name(n) => n,
                _ => rec.id.to_string(),
            };
            return Err(StoreError::InUse { name, pods: pods.join(", ") });
        }
    }
    let mut names = Vec::new();
    for r in &records {
        for n in store.names_of(&r.manifest)? {
            store.remove_ref(&n)?;
            names.push(n);
        }
        store.remove_image(&r.manifest)?;
    }
    Ok(Removed::Image { id: rec.id, manifests: records.into_iter().map(|r| r.manifest).collect(), names })
}

#[derive(Debug, Default)]
pub struct GcReport {
    pub blobs: usize,
    pub layers: usize,
    pub leftovers: usize,
    pub bytes: u64,
}

/// Removes blobs and layer trees no image record references (the base layer: once no image is
/// left), and leftovers of interrupted work.
pub fn gc(store: &Store) -> Result<GcReport, StoreError> {
    let _excl = store.lock_store(LockKind::Exclusive)?;
    let mut report = GcReport { leftovers: store.clean_tmp()?, ..Default::default() };
    store.remove_key_locks()?;
    let mut blobs = HashSet::new();
    let mut trees = HashSet::new();
    let images = store.images()?;
    // The base layer is beneath every pod's image layers: kept while a pod can be built.
    if !images.is_empty() {
        trees.insert(crate::base::diff_id().hex().to_string());
    }
    for img in images {
        blobs.insert(img.manifest.hex().to_string());
        blobs.insert(img.config.hex().to_string());
        for l in &img.layers {
            blobs.insert(l.digest.hex().to_string());
            trees.insert(l.diff_id.hex().to_string());
        }
    }
    let blob_dir = store.root().join("blobs/sha256");
    for e in std::fs::read_dir(&blob_dir).map_err(|e| StoreError::io(&blob_dir, "list", e))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !blobs.contains(&name) {
            report.bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
            remove_any(&e.path()).map_err(|err| StoreError::io(&e.path(), "remove", err))?;
            report.blobs += 1;
        }
    }
    let layer_dir = store.root().join("layers");
    for e in std::fs::read_dir(&layer_dir).map_err(|e| StoreError::io(&layer_dir, "list", e))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !trees.contains(&name) {
            if let Ok(d) = Digest::from_sha256_hex(&name) {
                report.bytes += store.read_layer_meta(&d).map(|m| m.size).unwrap_or(0);
            }
            remove_any(&e.path()).map_err(|err| StoreError::io(&e.path(), "remove", err))?;
            report.layers += 1;
        }
    }
    Ok(report)
}

/// One damaged thing found by [`verify`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct Damage {
    pub what: String,
    pub path: PathBuf,
    pub problem: String,
}

/// Re-hashes every blob and every unpacked tree (trees: as root only); returns what does not
/// match.
pub fn verify(store: &Store) -> Result<(usize, Vec<Damage>), StoreError> {
    let mut damage = Vec::new();
    let mut checked = 0;
    let blob_dir = store.root().join("blobs/sha256");
    let mut names: Vec<_> =
        std::fs::read_dir(&blob_dir).map_err(|e| StoreError::io(&blob_dir, "list", e))?.flatten().collect();
    names.sort_by_key(|e| e.file_name());
    for e in names {
        checked += 1;
        let name = e.file_name().to_string_lossy().into_owned();
        let f = std::fs::File::open(e.path()).map_err(|err| StoreError::io(&e.path(), "open", err))?;
        let (d, _) = hash_reader(std::io::BufReader::new(f)).map_err(|err| StoreError::io(&e.path(), "read", err))?;
        if d.hex() != name {
            damage.push(Damage {
                what: format!("blob sha256:{name}"),
                path: e.path(),
                problem: format!("content hashes to {d}"),
            });
        }
    }
    for img in store.images()? {
        for l in &img.layers {
            if !store.has_blob(&l.digest) {
                damage.push(Damage {
                    what: format!("blob {}", l.digest),
                    path: store.blob_path(&l.digest),
                    problem: format!("missing (used by image {})", img.id.short()),
                });
            }
        }
        // A member's fetch stores blobs only: its trees are root's to unpack at the first run.
        let pending = store.trees_pending(&img);
        for l in &img.layers {
            if !store.has_layer(&l.diff_id) && !pending {
                damage.push(Damage {
                    what: format!("layer tree {}", l.diff_id),
                    path: store.layer_dir(&l.diff_id),
                    problem: format!("missing (used by image {})", img.id.short()),
                });
            }
        }
        for d in [&img.manifest, &img.config] {
            if !store.has_blob(d) {
                damage.push(Damage {
                    what: format!("blob {d}"),
                    path: store.blob_path(d),
                    problem: format!("missing (used by image {})", img.id.short()),
                });
            }
        }
    }
    // Only root can read every file of a tree (their modes are the image's).
    if !store.unpacks() {
        return Ok((checked, damage));
    }
    let layer_dir = store.root().join("layers");
    let mut layers: Vec<_> =
        std::fs::read_dir(&layer_dir).map_err(|e| StoreError::io(&layer_dir, "list", e))?.flatten().collect();
    layers.sort_by_key(|e| e.file_name());
    for e in layers {
        checked += 1;
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(diff) = Digest::from_sha256_hex(&name) else { continue };
        let problem = match store.read_layer_meta(&diff) {
            Err(err) => err.to_string(),
            Ok(meta) => match unpack::tree_digest(&store.layer_rootfs(&diff)) {
                Ok((t, _, _)) if t == meta.tree_digest => continue,
                Ok((t, _, _)) => format!("tree changed: recorded {}, now {}", meta.tree_digest, t),
                Err(err) => err.to_string(),
            },
        };
        // No image's removal and fetch mends the base layer, which husk makes itself: say how.
        let (what, problem) = if diff == crate::base::diff_id() {
            let record = store.layer_dir(&diff).join("layer.json");
            let fix = format!("it holds nothing of yours: remove {} and the next pod rebuilds it", record.display());
            (format!("husk's base layer tree {diff}"), format!("{problem}; {fix}"))
        } else {
            (format!("layer tree {diff}"), problem)
        };
        damage.push(Damage { what, path: e.path(), problem });
    }
    Ok((checked, damage))
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("failed to render layer {digest}")]
    Unpack {
        digest: Digest,
        #[source]
        source: UnpackError,
    },
    #[error("destination {0} exists and is not an empty directory; pass an empty or new directory")]
    NotEmpty(PathBuf),
}

/// Applies an image's layers, in order, onto `dest` (a new or empty directory).
pub fn render(store: &Store, rec: &ImageRecord, dest: &Path) -> Result<(), RenderError> {
    match std::fs::read_dir(dest) {
        Ok(mut it) => {
            if it.next().is_some() {
                return Err(RenderError::NotEmpty(dest.to_path_buf()));
            }
        }
        Err(_) => std::fs::create_dir_all(dest).map_err(|e| StoreError::io(dest, "create", e))?,
    }
    for l in &rec.layers {
        let f = store.open_blob(&l.digest)?;
        let r = unpack::decompressor(std::io::BufReader::new(f))
            .map_err(|e| RenderError::Unpack { digest: l.digest.clone(), source: UnpackError::Tar(e) })?;
        unpack::unpack(r, dest, Mode::Apply)
            .map_err(|source| RenderError::Unpack { digest: l.digest.clone(), source })?;
    }
    Ok(())
}
