#!/usr/bin/env bash
# Compares this tree's husk with an earlier revision's, side by side in one session: pod start
# without and with networking, and a detached pod's resident memory. Medians and ratios.
#   scripts/bench-vs.sh REV [--runs N]
# Builds REV in a git worktree under build/bench-REV. Both trees' husk and stage1 are built
# alike, statically (as scripts/build-static.sh does now), so that only the code differs. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:?usage: scripts/bench-vs.sh REV [--runs N]}; shift
runs=30
while [ $# -gt 0 ]; do case "$1" in --runs) runs=$2; shift 2;; *) echo "unknown option $1" >&2; exit 2;; esac; done
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
short=$(git rev-parse --short "$rev")
old=$PWD/build/bench-$short
static() { RUSTFLAGS="-C target-feature=+crt-static -C link-arg=-Wl,-z,pack-relative-relocs" \
  CARGO_TARGET_DIR=$1/target cargo build --release --locked -q --target x86_64-unknown-linux-gnu -p husk -p husk-stage1; }
bin=target/x86_64-unknown-linux-gnu/release
if [ ! -x "$old/$bin/husk" ]; then
  [ -d "$old" ] || git worktree add -f "$old" "$rev" >/dev/null
  (cd "$old" && static "$old")
fi
static "$PWD"
scripts/build-images.sh >/dev/null
scripts/registry.sh start >/dev/null
scripts/registry.sh push build/images >/dev/null
w=$(mktemp -d /var/tmp/husk-bench-vs.XXXXXX)
trap 'rm -rf "$w"' EXIT
img=127.0.0.1:5000/husk/busybox
new="env HUSK_STAGE1_DIR=$PWD/$bin $PWD/$bin/husk --dir $w/new --insecure-options=http"
was="env HUSK_STAGE1_DIR=$old/$bin $old/$bin/husk --dir $w/old --insecure-options=http"
$new fetch -q $img >/dev/null
$was fetch -q $img >/dev/null
# Alternating the two versions run by run: this machine's noise (and each networked pod's
# background teardown) then hits both alike. Medians of N runs each, after 3 warm-ups.
alternate() { # NAME CMD_OLD CMD_NEW
  python3 - "$runs" "$short" "$@" <<'PY'
import shlex, statistics, subprocess, sys, time
runs, short, name, old, new = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
times = {"old": [], "new": []}
for i in range(runs + 3):
    for k, cmd in (("old", old), ("new", new)) if i % 2 else (("new", new), ("old", old)):
        t = time.perf_counter()
        # No shell in between: its start-up would be noise in a ~10 ms measurement.
        subprocess.run(shlex.split(cmd), check=True, stdout=subprocess.DEVNULL)
        if i >= 3:
            times[k].append(time.perf_counter() - t)
mo, mn = statistics.median(times["old"]), statistics.median(times["new"])
qo, qn = sorted(times["old"])[runs // 4], sorted(times["new"])[runs // 4]
print(f"{name:<18} husk {short}: {mo*1000:7.2f} ms   husk now: {mn*1000:7.2f} ms   now/{short}: {mn/mo:.2f}x"
      f"   (fastest quarter: {qo*1000:.2f} / {qn*1000:.2f} ms, {qn/qo:.2f}x)")
PY
}
sync; sleep 2
alternate "--net=none" "$was run -q --net=none $img -- /bin/true" "$new run -q --net=none $img -- /bin/true"
sync; sleep 2
alternate "default network" "$was run -q $img -- /bin/true" "$new run -q $img -- /bin/true"
$new gc --grace-period=0s >/dev/null 2>&1; $was gc --grace-period=0s >/dev/null 2>&1
mem() { # RSS and PSS in KiB of a detached pod's supervisor: husk-binary label
  local h=$1 label=$2 u pid
  u=$($h run -q -d --net=none $img -- sleep 30)
  sleep 1
  pid=$($h status "$u" --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)["supervisor_pid"])')
  printf '%-28s supervisor RSS %s KiB, PSS %s KiB\n' "$label" \
    "$(awk '/^Rss:/{print $2}' /proc/$pid/smaps_rollup)" "$(awk '/^Pss:/{print $2}' /proc/$pid/smaps_rollup)"
  $h stop --force "$u" >/dev/null
}
mem "$was" "husk $short"
mem "$new" "husk now"
