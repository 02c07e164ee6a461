"""Patch: CUDA device references inside named Megatron-Core modules resolve to the CPU.

What: in the modules listed in ``TARGETS`` (and only there) the module-global name
``torch`` is rebound to a thin proxy of ``torch``. The proxy rewrites ``device="cuda"``
(or ``"cuda:N"``, ``torch.device("cuda")``) in tensor factory calls to ``"cpu"``, drops
``pin_memory=True``, and its ``torch.cuda`` answers ``current_device()`` with ``"cpu"``
and makes ``synchronize()`` a no-op. Everything else is the real ``torch``.

Why: these modules create bookkeeping tensors (token counters in the schedules, p2p
shape buffers, rotary frequencies, causal masks, grad-norm scalars, optimizer scale
scalars) on ``"cuda"`` unconditionally, which fails on a CPU-only machine. Nothing else
about the computation depends on the device.

Versions: checked against megatron-core 0.16.1 (Python 3.11); the targets are the
modules named below, each verified to exist and to use ``torch`` at module level.

Math: unchanged. Only the device of tensor creations changes; values and dtypes stay.
Applied only when no GPU is present (``apply_cpu_patches``).
"""

from __future__ import annotations

import functools
import types

import torch

from megatron_patches.common import require

TARGETS = (
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.pipeline_parallel.p2p_communication",
    "megatron.core.models.common.embeddings.rotary_pos_embedding",
    "megatron.core.transformer.utils",
    "megatron.core.transformer.attention",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.optimizer.optimizer",
    "megatron.core.tensor_parallel.layers",
    "megatron.core.distributed.param_and_grad_buffer",
    "megatron.core.models.gpt.gpt_model",
    "megatron.core.utils",
    "megatron.core.dist_checkpointing.strategies.filesystem_async",
    "megatron.core.dist_checkpointing.strategies.state_dict_saver",
)

_FACTORIES = (
    "tensor", "zeros", "ones", "empty", "full", "arange", "zeros_like", "ones_like",
    "empty_like", "full_like", "rand", "randn", "randint", "as_tensor",
)  # fmt: skip


def _cpu_device(device):
    if device is None:
        return None
    if isinstance(device, int):
        return "cpu"
    if isinstance(device, torch.device):
        return "cpu" if device.type == "cuda" else device
    if isinstance(device, str) and device.startswith("cuda"):
        return "cpu"
    return device


def _redirect(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if "device" in kwargs:
            kwargs["device"] = _cpu_device(kwargs["device"])
        kwargs.pop("pin_memory", None)
        return fn(*args, **kwargs)

    return wrapper


class _CudaOnCpu(types.SimpleNamespace):
    def __getattr__(self, name):
        return getattr(torch.cuda, name)


class _TorchOnCpu(types.ModuleType):
    """``torch`` with CUDA tensor creations redirected to the CPU."""

    def __init__(self):
        super().__init__("torch")
        for name in _FACTORIES:
            setattr(self, name, _redirect(getattr(torch, name)))
        self.cuda = _CudaOnCpu(
            current_device=lambda: "cpu",
            synchronize=lambda *a, **k: None,
        )

    def __getattr__(self, name):
        return getattr(torch, name)


def apply() -> None:
    proxy = _TorchOnCpu()
    modules = [require(name, "torch") for name in TARGETS]
    for module in modules:
        module.torch = proxy
