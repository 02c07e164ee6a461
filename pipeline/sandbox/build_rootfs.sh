#!/usr/bin/env bash
# Build the task base root filesystem from Debian packages (no registry needed):
#   bash tools/build_rootfs.sh [OUT_DIR]
# Prints the rootfs path. Cached: rebuilt only when the recipe below changes (its hash
# names the directory). bwrap uses it as /; the docker backend imports it as an image.
set -euo pipefail
SUITE=bookworm
# python3-pytest, python3-pip: the offline stand-in for the test tools verifiers install at run time
PACKAGES=python3,python3-pytest,python3-pip,git,procps,jq,xz-utils,bzip2,zip,unzip,bc,file,less,sqlite3,ca-certificates
MIRROR=${ECHO_RL_DEBIAN_MIRROR:-$( (grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null || true; \
        grep -h '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print "URIs: "$2}' || true) \
        | awk '/debian\/?$/{print $2; exit}')}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
recipe="$SUITE|$PACKAGES|minbase|v2"
hash=$(printf '%s' "$recipe" | sha256sum | cut -c1-12)
# root's default cache is world-traversable: an unprivileged sandbox user must reach it
default_cache=$([ "$(id -u)" = 0 ] && echo /var/cache/echo-rl || echo "$HOME/.cache/echo-rl")
root=${1:-${ECHO_RL_CACHE:-$default_cache}/rootfs-$hash}
if [ -f "$root/.echo-rl-complete" ]; then echo "$root"; exit 0; fi
command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install debootstrap" >&2; exit 1; }
tmp="$root.tmp.$$"
rm -rf "$tmp"
mkdir -p "$(dirname "$root")"
trap 'rm -rf "$tmp"' EXIT
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$tmp" "$MIRROR" >&2
mkdir -p "$tmp/app" "$tmp/logs/verifier" "$tmp/logs/agent" "$tmp/tests" "$tmp/solution"
echo "$recipe" > "$tmp/.echo-rl-complete"
rm -rf "$root"
mv "$tmp" "$root"
trap - EXIT
echo "$root"
