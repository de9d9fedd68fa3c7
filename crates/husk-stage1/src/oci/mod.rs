//! The OCI runtime's half of stage1: a second planner, reading an OCI bundle's config.json
//! ([`plan`]), the container's cgroup ([`cgroups`]), hooks, and the processes husk-oci forks
//! ([`init`]). The mounts, the seccomp compiler, the capability and console code are the
//! `ns` flavor's own ([`crate::apply`], [`crate::rootfs::RealRoot`], [`crate::seccomp`]).

pub mod cgroups;
pub mod devices;
pub mod hooks;
pub mod init;
pub mod plan;
