"""Learner smoke run: ECHO steps on synthetic trajectories, no rollouts.

Where it sits: a stand-in for the rollout stage while exercising the real learner path
(packing → Megatron schedule → fused log-probs → ECHO loss → optimizer → checkpoint).
Also the source of the synthetic trajectories the learner tests and benchmarks use.
"""

from __future__ import annotations

import random

from pipeline.advantages import group_advantages
from pipeline.trajectory import Role, Trajectory, pack_micro_batches


def synthetic_trajectories(
    n: int, *, vocab_size: int, group_size: int = 4, min_len: int = 24, max_len: int = 96, seed: int = 0
) -> list[Trajectory]:
    """Multi-turn shaped episodes: a PROMPT preamble, then turns of ACTION → PROMPT
    scaffolding → OUTPUT (sometimes a WARNING) → PROMPT; random tokens, 0/1 rewards."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = rng.randint(min_len, max_len)
        roles = [Role.PROMPT] * 6
        turn, turns = 0, [0] * 6
        while len(roles) < length:
            for role, k in ((Role.ACTION, rng.randint(2, 8)), (Role.PROMPT, 2),
                            (Role.OUTPUT, rng.randint(3, 12)),
                            (Role.WARNING, rng.choice([0, 0, 3])), (Role.PROMPT, 2)):  # fmt: skip
                roles += [role] * k
                turns += [turn] * k
            turn += 1
        roles, turns = roles[:length], turns[:length]
        out.append(
            Trajectory(
                task_id=f"task{i // group_size}", group_id=f"g{i // group_size}",
                token_ids=[rng.randrange(vocab_size) for _ in roles], roles=[int(r) for r in roles],
                turn_ids=turns,
                sampler_logprobs=[-rng.uniform(0.05, 4.0) if r == Role.ACTION else float("nan") for r in roles],
                reward=float(rng.random() < 0.5),
            )  # fmt: skip
        )
    return out


def run_smoke(cfg) -> int:
    import torch.distributed

    from pipeline.learner.learner import Learner

    learner = Learner(cfg.model, cfg.parallel, cfg.optim, cfg.learner, cfg.loss, seed=cfg.run.seed)
    n = cfg.rollout.tasks_per_step * cfg.rollout.group_size
    for step in range(cfg.run.steps):
        trajs = synthetic_trajectories(
            n, vocab_size=learner.hf["vocab_size"], group_size=cfg.rollout.group_size, seed=step
        )
        adv = group_advantages(trajs, cfg.advantages)
        shards = pack_micro_batches(trajs, adv, cfg.learner.micro_batch_tokens, num_shards=learner.topo.dp)
        m = learner.train_step(shards[learner.topo.dp_rank], step)
        if torch.distributed.get_rank() != 0:
            continue
        print(
            f"step {step}: loss {m['loss']:.4f} pg {m['pg_loss']:.4f} env_ce {m['env_ce']:.4f} "
            f"grad_norm {m['grad_norm']:.4f} tokens/s {m['tokens_per_s']:.0f}",
            flush=True,
        )
    return 0
