#!/usr/bin/env bash
# Installs husk into PREFIX (default /usr/local): bin/husk and, beside it, the stage1
# executables husk finds next to itself, and husk-oci (the OCI runtime for podman and
# containerd; docs/oci-runtime.md), all static (scripts/build-static.sh). As root it then runs `husk setup` (the husk group, the
# data and config dirs with their owners and modes; SETUP=0 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${PREFIX:-/usr/local}
scripts/build-static.sh
install -d "$prefix/bin"
for f in husk husk-stage1-ns husk-stage1-fly husk-stage1-kvm husk-oci; do
  install -m 0755 "target/x86_64-unknown-linux-gnu/release/$f" "$prefix/bin/$f.new" && mv "$prefix/bin/$f.new" "$prefix/bin/$f"
done
echo "installed husk into $prefix/bin"
if [ "$(id -u)" = 0 ] && [ "${SETUP:-1}" != 0 ]; then
  "$prefix/bin/husk" setup
fi
