//! The `kvm` flavor: the pod in a lightweight virtual machine of its own (qemu's microvm), with
//! husk's pod init as the guest's PID 1 (docs/kvm.md).
//!
//! ```text
//! invoker ─ supervisor (husk-stage1-kvm run: holds the pod lock; own mount namespace with the app roots)
//!             ├ vhost-device-vsock (the control channel, the apps' output; `confine`d: own namespaces, seccomp)
//!             ├ virtiofsd (shares the pod dir, app roots and volumes included; own namespaces, seccomp)
//!             └ qemu (microvm; its own seccomp sandbox)
//!                 └ guest kernel ─ guest init = husk-stage1-kvm as /init (PID 1)
//!                                    ├ app 1 (own mount namespace, root, user, caps, seccomp, cgroup)
//!                                    └ app 2
//! ```
//! The helpers are bound to the supervisor (parent-death signal): they never outlive it.

pub mod confine;
pub mod enter;
pub mod guest;
pub mod host;
pub mod initramfs;
pub mod net;
pub mod plan;
pub mod stream;

use std::path::PathBuf;

use husk_types::pod::exit;

use crate::common::Fail;

/// Where a kvm pod's daemon sockets are: `/run/husk/kvm/<uuid>` (short: a socket path has 108
/// bytes at most, and a data dir may be long).
pub fn run_dir(uuid: &str) -> PathBuf {
    PathBuf::from(KVM_RUN).join(uuid)
}

/// The kvm flavor's host-wide runtime directory (sockets, the initramfs cache).
pub const KVM_RUN: &str = "/run/husk/kvm";

pub fn main(raw: Vec<std::ffi::OsString>) -> i32 {
    // In the guest, the kernel starts this very executable as /init.
    if std::process::id() == 1 {
        guest::main();
    }
    let (args, cmd) = crate::common::split_args(raw);
    let rest = args.get(2..).unwrap_or(&[]).to_vec();
    let r = match args.get(1).map(String::as_str) {
        Some("run") => host::run(&rest),
        // The same as for ns: cgroups, networks, and the sockets under /run/husk/kvm.
        Some("gc") => crate::ns::gc(&rest).map(|_| 0),
        Some("enter") => enter::enter(&rest, cmd),
        Some("confine") => confine::main(&rest, cmd),
        _ => Err(Fail::Invalid("usage: husk-stage1-kvm run|enter|gc … (see docs/stage1-abi.md)".into())),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("husk stage1: {}", e.chain());
            exit::STAGE1_FAILED
        }
    }
}
