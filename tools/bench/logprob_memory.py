"""The output stage's memory and time: output-layer matmul + per-token log-probs + backward.

    python tools/bench/logprob_memory.py [--tokens 2048] [--vocab 151936] [--hidden 64] [--dtype float32]

For each path, a fresh child process holds the final hidden states h [N, H] and the
output-layer weight W [V, H], records its RSS, then runs the whole output stage forward
and backward (so the gradient reaches h and W) and reads the process's peak RSS, then
times ``--repeat`` more runs of it (median). Extra = peak − RSS before; both are printed
as ratios: extra ÷ bf16 logits bytes (N × V × 2; the largest tensor of a long-context step)
and time ÷ ``chunked`` (the path before ``fused``). Paths:

- naive:     ``log_softmax((h @ Wᵀ).float()).gather`` (materializes fp32 [N × V] twice+)
- megatron:  h @ Wᵀ, then Megatron-Core ``vocab_parallel_cross_entropy`` (fp32 copy + saved softmax)
- chunked:   h @ Wᵀ, then ours (``token_logprobs``, chunk_rows rows of fp32 at a time, in-place grad)
- fused:     ``fused_linear_token_logprobs(h, W)``: the logits never exist (the learner's
             default where Transformer Engine is not)

Goals for fused: extra ≤ 0.1× the bf16 logits, time ≤ 1.3× chunked.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(variant: str, tokens: int, vocab: int, hidden: int, chunk_rows: int, dtype: str, repeat: int) -> dict:
    import torch

    torch.manual_seed(0)
    dt = getattr(torch, dtype)
    h = torch.randn(tokens, hidden, dtype=dt, requires_grad=True)
    w = (torch.randn(vocab, hidden) * 0.05).to(dt).requires_grad_()
    targets = torch.randint(0, vocab, (tokens,))
    if variant == "megatron":
        import torch.distributed as dist
        from megatron.core import parallel_state

        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29561", RANK="0", WORLD_SIZE="1")
        dist.init_process_group("gloo")
        parallel_state.initialize_model_parallel(1, 1)
    from pipeline.learner.logprobs import fused_linear_token_logprobs, token_logprobs

    def stage():
        if variant == "fused":
            lp = fused_linear_token_logprobs(h, w, targets, chunk_rows=chunk_rows)
        else:
            logits = h @ w.t()  # [N, V]: the output layer
            if variant == "naive":
                lp = torch.log_softmax(logits.float(), dim=-1).gather(1, targets[:, None]).squeeze(1)
            else:
                lp = token_logprobs(logits, targets, impl=variant, chunk_rows=chunk_rows)
            del logits
        lp.sum().backward()
        h.grad = w.grad = None

    base_rss, base_peak = _rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    stage()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        stage()
        times.append(time.perf_counter() - t0)
    return {"variant": variant, "bf16_logits_bytes": tokens * vocab * 2, "extra": peak - base_rss,
            "peak_before_call_was_higher": base_peak >= peak, "seconds": statistics.median(times)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--chunk-rows", type=int, default=64)
    ap.add_argument("--dtype", default="float32", help="float32 (the CPU learner) or bfloat16")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--variants", default="naive,megatron,chunked,fused")
    ap.add_argument("--child", default="")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.tokens, args.vocab, args.hidden, args.chunk_rows, args.dtype,
                               args.repeat)))  # fmt: skip
        return
    print(f"tokens {args.tokens}, vocab {args.vocab}, hidden {args.hidden}, {args.dtype}: bf16 logits = "
          f"{args.tokens * args.vocab * 2 / 2**20:.0f} MiB")  # fmt: skip
    rows = {}
    for variant in args.variants.split(","):
        cmd = [sys.executable, __file__, "--child", variant, "--tokens", str(args.tokens), "--vocab", str(args.vocab),
               "--hidden", str(args.hidden), "--chunk-rows", str(args.chunk_rows), "--dtype", args.dtype,
               "--repeat", str(args.repeat)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
        if out.returncode != 0:
            print(f"{variant:9s} failed: {out.stderr.strip().splitlines()[-1][:200] if out.stderr.strip() else out.returncode}")
            continue
        rows[variant] = r = json.loads(out.stdout.strip().splitlines()[-1])
        note = "  (peak was before the call: an upper bound)" if r["peak_before_call_was_higher"] else ""
        print(f"{variant:9s} extra peak {r['extra'] / 2**20:8.0f} MiB = {max(r['extra'], 0) / r['bf16_logits_bytes']:.3f} x "
              f"bf16 logits, {r['seconds'] * 1e3:8.0f} ms{note}")  # fmt: skip
    if "chunked" in rows:
        base = rows["chunked"]["seconds"]
        print("time / chunked: " + ", ".join(f"{v} {r['seconds'] / base:.2f}" for v, r in rows.items()))


if __name__ == "__main__":
    main()
