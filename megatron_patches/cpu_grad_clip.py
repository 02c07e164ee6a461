"""Patch: gradient clipping by total norm accepts CPU fp32 gradients.

What: replaces ``clip_grad_by_total_norm_fp32`` as the optimizer module sees it
(``megatron.core.optimizer.optimizer.clip_grad_by_total_norm_fp32``) with a version that
checks for fp32 gradients on any device and scales them with ``torch._foreach_mul_``.

Why: the stock function asserts ``param.grad.type() == 'torch.cuda.FloatTensor'`` and
scales through a CUDA ``multi_tensor_applier`` buffer; on a CPU-only machine the assert
fails before anything is clipped. The global norm itself (``get_grad_norm_fp32``, with
its model-parallel all-reduce) is Megatron's own and unchanged.

Versions: checked against megatron-core 0.16.1 (signature
``(parameters, max_norm, total_norm, use_decoupled_grad=False)``).

Math: unchanged — ``grads *= max_norm / (total_norm + 1e-6)`` when that is < 1, as the
stock function computes. Applied only when no GPU is present.
"""

from __future__ import annotations

import inspect

import torch

from megatron_patches.common import PatchTargetMissing, require

_MODULE = "megatron.core.optimizer.optimizer"
EXPECTED_PARAMS = ["parameters", "max_norm", "total_norm", "use_decoupled_grad"]


def clip_grad_by_total_norm_fp32(parameters, max_norm, total_norm, use_decoupled_grad=False):
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    attr = "decoupled_grad" if use_decoupled_grad else "grad"
    grads = []
    for p in parameters:
        g = getattr(p, attr, None)
        if g is not None:
            if g.dtype != torch.float32:
                raise TypeError(f"expected fp32 gradients for clipping, got {g.dtype}")
            grads.append(g.detach())
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    if clip_coeff < 1.0 and grads:
        torch._foreach_mul_(grads, clip_coeff)


def apply() -> None:
    module = require(_MODULE, "clip_grad_by_total_norm_fp32")
    params = list(inspect.signature(module.clip_grad_by_total_norm_fp32).parameters)
    if params != EXPECTED_PARAMS and module.clip_grad_by_total_norm_fp32 is not clip_grad_by_total_norm_fp32:
        raise PatchTargetMissing(f"{_MODULE}.clip_grad_by_total_norm_fp32 has signature {params}")
    module.clip_grad_by_total_norm_fp32 = clip_grad_by_total_norm_fp32
