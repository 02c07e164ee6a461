"""Per-token log-probs without the full softmax: values, gradients, TP, temperature."""

import pytest
import torch

from pipeline.learner.logprobs import token_logprobs
from tests.helpers.dist import torchrun


def reference(x, targets, vocab, T):
    x = x.detach().double().requires_grad_()
    lp = torch.log_softmax(x[:, :vocab] / T, -1).gather(1, targets[:, None]).squeeze(1)
    return x, lp


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-6), (torch.bfloat16, 0.05)])
@pytest.mark.parametrize("T", [1.0, 0.8])
@pytest.mark.parametrize("chunk_rows", [1, 7, 64])
def test_chunked_equals_log_softmax_gather(dtype, tol, T, chunk_rows):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(29, 40, generator=g).to(dtype)
    targets = torch.randint(0, 37, (29,), generator=g)
    upstream = torch.randn(29, generator=g)
    ref_x, ref = reference(logits, targets, 37, T)
    (ref * upstream.double()).sum().backward()
    leaf = logits.clone().requires_grad_()
    before = leaf.detach().clone()
    nonleaf = leaf * 1
    out = token_logprobs(nonleaf, targets, vocab_size=37, temperature=T, chunk_rows=chunk_rows)
    assert torch.equal(nonleaf.detach(), before)  # forward never touches its input
    (out * upstream).sum().backward()
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=0)
    torch.testing.assert_close(leaf.grad.double(), ref_x.grad, atol=tol, rtol=0)
    assert (leaf.grad[:, 37:] == 0).all()  # vocab padding gets no gradient


@pytest.mark.parametrize("other_first", [False, True])
def test_sharing_the_logits_never_gives_silently_wrong_grads(other_first):
    """The backward writes into the logits buffer. If another op also saved the logits,
    autograd either runs that op's backward first (correct) or raises — never garbage."""
    x = torch.randn(4, 10, dtype=torch.float64)
    targets = torch.tensor([1, 2, 3, 4])
    ref_x = x.clone().requires_grad_()
    ref_logits = ref_x * 2
    ref = torch.log_softmax(ref_logits, -1).gather(1, targets[:, None]).sum() + (ref_logits**2).sum()
    ref.backward()
    leaf = x.clone().requires_grad_()
    logits = leaf * 2
    if other_first:
        other = (logits**2).sum()
        out = token_logprobs(logits, targets).sum()
    else:
        out = token_logprobs(logits, targets).sum()
        other = (logits**2).sum()
    try:
        (out + other).backward()
    except RuntimeError as e:
        assert "modified by an inplace operation" in str(e)
        return
    torch.testing.assert_close(leaf.grad, ref_x.grad)


@pytest.mark.slow
@pytest.mark.parametrize("tp", [1, 2])
def test_tensor_parallel_kernel_and_model_path(tmp_path, tp):
    torchrun("tests/helpers/logprob_worker.py", tp, str(tmp_path / "ok"), str(tp))
    assert (tmp_path / "ok").read_text() == "ok"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU and Transformer Engine")
def test_te_parallel_cross_entropy_matches_reference():
    pytest.importorskip("transformer_engine")
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl", init_method="tcp://127.0.0.1:29533", rank=0, world_size=1)
    g = torch.Generator(device="cuda").manual_seed(0)
    logits = torch.randn(256, 1, 4096, device="cuda", generator=g).bfloat16()
    targets = torch.randint(0, 4000, (256, 1), device="cuda", generator=g)
    ref_x, ref = reference(logits[:, 0], targets[:, 0], 4000, 0.8)
    ref.sum().backward()
    leaf = logits.clone().requires_grad_()
    out = token_logprobs(leaf * 1, targets, tp_group=dist.group.WORLD, vocab_size=4000,
                         temperature=0.8, impl="te")  # fmt: skip
    out.sum().backward()
    torch.testing.assert_close(out[:, 0].double(), ref, atol=0.05, rtol=0)
    torch.testing.assert_close(leaf.grad[:, 0].double(), ref_x.grad, atol=0.05, rtol=0)
