//! The base layer: a tree of eight entries that husk puts beneath every app's image layers. It
//! holds what stage1 mounts onto in every app — `/etc/hostname`, `/etc/hosts`,
//! `/etc/resolv.conf` (empty files), the `/etc/mtab` link, `/proc`, `/sys` and `/dev` — so that
//! an image which lacks them (most do) still has them, and stage1 finds its mount targets in a
//! lower layer instead of creating them in every pod's upper dir (an `/etc` copy-up and four
//! new inodes per pod, each a scan of the recently freed inodes on an ext4 without a journal).
//!
//! Lowest, it never hides anything: the image's own entry at a path wins, a whiteout in the image
//! hides the base's, and an image whose `/etc` is a symlink or a file hides the base's `/etc`
//! whole (stage1 then creates what it needs in the upper dir, as it does without the base).
//!
//! The tree is an ordinary layer of the store, built from a tar made here: named by its diff_id,
//! unpacked by the same code as an image's layers, listed in `layer.json` for `image verify`,
//! and kept by `image gc` while the store holds an image.

use std::path::PathBuf;

use husk_types::Digest;

use crate::error::StoreError;
use crate::store::{hash_bytes, remove_any, LayerMeta, Store};
use crate::unpack::{self, Mode};

/// The base layer as an uncompressed tar: fixed modes, owners and times, so that its diff_id is
/// the same for every husk that builds it alike.
pub fn tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut entry = |path: &str, kind: tar::EntryType, mode: u32, link: Option<&str>| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(0);
        if let Some(to) = link {
            h.set_link_name(to).expect("a short link target");
        }
        b.append_data(&mut h, path, std::io::empty()).expect("appending to a Vec cannot fail");
    };
    for d in ["dev/", "etc/", "proc/", "sys/"] {
        entry(d, tar::EntryType::Directory, 0o755, None);
    }
    for f in ["etc/hostname", "etc/hosts", "etc/resolv.conf"] {
        entry(f, tar::EntryType::Regular, 0o644, None);
    }
    entry("etc/mtab", tar::EntryType::Symlink, 0o777, Some("/proc/mounts"));
    b.into_inner().expect("finishing a Vec cannot fail")
}

/// The base layer's diff_id.
pub fn diff_id() -> Digest {
    hash_bytes(&tar())
}

/// The base layer's tree, unpacked into the store the first time it is needed. `None` when this
/// process does not unpack layers (a member of the husk group: only root writes `layers/`); the
/// caller then does without it. The caller holds the store lock (shared), as for any layer a pod
/// is built on.
pub fn ensure(store: &Store) -> Result<Option<PathBuf>, StoreError> {
    let tar = tar();
    let diff = hash_bytes(&tar);
    if store.has_layer(&diff) {
        return Ok(Some(store.layer_rootfs(&diff)));
    }
    if !store.unpacks() {
        return Ok(None);
    }
    let key = format!("layer-{}", diff.hex());
    let _lock = store.lock_key(&key)?;
    if store.has_layer(&diff) {
        return Ok(Some(store.layer_rootfs(&diff)));
    }
    let staging = store.tree_staging_path(&key);
    let result = (|| {
        let rootfs = staging.join("rootfs");
        std::fs::create_dir_all(&rootfs).map_err(|e| StoreError::io(&rootfs, "create", e))?;
        unpack::unpack(&tar[..], &rootfs, Mode::Overlay)
            .map_err(|e| StoreError::io(&rootfs, "unpack the base layer into", std::io::Error::other(e)))?;
        let (tree_digest, size, files) =
            unpack::tree_digest(&rootfs).map_err(|e| StoreError::io(&rootfs, "hash", e))?;
        Store::write_layer_meta(&staging, &LayerMeta { diff_id: diff.clone(), tree_digest, size, files })?;
        store.publish_layer(&staging, &diff)
    })();
    if result.is_err() {
        let _ = remove_any(&staging);
    }
    result.map(|()| Some(store.layer_rootfs(&diff)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(tar_bytes: &[u8]) -> Vec<(String, tar::EntryType, u32, Option<String>)> {
        let mut a = tar::Archive::new(tar_bytes);
        a.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                let link = e.link_name().unwrap().map(|l| l.display().to_string());
                (e.path().unwrap().display().to_string(), h.entry_type(), h.mode().unwrap(), link)
            })
            .collect()
    }

    #[test]
    fn the_tar_is_deterministic_and_holds_the_mount_targets_only() {
        assert_eq!(tar(), tar());
        assert_eq!(diff_id(), hash_bytes(&tar()));
        let got = entries(&tar());
        use tar::EntryType::*;
        let want: Vec<(String, tar::EntryType, u32, Option<String>)> = vec![
            ("dev/".into(), Directory, 0o755, None),
            ("etc/".into(), Directory, 0o755, None),
            ("proc/".into(), Directory, 0o755, None),
            ("sys/".into(), Directory, 0o755, None),
            ("etc/hostname".into(), Regular, 0o644, None),
            ("etc/hosts".into(), Regular, 0o644, None),
            ("etc/resolv.conf".into(), Regular, 0o644, None),
            ("etc/mtab".into(), Symlink, 0o777, Some("/proc/mounts".into())),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn ensure_unpacks_it_once_as_a_verifiable_layer_and_a_member_does_without() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        assert_eq!(ensure(&store.clone().into_member()).unwrap(), None);
        assert_eq!(std::fs::read_dir(store.root().join("layers")).unwrap().count(), 0, "a member writes no tree");
        let root = ensure(&store).unwrap().expect("root unpacks");
        assert_eq!(root, store.layer_rootfs(&diff_id()));
        assert!(store.has_layer(&diff_id()));
        for f in ["etc/hostname", "etc/hosts", "etc/resolv.conf"] {
            let m = std::fs::symlink_metadata(root.join(f)).unwrap();
            assert!(m.is_file() && m.len() == 0 && m.mode() & 0o7777 == 0o644, "{f}: {m:?}");
        }
        for dir in ["dev", "etc", "proc", "sys"] {
            assert!(root.join(dir).is_dir(), "{dir}");
        }
        assert_eq!(std::fs::read_link(root.join("etc/mtab")).unwrap(), PathBuf::from("/proc/mounts"));
        // What `image verify` checks: the recorded tree digest is the tree's.
        let meta = store.read_layer_meta(&diff_id()).unwrap();
        assert_eq!(meta.tree_digest, unpack::tree_digest(&root).unwrap().0);
        // Present: found, not rebuilt (the inode stays).
        let ino = std::fs::metadata(&root).unwrap().ino();
        assert_eq!(ensure(&store).unwrap(), Some(root.clone()));
        assert_eq!(std::fs::metadata(&root).unwrap().ino(), ino);
        // Damaged (its record lost): rebuilt whole.
        std::fs::remove_file(store.layer_dir(&diff_id()).join("layer.json")).unwrap();
        assert_eq!(ensure(&store).unwrap(), Some(root.clone()));
        assert!(store.has_layer(&diff_id()));
        assert_eq!(std::fs::read_dir(store.root().join("layers")).unwrap().count(), 1, "no staging dir left");
    }

    #[test]
    fn verify_names_a_damaged_base_layer_and_its_fix_rebuilds_it() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let root = ensure(&store).unwrap().unwrap();
        assert!(crate::maintenance::verify(&store).unwrap().1.is_empty());
        std::fs::write(root.join("etc/hosts"), b"10.0.0.1 evil\n").unwrap();
        let (_, damage) = crate::maintenance::verify(&store).unwrap();
        assert_eq!(damage.len(), 1, "{damage:?}");
        let record = store.layer_dir(&diff_id()).join("layer.json");
        assert!(damage[0].what.starts_with("husk's base layer tree sha256:"), "{:?}", damage[0]);
        assert!(damage[0].problem.contains(&format!("remove {}", record.display())), "{:?}", damage[0]);
        // The fix the message gives.
        std::fs::remove_file(&record).unwrap();
        assert_eq!(ensure(&store).unwrap(), Some(root.clone()));
        assert_eq!(std::fs::metadata(root.join("etc/hosts")).unwrap().len(), 0);
        assert!(crate::maintenance::verify(&store).unwrap().1.is_empty());
    }

    #[test]
    fn gc_keeps_it_while_the_store_holds_an_image() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        ensure(&store).unwrap();
        let config = store.put_blob(b"{}", None).unwrap();
        let manifest = store.put_blob(b"{\"schemaVersion\":2}", None).unwrap();
        let rec = crate::store::ImageRecord {
            format_version: crate::store::STORE_FORMAT_VERSION,
            id: config.clone(),
            manifest: manifest.clone(),
            manifest_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            config,
            layers: vec![],
            fetched: chrono::Utc::now(),
            source: "test".into(),
        };
        store.write_image(&rec).unwrap();
        let report = crate::maintenance::gc(&store).unwrap();
        assert_eq!(report.layers, 0);
        assert!(store.has_layer(&diff_id()), "an image is left: pods can still be built");
        store.remove_image(&manifest).unwrap();
        let report = crate::maintenance::gc(&store).unwrap();
        assert_eq!(report.layers, 1);
        assert!(!store.has_layer(&diff_id()), "no image left: nothing needs it");
    }
}
