"""Where a supervised run's final weights disagree with the explorer, move by move.

    python tools/microcosm_move_errors.py --config configs/microcosm/original.yaml \
        --seed 0 --arm action+output [--mazes 64] [--ckpt DIR] [overrides...]

On fresh mazes (their own stream, not the evaluation's) the explorer's episodes are run
through the real agent loop; each of its moves is scored by the model under teacher forcing
(the model sees exactly the episode so far). Moves are classed by what the explorer needs
to choose them:

- ``undo``: the last move raised the distance: go back (the last observation says so);
- ``first try``: arrived at a cell by a good move: the first open side in the fixed order
  that is not the way back;
- ``next try``: back at a fork after an undo: the next open side not yet tried here, which
  needs the sides already tried at this cell (the moves since arriving at it).

``forced``: only one side is left to choose from (the order does not matter). Prints one
JSON line per class (moves, mean p(explorer's move), share where it is the model's argmax,
share where the model's argmax is to reverse the last move: ``argmax_reverses``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.microcosm.world import Agent, World, load_microcosm_config  # noqa: E402
from pipeline.microcosm.arms import supervised_run_dir  # noqa: E402


def move_classes(maze) -> list[tuple[str, bool, str | None]]:
    """(class, forced, the reverse of the previous move) of each of the explorer's moves (``explore_actions``'s own bookkeeping)."""
    from pipeline.tasks.maze import DIRECTIONS, OPPOSITE, explore_actions

    moves = explore_actions(maze)
    dist, cell, back, tried, out = maze.distances(), maze.start, None, {}, []
    prev_up = prev_undo = False
    prev = None  # the previous move
    for d in moves:
        if prev_up:
            kind, forced = "undo", True
        else:
            t = tried.setdefault(cell, set())
            left = [x for x in DIRECTIONS if maze.can_move(cell, x) and x not in t and x != back]
            kind, forced = ("next try" if prev_undo else "first try"), len(left) == 1
            t.add(d)
        nxt = maze.step(cell, d)
        up = dist[nxt] > dist[cell]
        if not prev_up and not up:
            back = OPPOSITE[d]
        prev_undo, prev_up = prev_up, (up and not prev_up)
        out.append((kind, forced, OPPOSITE[prev] if prev else None))
        cell, prev = nxt, d
    return out


def main() -> int:
    import torch
    from transformers import AutoModelForCausalLM

    from pipeline.tasks.maze import Maze
    from pipeline.trajectory import Role

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/microcosm/original.yaml")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arm", default="action+output")
    p.add_argument("--ckpt", default="", help="a checkpoint dir (default: the supervised arm's of this config)")
    p.add_argument("--mazes", type=int, default=64)
    p.add_argument("overrides", nargs="*")
    a = p.parse_args()
    mc = load_microcosm_config(a.config, a.overrides)
    ckpt = Path(a.ckpt) if a.ckpt else supervised_run_dir(mc, a.seed, a.arm) / "ckpt"
    if not ckpt.is_dir():
        print(f"{ckpt}: no checkpoint", file=sys.stderr)
        return 2
    world = World(mc, a.seed)
    tasks = world.tasks(mc.train_sizes, a.mazes, 9)  # a stream of its own (World: 1-5, 100+, 500+, 100_000+)
    trajs = {t.task_id: t for t in world.reference(tasks, "explore")}
    agent = Agent(world, "sft", 0.0, mc.sup_lr, load=str(ckpt), workdir=ckpt.parent / "move-errors")
    agent.close()
    model = AutoModelForCausalLM.from_pretrained(ckpt.parent / "move-errors" / "engine_model").eval()
    stats: dict[str, list[float]] = {}
    for task in tasks:
        traj = trajs[task.task_id]
        maze = Maze.from_json((task.task_dir / "maze.json").read_text())
        classes = move_classes(maze)
        ids = torch.tensor([traj.token_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].float(), -1)
        firsts, seen = [], set()  # the first ACTION token of each turn: the move word
        for i, (r, turn) in enumerate(zip(traj.roles, traj.turn_ids)):
            if r == int(Role.ACTION) and turn not in seen:
                seen.add(turn)
                firsts.append(i)
        for (kind, forced, rev), i in zip(classes, firsts):
            lp, top = logp[i - 1], int(logp[i - 1].argmax())
            rev_id = world.tok.convert_tokens_to_ids(rev) if rev else -1
            for key in (kind, f"{kind} ({'forced' if forced else 'a choice'})", "all"):
                stats.setdefault(key, []).append((float(lp[traj.token_ids[i]].exp()), top == traj.token_ids[i], top == rev_id))
    for key in sorted(stats):
        v = stats[key]
        mean = lambda j: round(sum(float(x[j]) for x in v) / len(v), 4)  # noqa: E731
        print(json.dumps({"seed": a.seed, "ckpt": str(ckpt), "class": key, "moves": len(v), "p_expert": mean(0),
                          "argmax_agrees": mean(1), "argmax_reverses": mean(2)}))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
