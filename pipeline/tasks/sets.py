"""Which tasks a step trains on, and the held-out evaluation set.

Where it sits: **TaskSampler.for_step(k)** → rollout; **eval_tasks()** → evaluation.

``generated``: fresh instances of the built-in families every step (seeded by run seed
and step, so a resumed run sees the same data order), written as Harbor task dirs under
the run's ``tasks/``. A directory: a Harbor / Terminal-Bench task set, sampled per step
with the same seeding. The evaluation set is disjoint: other seeds, or its own dir.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.tasks.base import Task
from pipeline.tasks.formats import load_task, load_task_set
from pipeline.tasks.generator import FAMILIES, generate

EVAL_SEED_OFFSET = 1_000_000  # generated eval instances never share a seed with training ones


@dataclass
class TaskSetConfig:
    train: str = "generated"  # "generated" (built-in families) or a directory of task dirs
    families: list[str] = field(default_factory=list)  # generated: families to use ([] = all)
    eval: str = "generated"  # held-out set: "generated" (other seeds) or a directory
    eval_per_family: int = 2  # generated eval: instances per family

    def check(self) -> list[tuple[str, str]]:
        errs = []
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown:
            errs.append(("families", f"unknown {unknown}; known: {sorted(FAMILIES)}"))
        for name in ("train", "eval"):
            v = getattr(self, name)
            if v != "generated" and not Path(v).is_dir():
                errs.append((name, f"must be 'generated' or a task directory, got {v!r}"))
        if self.eval_per_family < 1:
            errs.append(("eval_per_family", f"must be ≥ 1, got {self.eval_per_family}"))
        return errs


class TaskSampler:
    def __init__(self, cfg: TaskSetConfig, work_dir: str | Path, seed: int):
        self.cfg, self.work_dir, self.seed = cfg, Path(work_dir), seed
        self.families = sorted(cfg.families or FAMILIES)
        self._pool = load_task_set(cfg.train) if cfg.train != "generated" else None

    def for_step(self, step: int, n: int) -> list[Task]:
        """``n`` tasks for training step ``step`` (deterministic in seed and step)."""
        rng = random.Random(f"{self.seed}:{step}")
        if self._pool is not None:
            return rng.sample(self._pool, min(n, len(self._pool)))
        out = self.work_dir / "train" / f"step_{step:06d}"
        tasks = []
        for i in range(n):
            family = rng.choice(self.families)
            d = generate([family], 1, out / f"{i}", seed=self.seed * 100_000 + step * 100 + i)[0]
            tasks.append(load_task(d))
        return tasks

    def eval_tasks(self) -> list[Task]:
        if self.cfg.eval != "generated":
            return load_task_set(self.cfg.eval)
        out = self.work_dir / "eval"
        dirs = generate(self.families, self.cfg.eval_per_family, out, seed=EVAL_SEED_OFFSET + self.seed)
        return [load_task(d) for d in dirs]
