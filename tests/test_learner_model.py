"""Qwen3 HF configs map onto Megatron-Core's TransformerConfig; bad input is refused clearly."""

import json
from pathlib import Path

import pytest
import torch

from pipeline.learner.model import (
    ModelConfigError, load_hf_config, padded_vocab_size, transformer_config,
)  # fmt: skip

MODELS = Path(__file__).resolve().parents[1] / "configs" / "models"


@pytest.mark.parametrize("name,tp,pp", [("qwen3-0.6b", 8, 4), ("qwen3-1.7b", 8, 2),
                                        ("qwen3-4b", 8, 4), ("qwen3-8b", 8, 4),
                                        ("qwen3-14b", 8, 4), ("qwen3-tiny", 2, 2)])  # fmt: skip
def test_qwen3_configs_map(name, tp, pp):
    hf = load_hf_config(MODELS / f"{name}.json")
    c = transformer_config(hf, tp=tp, pp=pp, dtype=torch.bfloat16)
    assert c.num_layers == hf["num_hidden_layers"]
    assert c.num_attention_heads == hf["num_attention_heads"]
    assert c.num_query_groups == hf["num_key_value_heads"]
    assert c.kv_channels == hf["head_dim"]
    assert c.ffn_hidden_size == hf["intermediate_size"]
    assert c.normalization == "RMSNorm" and c.qk_layernorm and c.gated_linear_unit
    assert c.layernorm_epsilon == hf["rms_norm_eps"]
    assert not c.add_bias_linear
    assert c.calculate_per_token_loss  # our loss is globally normalized before the schedule


def test_param_count_of_qwen3_8b():
    """The mapping reproduces the published size (8.19 B parameters, untied embeddings)."""
    hf = load_hf_config(MODELS / "qwen3-8b.json")
    h, f, L, V = hf["hidden_size"], hf["intermediate_size"], hf["num_hidden_layers"], hf["vocab_size"]
    q, kv, d = hf["num_attention_heads"], hf["num_key_value_heads"], hf["head_dim"]
    per_layer = h * (q + 2 * kv) * d + q * d * h + 3 * h * f + 2 * h + 2 * d
    total = L * per_layer + 2 * V * h + h
    assert total == pytest.approx(8.19e9, rel=0.01)


def test_vocab_padding_only_for_tp():
    assert padded_vocab_size(151936, 8) == 151936
    assert padded_vocab_size(50, 4) == 52


def test_bad_configs_are_refused(tmp_path):
    hf = load_hf_config(MODELS / "qwen3-14b.json")
    with pytest.raises(ModelConfigError, match="TP=16 must divide num_attention_heads=40"):
        transformer_config(hf, tp=16)
    with pytest.raises(ModelConfigError, match="PP=3 must divide num_hidden_layers=40"):
        transformer_config(hf, pp=3)
    bad = dict(hf, architectures=["LlamaForCausalLM"], model_type="llama")
    (tmp_path / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ModelConfigError, match="not supported"):
        load_hf_config(tmp_path)
    with pytest.raises(ModelConfigError, match="no HF config"):
        load_hf_config(tmp_path / "missing")
