"""The per-step weight stream: Megatron shards → HF-named full tensors, in buckets.

Where it sits: learner.train_step → **stream_hf_weights** → engines.update_weights.

Ordering contract
-----------------
1. ``stream_hf_weights`` runs after ``optimizer.step()`` of training step ``k`` returned
   and before any rollout of step ``k + 1`` is sampled. Its ``version`` is the learner's
   ``step`` counter after that optimizer step (``k + 1``): the number of optimizer steps
   the weights contain. Version 0 = the initial weights.
2. An engine applies the buckets of one version in order; only after the bucket marked
   ``last`` has been applied (and its ``checksum`` compared) does the engine report that
   version. Trajectories record the version the engine reported when they were sampled.
3. No optimizer step runs while a stream is being produced (the learner is blocked in it);
   every rank of the learner calls it together (TP all-gathers, PP broadcasts).

Mechanics: each PP stage's TP group all-gathers one parameter at a time; the TP-rank-0
of the stage maps it to HF names (``qwen3.mcore_to_hf``) and broadcasts the tensors over
its PP group to the global rank 0, which groups them into buckets of about
``bucket_bytes`` and yields them. Peak extra memory: one full parameter plus one bucket.
Ranks other than global rank 0 yield nothing. Tensors may be views of the live
parameters (no copy is made): a consumer copies them into its own weights before the
learner's next optimizer step, which the ordering contract guarantees.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from pipeline.weights import qwen3
from pipeline.weights.buckets import StreamChecksum, WeightBucket, tensor_crc  # noqa: F401  (re-exported)
from pipeline.weights.tp import gather_tp


def _local_hf_tensors(model, hf: dict, tp_group, tp_size: int, layer_offset: int):
    """Yield this stage's HF tensors (meaningful on TP rank 0; all TP ranks must iterate)."""
    for name, param in model.named_parameters():
        full = gather_tp(name, param, tp_group, tp_size)
        yield qwen3.mcore_to_hf(name, full, hf, layer_offset)


def _broadcast_items(items, src: int, group):
    """Send a stage's (name, tensor) list from global rank ``src`` to its PP group."""
    meta = [[(n, tuple(t.shape), t.dtype) for n, t in items] if items is not None else None]
    dist.broadcast_object_list(meta, src=src, group=group)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
    out = []
    for k, (name, shape, dt) in enumerate(meta[0]):
        t = items[k][1].contiguous() if items is not None else torch.empty(shape, dtype=dt, device=device)
        dist.broadcast(t, src=src, group=group)
        out.append((name, t))
    return out


def stream_hf_weights(
    model, hf: dict, *, version: int, bucket_bytes: int = 256 << 20, dtype: torch.dtype | None = None
) -> Iterator[WeightBucket]:
    """Buckets of (HF name, tensor) for the engines; see the module's ordering contract.

    ``model``: the unwrapped Megatron ``GPTModel`` of this rank (``learner.model.module``).
    ``dtype``: cast tensors to this dtype for the engines (default: as trained).
    """
    ps = parallel_state
    tp_size, tp_rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    pp_size, pp_rank = ps.get_pipeline_model_parallel_world_size(), ps.get_pipeline_model_parallel_rank()
    tp_group, pp_group = ps.get_tensor_model_parallel_group(), ps.get_pipeline_model_parallel_group()
    layers_per_stage = hf["num_hidden_layers"] // pp_size
    is_root = dist.get_rank() == 0
    pp_ranks = dist.get_process_group_ranks(pp_group) if pp_size > 1 else [dist.get_rank()]

    pending: list[tuple[str, torch.Tensor]] = []
    size, index, digest = 0, 0, StreamChecksum()
    for stage in range(pp_size):
        if stage == pp_rank:
            produced = _local_hf_tensors(model, hf, tp_group, tp_size, stage * layers_per_stage)
        else:
            produced = None
        if tp_rank != 0:  # TP peers only take part in their own stage's all-gathers
            if produced is not None:
                for _ in produced:
                    pass
            continue
        n_params = [len(list(model.named_parameters())) if stage == pp_rank else 0]
        if pp_size > 1:
            dist.broadcast_object_list(n_params, src=pp_ranks[stage], group=pp_group)
        for _ in range(n_params[0]):
            items = next(produced) if produced is not None else None
            if pp_size > 1:
                items = _broadcast_items(items, pp_ranks[stage], pp_group)
            if not is_root:
                continue
            for n, t in items:
                t = t.detach().to(dtype) if dtype is not None else t.detach()
                digest.update(n, t)
                pending.append((n, t))
                size += t.numel() * t.element_size()
                if size >= bucket_bytes:
                    yield WeightBucket(version, index, pending, nbytes=size)
                    pending, size, index = [], 0, index + 1
    if is_root:
        yield WeightBucket(version, index, pending, last=True, checksum=digest.hexdigest(), nbytes=size)
