"""Which tasks a step trains on, and the held-out evaluation set.

Where it sits: **TaskSampler.for_step(k)** → rollout; **eval_tasks()** → evaluation.

``generated``: fresh instances of the built-in families every step (seeded by run seed
and step, so a resumed run sees the same data order), written as Harbor task dirs under
the run's ``tasks/``. Directories (``train_dirs`` / ``eval_dirs``, or the single ``train``
/ ``eval``): Harbor / Terminal-Bench task sets (a dataset dir, nested one level as Harbor
registry downloads are), sampled per step with the same seeding.

Held out means held out: a generated instance's seed names its split (``train.S.K.I`` vs
``eval.S``), so no seed, step or count can make a training instance an evaluation one;
a task id found in both the training and evaluation directories is an error at start.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.tasks.base import Task, TaskFormatError
from pipeline.tasks.formats import load_task, load_task_set
from pipeline.tasks.generator import FAMILIES, generate



@dataclass
class TaskSetConfig:
    train: str = "generated"  # "generated" (built-in families) or a directory of task dirs
    families: list[str] = field(default_factory=list)  # generated: families to use ([] = all)
    eval: str = "generated"  # held-out set: "generated" (other seeds) or a directory
    eval_per_family: int = 2  # generated eval: instances per family
    train_dirs: list[str] = field(default_factory=list)  # task sets to train on (overrides train)
    eval_dirs: list[str] = field(default_factory=list)  # held-out task sets (overrides eval)
    audit: str = ""  # an `echo-rl tasks audit --json` report: training tasks an attack got through are refused
    audit_failures: str = "refuse"  # refuse: stop at start, naming the task and the attacks | skip: train without them

    def check(self) -> list[tuple[str, str]]:
        errs = []
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown:
            errs.append(("families", f"unknown {unknown}; known: {sorted(FAMILIES)}"))
        for name in ("train", "eval"):
            v = getattr(self, name)
            if v != "generated" and not Path(v).is_dir():
                errs.append((name, f"must be 'generated' or a task directory, got {v!r}"))
        for name in ("train_dirs", "eval_dirs"):
            missing = [d for d in getattr(self, name) if not Path(d).is_dir()]
            if missing:
                errs.append((name, f"not directories: {missing}"))
        if self.audit and not Path(self.audit).is_file():
            errs.append(("audit", f"not a file: {self.audit!r} (write one with `echo-rl tasks audit DIR --json FILE`)"))
        if self.audit_failures not in ("refuse", "skip"):
            errs.append(("audit_failures", f"must be refuse or skip, got {self.audit_failures!r}"))
        if self.eval_per_family < 1:
            errs.append(("eval_per_family", f"must be ≥ 1, got {self.eval_per_family}"))
        return errs


def refuse_audited(tasks: list[Task], report: str | Path, policy: str) -> list[Task]:
    """The tasks an audit report (``echo-rl tasks audit --json``) did not flag: a task that
    an attack got through raises (``refuse``), naming it and the attacks, or is left out
    with that line printed (``skip``)."""
    import json
    import sys

    rows = {r["task"]: r for r in json.loads(Path(report).read_text()).get("tasks", [])}
    flagged = {t.task_id: rows[t.task_id]["got_through"] for t in tasks
               if t.task_id in rows and rows[t.task_id].get("got_through")}  # fmt: skip
    lines = [f"task {tid}: the audit {report} found these attacks got through: {', '.join(a)}" for tid, a in flagged.items()]
    if flagged and policy == "refuse":
        raise TaskFormatError("; ".join(lines) + " (fix the task's verifier, or set tasks.audit_failures=skip)")
    for line in lines:
        print(f"echo-rl: left out of training: {line}", file=sys.stderr)
    unaudited = [t.task_id for t in tasks if t.task_id not in rows]
    if unaudited:
        print(f"echo-rl: {len(unaudited)} training tasks are not in the audit {report}: {unaudited[:5]}", file=sys.stderr)
    return [t for t in tasks if t.task_id not in flagged]


class TaskSampler:
    def __init__(self, cfg: TaskSetConfig, work_dir: str | Path, seed: int):
        self.cfg, self.work_dir, self.seed = cfg, Path(work_dir), seed
        self.families = sorted(cfg.families or FAMILIES)
        train = cfg.train_dirs or ([] if cfg.train == "generated" else [cfg.train])
        self._eval_dirs = cfg.eval_dirs or ([] if cfg.eval == "generated" else [cfg.eval])
        self._pool = [t for d in train for t in load_task_set(d)] if train else None
        if self._pool is not None and cfg.audit:
            self._pool = refuse_audited(self._pool, cfg.audit, cfg.audit_failures)
        if self._pool is not None and self._eval_dirs:
            held_out = {t.task_id for d in self._eval_dirs for t in load_task_set(d)}
            both = sorted({t.task_id for t in self._pool} & held_out)
            if both:
                raise TaskFormatError(f"task ids in both the training and the evaluation sets: {both[:5]}"
                                      f"{' ...' if len(both) > 5 else ''} (held-out tasks must never be trained on)")  # fmt: skip

    def for_step(self, step: int, n: int) -> list[Task]:
        """``n`` tasks for training step ``step`` (deterministic in seed and step)."""
        rng = random.Random(f"{self.seed}:{step}")
        if self._pool is not None:
            return rng.sample(self._pool, min(n, len(self._pool)))
        out = self.work_dir / "train" / f"step_{step:06d}"
        tasks = []
        for i in range(n):
            family = rng.choice(self.families)
            d = generate([family], 1, out / f"{i}", seed=f"train.{self.seed}.{step}.{i}")[0]
            tasks.append(load_task(d))
        return tasks

    def eval_tasks(self) -> list[Task]:
        if self._eval_dirs:
            return [t for d in self._eval_dirs for t in load_task_set(d)]
        out = self.work_dir / "eval"
        dirs = generate(self.families, self.cfg.eval_per_family, out, seed=f"eval.{self.seed}")
        return [load_task(d) for d in dirs]
