"""Per-token log-probs of the realized tokens from vocab-parallel logits, no full softmax.

Where it sits: learner forward (output layer) → **token_logprobs** → losses (both terms).

One call gives ``log p(target_i)`` for every position from the local vocab shard
``logits: [N, V/tp]``. Implementations (``impl``):

- ``te``: Transformer Engine's ``parallel_cross_entropy`` (Triton, TP group), called with
  the arguments Megatron-Core's ``te_parallel_cross_entropy`` wrapper uses. GPU only. It writes the gradient into the logits buffer in
  place, so no [N × V] fp32 tensor is ever materialized.
- ``chunked``: ours, for CPU (and any device without TE). Same contract as TE's
  kernel: fp32 math on ``chunk_rows`` rows at a time (extra memory O(chunk_rows · V)),
  log-sum-exp combined across TP ranks with one all-gather of [N] floats, and the
  backward writes ``g · (onehot - softmax) / T`` into the logits buffer in place. The
  forward never modifies its input. Because the backward reuses the logits buffer, the
  logits must not be needed by anything else after this call (autograd raises if they
  are: the buffer's version counter changes).
- ``fused``: the output layer and the log-probs in one function
  (``fused_linear_token_logprobs``): from the final hidden states [N, H] and this rank's
  output-layer weight [V/tp, H], ``chunk_rows`` rows at a time, the chunk's logits are
  made, reduced to log-sum-exp and the target's logit, and dropped; the backward makes
  them again and turns them into the chunk's share of ``dL/dhidden`` and ``dL/dweight``.
  No [N, V/tp] tensor exists at any time, forward or backward (extra memory
  O(chunk_rows · V/tp)); the price is the logits' matmul once more in the backward.
- ``megatron``: Megatron-Core's ``vocab_parallel_cross_entropy``. It computes in fp32
  and subtracts the max *in place* on fp32 input, so fp32 logits are cloned first
  (the guard); it keeps a full fp32 softmax for backward (≈ 2–4 × the bf16 logits bytes).

``temperature``: logits are divided by T before the softmax (the reference code uses the
sampling temperature; plain CE is T = 1). ``vocab_size``: columns at or past the true
vocabulary (padding for TP divisibility) are excluded from the softmax.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _tp(group) -> tuple[int, int]:
    if group is None or not dist.is_initialized():
        return 1, 0
    return dist.get_world_size(group), dist.get_rank(group)


def _shard_logprobs(chunk_logits, N, Vl, targets, tp_group, vocab_size, temperature, chunk_rows, acc):
    """The forward both kernels share: ``log p(target)`` [N] from this rank's vocab shard,
    ``chunk_logits(rows, valid)`` giving the rows' logits [R, valid] in ``acc``, one chunk at
    a time; the shards combined with one all-gather and one all-reduce of [N]. Returns
    (logp, local target ids, in-shard mask, log-sum-exp, valid columns) for the backward."""
    tp_size, tp_rank = _tp(tp_group)
    start = tp_rank * Vl
    valid = max(0, min(Vl, vocab_size - start))  # real (unpadded) columns of this shard
    local = targets - start
    in_shard = (local >= 0) & (local < valid)
    local = torch.where(in_shard, local, torch.zeros_like(local))
    lse = torch.full((N,), float("-inf"), dtype=acc, device=targets.device)
    picked = torch.zeros(N, dtype=acc, device=targets.device)
    if valid > 0:
        for i in range(0, N, chunk_rows):
            rows = slice(i, i + chunk_rows)
            x = chunk_logits(rows, valid)
            if temperature != 1.0:
                x = x / temperature  # (not in place: the chunked kernel's x may be its input)
            lse[rows] = torch.logsumexp(x, dim=-1)
            picked[rows] = x.gather(1, local[rows, None]).squeeze(1)
            del x
    picked = torch.where(in_shard, picked, torch.zeros_like(picked))
    if tp_size > 1:
        gathered = [torch.empty_like(lse) for _ in range(tp_size)]
        dist.all_gather(gathered, lse, group=tp_group)
        lse = torch.logsumexp(torch.stack(gathered), dim=0)
        dist.all_reduce(picked, group=tp_group)
    return picked - lse, local, in_shard, lse, valid


class _ChunkedTokenLogprob(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, tp_group, vocab_size, temperature, chunk_rows):
        # logits: [N, Vl] local shard; targets: [N] global token ids
        logp, local, in_shard, lse, valid = _shard_logprobs(
            lambda rows, valid: logits[rows, :valid].float(), logits.shape[0], logits.shape[1], targets, tp_group,
            vocab_size, temperature, chunk_rows, torch.float32)  # fmt: skip
        ctx.save_for_backward(logits, local, in_shard, lse)
        ctx.valid, ctx.temperature, ctx.chunk_rows = valid, temperature, chunk_rows
        return logp

    @staticmethod
    def backward(ctx, grad):
        logits, local, in_shard, lse = ctx.saved_tensors
        T, R, valid = ctx.temperature, ctx.chunk_rows, ctx.valid
        grad = grad.float()
        # d logp / d x_j = onehot_j - softmax_j, times 1/T for the temperature
        for i in range(0, logits.shape[0], R):
            rows = slice(i, i + R)
            x = logits[rows, :valid].float()
            if T != 1.0:
                x = x / T
            g = torch.exp(x - lse[rows, None]).mul_(-grad[rows, None])
            del x
            hit = (grad[rows] * in_shard[rows].float())[:, None]
            g.scatter_add_(1, local[rows, None], hit)
            if T != 1.0:
                g.div_(T)
            logits[rows, :valid].copy_(g)
            del g
        if valid < logits.shape[1]:
            logits[:, valid:].zero_()
        return logits, None, None, None, None, None


class _FusedLinearTokenLogprob(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, tp_group, vocab_size, temperature, chunk_rows):
        # hidden: [N, H]; weight: [Vl, H] this rank's shard; targets: [N] global token ids.
        # Each chunk's logits [R, valid] are made, reduced and dropped: never all of them at once.
        acc = torch.promote_types(hidden.dtype, torch.float32)  # fp32 math (fp64 stays fp64)
        logp, local, in_shard, lse, valid = _shard_logprobs(
            lambda rows, valid: (hidden[rows] @ weight[:valid].t()).to(acc), hidden.shape[0], weight.shape[0],
            targets, tp_group, vocab_size, temperature, chunk_rows, acc)  # fmt: skip
        ctx.save_for_backward(hidden, weight, local, in_shard, lse)
        ctx.valid, ctx.temperature, ctx.chunk_rows = valid, temperature, chunk_rows
        return logp.float()

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, local, in_shard, lse = ctx.saved_tensors
        T, R, valid = ctx.temperature, ctx.chunk_rows, ctx.valid
        acc = lse.dtype
        grad = grad.to(acc)
        w = weight[:valid]
        d_hidden = torch.zeros_like(hidden)
        d_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device)
        for i in range(0, hidden.shape[0], R):
            rows = slice(i, i + R)
            h = hidden[rows]
            g = (h @ w.t()).to(acc)  # the chunk's logits again, turned into their gradient in place:
            if T != 1.0:  # d logp / d logits_j = (onehot_j - softmax_j) / T
                g.div_(T)
            g.sub_(lse[rows, None]).exp_().mul_(-grad[rows, None])
            g.scatter_add_(1, local[rows, None], (grad[rows] * in_shard[rows].to(acc))[:, None])
            if T != 1.0:
                g.div_(T)
            d_hidden[rows] = g.to(hidden.dtype) @ w
            d_weight[:valid].addmm_(g.t(), h.to(acc))
            del g
        return d_hidden, d_weight if d_weight.dtype == weight.dtype else d_weight.to(weight.dtype), None, None, None, None, None


def fused_linear_token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, tp_group=None,
                                vocab_size: int | None = None, temperature: float = 1.0,
                                chunk_rows: int = 256) -> torch.Tensor:  # fmt: skip
    """``log p(targets)`` under ``softmax(hidden @ weight.T / T)`` without the logits.

    hidden: [..., H] (already in the TP region: the caller's copy-to-TP-region all-reduces
    its gradient); weight: [V/tp, H] (this rank's output-layer shard, tied or not);
    targets: [...] global ids. Returns fp32 [...]. Differentiable w.r.t. both."""
    lead, H = hidden.shape[:-1], hidden.shape[-1]
    tp_size, _ = _tp(tp_group)
    vocab_size = weight.shape[0] * tp_size if vocab_size is None else vocab_size
    out = _FusedLinearTokenLogprob.apply(hidden.reshape(-1, H), weight, targets.reshape(-1), tp_group, vocab_size,
                                         temperature, chunk_rows)  # fmt: skip
    return out.view(lead)


def _mask_padding_(logits: torch.Tensor, vocab_size: int, tp_group) -> None:
    """Set padded vocab columns to the dtype's minimum, in place (excluded from softmax)."""
    _, tp_rank = _tp(tp_group)
    Vl = logits.shape[-1]
    valid = max(0, min(Vl, vocab_size - tp_rank * Vl))
    if valid < Vl:
        logits[..., valid:] = torch.finfo(logits.dtype).min


def token_logprobs(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    tp_group=None,
    vocab_size: int | None = None,
    temperature: float = 1.0,
    impl: str = "chunked",
    chunk_rows: int = 64,
) -> torch.Tensor:
    """``log p(targets)`` under ``softmax(logits / T)``.

    logits: [..., V/tp] (this rank's vocab shard, any float dtype); targets: [...] global ids.
    Returns fp32 [...]. Differentiable w.r.t. ``logits``.
    """
    lead, Vl = logits.shape[:-1], logits.shape[-1]
    tp_size, _ = _tp(tp_group)
    vocab_size = Vl * tp_size if vocab_size is None else vocab_size
    if impl == "chunked":
        out = _ChunkedTokenLogprob.apply(
            logits.reshape(-1, Vl), targets.reshape(-1), tp_group, vocab_size, temperature,
            chunk_rows,
        )  # fmt: skip
        return out.view(lead)
    if impl == "megatron":
        from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

        x = logits / temperature if temperature != 1.0 else logits
        if x.dtype == torch.float32 and x is logits:
            x = x.clone()  # Megatron subtracts the max in place on fp32 input
        if Vl * tp_size != vocab_size:
            x = x.clone() if x is logits else x
            _mask_padding_(x, vocab_size, tp_group)
        return -vocab_parallel_cross_entropy(x, targets).float()
    if impl == "te":
        try:  # TE's Triton kernel, called as Megatron-Core's te_parallel_cross_entropy does
            from transformer_engine.pytorch.cross_entropy import parallel_cross_entropy
        except ImportError as e:
            raise RuntimeError("logprob_impl=te needs Transformer Engine (GPU); use chunked") from e
        if temperature != 1.0:
            # scale in fp32: bf16 logits / T rounded back to bf16 cost up to 0.07 nats per
            # token (measured on an H100, V=151,936, T=0.8); this holds an fp32 copy (2× the
            # bf16 logits bytes), which T = 1 never needs
            logits = logits.float() / temperature
        if Vl * tp_size != vocab_size:
            _mask_padding_(logits, vocab_size, tp_group)
        x = logits if logits.dim() == 3 else logits.reshape(-1, 1, Vl)
        t = targets if targets.dim() == 2 else targets.reshape(-1, 1)
        return -parallel_cross_entropy(x, t, 0.0, False, tp_group).float().view(lead)
    raise ValueError(f"unknown logprob impl {impl!r}")
