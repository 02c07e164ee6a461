"""Tensor-parallel gather and shard of one Megatron parameter (uses its TP attributes)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def _is_gated_fc1(name: str) -> bool:
    # ColumnParallelLinear of a gated MLP: each TP shard is [gate_r; up_r]
    return name.endswith("mlp.linear_fc1.weight")


def gather_tp(name: str, param: torch.Tensor, tp_group, tp_size: int) -> torch.Tensor:
    """Full tensor from this rank's shard (all ranks of ``tp_group`` call it together)."""
    t = param.detach()
    if tp_size == 1 or not getattr(param, "tensor_model_parallel", False):
        return t
    shards = [torch.empty_like(t) for _ in range(tp_size)]
    dist.all_gather(shards, t.contiguous(), group=tp_group)
    if _is_gated_fc1(name):
        halves = [s.chunk(2, dim=0) for s in shards]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
    return torch.cat(shards, dim=param.partition_dim)


def shard_tp(name: str, full: torch.Tensor, param: torch.Tensor, tp_size: int, tp_rank: int) -> torch.Tensor:
    """This rank's shard of ``full``, shaped like ``param`` (inverse of ``gather_tp``)."""
    if tp_size == 1 or not getattr(param, "tensor_model_parallel", False):
        return full
    if _is_gated_fc1(name):
        gate, up = full.chunk(2, dim=0)
        return torch.cat([gate.chunk(tp_size, 0)[tp_rank], up.chunk(tp_size, 0)[tp_rank]], dim=0)
    return full.chunk(tp_size, dim=param.partition_dim)[tp_rank]
