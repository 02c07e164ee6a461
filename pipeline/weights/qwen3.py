"""Qwen3 (dense): Megatron-Core parameter ⇄ HF transformers tensors. Name mapping only.

Works on *full* (TP-gathered) tensors with *global* layer indices; ``tp.py`` does the
gathering/sharding and ``layer_offset`` the PP stage offset. Both the per-step weight
sync and ``tools/convert`` use these functions. Anything unknown raises.

Megatron layouts: ``linear_qkv.weight`` is grouped by query group — for each of the
``num_key_value_heads`` groups, the group's ``heads/groups`` query heads, then its key
head, then its value head (``head_dim`` rows each). ``linear_fc1.weight`` is
``[gate; up]``. Both the local and the Transformer Engine layer specs are accepted (TE
fuses the pre-attention / pre-MLP norms into ``layer_norm_weight`` of the next linear).
"""

from __future__ import annotations

import re

import torch

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")

# Megatron suffix (inside a layer) → HF suffix (inside model.layers.N); 1:1 tensors
_SIMPLE = {
    "input_layernorm.weight": "input_layernorm.weight",
    "self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",  # TE spec
    "self_attention.q_layernorm.weight": "self_attn.q_norm.weight",
    "self_attention.k_layernorm.weight": "self_attn.k_norm.weight",
    "self_attention.linear_proj.weight": "self_attn.o_proj.weight",
    "pre_mlp_layernorm.weight": "post_attention_layernorm.weight",
    "mlp.linear_fc1.layer_norm_weight": "post_attention_layernorm.weight",  # TE spec
    "mlp.linear_fc2.weight": "mlp.down_proj.weight",
}


class UnknownParameter(KeyError):
    """A parameter name the Qwen3 mapping does not know."""


def _qkv_split(w: torch.Tensor, hf: dict):
    heads, groups = hf["num_attention_heads"], hf["num_key_value_heads"]
    d = hf.get("head_dim") or hf["hidden_size"] // heads
    per = heads // groups
    w = w.view(groups, per + 2, d, -1)
    q = w[:, :per].reshape(heads * d, -1)
    k = w[:, per].reshape(groups * d, -1)
    v = w[:, per + 1].reshape(groups * d, -1)
    return q, k, v


def _qkv_merge(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hf: dict) -> torch.Tensor:
    heads, groups = hf["num_attention_heads"], hf["num_key_value_heads"]
    d = hf.get("head_dim") or hf["hidden_size"] // heads
    per = heads // groups
    h = q.shape[-1]
    merged = torch.cat(
        [q.view(groups, per, d, h), k.view(groups, 1, d, h), v.view(groups, 1, d, h)], dim=1
    )
    return merged.reshape(groups * (per + 2) * d, h)


def mcore_to_hf(name: str, tensor: torch.Tensor, hf: dict, layer_offset: int = 0) -> list[tuple[str, torch.Tensor]]:
    """One full Megatron tensor → its HF (name, tensor) pairs. [] for tensors HF does not
    store (the tied output layer copy on the last PP stage)."""
    V = hf["vocab_size"]
    if name == "embedding.word_embeddings.weight":
        return [("model.embed_tokens.weight", tensor[:V])]
    if name == "output_layer.weight":
        return [] if hf.get("tie_word_embeddings") else [("lm_head.weight", tensor[:V])]
    if name == "decoder.final_layernorm.weight":
        return [("model.norm.weight", tensor)]
    m = _LAYER.match(name)
    if not m:
        raise UnknownParameter(f"Qwen3 mapping: unknown Megatron parameter {name!r}")
    layer, suffix = int(m.group(1)) + layer_offset, m.group(2)
    prefix = f"model.layers.{layer}."
    if suffix in _SIMPLE:
        return [(prefix + _SIMPLE[suffix], tensor)]
    if suffix == "self_attention.linear_qkv.weight":
        q, k, v = _qkv_split(tensor, hf)
        return [(prefix + "self_attn.q_proj.weight", q), (prefix + "self_attn.k_proj.weight", k),
                (prefix + "self_attn.v_proj.weight", v)]  # fmt: skip
    if suffix == "mlp.linear_fc1.weight":
        gate, up = tensor.chunk(2, dim=0)
        return [(prefix + "mlp.gate_proj.weight", gate), (prefix + "mlp.up_proj.weight", up)]
    raise UnknownParameter(f"Qwen3 mapping: unknown Megatron parameter {name!r}")


def hf_to_mcore(name: str, get_hf, hf: dict, padded_vocab: int, layer_offset: int = 0) -> torch.Tensor:
    """The full Megatron tensor ``name`` (local layer index, stage offset ``layer_offset``)
    assembled from HF tensors via ``get_hf(hf_name) -> Tensor``."""

    def pad_vocab(t: torch.Tensor) -> torch.Tensor:
        extra = padded_vocab - t.shape[0]
        return t if extra == 0 else torch.cat([t, t.new_zeros(extra, t.shape[1])])

    if name == "embedding.word_embeddings.weight":
        return pad_vocab(get_hf("model.embed_tokens.weight"))
    if name == "output_layer.weight":
        src = "model.embed_tokens.weight" if hf.get("tie_word_embeddings") else "lm_head.weight"
        return pad_vocab(get_hf(src))
    if name == "decoder.final_layernorm.weight":
        return get_hf("model.norm.weight")
    m = _LAYER.match(name)
    if not m:
        raise UnknownParameter(f"Qwen3 mapping: unknown Megatron parameter {name!r}")
    prefix, suffix = f"model.layers.{int(m.group(1)) + layer_offset}.", m.group(2)
    if suffix in _SIMPLE:
        return get_hf(prefix + _SIMPLE[suffix])
    if suffix == "self_attention.linear_qkv.weight":
        return _qkv_merge(*(get_hf(prefix + f"self_attn.{p}_proj.weight") for p in "qkv"), hf)
    if suffix == "mlp.linear_fc1.weight":
        return torch.cat([get_hf(prefix + "mlp.gate_proj.weight"), get_hf(prefix + "mlp.up_proj.weight")])
    raise UnknownParameter(f"Qwen3 mapping: unknown Megatron parameter {name!r}")
