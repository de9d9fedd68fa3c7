//! Local image sources and sinks: OCI image layouts, OCI archives, `docker save` archives.

use std::fs::File;
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};

use husk_types::Digest;
use oci_spec::image::ImageIndex;
use serde::Deserialize;

use crate::error::{FetchError, StoreError};
use crate::ingest::{
    check_metadata_size, manifest_kind, parse_digest, select_platform, BlobSource, LayoutBlobs, MAX_METADATA_SIZE,
    MT_DOCKER_LIST, MT_OCI_CONFIG, MT_OCI_INDEX, MT_OCI_LAYER,
};
use crate::store::{hash_bytes, hash_reader, remove_any, ImageRecord, Store};

pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// The manifest an OCI layout's index offers for `tag` (or its only manifest), resolving a
/// nested index to the host platform.
pub fn layout_manifest(dir: &Path, tag: Option<&str>, image: &str) -> Result<(Vec<u8>, Digest), FetchError> {
    let src_err = |why: String| FetchError::Source { image: image.to_string(), why };
    let index_path = dir.join("index.json");
    let not_layout =
        |e: io::Error| src_err(format!("{} is not an OCI image layout ({}: {e})", dir.display(), index_path.display()));
    let mut data = Vec::new();
    io::Read::read_to_end(
        &mut io::Read::take(husk_sys::fsutil::open_regular(&index_path).map_err(not_layout)?, MAX_METADATA_SIZE + 1),
        &mut data,
    )
    .map_err(not_layout)?;
    check_metadata_size(image, "index.json", data.len() as u64)?;
    let index: ImageIndex = serde_json::from_slice(&data).map_err(|e| FetchError::Invalid {
        image: image.to_string(),
        what: "index.json",
        why: e.to_string(),
    })?;
    let entries = index.manifests();
    let tag_of =
        |m: &oci_spec::image::Descriptor| m.annotations().as_ref().and_then(|a| a.get(REF_NAME_ANNOTATION).cloned());
    let chosen = match tag {
        Some(t) => entries.iter().find(|m| tag_of(m).as_deref() == Some(t)).ok_or_else(|| {
            let tags: Vec<String> = entries.iter().filter_map(tag_of).collect();
            src_err(format!(
                "no image tagged {t:?} in {} (tags: {})",
                dir.display(),
                if tags.is_empty() { "none".into() } else { tags.join(", ") }
            ))
        })?,
        None if entries.len() == 1 => &entries[0],
        None => {
            let tags: Vec<String> = entries.iter().filter_map(tag_of).collect();
            return Err(src_err(format!(
                "{} holds {} images; name one as oci:DIR:TAG (tags: {})",
                dir.display(),
                entries.len(),
                tags.join(", ")
            )));
        }
    };
    let mut digest = parse_digest(image, chosen.digest().as_ref())?;
    let mut want_size = chosen.size();
    let blobs = LayoutBlobs { dir, image };
    for _ in 0..4 {
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut io::Read::take(blobs.open(&digest, 0)?, MAX_METADATA_SIZE + 1), &mut bytes)
            .map_err(|e| src_err(e.to_string()))?;
        check_metadata_size(image, "manifest", bytes.len() as u64)?;
        if want_size != 0 && want_size != bytes.len() as u64 {
            return Err(FetchError::Store {
                image: image.to_string(),
                source: StoreError::SizeMismatch { digest, expected: want_size, actual: bytes.len() as u64 },
            });
        }
        let actual = hash_bytes(&bytes);
        if actual != digest {
            return Err(FetchError::Store {
                image: image.to_string(),
                source: StoreError::DigestMismatch { expected: digest, actual },
            });
        }
        match manifest_kind(&bytes, None).as_deref() {
            Some(MT_OCI_INDEX) | Some(MT_DOCKER_LIST) => (digest, want_size) = select_platform(image, &bytes)?,
            _ => return Ok((bytes, digest)),
        }
    }
    Err(FetchError::Invalid { image: image.to_string(), what: "image index", why: "indexes nested too deeply".into() })
}

/// Unpacks an archive (OCI or docker) into a scratch directory of the store.
pub fn extract_archive(store: &Store, file: &Path, image: &str) -> Result<ScratchDir, FetchError> {
    let f = File::open(file).map_err(|e| FetchError::Source {
        image: image.to_string(),
        why: format!("cannot open {}: {e}", file.display()),
    })?;
    let key = format!("archive-{:016x}", rand::random::<u64>());
    let lock = store.lock_key(&key).map_err(|e| FetchError::Store { image: image.to_string(), source: e })?;
    let dir = store.tmp_path(&key);
    std::fs::create_dir(&dir)
        .map_err(|e| FetchError::Store { image: image.to_string(), source: StoreError::io(&dir, "create", e) })?;
    let scratch = ScratchDir { path: dir, lock: Some(lock) };
    let mut ar = tar::Archive::new(BufReader::new(f));
    ar.set_preserve_permissions(false);
    ar.set_preserve_ownerships(false);
    // The archive is a container of blobs, not a root filesystem: tar's unpacker (which refuses
    // entries leaving the directory) is enough here.
    ar.unpack(&scratch.path).map_err(|e| FetchError::Source {
        image: image.to_string(),
        why: format!("{} is not a readable tar archive: {e}", file.display()),
    })?;
    Ok(scratch)
}

/// A directory in the store's tmp/, removed on drop, owned through a held lock on a key of
/// its own (removed with it: nobody else ever uses that key).
pub struct ScratchDir {
    pub path: PathBuf,
    lock: Option<husk_sys::Lock>,
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = remove_any(&self.path);
        if let Some(l) = self.lock.take() {
            let _ = std::fs::remove_file(l.path());
        }
    }
}

#[derive(Deserialize)]
struct DockerArchiveEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// A `docker save` archive, turned into an OCI layout (the same blobs, a generated manifest).
pub struct DockerArchive {
    pub scratch: ScratchDir,
    pub manifest: Vec<u8>,
    pub digest: Digest,
    pub repo_tag: Option<String>,
}

pub fn docker_archive(store: &Store, file: &Path, image: &str) -> Result<DockerArchive, FetchError> {
    let scratch = extract_archive(store, file, image)?;
    let src_err = |why: String| FetchError::Source { image: image.to_string(), why };
    let mpath = scratch.path.join("manifest.json");
    let data = std::fs::read(&mpath)
        .map_err(|e| src_err(format!("{} is not a docker archive (no manifest.json: {e})", file.display())))?;
    let entries: Vec<DockerArchiveEntry> = serde_json::from_slice(&data).map_err(|e| FetchError::Invalid {
        image: image.to_string(),
        what: "docker archive manifest.json",
        why: e.to_string(),
    })?;
    let entry = match entries.as_slice() {
        [one] => one,
        [] => return Err(src_err("the archive holds no image".into())),
        many => return Err(src_err(format!("the archive holds {} images; husk imports one at a time", many.len()))),
    };
    let blob_dir = scratch.path.join("blobs/sha256");
    std::fs::create_dir_all(&blob_dir).map_err(|e| src_err(e.to_string()))?;
    // Move every referenced file to its content address so LayoutBlobs can serve it.
    let place = |rel: &str| -> Result<(Digest, u64), FetchError> {
        let p = scratch.path.join(rel);
        if !p.starts_with(&scratch.path) || rel.contains("..") {
            return Err(src_err(format!("entry {rel:?} leaves the archive")));
        }
        let f = File::open(&p).map_err(|e| src_err(format!("missing {rel}: {e}")))?;
        let (d, n) = hash_reader(BufReader::new(f)).map_err(|e| src_err(e.to_string()))?;
        let dest = blob_dir.join(d.hex());
        if !dest.exists() {
            std::fs::hard_link(&p, &dest)
                .or_else(|_| std::fs::copy(&p, &dest).map(|_| ()))
                .map_err(|e| src_err(e.to_string()))?;
        }
        Ok((d, n))
    };
    let (cfg_d, cfg_n) = place(&entry.config)?;
    let mut layers = Vec::new();
    for l in &entry.layers {
        let (d, n) = place(l)?;
        let mut head = [0u8; 4];
        let _ = io::Read::read(&mut File::open(blob_dir.join(d.hex())).map_err(|e| src_err(e.to_string()))?, &mut head);
        let mt = match crate::unpack::Compression::sniff(&head) {
            crate::unpack::Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            crate::unpack::Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
            crate::unpack::Compression::None => MT_OCI_LAYER,
        };
        layers.push(serde_json::json!({"mediaType": mt, "digest": d.to_string(), "size": n}));
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": crate::ingest::MT_OCI_MANIFEST,
        "config": {"mediaType": MT_OCI_CONFIG, "digest": cfg_d.to_string(), "size": cfg_n},
        "layers": layers,
    }))
    .expect("json");
    let digest = hash_bytes(&manifest);
    let repo_tag = entry.repo_tags.as_ref().and_then(|t| t.first().cloned());
    Ok(DockerArchive { scratch, manifest, digest, repo_tag })
}

/// Writes an image as an OCI archive (a tar of an OCI layout) that podman, skopeo and husk load.
pub fn export_oci_archive(store: &Store, rec: &ImageRecord, name: Option<&str>, out: &Path) -> Result<(), StoreError> {
    let tmp = out.with_file_name(format!(
        ".{}.husk-tmp",
        out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    ));
    let f = File::create(&tmp).map_err(|e| StoreError::io(&tmp, "create", e))?;
    let result = (|| -> Result<(), StoreError> {
        let mut b = tar::Builder::new(io::BufWriter::new(f));
        let add_bytes =
            |b: &mut tar::Builder<io::BufWriter<File>>, path: &str, data: &[u8]| -> Result<(), StoreError> {
                let mut h = tar::Header::new_ustar();
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                h.set_mtime(0);
                h.set_entry_type(tar::EntryType::Regular);
                b.append_data(&mut h, path, data).map_err(|e| StoreError::io(out, "write", e))
            };
        add_bytes(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let manifest_size = std::fs::metadata(store.blob_path(&rec.manifest))
            .map_err(|e| StoreError::io(&store.blob_path(&rec.manifest), "read", e))?
            .len();
        let mut desc = serde_json::json!({"mediaType": rec.manifest_media_type, "digest": rec.manifest.to_string(), "size": manifest_size});
        if let Some(n) = name {
            let tag = husk_types::Reference::parse(n).ok().and_then(|r| r.tag).unwrap_or_else(|| "latest".into());
            desc["annotations"] = serde_json::json!({REF_NAME_ANNOTATION: tag, "io.containerd.image.name": n});
        }
        let index = serde_json::json!({"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": [desc]});
        add_bytes(&mut b, "index.json", &serde_json::to_vec(&index).expect("json"))?;
        let mut digests = vec![rec.manifest.clone(), rec.config.clone()];
        digests.extend(rec.layers.iter().map(|l| l.digest.clone()));
        digests.dedup();
        for d in digests {
            let p = store.blob_path(&d);
            let mut bf = File::open(&p).map_err(|e| StoreError::io(&p, "open blob", e))?;
            b.append_file(format!("blobs/sha256/{}", d.hex()), &mut bf).map_err(|e| StoreError::io(out, "write", e))?;
        }
        let w = b.into_inner().map_err(|e| StoreError::io(out, "write", e))?;
        let f = w.into_inner().map_err(|e| StoreError::io(out, "write", e.into_error()))?;
        f.sync_all().map_err(|e| StoreError::io(out, "sync", e))?;
        std::fs::rename(&tmp, out).map_err(|e| StoreError::io(out, "write", e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
