"""Microcosm evaluation speed at the original scale: episodes/s and tokens/s of one
evaluation (``World.rollouts``) of a random-init 10.7M model with the HF engine.

    python tools/bench/microcosm_eval.py [--mazes 16] [--config configs/microcosm/original.yaml]

A random policy walks the full ``max_turns`` moves, so this is the longest episode the
evaluation sees. Measured on 2 cores: 32 episodes, 274 tokens each, 27.7 s.
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
    from pipeline.microcosm import World, load_microcosm_config

    tmp = Path(tempfile.mkdtemp(prefix="bench-mc-"))
    try:
        mc = load_microcosm_config(str(ROOT / a.config), [f"out_dir={tmp / 'mc'}", "seeds=[0]", f"eval_mazes={a.mazes}"])
        world = World(mc, 0)
        cfg = {k: v for k, v in json.loads((ROOT / mc.model).read_text()).items() if k != "architectures"}
        torch.manual_seed(0)
        Qwen3ForCausalLM(Qwen3Config(**cfg)).save_pretrained(tmp / "m")
        for f in world.tok_dir.iterdir():
            shutil.copy(f, tmp / "m" / f.name)
        engine = HFEngine(tmp / "m", seed=0, pad_token_id=world.tok.pad_token_id, max_batch=256)
        t0 = time.perf_counter()
        trajs = world.rollouts(engine, world.eval_tasks, mc.eval_samples, 0)
        dt = time.perf_counter() - t0
        engine.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    toks = sum(len(t.token_ids) for t in trajs)
    print(f"HF engine, {mc.model}: {len(trajs)} episodes in {dt:.1f} s ({len(trajs) / dt:.2f} episodes/s, "
          f"{toks / len(trajs):.0f} tokens each, {toks / dt:.0f} episode tokens/s)")


if __name__ == "__main__":
    main()
