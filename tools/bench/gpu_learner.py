"""GPU checks and figures for the learner (one GPU, NCCL): run on an H100/H200.

    python tools/bench/gpu_learner.py [--model configs/models/qwen3-1.7b.json] [--tokens 4096]
    python tools/bench/gpu_learner.py --impls te,chunked --no-learner     # where TE imports

1. Log-probs at a Qwen3 vocabulary (V=151,936, 8,192 bf16 rows, T=0.8): ``te`` (Transformer
   Engine's Triton parallel_cross_entropy), ``chunked`` (ours) and ``megatron``, against an
   fp64 reference — max |Δ| of values and gradients, time fwd+bwd, and peak extra memory
   ÷ the bf16 logits bytes.
2. The Megatron learner on NCCL in bf16 with the distributed optimizer (local layer spec
   unless TE's layers import): ECHO step time, tokens/s, model FLOPs utilization (6·N·T
   + attention, against the dense bf16 peak), peak memory; and the ECHO overhead ratio
   (λ=0.05 ÷ λ=0 step time, same batch, alternating).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

PEAK_BF16 = {"H100": 989e12, "H200": 989e12}  # dense bf16 tensor-core peak (SXM)


def logprob_check(impls: list[str], V: int = 151_936, N: int = 8192, T: float = 0.8) -> list[dict]:
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl", init_method="tcp://127.0.0.1:29541", rank=0, world_size=1)

    from pipeline.learner.logprobs import token_logprobs

    g = torch.Generator(device="cuda").manual_seed(0)
    base = (torch.randn(N, V, device="cuda", generator=g) * 3).bfloat16()
    targets = torch.randint(0, V, (N,), device="cuda", generator=g)
    x64 = base.double().requires_grad_()
    ref = torch.log_softmax(x64 / T, -1).gather(-1, targets[:, None])[:, 0]
    ref.sum().backward()
    rows = []
    for impl in impls:
        try:
            leaf = base.clone().requires_grad_()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start = torch.cuda.memory_allocated()
            times = []
            for _ in range(4):
                leaf.grad = None
                t0 = time.perf_counter()
                out = token_logprobs(leaf * 1, targets, tp_group=dist.group.WORLD, vocab_size=V, temperature=T, impl=impl)
                out.sum().backward()
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            peak = torch.cuda.max_memory_allocated() - start
            logits_bytes = base.numel() * 2
            # peak above the live leaf during fwd+bwd, in units of the bf16 logits bytes: the
            # leaf*1 copy handed over and the grad count here for every impl
            extra = peak / logits_bytes
            rows.append({"impl": impl, "max_abs_err": float((out.double() - ref).abs().max()),
                         "max_grad_err": float((leaf.grad.double() - x64.grad).abs().max()),
                         "ms_fwd_bwd": statistics.median(times[1:]) * 1e3, "extra_mem_x_logits": extra})  # fmt: skip
        except Exception as e:  # noqa: BLE001 - report and go on
            rows.append({"impl": impl, "error": f"{type(e).__name__}: {e}"[:300]})
    del base, x64, ref
    torch.cuda.empty_cache()
    return rows


def learner_bench(model: str, tokens: int, repeats: int) -> dict:
    from pipeline.advantages import group_advantages
    from pipeline.config import load_config
    from pipeline.learner.learner import Learner
    from pipeline.learner.smoke import synthetic_trajectories
    from pipeline.trajectory import pack_micro_batches

    cfg = load_config(None, [f"model.hf_config={model}", "model.dtype=bfloat16", "optim.lr=1e-6",
                             f"learner.micro_batch_tokens={tokens}"])  # fmt: skip
    learner = Learner(cfg.model, cfg.parallel, cfg.optim, cfg.learner, cfg.loss)
    hf = learner.hf
    trajs = synthetic_trajectories(32, vocab_size=hf["vocab_size"], min_len=tokens // 4, max_len=tokens // 2, seed=0)
    mbs = pack_micro_batches(trajs, group_advantages(trajs, cfg.advantages), tokens)[0]
    echo = dataclasses.replace(cfg.loss, mode="echo", env_coef=0.05)
    grpo = dataclasses.replace(cfg.loss, mode="grpo")
    times = {"echo": [], "grpo": []}
    torch.cuda.reset_peak_memory_stats()
    for i in range(repeats + 1):
        for name, lc in (("grpo", grpo), ("echo", echo)) if i % 2 else (("echo", echo), ("grpo", grpo)):
            learner.loss_cfg = lc
            torch.cuda.synchronize()
            m = learner.train_step(mbs, step=0)
            torch.cuda.synchronize()
            if i:
                times[name].append(m["step_time_s"])
    n_tok = sum(mb.num_tokens for mb in mbs)
    n_params = sum(p.numel() for p in learner.model.module.parameters())
    L, H, D = hf["num_hidden_layers"], hf["num_attention_heads"], hf["head_dim"]
    lens = [len(t) - 1 for t in trajs]
    attn = sum(12 * L * H * D * n * n / 2 for n in lens)  # causal QK^T and AV, fwd+bwd, per sequence
    flops = 6 * n_params * n_tok + attn
    step = statistics.median(times["echo"])
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16.items() if k in name), 989e12)
    return {"model": model, "device": name, "params": n_params, "tokens_per_step": n_tok, "micro_batches": len(mbs),
            "echo_step_s": step, "grpo_step_s": statistics.median(times["grpo"]),
            "echo_overhead": step / statistics.median(times["grpo"]), "tokens_per_s": n_tok / step,
            "mfu": flops / step / peak, "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
            "te_layers": learner.use_te, "logprob_impl": learner.logprob_impl,
            "loss": m["loss"], "grad_norm": m["grad_norm"]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="configs/models/qwen3-1.7b.json")
    ap.add_argument("--tokens", type=int, default=2048, help="micro-batch tokens (no flash attention without TE)")
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--impls", default="chunked,megatron", help="log-prob impls to check (te needs TE)")
    ap.add_argument("--temperatures", default="0.8", help="comma-separated T for the log-prob check")
    ap.add_argument("--no-learner", action="store_true", help="only the log-prob check")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    res = {"logprobs": [dict(r, T=float(T)) for T in a.temperatures.split(",")
                        for r in logprob_check(a.impls.split(","), T=float(T))]}  # fmt: skip
    for r in res["logprobs"]:
        print(r)
    if not a.no_learner:
        res["learner"] = learner_bench(a.model, a.tokens, a.repeats)
        print(json.dumps(res["learner"], indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
