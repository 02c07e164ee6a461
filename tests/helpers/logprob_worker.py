"""Under torchrun (gloo): the chunked and the fused-linear TP log-prob kernels and the
model's path equal a full ``log_softmax(...).gather(...)``, and the model's ``fused``
path (no logits) gives the ``chunked`` path's log-probs and gradients, tied or untied
output weights (argv[3]). Writes "ok" to argv[1] on success."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state

    from pipeline.config import load_config
    from pipeline.learner.learner import Learner, block_causal_mask
    from pipeline.learner.logprobs import token_logprobs
    from pipeline.learner.smoke import synthetic_trajectories
    from pipeline.trajectory import pack_micro_batches

    import json
    import tempfile

    tp, tied = int(sys.argv[2]), (sys.argv[3] if len(sys.argv) > 3 else "tied") == "tied"
    hf = json.loads(Path("configs/models/qwen3-tiny.json").read_text())
    hf_path = Path(tempfile.mkdtemp()) / "config.json"
    hf_path.write_text(json.dumps({**hf, "tie_word_embeddings": tied}))
    cfg = load_config(None, [f"parallel.tensor={tp}", f"model.hf_config={hf_path}",
                           "learner.attention=mask"])  # calls the model with a mask itself
    learner = Learner(cfg.model, cfg.parallel, cfg.optim, cfg.learner, cfg.loss, seed=3)
    group = parallel_state.get_tensor_model_parallel_group()
    rank = parallel_state.get_tensor_model_parallel_rank()

    # 1. the kernel on a vocab shard, vocab padded (V=50 → 52 over 2 ranks), T=0.8
    g = torch.Generator().manual_seed(0)
    full = torch.randn(33, 52, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 50, (33,), generator=g)
    upstream = torch.randn(33, generator=g, dtype=torch.float64)
    ref_in = full.clone().requires_grad_()
    ref = torch.log_softmax(ref_in[:, :50] / 0.8, -1).gather(1, targets[:, None]).squeeze(1)
    (ref * upstream).sum().backward()
    shard = full.chunk(tp, dim=1)[rank].float().clone().requires_grad_()
    out = token_logprobs(shard * 1.0, targets, tp_group=group, vocab_size=50, temperature=0.8, chunk_rows=8)
    (out * upstream.float()).sum().backward()
    torch.testing.assert_close(out.double(), ref, atol=2e-6, rtol=0)
    torch.testing.assert_close(shard.grad.double(), ref_in.grad.chunk(tp, dim=1)[rank], atol=2e-6, rtol=0)

    # 1b. the fused-linear kernel on an output-weight shard: the same log-probs, and the
    # gradients of hidden (summed over ranks, as the copy-to-TP-region does) and the shard
    from pipeline.learner.logprobs import fused_linear_token_logprobs

    h_full = torch.randn(33, 8, generator=g, dtype=torch.float64)
    w_full = torch.randn(52, 8, generator=g, dtype=torch.float64)
    ref_h, ref_w = h_full.clone().requires_grad_(), w_full.clone().requires_grad_()
    ref = torch.log_softmax((ref_h @ ref_w.t())[:, :50] / 0.8, -1).gather(1, targets[:, None]).squeeze(1)
    (ref * upstream).sum().backward()
    h = h_full.float().clone().requires_grad_()
    w = w_full.chunk(tp, dim=0)[rank].float().clone().requires_grad_()
    out = fused_linear_token_logprobs(h, w, targets, tp_group=group, vocab_size=50, temperature=0.8, chunk_rows=8)
    (out * upstream.float()).sum().backward()
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=0)
    dh = h.grad.clone()
    dist.all_reduce(dh, group=group)
    torch.testing.assert_close(dh.double(), ref_h.grad, atol=1e-5, rtol=0)
    torch.testing.assert_close(w.grad.double(), ref_w.grad.chunk(tp, dim=0)[rank], atol=1e-5, rtol=0)

    # 2. the model's path (fused: no logits) equals log_softmax of its own full logits
    traj = synthetic_trajectories(3, vocab_size=learner.hf["vocab_size"], seed=5)
    (mb,) = pack_micro_batches(traj, [0.0] * 3, 512)[0]
    mask = block_causal_mask(mb.cu_seqlens, mb.num_tokens)
    model = learner.model.module
    with torch.no_grad():
        nll = model(mb.input_ids, mb.position_ids, mask, labels=mb.target_ids)
        logits = model(mb.input_ids, mb.position_ids, mask)  # [1, S, V/tp]
        parts = [torch.empty_like(logits) for _ in range(tp)]
        dist.all_gather(parts, logits.contiguous(), group=group)
        logits = torch.cat(parts, dim=-1)
    ref = torch.log_softmax(logits.double(), -1).gather(-1, mb.target_ids[..., None]).squeeze(-1)
    torch.testing.assert_close(-nll.double(), ref, atol=1e-5, rtol=0)
    assert learner.logprob_impl == "fused"  # the CPU default

    # 3. fused and chunked on the model: the same per-token losses and parameter gradients
    # (every parameter, the output weight / shared embedding included)
    params = [p for p in model.parameters() if p.requires_grad]
    weights = torch.randn(mb.target_ids.shape, generator=g)

    def run(impl):
        model.set_logprob_options(**{**model._lp, "impl": impl})
        nll = model(mb.input_ids, mb.position_ids, mask, labels=mb.target_ids)
        return nll.detach(), torch.autograd.grad((nll * weights).sum(), params)

    (nll_f, grads_f), (nll_c, grads_c) = run("fused"), run("chunked")
    torch.testing.assert_close(nll_f, nll_c, atol=1e-5, rtol=0)
    for p, a, b in zip(params, grads_f, grads_c):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=lambda m: f"{tuple(p.shape)}: {m}")
    if dist.get_rank() == 0:
        Path(sys.argv[1]).write_text("ok")


if __name__ == "__main__":
    main()
