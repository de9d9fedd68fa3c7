//! Children that share the caller's memory (`CLONE_VM`) and run one small function on a stack of
//! their own (a pod's detached cleanup, crate::detach; an app's process until its `execve`,
//! crate::proc::spawn_shared). Copying the caller's page tables, as fork does, costs more than
//! such a child's whole work (with the write-protect faults that follow in the caller).
//!
//! A child runs alongside the caller in the caller's memory and with the caller's thread-local
//! state (errno included), so its function may make raw syscalls only (rustix's: no errno, no
//! allocation) and touch nothing but its stack and what it was given by value.

use std::cell::UnsafeCell;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

const STACK_SIZE: usize = 16 * 1024;

/// A stack for one child. Static, not allocated: a child may run on after the caller
/// has freed its memory or exec'd (the old address space lives as long as the child does).
#[repr(C, align(16))]
pub(crate) struct Stack {
    mem: UnsafeCell<[u8; STACK_SIZE]>,
    taken: AtomicBool,
}

// SAFETY: the memory is handed out to one child at a time (`take`), and only that child touches it.
unsafe impl Sync for Stack {}

impl Stack {
    pub(crate) const fn new() -> Stack {
        Stack { mem: UnsafeCell::new([0; STACK_SIZE]), taken: AtomicBool::new(false) }
    }

    /// Takes the stack for a child, for good (a child that may outlive its caller is never known
    /// to be done with it); false if it was taken before.
    pub(crate) fn take(&self) -> bool {
        !self.taken.swap(true, Ordering::SeqCst)
    }

    /// The initial stack pointer: the stack's top (stacks grow down), 16-byte aligned.
    fn top(&self) -> *mut libc::c_void {
        // SAFETY: one past the end of the array is in bounds for pointer arithmetic.
        unsafe { self.mem.get().cast::<u8>().add(STACK_SIZE).cast() }
    }
}

/// Starts `f(arg)` in a child sharing this process's memory, on `stack`, which the caller has
/// taken (`Stack::take`). `flags` are added to `CLONE_VM`: with `libc::SIGCHLD` the child is
/// reaped like any child, without an exit signal (0) only with `__WCLONE`. Every signal is
/// blocked in the child, so no handler of the caller's ever runs there. Returns its pid.
///
/// # Safety
///
/// `f` must follow the module's rules, and `arg` must stay valid for as long as `f` uses it.
/// With `CLONE_VFORK` in `flags` the caller is suspended until the child exits or execs, and
/// `f` may then use the caller's thread state too (it is not running).
pub(crate) unsafe fn clone_vm(
    stack: &'static Stack,
    f: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    flags: libc::c_int,
    arg: *mut libc::c_void,
) -> io::Result<libc::pid_t> {
    // SAFETY: the caller took `stack` and vouches for `f` and `arg` (this function's contract).
    unsafe { clone_vm_on(stack.top(), f, flags, arg) }
}

/// [`clone_vm`] on any stack: `top` is the initial stack pointer of memory the child alone
/// uses until it exits or execs.
///
/// # Safety
///
/// As for [`clone_vm`], and `top` must be 16-byte aligned, with enough writable memory below it
/// for everything `f` does.
pub(crate) unsafe fn clone_vm_on(
    top: *mut libc::c_void,
    f: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    flags: libc::c_int,
    arg: *mut libc::c_void,
) -> io::Result<libc::pid_t> {
    let mut all = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    let mut old = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: `all` is filled by sigfillset before use; `old` receives the caller's mask and is
    // read only after pthread_sigmask succeeded. The child's stack is the caller's to give, and
    // the caller vouches for `f` and `arg`.
    unsafe {
        libc::sigfillset(all.as_mut_ptr());
        if libc::pthread_sigmask(libc::SIG_SETMASK, all.as_ptr(), old.as_mut_ptr()) != 0 {
            return Err(io::Error::other("cannot block signals for a helper process"));
        }
        let pid = libc::clone(f, top, libc::CLONE_VM | flags, arg);
        let e = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, old.as_ptr(), std::ptr::null_mut());
        if pid == -1 {
            return Err(e);
        }
        Ok(pid)
    }
}
