"""Packed-sequence causal attention without an S×S mask: Megatron's core-attention slot
of the local (non-Transformer-Engine) layer spec.

Where it sits: learner → GPTModel → TransformerLayer → SelfAttention → **PackedAttention**
(in place of ``DotProductAttention``, which needs a ``[1, 1, S, S]`` mask for packed
micro-batches: quadratic memory, so a 32k-token micro-batch cannot fit).

Input is Megatron's THD layout: with ``PackedSeqParams(qkv_format="thd", cu_seqlens_q=…)``
the self-attention squeezes the batch dimension, applies RoPE per packed sequence, and
hands over ``query [T, heads, d]``, ``key``/``value [T, groups, d]``. Each packed sequence
attends causally to itself only:

- CUDA with ``torch.nn.attention.varlen.varlen_attn`` (flash attention over cu_seqlens,
  GQA without repeating K/V): one kernel for the whole micro-batch;
- otherwise (CPU, older torch): ``scaled_dot_product_attention(is_causal=True)`` per
  packed sequence (torch's fused CPU flash kernel; K/V expanded to the query heads only
  per sequence when ``enable_gqa`` would fall back to the math kernel).

Memory is O(T) in the kernel (no score matrix kept) on the fused paths; the per-sequence
path on CPU holds at most one sequence's working set. The same module runs on CPU and
GPU, so the CPU tests exercise the code the GPU runs (except the kernel choice).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from megatron.core.transformer.module import MegatronModule


def _varlen():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


class PackedAttention(MegatronModule):
    def __init__(self, config, layer_number: int, attn_mask_type=None, attention_type: str = "self",
                 attention_dropout: float | None = None, softmax_scale: float | None = None,
                 cp_comm_type: str | None = None, pg_collection=None, **_):  # fmt: skip
        super().__init__(config=config)
        tp = config.tensor_model_parallel_size
        self.heads = config.num_attention_heads // tp
        self.groups = config.num_query_groups // tp
        self.head_dim = config.kv_channels
        self.scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(self.head_dim)
        if (attention_dropout if attention_dropout is not None else config.attention_dropout) > 0:
            raise ValueError("PackedAttention has no attention dropout (the recipes train without it)")

    def forward(self, query, key, value, attention_mask=None, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):  # fmt: skip
        if packed_seq_params is None or packed_seq_params.qkv_format != "thd":
            raise ValueError("PackedAttention needs PackedSeqParams(qkv_format='thd', cu_seqlens_q=...): "
                             "the learner passes them for every packed micro-batch")  # fmt: skip
        if attention_bias is not None:
            raise ValueError("PackedAttention takes no attention bias")
        cu = packed_seq_params.cu_seqlens_q
        T = query.shape[0]
        varlen = _varlen()
        if query.is_cuda and varlen is not None:
            out = varlen(query, key, value, cu.to(torch.int32), cu.to(torch.int32), int(packed_seq_params.max_seqlen_q),
                         int(packed_seq_params.max_seqlen_kv), scale=self.scale, window_size=(-1, 0),
                         enable_gqa=self.groups != self.heads)  # fmt: skip
            return out.reshape(T, self.heads * self.head_dim)
        return self.per_sequence(query, key, value, cu.tolist()).reshape(T, self.heads * self.head_dim)

    def per_sequence(self, query, key, value, bounds: list[int]) -> torch.Tensor:
        """[T, heads, d]: fused causal SDPA over each packed sequence in turn."""
        rep = self.heads // self.groups
        outs = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            if b == a:
                continue
            q = query[a:b].transpose(0, 1)  # [heads, s, d]
            k, v = key[a:b].transpose(0, 1), value[a:b].transpose(0, 1)
            if rep > 1:  # the CPU flash kernel takes equal head counts (enable_gqa → math kernel)
                k, v = k.repeat_interleave(rep, 0), v.repeat_interleave(rep, 0)
            o = F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True, scale=self.scale)[0]
            outs.append(o.transpose(0, 1))
        return torch.cat(outs, 0)
