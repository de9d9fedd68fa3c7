//! A detached child that finishes what an exited pod leaves behind after its supervisor has gone
//! (stage1's cleanup), sharing the supervisor's memory (crate::vmchild) instead of a forked
//! copy of it: the fork copied the supervisor's page tables and then faulted in copies of the
//! pages either process wrote, a millisecond's work before the pod's invoker got its status.
//!
//! The child runs a [`Plan`] of typed steps, each a raw system call or two (rustix's: no errno,
//! no allocation) on the plan, which is leaked so that it outlives the supervisor, and on its
//! own static stack: the supervisor runs on and exits meanwhile. What a plan cannot say (CNI
//! networks, a kvm pod's sockets, processes left in a cgroup) is left to a forked cleanup.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd as _, BorrowedFd, IntoRawFd as _, RawFd};
use std::time::Duration;

use crate::vmchild::{self, Stack};

/// One step of a [`Plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Closes the child's copy of an fd (the parent's stays open).
    Close(RawFd),
    /// A new session, so that nothing sent to the invoker's terminal reaches the child.
    NewSession,
    /// Standard input, output and error on /dev/null: a caller capturing the invoker's output
    /// does not wait for the child.
    NullStdio,
    /// Reads the fd until end of file (the parent's end of a pipe closed: it has gone).
    WaitEof(RawFd),
    /// Joins the mount namespace the fd refers to, leaving the one it was in (the last process
    /// to leave a mount namespace pays for unmounting what it held).
    JoinMountNs(RawFd),
    /// Removes the empty directory (absent counts as removed). Busy (a cgroup whose last task
    /// is still exiting) is retried every 10 ms for half a second; a failure is appended to the
    /// plan's log and the plan goes on.
    Rmdir(CString),
    /// Makes a spare network namespace for the next pod, if a slot is free
    /// ([`crate::netns::make_spare`]); the last step of a plan, as it leaves the child in that
    /// namespace. A failure is no one's: the next pod makes its own namespace.
    MakeSpareNetns(crate::netns::SpareDir),
}

/// What a detached child does, in order, and the file it reports failures in (created only if
/// there is one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub log: CString,
    /// Each failure's line ends with this (what to do about it).
    pub hint: String,
}

/// How often, and how long apart, a busy directory is retried.
const RMDIR_TRIES: u32 = 50;
const RMDIR_PAUSE: Duration = Duration::from_millis(10);

static STACK: Stack = Stack::new();

/// Starts the child running `plan` and returns at once. Once per process (the child's stack is
/// static, and a detached child is never known to be done with it); fails when called again, or
/// when the child cannot be created, and the caller then does the work another way.
pub fn spawn(plan: Plan) -> io::Result<()> {
    if !STACK.take() {
        return Err(io::Error::other("a detached child was started before"));
    }
    // Never freed: the child reads it after this process may have exited (its memory lives as
    // long as the child does).
    let plan: &'static Plan = Box::leak(Box::new(plan));
    // SAFETY: `run_plan` follows vmchild's rules: raw rustix calls on its own stack, reading only
    // the leaked plan, which nothing frees or changes.
    unsafe {
        vmchild::clone_vm(&STACK, run_plan, libc::SIGCHLD, std::ptr::from_ref(plan).cast_mut().cast())?;
    }
    Ok(())
}

extern "C" fn run_plan(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the plan `spawn` leaked: valid, and never written, for the process's life.
    let plan = unsafe { &*arg.cast::<Plan>() };
    for step in &plan.steps {
        run_step(step, plan);
    }
    0
}

fn run_step(step: &Step, plan: &Plan) {
    use rustix::fs::{Mode, OFlags};
    match step {
        // SAFETY: the fd is the child's own copy (the fd table was copied at the clone), which
        // nothing else in the child uses.
        Step::Close(fd) => unsafe { rustix::io::close(*fd) },
        Step::NewSession => {
            let _ = rustix::process::setsid();
        }
        Step::NullStdio => {
            if let Ok(null) = rustix::fs::open(c"/dev/null", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()) {
                let _ = rustix::stdio::dup2_stdin(&null);
                let _ = rustix::stdio::dup2_stdout(&null);
                let _ = rustix::stdio::dup2_stderr(&null);
                // SAFETY: our own fd, closed once (rustix: no libc, no errno).
                unsafe { rustix::io::close(null.into_raw_fd()) };
            }
        }
        Step::WaitEof(fd) => {
            // SAFETY: the fd is open in the child for as long as this step runs.
            let fd = unsafe { BorrowedFd::borrow_raw(*fd) };
            let mut byte = [0u8; 1];
            loop {
                match rustix::io::read(fd, &mut byte) {
                    Ok(0) => break,
                    Err(rustix::io::Errno::INTR) | Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
        Step::JoinMountNs(fd) => {
            // SAFETY: as for WaitEof.
            let fd = unsafe { BorrowedFd::borrow_raw(*fd) };
            if let Err(e) =
                rustix::thread::move_into_link_name_space(fd, Some(rustix::thread::LinkNameSpaceType::Mount))
            {
                report(plan, b"cannot return to the host's mount namespace", e);
            }
        }
        Step::Rmdir(path) => {
            let mut tries = 0;
            loop {
                match rustix::fs::unlinkat(rustix::fs::CWD, path.as_c_str(), rustix::fs::AtFlags::REMOVEDIR) {
                    Ok(()) | Err(rustix::io::Errno::NOENT) => break,
                    Err(rustix::io::Errno::BUSY | rustix::io::Errno::NOTEMPTY | rustix::io::Errno::INTR)
                        if tries + 1 < RMDIR_TRIES =>
                    {
                        tries += 1;
                        let pause = rustix::thread::Timespec { tv_sec: 0, tv_nsec: RMDIR_PAUSE.as_nanos() as _ };
                        let _ = rustix::thread::nanosleep(&pause);
                    }
                    Err(e) => {
                        report(plan, path.as_bytes(), e);
                        break;
                    }
                }
            }
        }
        Step::MakeSpareNetns(dir) => {
            let _ = crate::netns::make_spare(dir);
        }
    }
}

/// Appends "husk stage1: cannot remove WHAT: ERRNO; HINT" to the plan's log, formatted on the
/// stack (no allocation in the child); a line too long for the buffer is cut.
fn report(plan: &Plan, what: &[u8], e: rustix::io::Errno) {
    use rustix::fs::{Mode, OFlags};
    let mut line = [0u8; 1024];
    let mut n = 0;
    let mut push = |b: &[u8]| {
        let k = b.len().min(line.len() - 1 - n);
        line[n..n + k].copy_from_slice(&b[..k]);
        n += k;
    };
    let is_path = what.first() == Some(&b'/');
    push(if is_path { b"husk stage1: cannot remove " } else { b"husk stage1: " });
    push(what);
    push(b": errno ");
    let mut digits = [0u8; 12];
    let mut v = e.raw_os_error().unsigned_abs();
    let mut d = digits.len();
    loop {
        d -= 1;
        digits[d] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    push(&digits[d..]);
    push(b"; ");
    push(plan.hint.as_bytes());
    line[n] = b'\n';
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::APPEND | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    if let Ok(f) = rustix::fs::open(plan.log.as_c_str(), flags, Mode::from_raw_mode(0o640)) {
        let _ = rustix::io::write(f.as_fd(), &line[..=n]);
        // SAFETY: our own fd, closed once.
        unsafe { rustix::io::close(f.into_raw_fd()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd as _;
    use std::os::unix::ffi::OsStrExt as _;

    fn c(p: &std::path::Path) -> CString {
        CString::new(p.as_os_str().as_bytes()).unwrap()
    }

    #[test]
    fn a_plan_runs_after_its_parent_lets_go_and_reports_what_it_could_not_do() {
        let d = tempfile::tempdir().unwrap();
        let (gone, absent) = (d.path().join("gone"), d.path().join("absent"));
        std::fs::create_dir_all(gone.join("child")).unwrap();
        let spares = d.path().join("spares");
        let log = d.path().join("cleanup.log");
        let (r, w) = nix::unistd::pipe().unwrap();
        let plan = Plan {
            steps: vec![
                Step::Close(w.as_raw_fd()),
                Step::WaitEof(r.as_raw_fd()),
                Step::Rmdir(c(&gone.join("child"))),
                Step::Rmdir(c(&gone)),
                Step::Rmdir(c(&absent)),
                Step::Rmdir(c(&d.path().join("not-a-dir-file"))),
                Step::Rmdir(c(&d.path().join("a-dir-file"))),
                Step::MakeSpareNetns(crate::netns::SpareDir::new(&spares).unwrap()),
            ],
            log: c(&log),
            hint: "`husk gc` retries".into(),
        };
        std::fs::write(d.path().join("not-a-dir-file"), "x").unwrap();
        std::fs::write(d.path().join("a-dir-file"), "x").unwrap();
        spawn(plan.clone()).unwrap();
        // Once only: the stack is taken for good.
        assert!(spawn(plan).is_err());
        // Nothing happens while our end of the pipe is open.
        std::thread::sleep(Duration::from_millis(50));
        assert!(gone.exists());
        drop(w);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        // Done once the spare is pinned (its lock file exists before).
        let reported = || spares.join("0").exists();
        while !reported() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!gone.exists());
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.starts_with("husk stage1: cannot remove "), "{text}");
        assert!(text.contains("not-a-dir-file: errno 20; `husk gc` retries\n"), "{text}");
        assert!(text.contains("a-dir-file: errno 20; `husk gc` retries\n"), "{text}");
        assert_eq!(text.lines().count(), 2, "{text}");
        // The spare the last step made is there to take (the child may still be pinning it).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let spare = loop {
            match crate::netns::take_spare(&spares) {
                Some(fd) => break fd,
                None if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                None => panic!("no spare in {}", spares.display()),
            }
        };
        drop(spare);
        drop(r);
    }
}
