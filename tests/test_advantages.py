import pytest

from pipeline.advantages import AdvantageConfig, group_advantages
from pipeline.trajectory import Role, Trajectory


def traj(group, reward, infra=False):
    return Trajectory(task_id="t", group_id=group, token_ids=[1, 2], roles=[Role.PROMPT, Role.ACTION],
                      turn_ids=[0, 0], sampler_logprobs=[float("nan"), -0.1], reward=reward,
                      infra_error=infra)  # fmt: skip


def test_grpo_and_dr_grpo():
    ts = [traj("a", 1.0), traj("a", 0.0), traj("a", 0.0), traj("a", 1.0)]
    # mean 0.5, population std 0.5
    assert group_advantages(ts, AdvantageConfig(std_normalize=False)) == [0.5, -0.5, -0.5, 0.5]
    grpo = group_advantages(ts, AdvantageConfig(std_normalize=True, eps=1e-6))
    assert grpo == pytest.approx([1.0, -1.0, -1.0, 1.0], rel=1e-5)


def test_equal_rewards_give_zeros():
    ts = [traj("a", 1.0)] * 3 + [traj("b", 0.0)] * 3
    assert group_advantages(ts, AdvantageConfig()) == [0.0] * 6


def test_infra_error_dropped_before_statistics_not_scored_zero():
    ts = [traj("a", 1.0), traj("a", 0.0), traj("a", 0.0, infra=True), traj("a", 1.0)]
    adv = group_advantages(ts, AdvantageConfig(std_normalize=False))
    # statistics over the three real ones: mean 2/3; the infra one gets 0 and no vote
    assert adv == pytest.approx([1 / 3, -2 / 3, 0.0, 1 / 3])


def test_groups_are_independent():
    ts = [traj("a", 1.0), traj("a", 0.0), traj("b", 3.0), traj("b", 1.0)]
    assert group_advantages(ts, AdvantageConfig(std_normalize=False)) == [0.5, -0.5, 1.0, -1.0]
