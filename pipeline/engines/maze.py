"""Reference policies of the maze microcosm, as engines: the experts (BFS, the explorer) and a random walk.

Where it sits: in place of a model engine in the rollout loop, for data made by another
policy (imitation sets, the world-model probe set, warm starts). Their episodes are
ordinary trajectories: same format, sandbox, roles and verifier. Deterministic or not,
their sampler log-probs are those of their own policy (0 for the expert, −log(#choices)
for the random walk).
"""

from __future__ import annotations

import math
import random

from pipeline.engines.base import BatchingEngine, Generation
from pipeline.tasks.base import Task
from pipeline.tasks.maze import DIRECTIONS, EXPERTS, OPPOSITE, Maze, explore_actions, vocabulary


class MazeExpertEngine(BatchingEngine):
    """Plays each task's expert script: ``bfs``, the shortest path (``task.solution``), or
    ``explore`` (``explore_actions``; deterministic given the maze, so a script too). It
    recognizes the task by its prompt tokens, so tasks in one rollout batch need distinct
    instructions (``distinct_batches``); the turn is the number of stop tokens so far."""

    def __init__(self, tokenizer, tasks: list[Task], stop_token_id: int, policy: str = "bfs"):
        if policy not in EXPERTS:
            raise ValueError(f"unknown maze expert {policy!r}; known: {EXPERTS}")
        self.tok, self.stop = tokenizer, stop_token_id
        self.scripts: dict[tuple[int, ...], list[int]] = {}
        for t in tasks:
            key = tuple(tokenizer(t.instruction, add_special_tokens=False)["input_ids"])
            if key in self.scripts:
                raise ValueError(f"two tasks share the instruction of {t.task_id}: split them (distinct_batches)")
            moves = (t.solution.split() if policy == "bfs"
                     else explore_actions(Maze.from_json((t.task_dir / "maze.json").read_text())))  # fmt: skip
            self.scripts[key] = [tokenizer.convert_tokens_to_ids(a) for a in moves]
        self.lengths = sorted({len(k) for k in self.scripts})
        super().__init__(256, 0.0)

    def generate_batch(self, prompts, params):
        out = []
        for prompt in prompts:
            script = next((self.scripts[k] for n in self.lengths if (k := tuple(prompt[:n])) in self.scripts), None)
            if script is None:
                raise KeyError("the maze expert does not know this task")
            turn = prompt.count(self.stop)
            ids = [script[min(turn, len(script) - 1)], self.stop]
            out.append(Generation(ids, [0.0, 0.0], "stop", self.policy_version))
        return out

    def load_weights(self, items) -> None:
        raise TypeError("the maze expert has no weights")


class RandomWalkEngine(BatchingEngine):
    """A uniformly random open direction each turn (read from the last response); with
    ``no_reversal`` it does not step straight back where it came from unless at a dead end."""

    def __init__(self, tokenizer, stop_token_id: int, *, seed: int = 0, no_reversal: bool = False):
        self.tok, self.stop, self.seed, self.rng = tokenizer, stop_token_id, seed, random.Random(seed)
        self.no_reversal = no_reversal
        self.ids = {d: tokenizer.convert_tokens_to_ids(d) for d in DIRECTIONS}
        self.direction_of = {i: d for d, i in self.ids.items()}
        self.open = {tokenizer.convert_tokens_to_ids(w): w[5:].split(",") for w in vocabulary() if w.startswith("open:")}
        super().__init__(256, 0.0)

    def generate_batch(self, prompts, params):
        out = []
        for prompt, p in zip(prompts, params):
            last = next((t for t in reversed(prompt) if t in self.open), None)  # the last response's open sides
            choices = self.open[last] if last is not None else list(DIRECTIONS)
            prev = next((self.direction_of[t] for t in reversed(prompt) if t in self.direction_of), None)
            if self.no_reversal and prev is not None and len(choices) > 1:
                choices = [d for d in choices if d != OPPOSITE[prev]]
            # a request with a seed draws from its own generator: the walk does not depend on
            # which episodes the worker thread batched together, nor in what order
            rng = self.rng if p.seed is None else random.Random(self.seed * 1_000_003 + p.seed)
            move = rng.choice(choices)
            out.append(Generation([self.ids[move], self.stop], [-math.log(len(choices)), 0.0], "stop",
                                  self.policy_version))  # fmt: skip
        return out

    def load_weights(self, items) -> None:
        raise TypeError("the random walk has no weights")


def distinct_batches(tasks: list[Task]) -> list[list[Task]]:
    """Split tasks so that no batch holds two tasks with the same instruction."""
    batches: list[list[Task]] = []
    for t in tasks:
        for b in batches:
            if all(o.instruction != t.instruction for o in b):
                b.append(t)
                break
        else:
            batches.append([t])
    return batches
