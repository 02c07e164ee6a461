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


@pytest.fixture
def megatron_tp1():
    """Megatron's parallel state on one gloo process (its cross-entropy asks for the TP group)."""
    from tests.helpers.dist import single_process_megatron

    with single_process_megatron():
        yield


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-6), (torch.float64, 2e-6)])  # (Megatron computes in fp32)
@pytest.mark.parametrize("T", [1.0, 0.8])
def test_megatron_path_equals_log_softmax_gather(dtype, tol, T, megatron_tp1):
    """``logprob_impl=megatron`` (Megatron's vocab_parallel_cross_entropy, TP=1 here) against
    the naive fp64 log-softmax: values, gradients, vocab padding, and its input untouched
    (Megatron subtracts the max in place on fp32)."""
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(23, 40, generator=g).to(dtype) * 3
    targets = torch.randint(0, 37, (23,), generator=g)
    upstream = torch.randn(23, generator=g)
    ref_x, ref = reference(logits, targets, 37, T)
    (ref * upstream.double()).sum().backward()
    leaf = logits.clone().requires_grad_()
    before = leaf.detach().clone()
    out = token_logprobs(leaf, targets, vocab_size=37, temperature=T, impl="megatron")
    assert torch.equal(leaf.detach(), before)
    (out * upstream).sum().backward()
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=0)
    torch.testing.assert_close(leaf.grad.double(), ref_x.grad, atol=tol, rtol=0)
    assert (leaf.grad[:, 37:] == 0).all()


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
@pytest.mark.parametrize("tp,tied", [(1, "tied"), (2, "tied"), (1, "untied"), (2, "untied")])
def test_tensor_parallel_kernel_and_model_path(tmp_path, tp, tied):
    torchrun("tests/helpers/logprob_worker.py", tp, str(tmp_path / "ok"), str(tp), tied)
    assert (tmp_path / "ok").read_text() == "ok"


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.float64, 2e-5)])
@pytest.mark.parametrize("T,vocab", [(1.0, 40), (0.8, 37)])
@pytest.mark.parametrize("chunk_rows", [1, 7, 64])
def test_fused_linear_equals_the_logits_path(dtype, tol, T, vocab, chunk_rows):
    """From hidden states and the output weight, no logits: the same log-probs and the same
    gradients (hidden and weight; padded vocabulary rows get none) as the logits path."""
    from pipeline.learner.logprobs import fused_linear_token_logprobs

    g = torch.Generator().manual_seed(2)
    h, w = torch.randn(29, 12, generator=g, dtype=dtype), torch.randn(40, 12, generator=g, dtype=dtype)
    targets, upstream = torch.randint(0, vocab, (29,), generator=g), torch.randn(29, generator=g)
    ref_h, ref_w = h.clone(), w.clone()
    ref_x, ref = reference(ref_h @ ref_w.t(), targets, vocab, T)  # ref_x: the logits, a fresh leaf
    (ref * upstream.double()).sum().backward()
    lh, lw = h.clone().requires_grad_(), w.clone().requires_grad_()
    out = fused_linear_token_logprobs(lh, lw, targets, vocab_size=vocab, temperature=T, chunk_rows=chunk_rows)
    (out * upstream).sum().backward()
    dlogits = ref_x.grad  # dL/dlogits of the reference, chained by hand through logits = h @ wᵀ
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=0)
    torch.testing.assert_close(lh.grad.double(), dlogits @ w.double(), atol=tol, rtol=0)
    torch.testing.assert_close(lw.grad.double(), dlogits.t() @ h.double(), atol=tol, rtol=0)
    assert (lw.grad[vocab:] == 0).all()


@pytest.mark.slow
def test_the_learner_step_gives_the_same_loss_line_with_fused_and_chunked(tmp_path):
    """`echo-rl learner-smoke` (synthetic trajectories, real Megatron steps): the fused
    path's loss line is the chunked path's, step by step."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    lines = {}
    for impl in ("fused", "chunked"):
        r = subprocess.run([str(Path(sys.executable).parent / "echo-rl"), "learner-smoke", "configs/tiny.yaml", "run.steps=3",
                            "model.load=''", f"learner.logprob_impl={impl}", f"run.output_dir={tmp_path / impl}"],
                           capture_output=True, text=True, cwd=root, timeout=600)  # fmt: skip
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        lines[impl] = [" ".join(x.split()[:8]) for x in r.stdout.splitlines() if x.startswith("step ")]
    assert len(lines["fused"]) == 3 and lines["fused"] == lines["chunked"], lines


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
