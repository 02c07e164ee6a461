"""Group-relative advantages (GRPO / Dr.GRPO).

Where it sits: Trajectory[] (with rewards) → **advantages** → packing → learner.

For a group of G samples of one task: ``A_i = r_i - mean(r)``, optionally ``÷ (std(r) + eps)``
(GRPO); Dr.GRPO drops the std. ``std`` is the population std (ddof=0), as the
reference implementations compute it. Trajectories with ``infra_error`` are removed
from their group before the statistics and get advantage 0 (they are then dropped at
packing): a dead container is not a failed attempt.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

from pipeline.trajectory import Trajectory


@dataclass
class AdvantageConfig:
    std_normalize: bool = True  # divide by the group's reward std (GRPO); false = Dr.GRPO
    eps: float = 1e-6  # added to the std before dividing

    def check(self) -> list[tuple[str, str]]:
        return [("eps", f"must be > 0, got {self.eps}")] if self.eps <= 0 else []


def group_advantages(
    trajectories: Sequence[Trajectory], cfg: AdvantageConfig
) -> list[float]:
    """One advantage per trajectory, in input order."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, t in enumerate(trajectories):
        if not t.infra_error:
            groups[t.group_id].append(i)
    adv = [0.0] * len(trajectories)
    for members in groups.values():
        rewards = [trajectories[i].reward for i in members]
        mean = sum(rewards) / len(rewards)
        std = (sum((r - mean) ** 2 for r in rewards) / len(rewards)) ** 0.5
        for i, r in zip(members, rewards):
            a = r - mean
            if cfg.std_normalize:
                a = a / (std + cfg.eps)
            adv[i] = a
    return adv
