"""Evaluate a finished supervised run's final weights at other sampling temperatures:
how much of the gap between the imitation and its expert is sampling (a wrong move drawn
with small probability, compounding over up to ``max_turns`` moves) rather than the mode.

    python tools/microcosm_checkpoint_eval.py --config configs/microcosm/original.yaml \
        --seeds 1,2 --temperatures 1.0,0.5,0.01 [--mazes 216]

Same evaluation mazes and samples per maze as the run (``World``'s streams depend on the
seed only); at T=1 it repeats the run's last evaluation, a check that the checkpoint is
the run's. Prints one JSON line per (arm, seed, temperature) and a table; the README
quotes it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.microcosm.world import Agent, World, load_microcosm_config  # noqa: E402
from pipeline.microcosm.arms import supervised_run_dir  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/microcosm/original.yaml")
    p.add_argument("--seeds", default="1,2")
    p.add_argument("--arms", default="action,action+output")
    p.add_argument("--temperatures", default="1.0,0.5,0.01")
    p.add_argument("--mazes", type=int, default=0, help="first N evaluation mazes (0: all of eval_mazes)")
    p.add_argument("--out", default="", help="also write the JSON lines here")
    p.add_argument("overrides", nargs="*", help="key=value, as for echo-rl microcosm (e.g. out_dir=runs/m2)")
    a = p.parse_args()
    mc = load_microcosm_config(a.config, a.overrides)
    results = []
    temps = [float(t) for t in a.temperatures.split(",")]
    for seed in [int(s) for s in a.seeds.split(",")]:
        worlds = {t: World(replace(mc, temperature=t), seed) for t in temps}  # same mazes: the streams depend on the seed only
        for arm in a.arms.split(","):
            ckpt = supervised_run_dir(mc, seed, arm) / "ckpt"
            if not ckpt.is_dir():
                print(f"{ckpt}: no checkpoint (run `echo-rl microcosm supervised` for seed {seed} first)", file=sys.stderr)
                return 2
            for temp, world in worlds.items():
                tasks = world.eval_tasks[: a.mazes or None]
                agent = Agent(world, "sft", 0.0, mc.sup_lr, load=str(ckpt), workdir=ckpt.parent / f"eval-T{temp:g}")
                t0 = time.perf_counter()
                try:
                    ev = agent.evaluate(tasks, mc.sup_steps)
                finally:
                    agent.close()
                per_maze = [float(v) for v in ev["per_maze"].split()]
                r = {"arm": arm, "seed": seed, "temperature": temp, "mazes": len(tasks), "samples": mc.eval_samples,
                     "solve_rate": ev["solve_rate"], "probe_ce": ev["probe_ce"],
                     "sem": statistics.stdev(per_maze) / len(per_maze) ** 0.5, "seconds": round(time.perf_counter() - t0, 1)}
                results.append(r)
                print(json.dumps(r), flush=True)
    if a.out:
        Path(a.out).write_text("".join(json.dumps(r) + "\n" for r in results))
    print("\n| arm | seed | T | solve rate (± 1.96 SE over mazes) |\n|---|---|---|---|")
    for r in results:
        print(f"| {r['arm']} | {r['seed']} | {r['temperature']:g} | {r['solve_rate']:.3f} ± {1.96 * r['sem']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
