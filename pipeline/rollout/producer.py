"""Bounded-staleness rollouts: batches produced by a thread ahead of the learner.

Where it sits: main (``rollout.max_staleness`` = k ≥ 1) → **BatchProducer** →
``make_batch(step)`` (the Rollouter's ``train_batch``, seeded by step) on one side, and
learner → staged weights → **publish** → engine (between batches) on the other.

    producer = BatchProducer(engine, make_batch, start=learner.step, stop=steps, max_staleness=1,
                             version=learner.step, saved=load_saved_batch)
    trajs, info = producer.get(step)          # blocks until batch `step` is ready
    producer.publish(learner.step, staged)    # after the optimizer step (see Engine.stage_weights)
    with producer.paused():                   # evaluation: the engine serves the newest version
        ...

Schedule. Batch ``t`` is sampled by the newest version the learner has published when the
batch starts, and never by one older than ``t - k``: the thread waits for version ``t - k``
first (that wait is ``engine_wait_s``: the engine idle for want of weights). While the
learner trains step ``t`` the thread samples batch ``t + 1``, …, ``t + k``. Weights change
only between batches, so every episode of a batch has one version (an episode never mixes
policies) and ``staleness = step - version ≤ k``. With k = 1 the learner and the engines
overlap fully when rollout and learning take equal time.

Resume. A batch whose trajectories were saved before a kill (``saved(t)``: the step's
trajectory file, written atomically when the batch finished) is trained as it was if its
staleness is still ≤ k, else it is dropped (counted) and rolled out again. A batch in
flight at the kill is rolled out again from scratch with the same tasks and seed.

Failure. An exception in the thread is raised by the ``get`` that waits for that batch;
``close`` stops the thread after the batch it is on (the engine's ``close`` ends in-flight
requests).
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Callable

from pipeline.trajectory import Trajectory


def staleness(step: int, trajs: list[Trajectory]) -> list[int]:
    """``step - policy_version`` of each episode that sampled tokens (infra failures have
    no policy)."""
    return [step - t.policy_version for t in trajs if not t.infra_error]


class BatchProducer:
    def __init__(self, engine, make_batch: Callable[[int], list[Trajectory]], *, start: int, stop: int,
                 max_staleness: int, version: int, saved: Callable[[int], list[Trajectory] | None] | None = None):  # fmt: skip
        if max_staleness < 1:
            raise ValueError(f"max_staleness must be ≥ 1 for a producer, got {max_staleness}")
        self.engine, self.make_batch, self.saved = engine, make_batch, saved
        self.k, self.stop = max_staleness, stop
        self._cond = threading.Condition()
        self._batch_lock = threading.Lock()  # held while a batch runs or the engine's weights change
        self._published = version  # newest version the learner published
        self._staged = None  # (version, staged weights) not yet applied to the engine
        self._ready: dict[int, tuple[list[Trajectory], dict]] = {}
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, args=(start,), name="rollout-producer", daemon=True)
        self._thread.start()

    # -- the learner's side ---------------------------------------------------------------
    def get(self, step: int) -> tuple[list[Trajectory], dict]:
        """Batch ``step`` and its info: ``version``, ``engine_wait_s``, ``rollout_s``,
        ``learner_wait_s`` (how long this call blocked), ``dropped_stale``, ``reused``."""
        t0 = time.perf_counter()
        with self._cond:
            while step not in self._ready:
                if self._error is not None:
                    raise RuntimeError(f"rollout producer failed before batch {step}: "
                                       f"{type(self._error).__name__}: {self._error}") from self._error  # fmt: skip
                if not self._thread.is_alive():
                    raise RuntimeError(f"rollout producer stopped before batch {step}")
                self._cond.wait(timeout=1.0)
            trajs, info = self._ready.pop(step)
        return trajs, {**info, "learner_wait_s": time.perf_counter() - t0}

    def publish(self, version: int, staged) -> None:
        """The learner's new weights (staged by the engine, not yet served); the thread
        applies the newest one before its next batch."""
        with self._cond:
            self._staged = (version, staged)
            self._published = version
            self._cond.notify_all()

    @contextlib.contextmanager
    def paused(self):
        """No batch runs inside; the engine serves the newest published version."""
        with self._batch_lock:
            self._apply_staged()
            yield

    def close(self, timeout_s: float = 5.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=timeout_s)

    # -- the thread -----------------------------------------------------------------------
    def _apply_staged(self) -> None:
        with self._cond:
            staged, self._staged = self._staged, None
        if staged is not None:
            version, weights = staged
            got = self.engine.apply_staged(weights)
            if got != version:
                raise RuntimeError(f"engine reports weights version {got}, the learner published {version}")

    def _run(self, start: int) -> None:
        try:
            for t in range(start, self.stop):
                info = {"dropped_stale": 0, "reused": 0, "engine_wait_s": 0.0}
                old = self.saved(t) if self.saved else None
                if old is not None:
                    if max(staleness(t, old), default=0) <= self.k:
                        self._put(t, old, {**info, "reused": 1, "rollout_s": 0.0,
                                           "version": min((t - s for s in staleness(t, old)), default=t)})  # fmt: skip
                        continue
                    info["dropped_stale"] = len(old)
                t0 = time.perf_counter()
                with self._cond:
                    while self._published < t - self.k and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        return
                info["engine_wait_s"] = time.perf_counter() - t0
                with self._batch_lock:
                    self._apply_staged()
                    version = self.engine.policy_version
                    t1 = time.perf_counter()
                    trajs = self.make_batch(t)
                    info.update(rollout_s=time.perf_counter() - t1, version=version)
                self._put(t, trajs, info)
                if self._closed:
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the learner's get()
            with self._cond:
                self._error = e
                self._cond.notify_all()

    def _put(self, t: int, trajs, info) -> None:
        with self._cond:
            self._ready[t] = (trajs, info)
            self._cond.notify_all()
