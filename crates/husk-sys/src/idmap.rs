//! Idmapped mounts (Linux 5.12+): a clone of a directory tree whose file owners appear shifted
//! through a user namespace's id map. Used for `--private-users`, so that the store's layers
//! (owned by host ids) appear owned by the pod's own ids without chowning anything.
//!
//! Written by hand over raw syscalls: neither rustix nor nix wraps `mount_setattr` yet.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Creates an idmapped clone of `source` (through the user namespace `userns`) and attaches it
/// at `target` (an existing directory).
pub fn idmapped_bind(source: &Path, target: &Path, userns: impl AsFd) -> io::Result<()> {
    let tree = idmapped_tree(source, userns, true)?;
    attach_tree(&tree, target)
}

/// An idmapped clone of `source` (recursive: with the mounts below it), detached: the fd can
/// be attached later, in another mount namespace, with [`attach_tree`]. An OCI runtime makes
/// these as the host's root before its container's init exists, and the init attaches them.
pub fn idmapped_tree(source: &Path, userns: impl AsFd, recursive: bool) -> io::Result<OwnedFd> {
    let src = std::ffi::CString::new(source.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let rec = if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: open_tree takes a valid NUL-terminated path and flags; it returns a new fd that we
    // take ownership of only on success.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            src.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | rec,
        )
    };
    if tree < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `tree` is a fresh fd returned by open_tree, owned by nobody else.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as i32) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_fd().as_raw_fd() as u64,
    };
    let empty = c"";
    // SAFETY: mount_setattr reads `size_of::<MountAttr>()` bytes from a valid, initialised
    // struct laid out as the kernel's `struct mount_attr`; the path is the empty string with
    // AT_EMPTY_PATH, so the fd itself is changed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | rec,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(tree)
}

/// Attaches a detached tree (from [`idmapped_tree`]) on the directory or file `target` is an
/// fd of (an `O_PATH` fd from resolving the target inside a root: no path is looked up again).
pub fn attach_tree_at(tree: &OwnedFd, target: impl AsFd) -> io::Result<()> {
    const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
    let empty = c"";
    // SAFETY: move_mount attaches the detached tree of a valid fd onto the valid fd `target`
    // (both paths empty, with the EMPTY_PATH flags); no memory is written.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            target.as_fd().as_raw_fd(),
            empty.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Attaches a detached tree (from [`idmapped_tree`]) at `target` (an existing path).
pub fn attach_tree(tree: &OwnedFd, target: &Path) -> io::Result<()> {
    let t = crate::resolve::open_path(target)?;
    attach_tree_at(tree, &t)
}
