#!/usr/bin/env bash
# Serve the Docker Engine API with Podman on this machine (no Docker daemon can run here)
# and import the task base image from the debootstrap rootfs (no registry is reachable).
#   bash tools/podman_setup.sh      # idempotent; prints the socket URL
set -euo pipefail
SOCK=/run/podman/podman.sock
if ! command -v podman >/dev/null || ! command -v runc >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc >&2
fi
mkdir -p /etc/containers /run/podman
[ -f /etc/containers/containers.conf ] && grep -q echo-rl /etc/containers/containers.conf || cat > /etc/containers/containers.conf <<'CONF'
# echo-rl: runc, lowered default ulimits (this machine's hard limits are lower than podman's)
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1000:1000"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
# Storage: the kernel's overlay where it mounts here (a container starts in well under a
# second), else vfs (every container start copies the whole image: ~18 s for 440 MB).
driver=vfs
probe=$(mktemp -d)
mkdir -p "$probe"/{l,u,w,m}
if mount -t overlay overlay -o "lowerdir=$probe/l,upperdir=$probe/u,workdir=$probe/w" "$probe/m" 2>/dev/null; then
  umount "$probe/m"; driver=overlay
fi
rm -rf "$probe"
if ! grep -q "driver = \"$driver\"" /etc/containers/storage.conf 2>/dev/null; then
  if [ -f /etc/containers/storage.conf ]; then  # a driver change needs an empty store
    pkill -f "podman system service" 2>/dev/null || true; sleep 0.5
    podman system reset -f >/dev/null 2>&1 || true
  fi
  cat > /etc/containers/storage.conf <<CONF
[storage]
driver = "$driver"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"
CONF
fi
if ! curl -s --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1; then
  # from / : a service started inside a checkout that is later deleted (CI clones) fails
  # every container start with "write child: broken pipe"
  (cd / && nohup podman system service --time=0 "unix://$SOCK" > /tmp/podman-service.log 2>&1 < /dev/null &) > /dev/null 2>&1
  for _ in $(seq 100); do curl -s --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
rootfs=$(bash "$(dirname "$0")/build_rootfs.sh")
# the image is tagged with the rootfs recipe's hash: a changed recipe is imported anew
hash=$(sha256sum < "$rootfs/.echo-rl-complete" | cut -c1-12)
if ! podman image exists "echo-rl-base:$hash"; then
  tar -C "$rootfs" -c . | podman import - "echo-rl-base:$hash" >&2
fi
podman tag "echo-rl-base:$hash" echo-rl-base:latest >/dev/null
# Task Dockerfiles name public bases and nothing can be pulled here: local stand-ins (the
# Debian bookworm rootfs: python3 3.11, pip, pytest) under the common public names, made
# faithful where a task can tell (README "Stand-in images"): the python:* ones have no
# PEP 668 EXTERNALLY-MANAGED marker (the official images have none, so a Dockerfile's
# `pip install` works), a `python` command, and pytest-json-ctrf (TB2's verifiers run
# `pytest --ctrf`, a pinned wheel fetched from PyPI on the host, installed offline);
# Terminal-Bench 1's own bases have its WORKDIR /app. Every stand-in trusts the host's CA
# bundle, so a task build reaches the package registries this machine reaches (pip's PyPI
# through the host's TLS proxy; apt through the image's own sources). A stand-in is not the
# real image (python:3.12-slim gets python 3.11): on a cluster, map names to real images with
# sandbox.image_map.
req="$(dirname "$0")/standin-requirements.txt"
ca=/etc/ssl/certs/ca-certificates.crt
recipe="v2 $(sha256sum < "$req" | cut -c1-8) $( [ -f $ca ] && sha256sum < $ca | cut -c1-8)"
tag=$(echo "$recipe" | sha256sum | cut -c1-8)
base="echo-rl-standin:$hash-$tag"
py="echo-rl-py:$hash-$tag"
tb1="echo-rl-tb1:$hash-$tag"
tb1py="echo-rl-tb1-py:$hash-$tag"
if ! podman image exists "$py" || ! podman image exists "$base" || ! podman image exists "$tb1" || ! podman image exists "$tb1py"; then
  ctx=$(mktemp -d)
  trap 'rm -rf "$ctx"' EXIT
  python3 -m pip download --quiet --no-deps --require-hashes --only-binary=:all: --python-version 3.11 \
    -r "$req" -d "$ctx/wheels" >&2 2>/dev/null \
    || { echo "podman_setup: cannot download the stand-ins' test tools ($req) from PyPI" >&2; exit 1; }
  if [ -f $ca ]; then cp $ca "$ctx/host-ca.crt"; else : > "$ctx/host-ca.crt"; fi
  printf 'FROM echo-rl-base:%s\nCOPY host-ca.crt /tmp/host-ca.crt\nRUN if [ -s /tmp/host-ca.crt ]; then cp /tmp/host-ca.crt /etc/ssl/certs/ca-certificates.crt; fi && rm /tmp/host-ca.crt\n' \
    "$hash" > "$ctx/Dockerfile"
  podman build --quiet --network none -t "$base" "$ctx" >&2
  printf 'FROM %s\nCOPY wheels /tmp/wheels\nRUN pip install --quiet --break-system-packages --no-index --no-deps /tmp/wheels/*.whl && rm -r /tmp/wheels && rm -f /usr/lib/python3*/EXTERNALLY-MANAGED && ln -sf /usr/bin/python3 /usr/local/bin/python\n' \
    "$base" > "$ctx/Dockerfile"
  podman build --quiet --network none -t "$py" "$ctx" >&2
  printf 'FROM %s\nWORKDIR /app\n' "$base" > "$ctx/Dockerfile"
  podman build --quiet --network none -t "$tb1" "$ctx" >&2
  printf 'FROM %s\nWORKDIR /app\n' "$py" > "$ctx/Dockerfile"
  podman build --quiet --network none -t "$tb1py" "$ctx" >&2
fi
for alias in debian:bookworm-slim debian:bookworm debian:12 debian:12-slim ubuntu:22.04 ubuntu:24.04; do
  podman tag "$base" "$alias" >/dev/null
done
for alias in python:3.10-slim python:3.11-slim python:3.12-slim python:3.13-slim python:3.11 python:3.12 python:3.13 \
    python:3.12-slim-bookworm python:3.13-slim-bookworm; do
  podman tag "$py" "$alias" >/dev/null
done
podman tag "$tb1" ghcr.io/laude-institute/t-bench/ubuntu-24-04:latest >/dev/null
for alias in ghcr.io/laude-institute/t-bench/python-3-13:latest ghcr.io/laude-institute/t-bench/python-3-13:20250620; do
  podman tag "$tb1py" "$alias" >/dev/null
done
echo "unix://$SOCK"
