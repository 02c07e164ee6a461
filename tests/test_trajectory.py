import math

import pytest
import torch

from pipeline.learner.smoke import synthetic_trajectories
from pipeline.trajectory import (
    Role, Trajectory, TrajectoryError, load_jsonl, pack_micro_batches, save_jsonl,
)  # fmt: skip

P, A, O, W = (int(r) for r in Role)
NAN = float("nan")


def make(ids, roles, slp=None, **kw):
    slp = slp or [(-0.5 if r == A else NAN) for r in roles]
    return Trajectory(task_id="t", group_id="g", token_ids=ids, roles=roles,
                      turn_ids=[0] * len(ids), sampler_logprobs=slp, **kw)  # fmt: skip


def test_invariants_on_construction():
    with pytest.raises(TrajectoryError, match="roles has 2 entries"):
        Trajectory("t", "g", [1, 2, 3], [P, A], [0, 0, 0], [NAN, -1, NAN])
    with pytest.raises(TrajectoryError, match="ACTION but its sampler log-prob"):
        make([1, 2], [P, A], [NAN, NAN])
    with pytest.raises(TrajectoryError, match="only ACTION tokens are sampled"):
        make([1, 2], [P, O], [NAN, -0.3])
    with pytest.raises(TrajectoryError, match="unknown role"):
        make([1, 2], [P, 7], [NAN, NAN])
    with pytest.raises(TrajectoryError, match="ACTION but"):
        make([1, 2], [P, A], [NAN, 0.5])  # a log-prob > 0 is not a probability


def test_spans_and_counts():
    tr = make([1, 2, 3, 4, 5, 6], [P, A, A, O, W, O])
    assert tr.spans(Role.ACTION) == [(1, 3)]
    assert tr.spans(Role.OUTPUT) == [(3, 4), (5, 6)]
    assert tr.num_tokens(Role.WARNING) == 1


def test_jsonl_round_trip_keeps_everything(tmp_path):
    trajs = synthetic_trajectories(5, vocab_size=100, seed=1)
    trajs[2].infra_error = True
    trajs[3].metadata = {"finish": "max_turns", "num_turns": 3}
    trajs[4].policy_version = 17
    save_jsonl(trajs, tmp_path / "t.jsonl")
    back = load_jsonl(tmp_path / "t.jsonl")
    for a, b in zip(trajs, back):
        assert a.token_ids == b.token_ids and a.roles == b.roles and a.turn_ids == b.turn_ids
        assert [x if not math.isnan(x) else None for x in a.sampler_logprobs] == \
               [x if not math.isnan(x) else None for x in b.sampler_logprobs]  # fmt: skip
        assert (a.reward, a.infra_error, a.metadata, a.policy_version, a.group_id) == \
               (b.reward, b.infra_error, b.metadata, b.policy_version, b.group_id)  # fmt: skip


def test_packing_respects_budget_and_keeps_every_token():
    trajs = synthetic_trajectories(20, vocab_size=100, min_len=10, max_len=120, seed=2)
    trajs[5].infra_error = True
    adv = [float(i) for i in range(20)]
    shards = pack_micro_batches(trajs, adv, 256, num_shards=3, pad_multiple=8)
    assert len({len(s) for s in shards}) == 1  # same number of micro-batches per shard
    seen = {}
    for shard in shards:
        for mb in shard:
            assert mb.num_tokens <= 256 and mb.num_tokens % 8 == 0
            assert mb.cu_seqlens[-1] == mb.num_tokens
            for s in range(mb.num_sequences):
                lo, hi = int(mb.cu_seqlens[s]), int(mb.cu_seqlens[s + 1])
                ids = mb.input_ids[0, lo:hi].tolist() + [mb.target_ids[0, hi - 1].item()]
                key = tuple(ids)
                seen[key] = mb.advantages[s].item()
                assert mb.position_ids[0, lo:hi].tolist() == list(range(hi - lo))
                assert (mb.sequence_ids[0, lo:hi] == s).all()
                assert mb.target_ids[0, lo:hi - 1].tolist() == mb.input_ids[0, lo + 1:hi].tolist()
            pad = mb.sequence_ids[0] == mb.num_sequences
            assert (mb.target_roles[0][pad] == P).all()
    expected = {tuple(t.token_ids): a for t, a in zip(trajs, adv) if not t.infra_error}
    assert seen == expected  # every real trajectory exactly once, with its advantage


def test_packing_aligns_roles_and_logprobs_with_targets():
    tr = make([10, 11, 12, 13], [P, A, O, A], [NAN, -0.1, NAN, -0.2])
    (mb,) = pack_micro_batches([tr], [1.0], 8)[0]
    assert mb.target_ids[0, :3].tolist() == [11, 12, 13]
    assert mb.target_roles[0, :3].tolist() == [A, O, A]
    assert mb.sampler_logprobs[0, 0].item() == pytest.approx(-0.1)
    assert torch.isnan(mb.sampler_logprobs[0, 1])


def test_packing_rejects_oversized_trajectory():
    tr = make(list(range(40)), [P] * 40)
    with pytest.raises(ValueError, match="raise learner.micro_batch_tokens"):
        pack_micro_batches([tr], [0.0], 16)
