"""A Megatron-Core GPTModel built from an HF Qwen3 ``config.json``.

Where it sits: learner. ``build_model`` → ``EchoGPTModel`` whose forward with ``labels``
returns ``-log p(label)`` per position (from ``token_logprobs``), not a mean loss.

Qwen3 → Megatron mapping: GQA (``num_key_value_heads`` → ``num_query_groups``), explicit
``head_dim`` (→ ``kv_channels``), RMSNorm with ``rms_norm_eps``, QK-norm (per-head RMSNorm
on q and k), SwiGLU MLP (``gated_linear_unit`` + SiLU), RoPE with ``rope_theta``, no
linear biases, tied or untied embeddings. The vocabulary is padded to a multiple of
the TP size only; padded columns are excluded from the softmax.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer import TransformerConfig

from pipeline.learner.logprobs import fused_linear_token_logprobs, token_logprobs

SUPPORTED_ARCHITECTURES = ("Qwen3ForCausalLM",)


class ModelConfigError(ValueError):
    """The HF config cannot be mapped (architecture, or heads not divisible by TP)."""


def load_hf_config(path: str | Path) -> dict:
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise ModelConfigError(f"no HF config at {path}")
    cfg = json.loads(p.read_text())
    arch = (cfg.get("architectures") or ["?"])[0]
    if arch not in SUPPORTED_ARCHITECTURES or cfg.get("model_type") not in (None, "qwen3"):
        raise ModelConfigError(
            f"{p}: architecture {arch} / model_type {cfg.get('model_type')} is not supported "
            f"(supported: {SUPPORTED_ARCHITECTURES})"
        )
    return cfg


def rope_theta(hf: dict) -> float:
    """transformers ≥ 5 nests it in ``rope_parameters``; 4.x has top-level ``rope_theta``."""
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    kind = params.get("rope_type", params.get("type", "default"))
    if kind != "default":
        raise ModelConfigError(f"rope_type {kind!r} is not supported (only the default RoPE)")
    return float(hf.get("rope_theta") or params.get("rope_theta") or 1_000_000)


def hf_dtype(hf: dict) -> str:
    return hf.get("torch_dtype") or hf.get("dtype") or "float32"


def padded_vocab_size(vocab_size: int, tp: int) -> int:
    return -(-vocab_size // tp) * tp


def transformer_config(
    hf: dict,
    *,
    tp: int = 1,
    pp: int = 1,
    dtype: torch.dtype = torch.float32,
    init_std: float = 0.02,
    on_gpu: bool = False,
    fused_kernels: bool | None = None,
    recompute: str = "none",
) -> TransformerConfig:
    heads, groups = hf["num_attention_heads"], hf.get("num_key_value_heads", hf["num_attention_heads"])
    if heads % tp or groups % tp:
        raise ModelConfigError(
            f"TP={tp} must divide num_attention_heads={heads} and num_key_value_heads={groups}"
        )
    if hf["num_hidden_layers"] % pp:
        raise ModelConfigError(f"PP={pp} must divide num_hidden_layers={hf['num_hidden_layers']}")
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    rope_theta(hf)  # refuse unsupported RoPE variants early
    # persistent layer norm and the masked-softmax kernel come from TE/Apex, not from torch
    fused = on_gpu and (te_available() if fused_kernels is None else fused_kernels)
    return TransformerConfig(
        num_layers=hf["num_hidden_layers"],
        hidden_size=hf["hidden_size"],
        ffn_hidden_size=hf["intermediate_size"],
        num_attention_heads=heads,
        num_query_groups=groups,
        kv_channels=head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=hf.get("rms_norm_eps", 1e-6),
        qk_layernorm=True,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=bool(hf.get("attention_bias", False)),
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=init_std,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        params_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        pipeline_dtype=dtype,
        # The ECHO loss is normalized by global counts before the schedule sees it.
        calculate_per_token_loss=True,
        variable_seq_lengths=pp > 1,  # micro-batches are packed to different lengths
        moe_token_dispatcher_type="alltoall",  # (no MoE) the only one allowing the above
        use_cpu_initialization=not on_gpu,
        bias_activation_fusion=on_gpu,
        masked_softmax_fusion=fused,
        bias_dropout_fusion=on_gpu,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=fused,
        batch_p2p_comm=on_gpu,
        # activation recomputation (learner.recompute): selective = core attention only
        # (Megatron's default module); full = every layer's input, one layer per unit
        recompute_granularity=None if recompute == "none" else recompute,
        recompute_method="uniform" if recompute == "full" else None,
        recompute_num_layers=1 if recompute == "full" else None,
    )


class EchoGPTModel(GPTModel):
    """GPTModel whose ``labels`` forward returns ``-log p(label)`` [b, s] from one fused,
    vocab-parallel call (``token_logprobs``) — both ECHO terms read this tensor."""

    def set_logprob_options(self, *, vocab_size: int, temperature: float, impl: str, chunk_rows: int):
        self._lp = dict(vocab_size=vocab_size, temperature=temperature, impl=impl, chunk_rows=chunk_rows)

    def compute_language_model_loss(self, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        # labels [b, s]; logits [s, b, V/tp]
        targets = labels.transpose(0, 1)
        logp = token_logprobs(logits, targets, tp_group=self.pg_collection.tp, **self._lp)
        return (-logp).transpose(0, 1).contiguous()

    def _postprocess(self, hidden_states, input_ids, position_ids, labels, **kw):
        """With ``impl: fused`` and labels: the output layer and the log-probs in one call
        (``fused_linear_token_logprobs``), so the logits never exist. Otherwise (no labels:
        inference; multi-token prediction; sequence parallel) Megatron's own path."""
        lp = getattr(self, "_lp", {})
        fused = lp.get("impl") == "fused" and labels is not None and self.post_process \
            and not kw.get("mtp_in_postprocess") and self.config.mtp_num_layers is None \
            and not self.output_layer.sequence_parallel  # fmt: skip
        if not fused:
            return super()._postprocess(hidden_states, input_ids, position_ids, labels, **kw)
        from megatron.core.tensor_parallel.mappings import copy_to_tensor_model_parallel_region

        weight = self.shared_embedding_or_output_weight() if self.share_embeddings_and_output_weights \
            else self.output_layer.weight  # fmt: skip
        tp = self.pg_collection.tp
        if tp is not None and tp.size() > 1:  # what ColumnParallelLinear does first: all-reduce dL/dhidden
            hidden_states = copy_to_tensor_model_parallel_region(hidden_states, group=tp)
        opts = {k: v for k, v in lp.items() if k != "impl"}
        logp = fused_linear_token_logprobs(hidden_states, weight, labels.transpose(0, 1), tp_group=tp, **opts)
        return (-logp).transpose(0, 1).contiguous()  # [b, s], as compute_language_model_loss returns


def layer_spec(use_te: bool, attention: str = "mask"):
    """TE's layer spec, or Megatron's local one with core attention ``packed``
    (``pipeline/learner/attention.py``: THD input, no mask tensor) or ``mask`` (Megatron's
    ``DotProductAttention`` on a block-diagonal ``[1, 1, S, S]`` mask)."""
    from megatron.core.models.gpt.gpt_layer_specs import (
        get_gpt_layer_local_spec,
        get_gpt_layer_with_transformer_engine_spec,
    )

    if use_te:
        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=True)
    spec = get_gpt_layer_local_spec(qk_layernorm=True, normalization="RMSNorm")
    if attention == "packed":
        from pipeline.learner.attention import PackedAttention

        spec.submodules.self_attention.submodules.core_attention = PackedAttention
    return spec


def te_available() -> bool:
    """Transformer Engine's PyTorch layers import (not only its kernels) and a GPU is present."""
    try:
        from transformer_engine.pytorch import Linear  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available()


def build_gpt(hf: dict, config: TransformerConfig, *, pre_process: bool, post_process: bool, use_te: bool,
              attention: str = "mask") -> EchoGPTModel:  # fmt: skip
    tp = config.tensor_model_parallel_size
    return EchoGPTModel(
        config=config,
        transformer_layer_spec=layer_spec(use_te, attention),
        vocab_size=padded_vocab_size(hf["vocab_size"], tp),
        max_sequence_length=hf.get("max_position_embeddings", 40960),
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=bool(hf.get("tie_word_embeddings", False)),
        position_embedding_type="rope",
        rotary_base=rope_theta(hf),
        rotary_percent=1.0,
    )
