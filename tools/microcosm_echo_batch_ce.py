"""Does ECHO's update lower the terminal's CE where it trains, and what does it do to the probe?

    python tools/microcosm_echo_batch_ce.py --config configs/microcosm/original.yaml \
        --seed 0 --coef 0.2 --steps 6 rl_start=supervised-action+output [overrides...]

From the RL arms' start (``rl_start``: the random-walk warm start or a supervised arm), runs
``--steps`` ECHO steps on the rl arms' own task stream and prints, per step, the OUTPUT CE of
that step's own rollouts before and after its update, and the world-model probe (held-out
BFS-expert episodes) after it. The README's microcosm section quotes it: the update lowers
its batch's CE while the probe can rise (the policy's episodes are not the expert's).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.microcosm.world import Agent, World, load_microcosm_config  # noqa: E402
from pipeline.microcosm.arms import warm_start  # noqa: E402


def main() -> int:
    from pipeline.advantages import AdvantageConfig, group_advantages
    from pipeline.evaluate import world_model_probe

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/microcosm/original.yaml")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--coef", type=float, default=0.2)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("overrides", nargs="*")
    a = p.parse_args()
    mc = load_microcosm_config(a.config, a.overrides)
    world = World(mc, a.seed)
    ckpt, _ = warm_start(world)  # the rl arms' start (trained first if not cached), as rl_arm gets it
    agent = Agent(world, "echo", a.coef, mc.rl_lr, load=str(ckpt), workdir=ckpt.parent / f"echo-batch-ce-{a.coef:g}",
                  loss=mc.rl_loss)  # fmt: skip
    ce = lambda trajs: world_model_probe(agent.learner, trajs, mc.micro_batch_tokens)["probe/output_ce"]  # noqa: E731
    try:
        print(json.dumps({"step": 0, "probe_ce": round(ce(world.probe), 4)}), flush=True)
        for step in range(a.steps):
            tasks = world.tasks(mc.train_sizes, mc.tasks_per_step, 100 + step)  # the rl arms' stream
            trajs = [t for t in world.rollouts(agent.engine, tasks, mc.group_size, step) if not t.infra_error]
            before = ce(trajs)
            agent.train(trajs, group_advantages(trajs, AdvantageConfig()), step)
            print(json.dumps({"step": step + 1, "batch_ce_before": round(before, 4), "batch_ce_after": round(ce(trajs), 4),
                              "probe_ce": round(ce(world.probe), 4)}), flush=True)  # fmt: skip
    finally:
        agent.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
