"""Packed attention (``pipeline/learner/attention.py``) against Megatron's own
``DotProductAttention`` on the block-diagonal mask: values and gradients, fp32, for
several packings (sequences of length 1, one sequence, padding, GQA). The learner-level
parity (TP/PP/DP, recompute, mask vs packed) is ``tests/test_learner_parallel.py``."""

import pytest
import torch

from tests.helpers.dist import single_process_megatron


@pytest.fixture(scope="module")
def megatron():
    with single_process_megatron():
        yield


def _config(heads, groups, d):
    from pipeline.learner.model import transformer_config

    hf = {"num_hidden_layers": 1, "hidden_size": heads * d, "intermediate_size": 4 * heads * d, "num_attention_heads": heads,
          "num_key_value_heads": groups, "head_dim": d, "vocab_size": 64, "rms_norm_eps": 1e-6}  # fmt: skip
    return transformer_config(hf)


@pytest.mark.parametrize("lengths,heads,groups", [
    ([5, 1, 7, 3], 4, 4),      # several, one of length 1
    ([16], 4, 2),              # a micro-batch of one sequence, GQA
    ([1, 1, 1, 9, 4], 4, 1),   # many of length 1, multi-query
    ([6, 3, 7], 2, 2),         # the last one plays the padding sequence
])  # fmt: skip
def test_packed_equals_the_block_diagonal_reference(megatron, lengths, heads, groups):
    from megatron.core.packed_seq_params import PackedSeqParams
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType

    from pipeline.learner.attention import PackedAttention
    from pipeline.learner.learner import block_causal_mask

    d, T = 8, sum(lengths)
    cfg = _config(heads, groups, d)
    torch.manual_seed(len(lengths) * 10 + heads)
    q0 = torch.randn(T, heads, d, dtype=torch.float64).float()
    k0, v0 = torch.randn(T, groups, d).float(), torch.randn(T, groups, d).float()
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    grad_out = torch.randn(T, heads * d)

    def run(fn):
        q, k, v = (x.clone().requires_grad_() for x in (q0, k0, v0))
        out = fn(q, k, v)
        (out * grad_out).sum().backward()
        return out.detach(), q.grad, k.grad, v.grad

    packed = PackedAttention(cfg, layer_number=1)
    psp = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=max(lengths),
                          max_seqlen_kv=max(lengths))  # fmt: skip
    got = run(lambda q, k, v: packed(q, k, v, None, packed_seq_params=psp))
    ref_mod = DotProductAttention(cfg, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self")
    mask = block_causal_mask(cu, T)
    # the reference takes [s, b, heads, d] and a [1, 1, S, S] mask; returns [s, b, heads·d]
    want = run(lambda q, k, v: ref_mod(q[:, None], k[:, None], v[:, None], mask)[:, 0])
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=name)
    assert want[0].abs().max() > 0.1 and want[2].abs().max() > 0.01  # the compared values are not trivial


def test_packed_refuses_an_unpacked_call(megatron):
    from pipeline.learner.attention import PackedAttention

    att = PackedAttention(_config(2, 2, 8), layer_number=1)
    with pytest.raises(ValueError, match="needs PackedSeqParams"):
        att(torch.zeros(4, 1, 2, 8), torch.zeros(4, 1, 2, 8), torch.zeros(4, 1, 2, 8), None)
