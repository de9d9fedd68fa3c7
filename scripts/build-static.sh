#!/usr/bin/env bash
# Builds the statically linked executables (static-pie: still position-independent, so ASLR
# stays): husk itself, the stage1 flavors (they stay resident for a pod's life and must survive
# host libc upgrades), husk-oci (podman and containerd start it for every container operation)
# and the test workload (it runs in any image).
# husk is static for its start-up: without the dynamic loader's work (four libraries to map,
# their symbols to bind) a `husk run` starts a pod about 1 ms sooner (docs/BENCHMARKS.md). The
# one glibc function it uses that reads nsswitch.conf is getaddrinfo (registry host names): the
# `files` and `dns` sources are built into a static glibc; any other source is loaded from the
# host's glibc of the version it was built with, as for every static glibc program.
# Output: target/x86_64-unknown-linux-gnu/release/{husk,husk-stage1-ns,husk-stage1-fly,
# husk-stage1-kvm,husk-oci,husk-workload}; husk finds the stage1 executables beside itself.
# A separate --target build so that crt-static does not reach proc-macros and build scripts.
set -euo pipefail
cd "$(dirname "$0")/.."
RUSTFLAGS="-C target-feature=+crt-static -C link-arg=-Wl,-z,pack-relative-relocs" \
  HUSK_COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown) \
  cargo build --release --locked --target x86_64-unknown-linux-gnu -p husk -p husk-stage1 -p husk-oci -p husk-workload
