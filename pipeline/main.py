"""The training loop, top to bottom: tasks → rollouts → advantages → learner step → weight
sync → evaluation → log → checkpoint.

Where it sits: ``echo-rl train RECIPE`` (and ``sbatch slurm/...``) → **train** → the stages.

Colocated: learner ranks run Megatron; global rank 0 also owns the generation engine and
the sandboxes, rolls out, and broadcasts the trajectories to every learner rank. Other
placements keep the same calls with another ``Engine`` (``vllm_server``).

Resume: a killed job started again with the same command continues from the latest
checkpoint in ``RUN_DIR/ckpt`` — the same step, the same tasks (seeded by step), the same
MLflow run, each step logged exactly once (``pipeline/tracking.py``).
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import torch.distributed as dist

from pipeline.advantages import group_advantages
from pipeline.config import Config, flat_params, to_yaml
from pipeline.evaluate import world_model_probe, write_table
from pipeline.learner import checkpoint
from pipeline.learner.learner import Learner
from pipeline.learner.parallel import handover
from pipeline.rollout.chat import load_tokenizer
from pipeline.rollout.loop import passes_filters, rollout_metrics
from pipeline.rollout.producer import BatchProducer, staleness
from pipeline.rollout.rollouter import Rollouter
from pipeline.tasks.sets import TaskSampler
from pipeline.tracking import Tracker
from pipeline.trajectory import load_jsonl, pack_micro_batches, save_jsonl
from pipeline.weights.sync import export_hf_dir


class RunError(RuntimeError):
    """The run cannot continue (says why and what to change)."""


def train(cfg: Config) -> dict:
    if cfg.sandbox.profile != "training":  # a policy trained under Harbor's semantics can learn its holes
        from pipeline.config import ConfigError

        raise ConfigError(f"config key 'sandbox.profile': {cfg.sandbox.profile!r} is for evaluation "
                          "(echo-rl eval); training runs under the hardened 'training' profile")  # fmt: skip
    run_dir = Path(cfg.run.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.model.warmstart_steps and cfg.model.load and checkpoint.latest(cfg.model.load) is None:
        from pipeline.warmstart import build_warmstart

        build_warmstart(cfg)
    learner = Learner(cfg.model, cfg.parallel, cfg.optim, cfg.learner, cfg.loss, seed=cfg.run.seed)
    ckpt_dir = run_dir / "ckpt"
    if cfg.run.resume and checkpoint.latest(ckpt_dir) is not None:
        learner.load(str(ckpt_dir))
        if dist.get_rank() == 0:
            print(f"resuming from {ckpt_dir} at step {learner.step}", flush=True)
    rank0 = dist.get_rank() == 0
    tok = load_tokenizer(cfg.model.tokenizer)
    sampler = TaskSampler(cfg.tasks, run_dir / "tasks", cfg.run.seed)
    export_hf_dir(learner, run_dir / "engine_model", tokenizer_dir=cfg.model.tokenizer)
    tracker = None
    # rank 0 rolls out; the other learner ranks only take part in the weight updates
    ro = Rollouter(None, None, cfg.rollout, cfg.sandbox)
    if rank0:
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
        ro = Rollouter.from_config(cfg, run_dir / "engine_model", reap=True)
        tracker = Tracker(cfg.tracking, run_dir, cfg.run.name, flat_params(cfg))
        tracker.log_artifact(run_dir / "config.yaml")
    eval_tasks = sampler.eval_tasks() if rank0 else []
    k = cfg.rollout.max_staleness
    producer = None

    def rollout_batch(step: int) -> list:
        tasks = sampler.for_step(step, cfg.rollout.tasks_per_step)
        trajs = ro.train_batch(tasks, step, seed=cfg.run.seed * 1_000_003 + step)
        (run_dir / "trajectories").mkdir(exist_ok=True)
        save_jsonl(trajs, run_dir / "trajectories" / f"step_{step:06d}.jsonl")
        return trajs

    try:
        ro.update_weights(learner)
        if learner.step == 0 and cfg.eval.every and not _bcast_flag(tracker and tracker.has_step("eval/pass_at_1", 0)):
            ev = _evaluate(cfg, learner, ro, eval_tasks, tracker, run_dir, step=0)
            if tracker:  # evaluations are logged at the weights version they measured
                tracker.log_step(0, ev)
                tracker.commit()
        if k and rank0:  # rollouts of the next k steps run while the learner trains
            producer = BatchProducer(ro.engine, rollout_batch, start=learner.step, stop=cfg.run.steps, max_staleness=k,
                                     version=learner.step, saved=lambda t: _saved_batch(cfg, t))  # fmt: skip
        for step in range(learner.step, cfg.run.steps):
            t0 = time.perf_counter()
            trajs, info = None, {}
            if producer is not None:
                trajs, info = producer.get(step)
            elif rank0:
                trajs = rollout_batch(step)
            if rank0:
                info = {**info, **ro.health()}  # rollout/servers_alive, sandbox/hosts_alive
            trajs, info = handover((trajs, info))
            t_rollout = time.perf_counter() - t0
            metrics = rollout_metrics(trajs)
            metrics.update(_staleness_metrics(step, trajs, info, k))
            # the learner's wait for this step's batch (all of the rollout when synchronous)
            metrics["time/learner_wait_s"] = info.get("learner_wait_s", t_rollout)
            metrics.update({n: v for n, v in info.items() if n.startswith(("rollout/servers", "sandbox/hosts"))})
            if k:  # what the policy-gradient term may see: ≤ k versions old (infra failures carry no policy)
                trajs = [t for t in trajs if t.infra_error or step - t.policy_version <= k]
                metrics["rollout/dropped_stale"] += metrics["rollout/episodes"] - len(trajs)
            if metrics["rollout/infra_error_frac"] > cfg.run.max_infra_error_frac:
                _stop_on_infra(cfg, learner, tracker, step, metrics, len(trajs))
            if cfg.rollout.train_filters:  # e.g. env_only: learn only from clean episodes
                trajs = [t for t in trajs if passes_filters(t, cfg.rollout.train_filters)]
                metrics["rollout/kept_by_filters"] = float(len(trajs))
            adv = group_advantages(trajs, cfg.advantages)
            t1 = time.perf_counter()
            shards = pack_micro_batches(trajs, adv, cfg.learner.micro_batch_tokens, num_shards=learner.topo.dp,
                                        pad_token_id=tok.pad_token_id or 0)  # fmt: skip
            metrics.update(learner.train_step(shards[learner.topo.dp_rank], step))
            t2 = time.perf_counter()
            if k:  # staged now, served by the producer before its next batch
                staged = ro.stage_weights(learner)
                if producer is not None:
                    producer.publish(learner.step, staged)
            else:
                ro.update_weights(learner)
            t3 = time.perf_counter()
            metrics.update({"time/rollout_s": t_rollout, "time/learner_s": t2 - t1, "time/sync_s": t3 - t2})
            ev = {}
            if cfg.eval.every and (step + 1) % cfg.eval.every == 0 or step + 1 == cfg.run.steps:
                with producer.paused() if producer is not None else contextlib.nullcontext():
                    ev = _evaluate(cfg, learner, ro, eval_tasks, tracker, run_dir, learner.step)
            metrics["time/step_s"] = time.perf_counter() - t0
            metrics["time/learner_idle_frac"] = metrics["time/learner_wait_s"] / metrics["time/step_s"]
            if rank0:
                tracker.log_step(step, metrics)
                if ev:
                    tracker.log_step(learner.step, ev)
                _print_step(step, cfg.run.steps, {**metrics, **ev})
            every = cfg.learner.checkpoint_every
            if (every and (step + 1) % every == 0) or step + 1 == cfg.run.steps:
                learner.save(str(ckpt_dir))
                if rank0:
                    tracker.commit()
        summary = _finish(cfg, learner, tracker, run_dir)
    finally:
        if producer is not None:
            producer.close()
        ro.close()
        if tracker is not None:
            tracker.close()
    return summary


def _saved_batch(cfg: Config, step: int) -> list | None:
    """A batch a killed run finished before its step was trained (the file is written
    whole: ``save_jsonl`` renames it into place); one that failed on infrastructure is
    rolled out again."""
    path = Path(cfg.run.output_dir) / "trajectories" / f"step_{step:06d}.jsonl"
    trajs = load_jsonl(path) if path.is_file() else None
    if trajs and sum(t.infra_error for t in trajs) / len(trajs) > cfg.run.max_infra_error_frac:
        return None
    return trajs


def _stop_on_infra(cfg: Config, learner, tracker, step: int, m: dict, n: int) -> None:
    """Too much of this batch failed on infrastructure (every rank): checkpoint the learner
    as it stands (nothing is lost; the same command resumes at this step, its batch rolled
    again) and stop, saying why."""
    ckpt_dir = Path(cfg.run.output_dir) / "ckpt"
    last = checkpoint.latest(ckpt_dir)
    if last is None or last.name != f"step_{learner.step:06d}":
        learner.save(str(ckpt_dir))
    if tracker is not None:
        tracker.commit()
    why = f"{m['rollout/infra_errors']:.0f} of {n} episodes failed on infrastructure"
    if m.get("rollout/servers_alive", 1) == 0:
        why = f"no rollout server is alive (0 of {m['rollout/servers']:.0f}; see the rollout logs): {why}"
    raise RunError(f"step {step}: {why} (see 'infra_error' in {cfg.run.output_dir}/trajectories/step_{step:06d}.jsonl; "
                   f"run.max_infra_error_frac={cfg.run.max_infra_error_frac}); checkpoint {ckpt_dir} is at step "
                   f"{learner.step}: the same command resumes there")  # fmt: skip


def _staleness_metrics(step: int, trajs: list, info: dict, k: int) -> dict:
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


def _bcast_flag(flag) -> bool:
    return bool(handover(bool(flag)))


def _evaluate(cfg, learner, ro, eval_tasks, tracker, run_dir, step) -> dict:
    """pass@k (rank 0 rolls out) and the world-model probe (all learner ranks)."""
    metrics, probe = {}, None
    if dist.get_rank() == 0:
        metrics, rows, _ = ro.evaluate(eval_tasks, cfg.eval, step)
        (run_dir / "eval").mkdir(exist_ok=True)
        write_table(rows, run_dir / "eval" / f"step_{step:06d}.md")
        tracker.log_artifact(run_dir / "eval" / f"step_{step:06d}.md", "eval")
        if cfg.eval.probe:
            path = Path(cfg.eval.probe_set) if cfg.eval.probe_set else run_dir / "probe_expert.jsonl"
            probe = ro.probe_set(path, eval_tasks)
    if cfg.eval.probe:
        metrics.update(world_model_probe(learner, handover(probe), cfg.learner.micro_batch_tokens))
    return metrics


def _print_step(step: int, total: int, m: dict) -> None:
    probe = f" probe_ce {m['probe/output_ce']:.3f}" if "probe/output_ce" in m else ""
    ev = f" eval_pass@1 {m['eval/pass_at_1']:.2f}" if "eval/pass_at_1" in m else ""
    print(
        f"step {step + 1}/{total}: pass {m['rollout/pass_rate']:.2f} loss {m['loss']:.4f} pg {m['pg_loss']:.4f} "
        f"env_ce {m['env_ce_output']:.3f} |Δlogp| {m['logprob_abs_gap']:.2e} turns {m['rollout/turns']:.1f}"
        f"{ev}{probe} ({m['time/rollout_s']:.1f}s rollout, {m['time/learner_s']:.1f}s learner)",
        flush=True,
    )


def _finish(cfg, learner, tracker, run_dir: Path) -> dict:
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
