#!/usr/bin/env bash
# Starts (or reuses) a real OCI registry on loopback: Debian's docker-registry, the reference
# distribution server, serving plain HTTP on 127.0.0.1:${HUSK_TEST_REGISTRY_PORT:-5000}, with its
# storage under build/registry. Then pushes the test images into it with skopeo.
#   scripts/registry.sh start | push IMAGES_DIR | stop
set -euo pipefail
cd "$(dirname "$0")/.."
port=${HUSK_TEST_REGISTRY_PORT:-5000}
addr=127.0.0.1:$port
state=build/registry
case "${1:-start}" in
start)
  if curl -fsS "http://$addr/v2/" >/dev/null 2>&1; then echo "registry already up on $addr"; exit 0; fi
  mkdir -p "$state/data"
  cat > "$state/config.yml" <<CFG
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $(pwd)/$state/data}
  delete: {enabled: true}
http: {addr: $addr}
CFG
  nohup docker-registry serve "$state/config.yml" > "$state/registry.log" 2>&1 &
  echo $! > "$state/pid"
  for _ in $(seq 100); do curl -fsS "http://$addr/v2/" >/dev/null 2>&1 && { echo "registry up on $addr"; exit 0; }; sleep 0.1; done
  echo "registry did not start; see $state/registry.log" >&2; cat "$state/registry.log" >&2; exit 1 ;;
push)
  images=${2:?images dir}
  for name in busybox workload big; do
    skopeo copy -q --dest-tls-verify=false "oci:$images/$name:latest" "docker://$addr/husk/$name:latest"
  done
  echo "pushed test images to $addr/husk/" ;;
stop)
  [ -f "$state/pid" ] && kill "$(cat "$state/pid")" 2>/dev/null || true ;;
esac
