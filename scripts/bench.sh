#!/usr/bin/env bash
# Benchmarks husk against crun, runc, podman and skopeo on this machine, side by side, and
# prints medians and ratios (hyperfine alternates nothing, but runs every command in the same
# session; compare ratios, not absolute times, on shared machines).
#   scripts/bench.sh [--runs N] [--out FILE.md]
# Needs root; installs hyperfine, crun, runc, podman, skopeo from Debian when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=15; out=""
while [ $# -gt 0 ]; do case "$1" in --runs) runs=$2; shift 2;; --out) out=$2; shift 2;; *) echo "unknown option $1" >&2; exit 2;; esac; done
. scripts/bench-common.sh
bench_prepare hyperfine crun runc podman skopeo
crun_hybrid_fix
reg=127.0.0.1:5000
w=$(mktemp -d /var/tmp/husk-bench.XXXXXX)
trap 'rm -rf "$w"' EXIT
H="$HUSK_BIN --dir $w/husk --insecure-options=http"
P="podman --root $w/podman/root --runroot $w/podman/run --tmpdir $w/podman/tmp --cgroup-manager=cgroupfs --events-backend=file"
PR="--ulimit nofile=16384:16384 --ulimit nproc=16384:16384"
json=$w/json; mkdir -p $json
# Each group starts from a quiet disk: the fetch groups write about a gigabyte, whose writeback
# would otherwise slow the metadata operations of the groups after them. The pod-start groups
# also start 61 s after the last mass deletion (a store removed, a `gc`): ext4 without a journal
# (this kind of host's root file system) skips, one by one, the inodes freed in the last 60 s
# (360 s while their inode table block is dirty, hence the sync) when it allocates
# (`recently_deleted` in fs/ext4/ialloc.c), so the first runs after the benchmark's own cleanup
# would pay for it (docs/BENCHMARKS.md, "ext4 inode allocation after mass deletions").
quiet=3
settle() { sync; sleep $quiet; }
hf() { local name=$1; shift; settle; hyperfine -N --style none --runs "$runs" --warmup 2 --export-json "$json/$name.json" "$@" >/dev/null 2>&1 || hyperfine --style none --runs "$runs" --warmup 2 --export-json "$json/$name.json" "$@" >/dev/null; }

echo "== fetch from the loopback registry (fresh store each run)" >&2
for img in busybox big; do
  hf "fetch-$img" \
    --prepare "rm -rf $w/husk $w/podman $w/oci" \
    -n "husk fetch $img" "$H fetch -q $reg/husk/$img" \
    -n "podman pull $img" "$P pull -q --tls-verify=false $reg/husk/$img" \
    -n "skopeo copy $img (no unpack)" "skopeo copy -q --src-tls-verify=false docker://$reg/husk/$img oci:$w/oci:x"
done

echo "== run busybox true" >&2
quiet=61
rm -rf "$w/husk" "$w/podman"
$H fetch -q $reg/husk/busybox >/dev/null
$P pull -q --tls-verify=false $reg/husk/busybox >/dev/null
mkdir -p $w/bundle && $H image render $reg/husk/busybox $w/bundle/rootfs
(cd $w/bundle && crun spec && python3 - <<'PY'
import json
s = json.load(open("config.json"))
s["process"]["terminal"] = False
s["process"]["args"] = ["/bin/true"]
s["linux"]["namespaces"] = [n for n in s["linux"]["namespaces"] if n["type"] != "user"]
json.dump(s, open("config.json", "w"))
PY
)
# Single pods alternate run by run (scripts/alternate.py): on this shared machine a noisy
# stretch then hits every command alike.
alt() { local name=$1; shift; settle; scripts/alternate.py --runs "$runs" --json "$json/$name.json" "$@"; }
alt run \
  "husk run --net=none::$H run -q --net=none $reg/husk/busybox -- /bin/true" \
  "crun run::crun run --bundle $w/bundle c-bench" \
  "runc run::runc run --bundle $w/bundle r-bench" \
  "podman run --rm --net=none::$P run --rm --net=none $PR $reg/husk/busybox true"
$H gc --grace-period=0s >/dev/null 2>&1

echo "== run busybox true after 300 ms idle (the first cgroup migration's grace period is due)" >&2
alt cold --setup "husk run --net=none, cold::sleep 0.3" --setup "crun run, cold::sleep 0.3" \
  "husk run --net=none, cold::$H run -q --net=none $reg/husk/busybox -- /bin/true" \
  "crun run, cold::crun run --bundle $w/bundle c-bench"
$H gc --grace-period=0s >/dev/null 2>&1

echo "== run-prepared (the pod prepared beforehand, untimed)" >&2
alt prepared --setup "husk run-prepared::$H prepare -q --net=none $reg/husk/busybox -- /bin/true" \
  "husk run-prepared::$H run-prepared {}" \
  "crun run::crun run --bundle $w/bundle c-bench"
$H gc --grace-period=0s >/dev/null 2>&1

echo "== run busybox true on the default network" >&2
alt net \
  "husk run (default CNI network)::$H run -q $reg/husk/busybox -- /bin/true" \
  "husk run --net=none::$H run -q --net=none $reg/husk/busybox -- /bin/true" \
  "podman run --rm (default bridge)::$P run --rm $PR $reg/husk/busybox true"
$H gc --grace-period=0s >/dev/null 2>&1

echo "== 50 runs, sequential and 8 in parallel" >&2
hf batch \
  -n "husk 50 sequential" "bash -c 'for i in \$(seq 50); do $H run -q --net=none $reg/husk/busybox -- /bin/true; done'" \
  -n "crun 50 sequential" "bash -c 'for i in \$(seq 50); do crun run --bundle $w/bundle c\$i; done'" \
  -n "husk 50, 8 parallel" "bash -c 'seq 50 | xargs -P8 -I{} $H run -q --net=none $reg/husk/busybox -- /bin/true'" \
  -n "crun 50, 8 parallel" "bash -c 'seq 50 | xargs -P8 -I{} crun run --bundle $w/bundle c{}'"
$H gc --grace-period=0s >/dev/null 2>&1

echo "== memory of a detached pod's supervisor" >&2
u=$($H run -q -d $reg/husk/busybox -- sleep 60)
# The supervisor and the pod init give back their start-up memory once they have run 100 ms
# (a pod that ends sooner never pays for it): measure them after that.
sleep 0.5
sup=$($H status "$u" --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)["supervisor_pid"])')
init=$($H status "$u" --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
rss() { awk '/^VmRSS/ {print $2}' /proc/$1/status; }
pss() { awk '/^Pss:/ {s+=$2} END {print s}' /proc/$1/smaps_rollup; }
mem="supervisor RSS $(rss $sup) KiB (PSS $(pss $sup) KiB); pod init RSS $(rss $init) KiB (PSS $(pss $init) KiB)"
$H stop "$u" >/dev/null; $H gc --grace-period=0s >/dev/null 2>&1

python3 - "$json" "$mem" "$runs" <<'PY' | tee ${out:-/dev/null}
import json, os, sys, platform, subprocess
d, mem, runs = sys.argv[1], sys.argv[2], sys.argv[3]
def load(n): return json.load(open(os.path.join(d, n + ".json")))["results"]
print(f"Measured by scripts/bench.sh on {platform.node()} ({os.cpu_count()} cores, kernel {platform.release()}), {runs} runs each, medians.\n")
for name, title in [("fetch-busybox", "Fetch busybox (1 MiB) from a loopback registry"), ("fetch-big", "Fetch the 50 MB, 4-layer test image"), ("run", "Run `true` in busybox"), ("cold", "Run `true` in busybox after 300 ms idle"), ("prepared", "Run a prepared pod"), ("net", "Run `true` with networking"), ("batch", "50 pods")]:
    res = load(name)
    base = res[0]["median"]
    print(f"### {title}\n\n| command | median | ratio to the first |\n|---|---|---|")
    for r in res:
        print(f"| {r['command']} | {r['median']*1000:.1f} ms | {r['median']/base:.2f}x |")
    print()
m = lambda name, i: load(name)[i]["median"]
goals = [
    ("husk run --net=none / crun run", m("run", 0) / m("run", 1), "<= 0.9"),
    ("podman run --rm --net=none / husk run --net=none", m("run", 3) / m("run", 0), ">= 20"),
    ("husk run --net=none / crun run, each after 300 ms idle", m("cold", 0) / m("cold", 1), ""),
    ("husk run-prepared / crun run", m("prepared", 0) / m("prepared", 1), "<= 0.7"),
    ("husk run (default network) / husk run --net=none", m("net", 0) / m("net", 1), "<= 2"),
    ("husk 50 sequential / crun 50 sequential", m("batch", 0) / m("batch", 1), ""),
    ("husk 50, 8 parallel / crun 50, 8 parallel", m("batch", 2) / m("batch", 3), "<= 1.0"),
]
print("### Targets (issue 14)\n\n| ratio | measured | goal |\n|---|---|---|")
for what, v, goal in goals:
    ok = "" if not goal else (" (met)" if eval(f"{v:.4f} {goal}") else " (**not met**)")
    print(f"| {what} | {v:.2f}x | {goal}{ok} |")
print()
print(f"### Footprint\n\n{mem}\n")
PY
