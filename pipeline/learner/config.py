"""Schemas of the learner's sub-configs (model, parallelism, optimizer, step)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ModelConfig:
    hf_config: str = "configs/models/qwen3-tiny.json"  # HF Qwen3 config.json (file or dir)
    dtype: str = "float32"  # float32 | bfloat16 (params and activations; grads reduce in fp32)
    init_std: float = 0.02  # std of the random init when no checkpoint is loaded
    load: str = ""  # Megatron dist checkpoint dir to start from ("" = random init)
    tokenizer: str = "configs/tokenizer/tiny"  # HF tokenizer dir with a chat template
    warmstart_steps: int = 0  # > 0 and no checkpoint at `load` yet: build it first (tools/warmstart.py)

    def check(self) -> list[tuple[str, str]]:
        errs = []
        if self.dtype not in ("float32", "bfloat16"):
            errs.append(("dtype", f"must be float32 or bfloat16, got {self.dtype!r}"))
        if self.init_std <= 0:
            errs.append(("init_std", f"must be > 0, got {self.init_std}"))
        return errs


@dataclass
class ParallelConfig:
    tensor: int = 1  # tensor-parallel size
    pipeline: int = 1  # pipeline-parallel size; data-parallel = world / (tensor · pipeline)
    backend: str = "auto"  # auto (nccl with a GPU, gloo without) | nccl | gloo
    # every collective's timeout. No rank waits in one for rollouts (the hand-over polls the
    # store), but a step's learner collectives and checkpoint writes must fit; the default
    # also covers a step's rollout (the paper: a 10-minute agent phase + a 2-minute verifier)
    collective_timeout_s: float = 3600.0

    def check(self) -> list[tuple[str, str]]:
        errs = [(n, f"must be ≥ 1, got {getattr(self, n)}") for n in ("tensor", "pipeline")
                if getattr(self, n) < 1]  # fmt: skip
        if self.collective_timeout_s <= 0:
            errs.append(("collective_timeout_s", f"must be > 0, got {self.collective_timeout_s}"))
        if self.backend not in ("auto", "nccl", "gloo"):
            errs.append(("backend", f"must be auto, nccl or gloo, got {self.backend!r}"))
        return errs


@dataclass
class OptimConfig:
    lr: float = 1e-6  # peak learning rate
    min_lr: float = 0.0  # floor of the decay
    warmup_steps: int = 0  # linear warmup from 0
    decay_style: str = "constant"  # constant | linear | cosine (after warmup, to min_lr)
    decay_steps: int = 1000  # length of the decay
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    grad_clip: float = 1.0  # global grad-norm clip; 0 = off

    def check(self) -> list[tuple[str, str]]:
        errs = []
        if self.lr < 0 or self.min_lr < 0 or self.min_lr > self.lr:
            errs.append(("lr", f"need 0 ≤ min_lr ≤ lr, got lr={self.lr} min_lr={self.min_lr}"))
        if self.decay_style not in ("constant", "linear", "cosine"):
            errs.append(("decay_style", f"must be constant, linear or cosine, got {self.decay_style!r}"))
        for n in ("warmup_steps", "weight_decay", "grad_clip"):
            if getattr(self, n) < 0:
                errs.append((n, f"must be ≥ 0, got {getattr(self, n)}"))
        if self.decay_steps < 1:
            errs.append(("decay_steps", f"must be ≥ 1, got {self.decay_steps}"))
        return errs


@dataclass
class LearnerConfig:
    micro_batch_tokens: int = 8192  # token budget of one packed micro-batch
    logprob_impl: str = "auto"  # auto (te on GPU, fused on CPU) | fused (output layer + log-probs, no logits) | te | chunked | megatron
    logprob_chunk_rows: int = 64  # rows per chunk of the chunked log-prob kernel
    temperature: float = 1.0  # logits ÷ T before log-softmax, for BOTH loss terms (ref code: 0.8)
    checkpoint_every: int = 0  # steps between checkpoints (0 = only at the end)
    keep_checkpoints: int = 2  # the newest N checkpoints are kept, older ones removed (0 = keep all)
    keep_every: int = 0  # also keep every checkpoint whose step is a multiple of this (0 = none)
    attention: str = "auto"  # auto (TE's fused attention where TE imports, else packed) | packed (THD, no S×S mask: learner/attention.py) | mask (block-diagonal [S, S] mask, Megatron's local attention: the reference)
    recompute: str = "none"  # activation recomputation: none | selective (core attention) | full (each layer's input)
    on_nonfinite: str = "stop"  # a non-finite loss: stop (raise, say where) | skip (no update, counted)

    def check(self) -> list[tuple[str, str]]:
        errs = []
        if self.micro_batch_tokens < 8 or self.micro_batch_tokens % 8:
            errs.append(("micro_batch_tokens", f"must be a positive multiple of 8, got {self.micro_batch_tokens}"))
        if self.logprob_impl not in ("auto", "fused", "te", "chunked", "megatron"):
            errs.append(("logprob_impl", f"must be auto, fused, te, chunked or megatron, got {self.logprob_impl!r}"))
        if self.logprob_chunk_rows < 1:
            errs.append(("logprob_chunk_rows", f"must be ≥ 1, got {self.logprob_chunk_rows}"))
        if self.temperature <= 0:
            errs.append(("temperature", f"must be > 0, got {self.temperature}"))
        if self.on_nonfinite not in ("stop", "skip"):
            errs.append(("on_nonfinite", f"must be stop or skip, got {self.on_nonfinite!r}"))
        if self.keep_checkpoints < 0:
            errs.append(("keep_checkpoints", f"must be ≥ 0, got {self.keep_checkpoints}"))
        if self.attention not in ("auto", "packed", "mask"):
            errs.append(("attention", f"must be auto, packed or mask, got {self.attention!r}"))
        if self.recompute not in ("none", "selective", "full"):
            errs.append(("recompute", f"must be none, selective or full, got {self.recompute!r}"))
        if self.keep_every < 0:
            errs.append(("keep_every", f"must be ≥ 0, got {self.keep_every}"))
        if self.checkpoint_every < 0:
            errs.append(("checkpoint_every", f"must be ≥ 0, got {self.checkpoint_every}"))
        return errs
