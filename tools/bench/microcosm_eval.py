"""Microcosm evaluation speed at the original scale: episodes/s and tokens/s of one
evaluation (``World.rollouts``) of a random-init 10.7M model with the HF engine, without
and with the prefix cache (keys/values kept across an episode's turns), same episodes,
one process; prints the ratio.

    python tools/bench/microcosm_eval.py [--mazes 16] [--config configs/microcosm/original.yaml]

A random policy walks the full ``max_turns`` moves, so this is the longest episode the
evaluation sees. Figures: the README's microcosm section.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/microcosm/original.yaml")
    ap.add_argument("--mazes", type=int, default=16)
    a = ap.parse_args()
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from pipeline.engines.hf import HFEngine
    from pipeline.microcosm.world import World, load_microcosm_config
    from pipeline.trajectory import Role

    tmp = Path(tempfile.mkdtemp(prefix="bench-mc-"))
    try:
        mc = load_microcosm_config(str(ROOT / a.config), [f"out_dir={tmp / 'mc'}", "seeds=[0]", f"eval_mazes={a.mazes}"])
        world = World(mc, 0)
        cfg = {k: v for k, v in json.loads((ROOT / mc.model).read_text()).items() if k != "architectures"}
        torch.manual_seed(0)
        Qwen3ForCausalLM(Qwen3Config(**cfg)).save_pretrained(tmp / "m")
        for f in world.tok_dir.iterdir():
            shutil.copy(f, tmp / "m" / f.name)
        wall = {}
        for cached in (False, True):
            engine = HFEngine(tmp / "m", seed=0, pad_token_id=world.tok.pad_token_id, max_batch=256,
                              prefix_cache=cached)  # fmt: skip
            t0 = time.perf_counter()
            trajs = world.rollouts(engine, world.eval_tasks, mc.eval_samples, 0)
            dt = wall[cached] = time.perf_counter() - t0
            engine.close()
            toks = sum(len(t.token_ids) for t in trajs)
            sampled = sum(sum(1 for r in t.roles if r == Role.ACTION) for t in trajs)
            print(f"HF engine, prefix cache {'on ' if cached else 'off'}, {mc.model}: {len(trajs)} episodes in "
                  f"{dt:.1f} s ({len(trajs) / dt:.2f} episodes/s, {toks / len(trajs):.0f} tokens each, "
                  f"{toks / dt:.0f} episode tokens/s, {sampled / dt:.0f} sampled tokens/s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"prefix cache on / off wall time: {wall[True] / wall[False]:.3f}")


if __name__ == "__main__":
    main()
