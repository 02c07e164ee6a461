"""Where a microcosm rerun with the same seed departs from the first run, and by how much.

    python tools/microcosm_rerun_spread.py --config configs/microcosm/speed.yaml --start RUN_DIR/ckpt [--repeats 3]

Samples one RL step's episodes (``tasks_per_step`` × ``group_size``, seed 0's step-0 tasks)
``--repeats`` times from the same weights, each time with an empty prefix store, and compares
the repeats with the first: the sampled tokens (per-request seeded generators: batch
composition must not change them) and the sampler log-probs bit for bit (the HF engine's
batched forward: its padded layout depends on which episodes the worker thread took
together). Prints one JSON line per repeat.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from pipeline.microcosm.world import Agent, World, load_microcosm_config

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/microcosm/speed.yaml")
    p.add_argument("--start", required=True, help="a checkpoint dir (e.g. a supervised run's ckpt)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("overrides", nargs="*")
    a = p.parse_args()
    mc = load_microcosm_config(a.config, a.overrides)
    world = World(mc, mc.seeds[0])
    agent = Agent(world, "grpo", 0.0, mc.rl_lr, load=a.start, workdir=Path(mc.out_dir) / "rerun-spread")
    tasks = world.tasks(mc.train_sizes, mc.tasks_per_step, 100)
    runs = []
    try:
        for _ in range(a.repeats):
            agent.engine.store.clear()
            runs.append(world.rollouts(agent.engine, tasks, mc.group_size, 0))
    finally:
        agent.close()
    first = runs[0]
    for k, run in enumerate(runs[1:], 1):
        same_tokens = [x.token_ids == y.token_ids for x, y in zip(first, run)]
        lp = lambda t: [v for v in t.sampler_logprobs if v == v]  # noqa: E731  (nan off the ACTION tokens)
        deltas = [max((abs(u - v) for u, v in zip(lp(x), lp(y))), default=0.0)
                  for x, y, same in zip(first, run, same_tokens) if same]  # fmt: skip
        print(json.dumps({"repeat": k, "episodes": len(run), "same_tokens": sum(same_tokens),
                          "same_logprobs_bitwise": sum(d == 0.0 for d in deltas),
                          "max_abs_logprob_delta": max(deltas, default=0.0)}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
