"""Random tiny Qwen3 checkpoints built with transformers (nothing is downloaded)."""

import torch


def make_tiny_qwen3(out, *, heads=4, kv_heads=2, tie=True, layers=4, vocab=500, seed=0):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen3Config(
        vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=32,
        tie_word_embeddings=tie, max_position_embeddings=512, rope_theta=10000.0,
    )  # fmt: skip
    model = Qwen3ForCausalLM(cfg)
    with torch.no_grad():  # make the norms non-trivial so a mapped-wrong norm shows up
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(out)
    return model
