#!/usr/bin/env bash
# Builds the statically linked executables: the stage1 flavors (they stay resident for a pod's
# life and must survive host libc upgrades), husk-oci (podman and containerd start it for
# every container operation: no dynamic loader on that path) and the test workload (it runs in
# any image).
# Output: target/x86_64-unknown-linux-gnu/release/{husk-stage1-ns,husk-stage1-fly,husk-oci,husk-workload}.
# A separate --target build so that crt-static does not reach proc-macros and build scripts.
set -euo pipefail
cd "$(dirname "$0")/.."
RUSTFLAGS="-C target-feature=+crt-static -C link-arg=-Wl,-z,pack-relative-relocs" \
  HUSK_COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown) \
  cargo build --release --locked --target x86_64-unknown-linux-gnu -p husk-stage1 -p husk-oci -p husk-workload
