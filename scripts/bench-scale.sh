#!/usr/bin/env bash
# Whether the cost of one more pod stays flat (issue 14's targets): `husk run` with 1,000 exited
# pods in the data dir against an empty one (interleaved), `husk list` of 1,000 pods, and one
# `husk gc` of 1,000 exited pods. Medians; run as root.
#   scripts/bench-scale.sh [--pods N] [--runs N]
set -euo pipefail
cd "$(dirname "$0")/.."
pods=1000; runs=30
while [ $# -gt 0 ]; do case "$1" in --pods) pods=$2; shift 2;; --runs) runs=$2; shift 2;; *) echo "unknown option $1" >&2; exit 2;; esac; done
. scripts/bench-common.sh
bench_prepare hyperfine
reg=127.0.0.1:5000
w=$(mktemp -d /var/tmp/husk-bench-scale.XXXXXX)
trap 'rm -rf "$w"' EXIT
full="$HUSK_BIN --dir $w/full --insecure-options=http"
empty="$HUSK_BIN --dir $w/empty --insecure-options=http"
img=$reg/husk/busybox
$full fetch -q "$img" >/dev/null 2>&1
$empty fetch -q "$img" >/dev/null 2>&1
echo "== creating $pods exited pods" >&2
for _ in $(seq "$pods"); do $full run -q --net=none "$img" -- /bin/true; done
sync; sleep 3
python3 - "$runs" "$empty run -q --net=none $img -- /bin/true" "$full run -q --net=none $img -- /bin/true" <<'PY'
import random, shlex, statistics, subprocess, sys, time
runs, empty, full = int(sys.argv[1]), sys.argv[2], sys.argv[3]
t = {"empty": [], "full": []}
for i in range(runs + 3):
    for name, cmd in random.sample([("empty", empty), ("full", full)], 2):
        s = time.perf_counter()
        subprocess.run(shlex.split(cmd), check=True)
        if i >= 3:
            t[name].append(time.perf_counter() - s)
e, f = statistics.median(t["empty"]), statistics.median(t["full"])
print(f"husk run --net=none: empty data dir {e*1000:.1f} ms, with the exited pods {f*1000:.1f} ms ({f/e:.3f}x)")
PY
# The runs above added pods to `full`; list and gc what is there.
n=$($full list -q | wc -l)
hyperfine -N --style none --runs "$runs" --warmup 2 --export-json "$w/list.json" "$full list" >/dev/null 2>&1
python3 -c "import json,sys; r=json.load(open('$w/list.json'))['results'][0]; print(f'husk list of $n pods: {r[\"median\"]*1000:.1f} ms')"
start=$(date +%s.%N)
$full gc --grace-period=0s >/dev/null 2>&1
end=$(date +%s.%N)
python3 -c "print(f'husk gc of $n exited pods: {($end - $start):.2f} s')"
