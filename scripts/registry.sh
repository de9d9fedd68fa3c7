#!/usr/bin/env bash
# Starts (or reuses) real OCI registries on loopback: Debian's docker-registry, the reference
# distribution server, serving plain HTTP on 127.0.0.1:${HUSK_TEST_REGISTRY_PORT:-5000}, and a
# second one on the next port that requires basic authentication (user husk, password s3cret:
# test credentials for a loopback-only registry), with storage under build/registry. Then pushes
# the test images into them with skopeo.
#   scripts/registry.sh start | push IMAGES_DIR | stop
set -euo pipefail
cd "$(dirname "$0")/.."
port=${HUSK_TEST_REGISTRY_PORT:-5000}
addr=127.0.0.1:$port
auth_addr=127.0.0.1:$((port + 1))
state=build/registry
# start_one NAME ADDR [AUTH-YAML]
start_one() {
  local name=$1 a=$2 auth=${3:-}
  if curl -sS -o /dev/null "http://$a/v2/" 2>/dev/null; then echo "registry $name already up on $a"; return 0; fi
  mkdir -p "$state/$name"
  cat > "$state/$name.yml" <<CFG
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $(pwd)/$state/$name}
  delete: {enabled: true}
http: {addr: $a}
$auth
CFG
  nohup docker-registry serve "$state/$name.yml" > "$state/$name.log" 2>&1 &
  echo $! > "$state/$name.pid"
  for _ in $(seq 100); do curl -sS -o /dev/null "http://$a/v2/" 2>/dev/null && { echo "registry $name up on $a"; return 0; }; sleep 0.1; done
  echo "registry $name did not start; see $state/$name.log" >&2; cat "$state/$name.log" >&2; return 1
}
case "${1:-start}" in
start)
  mkdir -p "$state"
  htpasswd -Bbn husk s3cret > "$state/htpasswd"
  start_one open "$addr"
  start_one auth "$auth_addr" "auth: {htpasswd: {realm: husk-test, path: $(pwd)/$state/htpasswd}}" ;;
push)
  images=${2:?images dir}
  for name in busybox workload big; do
    skopeo copy -q --dest-tls-verify=false "oci:$images/$name:latest" "docker://$addr/husk/$name:latest"
  done
  skopeo copy -q --dest-tls-verify=false --dest-creds husk:s3cret "oci:$images/busybox:latest" "docker://$auth_addr/husk/busybox:latest"
  echo "pushed test images to $addr/husk/ and $auth_addr/husk/busybox" ;;
stop)
  for p in "$state"/*.pid; do [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null; done; true ;;
esac
