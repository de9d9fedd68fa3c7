#!/usr/bin/env bash
# From a fresh Debian 12 machine to a running pod: installs what husk needs, builds husk,
# builds the demo images offline, serves them from a registry on loopback, fetches one and runs
# a pod from it. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "scripts/demo.sh: run as root" >&2; exit 1; }
scripts/install-deps.sh
# husk and its stage1 executables, static, as scripts/install.sh installs them.
scripts/build-static.sh
export HUSK_STAGE1_DIR=$PWD/target/x86_64-unknown-linux-gnu/release
scripts/build-images.sh
scripts/registry.sh start
scripts/registry.sh push build/images
data=${HUSK_DEMO_DIR:-build/demo-data}
husk="$HUSK_STAGE1_DIR/husk --dir $data --insecure-options=http"
echo "+ husk fetch 127.0.0.1:5000/husk/workload"
$husk fetch 127.0.0.1:5000/husk/workload
echo "+ husk run 127.0.0.1:5000/husk/workload   (the workload prints what it sees inside the pod)"
$husk run 127.0.0.1:5000/husk/workload
echo "+ husk run --hostname demo 127.0.0.1:5000/husk/busybox -- sh -c 'hostname; id; ps'"
$husk run --hostname demo 127.0.0.1:5000/husk/busybox -- sh -c 'hostname; id; ps'
echo "+ husk list"
$husk list
