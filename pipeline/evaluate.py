"""Evaluation: pass@k on held-out tasks, and the world-model probe.

Where it sits: main (every ``eval.every`` steps) and ``echo-rl eval CKPT`` → **evaluate** →
tracking.

- pass@k: ``samples`` episodes per held-out task at ``temperature``; the unbiased estimator
  ``1 - C(n-c, k) / C(n, k)`` averaged over tasks (Chen et al. 2021); per family too.
  Logged as ``eval/pass_at_k`` (MLflow allows no ``@`` in metric names).
- World-model probe (the paper's evidence that ECHO learns terminal dynamics): the
  learner's mean CE on the OUTPUT tokens of a fixed held-out set of trajectories made by
  a *different* policy — the scripted expert on the held-out tasks, saved once as JSONL
  in the run directory and reused by every evaluation (and by resumed runs).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.trajectory import Role, Trajectory, load_jsonl, pack_micro_batches, save_jsonl


@dataclass
class EvalConfig:
    every: int = 0  # evaluate every N training steps (0 = only at the end of the run)
    samples: int = 4  # episodes per held-out task (n of pass@k)
    k: list[int] = field(default_factory=lambda: [1])  # pass@k reported for each k ≤ samples
    temperature: float = 0.8  # sampling temperature of evaluation episodes
    probe: bool = True  # compute the world-model probe
    probe_set: str = ""  # JSONL of held-out trajectories ("" = the expert's, made once in the run dir)

    def check(self) -> list[tuple[str, str]]:
        errs = []
        if self.every < 0:
            errs.append(("every", f"must be ≥ 0, got {self.every}"))
        if self.samples < 1:
            errs.append(("samples", f"must be ≥ 1, got {self.samples}"))
        bad = [k for k in self.k if not 1 <= k <= self.samples]
        if bad:
            errs.append(("k", f"each k must be in [1, samples={self.samples}], got {bad}"))
        return errs


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples with ``c`` successes."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_metrics(trajectories: list[Trajectory], ks: list[int], families: dict[str, str]) -> tuple[dict, list[dict]]:
    """pass@k over tasks (infra errors excluded), overall and per family; plus table rows."""
    by_task: dict[str, list[float]] = defaultdict(list)
    for t in trajectories:
        if not t.infra_error:
            by_task[t.task_id].append(t.reward)
    rows, metrics = [], {}
    for task_id, rewards in sorted(by_task.items()):
        n, c = len(rewards), sum(r >= 1.0 for r in rewards)
        rows.append({"task": task_id, "family": families.get(task_id, ""), "n": n, "solved": c,
                     **{f"pass@{k}": pass_at_k(n, c, k) for k in ks if k <= n}})  # fmt: skip
    for k in ks:
        vals = [r[f"pass@{k}"] for r in rows if f"pass@{k}" in r]
        metrics[f"eval/pass_at_{k}"] = sum(vals) / len(vals) if vals else 0.0
        fam: dict[str, list[float]] = defaultdict(list)
        for r in rows:
            if f"pass@{k}" in r and r["family"]:
                fam[r["family"]].append(r[f"pass@{k}"])
        if k == 1:
            for f, v in fam.items():
                metrics[f"eval/pass_at_1/{f}"] = sum(v) / len(v)
    metrics["eval/infra_errors"] = float(sum(t.infra_error for t in trajectories))
    return metrics, rows


def world_model_probe(learner, trajectories: list[Trajectory], micro_batch_tokens: int) -> dict[str, float]:
    """Mean CE (nats/token) of the learner on the OUTPUT (and WARNING) tokens of ``trajectories``.
    All learner ranks call it together."""
    batches = pack_micro_batches(trajectories, [0.0] * len(trajectories), micro_batch_tokens)[0]
    logps = learner.logprobs(batches)
    sums = {Role.OUTPUT: [0.0, 0], Role.WARNING: [0.0, 0]}
    for mb, lp in zip(batches, logps):
        roles = mb.target_roles.reshape(-1)
        for role, acc in sums.items():
            m = roles == int(role)
            acc[0] += float(-lp[m].double().sum())
            acc[1] += int(m.sum())
    out = {"probe/output_ce": sums[Role.OUTPUT][0] / max(sums[Role.OUTPUT][1], 1),
           "probe/output_tokens": float(sums[Role.OUTPUT][1])}  # fmt: skip
    if sums[Role.WARNING][1]:
        out["probe/warning_ce"] = sums[Role.WARNING][0] / sums[Role.WARNING][1]
    return out


def expert_probe_set(ro, path: Path, tasks) -> list[Trajectory]:
    """The held-out probe trajectories: made once by the scripted expert through the
    rollouter ``ro`` (its sandboxes and format), then read back."""
    if path.is_file():
        return load_jsonl(path)
    from pipeline.engines.expert import ExpertEngine

    engine = ExpertEngine(ro.tok, tasks, ro.chat.stop_token_id)
    try:
        trajs = ro.rollouts(tasks, engine=engine, group_size=1)
    finally:
        engine.close()
    trajs = [t for t in trajs if not t.infra_error]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_jsonl(trajs, tmp)
    tmp.replace(path)
    return trajs


def eval_rollouts(ro, tasks, cfg: EvalConfig, *, step: int):
    """``cfg.samples`` episodes per held-out task through the rollouter ``ro``; returns
    (metrics, rows, trajectories)."""
    trajs = ro.rollouts(tasks, group_size=cfg.samples, step=step, seed=10_000_019 + step, temperature=cfg.temperature)
    metrics, rows = pass_metrics(trajs, cfg.k, {t.task_id: t.family for t in tasks})
    return metrics, rows, trajs


def write_table(rows: list[dict], path: Path) -> None:
    """A markdown table of per-task results."""
    if not rows:
        return
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r.get(c, ''):.3g}" if isinstance(r.get(c), float) else str(r.get(c, ""))
                                       for c in cols) + " |")  # fmt: skip
    path.write_text("\n".join(lines) + "\n")



def run_eval_command(cfg, ckpt: str, out: str) -> int:
    """``echo-rl eval CKPT RECIPE``: load the checkpoint's weights, evaluate, print the table."""
    from dataclasses import replace

    import torch.distributed as dist

    from pipeline.learner.learner import Learner
    from pipeline.learner.parallel import handover
    from pipeline.rollout.rollouter import Rollouter
    from pipeline.tasks.sets import TaskSampler
    from pipeline.weights.sync import export_hf_dir

    out_dir = Path(out or f"{Path(ckpt).resolve().parent}/eval-{Path(ckpt).name}")
    out_dir.mkdir(parents=True, exist_ok=True)
    learner = Learner(replace(cfg.model, load=ckpt, warmstart_steps=0), cfg.parallel, cfg.optim, cfg.learner,
                      cfg.loss, seed=cfg.run.seed)  # fmt: skip
    export_hf_dir(learner, out_dir / "engine_model", tokenizer_dir=cfg.model.tokenizer)
    rank0 = dist.get_rank() == 0
    ro = Rollouter.from_config(cfg, out_dir / "engine_model") if rank0 else Rollouter(None, None, cfg.rollout, cfg.sandbox)
    try:
        ro.update_weights(learner)
        metrics, probe = {}, None
        if rank0:
            tasks = TaskSampler(cfg.tasks, out_dir / "tasks", cfg.run.seed).eval_tasks()
            metrics, rows, _ = eval_rollouts(ro, tasks, cfg.eval, step=0)
            write_table(rows, out_dir / "pass_at_k.md")
            if cfg.eval.probe:
                path = Path(cfg.eval.probe_set) if cfg.eval.probe_set else out_dir / "probe_expert.jsonl"
                probe = expert_probe_set(ro, path, tasks)
        if cfg.eval.probe:
            metrics.update(world_model_probe(learner, handover(probe), cfg.learner.micro_batch_tokens))
    finally:
        ro.close()
    if rank0:
        for k, v in sorted(metrics.items()):
            print(f"{k:>36}: {v:.4f}")
        print(f"per-task table: {out_dir / 'pass_at_k.md'}")
    return 0
