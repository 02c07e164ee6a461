"""The maze microcosm: test an objective on one CPU in minutes, through the same pipeline.

    echo-rl microcosm supervised|rl|probe|env_only [--config configs/microcosm/default.yaml] [key=value ...]

Where it sits: maze tasks (``pipeline/tasks/maze.py``) → the real rollout loop with the
``maze`` sandbox and ``PlainFormat`` → Trajectories → the real losses and Megatron learner
(gloo) → the HF engine via the same weight sync. Only the task, the terminal and the text
protocol differ from ``echo-rl train``; each run is small enough to repeat over seeds.

Experiments (each over ``seeds``; each writes ``OUT/<experiment>/{curves.csv, curves.png,
summary.md}``):

- ``supervised``: imitate BFS-expert trajectories, loss on ACTION tokens only vs
  ACTION + ``sup_env_coef`` × OUTPUT tokens; solve rate on fresh mazes vs step.
- ``rl``: GRPO vs ECHO (each ``env_coefs``) from one warm start per seed (imitation of
  random-walk trajectories, identical for all arms), the same fresh mazes per step for
  every arm; solve rate vs step; steps for ECHO to reach GRPO's best solve rate.
- ``probe``: CE on OUTPUT tokens of held-out BFS-expert trajectories at each evaluation
  of the GRPO and ECHO runs (the world-model probe).
- ``env_only``: from each seed's final ECHO checkpoint, continue with the environment
  loss only (no reward) on a maze size never trained on; solve rate before/after.

Runs are cached under ``OUT/runs/<arm>-seed<k>-<hash>`` (the hash covers the config), so
``probe`` and ``env_only`` reuse what ``rl`` trained.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

CURVE_FIELDS = ["experiment", "arm", "seed", "step", "solve_rate", "probe_ce", "train_solve_rate", "loss", "seconds",
                "per_maze", "ci_lo", "ci_hi", "verdict"]  # per_maze: each evaluation maze's solve fraction, in order


@dataclass
class MicrocosmConfig:
    out_dir: str = "runs/microcosm"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    model: str = "configs/models/maze-1m.json"  # HF Qwen3 config of the from-scratch model
    train_sizes: list[int] = field(default_factory=lambda: [6, 7, 8])
    unseen_size: int = 9  # env_only trains and evaluates here (never seen before)
    max_turns: int = 32  # moves per episode
    temperature: float = 1.0  # sampling temperature (rollouts and evaluation)
    micro_batch_tokens: int = 512  # packed attention is unfused on CPU: S² per micro-batch
    eval_every: int = 5  # steps between evaluations (and the last step)
    eval_mazes: int = 48  # fresh evaluation mazes per seed
    eval_samples: int = 2  # sampled episodes per evaluation maze
    reach_targets: list[float] = field(default_factory=lambda: [0.5, 0.8])  # "steps to reach" these solve rates
    probe_mazes: int = 32  # held-out BFS-expert trajectories for the world-model probe
    # supervised
    sup_mazes: int = 512  # BFS-expert trajectories to imitate (0: sup_batch fresh mazes every step)
    sup_steps: int = 60
    sup_batch: int = 32  # trajectories per step
    sup_lr: float = 2e-3
    sup_env_coef: float = 1.0  # λ on the OUTPUT CE in the ACTION+OUTPUT arm
    sup_optim: dict = field(default_factory=dict)  # extra OptimConfig fields of imitation (supervised, warm start)
    # rl: warm start, then GRPO / ECHO arms
    warm_mazes: int = 256  # random walks (no straight reversals) imitated by the warm start
    warm_steps: int = 40
    warm_env_coef: float = 1.0  # the warm start also models the terminal (as a pretrained LM has seen terminals)
    rl_steps: int = 15
    rl_lr: float = 5e-5
    tasks_per_step: int = 8
    group_size: int = 8
    env_coefs: list[float] = field(default_factory=lambda: [0.05, 0.2])
    rl_loss: dict = field(default_factory=lambda: {"pg_reduction": "sequence_mean"})  # extra LossConfig fields of the RL arms
    # env_only
    env_only_steps: int = 15
    env_only_coef: float = 0.05  # the ECHO arm it continues from (one of env_coefs)
    env_only_lr: float = 5e-5


EXPERIMENTS = ("supervised", "rl", "probe", "env_only")


def load_microcosm_config(path: str | None, overrides: list[str]) -> MicrocosmConfig:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from pipeline.config import ConfigError

    if path and not Path(path).is_file():
        raise ConfigError(f"microcosm config file not found: {path}")
    try:
        layers = [OmegaConf.load(path)] if path else []
        merged = OmegaConf.merge(OmegaConf.structured(MicrocosmConfig), *layers, OmegaConf.from_dotlist(overrides))
        cfg: MicrocosmConfig = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise ConfigError(f"microcosm config key '{getattr(e, 'full_key', '?')}': {str(e).splitlines()[0]}") from None
    if cfg.env_only_coef not in cfg.env_coefs:
        raise ConfigError(f"microcosm config key 'env_only_coef': {cfg.env_only_coef} is not one of env_coefs {cfg.env_coefs}")
    if len(cfg.seeds) < 1 or cfg.eval_every < 1:
        raise ConfigError("microcosm config: need at least one seed and eval_every ≥ 1")
    return cfg


class World:
    """What every run of one seed shares: tokenizer, format, backend, evaluation and probe sets."""

    def __init__(self, mc: MicrocosmConfig, seed: int):
        from pipeline.rollout.loop import RolloutConfig
        from pipeline.rollout.plain import PlainFormat
        from pipeline.rollout.rollouter import Rollouter
        from pipeline.sandbox.base import SandboxConfig
        from pipeline.sandbox.maze import MazeBackend
        from pipeline.tasks.maze import DIRECTIONS, INVALID, maze_tasks, maze_tokenizer

        self.mc, self.seed = mc, seed
        self.root = Path(mc.out_dir)
        self.tok_dir = self.root / "tokenizer"
        self.tok = maze_tokenizer(self.tok_dir)
        self.chat = PlainFormat(self.tok, actions=tuple(DIRECTIONS), invalid=INVALID)
        self.sandbox = SandboxConfig(backend="maze")
        self.backend = MazeBackend(self.sandbox)
        self.rollout = RolloutConfig(group_size=mc.group_size, tasks_per_step=mc.tasks_per_step, max_turns=mc.max_turns,
                                     temperature=mc.temperature, max_tokens_per_turn=2,
                                     max_context_tokens=mc.max_turns * 8 + 96, max_concurrent_episodes=256)  # fmt: skip
        self.ro = Rollouter(self.chat, self.backend, self.rollout, self.sandbox)  # engines vary: passed per call
        tasks = self.root / "tasks" / f"seed{seed}"
        base = 1_000_000 * (seed + 1)  # disjoint maze streams: eval, probe, data, per-step
        self.tasks = lambda sizes, n, offset: maze_tasks(sizes, n, tasks / str(offset), seed=base + offset)
        self.eval_tasks = self.tasks(mc.train_sizes, mc.eval_mazes, 1)
        self.unseen_eval_tasks = self.tasks([mc.unseen_size], mc.eval_mazes, 2)
        self.probe = self.reference(self.tasks(mc.train_sizes, mc.probe_mazes, 3), "bfs")

    def reference(self, tasks, policy: str):
        """Trajectories of a reference policy: ``bfs`` expert, ``random`` walk, or ``walk`` (a random
        walk that does not turn straight back unless at a dead end)."""
        from pipeline.engines.maze import MazeExpertEngine, RandomWalkEngine, distinct_batches

        out = []
        batches = distinct_batches(tasks) if policy == "bfs" else [tasks]
        for batch in batches:
            engine = (MazeExpertEngine(self.tok, batch, self.chat.stop_token_id) if policy == "bfs"
                      else RandomWalkEngine(self.tok, self.chat.stop_token_id, seed=self.seed,
                                            no_reversal=policy == "walk"))  # fmt: skip
            try:
                out += self.ro.rollouts(batch, engine=engine, group_size=1)
            finally:
                engine.close()
        return out

    def rollouts(self, engine, tasks, group_size: int, step: int):
        return self.ro.rollouts(tasks, engine=engine, group_size=group_size, step=step, seed=self.seed * 7919 + step)


class Agent:
    """A Megatron learner and the HF engine that samples from its weights."""

    def __init__(self, world: World, mode: str, env_coef: float, lr: float, load: str = "", workdir: Path | None = None,
                 loss: dict | None = None, optim: dict | None = None):  # fmt: skip
        from pipeline.engines.hf import HFEngine
        from pipeline.learner.config import LearnerConfig, ModelConfig, OptimConfig, ParallelConfig
        from pipeline.learner.learner import Learner
        from pipeline.losses import LossConfig
        from pipeline.weights.sync import export_hf_dir, sync_engine

        self.world = world
        if "MASTER_PORT" not in os.environ:  # one process, world size 1: any free port (runs side by side)
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                os.environ["MASTER_PORT"] = str(sock.getsockname()[1])
        model = ModelConfig(hf_config=world.mc.model, load=load, tokenizer=str(world.tok_dir))
        self.learner = Learner(model, ParallelConfig(backend="gloo"), OptimConfig(**{"lr": lr, "grad_clip": 1.0, **(optim or {})}),
                               LearnerConfig(micro_batch_tokens=world.mc.micro_batch_tokens),
                               LossConfig(mode=mode, env_coef=env_coef, **(loss or {})), seed=world.seed)  # fmt: skip
        hf_dir = export_hf_dir(self.learner, (workdir or world.root) / "engine_model", tokenizer_dir=world.tok_dir)
        self.engine = HFEngine(hf_dir, seed=world.seed, pad_token_id=world.tok.pad_token_id, max_batch=256,
                               prefix_cache=True)  # an episode's turns reuse its keys/values
        self._sync = lambda: sync_engine(self.learner, self.engine)
        self._sync()

    def train(self, trajs, advantages, step: int) -> dict:
        from pipeline.trajectory import pack_micro_batches

        shards = pack_micro_batches(trajs, advantages, self.world.mc.micro_batch_tokens,
                                    pad_token_id=self.world.tok.pad_token_id)  # fmt: skip
        m = self.last = self.learner.train_step(shards[0], step)
        self._sync()
        return m

    def evaluate(self, tasks, step: int) -> dict:
        from pipeline.evaluate import world_model_probe

        trajs = self.world.rollouts(self.engine, tasks, self.world.mc.eval_samples, 10_000 + step)
        ok = [t for t in trajs if not t.infra_error]
        per_task: dict[str, list[float]] = {}
        for t in ok:
            per_task.setdefault(t.task_id, []).append(t.reward)
        per_maze = [sum(v) / len(v) if (v := per_task.get(t.task_id)) else float("nan") for t in tasks]  # nan: infra only
        probe = world_model_probe(self.learner, self.world.probe, self.world.mc.micro_batch_tokens)
        return {"solve_rate": sum(t.reward for t in ok) / max(len(ok), 1), "probe_ce": probe["probe/output_ce"],
                "per_maze": " ".join(f"{v:.4g}" for v in per_maze)}

    def close(self):
        self.engine.close()


def _row(experiment, arm, seed, step, ev, train=None, t0=0.0) -> dict:
    train = train or {}
    return {"experiment": experiment, "arm": arm, "seed": seed, "step": step, "solve_rate": ev.get("solve_rate", ""),
            "probe_ce": ev.get("probe_ce", ""), "train_solve_rate": train.get("pass", ""),
            "loss": train.get("loss", ""), "seconds": round(time.perf_counter() - t0, 1),
            "per_maze": ev.get("per_maze", "")}  # fmt: skip


def _run_dir(world: World, name: str, keys: dict) -> Path:
    digest = hashlib.sha1(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:8]
    return world.root / "runs" / f"{name}-seed{world.seed}-{digest}"


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


def supervised_arm(world: World, arm: str) -> list[dict]:
    mc = world.mc
    coef = 0.0 if arm == "action" else mc.sup_env_coef
    keys = {k: getattr(mc, k) for k in ("model", "train_sizes", "max_turns", "temperature", "eval_every", "eval_mazes",
                                        "eval_samples", "probe_mazes", "sup_mazes", "sup_steps", "sup_batch", "sup_lr",
                                        "sup_optim", "micro_batch_tokens")}  # fmt: skip
    run_dir = _run_dir(world, f"supervised-{arm}", {**keys, "coef": coef})
    if (rows := _cached(run_dir)) is not None:
        return rows
    t0 = time.perf_counter()
    expert = lambda tasks: [t for t in world.reference(tasks, "bfs") if t.reward >= 1]  # noqa: E731
    if mc.sup_mazes:
        data = expert(world.tasks(mc.train_sizes, mc.sup_mazes, 4))
    else:  # fresh mazes every step, the same for both arms (offsets past every other stream)
        data = lambda step: expert(world.tasks(mc.train_sizes, mc.sup_batch, 100_000 + step))  # noqa: E731
    agent = Agent(world, "sft", coef, mc.sup_lr, workdir=run_dir, optim=mc.sup_optim)
    try:
        rows = _imitate(world, agent, data, mc.sup_steps, mc.sup_batch, "supervised", arm, t0, world.eval_tasks)
    finally:
        agent.close()
    return _save_curve(run_dir, rows)


def _rl_keys(mc: MicrocosmConfig) -> dict:
    return {k: getattr(mc, k) for k in ("model", "train_sizes", "max_turns", "temperature", "eval_every", "eval_mazes",
                                        "probe_mazes", "eval_samples", "warm_mazes", "warm_steps", "warm_env_coef",
                                        "sup_lr", "sup_optim", "sup_batch", "rl_steps", "rl_lr", "tasks_per_step",
                                        "group_size", "rl_loss")}  # fmt: skip


def warm_start(world: World) -> tuple[Path, dict]:
    """Imitation of random-walk trajectories (ACTION CE + ``warm_env_coef`` × OUTPUT CE): the one
    starting point of every RL arm. Modelling the terminal a little mirrors the paper's
    setting, a pretrained LM that has seen terminals; with ``warm_env_coef=0`` the OUTPUT CE
    starts far above uniform and ECHO's first steps are spent there."""
    mc = world.mc
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


def run_experiment(experiment: str, mc: MicrocosmConfig) -> Path:
    t0 = time.perf_counter()
    rows: list[dict] = []
    for seed in mc.seeds:
        world = World(mc, seed)
        if experiment == "supervised":
            for arm in ("action", "action+output"):
                rows += supervised_arm(world, arm)
        elif experiment in ("rl", "probe"):
            arms = [("grpo", 0.0)] + [("echo", c) for c in (mc.env_coefs if experiment == "rl" else [mc.env_only_coef])]
            for mode, coef in arms:
                rows += rl_arm(world, mode, coef)[0]
        elif experiment == "env_only":
            rows += env_only_arm(world)
        print(f"seed {seed} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    out = Path(mc.out_dir) / experiment
    out.mkdir(parents=True, exist_ok=True)
    for r in rows:
        r["experiment"] = experiment
    from pipeline.microcosm_report import interval_rows, plot, summarize

    with open(out / "curves.csv", "w", newline="") as f:
        w = csv.DictWriter(f, CURVE_FIELDS, restval="")
        w.writeheader()
        w.writerows(rows + interval_rows(experiment, rows))

    plot(experiment, rows, out / "curves.png")
    md = summarize(experiment, rows, mc) + f"\nwall time {time.perf_counter() - t0:.0f} s (cached runs excluded)\n"
    (out / "summary.md").write_text(md)
    (out / "config.json").write_text(json.dumps(asdict(mc), indent=2))
    print(md)
    print(f"wrote {out}/curves.csv, curves.png, summary.md")
    return out


def power_report(mc: MicrocosmConfig) -> str:
    from pipeline.microcosm_stats import episodes_for_half_width, predicted_half_width

    n = len(mc.seeds) * mc.eval_mazes * mc.eval_samples
    lines = [f"evaluation: {len(mc.seeds)} seeds × {mc.eval_mazes} mazes × {mc.eval_samples} samples = {n} episodes per arm and step"]
    for p in (0.5, 0.2, 0.9):
        lines.append(f"  at solve rate {p:g}: smallest detectable paired difference ±{predicted_half_width(len(mc.seeds), mc.eval_mazes, mc.eval_samples, p):.3f} "
                     f"(95% CI half-width when the seeds agree; seed-to-seed spread widens it)")  # fmt: skip
    lines.append(f"  ±0.05 at 0.5 needs {episodes_for_half_width(0.05, len(mc.seeds))} episodes per arm and step")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    import argparse

    from pipeline.config import ConfigError

    p = argparse.ArgumentParser(prog="echo-rl microcosm", description=__doc__.splitlines()[0])
    p.add_argument("experiment", choices=EXPERIMENTS)
    p.add_argument("--config", default="configs/microcosm/default.yaml", help="YAML (configs/microcosm/smoke.yaml: CI size)")
    p.add_argument("--power", action="store_true", help="print the smallest difference this config can detect; run nothing")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. seeds=[0,1,2,3] out_dir=runs/m2")
    a = p.parse_intermixed_args(argv)
    try:
        mc = load_microcosm_config(a.config, a.overrides)
    except ConfigError as e:
        print(f"echo-rl: {e}", file=sys.stderr)
        return 2
    if a.power:
        print(power_report(mc))
        return 0
    run_experiment(a.experiment, mc)
    return 0

