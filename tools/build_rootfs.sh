#!/usr/bin/env bash
# The bwrap sandboxes' root filesystem: a thin wrapper. The recipe ships with the package
# (pipeline/sandbox/build_rootfs.sh) so an installed wheel can build it too.
exec bash "$(dirname "$0")/../pipeline/sandbox/build_rootfs.sh" "$@"
