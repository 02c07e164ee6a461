"""ECHO overhead: learner step time with env_coef = λ ÷ env_coef = 0, same batch, same process.

    python tools/bench/echo_overhead.py [--model configs/models/qwen3-bench-small.json]
        [--repeats 8] [--tokens 2048] [--env-coef 0.05] [overrides...]

The two arms alternate (A B A B ...) on the same packed micro-batches with lr = 0, so the
weights and data are identical; the ratio of median step times is printed. The paper's
claim is ≈ 1.0 (the env term is a masked sum over the log-prob tensor the policy
gradient already needed); our bar is ≤ 1.02.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="configs/models/qwen3-bench-small.json")
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--trajectories", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=2048, help="micro-batch token budget")
    ap.add_argument("--env-coef", type=float, default=0.05)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_intermixed_args()

    from pipeline.advantages import group_advantages
    from pipeline.config import load_config
    from pipeline.learner.learner import Learner
    from pipeline.learner.smoke import synthetic_trajectories
    from pipeline.trajectory import pack_micro_batches

    cfg = load_config(None, [f"model.hf_config={args.model}", "optim.lr=0", "optim.grad_clip=0",
                             f"learner.micro_batch_tokens={args.tokens}", *args.overrides])  # fmt: skip
    learner = Learner(cfg.model, cfg.parallel, cfg.optim, cfg.learner, cfg.loss)
    trajs = synthetic_trajectories(args.trajectories, vocab_size=learner.hf["vocab_size"],
                                   min_len=200, max_len=500, seed=0)  # fmt: skip
    mbs = pack_micro_batches(trajs, group_advantages(trajs, cfg.advantages), args.tokens)[0]
    echo = dataclasses.replace(cfg.loss, mode="echo", env_coef=args.env_coef)
    grpo = dataclasses.replace(cfg.loss, mode="grpo")
    times = {"echo": [], "grpo": []}
    for i in range(args.repeats + 1):
        for name, loss_cfg in (("grpo", grpo), ("echo", echo)) if i % 2 else (("echo", echo), ("grpo", grpo)):
            learner.loss_cfg = loss_cfg
            m = learner.train_step(mbs, step=0)
            if i > 0:  # the first round warms up
                times[name].append(m["step_time_s"])
    tokens = sum(mb.num_tokens for mb in mbs)
    e, g = statistics.median(times["echo"]), statistics.median(times["grpo"])
    print(f"model {args.model}: {len(mbs)} micro-batches, {tokens} tokens/step, {args.repeats} repeats")
    print(f"step time  grpo (env_coef=0): {g * 1e3:8.1f} ms   echo (env_coef={args.env_coef}): {e * 1e3:8.1f} ms")
    print(f"ECHO overhead ratio (echo / grpo, median): {e / g:.4f}")


if __name__ == "__main__":
    main()
