//! The one husk crate allowed to use `unsafe`: thin, documented wrappers over the syscalls husk
//! needs (locks, `openat2`, mounts, namespaces, process creation). Everything above this crate is
//! safe Rust. Most wrappers delegate to `rustix` or `nix`; the few places that need raw `libc`
//! carry a `// SAFETY:` comment.

pub mod bpf;
pub mod cgprime;
pub mod fsutil;
pub mod idmap;
pub mod lock;
pub mod netconf;
pub mod proc;
pub mod resolve;
pub mod tty;
mod vmchild;

pub use fsutil::{atomic_write, atomic_write_volatile, fsync_dir};
pub use lock::{Lock, LockError, LockKind};
