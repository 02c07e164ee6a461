#!/usr/bin/env bash
# One more sandbox host on this machine: a Podman Docker-API service with its own storage,
# run dir, network config and socket, holding the task base images (copied from the
# default store that tools/podman_setup.sh fills). Tests and benchmarks of the sandbox
# fleet (sandbox.hosts) use two or more of them; on a cluster each rollout node runs one
# (python -m pipeline.launch starts it there). Idempotent; prints the socket URL.
#
#   bash tools/podman_host.sh NAME               # start (or find) host NAME, in the background
#   bash tools/podman_host.sh NAME --foreground  # the same, the service in the foreground (a Slurm step)
#   bash tools/podman_host.sh NAME --stop        # stop its API service (its containers keep running)
set -euo pipefail
name=${1:?usage: podman_host.sh NAME [--stop]}
case "$name" in *[!A-Za-z0-9_.-]*) echo "podman_host.sh: NAME must be [A-Za-z0-9_.-]+" >&2; exit 2 ;; esac
state=${ECHO_RL_HOSTS_DIR:-/var/lib/echo-rl-hosts}/$name
run=/run/echo-rl-hosts/$name
sock=/run/echo-rl-hosts/$name.sock
pm=(podman --root "$state/storage" --runroot "$run" --network-config-dir "$state/networks" --tmpdir "$run/tmp"
    --volumepath "$state/volumes")
pid_of() { pgrep -f "podman --root $state/storage .* system service --time=0 unix://$sock\$" || true; }

if [ "${2:-}" = "--stop" ]; then
    pids=$(pid_of)
    # shellcheck disable=SC2086 # one pid per word
    [ -n "$pids" ] && kill $pids
    for _ in $(seq 50); do [ -z "$(pid_of)" ] && break; sleep 0.1; done
    exit 0
fi
command -v podman >/dev/null || { echo "podman_host.sh: podman is missing (run tools/podman_setup.sh)" >&2; exit 1; }
mkdir -p "$state/storage" "$state/networks" "$state/volumes" "$run/tmp"
# the images tasks start from: the base and the stand-ins under their public names
base=$(podman image inspect --format '{{.Id}}' echo-rl-base:latest)
if ! "${pm[@]}" image exists "$base"; then
    podman save echo-rl-base:latest 2>/dev/null | "${pm[@]}" load -q >/dev/null
fi
"${pm[@]}" tag "$base" echo-rl-base:latest
py=$(podman image inspect --format '{{.Id}}' python:3.12-slim 2>/dev/null || true)
if [ -n "$py" ] && ! "${pm[@]}" image exists "$py"; then
    podman save python:3.12-slim 2>/dev/null | "${pm[@]}" load -q >/dev/null
fi
for alias in debian:bookworm-slim debian:bookworm debian:12 debian:12-slim ubuntu:22.04 ubuntu:24.04; do
    "${pm[@]}" tag "$base" "$alias"
done
if [ -n "$py" ]; then
    for alias in python:3.10-slim python:3.11-slim python:3.12-slim python:3.13-slim python:3.11 python:3.12 python:3.13; do
        "${pm[@]}" tag "$py" "$alias"
    done
fi
if [ "${2:-}" = "--foreground" ]; then
    [ -z "$(pid_of)" ] || { echo "podman_host.sh: host $name already runs" >&2; exit 1; }
    rm -f "$sock"
    echo "podman_host.sh: serving unix://$sock"
    cd / && exec "${pm[@]}" system service --time=0 "unix://$sock"
fi
if ! curl -s --unix-socket "$sock" http://d/_ping >/dev/null 2>&1; then
    rm -f "$sock"
    (cd / && nohup "${pm[@]}" system service --time=0 "unix://$sock" > "$state/service.log" 2>&1 < /dev/null &) > /dev/null 2>&1
    for _ in $(seq 100); do curl -s --unix-socket "$sock" http://d/_ping >/dev/null 2>&1 && break; sleep 0.1; done
    curl -s --unix-socket "$sock" http://d/_ping >/dev/null || { echo "podman_host.sh: $sock does not answer; see $state/service.log" >&2; exit 1; }
fi
echo "unix://$sock"
