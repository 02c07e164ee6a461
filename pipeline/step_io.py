"""What the training loop (``pipeline/main.py``) does around each step: the batch a killed
run left, the per-step staleness gauges, the stop when a batch is lost to infrastructure
(with a checkpoint), evaluation, the step's line, and the end of a run (the HF export,
plots, the summary). Kept apart so that main.py reads as the loop itself."""

from __future__ import annotations

import json
from pathlib import Path

import torch.distributed as dist

from pipeline.config import Config
from pipeline.evaluate import eval_rollouts, expert_probe_set, world_model_probe, write_table
from pipeline.learner import checkpoint
from pipeline.learner.parallel import handover
from pipeline.rollout.producer import staleness
from pipeline.trajectory import load_jsonl
from pipeline.weights.sync import export_hf_dir


class RunError(RuntimeError):
    """The run cannot continue (says why and what to change)."""


def saved_batch(cfg: Config, step: int) -> list | None:
    """A batch a killed run finished before its step was trained (the file is written
    whole: ``save_jsonl`` renames it into place); one that failed on infrastructure is
    rolled out again."""
    path = Path(cfg.run.output_dir) / "trajectories" / f"step_{step:06d}.jsonl"
    trajs = load_jsonl(path) if path.is_file() else None
    if trajs and sum(t.infra_error for t in trajs) / len(trajs) > cfg.run.max_infra_error_frac:
        return None
    return trajs


def stop_on_infra(cfg: Config, learner, tracker, step: int, m: dict, n: int) -> None:
    """Too much of this batch failed on infrastructure (every rank): checkpoint the learner
    as it stands (nothing is lost; the same command resumes at this step, its batch rolled
    again) and stop, saying why."""
    ckpt_dir = Path(cfg.run.output_dir) / "ckpt"
    last = checkpoint.latest(ckpt_dir)
    if learner.step and (last is None or last.name != f"step_{learner.step:06d}"):
        learner.save(str(ckpt_dir))  # (before the first step there is nothing to keep)
    if tracker is not None:
        tracker.commit()
    why = f"{m['rollout/infra_errors']:.0f} of {n} episodes failed on infrastructure"
    if m.get("rollout/servers_alive", 1) == 0:
        why = f"no rollout server is alive (0 of {m['rollout/servers']:.0f}; see the rollout logs): {why}"
    where = (f"checkpoint {ckpt_dir} is at step {learner.step}: the same command resumes there" if learner.step
             else "nothing was trained yet: the same command starts again")  # fmt: skip
    raise RunError(f"step {step}: {why} (see 'infra_error' in {cfg.run.output_dir}/trajectories/step_{step:06d}.jsonl; "
                   f"run.max_infra_error_frac={cfg.run.max_infra_error_frac}); {where}")  # fmt: skip


def staleness_metrics(step: int, trajs: list, info: dict, k: int) -> dict:
    """Per step: how old the sampling policy was, what was dropped, who waited for whom."""
    ages = staleness(step, trajs)
    return {
        "rollout/staleness_mean": sum(ages) / max(len(ages), 1),
        "rollout/staleness_max": float(max(ages, default=0)),
        "rollout/dropped_stale": float(info.get("dropped_stale", 0)),
        "rollout/reused_batch": float(info.get("reused", 0)),
        # the engine's wait for the weights it needed to start this batch (k ≥ 1)
        "time/engine_wait_s": float(info.get("engine_wait_s", 0.0)) if k else 0.0,
    }


def evaluate(cfg, learner, ro, eval_tasks, tracker, run_dir, step) -> dict:
    """pass@k (rank 0 rolls out) and the world-model probe (all learner ranks)."""
    metrics, probe = {}, None
    if dist.get_rank() == 0:
        metrics, rows, _ = eval_rollouts(ro, eval_tasks, cfg.eval, step=step)
        (run_dir / "eval").mkdir(exist_ok=True)
        write_table(rows, run_dir / "eval" / f"step_{step:06d}.md")
        tracker.log_artifact(run_dir / "eval" / f"step_{step:06d}.md", "eval")
        if cfg.eval.probe:
            path = Path(cfg.eval.probe_set) if cfg.eval.probe_set else run_dir / "probe_expert.jsonl"
            probe = expert_probe_set(ro, path, eval_tasks)
    if cfg.eval.probe:
        metrics.update(world_model_probe(learner, handover(probe), cfg.learner.micro_batch_tokens))
    return metrics


def print_step(step: int, total: int, m: dict) -> None:
    probe = f" probe_ce {m['probe/output_ce']:.3f}" if "probe/output_ce" in m else ""
    ev = f" eval_pass@1 {m['eval/pass_at_1']:.2f}" if "eval/pass_at_1" in m else ""
    print(
        f"step {step + 1}/{total}: pass {m['rollout/pass_rate']:.2f} loss {m['loss']:.4f} pg {m['pg_loss']:.4f} "
        f"env_ce {m['env_ce_output']:.3f} |Δlogp| {m['logprob_abs_gap']:.2e} turns {m['rollout/turns']:.1f}"
        f"{ev}{probe} ({m['time/rollout_s']:.1f}s rollout, {m['time/learner_s']:.1f}s learner)",
        flush=True,
    )


def finish(cfg, learner, tracker, run_dir: Path) -> dict:
    """Export the final weights as an HF dir; write and print where everything is."""
    hf_out = export_hf_dir(learner, run_dir / "hf", tokenizer_dir=cfg.model.tokenizer)
    summary = {"run_dir": str(run_dir), "checkpoint": str(run_dir / "ckpt"), "hf_export": str(run_dir / "hf"),
               "steps": learner.step}  # fmt: skip
    if dist.get_rank() != 0:
        return summary
    from pipeline.tracking import plot_curves

    if tracker is not None and tracker.enabled:
        png = plot_curves(tracker, run_dir / "curves.png")
        tracker.log_artifact(png)
        summary.update(mlflow_run_id=tracker.run_id, mlflow_ui=tracker.ui_command())
    last = sorted((run_dir / "trajectories").glob("step_*.jsonl"))
    if last and tracker is not None:
        from pipeline.viewer import render_html

        html = run_dir / "trajectories" / f"{last[-1].stem}.html"
        render_html(last[-1], html, limit=8)
        tracker.log_artifact(html, "trajectories")
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print("\nrun finished")
    for k, v in summary.items():
        print(f"  {k:>14}: {v}")
    assert hf_out is not None
    return summary
