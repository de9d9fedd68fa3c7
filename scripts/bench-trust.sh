#!/usr/bin/env bash
# What signature verification costs a fetch: the 50 MB, 4-layer test image fetched from the
# loopback registry into a fresh store, unverified (--insecure-options=image), verified with a
# GPG signature (skopeo --sign-by, file:// lookaside) and with a cosign P-256 signature (the
# registry's sha256-HEX.sig tag), side by side in one session, interleaved; medians and ratios.
#   scripts/bench-trust.sh [--runs N]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=15
while [ $# -gt 0 ]; do case "$1" in --runs) runs=$2; shift 2;; *) echo "unknown option $1" >&2; exit 2;; esac; done
. scripts/bench-common.sh
bench_prepare hyperfine skopeo gpg openssl curl
reg=127.0.0.1:5000
w=$(mktemp -d /var/tmp/husk-bench-trust.XXXXXX)
trap '[ -n "${KEEP:-}" ] || { GNUPGHOME=$w/gnupg gpgconf --kill all 2>/dev/null; rm -rf "$w"; }' EXIT
copy() { skopeo copy -q --src-tls-verify=false --dest-tls-verify=false "$@"; }

# GPG: a throwaway key, the image signed into a lookaside store, trusted for its prefix.
export GNUPGHOME=$w/gnupg; mkdir -m 700 "$GNUPGHOME"
gpg --batch --passphrase '' --quick-gen-key "bench <bench@husk.invalid>" ed25519 sign never 2>/dev/null
fpr=$(gpg --list-keys --with-colons | awk -F: '/^fpr/ {print $10; exit}')
mkdir -p "$w/regd" "$w/etc"
printf 'docker:\n  %s:\n    lookaside: file://%s/sigstore\n' "$reg" "$w" > "$w/regd/bench.yaml"
copy --registries.d "$w/regd" --sign-by "$fpr" "docker://$reg/husk/big" "docker://$reg/bench-gpg/big"
gpg --export --armor > "$w/gpg.asc"

# Cosign: a P-256 key, the payload signed with openssl and pushed under the .sig tag.
copy "docker://$reg/husk/big" "docker://$reg/bench-cosign/big"
digest=sha256:$(skopeo inspect --raw --tls-verify=false "docker://$reg/bench-cosign/big" | sha256sum | cut -d' ' -f1)
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$w/cosign.key"
openssl pkey -pubout -in "$w/cosign.key" -out "$w/cosign.pub"
printf '{"critical":{"identity":{"docker-reference":"%s/bench-cosign/big:latest"},"image":{"docker-manifest-digest":"%s"},"type":"cosign container image signature"},"optional":null}' \
  "$reg" "$digest" > "$w/payload"
sig=$(openssl dgst -sha256 -sign "$w/cosign.key" "$w/payload" | base64 -w0)
push_blob() { # FILE -> digest
  local d loc; d=sha256:$(sha256sum "$1" | cut -d' ' -f1)
  loc=$(curl -sS -X POST -D - -o /dev/null "http://$reg/v2/bench-cosign/big/blobs/uploads/" | tr -d '\r' | awk 'tolower($1)=="location:" {print $2}')
  case $loc in /*) loc=http://$reg$loc;; esac
  case $loc in *\?*) loc="$loc&digest=$d";; *) loc="$loc?digest=$d";; esac
  curl -sS -f -X PUT -H 'Content-Type: application/octet-stream' --data-binary "@$1" "$loc" >/dev/null
  echo "$d"
}
pd=$(push_blob "$w/payload")
printf '{"architecture":"","os":"","config":{},"rootfs":{"type":"layers","diff_ids":["%s"]}}' "$pd" > "$w/config"
cd_=$(push_blob "$w/config")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","size":%d,"digest":"%s"},"layers":[{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json","size":%d,"digest":"%s","annotations":{"dev.cosignproject.cosign/signature":"%s"}}]}' \
  "$(stat -c %s "$w/config")" "$cd_" "$(stat -c %s "$w/payload")" "$pd" "$sig" > "$w/sigmanifest"
curl -sS -f -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' --data-binary "@$w/sigmanifest" \
  "http://$reg/v2/bench-cosign/big/manifests/sha256-${digest#sha256:}.sig" >/dev/null

printf '[registries."%s"]\ninsecure = ["http"]\n[trust]\npolicy = "%s/none.json"\nregistries_d = "%s/regd"\n' "$reg" "$w" "$w" > "$w/etc/husk.toml"
# The store is on tmpfs: the disk's writeback varies by tens of percent between runs here and
# would drown what is measured (the fsyncs stay in the code; on tmpfs they cost nothing).
data=$(mktemp -d /dev/shm/husk-bench-trust.XXXXXX)
trap '[ -n "${KEEP:-}" ] || { GNUPGHOME=$w/gnupg gpgconf --kill all 2>/dev/null; rm -rf "$w" "$data"; }' EXIT
H="$HUSK_BIN --dir $data --config-dir $w/etc"
$H trust add --yes --prefix "$reg/bench-gpg" "$w/gpg.asc" >/dev/null 2>&1
$H trust add --yes --prefix "$reg/bench-cosign" "$w/cosign.pub" >/dev/null 2>&1
# Each variant must really verify: a failed check would be a fast, wrong measurement.
for v in bench-gpg bench-cosign; do
  $H fetch -q "$reg/$v/big" >/dev/null
  listed=$($H image list --format json)
  grep -q '"fingerprint"' <<<"$listed" || { echo "$v was not verified" >&2; exit 1; }
  rm -rf "$data"
done

# Interleaved (each round runs every variant once, in a random order), each run from an empty
# store after a sync: on this machine a fetch slows the runs just after it, so hyperfine's
# one-command-at-a-time order would favour whichever variant runs first.
sync; sleep 3
python3 - "$runs" "$data" \
  "husk fetch big, unverified (--insecure-options=image)" "$H --insecure-options=image fetch -q $reg/husk/big" \
  "husk fetch big, GPG-verified" "$H fetch -q $reg/bench-gpg/big" \
  "husk fetch big, cosign-verified" "$H fetch -q $reg/bench-cosign/big" <<'PY'
import random, shlex, shutil, statistics, subprocess, sys, time
runs, data, rest = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
variants = list(zip(rest[0::2], rest[1::2]))
times = {n: [] for n, _ in variants}
for i in range(runs + 2):
    # A fresh order each round: no variant always follows another.
    for name, cmd in random.sample(variants, len(variants)):
        shutil.rmtree(data, ignore_errors=True)
        subprocess.run(["sync"], check=True)
        t = time.perf_counter()
        subprocess.run(shlex.split(cmd), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if i >= 2:  # two warm-up rounds
            times[name].append(time.perf_counter() - t)
base = statistics.median(times[variants[0][0]])
print(f"### Fetch the 50 MB test image, with and without signature verification ({runs} interleaved runs, medians)\n")
print("| command | median | ratio to unverified |\n|---|---|---|")
for name, _ in variants:
    m = statistics.median(times[name])
    print(f"| {name} | {m*1000:.1f} ms | {m/base:.3f}x |")
PY
# The check alone: the image is stored, --pull-policy=update asks for the manifest only, so
# what remains is the manifest request plus (when verified) gathering and checking signatures.
rm -rf "$data"
for v in husk bench-gpg bench-cosign; do $H --insecure-options=image fetch -q "$reg/$v/big" >/dev/null 2>&1; done
echo
hyperfine -N --style none --runs "$((runs * 2))" --warmup 3 --export-json "$w/cached.json" \
  -n "manifest check, unverified" "$H --insecure-options=image fetch -q $reg/bench-cosign/big" \
  -n "manifest check, GPG-verified" "$H fetch -q $reg/bench-gpg/big" \
  -n "manifest check, cosign-verified" "$H fetch -q $reg/bench-cosign/big" >/dev/null 2>&1
python3 - "$w/cached.json" <<'PY'
import json, sys
res = json.load(open(sys.argv[1]))["results"]
base = res[0]["median"]
print("### A stored image, `fetch --pull-policy=update` (manifest only): what the check itself costs\n")
print("| command | median | added |\n|---|---|---|")
for r in res:
    print(f"| {r['command']} | {r['median']*1000:.1f} ms | {(r['median']-base)*1000:+.1f} ms |")
PY
