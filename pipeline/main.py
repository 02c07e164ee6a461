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
import time
from pathlib import Path

import torch.distributed as dist

from pipeline.advantages import group_advantages
from pipeline.config import Config, flat_params, to_yaml
from pipeline.learner import checkpoint
from pipeline.learner.learner import Learner
from pipeline.learner.parallel import handover
from pipeline.rollout.chat import load_tokenizer
from pipeline.rollout.loop import passes_filters, rollout_metrics
from pipeline.rollout.producer import BatchProducer
from pipeline.rollout.rollouter import Rollouter
from pipeline.step_io import (RunError, evaluate, finish, print_step, saved_batch, staleness_metrics,  # noqa: F401
                              stop_on_infra)  # fmt: skip
from pipeline.tasks.sets import TaskSampler
from pipeline.tracking import Tracker
from pipeline.trajectory import pack_micro_batches, save_jsonl
from pipeline.weights.sync import export_hf_dir


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
            ev = evaluate(cfg, learner, ro, eval_tasks, tracker, run_dir, step=0)
            if tracker:  # evaluations are logged at the weights version they measured
                tracker.log_step(0, ev)
                tracker.commit()
        if k and rank0:  # rollouts of the next k steps run while the learner trains
            producer = BatchProducer(ro.engine, rollout_batch, start=learner.step, stop=cfg.run.steps, max_staleness=k,
                                     version=learner.step, saved=lambda t: saved_batch(cfg, t))  # fmt: skip
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
            metrics.update(staleness_metrics(step, trajs, info, k))
            # the learner's wait for this step's batch (all of the rollout when synchronous)
            metrics["time/learner_wait_s"] = info.get("learner_wait_s", t_rollout)
            metrics.update({n: v for n, v in info.items() if n.startswith(("rollout/servers", "sandbox/hosts"))})
            if k:  # what the policy-gradient term may see: ≤ k versions old (infra failures carry no policy)
                trajs = [t for t in trajs if t.infra_error or step - t.policy_version <= k]
                metrics["rollout/dropped_stale"] += metrics["rollout/episodes"] - len(trajs)
            if metrics["rollout/infra_error_frac"] > cfg.run.max_infra_error_frac:
                stop_on_infra(cfg, learner, tracker, step, metrics, len(trajs))
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
                    ev = evaluate(cfg, learner, ro, eval_tasks, tracker, run_dir, learner.step)
            metrics["time/step_s"] = time.perf_counter() - t0
            metrics["time/learner_idle_frac"] = metrics["time/learner_wait_s"] / metrics["time/step_s"]
            if rank0:
                tracker.log_step(step, metrics)
                if ev:
                    tracker.log_step(learner.step, ev)
                print_step(step, cfg.run.steps, {**metrics, **ev})
            every = cfg.learner.checkpoint_every
            if (every and (step + 1) % every == 0) or step + 1 == cfg.run.steps:
                learner.save(str(ckpt_dir))
                if rank0:
                    tracker.commit()
        summary = finish(cfg, learner, tracker, run_dir)
    finally:
        if producer is not None:
            producer.close()
        ro.close()
        if tracker is not None:
            tracker.close()
    return summary


def _bcast_flag(flag) -> bool:
    return bool(handover(bool(flag)))
