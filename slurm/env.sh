# shellcheck shell=bash
# Sourced by every slurm/*.sbatch script: the environment of all components, in one place.
# Holds environment and container setup only; placement is pipeline/launch.py's job.

# The repository: sbatch copies the script to a spool dir, so use the submit dir.
ECHO_ROOT=${ECHO_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
export ECHO_ROOT
cd "$ECHO_ROOT" || exit 1

# Python: the project's venv (make setup) unless ECHO_PYTHON names another interpreter.
ECHO_PYTHON=${ECHO_PYTHON:-$ECHO_ROOT/.venv/bin/python}
if [ ! -x "$ECHO_PYTHON" ]; then
    echo "env.sh: no interpreter at $ECHO_PYTHON (run 'make setup' or set ECHO_PYTHON)" >&2
    exit 1
fi
export ECHO_PYTHON
export PYTHONUNBUFFERED=1
export PYTHONPATH="$ECHO_ROOT${PYTHONPATH:+:$PYTHONPATH}"

# Caches on the shared filesystem, so every node reuses one download.
export HF_HOME=${HF_HOME:-$ECHO_ROOT/.cache/huggingface}
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton-$(id -un)}

# NCCL / torch.distributed: fail loudly instead of hanging.
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
# Which network the collectives use. The learner's NCCL groups pick an interface themselves;
# set NCCL_SOCKET_IFNAME (e.g. ib0, or ^lo,docker) and NCCL_IB_HCA where a node has several.
# engine.weight_transport=dist (weights from learner rank 0 to every vLLM server) is a gloo
# group over TCP: GLOO_SOCKET_IFNAME picks its interface on every side (learner and servers;
# it must reach the learner's first node, whose name launch.py passes as
# engine.weight_transfer_address). engine.weight_transfer_timeout_s bounds each transfer.
[ -n "${ECHO_NET_IFNAME:-}" ] && export NCCL_SOCKET_IFNAME=$ECHO_NET_IFNAME GLOO_SOCKET_IFNAME=$ECHO_NET_IFNAME
export CUDA_DEVICE_MAX_CONNECTIONS=1  # Megatron's TP/sequence-parallel overlap needs it

# vLLM on the rollout nodes: dev mode exposes /collective_rpc (weight reloads).
export VLLM_SERVER_DEV_MODE=1
# vLLM's CPU build (the CI job) reserves this much RAM (GiB) for its KV cache.
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-2}

# MLflow: the recipe's tracking.tracking_uri, else sqlite in the run dir. Point
# MLFLOW_TRACKING_URI at a server to collect every job in one place.

# Sandboxes. The recipes use sandbox.backend=docker: the Docker Engine API of the node
# running learner rank 0 (DOCKER_HOST, default unix socket). On clusters without Docker:
#   - Podman:    podman system service --time=0 unix:///run/user/$UID/podman.sock &
#                export DOCKER_HOST=unix:///run/user/$UID/podman.sock   (same docker SDK code)
#   - bubblewrap: sandbox.backend=bwrap (no daemon; needs unprivileged user namespaces)
#   - Apptainer/enroot: build the task image into a rootfs (tools/build_rootfs.sh or
#     `apptainer build --sandbox rootfs/ docker-archive://task.tar`) and run it with
#     sandbox.backend=bwrap sandbox.rootfs=rootfs/ — bwrap gives the same limits.
# To run sandboxes on a rollout node instead: export DOCKER_HOST=ssh://ROLLOUT_NODE.
if [ -z "${DOCKER_HOST:-}" ] && [ -S /var/run/docker.sock ]; then
    export DOCKER_HOST=unix:///var/run/docker.sock  # else the backend's default: Podman's socket
fi
