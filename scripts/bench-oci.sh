#!/usr/bin/env bash
# Benchmarks husk-oci against crun and runc as OCI runtimes, side by side in one session:
# `run` of the same busybox bundle (/bin/true, no network, every default of `crun spec` on:
# seccomp-less like crun's spec, capabilities, masked paths, cgroups), and podman with
# `--runtime husk-oci` against `--runtime crun`. Medians and ratios (hyperfine).
#   scripts/bench-oci.sh [--runs N] [--out FILE.md]
# Needs root; installs hyperfine, crun, runc and podman from Debian when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=30; out=""
while [ $# -gt 0 ]; do case "$1" in --runs) runs=$2; shift 2;; --out) out=$2; shift 2;; *) echo "unknown option $1" >&2; exit 2;; esac; done
. scripts/bench-common.sh
bench_prepare hyperfine crun runc podman conmon
crun_hybrid_fix
reg=127.0.0.1:5000
w=$(mktemp -d /var/tmp/husk-bench-oci.XXXXXX)
trap 'rm -rf "$w"' EXIT
OCI=$HUSK_STAGE1_DIR/husk-oci
H="$HUSK_BIN --dir $w/husk --insecure-options=http"
mkdir -p $w/bundle && $H fetch -q $reg/husk/busybox >/dev/null && $H image render $reg/husk/busybox $w/bundle/rootfs
(cd $w/bundle && crun spec && python3 - <<'PY'
import json
s = json.load(open("config.json"))
s["process"]["terminal"] = False
s["process"]["args"] = ["/bin/true"]
s["linux"]["namespaces"] = [n for n in s["linux"]["namespaces"] if n["type"] != "user"]
json.dump(s, open("config.json", "w"))
PY
)
cat > $w/containers.conf <<EOF
[containers]
default_ulimits = ["nofile=16384:16384", "nproc=16384:16384"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$w/events.log"
runtime_supports_json = ["crun", "runc", "husk-oci"]
[engine.runtimes]
husk-oci = ["$OCI"]
EOF
export CONTAINERS_CONF=$w/containers.conf
P="podman --root $w/podman/root --runroot $w/podman/run --tmpdir $w/podman/tmp"
$P pull -q oci:$PWD/build/images/busybox:latest >/dev/null
img=$($P images -q | head -1)
json=$w/json; mkdir -p $json
settle() { sync; sleep 3; }
hf() { local name=$1; shift; settle; hyperfine -N --style none --runs "$runs" --warmup 3 --export-json "$json/$name.json" "$@" >/dev/null; }

echo "== run of one bundle: husk-oci, crun, runc" >&2
hf run \
  -n "husk-oci run" "$OCI --root $w/state-husk run --bundle $w/bundle h-bench" \
  -n "crun run" "crun --root $w/state-crun run --bundle $w/bundle c-bench" \
  -n "runc run" "runc --root $w/state-runc run --bundle $w/bundle r-bench"

echo "== podman run --rm --net=none, with husk-oci and with crun" >&2
hf podman \
  -n "podman --runtime husk-oci run --rm" "$P --runtime husk-oci run --rm --net=none $img true" \
  -n "podman --runtime crun run --rm" "$P --runtime crun run --rm --net=none $img true"

python3 - "$json" "$runs" <<'PY' | tee ${out:-/dev/null}
import json, os, sys, platform
d, runs = sys.argv[1], sys.argv[2]
def load(n): return json.load(open(os.path.join(d, n + ".json")))["results"]
print(f"Measured by scripts/bench-oci.sh on {platform.node()} ({os.cpu_count()} cores, kernel {platform.release()}), {runs} runs each, medians.\n")
for name, title in [("run", "`run` of one busybox bundle (`/bin/true`)"), ("podman", "podman run --rm --net=none busybox true")]:
    res = load(name)
    base = res[0]["median"]
    print(f"### {title}\n\n| command | median | ratio to husk-oci |\n|---|---|---|")
    for r in res:
        print(f"| {r['command']} | {r['median']*1000:.1f} ms | {r['median']/base:.2f}x |")
    print()
PY
