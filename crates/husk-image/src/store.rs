//! The content-addressed store under `<data dir>/store`.
//!
//! ```text
//! store/
//!   blobs/sha256/<hex>            verified blobs: manifests, configs, compressed layers
//!   layers/<diff-id hex>/rootfs/  one layer unpacked, in overlayfs format (read-only lower dir)
//!   layers/<diff-id hex>/layer.json   tree digest and size, for `image verify`
//!   images/<manifest hex>.json    image records, one per manifest
//!   refs/<escaped name:tag>.json  references, each to one manifest
//!   locks/                        per-digest and store-wide locks
//!   tmp/                          work in progress, named after the lock that owns it
//!   version                       the store format (see below)
//! ```
//! An image record is keyed by its manifest: the same image fetched as OCI+gzip, OCI+zstd and
//! Docker v2s2 is three records (three manifests, three sets of layer blobs) that share one
//! config, hence one image ID (the config digest, as podman and docker show it), and one unpacked
//! tree per layer (trees are named by diff_id).
//!
//! Format 1 keyed records by the config digest, so the last manifest fetched for a config won;
//! [`crate::migrate`] turns a format 1 store into format 2 the first time it is opened.
//! Nothing becomes visible before it is verified: blobs, trees and records are built in `tmp/`
//! and renamed into place. Concurrent fetches lock per digest; `image gc` takes the store lock
//! exclusively, fetches and pod preparation take it shared.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use husk_sys::{atomic_write, Lock, LockKind};
use husk_types::{Digest, Reference};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::StoreError;

/// The largest blob [`Store::read_blob`] reads into memory (manifests and configs are at most
/// 4 MiB; see `ingest::MAX_METADATA_SIZE`).
const MAX_READ_BLOB: u64 = 16 << 20;

/// The store format this husk reads and writes (`store/version`; also each record's
/// `format_version`).
pub const STORE_FORMAT_VERSION: u32 = 2;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerRecord {
    /// Digest of the blob as distributed (compressed or not).
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    /// Digest of the uncompressed tar; names the unpacked tree.
    pub diff_id: Digest,
}

/// What the store knows of one image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRecord {
    pub format_version: u32,
    /// The image ID: digest of the image config (shared by every manifest of the same image).
    pub id: Digest,
    /// The manifest this record describes: the record's key.
    pub manifest: Digest,
    pub manifest_media_type: String,
    pub config: Digest,
    pub layers: Vec<LayerRecord>,
    pub fetched: chrono::DateTime<chrono::Utc>,
    /// Where it was fetched from, as the user wrote it.
    pub source: String,
}

impl ImageRecord {
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

/// A name pointing at an image: at one manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RefRecord {
    pub name: String,
    /// The image ID (config digest), for listing without reading the record.
    pub id: Digest,
    /// The record's key.
    pub manifest: Digest,
    pub updated: chrono::DateTime<chrono::Utc>,
    /// What the trust policy checked when this name was fetched. Kept per name, not per
    /// manifest: a signature vouches for a name (`docker-reference`), and one manifest can be
    /// stored under a verified name and an unverified one. Absent: fetched before husk verified
    /// signatures, or with `--insecure-options=image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust: Option<husk_trust::TrustRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerMeta {
    pub diff_id: Digest,
    pub tree_digest: Digest,
    pub size: u64,
    pub files: u64,
}

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    /// Whether this process unpacks layers: only root can (ownership, device nodes, xattrs).
    /// A member of the husk group stores verified blobs, and root unpacks them when it first
    /// runs the image ([`crate::fetch::prepare_for_run`]).
    unpacks: bool,
}

/// The store's directories: group-writable (setgid `husk`) for members' fetches, except
/// `layers/`, which only root writes (docs/threat-model.md).
pub const SHARED_DIRS: &[&str] = &["blobs", "blobs/sha256", "images", "refs", "locks", "tmp"];

/// How [`Store::lookup`] matched what the user wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// A reference name (normalized).
    Name(String),
    /// A prefix of the image ID (config digest): every record of that ID matches.
    Id,
    /// A prefix of a manifest digest: exactly one record.
    Manifest,
}

/// An image found by [`Store::lookup`].
#[derive(Debug, Clone)]
pub struct Found {
    pub record: ImageRecord,
    pub via: Via,
}

impl Store {
    /// Opens (creating when missing) the store under `data_dir/store`.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        let root = data_dir.join("store");
        for sub in ["blobs/sha256", "layers", "images", "refs", "locks", "tmp"] {
            let p = root.join(sub);
            if !p.is_dir() {
                fs::create_dir_all(&p).map_err(|e| StoreError::io(&p, "create store directory", e))?;
            }
        }
        let store = Store { root, unpacks: rustix::process::geteuid().is_root() };
        crate::migrate::ensure_current(&store)?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The store as a member of the husk group sees it (blobs only), for tests run as root.
    #[cfg(test)]
    pub(crate) fn into_member(mut self) -> Store {
        self.unpacks = false;
        self
    }

    /// Whether layers fetched by this process are unpacked now (see [`Store::unpacks`]).
    pub fn unpacks(&self) -> bool {
        self.unpacks
    }

    /// The uid that wrote a manifest's image record (None: no such record).
    pub fn image_owner(&self, manifest: &Digest) -> Option<u32> {
        use std::os::unix::fs::MetadataExt;
        fs::symlink_metadata(self.image_path(manifest)).ok().map(|m| m.uid())
    }

    /// Whether an image's missing layer trees are pending rather than lost: a member of the
    /// husk group fetched it (blobs only), and root unpacks them at its first run.
    pub fn trees_pending(&self, rec: &ImageRecord) -> bool {
        self.image_owner(&rec.manifest).is_some_and(|u| u != 0)
    }

    /// The uid that wrote a name's reference (None: no such name).
    pub fn ref_owner(&self, name: &str) -> Option<u32> {
        use std::os::unix::fs::MetadataExt;
        fs::symlink_metadata(self.ref_path(name)).ok().map(|m| m.uid())
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers").join(diff_id.hex())
    }

    /// The unpacked tree of a layer: an overlay lower dir.
    pub fn layer_rootfs(&self, diff_id: &Digest) -> PathBuf {
        self.layer_dir(diff_id).join("rootfs")
    }

    /// Whether a layer's unpacked tree is present: its record and its root directory.
    pub fn has_layer(&self, diff_id: &Digest) -> bool {
        self.layer_dir(diff_id).join("layer.json").is_file() && self.layer_rootfs(diff_id).is_dir()
    }

    /// Checks that every layer tree an image needs is in the store, before a pod is built on it:
    /// a missing one would otherwise surface late, as ENOENT from the overlay mount in stage1.
    pub fn check_layers(&self, name: &str, rec: &ImageRecord) -> Result<(), StoreError> {
        let missing: Vec<String> =
            rec.layers.iter().filter(|l| !self.has_layer(&l.diff_id)).map(|l| l.diff_id.to_string()).collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(StoreError::LayersMissing { name: name.to_string(), missing: missing.join(", ") })
    }

    /// A small blob (a manifest, a config), checked against its digest at every read: blobs are
    /// files a member of the husk group may have written, so what is returned is what was
    /// verified, never bytes swapped in after a check.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>, StoreError> {
        let p = self.blob_path(d);
        let f = husk_sys::fsutil::open_regular_nofollow(&p).map_err(|e| StoreError::io(&p, "read blob", e))?;
        let mut bytes = Vec::new();
        f.take(MAX_READ_BLOB + 1).read_to_end(&mut bytes).map_err(|e| StoreError::io(&p, "read blob", e))?;
        if bytes.len() as u64 > MAX_READ_BLOB {
            return Err(StoreError::Corrupt { path: p, why: format!("larger than {MAX_READ_BLOB} bytes") });
        }
        let actual = hash_bytes(&bytes);
        if &actual != d {
            return Err(StoreError::DigestMismatch { expected: d.clone(), actual });
        }
        Ok(bytes)
    }

    /// A blob to stream (a layer): whoever reads it checks what it yields (an unpack checks the
    /// diff_id).
    pub fn open_blob(&self, d: &Digest) -> Result<File, StoreError> {
        let p = self.blob_path(d);
        husk_sys::fsutil::open_regular_nofollow(&p).map_err(|e| StoreError::io(&p, "open blob", e))
    }

    /// Locks one key (a digest, a reference) for the duration of work on it.
    pub fn lock_key(&self, key: &str) -> Result<Lock, StoreError> {
        let p = self.root.join("locks").join(format!("{key}.lock"));
        Lock::acquire(&p, LockKind::Exclusive, || tracing::debug!("waiting for {key}, another husk holds it"))
            .map_err(StoreError::Lock)
    }

    /// The store-wide lock: shared for fetches and pod preparation, exclusive for `image gc`.
    pub fn lock_store(&self, kind: LockKind) -> Result<Lock, StoreError> {
        let p = self.root.join("locks/store.lock");
        Lock::acquire(&p, kind, || {
            if kind == LockKind::Exclusive {
                tracing::info!("waiting for running fetches to finish before collecting garbage");
            } else {
                tracing::info!("waiting for `husk image gc` to finish");
            }
        })
        .map_err(StoreError::Lock)
    }

    /// Removes every per-key lock file. Only for `image gc`, which holds the store lock
    /// exclusively: no fetch (the only user of key locks) can be running, so no lock file is
    /// held or about to be.
    pub fn remove_key_locks(&self) -> Result<usize, StoreError> {
        let dir = self.root.join("locks");
        let mut n = 0;
        for e in fs::read_dir(&dir).map_err(|e| StoreError::io(&dir, "list", e))?.flatten() {
            if e.file_name() != "store.lock" {
                fs::remove_file(e.path()).map_err(|err| StoreError::io(&e.path(), "remove", err))?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// A fresh path in `tmp/` owned by the holder of the lock `key`.
    pub fn tmp_path(&self, key: &str) -> PathBuf {
        self.root.join("tmp").join(format!("{key}.{:016x}", rand::random::<u64>()))
    }

    /// Where a layer tree is unpacked before it is published: inside `layers/`, which only root
    /// writes, so that no member of the husk group can swap a tree between its unpack and its
    /// rename into place (the shared `tmp/` is group-writable). A `.`-name is never a layer.
    pub fn tree_staging_path(&self, key: &str) -> PathBuf {
        self.root.join("layers").join(format!(".{key}.{:016x}", rand::random::<u64>()))
    }

    /// Removes leftovers of interrupted work whose owner no longer holds its lock.
    pub fn clean_tmp(&self) -> Result<usize, StoreError> {
        let mut removed = self.clean_dir(&self.root.join("tmp"), "")?;
        if self.unpacks {
            removed += self.clean_dir(&self.root.join("layers"), ".")?;
        }
        Ok(removed)
    }

    /// Removes the entries of `dir` named `PREFIX<lock key>.<random>` whose lock is free.
    fn clean_dir(&self, dir: &Path, prefix: &str) -> Result<usize, StoreError> {
        let mut removed = 0;
        let entries = fs::read_dir(dir).map_err(|e| StoreError::io(dir, "list", e))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(name) = name.strip_prefix(prefix) else { continue };
            if prefix.is_empty() && name.starts_with('.') {
                continue;
            }
            let key = name.rsplit_once('.').map_or(name, |(k, _)| k);
            let lock = self.root.join("locks").join(format!("{key}.lock"));
            if let Ok(Some(_held)) = Lock::try_lock(&lock, LockKind::Exclusive) {
                remove_any(&e.path()).map_err(|err| StoreError::io(&e.path(), "remove leftover", err))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Starts writing a blob; see [`BlobWriter`].
    /// `owner` is the lock key the caller holds, so that [`Store::clean_tmp`] can tell a
    /// leftover from work in progress.
    pub fn blob_writer(&self, expected: Option<(Digest, u64)>, owner: &str) -> Result<BlobWriter, StoreError> {
        use std::os::unix::fs::OpenOptionsExt;
        use std::os::unix::fs::PermissionsExt;
        let tmp = self.tmp_path(owner);
        // create_new: never through something another user put at that name.
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(|e| StoreError::io(&tmp, "create", e))?;
        // Readable by root and by the husk group whatever the umask (a 0600 blob root wrote
        // would be unreadable to a member's fetch, and vice versa).
        file.set_permissions(fs::Permissions::from_mode(0o644))
            .map_err(|e| StoreError::io(&tmp, "set the mode of", e))?;
        Ok(BlobWriter { store: self.clone(), tmp, file: Some(file), hasher: Sha256::new(), size: 0, expected })
    }

    /// Stores a small blob from memory, verifying it against `expected` when given.
    pub fn put_blob(&self, data: &[u8], expected: Option<&Digest>) -> Result<Digest, StoreError> {
        // The data is in memory: its digest names the lock, so lock files stay one per blob.
        let digest = match expected {
            Some(d) => d.clone(),
            None => hash_bytes(data),
        };
        let owner = format!("blob-{}", digest.hex());
        let _lock = self.lock_key(&owner)?;
        let mut w = self.blob_writer(expected.map(|d| (d.clone(), data.len() as u64)), &owner)?;
        w.write_all(data).map_err(|e| StoreError::io(&w.tmp, "write", e))?;
        w.commit()
    }

    // ----- image records and references -----

    /// The record of the image whose manifest is `manifest`.
    pub fn image_path(&self, manifest: &Digest) -> PathBuf {
        self.root.join("images").join(format!("{}.json", manifest.hex()))
    }

    pub fn write_image(&self, rec: &ImageRecord) -> Result<(), StoreError> {
        let p = self.image_path(&rec.manifest);
        let data = serde_json::to_vec_pretty(rec).expect("image record serializes");
        atomic_write(&p, &data, 0o644).map_err(|e| StoreError::io(&p, "write image record", e))
    }

    /// Reads the record of one manifest.
    pub fn read_image(&self, manifest: &Digest) -> Result<ImageRecord, StoreError> {
        let p = self.image_path(manifest);
        let data = read_small(&p).map_err(|e| StoreError::io(&p, "read image record", e))?;
        serde_json::from_slice(&data).map_err(|e| StoreError::Corrupt { path: p, why: e.to_string() })
    }

    /// Removes the record of one manifest (its names are the caller's business).
    pub fn remove_image(&self, manifest: &Digest) -> Result<(), StoreError> {
        let p = self.image_path(manifest);
        match fs::remove_file(&p) {
            Ok(()) => husk_sys::fsync_dir(&self.root.join("images")).map_err(|e| StoreError::io(&p, "sync", e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(&p, "remove image record", e)),
        }
    }

    /// Every image record, oldest fetch first.
    pub fn images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        let dir = self.root.join("images");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(|e| StoreError::io(&dir, "list", e))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(hex) = name.strip_suffix(".json") else { continue };
            let Ok(manifest) = Digest::from_sha256_hex(hex) else { continue };
            match self.read_image(&manifest) {
                Ok(r) => out.push(r),
                // A record removed by a concurrent `image rm` is not an error.
                Err(StoreError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by_key(|a| a.fetched);
        Ok(out)
    }

    fn ref_path(&self, name: &str) -> PathBuf {
        self.root.join("refs").join(format!("{}.json", escape_ref(name)))
    }

    /// Points `name` at `rec`'s manifest, with what the trust policy checked.
    pub fn write_ref(
        &self,
        name: &str,
        rec: &ImageRecord,
        trust: Option<husk_trust::TrustRecord>,
    ) -> Result<(), StoreError> {
        let r = RefRecord {
            name: name.to_string(),
            id: rec.id.clone(),
            manifest: rec.manifest.clone(),
            updated: chrono::Utc::now(),
            trust,
        };
        self.put_ref(&r)
    }

    pub(crate) fn put_ref(&self, r: &RefRecord) -> Result<(), StoreError> {
        let p = self.ref_path(&r.name);
        atomic_write(&p, &serde_json::to_vec_pretty(r).expect("ref serializes"), 0o644)
            .map_err(|e| StoreError::io(&p, "write reference", e))
    }

    pub fn read_ref(&self, name: &str) -> Result<Option<RefRecord>, StoreError> {
        let p = self.ref_path(name);
        match read_small(&p) {
            Ok(d) => {
                serde_json::from_slice(&d).map(Some).map_err(|e| StoreError::Corrupt { path: p, why: e.to_string() })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io(&p, "read reference", e)),
        }
    }

    /// The record a reference points at.
    pub fn read_ref_image(&self, r: &RefRecord) -> Result<ImageRecord, StoreError> {
        self.read_image(&r.manifest).map_err(|e| match e {
            StoreError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                StoreError::DanglingRef { name: r.name.clone(), manifest: r.manifest.clone() }
            }
            e => e,
        })
    }

    pub fn remove_ref(&self, name: &str) -> Result<(), StoreError> {
        let p = self.ref_path(name);
        match fs::remove_file(&p) {
            Ok(()) => husk_sys::fsync_dir(&self.root.join("refs")).map_err(|e| StoreError::io(&p, "sync", e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(&p, "remove reference", e)),
        }
    }

    pub fn refs(&self) -> Result<Vec<RefRecord>, StoreError> {
        let dir = self.root.join("refs");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(|e| StoreError::io(&dir, "list", e))?.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json") {
                if let Ok(d) = read_small(&p) {
                    let r: RefRecord = serde_json::from_slice(&d)
                        .map_err(|e| StoreError::Corrupt { path: p.clone(), why: e.to_string() })?;
                    out.push(r);
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Finds an image by reference name (`busybox`, `host/x:tag`) or by a unique ID prefix.
    pub fn resolve(&self, what: &str) -> Result<ImageRecord, StoreError> {
        Ok(self.lookup(what)?.record)
    }

    /// Finds an image by reference name, by a prefix of its image ID or by a prefix of its
    /// manifest digest (`sha256:` optional, at least 4 hex digits), and says which matched.
    /// An ID prefix shared by several manifests of one image picks the latest fetched (they run
    /// the same tree); a prefix matching two different images is ambiguous.
    pub fn lookup(&self, what: &str) -> Result<Found, StoreError> {
        let mut names = Vec::with_capacity(2);
        if let Ok(r) = Reference::parse(what) {
            names.push(r.normalized().to_string());
        }
        names.push(what.to_string());
        for name in names {
            if let Some(rr) = self.read_ref(&name)? {
                return Ok(Found { record: self.read_ref_image(&rr)?, via: Via::Name(name) });
            }
        }
        let prefix = what.strip_prefix("sha256:").unwrap_or(what);
        if prefix.len() >= 4 && prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            let prefix = prefix.to_ascii_lowercase();
            let mut by_id = Vec::new();
            let mut by_manifest = Vec::new();
            for i in self.images()? {
                if i.manifest.hex().starts_with(&prefix) {
                    by_manifest.push(i);
                } else if i.id.hex().starts_with(&prefix) {
                    by_id.push(i);
                }
            }
            let mut ids: Vec<&Digest> = by_id.iter().chain(&by_manifest).map(|i| &i.id).collect();
            ids.sort();
            ids.dedup();
            match (ids.len(), by_manifest.len()) {
                (0, _) => {}
                (1, 1) if by_id.is_empty() => {
                    return Ok(Found { record: by_manifest.pop().expect("one"), via: Via::Manifest })
                }
                // `images()` is sorted oldest first: the last is the latest fetched.
                (1, 0) => return Ok(Found { record: by_id.pop().expect("at least one"), via: Via::Id }),
                (n, _) => return Err(StoreError::Ambiguous { what: what.to_string(), count: n.max(2) }),
            }
        }
        Err(StoreError::UnknownImage { what: what.to_string() })
    }

    /// Names pointing at one manifest.
    pub fn names_of(&self, manifest: &Digest) -> Result<Vec<String>, StoreError> {
        Ok(self.refs()?.into_iter().filter(|r| &r.manifest == manifest).map(|r| r.name).collect())
    }

    /// Every record of one image ID (one per manifest).
    pub fn records_of(&self, id: &Digest) -> Result<Vec<ImageRecord>, StoreError> {
        Ok(self.images()?.into_iter().filter(|r| &r.id == id).collect())
    }

    /// Publishes a tree staged by [`Store::tree_staging_path`] (its `rootfs/` and `layer.json`
    /// complete) as the layer `diff_id`, under that layer's key lock. A damaged tree there (its
    /// rootfs or record deleted) is replaced whole.
    pub fn publish_layer(&self, staging: &Path, diff_id: &Digest) -> Result<(), StoreError> {
        let dest = self.layer_dir(diff_id);
        if dest.exists() {
            remove_any(&dest).map_err(|e| StoreError::io(&dest, "remove damaged layer", e))?;
        }
        fs::rename(staging, &dest).map_err(|e| StoreError::io(&dest, "publish layer", e))?;
        husk_sys::fsync_dir(&self.root.join("layers")).map_err(|e| StoreError::io(&dest, "sync", e))
    }

    /// Records an unpacked tree as complete (called on the tmp dir before it is renamed).
    pub fn write_layer_meta(dir: &Path, meta: &LayerMeta) -> Result<(), StoreError> {
        let p = dir.join("layer.json");
        atomic_write(&p, &serde_json::to_vec_pretty(meta).expect("meta serializes"), 0o644)
            .map_err(|e| StoreError::io(&p, "write layer metadata", e))
    }

    pub fn read_layer_meta(&self, diff_id: &Digest) -> Result<LayerMeta, StoreError> {
        let p = self.layer_dir(diff_id).join("layer.json");
        let d = fs::read(&p).map_err(|e| StoreError::io(&p, "read layer metadata", e))?;
        serde_json::from_slice(&d).map_err(|e| StoreError::Corrupt { path: p, why: e.to_string() })
    }
}

/// A reference name as a file name: '/' and ':' and '@' cannot stay, '%' escapes itself.
fn escape_ref(name: &str) -> String {
    let mut s = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        match c {
            '%' => s.push_str("%25"),
            '/' => s.push_str("%2F"),
            _ => s.push(c),
        }
    }
    s
}

/// Streams a blob into `tmp/`, hashing as it goes; [`BlobWriter::commit`] makes it visible only
/// when digest and size match what was expected. Dropping it uncommitted removes the temp file.
pub struct BlobWriter {
    store: Store,
    tmp: PathBuf,
    file: Option<File>,
    hasher: Sha256,
    size: u64,
    expected: Option<(Digest, u64)>,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.as_mut().expect("writer not committed").write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().expect("writer not committed").flush()
    }
}

impl BlobWriter {
    pub fn written(&self) -> u64 {
        self.size
    }

    /// Verifies and publishes the blob, returning its digest.
    pub fn commit(mut self) -> Result<Digest, StoreError> {
        let got = Digest::from_sha256_bytes(&std::mem::take(&mut self.hasher).finalize().into());
        if let Some((want, want_size)) = &self.expected {
            // Returning with `file` still set lets Drop remove the temp file.
            if &got != want {
                return Err(StoreError::DigestMismatch { expected: want.clone(), actual: got });
            }
            if self.size != *want_size {
                return Err(StoreError::SizeMismatch { digest: want.clone(), expected: *want_size, actual: self.size });
            }
        }
        let file = self.file.take().expect("commit once");
        file.sync_all().map_err(|e| StoreError::io(&self.tmp, "sync", e))?;
        drop(file);
        let dest = self.store.blob_path(&got);
        fs::rename(&self.tmp, &dest).map_err(|e| StoreError::io(&dest, "publish blob", e))?;
        husk_sys::fsync_dir(dest.parent().unwrap()).map_err(|e| StoreError::io(&dest, "sync", e))?;
        Ok(got)
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Removes a file, symlink or directory tree.
/// A store metadata file: a regular file, not through a symlink (members of the husk group
/// write the directories these are in), at most 16 MiB.
fn read_small(p: &Path) -> io::Result<Vec<u8>> {
    let f = husk_sys::fsutil::open_regular_nofollow(p)?;
    let mut out = Vec::new();
    f.take(MAX_READ_BLOB).read_to_end(&mut out)?;
    Ok(out)
}

pub fn remove_any(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Checks bytes held in memory against their descriptor: size, then digest.
pub fn check_blob(digest: &Digest, size: u64, bytes: &[u8]) -> Result<(), StoreError> {
    if bytes.len() as u64 != size {
        return Err(StoreError::SizeMismatch { digest: digest.clone(), expected: size, actual: bytes.len() as u64 });
    }
    let actual = hash_bytes(bytes);
    if &actual != digest {
        return Err(StoreError::DigestMismatch { expected: digest.clone(), actual });
    }
    Ok(())
}

/// The sha256 digest of bytes in memory (no copy through [`hash_reader`]'s buffer: a `run`
/// hashes the image's manifest and config each time).
pub fn hash_bytes(bytes: &[u8]) -> Digest {
    Digest::from_sha256_bytes(&Sha256::digest(bytes).into())
}

/// Hashes a reader to its sha256 digest.
pub fn hash_reader(mut r: impl Read) -> io::Result<(Digest, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((Digest::from_sha256_bytes(&h.finalize().into()), n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_and_a_reader_of_them_hash_alike_across_the_readers_buffer() {
        for len in [0usize, 1, 4096, 256 * 1024, 256 * 1024 + 1, 600 * 1024] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            assert_eq!(hash_bytes(&data), hash_reader(&data[..]).unwrap().0, "{len} bytes");
        }
        // The well-known digest of nothing.
        assert_eq!(
            hash_bytes(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn blob_mismatch_names_both_digests_and_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let wrong = Digest::from_sha256_bytes(&[7; 32]);
        let err = s.put_blob(b"hello", Some(&wrong)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&wrong.to_string()), "{msg}");
        assert!(msg.contains("2cf24dba5fb0a30e"), "{msg}");
        assert!(!s.has_blob(&wrong));
        assert_eq!(fs::read_dir(s.root().join("tmp")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(s.root().join("blobs/sha256")).unwrap().count(), 0);
    }

    /// Another user of a shared store may swap a blob, or put a symlink or a FIFO in its place:
    /// what a read returns is checked, and never read through a link or blocked on a FIFO.
    #[test]
    fn a_swapped_blob_or_record_is_never_believed() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let id = s.put_blob(b"hello", None).unwrap();
        std::fs::write(s.blob_path(&id), b"jello").unwrap();
        assert!(matches!(s.read_blob(&id), Err(StoreError::DigestMismatch { .. })));
        std::fs::remove_file(s.blob_path(&id)).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", s.blob_path(&id)).unwrap();
        assert!(matches!(s.read_blob(&id), Err(StoreError::Io { .. })));
        assert!(s.open_blob(&id).is_err());
        let r = s.ref_path("h.io/a:1");
        rustix::fs::mkfifoat(rustix::fs::CWD, &r, rustix::fs::Mode::from_raw_mode(0o600)).unwrap();
        assert!(s.read_ref("h.io/a:1").is_err(), "a FIFO is refused, not waited on");
    }

    #[test]
    fn blob_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let id = s.put_blob(b"hello", None).unwrap();
        assert_eq!(id.hex(), "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        assert_eq!(s.read_blob(&id).unwrap(), b"hello");
        // Storing it again is harmless.
        s.put_blob(b"hello", Some(&id)).unwrap();
    }

    #[test]
    fn stale_tmp_is_cleaned_only_when_unlocked() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let busy = s.tmp_path("blob-aaaa");
        fs::write(&busy, b"x").unwrap();
        let stale = s.tmp_path("blob-bbbb");
        fs::create_dir(&stale).unwrap();
        let _held = s.lock_key("blob-aaaa").unwrap();
        assert_eq!(s.clean_tmp().unwrap(), 1);
        assert!(busy.exists());
        assert!(!stale.exists());
    }

    /// A tree being unpacked is staged in `layers/` (root's alone); what a killed unpack left
    /// there goes once its lock is free, and never a published tree.
    #[test]
    fn stale_tree_staging_is_cleaned_only_when_unlocked() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        assert!(s.unpacks(), "the tests run as root");
        let busy = s.tree_staging_path("layer-aaaa");
        let stale = s.tree_staging_path("layer-bbbb");
        for p in [&busy, &stale] {
            fs::create_dir_all(p.join("rootfs")).unwrap();
        }
        let published = s.layer_dir(&Digest::from_sha256_bytes(&[7; 32]));
        fs::create_dir_all(published.join("rootfs")).unwrap();
        assert!(busy.file_name().unwrap().to_string_lossy().starts_with(".layer-aaaa."));
        let _held = s.lock_key("layer-aaaa").unwrap();
        assert_eq!(s.clean_tmp().unwrap(), 1);
        assert!(busy.exists() && published.exists());
        assert!(!stale.exists());
    }

    #[test]
    fn ref_names_escape() {
        assert_eq!(escape_ref("127.0.0.1:5000/a/b:t"), "127.0.0.1:5000%2Fa%2Fb:t");
        assert_ne!(escape_ref("a/b"), escape_ref("a%2Fb"));
    }
}
