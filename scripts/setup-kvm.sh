#!/usr/bin/env bash
# Sets up the kvm stage1's assets in build/kvm (or $1), as root, offline but for Debian's
# package mirror and crates.io:
#   vmlinux, vmlinuz   Debian's cloud kernel (unpacked with dpkg-deb, never installed into /boot);
#                      vmlinux is the same kernel uncompressed, which qemu boots directly (PVH)
#   modules/*.ko       the guest's virtio, virtio-fs, vsock and virtio-net modules
#   qemu/              Debian's qemu-system-x86 unpacked privately: installing the package
#                      conflicts with a qemu-utils backport on some hosts, and husk needs only
#                      the binary (its shared libraries are installed as ordinary packages)
#   bin/virtiofsd, bin/vhost-device-vsock   built from crates.io (bookworm packages neither)
# Idempotent: what is there already is kept. husk finds the assets with [stage1.kvm] dir in
# husk.toml or $HUSK_KVM_DIR (default /usr/lib/husk/kvm).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-build/kvm}")
mkdir -p "$out/modules" "$out/bin"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export DEBIAN_FRONTEND=noninteractive
need_pkgs=(lz4 libseccomp-dev libcap-ng-dev pkg-config)

if [ ! -x "$out/qemu/usr/bin/qemu-system-x86_64" ]; then
  apt-get update -qq
  # qemu's libraries: every dependency of the two packages that is not qemu's own.
  deps=$(apt-cache depends --no-recommends --no-suggests qemu-system-x86 qemu-system-common |
    awk '/^ +Depends:/ {print $2}' | grep -vE '^(qemu-|seabios|ipxe-qemu|<)' | sort -u)
  apt-get install -y -qq --no-install-recommends $deps "${need_pkgs[@]}" >/dev/null
  (cd "$work" && apt-get download -qq qemu-system-x86 qemu-system-common qemu-system-data seabios ipxe-qemu 2>/dev/null)
  rm -rf "$out/qemu.tmp" && mkdir -p "$out/qemu.tmp"
  for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$out/qemu.tmp"; done
  rm -f "$work"/*.deb
  rm -rf "$out/qemu" && mv "$out/qemu.tmp" "$out/qemu"
else
  for p in "${need_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || { apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null; break; }; done
fi

if [ ! -f "$out/vmlinuz" ]; then
  pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  (cd "$work" && apt-get download -qq "$pkg" 2>/dev/null)
  mkdir -p "$work/k" && dpkg-deb -x "$work"/linux-image-*.deb "$work/k"
  mods=$(echo "$work"/k/lib/modules/*)
  for m in virtio_ring virtio virtio_mmio fuse virtiofs vsock vmw_vsock_virtio_transport_common \
    vmw_vsock_virtio_transport failover net_failover virtio_net; do
    f=$(find "$mods" -name "$m.ko" -o -name "$m.ko.xz" | head -1)
    [ -n "$f" ] || { echo "setup-kvm: module $m is not in $pkg" >&2; exit 1; }
    case "$f" in *.xz) xz -dc "$f" >"$out/modules/$m.ko" ;; *) cp "$f" "$out/modules/$m.ko" ;; esac
  done
  # vmlinux: the payload of the bzImage (LZ4 legacy frames on Debian's cloud kernel).
  python3 - "$work"/k/boot/vmlinuz-* "$work/payload" <<'PY'
import sys
d = open(sys.argv[1], 'rb').read()
i = d.find(b'\x02\x21\x4c\x18')
if i < 0:
    sys.exit("setup-kvm: the kernel is not LZ4-compressed; vmlinuz is booted as is")
open(sys.argv[2], 'wb').write(d[i:])
PY
  if [ -f "$work/payload" ] && lz4 -dc "$work/payload" >"$work/vmlinux" 2>/dev/null; [ -s "$work/vmlinux" ]; then
    mv "$work/vmlinux" "$out/vmlinux"
  fi
  cp "$work"/k/boot/vmlinuz-* "$out/vmlinuz.tmp" && mv "$out/vmlinuz.tmp" "$out/vmlinuz"
fi

for tool in virtiofsd@1.14.0 vhost-device-vsock@0.3.0; do
  bin=${tool%@*}
  [ -x "$out/bin/$bin" ] || cargo install --quiet --locked --root "$work/cargo" "$tool"
  [ -x "$out/bin/$bin" ] || mv "$work/cargo/bin/$bin" "$out/bin/$bin"
done
echo "kvm assets in $out"
