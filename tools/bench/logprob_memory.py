"""Log-prob memory: extra peak memory of each per-token log-prob path ÷ bf16 logits bytes.

    python tools/bench/logprob_memory.py [--tokens 2048] [--vocab 151936] [--hidden 64]

For each path, a fresh child process builds bf16 logits = hidden @ Wᵀ (a real output
layer, so the gradient flows on into a matmul), records its RSS, then runs log-probs of
the realized tokens forward + backward and reads the process's peak RSS. Extra = peak −
RSS before the call; ratio = extra ÷ (tokens × vocab × 2 bytes). Paths:

- naive:     ``log_softmax(logits.float()).gather`` (materializes fp32 [N × V] twice+)
- megatron:  Megatron-Core ``vocab_parallel_cross_entropy`` (fp32 copy + saved softmax)
- chunked:   ours (``token_logprobs``, chunk_rows rows of fp32 at a time, in-place grad)

Goal for ours: ≤ 0.25× (O(tokens), not O(tokens × vocab)).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(variant: str, tokens: int, vocab: int, hidden: int, chunk_rows: int) -> dict:
    import torch

    torch.manual_seed(0)
    h = torch.randn(tokens, hidden, dtype=torch.bfloat16, requires_grad=True)
    w = (torch.randn(vocab, hidden) * 0.05).to(torch.bfloat16).requires_grad_()
    targets = torch.randint(0, vocab, (tokens,))
    if variant == "megatron":
        import torch.distributed as dist
        from megatron.core import parallel_state

        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29561", RANK="0", WORLD_SIZE="1")
        dist.init_process_group("gloo")
        parallel_state.initialize_model_parallel(1, 1)
    logits = h @ w.t()  # [N, V] bf16, the output layer
    logits_bytes = logits.numel() * logits.element_size()
    base_rss, base_peak = _rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if variant == "naive":
        lp = torch.log_softmax(logits.float(), dim=-1).gather(1, targets[:, None]).squeeze(1)
    else:
        from pipeline.learner.logprobs import token_logprobs

        lp = token_logprobs(logits, targets, impl=variant, chunk_rows=chunk_rows)
    del logits
    lp.sum().backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"variant": variant, "logits_bytes": logits_bytes, "extra": peak - base_rss,
            "peak_before_call_was_higher": base_peak >= peak}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--chunk-rows", type=int, default=64)
    ap.add_argument("--variants", default="naive,megatron,chunked")
    ap.add_argument("--child", default="")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.tokens, args.vocab, args.hidden, args.chunk_rows)))
        return
    print(f"tokens {args.tokens}, vocab {args.vocab}: bf16 logits = "
          f"{args.tokens * args.vocab * 2 / 2**20:.0f} MiB")  # fmt: skip
    rows = []
    for variant in args.variants.split(","):
        cmd = [sys.executable, __file__, "--child", variant, "--tokens", str(args.tokens),
               "--vocab", str(args.vocab), "--hidden", str(args.hidden),
               "--chunk-rows", str(args.chunk_rows)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                             env=dict(os.environ, PYTHONWARNINGS="ignore"))  # fmt: skip
        r = json.loads(out.stdout.strip().splitlines()[-1])
        ratio = max(r["extra"], 0) / r["logits_bytes"]
        note = "  (peak was before the call: ratio is an upper bound)" if r["peak_before_call_was_higher"] else ""
        print(f"{variant:9s} extra peak {r['extra'] / 2**20:8.0f} MiB = {ratio:.3f} x logits bytes{note}")
        rows.append((variant, ratio))
    ratios = dict(rows)
    if "naive" in ratios and "chunked" in ratios:
        print(f"chunked / naive extra memory: {ratios['chunked'] / ratios['naive']:.3f}")


if __name__ == "__main__":
    main()
