"""GPU checks and figures for the learner (one GPU, NCCL): run on an H100/H200.

    python tools/bench/gpu_learner.py [--model configs/models/qwen3-1.7b.json] [--tokens 4096]
    python tools/bench/gpu_learner.py --impls te,chunked --no-learner     # where TE imports

1. Log-probs at a Qwen3 vocabulary (V=151,936, 8,192 bf16 rows, T=0.8): ``te`` (Transformer
   Engine's Triton parallel_cross_entropy), ``chunked`` (ours) and ``megatron``, against an
   fp64 reference — max |Δ| of values and gradients, time fwd+bwd, and peak extra memory
   ÷ the bf16 logits bytes.
1b. The whole output stage (output-layer matmul + log-probs + backward) from bf16 hidden
   states [N, H] and weight [V, H]: ``fused`` (no logits) against the logits paths
   (``te``, ``chunked``): time, peak extra memory ÷ the bf16 logits bytes, max |Δ| of the
   log-probs and of dL/dhidden against fp64 (``output_stage_check``; runs on CPU too, small).
2. Packed attention (``learner.attention=packed``) on the GPU in bf16 against Megatron's
   ``DotProductAttention`` on the block-diagonal mask and against fp32: max |Δ| of values
   and gradients, for several packings (``attention_check``).
3. The Megatron learner on NCCL in bf16 with the distributed optimizer (local layer spec
   with ``--attention`` unless TE's layers import), at each ``--tokens`` micro-batch
   length (e.g. 4096,8192,16384,32768): ECHO step time, tokens/s, model FLOPs utilization
   (6·N·T + causal attention, against the dense bf16 peak), peak memory; and ECHO ÷ GRPO
   step time (λ=0.05 vs λ=0, same batch, alternating, ``--repeats`` ≥ 8).

    python tools/bench/gpu_learner.py --tokens 4096,8192,16384,32768 --repeats 8 \
        --attention packed --recompute none --out $OUT/learner.json
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
_LEARNER = None


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


def output_stage_check(impls: list[str], V: int = 151_936, N: int = 8192, H: int = 2048, T: float = 0.8,
                       device: str = "cuda") -> list[dict]:  # fmt: skip
    from pipeline.learner.logprobs import fused_linear_token_logprobs, token_logprobs

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    g = torch.Generator(device=device).manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    h = (torch.randn(N, H, device=device, generator=g) / H**0.5).to(dtype)
    w = (torch.randn(V, H, device=device, generator=g)).to(dtype)
    targets = torch.randint(0, V, (N,), device=device, generator=g)
    h64, w64 = h.double().requires_grad_(), w.double()
    ref = torch.log_softmax((h64 @ w64.t()) / T, -1).gather(-1, targets[:, None])[:, 0]
    ref.sum().backward()
    ref_dh, ref = h64.grad, ref.detach()
    del h64, w64
    rows = []
    for impl in impls:
        try:
            hl, wl = h.clone().requires_grad_(), w.clone().requires_grad_()
            sync()
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
                start = torch.cuda.memory_allocated()
            times = []
            for _ in range(4):
                hl.grad = wl.grad = None
                t0 = time.perf_counter()
                if impl == "fused":
                    out = fused_linear_token_logprobs(hl, wl, targets, temperature=T)
                else:
                    out = token_logprobs(hl @ wl.t(), targets, temperature=T, impl=impl)
                out.sum().backward()
                sync()
                times.append(time.perf_counter() - t0)
            peak = (torch.cuda.max_memory_allocated() - start) if device == "cuda" else float("nan")
            rows.append({"stage_impl": impl, "max_abs_err": float((out.detach().double() - ref).abs().max()),
                         "max_dhidden_err": float((hl.grad.double() - ref_dh).abs().max()),
                         "ms_fwd_bwd": statistics.median(times[1:]) * 1e3,
                         "extra_mem_x_bf16_logits": peak / (N * V * 2)})  # fmt: skip
        except Exception as e:  # noqa: BLE001 - report and go on
            rows.append({"stage_impl": impl, "error": f"{type(e).__name__}: {e}"[:300]})
    base = next((r["ms_fwd_bwd"] for r in rows if r.get("stage_impl") == "chunked" and "ms_fwd_bwd" in r), None)
    for r in rows:
        if base and "ms_fwd_bwd" in r:
            r["time_x_chunked"] = r["ms_fwd_bwd"] / base
    return rows


def attention_check() -> list[dict]:
    """PackedAttention in bf16 vs the masked reference (bf16) and vs fp32 (the kernel's error)."""
    from megatron.core.packed_seq_params import PackedSeqParams
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType

    from pipeline.learner.attention import PackedAttention
    from pipeline.learner.learner import block_causal_mask
    from pipeline.learner.model import load_hf_config, transformer_config

    hf = load_hf_config("configs/models/qwen3-1.7b.json")
    H, G, D = hf["num_attention_heads"], hf["num_key_value_heads"], hf["head_dim"]
    rows = []
    for lengths in ([1, 700, 3, 1344], [2048], [512] * 4):
        T = sum(lengths)
        cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
        psp = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=max(lengths),
                              max_seqlen_kv=max(lengths))  # fmt: skip
        g = torch.Generator(device="cuda").manual_seed(T)
        q0, k0, v0 = (torch.randn(T, n, D, device="cuda", generator=g) for n in (H, G, G))
        go = torch.randn(T, H * D, device="cuda", generator=g)
        res = {}
        for dtype in (torch.bfloat16, torch.float32):
            cfg = transformer_config(hf, dtype=dtype, on_gpu=True)
            for name, mod in (("packed", PackedAttention(cfg, 1)),
                              ("mask", DotProductAttention(cfg, 1, AttnMaskType.causal, "self"))):  # fmt: skip
                q, k, v = (x.to(dtype).requires_grad_() for x in (q0, k0, v0))
                if name == "packed":
                    out = mod(q, k, v, None, packed_seq_params=psp)
                else:
                    out = mod(q[:, None], k[:, None], v[:, None], block_causal_mask(cu.cpu(), T).cuda())[:, 0]
                (out.float() * go).sum().backward()
                res[(name, dtype)] = [x.float() for x in (out, q.grad, k.grad, v.grad)]
        err = lambda a, b: max(float((x - y).abs().max()) for x, y in zip(res[a], res[b]))  # noqa: E731
        rows.append({"lengths": lengths, "bf16_packed_vs_bf16_mask": err(("packed", torch.bfloat16), ("mask", torch.bfloat16)),
                     "bf16_packed_vs_fp32_mask": err(("packed", torch.bfloat16), ("mask", torch.float32)),
                     "bf16_mask_vs_fp32_mask": err(("mask", torch.bfloat16), ("mask", torch.float32)),
                     "fp32_packed_vs_fp32_mask": err(("packed", torch.float32), ("mask", torch.float32))})  # fmt: skip
    return rows


def learner_bench_one(model: str, tokens: int, repeats: int, attention: str = "packed", recompute: str = "none") -> dict:
    from pipeline.advantages import group_advantages
    from pipeline.config import load_config
    from pipeline.learner.learner import Learner
    from pipeline.learner.smoke import synthetic_trajectories
    from pipeline.trajectory import pack_micro_batches

    cfg = load_config(None, [f"model.hf_config={model}", "model.dtype=bfloat16", "optim.lr=1e-6",
                             f"learner.micro_batch_tokens={tokens}", f"learner.attention={attention}",
                             f"learner.recompute={recompute}"])  # fmt: skip
    global _LEARNER
    if _LEARNER is not None:  # one model per process: free the previous length's
        del _LEARNER
        torch.cuda.empty_cache()
    learner = _LEARNER = Learner(cfg.model, cfg.parallel, cfg.optim, cfg.learner, cfg.loss)
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
            "te_layers": learner.use_te, "logprob_impl": learner.logprob_impl, "attention": learner.attention,
            "recompute": recompute, "micro_batch_tokens": tokens,
            "loss": m["loss"], "grad_norm": m["grad_norm"]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="configs/models/qwen3-1.7b.json")
    ap.add_argument("--tokens", default="4096,8192,16384,32768", help="micro-batch token budgets, comma-separated")
    ap.add_argument("--attention", default="packed", help="learner.attention: packed | mask | auto")
    ap.add_argument("--recompute", default="none", help="learner.recompute: none | selective | full")
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--impls", default="chunked,megatron", help="log-prob impls to check (te needs TE)")
    ap.add_argument("--temperatures", default="0.8", help="comma-separated T for the log-prob check")
    ap.add_argument("--stage-impls", default="chunked,fused", help="output-stage paths (te needs TE)")
    ap.add_argument("--no-learner", action="store_true", help="only the log-prob checks")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    res = {"logprobs": [dict(r, T=float(T)) for T in a.temperatures.split(",")
                        for r in logprob_check(a.impls.split(","), T=float(T))]}  # fmt: skip
    for r in res["logprobs"]:
        print(r)
    res["output_stage"] = output_stage_check(a.stage_impls.split(","))
    for r in res["output_stage"]:
        print(r)
    if not a.no_learner:
        res["attention"] = attention_check()
        print(json.dumps(res["attention"], indent=2))
        res["learner"] = []
        for t in [int(x) for x in a.tokens.split(",")]:
            try:
                res["learner"].append(learner_bench_one(a.model, t, a.repeats, a.attention, a.recompute))
            except torch.cuda.OutOfMemoryError as e:
                res["learner"].append({"micro_batch_tokens": t, "error": f"OOM: {e}"[:300]})
            print(json.dumps(res["learner"][-1], indent=2), flush=True)
            if a.out:
                Path(a.out).write_text(json.dumps(res, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
