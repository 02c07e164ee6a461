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
[ -f /etc/containers/storage.conf ] && grep -q vfs /etc/containers/storage.conf || cat > /etc/containers/storage.conf <<'CONF'
[storage]
driver = "vfs"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"
CONF
if ! curl -s --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1; then
  # from / : a service started inside a checkout that is later deleted (CI clones) fails
  # every container start with "write child: broken pipe"
  (cd / && nohup podman system service --time=0 "unix://$SOCK" > /tmp/podman-service.log 2>&1 &)
  for _ in $(seq 100); do curl -s --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
rootfs=$(bash "$(dirname "$0")/build_rootfs.sh")
recipe=$(cat "$rootfs/.echo-rl-complete")
if [ "$(podman image inspect echo-rl-base:latest --format '{{index .Annotations "echo-rl.recipe"}}' 2>/dev/null || true)" != "$recipe" ] \
   && ! podman image exists echo-rl-base:latest; then
  tar -C "$rootfs" -c . | podman import - echo-rl-base:latest >&2
fi
# task Dockerfiles name public bases; nothing can be pulled, so alias ours to them
for alias in debian:bookworm-slim debian:bookworm ubuntu:24.04 python:3.11-slim; do
  podman tag echo-rl-base:latest "$alias" >/dev/null
done
echo "unix://$SOCK"
