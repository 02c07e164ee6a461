"""Bounded-staleness rollouts (``rollout.max_staleness``): the producer's schedule, its
failure and resume paths, the trainer-side staleness filter and bounded disk. The whole
asynchronous run (learner + vLLM server, kill -9, resume) is tested under Slurm in
``tests/test_slurm.py``.

The engine here is a real ``Engine`` whose generation is left out (the producer never
generates: ``make_batch`` does); its weights go through the base class's ``stage_weights``
/ ``apply_staged`` and ``apply_buckets`` (order and checksum checked)."""

import threading
import time

import pytest
import torch

from pipeline.engines.base import Engine, apply_buckets
from pipeline.learner.checkpoint import prune
from pipeline.rollout.producer import BatchProducer, staleness
from pipeline.trajectory import Trajectory
from pipeline.weights.buckets import StreamChecksum, WeightBucket


class VersionedEngine(Engine):
    def __init__(self):
        self.weights = None

    def submit(self, prompt_ids, params):  # the producer never generates itself
        raise NotImplementedError

    def update_weights(self, buckets):
        self.policy_version = apply_buckets(buckets, lambda items: setattr(self, "weights", dict(items)))
        return self.policy_version


def stream(version: int):
    """A one-bucket weight stream, like the learner's; the tensor is a view that the
    'learner' changes right after (staging must copy)."""
    live = torch.full((4,), float(version))
    d = StreamChecksum()
    d.update("w", live)
    yield WeightBucket(version, 0, [("w", live)], last=True, checksum=d.hexdigest())
    live.fill_(-1.0)


def traj(version: int, infra: bool = False) -> Trajectory:
    return Trajectory("t", "g", [1, 2], [0, 1], [0, 0], [float("nan"), -0.5], policy_version=version,
                      infra_error=infra)  # fmt: skip


def learner_loop(engine, producer, steps, train_s=0.15):
    """What main.train does with a producer: get, 'train', stage and publish."""
    got = []
    for step in range(steps):
        trajs, info = producer.get(step)
        got.append((step, info["version"], staleness(step, trajs), info))
        time.sleep(train_s)
        producer.publish(step + 1, engine.stage_weights(stream(step + 1)))
    return got


def make_batches(engine, log, rollout_s=0.05, fail_at=None):
    def make(t):
        log.append((t, engine.policy_version, time.perf_counter()))
        if t == fail_at:
            raise OSError("sandbox host went away")
        time.sleep(rollout_s)
        return [traj(engine.policy_version) for _ in range(3)]

    return make


def test_one_step_ahead_overlaps_and_never_exceeds_the_bound():
    engine, log = VersionedEngine(), []
    p = BatchProducer(engine, make_batches(engine, log), start=0, stop=5, max_staleness=1, version=0)
    got = learner_loop(engine, p, 5)
    p.close()
    # batch t sampled by version t-1 (batch 0 by the initial weights): the rollout of t+1
    # ran while the learner trained step t
    assert [v for _, v, _, _ in got] == [0, 0, 1, 2, 3]
    assert all(max(ages) <= 1 for _, _, ages, _ in got)
    assert [ages for _, _, ages, _ in got][1:] == [[1, 1, 1]] * 4
    # the engine held the staged copy, not the learner's later in-place change
    assert engine.weights["w"].tolist() == [3.0] * 4
    # the engine waited for weights (the learner is slower than the rollouts here)
    assert all(info["engine_wait_s"] > 0.05 for _, _, _, info in got[2:])


def test_k_two_runs_two_batches_ahead_and_waits_for_version_t_minus_2():
    engine, log = VersionedEngine(), []
    p = BatchProducer(engine, make_batches(engine, log, rollout_s=0.01), start=0, stop=4, max_staleness=2, version=0)
    trajs, _ = p.get(0)
    time.sleep(0.3)  # the learner "trains" step 0 and publishes nothing yet
    assert [t for t, _, _ in log] == [0, 1, 2]  # batch 3 needs version 1
    p.publish(1, engine.stage_weights(stream(1)))
    for step in (1, 2, 3):
        trajs, info = p.get(step)
        assert max(staleness(step, trajs)) <= 2
        if step < 3:
            p.publish(step + 1, engine.stage_weights(stream(step + 1)))
    # batches 0-2 by the initial weights; batch 3 waited, then took the newest published
    assert [v for _, v, _ in log][:3] == [0, 0, 0] and log[3][1] >= 1
    p.close()


def test_a_failing_batch_is_raised_by_the_get_that_waits_for_it():
    engine, log = VersionedEngine(), []
    p = BatchProducer(engine, make_batches(engine, log, fail_at=1), start=0, stop=3, max_staleness=1, version=0)
    p.get(0)
    with pytest.raises(RuntimeError, match="producer failed before batch 1: OSError: sandbox host went away"):
        p.get(1)
    p.close()


def test_saved_batches_are_reused_when_fresh_enough_and_redone_when_not():
    engine, log = VersionedEngine(), []
    engine.update_weights(stream(5))
    saved = {5: [traj(4), traj(4)], 6: [traj(3)]}  # step 6's batch is 3 versions old
    p = BatchProducer(engine, make_batches(engine, log), start=5, stop=7, max_staleness=1, version=5,
                      saved=saved.get)  # fmt: skip
    trajs, info = p.get(5)
    assert info["reused"] == 1 and info["version"] == 4 and [t.policy_version for t in trajs] == [4, 4]
    trajs, info = p.get(6)  # rolled out again (same step, so the same tasks and seed) by version 5
    assert info["reused"] == 0 and info["dropped_stale"] == 1 and staleness(6, trajs) == [1, 1, 1]
    assert [t for t, _, _ in log] == [6]  # batch 5 was not rolled out again
    p.close()


def test_paused_serves_the_newest_version_and_runs_no_batch():
    engine, log = VersionedEngine(), []
    running = threading.Event()

    def make(t):
        running.set()
        time.sleep(0.1)
        running.clear()
        return [traj(engine.policy_version)]

    p = BatchProducer(engine, make, start=0, stop=3, max_staleness=1, version=0)
    p.get(0)
    p.publish(1, engine.stage_weights(stream(1)))
    with p.paused():
        assert engine.policy_version == 1 and not running.is_set()  # evaluation measures version 1
        time.sleep(0.15)
        assert not running.is_set()
    p.close()


def test_staleness_ignores_infra_failures_and_the_producer_refuses_k_0():
    assert staleness(7, [traj(6), traj(0, infra=True), traj(7)]) == [1, 0]
    with pytest.raises(ValueError, match="max_staleness must be ≥ 1"):
        BatchProducer(VersionedEngine(), lambda t: [], start=0, stop=1, max_staleness=0, version=0)


def test_checkpoints_kept_over_six_steps_are_the_newest_and_every_kth(tmp_path):
    """learner.keep_checkpoints=2, learner.keep_every=4 over six saves: the run directory
    holds step 4 and the newest two, never more than 3 (+ the one `latest` names)."""
    root = tmp_path / "ckpt"
    root.mkdir()
    for step in range(1, 7):
        (root / f"step_{step:06d}").mkdir()
        (root / "latest").write_text(f"step_{step:06d}")
        prune(root, keep=2, keep_every=4)
        assert len(list(root.glob("step_*"))) <= 3
    assert sorted(p.name for p in root.glob("step_*")) == ["step_000004", "step_000005", "step_000006"]
    # keep_every off: the newest two; keep 0: all
    prune(root, keep=2)
    assert sorted(p.name for p in root.glob("step_*")) == ["step_000005", "step_000006"]
    (root / "step_000001").mkdir()
    assert prune(root, keep=0) == [] and len(list(root.glob("step_*"))) == 3
