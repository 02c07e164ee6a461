"""The microcosm's world: its config, the maze world (tasks, the maze sandbox, the expert and
random-walk engines) and the agent (a tiny Megatron learner + the HF engine, the same
weight sync as ``echo-rl train``). See ``pipeline/microcosm/__init__.py``."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
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
    feedback: str = "distance"  # what a move's response says: distance (moved 8 …) or compare (closer 8 … / farther 10 …)
    temperature: float = 1.0  # sampling temperature (rollouts and evaluation)
    micro_batch_tokens: int = 512  # packed attention is unfused on CPU: S² per micro-batch
    eval_every: int = 5  # steps between evaluations (and the last step)
    eval_mazes: int = 48  # fresh evaluation mazes per seed
    eval_samples: int = 2  # sampled episodes per evaluation maze
    reach_targets: list[float] = field(default_factory=lambda: [0.5, 0.8])  # "steps to reach" these solve rates
    probe_mazes: int = 32  # held-out BFS-expert trajectories for the world-model probe
    # supervised
    sup_expert: str = "bfs"  # the imitated expert: bfs (shortest path; knows the maze) or explore (sees what the agent sees)
    sup_mazes: int = 512  # expert trajectories to imitate (0: sup_batch fresh mazes every step)
    sup_steps: int = 60
    sup_batch: int = 32  # trajectories per step
    sup_lr: float = 2e-3
    sup_env_coef: float = 1.0  # λ on the OUTPUT CE in the ACTION+OUTPUT arm
    sup_optim: dict = field(default_factory=dict)  # extra OptimConfig fields of imitation (supervised, warm start)
    # rl: warm start, then GRPO / ECHO arms
    warm_mazes: int = 256  # random walks (no straight reversals) imitated by the warm start
    warm_steps: int = 40
    warm_env_coef: float = 1.0  # the warm start also models the terminal (as a pretrained LM has seen terminals)
    rl_start: str = "walk"  # walk: the random-walk warm start; supervised-action / supervised-action+output: that arm's final weights
    rl_steps: int = 15
    rl_lr: float = 5e-5
    tasks_per_step: int = 8
    group_size: int = 8
    env_coefs: list[float] = field(default_factory=lambda: [0.05, 0.2])
    rl_loss: dict = field(default_factory=lambda: {"pg_reduction": "sequence_mean"})  # extra LossConfig fields of the RL arms
    speed_fractions: list[float] = field(default_factory=lambda: [1.0, 0.8])  # rl: steps to GRPO's start + f × its best gain
    sweep_lrs: list[float] = field(default_factory=lambda: [2e-5, 1e-4, 5e-4])  # sweep: GRPO alone at each rl_lr
    # env_only
    env_only_steps: int = 15
    env_only_coef: float = 0.05  # the ECHO arm it continues from (one of env_coefs)
    env_only_lr: float = 5e-5


EXPERIMENTS = ("supervised", "rl", "probe", "env_only", "sweep", "prior")
RL_STARTS = ("walk", "supervised-action", "supervised-action+output")


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
    from pipeline.tasks.maze import EXPERTS, FEEDBACKS

    if cfg.feedback not in FEEDBACKS:
        raise ConfigError(f"microcosm config key 'feedback': {cfg.feedback!r} is not one of {FEEDBACKS}")
    if cfg.sup_expert not in EXPERTS:
        raise ConfigError(f"microcosm config key 'sup_expert': {cfg.sup_expert!r} is not one of {EXPERTS}")
    if cfg.rl_start not in RL_STARTS:
        raise ConfigError(f"microcosm config key 'rl_start': {cfg.rl_start!r} is not one of {RL_STARTS}")
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
        tasks = self.root / "tasks" / (f"seed{seed}" if mc.feedback == "distance" else f"seed{seed}-{mc.feedback}")
        base = 1_000_000 * (seed + 1)  # disjoint maze streams: eval, probe, data, per-step
        self.tasks = lambda sizes, n, offset: maze_tasks(sizes, n, tasks / str(offset), seed=base + offset,
                                                              feedback=mc.feedback)
        self.eval_tasks = self.tasks(mc.train_sizes, mc.eval_mazes, 1)
        self.unseen_eval_tasks = self.tasks([mc.unseen_size], mc.eval_mazes, 2)
        self.probe = self.reference(self.tasks(mc.train_sizes, mc.probe_mazes, 3), "bfs")

    def reference(self, tasks, policy: str):
        """Trajectories of a reference policy: an expert (``bfs``, ``explore``: ``EXPERTS``),
        ``random`` walk, or ``walk`` (a random walk that does not turn straight back unless at a dead end)."""
        from pipeline.engines.maze import MazeExpertEngine, RandomWalkEngine, distinct_batches
        from pipeline.tasks.maze import EXPERTS

        out = []
        expert = policy in EXPERTS
        batches = distinct_batches(tasks) if expert else [tasks]
        for batch in batches:
            engine = (MazeExpertEngine(self.tok, batch, self.chat.stop_token_id, policy) if expert
                      else RandomWalkEngine(self.tok, self.chat.stop_token_id, seed=self.seed,
                                            no_reversal=policy == "walk"))  # fmt: skip
            try:
                out += self.ro.rollouts(batch, engine=engine, group_size=1)
            finally:
                engine.close()
        return out

    def rollouts(self, engine, tasks, group_size: int, step: int):
        """The model's episodes, batched in lockstep (``pipeline/engines/lockstep.py``): a
        rerun with the same seed is bit-identical."""
        from pipeline.engines.lockstep import Lockstep

        n = len(tasks) * group_size
        if n > self.rollout.max_concurrent_episodes:  # lockstep needs every episode in flight
            raise ValueError(f"{n} episodes in one rollout, over max_concurrent_episodes={self.rollout.max_concurrent_episodes}")
        lock = Lockstep(engine, n)
        return self.ro.rollouts(tasks, engine=lock, group_size=group_size, step=step, seed=self.seed * 7919 + step,
                                on_episode_end=lock.done)  # fmt: skip


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
        self._engine = HFEngine(hf_dir, seed=world.seed, pad_token_id=world.tok.pad_token_id, max_batch=256,
                                prefix_cache=True, prefix_cache_bytes=8 << 30)  # an episode's turns reuse its keys/values
        self._sync = lambda: sync_engine(self.learner, self._engine)
        self._sync()
        self._stale = False

    @property
    def engine(self):
        """The engine, with the learner's latest weights (sent when first sampled after a
        step: supervised arms train many steps between evaluations)."""
        if self._stale:
            self._sync()
            self._stale = False
        return self._engine

    def train(self, trajs, advantages, step: int) -> dict:
        from pipeline.trajectory import pack_micro_batches

        shards = pack_micro_batches(trajs, advantages, self.world.mc.micro_batch_tokens,
                                    pad_token_id=self.world.tok.pad_token_id)  # fmt: skip
        m = self.last = self.learner.train_step(shards[0], step)
        self._stale = True
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
        self._engine.close()
