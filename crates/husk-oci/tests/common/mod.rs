//! Helpers for husk-oci's integration tests: a bundle (a busybox root file system, built from
//! Debian's busybox-static, and a config.json from `husk-oci spec`), a private `--root`, and a
//! caller that behaves like conmon (a child subreaper that waits on the pid file's process).
//! Missing prerequisites fail the test with what to install (CI runs as root).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_husk-oci")
}

pub fn require_root() {
    assert!(rustix::process::geteuid().is_root(), "husk-oci's tests need root (CI runs them as root)");
}

/// Commands of the busybox root.
const APPLETS: &[&str] = &[
    "sh",
    "echo",
    "cat",
    "ls",
    "id",
    "sleep",
    "ps",
    "mount",
    "hostname",
    "domainname",
    "true",
    "false",
    "grep",
    "touch",
    "mkdir",
    "stat",
    "ulimit",
    "nc",
    "wc",
    "head",
    "tty",
    "umask",
    "env",
    "pwd",
    "readlink",
    "mknod",
    "dd",
    "test",
    "kill",
    "uptime",
    "sysctl",
    "rm",
    "seq",
    "setsid",
    "date",
];

pub struct Bundle {
    pub dir: tempfile::TempDir,
    /// The `--root` state directory.
    pub root: PathBuf,
    pub config: Value,
}

impl Bundle {
    pub fn new() -> Bundle {
        require_root();
        let busybox = Path::new("/bin/busybox");
        assert!(busybox.is_file(), "/bin/busybox is missing: apt-get install busybox-static (scripts/install-deps.sh)");
        let dir = tempfile::Builder::new().prefix("husk-oci-test-").tempdir_in("/var/tmp").unwrap();
        let rootfs = dir.path().join("rootfs");
        for d in ["bin", "proc", "sys", "dev", "etc", "tmp", "run", "data"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
        for a in APPLETS {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a)).unwrap();
        }
        std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").unwrap();
        std::fs::write(rootfs.join("run/image-file"), "from the image\n").unwrap();
        let root = dir.path().join("state");
        let out = Command::new(bin()).args(["spec", "--bundle"]).arg(dir.path()).output().unwrap();
        assert!(out.status.success(), "husk-oci spec: {}", String::from_utf8_lossy(&out.stderr));
        let config: Value = serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
        let mut b = Bundle { dir, root, config };
        b.config["process"]["terminal"] = false.into();
        b.config["root"]["readonly"] = false.into();
        b
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    /// Sets the process's command (sh -c SCRIPT) and writes config.json.
    pub fn script(&mut self, script: &str) -> &mut Bundle {
        self.config["process"]["args"] = serde_json::json!(["/bin/sh", "-c", script]);
        self.write()
    }

    pub fn write(&mut self) -> &mut Bundle {
        std::fs::write(self.dir.path().join("config.json"), serde_json::to_vec_pretty(&self.config).unwrap()).unwrap();
        self
    }

    /// husk-oci with this bundle's --root, in the bundle directory. Its output goes to files,
    /// not pipes: a created container's init inherits husk-oci's stdout and stderr (as with
    /// runc), so waiting for the pipes' end would wait for the container.
    pub fn oci(&self, args: &[&str]) -> Output {
        output_of(self.cmd(args))
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg("--root").arg(&self.root).args(args).current_dir(self.dir.path()).stdin(Stdio::null());
        c
    }

    /// `husk-oci run ID`: (exit code, stdout, stderr).
    pub fn run(&self, id: &str) -> (i32, String, String) {
        let o = self.oci(&["run", id]);
        (o.status.code().unwrap_or(-1), text(&o.stdout), text(&o.stderr))
    }

    pub fn state(&self, id: &str) -> Value {
        let o = self.oci(&["state", id]);
        assert!(o.status.success(), "state {id}: {}", text(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    pub fn status(&self, id: &str) -> String {
        self.state(id)["status"].as_str().unwrap().to_string()
    }

    /// The container's cgroup in one v1 hierarchy (or the v2 tree).
    pub fn cgroup(&self, id: &str, controller: &str) -> PathBuf {
        let v1 = PathBuf::from("/sys/fs/cgroup").join(controller).join("husk-oci").join(id);
        if Path::new("/sys/fs/cgroup").join(controller).is_dir() {
            v1
        } else {
            PathBuf::from("/sys/fs/cgroup/husk-oci").join(id)
        }
    }

    /// Whether anything of container `id` is left on the host: its state dir, its cgroups.
    pub fn leftovers(&self, id: &str) -> Vec<PathBuf> {
        let mut left = Vec::new();
        if self.root.join(id).exists() {
            left.push(self.root.join(id));
        }
        if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
            for e in entries.flatten() {
                let p = e.path().join("husk-oci").join(id);
                if p.exists() {
                    left.push(p);
                }
            }
        }
        left
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        // Whatever a failed test left running.
        if let Ok(entries) = std::fs::read_dir(&self.root) {
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                let _ = self.oci(&["delete", "--force", &id]);
            }
        }
    }
}

/// Runs `cmd` to its exit with stdout and stderr in files, and returns them.
pub fn output_of(mut cmd: Command) -> Output {
    let out = tempfile::tempfile().unwrap();
    let err = tempfile::tempfile().unwrap();
    let status = cmd.stdout(out.try_clone().unwrap()).stderr(err.try_clone().unwrap()).status().unwrap();
    let read = |mut f: std::fs::File| {
        use std::io::{Read, Seek};
        let mut v = Vec::new();
        f.rewind().unwrap();
        f.read_to_end(&mut v).unwrap();
        v
    };
    Output { status, stdout: read(out), stderr: read(err) }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn ok(o: &Output) -> String {
    assert!(o.status.success(), "exit {:?}\nstdout: {}\nstderr: {}", o.status.code(), text(&o.stdout), text(&o.stderr));
    text(&o.stdout)
}

/// What conmon does, in Python (Debian's python3): become a child subreaper, run `husk-oci
/// create` with a pid file, check that the pid is now its own child, start it, wait for it.
/// Prints `ppid-ok` when the init was re-parented to it, then the exit status.
pub const SUBREAPER: &str = r#"
import ctypes, os, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
bin, root, bundle, cid, pidfile = sys.argv[1:6]
subprocess.run([bin, "--root", root, "create", "--bundle", bundle, "--pid-file", pidfile, cid], check=True)
pid = int(open(pidfile).read())
ppid = [l for l in open(f"/proc/{pid}/status") if l.startswith("PPid:")][0].split()[1]
print("ppid-ok" if int(ppid) == os.getpid() else f"ppid-wrong {ppid} != {os.getpid()}", flush=True)
subprocess.run([bin, "--root", root, "start", cid], check=True)
_, status = os.waitpid(pid, 0)
print(f"exit {os.waitstatus_to_exitcode(status)}", flush=True)
"#;
