"""Patch: Megatron's model-parallel RNG tracker keeps CPU generator states.

What: installs ``CpuRNGStatesTracker`` (a subclass of Megatron-Core's
``CudaRNGStatesTracker``) as the global tracker returned by ``get_cuda_rng_tracker()``.
``add(name, seed)`` stores the state of a CPU generator seeded with ``seed``; ``fork(name)``
swaps that state into the CPU default generator for the duration of the block and
restores the caller's state afterwards — the CUDA tracker's contract, on the CPU. And
replaces ``_get_all_rng_states`` / ``_set_all_rng_states`` (what activation
recomputation's ``CheckpointFunction`` saves before a checkpointed forward and restores
before recomputing it) with versions that keep the CPU generator and the tracker's
states, without the CUDA generator's.

Why: the stock tracker reads and writes ``torch.cuda`` generator states, which do not
exist without a GPU; every attention/dropout region forks it, and every recomputed
region (``learner.recompute``) saves and restores them.

Versions: checked against megatron-core 0.16.1 (``tensor_parallel.random`` with
``_CUDA_RNG_STATE_TRACKER``, ``_CUDA_RNG_STATE_TRACKER_INITIALIZED``,
``CudaRNGStatesTracker.add/fork``, ``_get_all_rng_states() -> (cpu, cuda, tracker)``,
``_set_all_rng_states(cpu, cuda, tracker)``).

Math: unchanged — it only decides which generator random ops (dropout) draw from.
Applied only when no GPU is present.
"""

from __future__ import annotations

import contextlib

import torch

from megatron_patches.common import PatchTargetMissing, require

_MODULE = "megatron.core.tensor_parallel.random"


def _tracker_class():
    random = require(_MODULE, "CudaRNGStatesTracker")
    base = random.CudaRNGStatesTracker

    class CpuRNGStatesTracker(base):
        """Megatron RNG tracker whose named states are CPU generator states."""

        def add(self, name, seed):
            self._is_initialized = True
            if seed in self.seeds_:
                raise Exception(f"seed {seed} already exists")
            if name in self.states_:
                raise Exception(f"rng state {name} already exists")
            self.seeds_.add(seed)
            self.states_[name] = torch.Generator().manual_seed(seed).get_state()

        @contextlib.contextmanager
        def fork(self, name=random._MODEL_PARALLEL_RNG_TRACKER_NAME):
            if name not in self.states_:
                raise Exception(f"rng state {name} is not added")
            orig = torch.get_rng_state()
            torch.set_rng_state(self.states_[name])
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                torch.set_rng_state(orig)

    return CpuRNGStatesTracker


def apply() -> None:
    random = require(_MODULE, "_CUDA_RNG_STATE_TRACKER")
    for attr in ("_CUDA_RNG_STATE_TRACKER_INITIALIZED", "initialize_rng_tracker"):
        if not hasattr(random, attr):
            raise PatchTargetMissing(f"{_MODULE}.{attr} is missing (Megatron-Core changed)")
    random._CUDA_RNG_STATE_TRACKER = _tracker_class()()
    random._CUDA_RNG_STATE_TRACKER_INITIALIZED = True
    for attr in ("_get_all_rng_states", "_set_all_rng_states"):
        if not hasattr(random, attr):
            raise PatchTargetMissing(f"{_MODULE}.{attr} is missing (Megatron-Core changed)")

    def _get_all_rng_states():
        return torch.get_rng_state(), None, random.get_cuda_rng_tracker().get_states()

    def _set_all_rng_states(cpu_rng_state, cuda_rng_state, cuda_rng_state_tracker):
        torch.set_rng_state(cpu_rng_state)
        random.get_cuda_rng_tracker().set_states(cuda_rng_state_tracker)

    random._get_all_rng_states = _get_all_rng_states
    random._set_all_rng_states = _set_all_rng_states
