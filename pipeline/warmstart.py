"""Build the tiny terminal-agent checkpoint the tiny recipe starts from.

    python tools/warmstart.py configs/tiny.yaml [key=value ...]     # writes model.load

A random-init model solves nothing, so RL would have no signal. This imitates the
scripted expert (``pipeline/engines/expert.py``: look, run the reference solution,
finish) on instances of the built-in families — through the real agent loop, chat
template and sandbox, so the data is in exactly the format RL will sample — with the
Megatron learner in ``sft`` mode (CE on ACTION tokens only; the terminal's tokens are
left for ECHO). Instances use seeds disjoint from the training and evaluation tasks.
``echo-rl train`` runs this first when ``model.warmstart_steps > 0`` and ``model.load``
holds no checkpoint yet.
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import replace
from pathlib import Path

SEED_OFFSET = 2_000_000  # warm-start instances never share a seed with train/eval ones
INSTANCES_PER_FAMILY = 24
BATCH = 32  # trajectories per step
LR = 3e-3


def expert_trajectories(cfg, out_dir: Path):
    from pipeline.engines.expert import ExpertEngine
    from pipeline.rollout.rollouter import Rollouter
    from pipeline.tasks.formats import load_task
    from pipeline.tasks.generator import FAMILIES, generate
    from pipeline.trajectory import load_jsonl, save_jsonl

    cache = out_dir / "expert.jsonl"
    if cache.is_file():
        return load_jsonl(cache)
    families = sorted(cfg.tasks.families or FAMILIES)
    tasks = [load_task(d) for d in generate(families, INSTANCES_PER_FAMILY, out_dir / "tasks", seed=SEED_OFFSET + cfg.run.seed)]
    ro = Rollouter.from_config(cfg)
    engine = ExpertEngine(ro.tok, tasks, ro.chat.stop_token_id)
    try:
        trajs = ro.rollouts(tasks, engine=engine, group_size=1, progress=True)
    finally:
        engine.close()
    bad = [t.task_id for t in trajs if t.infra_error or t.reward < 1.0]
    if len(bad) > len(trajs) // 10:
        raise RuntimeError(f"the expert failed {len(bad)} of {len(trajs)} warm-start tasks, e.g. {bad[:3]}")
    trajs = [t for t in trajs if not t.infra_error and t.reward >= 1.0]
    save_jsonl(trajs, cache)
    return trajs


def build_warmstart(cfg) -> Path:
    """Imitation steps on expert trajectories; saves a checkpoint at ``cfg.model.load``."""
    import torch.distributed as dist

    from pipeline.learner.learner import Learner
    from pipeline.learner.parallel import handover
    from pipeline.losses import LossConfig
    from pipeline.trajectory import pack_micro_batches

    target = Path(cfg.model.load)
    work = target.parent / f"{target.name}-data"
    optim = replace(cfg.optim, lr=LR, warmup_steps=0, decay_style="cosine", decay_steps=cfg.model.warmstart_steps,
                    min_lr=LR / 10, grad_clip=1.0)  # fmt: skip
    learner = Learner(replace(cfg.model, load=""), cfg.parallel, optim, cfg.learner, LossConfig(mode="sft", env_coef=0.0),
                      seed=cfg.run.seed)  # fmt: skip
    trajs = handover(expert_trajectories(cfg, work) if dist.get_rank() == 0 else None)
    rng = random.Random(cfg.run.seed)
    t0 = time.perf_counter()
    for step in range(cfg.model.warmstart_steps):
        batch = rng.sample(trajs, min(BATCH, len(trajs)))
        shards = pack_micro_batches(batch, [0.0] * len(batch), cfg.learner.micro_batch_tokens, num_shards=learner.topo.dp)
        m = learner.train_step(shards[learner.topo.dp_rank], step)
        if dist.get_rank() == 0 and (step % 10 == 0 or step + 1 == cfg.model.warmstart_steps):
            print(f"warm start {step + 1}/{cfg.model.warmstart_steps}: action CE {m['action_ce']:.3f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
    learner.save(str(target), step=0)  # the RL run counts its own steps from 0
    return target


def main(argv: list[str]) -> int:
    from pipeline.config import load_config

    if not argv:
        print(__doc__)
        return 2
    cfg = load_config(argv[0], argv[1:])
    if not cfg.model.load or not cfg.model.warmstart_steps:
        print("warmstart: set model.load (where to write) and model.warmstart_steps", file=sys.stderr)
        return 2
    print(f"warm-start checkpoint: {build_warmstart(cfg)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
