//! husk's stage1 flavors. Each is a separate executable implementing the entrypoints of
//! `docs/stage1-abi.md` (`run`, `enter`, `gc`). stage1 reads only the pod dir it runs in: it
//! never touches the image store or the registry (stage0 already resolved everything).
//!
//! The processes of an `ns` pod:
//! ```text
//! invoker ─ supervisor (stage1, holds the pod lock, host namespaces)
//!             └ pod init (PID 1 of the pod: new pid/mount/uts/ipc/net namespaces; reaps, forwards signals)
//!                 ├ app 1 (own mount namespace, pivot_root into its overlay root, own cgroup namespace)
//!                 └ app 2
//! ```
#![forbid(unsafe_code)] // only husk-sys may use `unsafe` (STYLE.md)

pub mod apply;
pub mod cgroup;
pub mod cleanup;
pub mod cni;
pub mod common;
pub mod console;
pub mod fly;
pub mod ipam;
pub mod kvm;
pub mod logger;
pub mod masq;
pub mod notify;
pub mod ns;
pub mod oci;
pub mod plan;
pub mod prefix;
pub mod process;
pub mod ptp;
pub mod rootfs;
pub mod seccomp;
