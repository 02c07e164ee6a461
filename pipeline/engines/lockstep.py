"""Lockstep batching: one batch per round of every live episode's request, in a fixed order.

Where it sits: a local ``BatchingEngine`` (the HF engine) ← **Lockstep** ← the rollout loop's
episode threads (the microcosm's ``World.rollouts``). The engine's own worker batches whatever
requests are waiting, so which requests share a batch depends on thread timing, and the
batched forward's padded layout, with it the rounding of its sums, depends on the batch: the
same tokens come out with log-probs that differ in the last bits, which the learner's
importance ratio carries into the weights (``tools/microcosm_rerun_spread.py``). Here a batch
runs when every live episode has asked (or ended), sorted by request seed: the same episodes
give the same batches, and a rerun with the same seed is bit-identical. Only for episodes
whose steps take no time (the maze): a slow sandbox would hold every other episode's turn.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future

from pipeline.engines.base import BatchingEngine, Engine


class Lockstep(Engine):
    """``episodes``: how many episodes will use it; each calls ``done()`` when it ends (all
    must have started: the rollout loop runs at most ``max_concurrent_episodes`` at once)."""

    def __init__(self, engine: BatchingEngine, episodes: int):
        self.engine, self.live = engine, episodes
        self.pending: list[tuple[list[int], object, Future]] = []
        self._cv = threading.Lock()

    @property
    def policy_version(self) -> int:  # type: ignore[override]
        return self.engine.policy_version

    def submit(self, prompt_ids, params) -> Future:
        fut: Future = Future()
        with self._cv:
            self.pending.append((list(prompt_ids), params, fut))
            batch = self._ready()
        self._run(batch)
        return fut

    def done(self) -> None:
        with self._cv:
            self.live -= 1
            batch = self._ready()
        self._run(batch)

    def _ready(self) -> list:
        if not self.pending or len(self.pending) < self.live:
            return []
        batch, self.pending = self.pending, []
        return sorted(batch, key=lambda r: (r[1].seed is None, r[1].seed or 0, r[0]))

    def _run(self, batch: list) -> None:
        if batch:
            self.engine.run_batch(batch)

    def update_weights(self, buckets) -> int:
        raise TypeError("Lockstep batches one rollout's requests; update the engine it wraps")
