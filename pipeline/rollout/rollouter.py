"""The rollout component: one object that owns what every rollout needs — the tokenizer
and its format, the sandbox backend, the generation engine and the sampling config — so
training, ``echo-rl eval``, the warm start and the microcosm set it up one way.

Where it sits: main / evaluate / warmstart / microcosm → **Rollouter** →
``run_rollouts`` (agent loop, sandboxes, verifier) → trajectories; and learner →
``Rollouter.update_weights`` → engine. Evaluation (``pipeline/evaluate.py``) drives a
Rollouter; nothing here imports it back.

    ro = Rollouter.from_config(cfg, engine_dir)          # rank 0 of a training run
    trajs = ro.train_batch(tasks, step, seed)
    trajs = ro.rollouts(tasks, group_size=8, temperature=0.6, engine=other)
    ro.update_weights(learner)                            # every learner rank calls it
    staged = ro.stage_weights(learner)                    # asynchronous runs (rollout/producer.py)
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path


class Rollouter:
    def __init__(self, chat, backend, rollout_cfg, sandbox_cfg, engine=None):
        self.chat, self.backend, self.engine = chat, backend, engine
        self.rollout_cfg, self.sandbox_cfg = rollout_cfg, sandbox_cfg

    @classmethod
    def from_config(cls, cfg, engine_dir: Path | None = None, *, reap: bool = False) -> "Rollouter":
        """From a run's config: the tokenizer and chat format of ``cfg.model`` /
        ``cfg.rollout``, the backend of ``cfg.sandbox`` (``reap``: remove what killed
        trainers left), and, given ``engine_dir`` (an HF dir of the current weights), the
        engine of ``cfg.engine``."""
        from pipeline.engines import make_engine
        from pipeline.rollout.chat import ChatFormat, load_tokenizer
        from pipeline.sandbox import make_backend

        tok = load_tokenizer(cfg.model.tokenizer)
        chat = ChatFormat(tok, template_kwargs=cfg.rollout.template_kwargs)
        backend = make_backend(cfg.sandbox)
        if reap:
            backend.reap_orphans()
        engine = None
        if engine_dir is not None:
            engine = make_engine(cfg.engine, engine_dir, logprob_temperature=cfg.learner.temperature,
                                 seed=cfg.run.seed, pad_token_id=tok.pad_token_id or 0,
                                 max_model_len=cfg.rollout.max_context_tokens)  # fmt: skip
        return cls(chat, backend, cfg.rollout, cfg.sandbox, engine)

    @property
    def tok(self):
        return self.chat.tok

    def rollouts(self, tasks, *, engine=None, group_size: int | None = None, step: int = 0, seed: int = 0,
                 temperature: float | None = None, progress: bool = False, on_episode_end=None):  # fmt: skip
        """Episodes of ``tasks`` with ``engine`` (default: this one's)."""
        from pipeline.rollout.loop import run_rollouts

        rc = self.rollout_cfg if temperature is None else replace(self.rollout_cfg, temperature=temperature)
        return run_rollouts(tasks, engine or self.engine, self.backend, self.chat, rc, self.sandbox_cfg,
                            group_size=group_size, step=step, seed=seed, progress=progress,
                            on_episode_end=on_episode_end)  # fmt: skip

    def train_batch(self, tasks, step: int, seed: int):
        """A training step's groups (``rollout.group_size`` episodes per task)."""
        return self.rollouts(tasks, step=step, seed=seed, progress=True)

    def update_weights(self, learner) -> None:
        """The learner's weights to the engine (every learner rank calls it; rank 0 holds
        the engine)."""
        from pipeline.weights.sync import sync_engine

        sync_engine(learner, self.engine)

    def stage_weights(self, learner):
        """An asynchronous run's weight update: every learner rank streams, rank 0's engine
        stages the version (``BatchProducer.publish`` serves it between batches)."""
        from pipeline.weights.sync import stage_engine

        return stage_engine(learner, self.engine)

    def health(self) -> dict:
        """The engine's and the sandbox backend's per-step gauges (servers, hosts alive)."""
        return {**(self.engine.health() if self.engine else {}), **(self.backend.health() if self.backend else {})}

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None
