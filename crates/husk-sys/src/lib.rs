//! The one husk crate allowed to use `unsafe`: thin, documented wrappers over the syscalls husk
//! needs (locks, `openat2`, mounts, namespaces, process creation). Everything above this crate is
//! safe Rust. Most wrappers delegate to `rustix` or `nix`; the few places that need raw `libc`
//! carry a `// SAFETY:` comment.

pub mod bpf;
pub mod detach;
pub mod fsutil;
pub mod idmap;
pub mod lock;
pub mod netconf;
pub mod netns;
pub mod proc;
pub mod resolve;
pub mod tty;
mod vmchild;

pub use fsutil::{atomic_write, atomic_write_volatile, fsync_dir};
pub use lock::{Lock, LockError, LockKind};

/// Fills `buf` from the kernel's random pool (`getrandom(2)`, waiting for it to be initialised,
/// as it is once a system has booted). The `uuid` crate's own source asks libc's dynamic
/// loader for `getrandom`, which a static husk has not, and falls back to opening
/// `/dev/random` and `/dev/urandom` at every pod's creation.
pub fn random_bytes(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::rand::getrandom(&mut buf[done..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod random_tests {
    #[test]
    fn random_bytes_fill_the_buffer_and_differ() {
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        super::random_bytes(&mut a).unwrap();
        super::random_bytes(&mut b).unwrap();
        assert_ne!(a, b);
        assert_ne!(a, [0u8; 32]);
        super::random_bytes(&mut []).unwrap();
    }
}
