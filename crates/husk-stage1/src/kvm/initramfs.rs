//! The guest's initramfs, built by husk itself: its own static stage1 executable as `/init` (the
//! guest init is husk's pod init) and the kernel modules the guest needs, in load order. Built
//! once per stage1 executable and module set, cached under `/run/husk/kvm`.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::common::{Context, Fail, Step};

/// The modules the guest needs (with their dependencies): the virtio-mmio transport, virtio-fs
/// for the pod dir, vsock for the control channel, virtio-net for a network.
pub const WANTED: &[&str] = &["virtio_mmio", "virtiofs", "vmw_vsock_virtio_transport", "virtio_net"];
/// Where the modules are in the initramfs; the guest init loads them in name order.
pub const MODULES_DIR: &str = "/modules";

/// A module's `depends=` from its `.modinfo` strings (NUL-separated `key=value`). Scanning the
/// bytes rather than parsing the ELF: `.modinfo` is the only place these strings occur, and the
/// kernel's own `modpost` writes them in exactly this form.
pub fn depends(ko: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"depends=";
    let mut at = 0;
    while let Some(i) = ko[at..].windows(KEY.len()).position(|w| w == KEY) {
        let start = at + i;
        if start == 0 || ko[start - 1] == 0 {
            let value = &ko[start + KEY.len()..];
            let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
            return String::from_utf8_lossy(&value[..end])
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.replace('-', "_"))
                .collect();
        }
        at = start + 1;
    }
    vec![]
}

/// The load order of `wanted` and everything they depend on, dependencies first. `available`
/// maps each module name to its dependencies. A wanted module or a dependency that is not
/// available is an error naming it; so is a dependency cycle.
pub fn load_order(available: &BTreeMap<String, Vec<String>>, wanted: &[&str]) -> Result<Vec<String>, String> {
    fn visit(
        name: &str,
        by: Option<&str>,
        available: &BTreeMap<String, Vec<String>>,
        visiting: &mut Vec<String>,
        out: &mut Vec<String>,
    ) -> Result<(), String> {
        if out.iter().any(|o| o == name) {
            return Ok(());
        }
        if visiting.iter().any(|v| v == name) {
            return Err(format!(
                "the guest kernel's modules depend on each other in a cycle: {} → {name}",
                visiting.join(" → ")
            ));
        }
        let deps = available.get(name).ok_or_else(|| match by {
            Some(b) => format!("module {name} (needed by {b}) is not among the guest kernel's modules"),
            None => format!("module {name} is not among the guest kernel's modules"),
        })?;
        visiting.push(name.to_string());
        for d in deps {
            visit(d, Some(name), available, visiting, out)?;
        }
        visiting.pop();
        out.push(name.to_string());
        Ok(())
    }
    let mut out = Vec::new();
    for w in wanted {
        visit(w, None, available, &mut Vec::new(), &mut out)?;
    }
    Ok(out)
}

/// The cached initramfs for this stage1 executable and the modules in `modules`, built first if
/// needed (atomically: a concurrent pod either finds it complete or builds its own copy).
pub fn ensure(exe: &Path, modules: &Path, cache: &Path) -> Result<PathBuf, Fail> {
    let meta = std::fs::metadata(exe).ctx(Step::Pod, || format!("cannot stat {}", exe.display()))?;
    let mut key = format!("{}-{}-{}-{}", meta.dev(), meta.ino(), meta.size(), meta.mtime_nsec() ^ meta.mtime());
    let mut kos: BTreeMap<String, PathBuf> = BTreeMap::new();
    let entries = std::fs::read_dir(modules).ctx(Step::Pod, || {
        format!("cannot read the guest kernel's modules in {} (run scripts/setup-kvm.sh)", modules.display())
    })?;
    for e in entries.flatten() {
        let p = e.path();
        let Some(name) = p.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".ko")) else { continue };
        if let Ok(m) = e.metadata() {
            key.push_str(&format!("-{name}:{}:{}", m.size(), m.mtime()));
        }
        kos.insert(name.replace('-', "_"), p);
    }
    let out = cache.join(format!("initramfs-{:016x}.cpio", fnv1a(key.as_bytes())));
    if out.is_file() {
        return Ok(out);
    }
    let mut available = BTreeMap::new();
    let mut bytes = BTreeMap::new();
    for (name, p) in &kos {
        let b = std::fs::read(p).ctx(Step::Pod, || format!("cannot read {}", p.display()))?;
        available.insert(name.clone(), depends(&b));
        bytes.insert(name.clone(), b);
    }
    let order = load_order(&available, WANTED).map_err(|e| Fail::Invalid(format!("{e} (in {})", modules.display())))?;
    let init = std::fs::read(exe).ctx(Step::Pod, || format!("cannot read {}", exe.display()))?;
    let mut files: Vec<(String, u32, Vec<u8>)> = vec![("init".into(), 0o100755, init)];
    for (i, name) in order.iter().enumerate() {
        files.push((
            format!("{}/{i:02}-{name}.ko", &MODULES_DIR[1..]),
            0o100644,
            bytes.remove(name).unwrap_or_default(),
        ));
    }
    std::fs::create_dir_all(cache).ctx(Step::Pod, || format!("cannot create {}", cache.display()))?;
    let tmp = cache.join(format!(".initramfs-{}.tmp", std::process::id()));
    let written = (|| -> std::io::Result<()> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        archive(&mut f, &files)?;
        f.into_inner().map_err(|e| e.into_error())?.sync_all()
    })();
    written.ctx(Step::Pod, || format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &out).ctx(Step::Pod, || format!("cannot rename {} to {}", tmp.display(), out.display()))?;
    // Those of earlier stage1 builds are no use any more (a VM booting from one has it open).
    for e in std::fs::read_dir(cache).into_iter().flatten().flatten() {
        let p = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        if p != out && name.starts_with("initramfs-") && name.ends_with(".cpio") {
            let _ = std::fs::remove_file(&p);
        }
    }
    Ok(out)
}

/// A newc archive: the directories the guest init mounts on, then `files` (name, mode, bytes).
pub fn archive(w: &mut impl Write, files: &[(String, u32, Vec<u8>)]) -> std::io::Result<()> {
    let mut w = w;
    let mut ino = 1;
    for dir in ["dev", "proc", "sys", "run", "tmp", &MODULES_DIR[1..]] {
        let b = cpio::NewcBuilder::new(dir).ino(ino).mode(0o040755).nlink(2);
        w = b.write(w, 0).finish()?;
        ino += 1;
    }
    for (name, mode, data) in files {
        let b = cpio::NewcBuilder::new(name).ino(ino).mode(*mode).nlink(1);
        let mut fw = b.write(w, data.len() as u32);
        fw.write_all(data)?;
        w = fw.finish()?;
        ino += 1;
    }
    cpio::newc::trailer(w)?;
    Ok(())
}

/// A cache key's hash (not a security boundary: the cache lives in root's /run).
fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325u64, |h, x| (h ^ u64::from(*x)).wrapping_mul(0x100000001b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deps(v: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        v.iter().map(|(k, d)| (k.to_string(), d.iter().map(|s| s.to_string()).collect())).collect()
    }

    #[test]
    fn modinfo_depends_is_read_from_the_strings() {
        let ko = b"\x7fELF...\0license=GPL\0depends=virtio,virtio_ring\0name=virtiofs\0";
        assert_eq!(depends(ko), vec!["virtio", "virtio_ring"]);
        assert!(depends(b"\0depends=\0name=x\0").is_empty());
        assert!(depends(b"no modinfo here").is_empty());
        // Only a whole key counts, and dashes become underscores as modprobe treats them.
        assert_eq!(depends(b"xdepends=a\0depends=net-failover\0"), vec!["net_failover"]);
    }

    #[test]
    fn dependencies_load_first_and_once() {
        let avail = deps(&[
            ("virtio_ring", &[]),
            ("virtio", &["virtio_ring"]),
            ("virtio_mmio", &["virtio", "virtio_ring"]),
            ("fuse", &[]),
            ("virtiofs", &["fuse", "virtio", "virtio_ring"]),
        ]);
        assert_eq!(
            load_order(&avail, &["virtio_mmio", "virtiofs"]).unwrap(),
            vec!["virtio_ring", "virtio", "virtio_mmio", "fuse", "virtiofs"]
        );
    }

    #[test]
    fn a_missing_module_or_dependency_is_named() {
        let avail = deps(&[("virtiofs", &["fuse"])]);
        assert_eq!(
            load_order(&avail, &["virtio_net"]).unwrap_err(),
            "module virtio_net is not among the guest kernel's modules"
        );
        assert!(load_order(&avail, &["virtiofs"]).unwrap_err().contains("fuse (needed by virtiofs)"));
    }

    #[test]
    fn a_cycle_is_refused_not_looped() {
        let avail = deps(&[("a", &["b"]), ("b", &["a"])]);
        assert!(load_order(&avail, &["a"]).unwrap_err().contains("cycle"));
    }

    #[test]
    fn the_archive_is_newc_with_the_mount_points_and_files() {
        let mut out = Vec::new();
        archive(&mut out, &[("init".into(), 0o100755, b"#!x".to_vec())]).unwrap();
        let mut r = std::io::Cursor::new(out);
        let mut names = vec![];
        loop {
            let e = cpio::NewcReader::new(r).unwrap();
            if e.entry().is_trailer() {
                break;
            }
            names.push((e.entry().name().to_string(), e.entry().mode()));
            r = e.finish().unwrap();
        }
        assert_eq!(names.last().unwrap(), &("init".to_string(), 0o100755));
        assert!(names.iter().any(|(n, m)| n == "proc" && *m == 0o040755));
        assert!(names.iter().any(|(n, _)| n == "modules"));
    }

    #[test]
    fn ensure_builds_once_and_reuses_the_cache() {
        let t = tempfile::tempdir().unwrap();
        let exe = t.path().join("exe");
        std::fs::write(&exe, b"init").unwrap();
        let mods = t.path().join("mods");
        std::fs::create_dir(&mods).unwrap();
        for (n, d) in [
            ("virtio_ring", ""),
            ("virtio", "virtio_ring"),
            ("virtio_mmio", "virtio,virtio_ring"),
            ("fuse", ""),
            ("virtiofs", "fuse,virtio"),
            ("vsock", ""),
            ("vmw_vsock_virtio_transport", "vsock,virtio"),
            ("failover", ""),
            ("net_failover", "failover"),
            ("virtio_net", "net_failover,virtio"),
        ] {
            std::fs::write(mods.join(format!("{n}.ko")), format!("\0depends={d}\0")).unwrap();
        }
        let cache = t.path().join("cache");
        let a = ensure(&exe, &mods, &cache).unwrap();
        let b = ensure(&exe, &mods, &cache).unwrap();
        assert_eq!(a, b);
        assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1, "no temporary left");
        // A rebuilt stage1 gets its own, and the old one goes.
        std::fs::write(&exe, b"init, rebuilt").unwrap();
        let c = ensure(&exe, &mods, &cache).unwrap();
        assert_ne!(a, c);
        assert!(!a.exists() && c.exists());
        std::fs::remove_file(mods.join("fuse.ko")).unwrap();
        let e = ensure(&exe, &mods, &cache).unwrap_err();
        assert!(e.chain().contains("fuse (needed by virtiofs)"), "{}", e.chain());
    }
}
