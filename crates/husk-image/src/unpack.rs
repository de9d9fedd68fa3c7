//! Unpacking layer tarballs, exactly and safely.
//!
//! Two modes share one code path:
//! - [`Mode::Overlay`]: one layer into its own empty tree, whiteouts converted to overlayfs's
//!   format (a 0/0 character device; the `trusted.overlay.opaque` xattr). Such trees are stacked
//!   as overlay lower dirs, so a layer is unpacked once and shared by every image using it.
//! - [`Mode::Apply`]: layers applied in order onto one directory, whiteouts deleting what lower
//!   layers put there (`image render` / `extract`).
//!
//! Every entry's parent is opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so an
//! entry can never be written through a symlink or outside the tree; such a layer is refused with
//! an error naming the entry. The `tar` crate parses the stream (GNU and PAX long names, PAX
//! xattrs); the writing is by hand because `tar`'s own unpacker resolves paths by string joining
//! and knows nothing of OCI whiteouts.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use husk_sys::resolve::{open_beneath, open_dir, proc_fd_path};
use husk_types::tarpath::{sanitize, sanitize_link_target, EntryName};
use rustix::fs::{AtFlags, FileType, Gid, Mode as FsMode, OFlags, Timespec, Timestamps, Uid, XattrFlags};
use rustix::io::Errno;
use sha2::{Digest as _, Sha256};

use crate::error::UnpackError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Overlay,
    Apply,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct UnpackStats {
    pub entries: u64,
    pub bytes: u64,
}

const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

struct Unpacker {
    root: OwnedFd,
    mode: Mode,
    /// Paths this layer created (Apply mode): whiteouts only affect lower layers.
    created: HashSet<PathBuf>,
    /// Directory mtimes are set last, after their contents.
    dir_times: Vec<(PathBuf, Timestamps)>,
    stats: UnpackStats,
}

/// Unpacks an uncompressed tar stream into `dest` (which must exist).
pub fn unpack(reader: impl Read, dest: &Path, mode: Mode) -> Result<UnpackStats, UnpackError> {
    let root = open_dir(dest).map_err(|e| UnpackError::io(dest, "open destination", e))?;
    let mut u = Unpacker { root, mode, created: HashSet::new(), dir_times: Vec::new(), stats: UnpackStats::default() };
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(UnpackError::Tar)? {
        let entry = entry.map_err(UnpackError::Tar)?;
        u.entry(entry)?;
    }
    for (path, times) in u.dir_times.iter().rev() {
        let _ = rustix::fs::utimensat(&u.root, rel_or_dot(path), times, AtFlags::SYMLINK_NOFOLLOW);
    }
    Ok(u.stats)
}

fn rel_or_dot(p: &Path) -> &Path {
    if p.as_os_str().is_empty() {
        Path::new(".")
    } else {
        p
    }
}

fn errno_io(e: Errno) -> io::Error {
    e.into()
}

impl Unpacker {
    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), UnpackError> {
        self.stats.entries += 1;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let name = sanitize(&raw).map_err(|source| UnpackError::BadPath { entry: shown.clone(), source })?;
        let header = entry.header().clone();
        let kind = header.entry_type();
        let xattrs = pax_xattrs(&mut entry)?;
        let meta = Meta::from_header(&header, &shown)?;

        let path = match name {
            EntryName::Root => {
                // Only the root's metadata applies.
                self.set_meta(Path::new(""), &meta, &xattrs, true, &shown)?;
                return Ok(());
            }
            EntryName::Whiteout(p) => return self.whiteout(&p, &shown),
            EntryName::Opaque(dir) => return self.opaque(&dir, &shown),
            EntryName::Path(p) => p,
        };
        let (parent_rel, leaf) = split(&path);
        let parent = self.ensure_dir(parent_rel, &shown)?;

        if kind.is_dir() {
            match rustix::fs::statat(&parent, leaf, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {}
                Ok(_) => {
                    self.remove(&parent, leaf, &shown)?;
                    mkdir(&parent, leaf, &shown)?;
                }
                Err(Errno::NOENT) => mkdir(&parent, leaf, &shown)?,
                Err(e) => return Err(UnpackError::io(&path, "inspect", errno_io(e))),
            }
            self.created.insert(path.clone());
            return self.set_meta(&path, &meta, &xattrs, true, &shown);
        }

        self.remove(&parent, leaf, &shown)?;
        if kind.is_file() || kind == tar::EntryType::Continuous {
            let fd = rustix::fs::openat(
                &parent,
                leaf,
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                FsMode::from_raw_mode(0o600),
            )
            .map_err(|e| UnpackError::io(&path, "create", errno_io(e)))?;
            let mut f = File::from(fd);
            let n = io::copy(&mut entry, &mut f).map_err(|e| {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    UnpackError::Tar(e)
                } else {
                    UnpackError::io(&path, "write", e)
                }
            })?;
            self.stats.bytes += n;
            apply_fd_meta(&f, &meta, &xattrs, &shown)?;
        } else if kind.is_symlink() {
            let target = entry.link_name_bytes().ok_or_else(|| UnpackError::UnsupportedType {
                entry: shown.clone(),
                kind: "symlink without target".into(),
            })?;
            rustix::fs::symlinkat(OsStr::from_bytes(&target), &parent, leaf)
                .map_err(|e| UnpackError::io(&path, "create symlink", errno_io(e)))?;
            self.set_meta(&path, &meta, &xattrs, false, &shown)?;
        } else if kind.is_hard_link() {
            let target_raw = entry.link_name_bytes().ok_or_else(|| UnpackError::UnsupportedType {
                entry: shown.clone(),
                kind: "hard link without target".into(),
            })?;
            let bad = || UnpackError::BadHardlink {
                entry: shown.clone(),
                target: String::from_utf8_lossy(&target_raw).into_owned(),
            };
            let target = sanitize_link_target(&target_raw).map_err(|_| bad())?;
            // Resolve the target safely, then link that exact inode (AT_EMPTY_PATH).
            let tfd = open_beneath(&self.root, &target, OFlags::PATH | OFlags::NOFOLLOW, FsMode::empty())
                .map_err(|_| bad())?;
            let st = rustix::fs::fstat(&tfd).map_err(|_| bad())?;
            if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                return Err(bad());
            }
            rustix::fs::linkat(&tfd, "", &parent, leaf, AtFlags::EMPTY_PATH)
                .map_err(|e| UnpackError::io(&path, "create hard link", errno_io(e)))?;
        } else if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            let ft = if kind.is_character_special() {
                FileType::CharacterDevice
            } else if kind.is_block_special() {
                FileType::BlockDevice
            } else {
                FileType::Fifo
            };
            let dev = rustix::fs::makedev(
                header.device_major().ok().flatten().unwrap_or(0),
                header.device_minor().ok().flatten().unwrap_or(0),
            );
            match rustix::fs::mknodat(&parent, leaf, ft, FsMode::from_raw_mode(meta.mode), dev) {
                // Rendering as a user other than root (`image extract` by a member of the husk
                // group): device nodes are skipped, as tar does; the layers pods use are
                // unpacked by root.
                Err(rustix::io::Errno::PERM) if !rustix::process::geteuid().is_root() => {
                    tracing::warn!("skipped device node {shown}: only root can create one");
                }
                r => {
                    r.map_err(|e| UnpackError::io(&path, "create device node", errno_io(e)))?;
                    self.set_meta(&path, &meta, &xattrs, false, &shown)?;
                }
            }
        } else if matches!(
            kind,
            tar::EntryType::XGlobalHeader
                | tar::EntryType::XHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink
        ) {
            return Ok(());
        } else {
            return Err(UnpackError::UnsupportedType { entry: shown, kind: format!("{kind:?}") });
        }
        self.created.insert(path);
        Ok(())
    }

    /// Opens a directory of the tree, creating missing components (layers may omit parents).
    fn ensure_dir(&mut self, rel: &Path, shown: &str) -> Result<OwnedFd, UnpackError> {
        match open_beneath(&self.root, rel, OFlags::DIRECTORY | OFlags::RDONLY, FsMode::empty()) {
            Ok(fd) => return Ok(fd),
            Err(e) if e.raw_os_error() == Some(libc_enoent()) => {}
            Err(e) => return Err(escape(shown, e)),
        }
        let mut cur = open_beneath(&self.root, Path::new("."), OFlags::DIRECTORY | OFlags::RDONLY, FsMode::empty())
            .map_err(|e| escape(shown, e))?;
        for comp in rel.components() {
            let c = comp.as_os_str();
            match rustix::fs::mkdirat(&cur, c, FsMode::from_raw_mode(0o755)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(UnpackError::io(rel, "create directory", errno_io(e))),
            }
            cur = open_beneath(&cur, Path::new(c), OFlags::DIRECTORY | OFlags::RDONLY, FsMode::empty())
                .map_err(|e| escape(shown, e))?;
        }
        Ok(cur)
    }

    /// Whether a prefix of `rel` is, in this layer's tree, something other than a directory or
    /// a symlink (checked component by component without following one: a symlink stops the
    /// walk, and [`Self::ensure_dir`] then refuses it).
    fn under_non_directory(&self, rel: &Path) -> bool {
        let mut cur = PathBuf::new();
        for comp in rel.components() {
            cur.push(comp);
            match rustix::fs::statat(&self.root, &cur, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                    FileType::Directory => continue,
                    FileType::Symlink => return false,
                    _ => return true,
                },
                Err(_) => return false,
            }
        }
        false
    }

    /// Removes whatever is at parent/leaf (a file replaced by a later entry or layer).
    fn remove(&self, parent: &OwnedFd, leaf: &OsStr, shown: &str) -> Result<(), UnpackError> {
        match rustix::fs::statat(parent, leaf, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(UnpackError::io(Path::new(shown), "inspect", errno_io(e))),
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                // std's remove_dir_all works with openat/unlinkat and never follows symlinks.
                std::fs::remove_dir_all(proc_fd_path(parent).join(leaf))
                    .map_err(|e| UnpackError::io(Path::new(shown), "replace directory", e))
            }
            Ok(_) => rustix::fs::unlinkat(parent, leaf, AtFlags::empty())
                .map_err(|e| UnpackError::io(Path::new(shown), "replace", errno_io(e))),
        }
    }

    fn whiteout(&mut self, path: &Path, shown: &str) -> Result<(), UnpackError> {
        let (parent_rel, leaf) = split(path);
        if self.under_non_directory(parent_rel) {
            // umoci writes `data/x/.wh.y` after turning the directory data/x into a file: a
            // whiteout beneath a non-directory hides nothing (podman ignores it too).
            tracing::debug!("ignoring whiteout {shown}: a parent in this layer is not a directory");
            return Ok(());
        }
        let parent = self.ensure_dir(parent_rel, shown)?;
        match self.mode {
            Mode::Overlay => {
                self.remove(&parent, leaf, shown)?;
                rustix::fs::mknodat(
                    &parent,
                    leaf,
                    FileType::CharacterDevice,
                    FsMode::empty(),
                    rustix::fs::makedev(0, 0),
                )
                .map_err(|e| UnpackError::io(path, "create whiteout", errno_io(e)))
            }
            Mode::Apply => {
                if self.created.contains(path) {
                    return Ok(());
                }
                self.remove(&parent, leaf, shown)
            }
        }
    }

    fn opaque(&mut self, dir: &Path, shown: &str) -> Result<(), UnpackError> {
        let fd = self.ensure_dir(dir, shown)?;
        match self.mode {
            Mode::Overlay => rustix::fs::fsetxattr(&fd, OPAQUE_XATTR, b"y", XattrFlags::empty())
                .map_err(|e| UnpackError::io(dir, "mark opaque", errno_io(e))),
            Mode::Apply => {
                let listing = std::fs::read_dir(proc_fd_path(&fd)).map_err(|e| UnpackError::io(dir, "list", e))?;
                for child in listing {
                    let child = child.map_err(|e| UnpackError::io(dir, "list", e))?;
                    let name = child.file_name();
                    if !self.created.contains(&dir.join(&name)) {
                        self.remove(&fd, &name, shown)?;
                    }
                }
                Ok(())
            }
        }
    }

    fn set_meta(
        &mut self,
        path: &Path,
        meta: &Meta,
        xattrs: &[(String, Vec<u8>)],
        is_dir: bool,
        shown: &str,
    ) -> Result<(), UnpackError> {
        let p = rel_or_dot(path);
        tolerate_rootless(rustix::fs::chownat(
            &self.root,
            p,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        ))
        .map_err(|e| UnpackError::io(path, "set owner of", errno_io(e)))?;
        let st = rustix::fs::statat(&self.root, p, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| UnpackError::io(path, "inspect", errno_io(e)))?;
        let is_link = FileType::from_raw_mode(st.st_mode) == FileType::Symlink;
        if !is_link {
            rustix::fs::chmodat(&self.root, p, FsMode::from_raw_mode(meta.mode), AtFlags::empty())
                .map_err(|e| UnpackError::io(path, "set mode of", errno_io(e)))?;
        }
        if !xattrs.is_empty() {
            let full = proc_fd_path(&self.root).join(p);
            for (k, v) in xattrs {
                set_xattr_tolerant(|| rustix::fs::lsetxattr(&full, k.as_str(), v, XattrFlags::empty()), k, shown)?;
            }
        }
        if is_dir {
            self.dir_times.push((path.to_path_buf(), meta.times()));
        } else {
            rustix::fs::utimensat(&self.root, p, &meta.times(), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| UnpackError::io(path, "set times of", errno_io(e)))?;
        }
        Ok(())
    }
}

fn apply_fd_meta(f: &File, meta: &Meta, xattrs: &[(String, Vec<u8>)], shown: &str) -> Result<(), UnpackError> {
    let p = Path::new(shown);
    tolerate_rootless(rustix::fs::fchown(f, Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid))))
        .map_err(|e| UnpackError::io(p, "set owner of", errno_io(e)))?;
    // chmod after chown: chown clears set-uid/set-gid bits.
    rustix::fs::fchmod(f, FsMode::from_raw_mode(meta.mode))
        .map_err(|e| UnpackError::io(p, "set mode of", errno_io(e)))?;
    for (k, v) in xattrs {
        set_xattr_tolerant(|| rustix::fs::fsetxattr(f, k.as_str(), v, XattrFlags::empty()), k, shown)?;
    }
    rustix::fs::futimens(f, &meta.times()).map_err(|e| UnpackError::io(p, "set times of", errno_io(e)))
}

/// xattrs the filesystem cannot hold (e.g. security.selinux without SELinux) are skipped with a
/// debug note; any other failure is an error.
fn set_xattr_tolerant(f: impl FnOnce() -> rustix::io::Result<()>, name: &str, shown: &str) -> Result<(), UnpackError> {
    match f() {
        Ok(()) => Ok(()),
        Err(Errno::OPNOTSUPP) | Err(Errno::PERM) if !name.starts_with("user.") => {
            tracing::debug!("skipping xattr {name} on {shown}: not supported here");
            Ok(())
        }
        Err(e) => Err(UnpackError::io(Path::new(shown), "set xattr on", errno_io(e))),
    }
}

fn mkdir(parent: &OwnedFd, leaf: &OsStr, shown: &str) -> Result<(), UnpackError> {
    rustix::fs::mkdirat(parent, leaf, FsMode::from_raw_mode(0o700))
        .map_err(|e| UnpackError::io(Path::new(shown), "create directory", errno_io(e)))
}

fn libc_enoent() -> i32 {
    Errno::NOENT.raw_os_error()
}

fn escape(shown: &str, e: io::Error) -> UnpackError {
    let why = match e.raw_os_error() {
        Some(x) if x == Errno::LOOP.raw_os_error() => "a parent is a symlink".to_string(),
        Some(x) if x == Errno::XDEV.raw_os_error() => "it leaves the layer".to_string(),
        Some(x) if x == Errno::NOTDIR.raw_os_error() => "a parent is not a directory".to_string(),
        _ => e.to_string(),
    };
    UnpackError::Escape { entry: shown.to_string(), why }
}

fn split(p: &Path) -> (&Path, &OsStr) {
    (p.parent().unwrap_or(Path::new("")), p.file_name().expect("sanitized paths end in a name"))
}

struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
}

impl Meta {
    fn from_header(h: &tar::Header, shown: &str) -> Result<Meta, UnpackError> {
        let bad =
            |what: &str| UnpackError::UnsupportedType { entry: shown.to_string(), kind: format!("unreadable {what}") };
        Ok(Meta {
            mode: h.mode().map_err(|_| bad("mode"))? & 0o7777,
            uid: u32::try_from(h.uid().map_err(|_| bad("uid"))?).map_err(|_| bad("uid"))?,
            gid: u32::try_from(h.gid().map_err(|_| bad("gid"))?).map_err(|_| bad("gid"))?,
            mtime: h.mtime().map_err(|_| bad("mtime"))? as i64,
        })
    }

    fn times(&self) -> Timestamps {
        let t = Timespec { tv_sec: self.mtime, tv_nsec: 0 };
        Timestamps { last_access: t, last_modification: t }
    }
}

/// The `SCHILY.xattr.*` records of an entry's PAX header.
fn pax_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Vec<(String, Vec<u8>)>, UnpackError> {
    let mut out = Vec::new();
    if let Some(exts) = entry.pax_extensions().map_err(UnpackError::Tar)? {
        for ext in exts {
            let ext = ext.map_err(UnpackError::Tar)?;
            if let Ok(key) = ext.key() {
                if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                    if husk_types::tarpath::layer_xattr_allowed(name) {
                        out.push((name.to_string(), ext.value_bytes().to_vec()));
                    } else {
                        tracing::debug!("dropping xattr {name} of a layer entry (not for images to set)");
                    }
                }
            }
        }
    }
    Ok(out)
}

/// A digest over an unpacked tree (paths, types, modes, owners, sizes, contents, link targets,
/// device numbers, the opaque marker), in sorted order. Recorded at unpack time and recomputed by
/// `image verify`; any change to the tree changes it.
pub fn tree_digest(root: &Path) -> io::Result<(husk_types::Digest, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut h = Sha256::new();
    let mut size = 0u64;
    let mut files = 0u64;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let mut names: Vec<_> = std::fs::read_dir(&dir)?.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>()?;
        names.sort();
        let opaque = rustix::fs::lgetxattr(&dir, OPAQUE_XATTR, &mut [0u8; 8]).is_ok();
        h.update(format!("D {} {opaque}\n", rel.display()).as_bytes());
        let mut subdirs = Vec::new();
        for name in names {
            let p = rel.join(&name);
            let full = root.join(&p);
            let m = std::fs::symlink_metadata(&full)?;
            files += 1;
            h.update(p.as_os_str().as_bytes());
            h.update(format!("\0{:o} {} {} {} {}\0", m.mode(), m.uid(), m.gid(), m.len(), m.rdev()).as_bytes());
            if m.file_type().is_symlink() {
                h.update(std::fs::read_link(&full)?.as_os_str().as_bytes());
            } else if m.is_file() {
                let (d, n) = crate::store::hash_reader(File::open(&full)?)?;
                size += n;
                h.update(d.hex().as_bytes());
            } else if m.is_dir() {
                subdirs.push(p);
            }
            h.update(b"\n");
        }
        // Pop in sorted order.
        subdirs.reverse();
        stack.extend(subdirs);
    }
    Ok((husk_types::Digest::from_sha256_bytes(&h.finalize().into()), size, files))
}

/// Wraps a reader, hashing what passes through (to check a layer's diff_id while unpacking).
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader { inner, hasher: Sha256::new() }
    }

    /// Reads the rest of the stream (tar padding after the end marker counts in a diff_id) and
    /// returns the digest.
    pub fn finish(mut self) -> io::Result<husk_types::Digest> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(husk_types::Digest::from_sha256_bytes(&self.hasher.finalize().into()))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Compression of a layer blob, from its media type or, failing that, its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// A media type husk can unpack, or None.
pub fn layer_media_type_supported(mt: &str) -> bool {
    matches!(
        mt,
        "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.diff.tar"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
    )
}

/// Decompresses a layer stream, sniffing the format from its first bytes.
pub fn decompressor<'a>(r: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    let mut r = io::BufReader::with_capacity(256 * 1024, r);
    let head = io::BufRead::fill_buf(&mut r)?.to_vec();
    Ok(match Compression::sniff(&head) {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
        Compression::None => Box::new(r),
    })
}

/// An ownership change a user other than root may not make (EPERM): files keep that user as
/// owner, as `tar` extracts them without root. Root's unpacks (every layer a pod uses) never
/// take this path.
fn tolerate_rootless(r: rustix::io::Result<()>) -> rustix::io::Result<()> {
    match r {
        Err(rustix::io::Errno::PERM) if !rustix::process::geteuid().is_root() => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn tar_with(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(1000);
        h.set_gid(2000);
        h.set_mtime(1_600_000_000);
        h
    }

    fn add(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, path: &str, data: &[u8], mode: u32) {
        let mut h = header(kind, data.len() as u64, mode);
        b.append_data(&mut h, path, data).unwrap();
    }

    fn add_link(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, path: &str, target: &str) {
        let mut h = header(kind, 0, 0o777);
        b.append_link(&mut h, path, target).unwrap();
    }

    /// Writes a raw header whose name the tar crate's builder would refuse (like `../x`).
    fn raw_entry(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, name: &[u8], link: &[u8], data: &[u8]) {
        let mut h = header(kind, data.len() as u64, 0o644);
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name);
        gnu.linkname[..link.len()].copy_from_slice(link);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    #[test]
    fn exact_metadata_is_preserved() {
        let t = tar_with(|b| {
            add(b, tar::EntryType::Directory, "bin", b"", 0o755);
            add(b, tar::EntryType::Regular, "bin/tool", b"#!/bin/sh\n", 0o4755);
            add_link(b, tar::EntryType::Symlink, "bin/sh", "tool");
            add_link(b, tar::EntryType::Link, "bin/hard", "bin/tool");
            add(b, tar::EntryType::Fifo, "run/fifo", b"", 0o600);
        });
        let d = tempfile::tempdir().unwrap();
        let stats = unpack(&t[..], d.path(), Mode::Overlay).unwrap();
        assert_eq!(stats.entries, 5);
        let m = std::fs::metadata(d.path().join("bin/tool")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o4755);
        assert_eq!((m.uid(), m.gid()), (1000, 2000));
        assert_eq!(m.mtime(), 1_600_000_000);
        assert_eq!(m.nlink(), 2);
        assert_eq!(std::fs::read_link(d.path().join("bin/sh")).unwrap(), Path::new("tool"));
        assert_eq!(std::fs::metadata(d.path().join("bin")).unwrap().mtime(), 1_600_000_000);
        assert!(std::fs::symlink_metadata(d.path().join("run/fifo")).unwrap().file_type().is_fifo_like());
    }

    trait FifoLike {
        fn is_fifo_like(&self) -> bool;
    }
    impl FifoLike for std::fs::FileType {
        fn is_fifo_like(&self) -> bool {
            use std::os::unix::fs::FileTypeExt;
            self.is_fifo()
        }
    }

    /// An entry climbing with '..' lands inside the layer, clamped at its root, never beside it
    /// (podman and umoci read such layers the same way).
    #[test]
    fn tar_entry_climbing_with_dotdot_stays_inside_the_layer() {
        let t = tar_with(|b| raw_entry(b, tar::EntryType::Regular, b"../escaped", b"", b"x"));
        let parent = tempfile::tempdir().unwrap();
        let dest = parent.path().join("tree");
        std::fs::create_dir(&dest).unwrap();
        unpack(&t[..], &dest, Mode::Overlay).unwrap();
        assert!(!parent.path().join("escaped").exists(), "an entry landed outside the layer");
        assert_eq!(std::fs::read(dest.join("escaped")).unwrap(), b"x");
    }

    #[test]
    fn tar_entry_through_symlinked_parent_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().to_str().unwrap().to_string();
        let t = tar_with(|b| {
            add_link(b, tar::EntryType::Symlink, "etc", &target);
            add(b, tar::EntryType::Regular, "etc/passwd", b"root::0:0::/:/bin/sh\n", 0o644);
        });
        let d = tempfile::tempdir().unwrap();
        let err = unpack(&t[..], d.path(), Mode::Overlay).unwrap_err();
        assert!(matches!(err, UnpackError::Escape { .. }), "{err}");
        assert!(err.to_string().contains("etc/passwd"));
        assert!(!outside.path().join("passwd").exists());
    }

    #[test]
    fn hard_link_to_outside_is_refused() {
        let t = tar_with(|b| raw_entry(b, tar::EntryType::Link, b"shadow", b"../../../etc/shadow", b""));
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(unpack(&t[..], d.path(), Mode::Overlay).unwrap_err(), UnpackError::BadHardlink { .. }));
        let t = tar_with(|b| {
            add_link(b, tar::EntryType::Symlink, "l", "/etc/shadow");
            add_link(b, tar::EntryType::Link, "h", "l/x");
        });
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(unpack(&t[..], d.path(), Mode::Overlay).unwrap_err(), UnpackError::BadHardlink { .. }));
    }

    /// A leading '/' was refused; podman and umoci strip it.
    #[test]
    fn absolute_entry_is_unpacked_relative_to_the_layer() {
        let t = tar_with(|b| raw_entry(b, tar::EntryType::Regular, b"/etc/evil", b"", b"x"));
        let d = tempfile::tempdir().unwrap();
        unpack(&t[..], d.path(), Mode::Overlay).unwrap();
        assert_eq!(std::fs::read(d.path().join("etc/evil")).unwrap(), b"x");
        assert!(!Path::new("/etc/evil").exists());
    }

    /// umoci 0.4.7 writes a whiteout under a path it just turned from a directory into a file.
    #[test]
    fn a_whiteout_under_a_file_hides_nothing_and_is_ignored() {
        let t = tar_with(|b| {
            add(b, tar::EntryType::Directory, "data", b"", 0o755);
            add(b, tar::EntryType::Regular, "data/x", b"now a file", 0o644);
            add(b, tar::EntryType::Regular, "data/x/.wh.y", b"", 0o644);
        });
        let d = tempfile::tempdir().unwrap();
        unpack(&t[..], d.path(), Mode::Overlay).unwrap();
        assert_eq!(std::fs::read(d.path().join("data/x")).unwrap(), b"now a file");
        // A whiteout whose parent is a symlink is still refused.
        let t = tar_with(|b| {
            add_link(b, tar::EntryType::Symlink, "link", "/etc");
            add(b, tar::EntryType::Regular, "link/.wh.passwd", b"", 0o644);
        });
        let d = tempfile::tempdir().unwrap();
        assert!(unpack(&t[..], d.path(), Mode::Overlay).is_err());
    }

    #[test]
    fn whiteouts_become_overlay_format() {
        let t = tar_with(|b| {
            add(b, tar::EntryType::Directory, "d", b"", 0o755);
            add(b, tar::EntryType::Regular, "d/.wh..wh..opq", b"", 0o644);
            add(b, tar::EntryType::Regular, ".wh.gone", b"", 0o644);
        });
        let d = tempfile::tempdir().unwrap();
        unpack(&t[..], d.path(), Mode::Overlay).unwrap();
        let m = std::fs::symlink_metadata(d.path().join("gone")).unwrap();
        use std::os::unix::fs::FileTypeExt;
        assert!(m.file_type().is_char_device());
        assert_eq!(m.rdev(), 0);
        let mut buf = [0u8; 4];
        let n = rustix::fs::lgetxattr(d.path().join("d"), OPAQUE_XATTR, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"y");
    }

    #[test]
    fn overlay_private_xattrs_of_a_layer_never_reach_the_store() {
        let t = tar_with(|b| {
            b.append_pax_extensions([
                ("SCHILY.xattr.trusted.overlay.redirect", b"/etc".as_slice()),
                ("SCHILY.xattr.trusted.overlay.metacopy", b"".as_slice()),
                ("SCHILY.xattr.trusted.overlay.opaque", b"y".as_slice()),
                ("SCHILY.xattr.user.note", b"kept".as_slice()),
            ])
            .unwrap();
            add(b, tar::EntryType::Directory, "d", b"", 0o755);
            b.append_pax_extensions([("SCHILY.xattr.trusted.overlay.origin", b"x".as_slice())]).unwrap();
            add(b, tar::EntryType::Regular, "f", b"data", 0o644);
        });
        let d = tempfile::tempdir_in(std::env::var("HUSK_TEST_TMP").unwrap_or_else(|_| "/var/tmp".into())).unwrap();
        unpack(&t[..], d.path(), Mode::Overlay).unwrap();
        let mut buf = [0u8; 64];
        for (path, name) in [
            ("d", "trusted.overlay.redirect"),
            ("d", "trusted.overlay.metacopy"),
            ("d", "trusted.overlay.opaque"),
            ("f", "trusted.overlay.origin"),
        ] {
            assert!(rustix::fs::lgetxattr(d.path().join(path), name, &mut buf).is_err(), "{name} on {path} was stored");
        }
        let n = rustix::fs::lgetxattr(d.path().join("d"), "user.note", &mut buf).unwrap();
        assert_eq!(&buf[..n], b"kept");
    }

    #[test]
    fn apply_mode_whiteouts_delete_lower_layers_only() {
        let d = tempfile::tempdir().unwrap();
        let lower = tar_with(|b| {
            add(b, tar::EntryType::Regular, "a", b"1", 0o644);
            add(b, tar::EntryType::Regular, "dir/old", b"1", 0o644);
        });
        unpack(&lower[..], d.path(), Mode::Apply).unwrap();
        let upper = tar_with(|b| {
            add(b, tar::EntryType::Regular, "dir/new", b"2", 0o644);
            add(b, tar::EntryType::Regular, "dir/.wh..wh..opq", b"", 0o644);
            add(b, tar::EntryType::Regular, ".wh.a", b"", 0o644);
        });
        unpack(&upper[..], d.path(), Mode::Apply).unwrap();
        assert!(!d.path().join("a").exists());
        assert!(!d.path().join("dir/old").exists());
        assert_eq!(std::fs::read(d.path().join("dir/new")).unwrap(), b"2");
    }

    #[test]
    fn truncated_layer_is_an_error() {
        let t = tar_with(|b| add(b, tar::EntryType::Regular, "big", &vec![7u8; 10_000], 0o644));
        let d = tempfile::tempdir().unwrap();
        let err = unpack(&t[..3000], d.path(), Mode::Overlay).unwrap_err();
        assert!(matches!(err, UnpackError::Tar(_)), "{err}");
    }

    #[test]
    fn gzip_zstd_and_plain_layers_unpack_alike() {
        let t = tar_with(|b| add(b, tar::EntryType::Regular, "f", b"same content", 0o644));
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut e, &t).unwrap();
            e.finish().unwrap()
        };
        let zst = zstd::encode_all(&t[..], 3).unwrap();
        assert_eq!(Compression::sniff(&gz), Compression::Gzip);
        assert_eq!(Compression::sniff(&zst), Compression::Zstd);
        for blob in [t.clone(), gz, zst] {
            let d = tempfile::tempdir().unwrap();
            let mut h = HashingReader::new(decompressor(&blob[..]).unwrap());
            unpack(&mut h, d.path(), Mode::Overlay).unwrap();
            // The diff_id is the digest of the uncompressed tar whatever the compression.
            assert_eq!(h.finish().unwrap(), crate::store::hash_reader(&t[..]).unwrap().0);
            assert_eq!(std::fs::read(d.path().join("f")).unwrap(), b"same content");
        }
    }

    #[test]
    fn tree_digest_changes_with_content() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), b"1").unwrap();
        let (a, _, _) = tree_digest(d.path()).unwrap();
        std::fs::write(d.path().join("f"), b"2").unwrap();
        let (b, _, _) = tree_digest(d.path()).unwrap();
        assert_ne!(a, b);
    }
}
