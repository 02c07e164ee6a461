"""The microcosm's arms: what one seed of each experiment trains and evaluates.

Where it sits: ``pipeline/microcosm/world.py`` (config, ``World``, ``Agent``; ``run.py`` the experiment
driver) → **these arms** → curve rows (``CURVE_FIELDS``) → ``pipeline/microcosm/report.py``.
Each arm's run is cached under ``OUT/runs/<arm>-seed<k>-<hash>``: ``curve.csv`` is written
last, so its presence means the run finished.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import time
from pathlib import Path

from pipeline.microcosm.world import CURVE_FIELDS, Agent, MicrocosmConfig, World


def _row(experiment, arm, seed, step, ev, train=None, t0=0.0) -> dict:
    train = train or {}
    return {"experiment": experiment, "arm": arm, "seed": seed, "step": step, "solve_rate": ev.get("solve_rate", ""),
            "probe_ce": ev.get("probe_ce", ""), "train_solve_rate": train.get("pass", ""),
            "loss": train.get("loss", ""), "seconds": round(time.perf_counter() - t0, 1),
            "per_maze": ev.get("per_maze", "")}  # fmt: skip


def _run_dir(world: World, name: str, keys: dict) -> Path:
    return _run_path(world.root, world.seed, name, keys)


def _run_path(root: Path, seed: int, name: str, keys: dict) -> Path:
    digest = hashlib.sha1(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:8]
    return root / "runs" / f"{name}-seed{seed}-{digest}"


def _cached(run_dir: Path) -> list[dict] | None:
    done = run_dir / "curve.csv"
    if not done.is_file():
        return None
    print(f"  reusing the finished run {run_dir}", flush=True)
    with open(done) as f:
        return list(csv.DictReader(f))


def _save_curve(run_dir: Path, rows: list[dict]) -> list[dict]:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / "curve.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, CURVE_FIELDS)
        w.writeheader()
        w.writerows(rows)
    tmp.rename(run_dir / "curve.csv")  # written last: its presence means the run finished
    return rows


def _imitate(world: World, agent: Agent, data, steps: int, batch: int, experiment: str, arm: str, t0: float,
             eval_tasks=None) -> list[dict]:  # fmt: skip
    """``data``: a pool to sample ``batch`` trajectories from per step, or a callable step → that step's batch."""
    rng = random.Random(world.seed)
    rows = []
    if eval_tasks is not None:
        rows.append(_row(experiment, arm, world.seed, 0, agent.evaluate(eval_tasks, 0), t0=t0))
    for step in range(steps):
        picked = data(step) if callable(data) else rng.sample(data, min(batch, len(data)))
        m = agent.train(picked, [0.0] * len(picked), step)
        if eval_tasks is not None and ((step + 1) % world.mc.eval_every == 0 or step + 1 == steps):
            rows.append(_row(experiment, arm, world.seed, step + 1, agent.evaluate(eval_tasks, step + 1),
                             {"loss": m["loss"]}, t0))  # fmt: skip
            _say(rows[-1])
    return rows


def _supervised_keys(mc: MicrocosmConfig, arm: str) -> dict:
    coef = 0.0 if arm == "action" else mc.sup_env_coef
    keys = {k: getattr(mc, k) for k in ("model", "train_sizes", "max_turns", "temperature", "eval_every", "eval_mazes",
                                        "eval_samples", "probe_mazes", "sup_expert", "sup_mazes", "sup_steps", "sup_batch", "sup_lr",
                                        "sup_optim", "micro_batch_tokens")}  # fmt: skip
    return {**keys, **_feedback_key(mc), "coef": coef}


def _feedback_key(mc: MicrocosmConfig) -> dict:
    return {"feedback": mc.feedback} if mc.feedback != "distance" else {}  # (distance runs keep their cache)


def supervised_run_dir(mc: MicrocosmConfig, seed: int, arm: str) -> Path:
    return _run_path(Path(mc.out_dir), seed, f"supervised-{arm}", _supervised_keys(mc, arm))


def supervised_arm(world: World, arm: str) -> list[dict]:
    """Imitation of ``sup_expert`` (ACTION CE, plus ``sup_env_coef`` × OUTPUT CE for ``action+output``);
    the final weights are kept in the run's ``ckpt`` (for greedy evaluation and RL from them)."""
    mc = world.mc
    coef = 0.0 if arm == "action" else mc.sup_env_coef
    run_dir = supervised_run_dir(mc, world.seed, arm)
    if (rows := _cached(run_dir)) is not None:
        return rows
    t0 = time.perf_counter()
    expert = lambda tasks: [t for t in world.reference(tasks, mc.sup_expert) if t.reward >= 1]  # noqa: E731
    if mc.sup_mazes:
        data = expert(world.tasks(mc.train_sizes, mc.sup_mazes, 4))
    else:  # fresh mazes every step, the same for both arms (offsets past every other stream)
        data = lambda step: expert(world.tasks(mc.train_sizes, mc.sup_batch, 100_000 + step))  # noqa: E731
    agent = Agent(world, "sft", coef, mc.sup_lr, workdir=run_dir, optim=mc.sup_optim)
    try:
        rows = _imitate(world, agent, data, mc.sup_steps, mc.sup_batch, "supervised", arm, t0, world.eval_tasks)
        agent.learner.save(str(run_dir / "ckpt"))
    finally:
        agent.close()
    return _save_curve(run_dir, rows)


def _rl_keys(mc: MicrocosmConfig) -> dict:
    keys = {k: getattr(mc, k) for k in ("model", "train_sizes", "max_turns", "temperature", "eval_every", "eval_mazes",
                                        "probe_mazes", "eval_samples", "warm_mazes", "warm_steps", "warm_env_coef",
                                        "sup_lr", "sup_optim", "sup_batch", "rl_steps", "rl_lr", "tasks_per_step",
                                        "group_size", "rl_loss")}  # fmt: skip
    keys.update(_feedback_key(mc))
    if mc.rl_start != "walk":  # (the walk start's keys are unchanged: its runs keep their cache)
        keys = {**keys, "rl_start": mc.rl_start, "start": _supervised_keys(mc, mc.rl_start.removeprefix("supervised-"))}
    return keys


def warm_start(world: World) -> tuple[Path, dict]:
    """The one starting point of every RL arm of a seed: its checkpoint and its evaluation (step 0).

    ``rl_start=walk``: imitation of random-walk trajectories (ACTION CE + ``warm_env_coef`` ×
    OUTPUT CE). Modelling the terminal a little mirrors the paper's setting, a pretrained LM
    that has seen terminals; with ``warm_env_coef=0`` the OUTPUT CE starts far above uniform
    and ECHO's first steps are spent there. ``rl_start=supervised-<arm>``: that supervised
    arm's final weights (trained first if not cached), its last evaluation as step 0."""
    mc = world.mc
    if mc.rl_start != "walk":
        arm = mc.rl_start.removeprefix("supervised-")
        rows = supervised_arm(world, arm)
        ckpt = supervised_run_dir(mc, world.seed, arm) / "ckpt"
        if not ckpt.is_dir():
            from pipeline.config import ConfigError

            raise ConfigError(f"microcosm config key 'rl_start': {ckpt} is missing (an imported curve has no weights): "
                              f"remove {ckpt.parent} to train it again")  # fmt: skip
        last = max(rows, key=lambda r: int(r["step"]))
        return ckpt, {**last, "experiment": "rl", "arm": "warm start", "step": 0, "train_solve_rate": "", "loss": ""}
    keys = {k: v for k, v in _rl_keys(mc).items() if not k.startswith(("rl_", "tasks_", "group_"))}
    run_dir = _run_dir(world, "warmstart", keys)
    ckpt = run_dir / "ckpt"
    if (rows := _cached(run_dir)) is not None:
        return ckpt, rows[0]
    t0 = time.perf_counter()
    data = world.reference(world.tasks(mc.train_sizes, mc.warm_mazes, 5), "walk")
    agent = Agent(world, "sft", mc.warm_env_coef, mc.sup_lr, workdir=run_dir, optim=mc.sup_optim)
    try:
        _imitate(world, agent, data, mc.warm_steps, mc.sup_batch, "warmstart", "random-walk", t0)
        agent.learner.save(str(ckpt), step=0)
        # step 0 of every arm: one evaluation of the shared start, so the arms start from one number
        row = _row("rl", "warm start", world.seed, 0, agent.evaluate(world.eval_tasks, 0), t0=t0)
        print(f"  [warm start seed {world.seed}] {mc.warm_steps} imitation steps on {len(data)} random walks, action "
              f"CE {agent.last['action_ce']:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
    finally:
        agent.close()
    _save_curve(run_dir, [row])
    return ckpt, row


def rl_arm(world: World, mode: str, env_coef: float) -> tuple[list[dict], Path]:
    """GRPO (``mode=grpo``) or ECHO from the warm start; the same tasks per step for every arm."""
    from pipeline.advantages import AdvantageConfig, group_advantages

    mc = world.mc
    arm = "grpo" if mode == "grpo" else f"echo-{env_coef:g}"
    run_dir = _run_dir(world, arm, _rl_keys(mc))
    if (rows := _cached(run_dir)) is not None:
        return rows, run_dir / "ckpt"
    start, first = warm_start(world)
    t0 = time.perf_counter()
    agent = Agent(world, mode, env_coef if mode != "grpo" else 0.0, mc.rl_lr, load=str(start), workdir=run_dir,
                  loss=mc.rl_loss)  # fmt: skip
    rows = [{**first, "arm": arm}]
    try:
        for step in range(mc.rl_steps):
            tasks = world.tasks(mc.train_sizes, mc.tasks_per_step, 100 + step)
            trajs = world.rollouts(agent.engine, tasks, mc.group_size, step)
            trajs = [t for t in trajs if not t.infra_error]
            m = agent.train(trajs, group_advantages(trajs, AdvantageConfig()), step)
            train = {"loss": m["loss"], "pass": sum(t.reward for t in trajs) / max(len(trajs), 1)}
            if (step + 1) % mc.eval_every == 0 or step + 1 == mc.rl_steps:
                rows.append(_row("rl", arm, world.seed, step + 1, agent.evaluate(world.eval_tasks, step + 1), train, t0))
                _say(rows[-1])
        agent.learner.save(str(run_dir / "ckpt"))
    finally:
        agent.close()
    return _save_curve(run_dir, rows), run_dir / "ckpt"


def env_only_arm(world: World) -> list[dict]:
    """Continue the ECHO checkpoint on an unseen maze size with the environment loss only."""
    from pipeline.advantages import AdvantageConfig, group_advantages
    from pipeline.rollout.loop import passes_filters

    mc = world.mc
    _, ckpt = rl_arm(world, "echo", mc.env_only_coef)
    keys = {**_rl_keys(mc), "unseen": mc.unseen_size, "steps": mc.env_only_steps, "coef": mc.env_only_coef,
            "lr": mc.env_only_lr}  # fmt: skip
    run_dir = _run_dir(world, "env_only", keys)
    if (rows := _cached(run_dir)) is not None:
        return rows
    t0 = time.perf_counter()
    agent = Agent(world, "env_only", mc.env_only_coef, mc.env_only_lr, load=str(ckpt), workdir=run_dir, loss=mc.rl_loss)
    rows = [_row("env_only", f"{mc.unseen_size}x{mc.unseen_size}", world.seed, 0,
                 agent.evaluate(world.unseen_eval_tasks, 0), t0=t0)]  # fmt: skip
    try:
        for step in range(mc.env_only_steps):
            tasks = world.tasks([mc.unseen_size], mc.tasks_per_step, 500 + step)
            trajs = world.rollouts(agent.engine, tasks, mc.group_size, step)
            kept = [t for t in trajs if passes_filters(t, ["tool_calls_parsed"])] or [t for t in trajs if not t.infra_error]
            m = agent.train(kept, group_advantages(kept, AdvantageConfig()), step)
            train = {"loss": m["loss"], "pass": sum(t.reward for t in trajs) / max(len(trajs), 1)}
            if (step + 1) % mc.eval_every == 0 or step + 1 == mc.env_only_steps:
                rows.append(_row("env_only", rows[0]["arm"], world.seed, step + 1,
                                 agent.evaluate(world.unseen_eval_tasks, step + 1), train, t0))  # fmt: skip
                _say(rows[-1])
    finally:
        agent.close()
    return _save_curve(run_dir, rows)


def _say(row: dict) -> None:
    print(f"  [{row['experiment']} {row['arm']} seed {row['seed']}] step {row['step']}: solve {float(row['solve_rate']):.3f} "
          f"probe CE {float(row['probe_ce']):.3f} ({row['seconds']} s)", flush=True)  # fmt: skip


def import_curves(path: str, mc: MicrocosmConfig) -> list[Path]:
    """Seed the run cache with the supervised runs of a published ``curves.csv`` (e.g. one in
    ``docs/microcosm/``), so that new seeds join them in one report. The runs are filed under
    this config's hash: import only a file this config produced."""
    with open(path) as f:
        rows = [r for r in csv.DictReader(f) if r["experiment"] == "supervised" and r["seed"] not in ("", "all")]
    if not rows:
        raise ValueError(f"{path}: no supervised curve rows")
    written = []
    for seed in sorted({int(r["seed"]) for r in rows}):
        for arm in ("action", "action+output"):
            mine = [r for r in rows if int(r["seed"]) == seed and r["arm"] == arm]
            run_dir = supervised_run_dir(mc, seed, arm)
            if not mine or (run_dir / "curve.csv").exists():
                continue
            if max(int(r["step"]) for r in mine) != mc.sup_steps:
                raise ValueError(f"{path}: {arm} seed {seed} ends before sup_steps={mc.sup_steps}")
            _save_curve(run_dir, [{k: r.get(k, "") for k in CURVE_FIELDS if k not in ("ci_lo", "ci_hi", "verdict")}
                                  for r in mine])  # fmt: skip
            written.append(run_dir)
    return written
