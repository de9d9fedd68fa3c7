#!/usr/bin/env bash
# The kvm stage1 against its floor, side by side in one session (alternating run by run):
#   floor   the same qemu, machine options and kernel booting a trivial initramfs whose /init
#           powers off at once (no husk, no virtio-fs, no vsock, no pod)
#   husk    husk run --stage1=kvm --net=none busybox --exec /bin/true, from the command to exit
# and the resident memory (VmRSS, Pss) of a detached kvm pod's host processes: qemu, virtiofsd,
# the vsock daemon and the supervisor.
#   scripts/bench-kvm.sh [--runs N]
# Needs root; sets up the kvm assets (scripts/setup-kvm.sh) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=10
while [ $# -gt 0 ]; do case "$1" in --runs) runs=$2; shift 2;; *) echo "unknown option $1" >&2; exit 2;; esac; done
. scripts/bench-common.sh
bench_prepare busybox cpio
scripts/setup-kvm.sh >/dev/null
export HUSK_KVM_DIR=$PWD/build/kvm
reg=127.0.0.1:5000
w=$(mktemp -d /var/tmp/husk-bench-kvm.XXXXXX)
trap 'rm -rf "$w"' EXIT
H="$HUSK_BIN --dir $w/husk --insecure-options=http"
$H fetch -q $reg/husk/busybox >/dev/null

# The floor's initramfs: busybox and an /init that powers off.
mkdir -p $w/floor/bin && cp /bin/busybox $w/floor/bin/
printf '#!/bin/busybox sh\n/bin/busybox poweroff -f\n' >$w/floor/init && chmod +x $w/floor/init
(cd $w/floor && find . | cpio -o -H newc 2>/dev/null) >$w/floor.cpio
K=$HUSK_KVM_DIR/vmlinux; [ -f "$K" ] || K=$HUSK_KVM_DIR/vmlinuz
khz=$(awk -F: '/^cpu MHz/ {printf "%d", $2*1000; exit}' /proc/cpuinfo)
Q="$HUSK_KVM_DIR/qemu/usr/bin/qemu-system-x86_64 -L $HUSK_KVM_DIR/qemu/usr/share/qemu"
floor="$Q -M microvm,pit=on,rtc=on,acpi=on -accel tcg,tb-size=64 -cpu max -smp 1 -m 512M -nodefaults -no-user-config \
-nographic -no-reboot -serial null -kernel $K -initrd $w/floor.cpio \
-append 'console=ttyS0 panic=-1 reboot=t quiet loglevel=1 pci=off tsc_early_khz=$khz tsc=reliable'"
husk="$H run -q --stage1=kvm --net=none $reg/husk/busybox --exec /bin/true"
# One run each first: builds husk's initramfs cache, warms the page cache.
sh -c "$floor" >/dev/null 2>&1; $husk >/dev/null 2>&1
echo "== kvm pod start to exit, against the same qemu and kernel booting a trivial initramfs" >&2
# Both through sh -c (the same ~1 ms each), so that husk's TCG notice can go to /dev/null.
scripts/alternate.py --runs "$runs" --json $w/kvm.json "floor: qemu + kernel + poweroff::sh -c \"$floor\"" \
  "husk run --stage1=kvm true::sh -c \"$husk 2>/dev/null\""
python3 - $w/kvm.json <<'PY'
import json, sys
r = {x["command"].split(":")[0]: x["median"] for x in json.load(open(sys.argv[1]))["results"]}
f, h = r["floor"], r["husk run --stage1=kvm true"]
print(f"husk / floor: {h / f:.2f}x   (goal <= 1.15x)   husk {h*1000:.0f} ms, floor {f*1000:.0f} ms")
PY

echo "== resident memory of a detached kvm pod (busybox sleep)" >&2
u=$($H run -q -d --stage1=kvm --net=none $reg/husk/busybox --exec /bin/sleep -- 1000 2>/dev/null)
sleep 2
sup=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['supervisor_pid'])" $w/husk/pods/run/$u/stage1.json)
total_rss=0; total_pss=0
for pid in $sup $(pgrep -P $sup) $(for c in $(pgrep -P $sup); do pgrep -P $c; done); do
  name=$(cat /proc/$pid/comm)
  rss=$(awk '/^VmRSS/ {print $2}' /proc/$pid/status)
  pss=$(awk '/^Pss:/ {print $2}' /proc/$pid/smaps_rollup)
  printf '%-20s %8s KiB RSS %8s KiB Pss\n' "$name" "$rss" "$pss"
  total_rss=$((total_rss + rss)); total_pss=$((total_pss + pss))
done
printf '%-20s %8s KiB RSS %8s KiB Pss   (guest memory %s MiB, a memfd: counted as it is touched)\n' total $total_rss $total_pss \
  "$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['vm']['memory_mib'])" $w/husk/pods/run/$u/pod.json 2>/dev/null || echo '?')"
$H stop --force $u >/dev/null
$H gc --grace-period=0s >/dev/null
