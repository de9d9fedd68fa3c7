#!/usr/bin/env bash
# Runs husk's whole test suite, as root: builds the workspace and the static test workload,
# builds the test images offline, sets up the kvm stage1's assets, starts the loopback registry
# and pushes them, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "scripts/test.sh: the tests need root (namespaces, mounts, cgroups)" >&2; exit 1; }
# The first command on a fresh machine: install what the tests need when anything is missing.
for need in docker-registry skopeo htpasswd iptables curl gpg openssl systemd-analyze systemd-socket-activate setpriv useradd \
  podman conmon containerd ctr script \
  /bin/busybox /usr/lib/cni/ptp; do
  command -v "$need" >/dev/null 2>&1 || [ -x "$need" ] || { scripts/install-deps.sh; break; }
done
scripts/build-images.sh
# The kvm stage1's guest kernel, modules, private qemu and daemons (kept once built).
scripts/setup-kvm.sh >/dev/null
export HUSK_KVM_DIR=$PWD/build/kvm
scripts/registry.sh start
scripts/registry.sh push build/images
export HUSK_TEST_REGISTRY=127.0.0.1:${HUSK_TEST_REGISTRY_PORT:-5000}
export HUSK_TEST_AUTH_REGISTRY=127.0.0.1:$(( ${HUSK_TEST_REGISTRY_PORT:-5000} + 1 ))
export HUSK_TEST_IMAGES=$PWD/build/images
# Test the static husk and stage1 that are shipped (scripts/build-static.sh, run by build-images.sh).
export HUSK_STAGE1_DIR=$PWD/target/x86_64-unknown-linux-gnu/release
export HUSK_TEST_BIN=$HUSK_STAGE1_DIR/husk
cargo test --workspace --locked
