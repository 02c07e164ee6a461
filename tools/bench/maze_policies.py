"""What the maze protocol lets a policy learn: solve rate within a move budget of the BFS
expert (knows the maze), the explorer (``explore_actions``: sees what the agent sees) and
a walk that never turns straight back and guesses at forks (what imitating BFS from the
agent's view can at best become, since BFS's choice at a fork is not in that view).

    python tools/bench/maze_policies.py [--mazes 3000] [--sizes 6,7,8] [--turns 32,40,48]

No model: the policies run on the maze itself (``pipeline/tasks/maze.py``). Figures: the
README's microcosm section.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipeline.tasks.maze import DIRECTIONS, OPPOSITE, bfs_actions, explore_actions, generate_maze  # noqa: E402


def guessing_walk(maze, rng: random.Random, turns: int) -> bool:
    """Follows the corridor, picks uniformly at forks, never straight back (unless a dead end)."""
    cell, back = maze.start, None
    for _ in range(turns):
        sides = [d for d in DIRECTIONS if maze.can_move(cell, d) and d != back] or [back]
        d = rng.choice(sides)
        cell, back = maze.step(cell, d), OPPOSITE[d]
        if cell == maze.goal:
            return True
    return False


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mazes", type=int, default=3000)
    ap.add_argument("--sizes", default="6,7,8")
    ap.add_argument("--turns", default="32,40,48")
    a = ap.parse_args()
    sizes, budgets = [int(x) for x in a.sizes.split(",")], [int(x) for x in a.turns.split(",")]
    rng, walk_rng = random.Random(0), random.Random(1)
    mazes = [generate_maze(sizes[i % len(sizes)], rng) for i in range(a.mazes)]
    bfs = [len(bfs_actions(m)) for m in mazes]
    explore = [len(explore_actions(m)) for m in mazes]
    print(f"{a.mazes} mazes of sizes {sizes}: mean moves BFS {statistics.mean(bfs):.1f}, explorer {statistics.mean(explore):.1f}")
    for t in budgets:
        walk = sum(guessing_walk(m, walk_rng, t) for m in mazes) / len(mazes)
        print(f"within {t} moves: BFS {sum(x <= t for x in bfs) / len(bfs):.3f}, explorer "
              f"{sum(x <= t for x in explore) / len(explore):.3f}, guessing walk {walk:.3f}")


if __name__ == "__main__":
    main()
