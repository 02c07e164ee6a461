"""Learner attention memory: extra peak memory of one forward + backward, packed attention
(``learner.attention=packed``: THD, no mask tensor) ÷ the block-diagonal mask path
(``mask``: Megatron's local attention on a ``[1, 1, S, S]`` mask), at growing lengths.

    python tools/bench/attention_memory.py [--tokens 2048,8192] [--sequences 1]
        [--recompute none,selective,full] [--out tools/bench/results/activation_memory_cpu.json]

Each (path, length) runs in a fresh process: the real Learner (Megatron-Core on gloo,
one CPU rank, fp32) on a widened tiny Qwen3 (h=512, 8 heads, 4 KV groups, 2 layers).
A first step on a short batch allocates the optimizer state; then one step on a packed
micro-batch of S tokens (``--sequences`` episodes of S/n tokens). Extra = peak RSS − RSS
before that step. The mask path grows as S² (scores and probabilities per head), the
packed path as S, so the ratio must fall with length. ``--recompute`` adds the packed
path under ``learner.recompute`` (the activation bytes per token the scaling plan uses).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

WIDE = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 1152, "hidden_size": 512,
        "intermediate_size": 1024, "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 4,
        "head_dim": 64, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": True,
        "max_position_embeddings": 65536}  # fmt: skip


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(attention: str, recompute: str, tokens: int, sequences: int, hf_config: str) -> dict:
    from pipeline.advantages import group_advantages
    from pipeline.config import load_config
    from pipeline.learner.learner import Learner
    from pipeline.learner.smoke import synthetic_trajectories
    from pipeline.trajectory import pack_micro_batches

    cfg = load_config(None, [f"model.hf_config={hf_config}", f"learner.micro_batch_tokens={tokens}",
                             f"learner.attention={attention}", f"learner.recompute={recompute}", "optim.lr=1e-5"])  # fmt: skip
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29600 + os.getpid() % 1000))
    learner = Learner(cfg.model, cfg.parallel, cfg.optim, cfg.learner, cfg.loss, seed=0)

    def batch(n, length):
        trajs = synthetic_trajectories(n, vocab_size=WIDE["vocab_size"], group_size=n, min_len=length, max_len=length)
        return pack_micro_batches(trajs, group_advantages(trajs, cfg.advantages), tokens, num_shards=1)[0]

    learner.train_step(batch(2, 64), 0)  # optimizer state allocated here
    mbs = batch(sequences, tokens // sequences)
    base = _rss_bytes()
    learner.train_step(mbs, 1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"attention": attention, "recompute": recompute, "tokens": sum(mb.num_tokens for mb in mbs),
            "extra_bytes": peak - base}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", default="2048,8192")
    ap.add_argument("--sequences", type=int, default=1)
    ap.add_argument("--recompute", default="none")
    ap.add_argument("--child", default="")
    ap.add_argument("--hf-config", default="")
    ap.add_argument("--out", default="", help="write the figures as JSON (the scaling plan reads "
                    "tools/bench/results/activation_memory_cpu.json)")
    a = ap.parse_args()
    if a.child:
        attention, recompute, tokens = a.child.split(":")
        print("RESULT " + json.dumps(child(attention, recompute, int(tokens), a.sequences, a.hf_config)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "config.json"
        cfg.write_text(json.dumps(WIDE))
        arms = [("mask", "none")] + [("packed", r) for r in a.recompute.split(",")]
        rows = []
        for tokens in [int(t) for t in a.tokens.split(",")]:
            for attention, recompute in arms:
                r = subprocess.run([sys.executable, __file__, "--child", f"{attention}:{recompute}:{tokens}",
                                    "--sequences", str(a.sequences), "--hf-config", str(cfg)], cwd=ROOT,
                                   capture_output=True, text=True,
                                   env=dict(os.environ, OMP_NUM_THREADS="2", PYTHONWARNINGS="ignore"))  # fmt: skip
                line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
                if r.returncode or not line:
                    raise SystemExit(f"{attention}/{recompute} at {tokens}: failed\n{r.stderr[-3000:]}")
                rows.append(json.loads(line[0][7:]))
                print(json.dumps(rows[-1]), flush=True)
    print(f"\nh={WIDE['hidden_size']}, {WIDE['num_hidden_layers']} layers, {WIDE['num_attention_heads']} heads, "
          f"{a.sequences} sequence(s) per micro-batch; extra peak MiB of one forward+backward")  # fmt: skip
    print("| tokens | mask | packed (recompute) | packed ÷ mask | packed bytes/token |")
    print("|---|---|---|---|---|")
    for tokens in sorted({r["tokens"] for r in rows}):
        mask = next(r for r in rows if r["tokens"] == tokens and r["attention"] == "mask")
        for p in (r for r in rows if r["tokens"] == tokens and r["attention"] == "packed"):
            print(f"| {tokens} | {mask['extra_bytes'] / 2**20:.0f} | {p['extra_bytes'] / 2**20:.0f} ({p['recompute']}) | "
                  f"{p['extra_bytes'] / mask['extra_bytes']:.3f} | {p['extra_bytes'] / tokens:,.0f} |")  # fmt: skip
    if a.out:
        longest = max(r["tokens"] for r in rows)
        packed = {r["recompute"]: r["extra_bytes"] for r in rows if r["tokens"] == longest and r["attention"] == "packed"}
        out = {"model": WIDE, "sequences": a.sequences, "rows": rows, "ratio_to_none_tokens": longest}
        if "none" in packed:
            out["ratio_to_none"] = {k: v / packed["none"] for k, v in packed.items()}
        Path(a.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
