//! An app's root filesystem and mount view, set up in the app's own mount namespace just before
//! `pivot_root`. Every target inside the (untrusted) image is resolved with
//! `openat2(RESOLVE_IN_ROOT)` and mounted through `/proc/self/fd/N`, so a symlink in the image
//! can never redirect a mount to the host (runc CVE-2021-30465 class).

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use husk_sys::resolve::{open_dir, open_in_root, proc_fd_path};
use husk_types::abi::PodDir;
use husk_types::pod::{App, PodManifest, Stdio, VolumeKind};
use nix::mount::{mount, MsFlags};
use rustix::fs::{FileType, Mode, OFlags};

use crate::common::{Context, Fail, Step};

/// Makes every mount of the caller's mount namespace a slave: mounts from the host (or the
/// supervisor) still propagate in, none made here propagate out. First thing in every mount
/// namespace husk creates.
pub fn make_root_slave() -> Result<(), Fail> {
    mount::<str, str, str, str>(None, "/", None, MsFlags::MS_REC | MsFlags::MS_SLAVE, None)
        .ctx(Step::Mount, || "cannot make / a slave mount".into())
}

/// Where an app's root is mounted: `<pod>/apps/<app>/rootfs`.
pub fn root_of(pod_dir: &Path, app: &str) -> PathBuf {
    PodDir::new(pod_dir).app_rootfs(app)
}

/// Where a host volume's idmapped clone is attached for a pod with private users.
fn idmapped_volume(pod_dir: &Path, name: &str) -> PathBuf {
    PodDir::new(pod_dir).idmapped_volume(name)
}

/// Run by the supervisor (host privileges) in its private mount namespace: mounts every app's
/// overlay root, `nodev` so that device nodes shipped in an image are inert. With private users
/// (`userns` given), each layer is first attached as an idmapped clone, the upper and work
/// directories and empty volumes are given to the pod's root, and host volumes get idmapped
/// clones too: the store is never chowned.
pub fn mount_roots(pod_dir: &Path, m: &PodManifest, userns: Option<&OwnedFd>) -> Result<(), Fail> {
    let range = m.private_users;
    for app in &m.apps {
        let pd = PodDir::new(pod_dir);
        let app_dir = pd.app_dir(&app.name);
        if app.layers.is_empty() {
            return Err(Fail::Invalid(format!("app {} has no layers", app.name)));
        }
        let (base, lowers): (PathBuf, Vec<String>) = match userns {
            Some(ns) => {
                let lower = pd.app_lower(&app.name);
                for (i, layer) in app.layers.iter().enumerate() {
                    let t = lower.join(i.to_string());
                    std::fs::create_dir_all(&t).ctx(Step::Mount, || format!("cannot create {}", t.display()))?;
                    husk_sys::idmap::idmapped_bind(layer, &t, ns).ctx(Step::Mount, || {
                        format!(
                            "app {}: cannot create an idmapped mount of layer {} (needs Linux 5.12+ and a filesystem that supports idmapped mounts)",
                            app.name,
                            layer.display()
                        )
                    })?;
                }
                (lower, (0..app.layers.len()).rev().map(|i| i.to_string()).collect())
            }
            None => {
                // Layers all live in the store's layers/ directory: relative lower dirs from
                // there fit about 55 layers in the one-page option string instead of 35.
                let base = app.layers[0]
                    .parent()
                    .and_then(|p| p.parent())
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| PathBuf::from("/"));
                let rel: Option<Vec<String>> = app
                    .layers
                    .iter()
                    .rev()
                    .map(|l| l.strip_prefix(&base).ok().map(|p| p.display().to_string()))
                    .collect();
                match rel {
                    Some(r) => (base, r),
                    None => (PathBuf::from("/"), app.layers.iter().rev().map(|l| l.display().to_string()).collect()),
                }
            }
        };
        if let Some(r) = range {
            // The pod init (the pod's root) writes status.json here, and its apps their logs.
            let logs = pd.logs_dir();
            std::fs::create_dir_all(&logs).ctx(Step::Mount, || format!("cannot create {}", logs.display()))?;
            std::os::unix::fs::chown(&logs, Some(r.host_base), Some(r.host_base))
                .ctx(Step::Mount, || format!("cannot give {} to the pod's root", logs.display()))?;
            std::os::unix::fs::chown(&app_dir, Some(r.host_base), Some(r.host_base))
                .ctx(Step::Mount, || format!("cannot give {} to the pod's root", app_dir.display()))?;
            for d in [pd.app_upper(&app.name), pd.app_work(&app.name)] {
                std::os::unix::fs::chown(&d, Some(r.host_base), Some(r.host_base))
                    .ctx(Step::Mount, || format!("cannot give {} to the pod's root", d.display()))?;
            }
        }
        std::env::set_current_dir(&base).ctx(Step::Mount, || format!("cannot enter {}", base.display()))?;
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lowers.join(":"),
            pd.app_upper(&app.name).display(),
            pd.app_work(&app.name).display()
        );
        if opts.len() > 4000 {
            return Err(Fail::Invalid(format!(
                "app {}: {} layers are too many for one overlay mount",
                app.name,
                app.layers.len()
            )));
        }
        let root = root_of(pod_dir, &app.name);
        mount(Some("overlay"), &root, Some("overlay"), MsFlags::MS_NODEV, Some(opts.as_str()))
            .ctx(Step::Mount, || format!("cannot mount the overlay root of app {} on {}", app.name, root.display()))?;
    }
    if let (Some(ns), Some(r)) = (userns, range) {
        for v in &m.volumes {
            match &v.kind {
                VolumeKind::Host { source, .. } if source.is_dir() => {
                    let t = idmapped_volume(pod_dir, &v.name);
                    std::fs::create_dir_all(&t).ctx(Step::Mount, || format!("cannot create {}", t.display()))?;
                    husk_sys::idmap::idmapped_bind(source, &t, ns).ctx(Step::Mount, || {
                        format!("volume {}: cannot create an idmapped mount of {}", v.name, source.display())
                    })?;
                }
                VolumeKind::Host { .. } => {}
                VolumeKind::Empty => {
                    let d = PodDir::new(pod_dir).volume(&v.name);
                    std::os::unix::fs::chown(&d, Some(r.host_base), Some(r.host_base))
                        .ctx(Step::Mount, || format!("cannot give {} to the pod's root", d.display()))?;
                }
            }
        }
    }
    std::env::set_current_dir(pod_dir).ctx(Step::Mount, || format!("cannot enter {}", pod_dir.display()))
}

/// Run in the app's own mount namespace: everything inside the root mounted by [`mount_roots`],
/// as planned by [`crate::plan::app_mounts`] and applied through [`RealRoot`].
pub fn setup(pod_dir: &Path, m: &PodManifest, app: &App) -> Result<PathBuf, Fail> {
    let root = root_of(pod_dir, &app.name);
    let facts = host_facts(pod_dir, m)?;
    let plan = crate::plan::app_mounts(m, app, &facts).map_err(|e| Fail::Invalid(e.to_string()))?;
    let rootfd = open_dir(&root).ctx(Step::Mount, || format!("cannot open {}", root.display()))?;
    crate::apply::apply(&plan, &mut RealRoot::new(rootfd, root.clone()))?;
    Ok(root)
}

/// What the planner needs to know, read from the host and the pod dir.
fn host_facts(pod_dir: &Path, m: &PodManifest) -> Result<crate::plan::HostFacts, Fail> {
    let pd = PodDir::new(pod_dir);
    let etc_files =
        ["hostname", "hosts", "resolv.conf"].into_iter().map(|n| (n, pd.etc(n))).filter(|(_, p)| p.exists()).collect();
    let mut volume_sources = std::collections::BTreeMap::new();
    for v in &m.volumes {
        let src = match &v.kind {
            VolumeKind::Host { source, .. } if m.private_users.is_some() && source.is_dir() => {
                idmapped_volume(pod_dir, &v.name)
            }
            VolumeKind::Host { source, .. } => source.clone(),
            VolumeKind::Empty => pd.volume(&v.name),
        };
        let is_dir = src.is_dir();
        volume_sources.insert(v.name.clone(), (src, is_dir));
    }
    let tty = match m.stdio {
        Stdio::Interactive => nix::unistd::ttyname(std::io::stdin()).ok(),
        _ => None,
    };
    let notify_dir = matches!(m.systemd.notify, husk_types::pod::Notify::App(_)).then(|| pd.notify_dir());
    Ok(crate::plan::HostFacts { etc_files, volume_sources, tty, notify_dir })
}

/// The real [`crate::apply::MountSys`]: targets resolved inside the app's root with
/// `openat2(RESOLVE_IN_ROOT)` (never by joining strings), mounts made through `/proc/self/fd/N`.
pub struct RealRoot {
    pub rootfd: OwnedFd,
    pub root: PathBuf,
    /// Detached (idmapped) trees a plan's `IdmappedBind` steps attach, by index.
    pub trees: Vec<OwnedFd>,
    /// The directory the last node or symlink went into (a plan makes a dozen in /dev in a row).
    dir: Option<(String, OwnedFd)>,
}

impl RealRoot {
    pub fn new(rootfd: OwnedFd, root: PathBuf) -> RealRoot {
        RealRoot { rootfd, root, trees: Vec::new(), dir: None }
    }

    /// `path`'s parent directory inside the root (opened once for a run of entries in it), and
    /// its last component.
    fn parent<'a>(&mut self, path: &'a str) -> Result<(&OwnedFd, &'a str), Fail> {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        if self.dir.as_ref().is_none_or(|(d, _)| d != dir) {
            let fd = open_in_root(&self.rootfd, Path::new(dir), OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty())
                .ctx(Step::Mount, || format!("cannot open /{dir}"))?;
            self.dir = Some((dir.to_string(), fd));
        }
        Ok((&self.dir.as_ref().expect("just set").1, name))
    }
}

impl crate::apply::MountSys for RealRoot {
    type Handle = OwnedFd;

    fn target(&mut self, t: &crate::plan::Target) -> Result<OwnedFd, Fail> {
        match t {
            crate::plan::Target::Dir(p) => dir_target(&self.rootfd, p),
            crate::plan::Target::File(p) => file_target(&self.rootfd, p),
        }
    }

    fn lookup(&mut self, path: &str) -> Result<Option<(OwnedFd, bool)>, Fail> {
        let Ok(fd) = open_in_root(&self.rootfd, Path::new(path), OFlags::PATH | OFlags::NOFOLLOW, Mode::empty()) else {
            return Ok(None);
        };
        let st = rustix::fs::fstat(&fd).ctx(Step::Mount, || format!("cannot inspect /{path}"))?;
        let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
        Ok(Some((fd, is_dir)))
    }

    fn mount(&mut self, source: &str, t: &OwnedFd, fstype: &str, flags: u64, data: Option<&str>) -> Result<(), Fail> {
        mount_at(Some(source), t, Some(fstype), MsFlags::from_bits_truncate(flags), data)
    }

    fn bind(&mut self, source: &Path, t: &OwnedFd, read_only: bool) -> Result<(), Fail> {
        bind(source, t, read_only)
    }

    fn bind_self_read_only(&mut self, t: &OwnedFd) -> Result<(), Fail> {
        let resolved =
            std::fs::read_link(proc_fd_path(t)).ctx(Step::Mount, || "cannot resolve a read-only path".into())?;
        bind(&resolved, t, true)
    }

    fn mknod(&mut self, path: &str, major: u32, minor: u32) -> Result<(), Fail> {
        let (d, name) = self.parent(path)?;
        rustix::fs::mknodat(
            d,
            name,
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o666),
            rustix::fs::makedev(major, minor),
        )
        .ctx(Step::Mount, || format!("cannot create /{path}"))?;
        // The umask applied to mknod; the nodes are for everyone.
        rustix::fs::chmodat(d, name, Mode::from_raw_mode(0o666), rustix::fs::AtFlags::empty())
            .ctx(Step::Mount, || format!("cannot chmod /{path}"))
    }

    fn symlink(&mut self, path: &str, to: &str) -> Result<(), Fail> {
        let (d, name) = self.parent(path)?;
        rustix::fs::symlinkat(to, d, name).ctx(Step::Mount, || format!("cannot create /{path}"))
    }

    fn replace_special(&mut self, path: &str) -> Result<(), Fail> {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let d = dir_target(&self.rootfd, dir)?;
        replace_special(&d, name)
    }

    fn remount_root_read_only(&mut self) -> Result<(), Fail> {
        remount_read_only(&self.root, MsFlags::MS_NODEV)
            .ctx(Step::Mount, || format!("cannot make {} read-only", self.root.display()))
    }

    fn bind_flags(&mut self, source: &Path, t: &OwnedFd, recursive: bool, remount: u64) -> Result<(), Fail> {
        let target = proc_fd_path(t);
        let rec = if recursive { MsFlags::MS_REC } else { MsFlags::empty() };
        mount::<Path, Path, str, str>(Some(source), &target, None, MsFlags::MS_BIND | rec, None)
            .ctx(Step::Mount, || format!("cannot bind {}", source.display()))?;
        if remount != 0 {
            let resolved = std::fs::read_link(&target)
                .ctx(Step::Mount, || format!("cannot resolve the mount target of {}", source.display()))?;
            remount_keeping_locked(&resolved, MsFlags::MS_BIND | MsFlags::from_bits_truncate(remount))
                .ctx(Step::Mount, || format!("cannot remount the bind of {}", source.display()))?;
        }
        Ok(())
    }

    fn propagate(&mut self, t: &OwnedFd, flags: u64) -> Result<(), Fail> {
        let resolved = std::fs::read_link(proc_fd_path(t)).ctx(Step::Mount, || "cannot resolve a mount".into())?;
        mount::<str, Path, str, str>(None, &resolved, None, MsFlags::from_bits_truncate(flags), None)
            .ctx(Step::Mount, || format!("cannot set the propagation of {}", resolved.display()))
    }

    fn device(
        &mut self,
        path: &str,
        block: bool,
        major: u32,
        minor: u32,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<(), Fail> {
        let (d, name) = self.parent(path)?;
        let ft = if block { FileType::BlockDevice } else { FileType::CharacterDevice };
        rustix::fs::mknodat(d, name, ft, Mode::from_raw_mode(mode & 0o7777), rustix::fs::makedev(major, minor))
            .ctx(Step::Mount, || format!("cannot create /{path}"))?;
        rustix::fs::chmodat(d, name, Mode::from_raw_mode(mode & 0o7777), rustix::fs::AtFlags::empty())
            .ctx(Step::Mount, || format!("cannot chmod /{path}"))?;
        rustix::fs::chownat(
            d,
            name,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .ctx(Step::Mount, || format!("cannot chown /{path}"))
    }

    fn remount(&mut self, t: &OwnedFd, flags: u64) -> Result<(), Fail> {
        let resolved = std::fs::read_link(proc_fd_path(t)).ctx(Step::Mount, || "cannot resolve a mount".into())?;
        remount_keeping_locked(&resolved, MsFlags::from_bits_truncate(flags))
            .ctx(Step::Mount, || format!("cannot remount {}", resolved.display()))
    }

    fn attach_tree(&mut self, tree: usize, t: &OwnedFd) -> Result<(), Fail> {
        let fd = self.trees.get(tree).ok_or_else(|| Fail::Invalid(format!("no prepared idmapped tree {tree}")))?;
        husk_sys::idmap::attach_tree_at(fd, t).ctx(Step::Mount, || "cannot attach an idmapped mount".into())
    }

    fn copy_up_source(&mut self, t: &OwnedFd) -> Result<OwnedFd, Fail> {
        rustix::fs::open(proc_fd_path(t), OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .ctx(Step::Mount, || "tmpcopyup: cannot open the directory".into())
    }

    fn copy_up(&mut self, from: &OwnedFd, t: &OwnedFd) -> Result<(), Fail> {
        // `t` still names the covered directory; the new mount is at the path it resolves to.
        let resolved = std::fs::read_link(proc_fd_path(t)).ctx(Step::Mount, || "cannot resolve a mount".into())?;
        let to = rustix::fs::open(
            &resolved,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ctx(Step::Mount, || format!("tmpcopyup: cannot open {}", resolved.display()))?;
        copy_tree(from, &to, 0)
    }
}

/// Copies a directory tree (directories, regular files, symlinks, with their modes and
/// owners) from `from` into `to`, fd-relative so that nothing is resolved through a path the
/// container could redirect. Written here because `tmpcopyup` must read a directory a mount has
/// just covered, which only an fd taken before the mount still reaches.
fn copy_tree(from: &OwnedFd, to: &OwnedFd, depth: u32) -> Result<(), Fail> {
    use rustix::fs::{AtFlags, OFlags as O};
    if depth > 64 {
        return Err(Fail::Invalid("tmpcopyup: the directory tree is too deep".into()));
    }
    let dir = rustix::fs::Dir::read_from(from).ctx(Step::Mount, || "tmpcopyup: cannot read a directory".into())?;
    for entry in dir {
        let entry = entry.ctx(Step::Mount, || "tmpcopyup: cannot read a directory".into())?;
        let name = entry.file_name();
        if name.to_bytes() == b"." || name.to_bytes() == b".." {
            continue;
        }
        let st = rustix::fs::statat(from, name, AtFlags::SYMLINK_NOFOLLOW)
            .ctx(Step::Mount, || format!("tmpcopyup: cannot inspect {name:?}"))?;
        let mode = Mode::from_raw_mode(st.st_mode & 0o7777);
        let owner = (Some(rustix::fs::Uid::from_raw(st.st_uid)), Some(rustix::fs::Gid::from_raw(st.st_gid)));
        let what = || format!("tmpcopyup: cannot copy {name:?}");
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                rustix::fs::mkdirat(to, name, mode).ctx(Step::Mount, what)?;
                let sub_from =
                    rustix::fs::openat(from, name, O::RDONLY | O::DIRECTORY | O::NOFOLLOW | O::CLOEXEC, Mode::empty())
                        .ctx(Step::Mount, what)?;
                let sub_to =
                    rustix::fs::openat(to, name, O::RDONLY | O::DIRECTORY | O::NOFOLLOW | O::CLOEXEC, Mode::empty())
                        .ctx(Step::Mount, what)?;
                copy_tree(&sub_from, &sub_to, depth + 1)?;
                rustix::fs::fchown(&sub_to, owner.0, owner.1).ctx(Step::Mount, what)?;
                rustix::fs::fchmod(&sub_to, mode).ctx(Step::Mount, what)?;
            }
            FileType::RegularFile => {
                let src = rustix::fs::openat(from, name, O::RDONLY | O::NOFOLLOW | O::CLOEXEC, Mode::empty())
                    .ctx(Step::Mount, what)?;
                let dst =
                    rustix::fs::openat(to, name, O::WRONLY | O::CREATE | O::EXCL | O::NOFOLLOW | O::CLOEXEC, mode)
                        .ctx(Step::Mount, what)?;
                let (mut src, mut dst) = (std::fs::File::from(src), std::fs::File::from(dst));
                std::io::copy(&mut src, &mut dst).ctx(Step::Mount, what)?;
                rustix::fs::fchown(&dst, owner.0, owner.1).ctx(Step::Mount, what)?;
                rustix::fs::fchmod(&dst, mode).ctx(Step::Mount, what)?;
            }
            FileType::Symlink => {
                let link = rustix::fs::readlinkat(from, name, Vec::new()).ctx(Step::Mount, what)?;
                rustix::fs::symlinkat(link.as_c_str(), to, name).ctx(Step::Mount, what)?;
                rustix::fs::chownat(to, name, owner.0, owner.1, AtFlags::SYMLINK_NOFOLLOW).ctx(Step::Mount, what)?;
            }
            // Sockets, FIFOs and devices of an image's /run are not content.
            _ => {}
        }
    }
    Ok(())
}

/// Remounts `path` with `flags`. In a user namespace the kernel refuses to clear the flags the
/// mount's owner set (nosuid, nodev, noexec, the atime mode: "locked"); on EPERM this retries
/// with the mount's current flags of those kinds added, as runc does.
fn remount_keeping_locked(path: &Path, flags: MsFlags) -> nix::Result<()> {
    let once = |f: MsFlags| mount::<str, Path, str, str>(None, path, None, MsFlags::MS_REMOUNT | f, None);
    match once(flags) {
        Err(nix::errno::Errno::EPERM) => {
            let st = nix::sys::statvfs::statvfs(path)?;
            let have = st.flags();
            use nix::sys::statvfs::FsFlags as F;
            let mut locked = MsFlags::empty();
            for (f, m) in [
                (F::ST_NOSUID, MsFlags::MS_NOSUID),
                (F::ST_NODEV, MsFlags::MS_NODEV),
                (F::ST_NOEXEC, MsFlags::MS_NOEXEC),
                (F::ST_NOATIME, MsFlags::MS_NOATIME),
                (F::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
                (F::ST_RELATIME, MsFlags::MS_RELATIME),
            ] {
                if have.contains(f) {
                    locked |= m;
                }
            }
            once(flags | locked)
        }
        r => r,
    }
}

/// A path inside the app's root as relative components, refusing `..`.
pub fn rel_in_root(p: &Path) -> Result<String, Fail> {
    crate::plan::rel_in_root(p).map_err(|e| Fail::Invalid(e.to_string()))
}

/// Opens (creating as needed) a directory inside the root; a symlink or non-directory as the
/// final component is refused: an image whose /proc, /sys or /dev is a symlink or a file cannot
/// redirect those mounts.
fn dir_target(rootfd: &OwnedFd, rel: &str) -> Result<OwnedFd, Fail> {
    // Most targets exist (/proc, /sys, /dev and what stage1 made there): one `openat2` finds
    // them, where the walk below makes three system calls a component. The walk runs for what is
    // missing and for what is not a directory, and says which.
    let direct = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW;
    if let Ok(fd) = open_in_root(rootfd, Path::new(rel), direct, Mode::empty()) {
        return Ok(fd);
    }
    let mut cur = PathBuf::new();
    for comp in Path::new(rel).components() {
        let Component::Normal(name) = comp else { continue };
        let parent = open_in_root(rootfd, &cur, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty())
            .ctx(Step::Mount, || format!("cannot open /{} in the app root", cur.display()))?;
        match rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => {
                return Err(Fail::Invalid(format!("cannot create /{} in the app root: {e}", cur.join(name).display())))
            }
        }
        let st = rustix::fs::statat(&parent, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
            .ctx(Step::Mount, || format!("cannot inspect /{}", cur.join(name).display()))?;
        let ft = FileType::from_raw_mode(st.st_mode);
        let is_last = cur.join(name) == Path::new(rel);
        if is_last && ft != FileType::Directory {
            return Err(Fail::Invalid(format!(
                "/{rel} in the image is a {} where a directory is needed; refusing to mount over it",
                kind(ft)
            )));
        }
        cur.push(name);
    }
    open_in_root(rootfd, Path::new(rel), direct, Mode::empty())
        .ctx(Step::Mount, || format!("cannot open /{rel} in the app root"))
}

/// Opens (creating as needed) a file mount target inside the root, as an O_PATH fd.
///
/// The target is never opened for reading or writing: an image may put a FIFO (or a device) where
/// a file is expected, and opening a FIFO blocks until a peer appears — a pod stuck in stage1 for
/// good. A missing target is created with O_EXCL; an existing one is inspected with `statat` and
/// must be a regular file (or a directory, which the bind then reports).
fn file_target(rootfd: &OwnedFd, rel: &str) -> Result<OwnedFd, Fail> {
    // An existing regular file (or directory): one `openat2` and its `fstat`, as at the end.
    if let Ok(fd) = open_in_root(rootfd, Path::new(rel), OFlags::PATH | OFlags::NOFOLLOW, Mode::empty()) {
        if rustix::fs::fstat(&fd)
            .is_ok_and(|st| matches!(FileType::from_raw_mode(st.st_mode), FileType::RegularFile | FileType::Directory))
        {
            return Ok(fd);
        }
    }
    let p = Path::new(rel);
    let parent_rel = p.parent().map(|x| x.display().to_string()).unwrap_or_default();
    // An O_PATH directory fd serves as the `*at` calls' directory.
    let parent = if parent_rel.is_empty() {
        open_in_root(rootfd, Path::new(""), OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty())
            .ctx(Step::Mount, || "cannot open the app root".into())?
    } else {
        dir_target(rootfd, &parent_rel)?
    };
    let name = p.file_name().unwrap_or(OsStr::new("."));
    match rustix::fs::statat(&parent, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile | FileType::Directory => {}
            ft => {
                return Err(Fail::Invalid(format!(
                    "/{rel} in the image is a {} where a file is needed; refusing to mount over it",
                    kind(ft)
                )))
            }
        },
        Err(rustix::io::Errno::NOENT) => {
            match rustix::fs::openat(
                &parent,
                name,
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o644),
            ) {
                Ok(_) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(Fail::Invalid(format!("cannot create /{rel} in the app root: {e}"))),
            }
        }
        Err(e) => return Err(Fail::Invalid(format!("cannot inspect /{rel} in the app root: {e}"))),
    }
    let fd = rustix::fs::openat(&parent, name, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
        .ctx(Step::Mount, || format!("cannot open /{rel}"))?;
    // It may have been swapped between the look and the open: look at what was opened.
    let st = rustix::fs::fstat(&fd).ctx(Step::Mount, || format!("cannot inspect /{rel}"))?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile | FileType::Directory => Ok(fd),
        ft => Err(Fail::Invalid(format!(
            "/{rel} in the image is a {} where a file is needed; refusing to mount over it",
            kind(ft)
        ))),
    }
}

/// Removes whatever the image has at `/etc/<name>` that is not a regular file or a directory (a
/// symlink, which resolv.conf often is, a FIFO, a socket, a device), so that stage1's own file
/// can be bound there. The app's overlay upper dir is the pod's own, so this only hides the
/// image's entry from this pod.
fn replace_special(dir: &OwnedFd, name: &str) -> Result<(), Fail> {
    if let Ok(st) = rustix::fs::statat(dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
        if !matches!(FileType::from_raw_mode(st.st_mode), FileType::RegularFile | FileType::Directory) {
            let d = open_dir(&proc_fd_path(dir)).ctx(Step::Mount, || "cannot open /etc".into())?;
            rustix::fs::unlinkat(&d, name, rustix::fs::AtFlags::empty())
                .ctx(Step::Mount, || format!("cannot replace /etc/{name} of the image"))?;
        }
    }
    Ok(())
}

fn kind(ft: FileType) -> &'static str {
    match ft {
        FileType::Symlink => "symlink",
        FileType::RegularFile => "file",
        FileType::Fifo => "FIFO",
        FileType::Socket => "socket",
        FileType::CharacterDevice | FileType::BlockDevice => "device node",
        _ => "special file",
    }
}

fn mount_at(
    src: Option<&str>,
    target: &impl AsFd,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), Fail> {
    let t = proc_fd_path(&target.as_fd());
    mount(src, &t, fstype, flags, data)
        .ctx(Step::Mount, || format!("cannot mount {} ({})", fstype.unwrap_or("?"), src.unwrap_or("")))
}

fn bind(src: &Path, target: &impl AsFd, read_only: bool) -> Result<(), Fail> {
    let t = proc_fd_path(&target.as_fd());
    mount::<Path, Path, str, str>(Some(src), &t, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)
        .ctx(Step::Mount, || format!("cannot bind {}", src.display()))?;
    if read_only {
        // The fd names the inode under the new mount, so remount through the path the kernel
        // resolved for it. Nothing runs in the app root yet, so nothing can swap it meanwhile.
        let resolved = std::fs::read_link(&t)
            .ctx(Step::Mount, || format!("cannot resolve the mount target of {}", src.display()))?;
        remount_read_only(&resolved, MsFlags::MS_REC)
            .ctx(Step::Mount, || format!("cannot make the bind of {} read-only", src.display()))?;
    }
    Ok(())
}

/// Makes the mount at `path` read-only, keeping `keep` (flags a remount would otherwise drop).
fn remount_read_only(path: &Path, keep: MsFlags) -> nix::Result<()> {
    mount::<str, Path, str, str>(
        None,
        path,
        None,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | keep,
        None,
    )
}

/// `pivot_root` into `root` and detach the old root: after this the app sees only its tree.
pub fn pivot(root: &Path) -> Result<(), Fail> {
    std::env::set_current_dir(root).ctx(Step::Mount, || format!("cannot enter {}", root.display()))?;
    nix::unistd::pivot_root(".", ".").ctx(Step::Mount, || format!("pivot_root into {} failed", root.display()))?;
    nix::mount::umount2(".", nix::mount::MntFlags::MNT_DETACH)
        .ctx(Step::Mount, || "cannot detach the old root".into())?;
    std::env::set_current_dir("/").ctx(Step::Mount, || "cannot chdir to /".into())
}

/// Writes /etc/hostname, /etc/hosts and /etc/resolv.conf for the pod into `<pod>/etc/`.
pub fn write_etc(pod_dir: &Path, m: &PodManifest, cni_dns: Option<husk_types::etc::NetDns>) -> Result<(), Fail> {
    use husk_types::etc::{hosts_file, resolv_conf, Dns, Hosts};
    // stage0 validated these; a hand-written pod.json must not inject lines either.
    husk_types::pod::validate_hostname(&m.hostname).map_err(Fail::Invalid)?;
    if let Hosts::Written { entries } = &m.hosts {
        for (_, name) in entries {
            husk_types::pod::validate_host_name(name, 253).map_err(Fail::Invalid)?;
        }
    }
    let etc = PodDir::new(pod_dir).etc_dir();
    std::fs::create_dir_all(&etc).ctx(Step::Mount, || format!("cannot create {}", etc.display()))?;
    husk_sys::atomic_write_volatile(&etc.join("hostname"), format!("{}\n", m.hostname).as_bytes(), 0o644)
        .ctx(Step::Mount, || "cannot write hostname".into())?;
    let hosts =
        hosts_file(&m.hosts, &m.hostname).unwrap_or_else(|| std::fs::read_to_string("/etc/hosts").unwrap_or_default());
    husk_sys::atomic_write_volatile(&etc.join("hosts"), hosts.as_bytes(), 0o644)
        .ctx(Step::Mount, || "cannot write hosts".into())?;
    let host_resolv = || std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let resolv = match &m.dns {
        Dns::Image => None,
        Dns::Host => Some(host_resolv()),
        written => resolv_conf(written, cni_dns.as_ref(), &host_resolv()),
    };
    if let Some(r) = resolv {
        husk_sys::atomic_write_volatile(&etc.join("resolv.conf"), r.as_bytes(), 0o644)
            .ctx(Step::Mount, || "cannot write resolv.conf".into())?;
    }
    Ok(())
}

/// Mounts the app's view of its cgroups read-only at /sys/fs/cgroup (after it entered its
/// cgroup namespace, so its own cgroup is the root it sees): a tmpfs holding one directory per
/// v1 hierarchy husk uses, or the unified hierarchy. Apps read their limits there.
pub fn mount_cgroups(root: &Path, layout: &crate::cgroup::Layout) -> Result<(), Fail> {
    let rootfd = open_dir(root).ctx(Step::Mount, || format!("cannot open {}", root.display()))?;
    let Ok(target) = open_in_root(
        &rootfd,
        Path::new("sys/fs/cgroup"),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW,
        Mode::empty(),
    ) else {
        return Ok(()); // a kernel without cgroup support in sysfs: nothing to show
    };
    let ro = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    match layout {
        crate::cgroup::Layout::V2(_) => mount_at(Some("cgroup2"), &target, Some("cgroup2"), ro, None),
        crate::cgroup::Layout::V1(dirs) => {
            mount_at(
                Some("cgroup"),
                &target,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("mode=755,size=64k"),
            )?;
            let base = std::fs::read_link(proc_fd_path(&target))
                .ctx(Step::Mount, || "cannot resolve /sys/fs/cgroup".into())?;
            for d in dirs {
                let Some(name) = d.file_name().map(|n| n.to_string_lossy().into_owned()) else { continue };
                let sub = base.join(&name);
                std::fs::create_dir(&sub).ctx(Step::Mount, || format!("cannot create /sys/fs/cgroup/{name}"))?;
                mount(Some("cgroup"), &sub, Some("cgroup"), ro, Some(name.as_str()))
                    .ctx(Step::Mount, || format!("cannot mount the {name} cgroup hierarchy"))?;
            }
            mount::<str, Path, str, str>(None, &base, None, MsFlags::MS_REMOUNT | ro, Some("mode=755,size=64k"))
                .ctx(Step::Mount, || "cannot make /sys/fs/cgroup read-only".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_refuse_dotdot() {
        assert_eq!(rel_in_root(Path::new("/a/./b")).unwrap(), "a/b");
        assert!(rel_in_root(Path::new("/a/../../etc")).is_err());
    }
}
