#!/usr/bin/env bash
# Builds, offline: husk (debug), the stage1 executables as static binaries (what is shipped:
# target/x86_64-unknown-linux-gnu/release), the static test workload, and the test images
# (OCI layouts in build/images).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --locked
scripts/build-static.sh
python3 tests/images/build.py build/images target/x86_64-unknown-linux-gnu/release/husk-workload
