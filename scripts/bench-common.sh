# Sourced by the benchmark scripts: what every one of them needs before it measures.
#   bench_prepare PROGRAM…   root, the programs (Debian packages of the same name, gpg from
#                            gnupg), husk and its stage1 installed by scripts/install.sh into
#                            build/bench-prefix, the test images in the loopback registry;
#                            exports HUSK_STAGE1_DIR and HUSK_BIN (the husk to measure).
#   crun_hybrid_fix          lets crun run on a hybrid cgroup host (hugetlb as v1).
# husk is measured as installed, like the peers: on this kind of host a binary run straight from
# cargo's target dir, as the linker wrote it, started 0.3–0.6 ms slower than a copy of itself, and
# its supervisor was smaller in memory (the file's page cache folios; docs/BENCHMARKS.md).
bench_prepare() {
  [ "$(id -u)" = 0 ] || { echo "$0: run as root" >&2; exit 1; }
  local need="" p
  for p in "$@"; do command -v "$p" >/dev/null || need="$need ${p/#gpg/gnupg}"; done
  [ -z "$need" ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
  PREFIX=$PWD/build/bench-prefix SETUP=0 scripts/install.sh >/dev/null
  export HUSK_STAGE1_DIR=$PWD/build/bench-prefix/bin
  export HUSK_BIN=$HUSK_STAGE1_DIR/husk
  scripts/build-images.sh >/dev/null
  scripts/registry.sh start >/dev/null
  scripts/registry.sh push build/images >/dev/null
}

# crun refuses a hybrid cgroup layout whose v2 tree holds a controller; mount hugetlb as v1
# the way a systemd host does (see shared BENCHMARKING.md).
crun_hybrid_fix() {
  if grep -qw hugetlb /sys/fs/cgroup/unified/cgroup.controllers 2>/dev/null && ! mountpoint -q /sys/fs/cgroup/hugetlb; then
    mkdir -p /sys/fs/cgroup/hugetlb && mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb
  fi
}
