"""Under torchrun (gloo): the chunked TP log-prob kernel and the model's fused path equal
a full ``log_softmax(...).gather(...)``. Writes "ok" to argv[1] on success."""

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

    tp = int(sys.argv[2])
    cfg = load_config(None, [f"parallel.tensor={tp}", "model.hf_config=configs/models/qwen3-tiny.json",
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

    # 2. the model's fused path equals log_softmax of its own full logits
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
    if dist.get_rank() == 0:
        Path(sys.argv[1]).write_text("ok")


if __name__ == "__main__":
    main()
