//! Executes a plan of [`crate::plan`] through [`MountSys`]: the real implementation resolves
//! every target inside the app's root with `openat2` and mounts through `/proc/self/fd/N`
//! ([`crate::rootfs::RealRoot`]); tests use a fake that records the calls.

use std::path::Path;

use crate::common::Fail;
use crate::plan::{flags, Step, Target};

/// The operations a plan needs, on the app's root.
pub trait MountSys {
    /// An opened mount target.
    type Handle;
    /// Opens (creating as needed) a target; a symlink or wrong kind of file there is refused.
    fn target(&mut self, t: &Target) -> Result<Self::Handle, Fail>;
    /// An existing path, if there is one (without following a final symlink), and whether it
    /// is a directory.
    fn lookup(&mut self, path: &str) -> Result<Option<(Self::Handle, bool)>, Fail>;
    fn mount(
        &mut self,
        source: &str,
        target: &Self::Handle,
        fstype: &str,
        flags: u64,
        data: Option<&str>,
    ) -> Result<(), Fail>;
    fn bind(&mut self, source: &Path, target: &Self::Handle, read_only: bool) -> Result<(), Fail>;
    /// Binds a mounted path onto itself read-only.
    fn bind_self_read_only(&mut self, target: &Self::Handle) -> Result<(), Fail>;
    fn mknod(&mut self, path: &str, major: u32, minor: u32) -> Result<(), Fail>;
    fn symlink(&mut self, path: &str, to: &str) -> Result<(), Fail>;
    fn replace_special(&mut self, path: &str) -> Result<(), Fail>;
    fn remount_root_read_only(&mut self) -> Result<(), Fail>;
    /// Binds `source` (recursively), then remounts the bind with `remount` flags if any.
    fn bind_flags(&mut self, source: &Path, target: &Self::Handle, recursive: bool, remount: u64) -> Result<(), Fail>;
    fn propagate(&mut self, target: &Self::Handle, flags: u64) -> Result<(), Fail>;
    /// Creates a device node at `path` (which does not exist) with its mode and owner.
    #[allow(clippy::too_many_arguments)]
    fn device(
        &mut self,
        path: &str,
        block: bool,
        major: u32,
        minor: u32,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<(), Fail>;
    fn remount(&mut self, target: &Self::Handle, flags: u64) -> Result<(), Fail>;
    /// A readable handle on the directory `target` names, taken before a mount covers it.
    fn copy_up_source(&mut self, target: &Self::Handle) -> Result<Self::Handle, Fail>;
    /// Copies the tree under `from` into the mount now at `target`.
    fn copy_up(&mut self, from: &Self::Handle, target: &Self::Handle) -> Result<(), Fail>;
    /// Attaches the `tree`-th prepared (idmapped) tree at `target`.
    fn attach_tree(&mut self, tree: usize, target: &Self::Handle) -> Result<(), Fail>;
}

/// Runs the steps in order; the first failure stops it.
pub fn apply<S: MountSys>(plan: &[Step], sys: &mut S) -> Result<(), Fail> {
    use flags::*;
    for step in plan {
        match step {
            Step::Mount { fstype, source, target, flags, data } => {
                let t = sys.target(target)?;
                sys.mount(source, &t, fstype, *flags, data.as_deref())?;
            }
            Step::Sysfs { target, bind_host_if_refused } => {
                let t = sys.target(target)?;
                if let Err(e) = sys.mount("sysfs", &t, "sysfs", NOSUID | NODEV | NOEXEC | RDONLY, None) {
                    if !bind_host_if_refused {
                        return Err(e);
                    }
                    sys.bind(Path::new("/sys"), &t, true)?;
                }
            }
            Step::Bind { source, target, read_only } => {
                let t = sys.target(target)?;
                sys.bind(source, &t, *read_only)?;
            }
            Step::DevNode { name, major, minor, bind_host } => {
                let path = format!("dev/{name}");
                if *bind_host {
                    let t = sys.target(&Target::File(path))?;
                    sys.bind(&Path::new("/dev").join(name), &t, false)?;
                } else {
                    sys.mknod(&path, *major, *minor)?;
                }
            }
            Step::Symlink { path, to } => sys.symlink(path, to)?,
            Step::DefaultSymlink { path, to } => {
                if let Some((dir, _)) = path.rsplit_once('/') {
                    sys.target(&Target::Dir(dir.to_string()))?;
                }
                if sys.lookup(path)?.is_none() {
                    sys.symlink(path, to)?;
                }
            }
            Step::Mkdir { path } => {
                sys.target(&Target::Dir(path.clone()))?;
            }
            Step::ReplaceSpecial { path } => sys.replace_special(path)?,
            Step::Mask { path } => match sys.lookup(path)? {
                Some((t, true)) => sys.mount("tmpfs", &t, "tmpfs", RDONLY | NOSUID | NODEV | NOEXEC, Some("size=0"))?,
                Some((t, false)) => sys.bind(Path::new("/dev/null"), &t, false)?,
                None => {}
            },
            Step::ReadOnly { path } => {
                if let Some((t, _)) = sys.lookup(path)? {
                    sys.bind_self_read_only(&t)?;
                }
            }
            Step::ReadOnlyRoot => sys.remount_root_read_only()?,
            Step::Fs { fstype, source, target, flags, data, sysfs_fallback, copy_up } => {
                let t = sys.target(target)?;
                let old = if *copy_up { Some(sys.copy_up_source(&t)?) } else { None };
                if let Err(e) = sys.mount(source, &t, fstype, *flags, data.as_deref()) {
                    if !sysfs_fallback {
                        return Err(e);
                    }
                    sys.bind_flags(Path::new("/sys"), &t, true, RDONLY | (*flags & (NOSUID | NODEV | NOEXEC)))?;
                }
                if let Some(old) = old {
                    sys.copy_up(&old, &t)?;
                }
            }
            Step::BindFlags { source, target, recursive, remount } => {
                let t = sys.target(target)?;
                sys.bind_flags(source, &t, *recursive, *remount)?;
            }
            Step::Propagation { target, flags } => {
                let t = sys.target(target)?;
                sys.propagate(&t, *flags)?;
            }
            Step::Device { path, block, major, minor, mode, uid, gid, bind_host } => {
                if sys.lookup(path)?.is_some() {
                    continue;
                }
                match bind_host {
                    Some(host) => {
                        let t = sys.target(&Target::File(path.clone()))?;
                        sys.bind_flags(host, &t, false, 0)?;
                    }
                    None => {
                        if let Some((dir, _)) = path.rsplit_once('/') {
                            sys.target(&Target::Dir(dir.to_string()))?;
                        }
                        sys.device(path, *block, *major, *minor, *mode, *uid, *gid)?;
                    }
                }
            }
            Step::Remount { target, flags } => {
                let t = sys.target(target)?;
                sys.remount(&t, *flags)?;
            }
            Step::IdmappedBind { tree, target, remount } => {
                let t = sys.target(target)?;
                sys.attach_tree(*tree, &t)?;
                if *remount != 0 {
                    sys.remount(&t, libc::MS_BIND | *remount)?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
pub mod fake {
    use super::*;

    /// Records every call as a line; `fail_at` makes the N-th call (from 0) fail; `existing`
    /// answers `lookup` (path → is a directory).
    #[derive(Default)]
    pub struct Recorder {
        pub calls: Vec<String>,
        pub fail_at: Option<usize>,
        pub existing: std::collections::BTreeMap<String, bool>,
        pub refuse_sysfs: bool,
    }

    impl Recorder {
        fn call(&mut self, c: String) -> Result<(), Fail> {
            let n = self.calls.len();
            self.calls.push(c.clone());
            if self.fail_at == Some(n) {
                return Err(Fail::Invalid(format!("{c}: injected failure")));
            }
            Ok(())
        }
    }

    impl MountSys for Recorder {
        type Handle = String;
        fn target(&mut self, t: &Target) -> Result<String, Fail> {
            let (kind, p) = match t {
                Target::Dir(p) => ("dir", p),
                Target::File(p) => ("file", p),
            };
            self.call(format!("target {kind} {p}"))?;
            Ok(p.clone())
        }
        fn lookup(&mut self, path: &str) -> Result<Option<(String, bool)>, Fail> {
            self.call(format!("lookup {path}"))?;
            Ok(self.existing.get(path).map(|d| (path.to_string(), *d)))
        }
        fn mount(
            &mut self,
            source: &str,
            t: &String,
            fstype: &str,
            flags: u64,
            data: Option<&str>,
        ) -> Result<(), Fail> {
            self.call(format!("mount {source} ({fstype}) on {t} flags={flags:#x} data={}", data.unwrap_or("-")))?;
            if fstype == "sysfs" && self.refuse_sysfs {
                return Err(Fail::Invalid("sysfs: EPERM".into()));
            }
            Ok(())
        }
        fn bind(&mut self, source: &Path, t: &String, read_only: bool) -> Result<(), Fail> {
            self.call(format!("bind {} on {t}{}", source.display(), if read_only { " ro" } else { "" }))
        }
        fn bind_self_read_only(&mut self, t: &String) -> Result<(), Fail> {
            self.call(format!("ro {t}"))
        }
        fn mknod(&mut self, path: &str, major: u32, minor: u32) -> Result<(), Fail> {
            self.call(format!("mknod {path} {major}:{minor}"))
        }
        fn symlink(&mut self, path: &str, to: &str) -> Result<(), Fail> {
            self.call(format!("symlink {path} -> {to}"))
        }
        fn replace_special(&mut self, path: &str) -> Result<(), Fail> {
            self.call(format!("replace-special {path}"))
        }
        fn remount_root_read_only(&mut self) -> Result<(), Fail> {
            self.call("ro-root".into())
        }
        fn bind_flags(&mut self, source: &Path, t: &String, recursive: bool, remount: u64) -> Result<(), Fail> {
            let r = if recursive { "rbind" } else { "bind" };
            self.call(format!("{r} {} on {t} remount={remount:#x}", source.display()))
        }
        fn propagate(&mut self, t: &String, flags: u64) -> Result<(), Fail> {
            self.call(format!("propagate {t} {flags:#x}"))
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
            let k = if block { 'b' } else { 'c' };
            self.call(format!("device {path} {k} {major}:{minor} {mode:o} {uid}:{gid}"))
        }
        fn remount(&mut self, t: &String, flags: u64) -> Result<(), Fail> {
            self.call(format!("remount {t} {flags:#x}"))
        }
        fn copy_up_source(&mut self, t: &String) -> Result<String, Fail> {
            self.call(format!("copy-up-source {t}"))?;
            Ok(t.clone())
        }
        fn copy_up(&mut self, from: &String, t: &String) -> Result<(), Fail> {
            self.call(format!("copy-up {from} into {t}"))
        }
        fn attach_tree(&mut self, tree: usize, t: &String) -> Result<(), Fail> {
            self.call(format!("attach-tree {tree} on {t}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::Recorder;
    use super::*;

    fn small_plan() -> Vec<Step> {
        vec![
            Step::Mount {
                fstype: "proc",
                source: "proc",
                target: Target::Dir("proc".into()),
                flags: flags::NOSUID,
                data: None,
            },
            Step::Sysfs { target: Target::Dir("sys".into()), bind_host_if_refused: true },
            Step::DevNode { name: "null", major: 1, minor: 3, bind_host: false },
            Step::Mask { path: "proc/kcore".into() },
            Step::Mask { path: "sys/firmware".into() },
            Step::Mask { path: "proc/absent".into() },
            Step::ReadOnly { path: "proc/sys".into() },
            Step::DefaultSymlink { path: "etc/mtab".into(), to: "/proc/mounts".into() },
            Step::ReadOnlyRoot,
        ]
    }

    #[test]
    fn apply_makes_exactly_these_calls_in_this_order() {
        let mut r = Recorder { refuse_sysfs: true, ..Default::default() };
        r.existing.insert("proc/kcore".into(), false);
        r.existing.insert("sys/firmware".into(), true);
        r.existing.insert("proc/sys".into(), true);
        apply(&small_plan(), &mut r).unwrap();
        assert_eq!(
            r.calls,
            [
                "target dir proc",
                "mount proc (proc) on proc flags=0x2 data=-",
                "target dir sys",
                "mount sysfs (sysfs) on sys flags=0xf data=-",
                "bind /sys on sys ro",
                "mknod dev/null 1:3",
                "lookup proc/kcore",
                "bind /dev/null on proc/kcore",
                "lookup sys/firmware",
                "mount tmpfs (tmpfs) on sys/firmware flags=0xf data=size=0",
                "lookup proc/absent",
                "lookup proc/sys",
                "ro proc/sys",
                "target dir etc",
                "lookup etc/mtab",
                "symlink etc/mtab -> /proc/mounts",
                "ro-root",
            ]
        );
    }

    #[test]
    fn a_failing_third_call_stops_everything_after_it() {
        let mut r = Recorder { fail_at: Some(2), ..Default::default() };
        let e = apply(&small_plan(), &mut r).unwrap_err();
        assert!(e.chain().contains("target dir sys"), "{}", e.chain());
        assert_eq!(r.calls.len(), 3, "calls after the failure ran: {:?}", r.calls);
    }

    #[test]
    fn sysfs_refused_outside_a_user_namespace_is_an_error() {
        let mut r = Recorder { refuse_sysfs: true, ..Default::default() };
        let plan = [Step::Sysfs { target: Target::Dir("sys".into()), bind_host_if_refused: false }];
        assert!(apply(&plan, &mut r).is_err());
        assert!(!r.calls.iter().any(|c| c.starts_with("bind")));
    }

    /// The whole plan of a default app, applied to the fake: every step reaches the executor.
    #[test]
    fn a_default_apps_plan_applies_end_to_end() {
        let (m, app) = crate::plan::tests_fixture();
        let plan = crate::plan::app_mounts(&m, &app, &Default::default()).unwrap();
        let mut r = Recorder::default();
        apply(&plan, &mut r).unwrap();
        assert!(r.calls.iter().any(|c| c == "mknod dev/urandom 1:9"));
        assert!(r.calls.iter().any(|c| c.starts_with("mount devpts (devpts) on dev/pts")));
        assert!(r.calls.iter().any(|c| c == "symlink dev/fd -> /proc/self/fd"));
    }

    /// The OCI steps: a copy-up takes its source before the mount covers it and copies after;
    /// a refused sysfs in a user namespace falls back to a read-only rbind of the host's; a
    /// device already there is left alone.
    #[test]
    fn oci_steps_make_these_calls() {
        let mut r = Recorder { refuse_sysfs: true, ..Default::default() };
        r.existing.insert("dev/null".into(), false);
        let dir = |p: &str| Target::Dir(p.into());
        let plan = [
            Step::Fs {
                fstype: "tmpfs".into(),
                source: "tmpfs".into(),
                target: dir("run"),
                flags: 0,
                data: Some("size=1m".into()),
                sysfs_fallback: false,
                copy_up: true,
            },
            Step::Fs {
                fstype: "sysfs".into(),
                source: "sysfs".into(),
                target: dir("sys"),
                flags: flags::NOSUID,
                data: None,
                sysfs_fallback: true,
                copy_up: false,
            },
            Step::Device {
                path: "dev/null".into(),
                block: false,
                major: 1,
                minor: 3,
                mode: 0o666,
                uid: 0,
                gid: 0,
                bind_host: None,
            },
            Step::Device {
                path: "dev/fuse".into(),
                block: false,
                major: 10,
                minor: 229,
                mode: 0o600,
                uid: 0,
                gid: 0,
                bind_host: None,
            },
            Step::Propagation { target: dir("run"), flags: libc::MS_SHARED },
            Step::Remount { target: dir("sys"), flags: flags::RDONLY },
            Step::IdmappedBind { tree: 0, target: dir("data"), remount: flags::RDONLY },
        ];
        apply(&plan, &mut r).unwrap();
        let ro_nosuid = flags::RDONLY | flags::NOSUID;
        assert_eq!(
            r.calls,
            [
                "target dir run".to_string(),
                "copy-up-source run".into(),
                "mount tmpfs (tmpfs) on run flags=0x0 data=size=1m".into(),
                "copy-up run into run".into(),
                "target dir sys".into(),
                format!("mount sysfs (sysfs) on sys flags={:#x} data=-", flags::NOSUID),
                format!("rbind /sys on sys remount={ro_nosuid:#x}"),
                "lookup dev/null".into(),
                "lookup dev/fuse".into(),
                "target dir dev".into(),
                "device dev/fuse c 10:229 600 0:0".into(),
                "target dir run".into(),
                format!("propagate run {:#x}", libc::MS_SHARED),
                "target dir sys".into(),
                format!("remount sys {:#x}", flags::RDONLY),
                "target dir data".into(),
                "attach-tree 0 on data".into(),
                format!("remount data {:#x}", libc::MS_BIND | flags::RDONLY),
            ]
        );
    }
}
