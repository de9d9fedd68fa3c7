//! Errors of the image store and of fetching. Each names the thing it is about.

use std::io;
use std::path::{Path, PathBuf};

use husk_types::Digest;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("failed to {action} {path}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Lock(#[from] husk_sys::LockError),
    #[error("store file {path} is corrupt: {why}")]
    Corrupt { path: PathBuf, why: String },
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("size mismatch for {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch { digest: Digest, expected: u64, actual: u64 },
    #[error("no image {what:?} in the store")]
    UnknownImage { what: String },
    #[error("{what:?} matches {count} images; give more of the ID or a full name")]
    Ambiguous { what: String, count: usize },
    #[error("image {name} is used by pod(s) {pods}; remove those pods first (husk rm) or let `husk gc` collect them")]
    InUse { name: String, pods: String },
    #[error("image {name} is damaged in the store: the unpacked layer tree(s) {missing} are missing")]
    LayersMissing { name: String, missing: String },
    #[error("image {name} points at manifest {manifest}, which is not in the store")]
    DanglingRef { name: String, manifest: Digest },
    #[error("the store at {path} has format {found}, newer than this husk knows ({known}); use a newer husk")]
    NewerFormat { path: PathBuf, found: u32, known: u32 },
}

impl StoreError {
    pub fn io(path: &Path, action: &'static str, source: io::Error) -> Self {
        StoreError::Io { path: path.to_path_buf(), action, source }
    }

    /// Whether the cause is a full disk, which deserves its own hint.
    pub fn is_disk_full(&self) -> bool {
        disk_full(self)
    }
}

/// Whether a full disk (ENOSPC) is anywhere in an error's cause chain.
pub fn disk_full(e: &(dyn std::error::Error + 'static)) -> bool {
    const ENOSPC: i32 = 28;
    let mut cur = Some(e);
    while let Some(e) = cur {
        if e.downcast_ref::<io::Error>().and_then(|i| i.raw_os_error()) == Some(ENOSPC) {
            return true;
        }
        cur = e.source();
    }
    false
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer entry {entry:?}: {source}")]
    BadPath {
        entry: String,
        #[source]
        source: husk_types::tarpath::TarPathError,
    },
    #[error("layer entry {entry:?} goes through a symlink or out of the layer ({why}); refusing the layer")]
    Escape { entry: String, why: String },
    #[error("layer entry {entry:?} is a hard link to {target:?}, which is outside the layer or missing")]
    BadHardlink { entry: String, target: String },
    #[error("layer entry {entry:?} has unsupported type {kind:?}")]
    UnsupportedType { entry: String, kind: String },
    #[error("failed to {action} layer entry {entry:?}")]
    Io {
        entry: String,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("layer is not a valid tar stream (truncated or corrupt)")]
    Tar(#[source] io::Error),
    #[error("layer content digest mismatch: expected diff_id {expected}, got {actual}")]
    DiffIdMismatch { expected: Digest, actual: Digest },
}

impl UnpackError {
    pub fn io(entry: &Path, action: &'static str, source: io::Error) -> Self {
        UnpackError::Io { entry: entry.display().to_string(), action, source }
    }
}

/// Errors of `fetch` and `import`, naming the image.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{image}: {source}")]
    Store {
        image: String,
        #[source]
        source: StoreError,
    },
    #[error("{image}: layer {digest}: {source}")]
    Unpack {
        image: String,
        digest: Digest,
        #[source]
        source: UnpackError,
    },
    #[error("{image}: cannot reach registry {registry}: {why}")]
    Unreachable { image: String, registry: String, why: String },
    #[error("{image}: registry {registry} refused access ({status}): {why}")]
    Denied { image: String, registry: String, status: u16, why: String },
    #[error("{image}: not found in registry {registry}")]
    NotFound { image: String, registry: String },
    #[error("{image}: registry error: {why}")]
    Registry { image: String, why: String },
    #[error("{image}: unsupported media type {media_type:?}")]
    UnsupportedMediaType { image: String, media_type: String },
    #[error("{image}: no manifest for platform {platform} in the image index (available: {available})")]
    NoPlatform { image: String, platform: String, available: String },
    #[error("{image}: invalid {what}: {why}")]
    Invalid { image: String, what: &'static str, why: String },
    #[error("{image}: not in the store and the pull policy is `never`")]
    NotInStore { image: String },
    #[error("{image}: {why}")]
    Source { image: String, why: String },
    /// The trust policy refused the image (each signature's reason is in it).
    #[error(transparent)]
    Untrusted(#[from] husk_trust::Rejected),
    #[error("{image}: cannot read its signatures: {why}")]
    Signatures { image: String, why: String },
}

impl FetchError {
    /// A hint to print below the message, when one helps.
    /// Whether the data dir's disk filled up: the host's problem, not the image's.
    pub fn is_disk_full(&self) -> bool {
        disk_full(self)
    }
}
