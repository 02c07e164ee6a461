"""The learner: one ECHO optimizer step over packed micro-batches, in Megatron's schedule.

Where it sits: packed micro-batches → **Learner.train_step** → optimizer step → weights.

    learner = Learner(cfg.model, cfg.parallel, cfg.optim, cfg.learner, cfg.loss, seed=...)
    metrics = learner.train_step(my_micro_batches, step)   # this DP rank's share
    learner.save(dir, step); learner.load(dir)

Normalization contract: before the schedule runs, the loss denominators (action tokens,
sequences, ...) are counted over this rank's micro-batches and all-reduced over the
data-parallel group, and ``loss_func`` divides by those global counts. The schedule is
told not to rescale (``calculate_per_token_loss=True``, and grads are finalized without
a token divisor), DDP sums gradients across DP ranks, so the gradient is exactly that
of the step's loss however the batch is split.
"""

from __future__ import annotations

import math
import time
from functools import partial

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.distributed import finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.pipeline_parallel import get_forward_backward_func

from pipeline.learner import checkpoint
from pipeline.learner.config import LearnerConfig, ModelConfig, OptimConfig, ParallelConfig
from pipeline.learner.model import build_gpt, load_hf_config, te_available, transformer_config
from pipeline.learner.parallel import init_parallel
from pipeline.losses import LossConfig, LossCounts, count_tokens, packed_echo_loss
from pipeline.trajectory import MicroBatch


def _finalize_grads_without_token_scaling(model, num_tokens, *args, **kwargs):
    # Our loss is already divided by global counts: sum grads, never divide again.
    return finalize_model_grads(model, None, *args, **kwargs)


def block_causal_mask(cu_seqlens: torch.Tensor, length: int) -> torch.Tensor:
    """[1, 1, S, S] bool, True = masked: each packed sequence attends causally to itself."""
    seg = torch.repeat_interleave(
        torch.arange(len(cu_seqlens) - 1), (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    )
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    allowed = causal & (seg[:, None] == seg[None, :])
    return (~allowed)[None, None]


class Learner:
    def __init__(
        self,
        model_cfg: ModelConfig,
        parallel_cfg: ParallelConfig,
        optim_cfg: OptimConfig,
        learner_cfg: LearnerConfig,
        loss_cfg: LossConfig,
        *,
        seed: int = 1234,
    ):
        self.cfg, self.loss_cfg = learner_cfg, loss_cfg
        self.topo = init_parallel(parallel_cfg.tensor, parallel_cfg.pipeline, backend=parallel_cfg.backend, seed=seed,
                                  timeout_s=parallel_cfg.collective_timeout_s)  # fmt: skip
        self.device = torch.device("cuda", torch.cuda.current_device()) if self.topo.on_gpu else torch.device("cpu")
        self.hf = load_hf_config(model_cfg.hf_config)
        dtype = torch.bfloat16 if model_cfg.dtype == "bfloat16" else torch.float32
        if dtype == torch.bfloat16 and not self.topo.on_gpu:
            raise ValueError(
                "model.dtype=bfloat16 needs a GPU: Megatron-Core's mixed-precision optimizer "
                "wraps CUDA tensors only. Use model.dtype=float32 on CPU."
            )
        self.tconfig = transformer_config(
            self.hf, tp=self.topo.tp, pp=self.topo.pp, dtype=dtype, init_std=model_cfg.init_std,
            on_gpu=self.topo.on_gpu, recompute=learner_cfg.recompute,
        )  # fmt: skip
        self.use_te = self.topo.on_gpu and te_available()
        self.attention = "te" if self.use_te and learner_cfg.attention == "auto" else learner_cfg.attention
        if self.attention == "auto":
            self.attention = "packed"
        impl = learner_cfg.logprob_impl
        if impl == "auto":  # no logits at all where TE's kernel is not there (tools/bench/logprob_memory.py)
            impl = "te" if self.use_te else "fused"
        self.logprob_impl = impl
        torch.manual_seed(seed)  # CPU init of the full weights, then sliced per TP rank
        gpt = build_gpt(
            self.hf, self.tconfig, pre_process=self.topo.is_first_stage,
            post_process=self.topo.is_last_stage, use_te=self.attention == "te", attention=self.attention,
        )  # fmt: skip
        gpt.set_logprob_options(
            vocab_size=self.hf["vocab_size"], temperature=learner_cfg.temperature, impl=impl,
            chunk_rows=learner_cfg.logprob_chunk_rows,
        )  # fmt: skip
        gpt.to(self.device)
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True, overlap_grad_reduce=False,
            use_distributed_optimizer=self.topo.on_gpu,
        )  # fmt: skip
        self.model = DistributedDataParallel(config=self.tconfig, ddp_config=ddp_config, module=gpt)
        self.tconfig.finalize_model_grads_func = _finalize_grads_without_token_scaling
        self.optimizer = get_megatron_optimizer(
            OptimizerConfig(
                optimizer="adam", lr=optim_cfg.lr, min_lr=optim_cfg.min_lr,
                weight_decay=optim_cfg.weight_decay, adam_beta1=optim_cfg.adam_beta1,
                adam_beta2=optim_cfg.adam_beta2, adam_eps=optim_cfg.adam_eps,
                clip_grad=optim_cfg.grad_clip, bf16=dtype == torch.bfloat16, params_dtype=dtype,
                use_distributed_optimizer=self.topo.on_gpu,
            ),
            [self.model],
        )  # fmt: skip
        self.scheduler = OptimizerParamScheduler(
            self.optimizer, init_lr=0.0 if optim_cfg.warmup_steps else optim_cfg.lr,
            max_lr=optim_cfg.lr, min_lr=optim_cfg.min_lr, lr_warmup_steps=optim_cfg.warmup_steps,
            lr_decay_steps=optim_cfg.warmup_steps + optim_cfg.decay_steps,
            lr_decay_style=optim_cfg.decay_style, start_wd=optim_cfg.weight_decay,
            end_wd=optim_cfg.weight_decay, wd_incr_steps=1, wd_incr_style="constant",
        )  # fmt: skip
        self.step = 0  # optimizer steps taken = the policy version of the weights
        if model_cfg.load:
            self.load(model_cfg.load, model_only=True)

    # ---- one step -------------------------------------------------------------------
    def global_counts(self, micro_batches: list[MicroBatch]) -> LossCounts:
        local = LossCounts(torch.zeros(4, dtype=torch.float64), 0.0, 0.0)
        for mb in micro_batches:
            local = local + count_tokens(
                mb.target_roles, mb.sequence_ids, mb.num_sequences + 1,
                env_targets=self.loss_cfg.env_targets, env_normalizer=self.loss_cfg.env_normalizer,
            )  # fmt: skip
        t = local.as_tensor().to(self.device)
        dist.all_reduce(t, group=parallel_state.get_data_parallel_group())
        return LossCounts.from_tensor(t)

    def _forward_step(self, data_iterator, model):
        mb: MicroBatch = next(data_iterator)
        return self._run_model(mb, model), partial(self._loss_func, mb)

    def _run_model(self, mb: MicroBatch, model) -> torch.Tensor:
        """[1, S] -log p(target) on the last stage; hidden states on the others."""
        S = mb.num_tokens
        kwargs = {}
        if self.attention in ("te", "packed"):
            from megatron.core.packed_seq_params import PackedSeqParams

            cu = mb.cu_seqlens.to(self.device)
            max_len = int((mb.cu_seqlens[1:] - mb.cu_seqlens[:-1]).max())
            kwargs["packed_seq_params"] = PackedSeqParams(
                qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=max_len,
                max_seqlen_kv=max_len,
            )  # fmt: skip
            attention_mask = None
        else:
            attention_mask = block_causal_mask(mb.cu_seqlens, S).to(self.device)
        return model(
            mb.input_ids.to(self.device), mb.position_ids.to(self.device), attention_mask,
            labels=mb.target_ids.to(self.device), **kwargs,
        )  # fmt: skip

    def _loss_func(self, mb: MicroBatch, nll: torch.Tensor):
        # nll: [1, S] = -log p(target) from the fused vocab-parallel call
        dev = nll.device
        roles = mb.target_roles.reshape(-1).to(dev)
        loss, metrics = packed_echo_loss(
            -nll.reshape(-1), mb.sampler_logprobs.reshape(-1).to(dev), mb.advantages.to(dev),
            roles, mb.sequence_ids.reshape(-1).to(dev), mb.num_sequences + 1, self._counts,
            env_coef=self._coefs[1], pg_coef=self._coefs[0], sft_coef=self._coefs[2], clip_low=self.loss_cfg.clip_low,
            clip_high=self.loss_cfg.clip_high, env_targets=self.loss_cfg.env_targets,
            env_normalizer=self.loss_cfg.env_normalizer, pg_reduction=self.loss_cfg.pg_reduction,
            tis_cap=self.loss_cfg.tis_cap,
        )  # fmt: skip
        num_action = (roles == 1).sum().to(torch.int)
        return loss, num_action, metrics

    def train_step(self, micro_batches: list[MicroBatch], step: int | None = None) -> dict[str, float]:
        """One optimizer step on this DP rank's micro-batches (all DP ranks call it)."""
        t0 = time.perf_counter()
        step = self.step if step is None else step
        self._coefs = self.loss_cfg.coefs(step)
        self._counts = self.global_counts(micro_batches)
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        seq_len = max(mb.num_tokens for mb in micro_batches)
        reports = get_forward_backward_func()(
            forward_step_func=self._forward_step, data_iterator=iter(micro_batches),
            model=[self.model], num_microbatches=len(micro_batches), seq_length=seq_len,
            micro_batch_size=1, forward_only=False,
        )  # fmt: skip
        metrics = self._reduce_reports(reports)
        lr = self.optimizer.param_groups[0]["lr"]
        if not math.isfinite(metrics["loss"]):
            return self._skip_nonfinite(step, metrics, lr)
        ok, grad_norm, _ = self.optimizer.step()
        if not ok or (grad_norm is not None and not math.isfinite(grad_norm)):
            # finite loss, non-finite gradient: the fp32 optimizer may have applied it already
            raise FloatingPointError(f"step {step}: non-finite gradient norm {grad_norm} (loss "
                                     f"{metrics['loss']}); resume from the last checkpoint")  # fmt: skip
        self.scheduler.step(increment=1)
        self.step += 1
        elapsed = time.perf_counter() - t0
        tokens = float(sum(mb.num_tokens for mb in micro_batches)) * self.topo.dp
        metrics.update(
            grad_norm=float(grad_norm or 0.0), lr=lr, pg_coef=self._coefs[0],
            env_coef=self._coefs[1], step_time_s=elapsed, tokens_per_s=tokens / elapsed, skipped_nonfinite=0.0,
        )  # fmt: skip
        return metrics

    def _skip_nonfinite(self, step: int, metrics: dict, lr: float) -> dict:
        """A non-finite loss or gradient: the weights stay as they were. ``stop`` raises; ``skip``
        counts the step as taken (the scheduler and version advance) and reports it."""
        self.optimizer.zero_grad()
        self.model.zero_grad_buffer()
        if self.cfg.on_nonfinite == "stop":
            raise FloatingPointError(
                f"step {step}: non-finite loss {metrics['loss']} (pg {metrics['pg_loss']}, env_ce "
                f"{metrics['env_ce']}); weights not updated. learner.on_nonfinite=skip skips such steps"
            )
        self.scheduler.step(increment=1)
        self.step += 1
        return {**metrics, "lr": lr, "skipped_nonfinite": 1.0, "grad_norm": float("nan")}

    def _reduce_reports(self, reports: list[dict]) -> dict[str, float]:
        """Sum micro-batch contributions (last PP stage), then over PP and DP groups."""
        names = _METRIC_NAMES
        vec = torch.zeros(len(names), dtype=torch.float64, device=self.device)
        for r in reports:
            for i, k in enumerate(names):
                vec[i] += float(r[k])
        dist.all_reduce(vec, group=parallel_state.get_pipeline_model_parallel_group())
        dist.all_reduce(vec, group=parallel_state.get_data_parallel_group())
        return {k: float(v) for k, v in zip(names, vec.tolist())}

    @torch.no_grad()
    def logprobs(self, micro_batches: list[MicroBatch]) -> list[torch.Tensor]:
        """Learner log p of every target token, one [S] fp32 tensor per micro-batch, on
        every rank (forward only, through the same schedule and fused log-prob path).
        Used for the sampler-vs-learner gap and the world-model probe."""
        collected: list[torch.Tensor] = []

        def collect(nll):
            collected.append(-nll.reshape(-1).float())
            return nll.sum(), {}

        def forward_step(data_iterator, model):
            return self._run_model(next(data_iterator), model), collect

        self.model.eval()
        get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iter(micro_batches),
            model=[self.model], num_microbatches=len(micro_batches),
            seq_length=max(mb.num_tokens for mb in micro_batches), micro_batch_size=1,
            forward_only=True,
        )  # fmt: skip
        self.model.train()
        out = []
        last = parallel_state.get_pipeline_model_parallel_last_rank()
        for i, mb in enumerate(micro_batches):
            t = collected[i] if collected else torch.empty(mb.num_tokens, device=self.device)
            dist.broadcast(t, src=last, group=parallel_state.get_pipeline_model_parallel_group())
            out.append(t.cpu())
        return out

    # ---- checkpoints ----------------------------------------------------------------
    def save(self, directory: str, step: int | None = None) -> None:
        checkpoint.save(self, directory, self.step if step is None else step, keep=self.cfg.keep_checkpoints,
                        keep_every=self.cfg.keep_every)

    def load(self, directory: str, *, model_only: bool = False) -> int:
        """Resume from the latest checkpoint in ``directory`` (``model_only``: weights only)."""
        self.step = checkpoint.load(self, directory, model_only=model_only)
        return self.step


_METRIC_NAMES = (
    "loss", "pg_loss", "kl_ref", "clip_frac_high", "clip_frac_low", "tis_truncated_frac", "logprob_gap", "logprob_abs_gap", "env_ce", "action_ce",
    "env_ce_output", "env_ce_warning", "tokens_prompt", "tokens_action", "tokens_output",
    "tokens_warning",
)  # fmt: skip
