//! Store format upgrades, run by [`Store::open`] when `store/version` is older than this husk.
//!
//! Format 1 (husk 0.1) kept one record per image ID (`images/<config hex>.json`): fetching the
//! same image as OCI+gzip, OCI+zstd and Docker v2s2 left one record with the last manifest, and
//! every name showed (and exported) that one. Format 2 keys records by manifest. The upgrade
//! re-keys each record, then gives every reference whose manifest lost its record that record
//! back, rebuilt from the blobs still in the store; when those blobs are gone (format 1's `image
//! gc` kept only the surviving manifest's), the reference is pointed at the surviving manifest of
//! the same image, which runs the same tree. Nothing the user named is dropped.

use std::fs;
use std::io;

use husk_types::Digest;

use crate::error::StoreError;
use crate::ingest::{layer_records, parse_manifest};
use crate::store::{ImageRecord, RefRecord, Store, STORE_FORMAT_VERSION};

const VERSION_FILE: &str = "version";

fn read_version(store: &Store) -> Result<Option<u32>, StoreError> {
    let p = store.root().join(VERSION_FILE);
    match fs::read_to_string(&p) {
        Ok(s) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| StoreError::Corrupt { path: p, why: format!("{:?} is not a format number", s.trim()) }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io(&p, "read store format", e)),
    }
}

fn write_version(store: &Store) -> Result<(), StoreError> {
    let p = store.root().join(VERSION_FILE);
    husk_sys::atomic_write(&p, format!("{STORE_FORMAT_VERSION}\n").as_bytes(), 0o644)
        .map_err(|e| StoreError::io(&p, "write store format", e))
}

/// Whether the store holds anything a format could apply to.
fn is_empty(store: &Store) -> Result<bool, StoreError> {
    for sub in ["images", "refs"] {
        let d = store.root().join(sub);
        if fs::read_dir(&d).map_err(|e| StoreError::io(&d, "list", e))?.next().is_some() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Brings the store to [`STORE_FORMAT_VERSION`], or refuses a newer one.
pub(crate) fn ensure_current(store: &Store) -> Result<(), StoreError> {
    let refuse_newer =
        |found| StoreError::NewerFormat { path: store.root().to_path_buf(), found, known: STORE_FORMAT_VERSION };
    match read_version(store)? {
        Some(v) if v == STORE_FORMAT_VERSION => return Ok(()),
        Some(v) if v > STORE_FORMAT_VERSION => return Err(refuse_newer(v)),
        _ => {}
    }
    // Another husk may be upgrading the same store: one does it, the other then sees it done.
    let _lock = store.lock_key("store-format")?;
    match read_version(store)? {
        Some(v) if v == STORE_FORMAT_VERSION => return Ok(()),
        Some(v) if v > STORE_FORMAT_VERSION => return Err(refuse_newer(v)),
        // A store without a version file is format 1, or new.
        None | Some(1) => {
            if !is_empty(store)? {
                from_v1(store)?;
            }
        }
        Some(v) => {
            return Err(StoreError::Corrupt {
                path: store.root().join(VERSION_FILE),
                why: format!("format {v} never existed"),
            })
        }
    }
    write_version(store)
}

fn from_v1(store: &Store) -> Result<(), StoreError> {
    let dir = store.root().join("images");
    let mut entries: Vec<_> = fs::read_dir(&dir).map_err(|e| StoreError::io(&dir, "list", e))?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(hex) = name.strip_suffix(".json") else { continue };
        let p = e.path();
        let data = fs::read(&p).map_err(|err| StoreError::io(&p, "read image record", err))?;
        let mut rec: ImageRecord = serde_json::from_slice(&data)
            .map_err(|err| StoreError::Corrupt { path: p.clone(), why: err.to_string() })?;
        if rec.manifest.hex() == hex {
            continue;
        }
        rec.format_version = STORE_FORMAT_VERSION;
        // Written before the old key is removed: a crash in between leaves both, never neither.
        if !store.image_path(&rec.manifest).is_file() {
            store.write_image(&rec)?;
        }
        fs::remove_file(&p).map_err(|err| StoreError::io(&p, "remove old image record", err))?;
    }
    for r in store.refs()? {
        if store.image_path(&r.manifest).is_file() {
            continue;
        }
        match rebuild(store, &r) {
            Some(rec) => {
                tracing::info!("store upgrade: {} gets its own record again (manifest {})", r.name, r.manifest);
                store.write_image(&rec)?;
            }
            None => match store.records_of(&r.id)?.pop() {
                Some(rec) => {
                    tracing::info!(
                        "store upgrade: the blobs of {} ({}) are gone; it now names manifest {} of the same image",
                        r.name,
                        r.manifest,
                        rec.manifest
                    );
                    store.put_ref(&RefRecord { manifest: rec.manifest.clone(), updated: chrono::Utc::now(), ..r })?;
                }
                // Its image was removed without the name (not something husk did): leave it for
                // `image rm` to clean, which reports it.
                None => tracing::warn!("store upgrade: {} names image {}, which is not in the store", r.name, r.id),
            },
        }
    }
    husk_sys::fsync_dir(&dir).map_err(|e| StoreError::io(&dir, "sync", e))
}

/// The format 2 record of a reference's manifest, from the blobs in the store; `None` when any
/// blob or tree it needs is gone.
fn rebuild(store: &Store, r: &RefRecord) -> Option<ImageRecord> {
    let bytes = store.read_blob(&r.manifest).ok()?;
    let (media_type, manifest) = parse_manifest(&r.name, &bytes).ok()?;
    let config: Digest = manifest.config().digest().as_ref().parse().ok()?;
    if config != r.id {
        return None;
    }
    let layers = layer_records(&r.name, &manifest, &store.read_blob(&config).ok()?).ok()?;
    if !layers.iter().all(|l| store.has_blob(&l.digest) && store.has_layer(&l.diff_id)) {
        return None;
    }
    Some(ImageRecord {
        format_version: STORE_FORMAT_VERSION,
        id: config.clone(),
        manifest: r.manifest.clone(),
        manifest_media_type: media_type,
        config,
        layers,
        fetched: r.updated,
        source: r.name.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::{MT_DOCKER_MANIFEST, MT_OCI_MANIFEST};
    use crate::store::{LayerMeta, Via};

    /// One image (one config, one layer) in two manifests: gzip (OCI) and as Docker v2s2.
    struct Fixture {
        _dir: tempfile::TempDir,
        data: std::path::PathBuf,
        store: Store,
        config: Digest,
        oci: (Digest, Digest),
        docker: (Digest, Digest),
    }

    fn manifest(media_type: &str, layer_type: &str, config: &Digest, layer: &Digest, config_size: usize) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": config_size},
            "layers": [{"mediaType": layer_type, "digest": layer.to_string(), "size": 5}],
        }))
        .unwrap()
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_path_buf();
        let store = Store::open(&data).unwrap();
        let diff = Digest::from_sha256_bytes(&[9; 32]);
        let config_bytes = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [diff.to_string()]},
        }))
        .unwrap();
        let config = store.put_blob(&config_bytes, None).unwrap();
        let tree = store.layer_dir(&diff);
        fs::create_dir_all(tree.join("rootfs")).unwrap();
        Store::write_layer_meta(
            &tree,
            &LayerMeta { diff_id: diff.clone(), tree_digest: diff.clone(), size: 0, files: 0 },
        )
        .unwrap();
        let gz = store.put_blob(b"gzip!", None).unwrap();
        let plain = store.put_blob(b"plain", None).unwrap();
        let m_oci =
            manifest(MT_OCI_MANIFEST, "application/vnd.oci.image.layer.v1.tar+gzip", &config, &gz, config_bytes.len());
        let m_docker = manifest(
            MT_DOCKER_MANIFEST,
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            &config,
            &plain,
            config_bytes.len(),
        );
        let oci = (store.put_blob(&m_oci, None).unwrap(), gz);
        let docker = (store.put_blob(&m_docker, None).unwrap(), plain);
        Fixture { _dir: dir, data, store, config, oci, docker }
    }

    /// What husk 0.1 left after fetching `oci` then `docker`: one record, keyed by the config,
    /// holding the last manifest; both names; no version file.
    fn make_v1(f: &Fixture) {
        let s = &f.store;
        let rec = |manifest: &Digest, layer: &Digest, mt: &str| ImageRecord {
            format_version: 1,
            id: f.config.clone(),
            manifest: manifest.clone(),
            manifest_media_type: mt.to_string(),
            config: f.config.clone(),
            layers: vec![crate::store::LayerRecord {
                digest: layer.clone(),
                media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                size: 5,
                diff_id: Digest::from_sha256_bytes(&[9; 32]),
            }],
            fetched: chrono::Utc::now(),
            source: "x".into(),
        };
        let oci = rec(&f.oci.0, &f.oci.1, MT_OCI_MANIFEST);
        let docker = rec(&f.docker.0, &f.docker.1, MT_DOCKER_MANIFEST);
        s.write_ref("localhost/app:oci", &oci, None).unwrap();
        s.write_ref("localhost/app:docker", &docker, None).unwrap();
        let p = s.root().join("images").join(format!("{}.json", f.config.hex()));
        fs::write(p, serde_json::to_vec(&docker).unwrap()).unwrap();
        fs::remove_file(s.root().join(VERSION_FILE)).unwrap();
    }

    #[test]
    fn a_new_store_is_current() {
        let f = fixture();
        assert_eq!(read_version(&f.store).unwrap(), Some(STORE_FORMAT_VERSION));
    }

    #[test]
    fn v1_records_are_split_per_manifest_and_every_name_keeps_its_own() {
        let f = fixture();
        make_v1(&f);
        let s = Store::open(&f.data).unwrap();
        assert_eq!(read_version(&s).unwrap(), Some(2));
        let oci = s.lookup("localhost/app:oci").unwrap();
        let docker = s.lookup("localhost/app:docker").unwrap();
        assert_eq!((oci.record.manifest, oci.record.manifest_media_type.as_str()), (f.oci.0.clone(), MT_OCI_MANIFEST));
        assert_eq!(oci.record.layers[0].digest, f.oci.1);
        assert_eq!(docker.record.manifest, f.docker.0);
        assert_eq!(docker.record.layers[0].digest, f.docker.1);
        assert_eq!(oci.record.id, docker.record.id);
        assert_eq!(s.images().unwrap().len(), 2);
        assert!(!s.root().join("images").join(format!("{}.json", f.config.hex())).exists());
        // Opening again changes nothing.
        let again = Store::open(&f.data).unwrap();
        assert_eq!(again.images().unwrap().len(), 2);
    }

    #[test]
    fn a_name_whose_blobs_are_gone_points_at_the_manifest_that_remained() {
        let f = fixture();
        make_v1(&f);
        fs::remove_file(f.store.blob_path(&f.oci.1)).unwrap();
        let s = Store::open(&f.data).unwrap();
        assert_eq!(s.lookup("localhost/app:oci").unwrap().record.manifest, f.docker.0);
        assert_eq!(s.images().unwrap().len(), 1);
        assert_eq!(s.names_of(&f.docker.0).unwrap().len(), 2);
    }

    #[test]
    fn lookup_by_id_or_manifest_prefix() {
        let f = fixture();
        make_v1(&f);
        let s = Store::open(&f.data).unwrap();
        let by_id = s.lookup(&f.config.hex()[..12]).unwrap();
        assert_eq!(by_id.via, Via::Id);
        assert_eq!(by_id.record.id, f.config);
        let by_manifest = s.lookup(&format!("sha256:{}", &f.oci.0.hex()[..12])).unwrap();
        assert_eq!((by_manifest.via, by_manifest.record.manifest), (Via::Manifest, f.oci.0.clone()));
        assert!(matches!(s.lookup("ffffffffffff"), Err(StoreError::UnknownImage { .. })));
    }

    #[test]
    fn a_newer_store_is_refused_and_left_alone() {
        let f = fixture();
        fs::write(f.store.root().join(VERSION_FILE), "7\n").unwrap();
        let err = Store::open(&f.data).unwrap_err();
        assert!(err.to_string().contains("format 7") && err.to_string().contains("newer husk"), "{err}");
        assert_eq!(fs::read_to_string(f.store.root().join(VERSION_FILE)).unwrap(), "7\n");
        fs::write(f.store.root().join(VERSION_FILE), "two").unwrap();
        assert!(matches!(Store::open(&f.data), Err(StoreError::Corrupt { .. })));
    }
}
