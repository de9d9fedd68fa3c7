#!/usr/bin/env bash
# Debian packages husk's build, tests and demo need.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends busybox-static docker-registry skopeo curl python3 ca-certificates gcc \
  containernetworking-plugins iptables iproute2 apache2-utils gnupg openssl \
  systemd passwd util-linux podman conmon containerd >/dev/null
