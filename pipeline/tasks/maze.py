"""Grid mazes: the microcosm's tasks (``echo-rl microcosm``), made like terminal tasks.

Where it sits: **maze tasks** (task dirs holding ``maze.json``) → rollout loop → the
``maze`` sandbox backend (``pipeline/sandbox/maze.py``) answers each move → the same
Trajectory, roles, losses and learner as the terminal agent.

A maze is a *perfect* maze (exactly one path between any two cells), grown by a
randomized depth-first search from a seeded RNG. The agent starts at one cell and must
reach the goal; it sees only its surroundings. The text protocol, one word-level token
per word (``maze_tokenizer``)::

    prompt   maze 6x6 9 open:down,right                  (PROMPT: size, distance, open sides)
    action   down <eos>                                  (ACTION)
    response moved 8 open:up,left                        (OUTPUT)
             blocked 8 open:up,left    (it walked into a wall and did not move)
             goal 0 open:up            (reached: the episode ends, reward 1)
    anything else: WARNING: invalid action ...           (WARNING)

With ``feedback: compare`` (a maze.json field; ``maze_tasks(feedback=...)``) a move that
moved says which way the distance went instead of ``moved``: ``closer 8 open:up,left`` or
``farther 10 open:down``. The distance words are unordered tokens, so under ``distance``
feedback "did it go up?" is a comparison the model must learn pair by pair; it is the one
decision imitation of the explorer does not learn (README, microcosm: undo moves 0.725).

The number is the length of the shortest path to the goal, so a world model of the maze
can predict it (it changes by exactly ±1 per move in a perfect maze); the open sides are
one token (15 words), which keeps an episode at 5 tokens per move.
Reference policies: the BFS expert (walks the shortest path; it knows the maze), the
explorer (``explore_actions``: tries branches and undoes a move that took it farther; it
knows only what the agent sees), and a random walk (a uniformly random open direction
each turn).
"""

from __future__ import annotations

import json
import os
import random
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from pipeline.tasks.base import Task

DIRECTIONS = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
EXPERTS = ("bfs", "explore")  # reference policies that solve every maze (MazeExpertEngine)
OPPOSITE = {"up": "down", "down": "up", "left": "right", "right": "left"}
SIZES = range(3, 13)  # sizes the tokenizer has words for
MAX_DIST = 150  # distances the tokenizer has words for (a 12×12 path is at most 143)
INVALID = "WARNING: invalid action"
FEEDBACKS = ("distance", "compare")  # what a move's response says (module docstring)


@dataclass
class Maze:
    size: int
    open: set[tuple[tuple[int, int], tuple[int, int]]]  # passages, both directions
    start: tuple[int, int]
    goal: tuple[int, int]
    feedback: str = "distance"  # FEEDBACKS

    def can_move(self, cell: tuple[int, int], direction: str) -> bool:
        dr, dc = DIRECTIONS[direction]
        return (cell, (cell[0] + dr, cell[1] + dc)) in self.open

    def step(self, cell: tuple[int, int], direction: str) -> tuple[int, int]:
        dr, dc = DIRECTIONS[direction]
        return (cell[0] + dr, cell[1] + dc) if self.can_move(cell, direction) else cell

    def distances(self) -> dict[tuple[int, int], int]:
        """Shortest-path length from every cell to the goal (BFS)."""
        dist, todo = {self.goal: 0}, deque([self.goal])
        while todo:
            cell = todo.popleft()
            for d in DIRECTIONS:
                nxt = self.step(cell, d)
                if nxt not in dist:
                    dist[nxt] = dist[cell] + 1
                    todo.append(nxt)
        return dist

    def surroundings(self, cell: tuple[int, int], dist: int) -> str:
        return f"{dist} " + open_word([d for d in DIRECTIONS if self.can_move(cell, d)])

    def response(self, cell: tuple[int, int], direction: str, dist: dict[tuple[int, int], int]) -> tuple[tuple[int, int], str]:
        """The cell after the move and the terminal's answer to it (the protocol above)."""
        nxt = self.step(cell, direction)
        if nxt == self.goal:
            status = "goal"
        elif nxt == cell:
            status = "blocked"
        elif self.feedback == "compare":
            status = "closer" if dist[nxt] < dist[cell] else "farther"
        else:
            status = "moved"
        return nxt, f"{status} {self.surroundings(nxt, dist[nxt])}"

    def to_json(self) -> str:
        extra = {"feedback": self.feedback} if self.feedback != "distance" else {}  # (distance mazes read as before)
        return json.dumps({"size": self.size, "start": self.start, "goal": self.goal,
                           "open": sorted([list(a), list(b)] for a, b in self.open), **extra})  # fmt: skip

    @classmethod
    def from_json(cls, text: str) -> "Maze":
        d = json.loads(text)
        feedback = d.get("feedback", "distance")
        if feedback not in FEEDBACKS:
            raise ValueError(f"maze.json 'feedback': {feedback!r} is not one of {FEEDBACKS}")
        return cls(d["size"], {(tuple(a), tuple(b)) for a, b in d["open"]}, tuple(d["start"]), tuple(d["goal"]), feedback)

    def render(self) -> str:
        """ASCII picture (S start, G goal), for people."""
        rows = ["+" + "--+" * self.size]
        for r in range(self.size):
            line, floor = "|", "+"
            for c in range(self.size):
                mark = "S " if (r, c) == self.start else "G " if (r, c) == self.goal else "  "
                line += mark + (" " if self.can_move((r, c), "right") else "|")
                floor += ("  " if self.can_move((r, c), "down") else "--") + "+"
            rows += [line, floor]
        return "\n".join(rows)


def generate_maze(size: int, rng: random.Random) -> Maze:
    """A perfect maze (randomized DFS), start and goal two distinct random cells."""
    if size not in SIZES:
        raise ValueError(f"maze size must be in {SIZES.start}..{SIZES.stop - 1}, got {size}")
    seen, stack, passages = {(0, 0)}, [(0, 0)], set()
    while stack:
        cell = stack[-1]
        nbrs = [(cell[0] + dr, cell[1] + dc) for dr, dc in DIRECTIONS.values()]
        nbrs = [n for n in nbrs if 0 <= n[0] < size and 0 <= n[1] < size and n not in seen]
        if not nbrs:
            stack.pop()
            continue
        nxt = rng.choice(nbrs)
        passages |= {(cell, nxt), (nxt, cell)}
        seen.add(nxt)
        stack.append(nxt)
    cells = [(r, c) for r in range(size) for c in range(size)]
    start, goal = rng.sample(cells, 2)
    return Maze(size, passages, start, goal)


def open_word(directions: list[str]) -> str:
    return "open:" + ",".join(directions)


def instruction(maze: Maze) -> str:
    return f"maze {maze.size}x{maze.size} " + maze.surroundings(maze.start, maze.distances()[maze.start])


def bfs_actions(maze: Maze) -> list[str]:
    """The shortest path from start to goal, as directions."""
    dist, cell, out = maze.distances(), maze.start, []
    while cell != maze.goal:
        d = next(d for d in DIRECTIONS if maze.can_move(cell, d) and dist[maze.step(cell, d)] == dist[cell] - 1)
        out.append(d)
        cell = maze.step(cell, d)
    return out


def explore_actions(maze: Maze, order: tuple[str, ...] = tuple(DIRECTIONS)) -> list[str]:
    """The expert that sees what the agent sees: at each cell it tries the open sides in
    ``order`` (never straight back); a move whose distance went up is undone at once (in
    a perfect maze exactly one neighbour is one step closer), so a wrong branch costs two
    moves. Its next move is a function of the episode so far, which BFS's is not: the
    agent sees the distance and the open sides, not where the goal lies, so at a fork the
    shortest path is a guess from its side, and imitation of BFS stalls near the solve rate
    of a walk that guesses at forks (README, microcosm)."""
    dist, cell, out, tried, back, undo = maze.distances(), maze.start, [], {}, None, False
    while cell != maze.goal:
        if undo:  # back to the fork, which is as it was (the side it came from included)
            d, undo = OPPOSITE[out[-1]], False
        else:
            t = tried.setdefault(cell, set())
            d = next(x for x in order if maze.can_move(cell, x) and x not in t and x != back)
            t.add(d)
            undo = dist[maze.step(cell, d)] > dist[cell]
            if not undo:
                back = OPPOSITE[d]
        out.append(d)
        cell = maze.step(cell, d)
    return out


def maze_tasks(sizes: list[int], n: int, out_dir: str | Path, *, seed: int, feedback: str = "distance") -> list[Task]:
    """``n`` fresh mazes (sizes cycled), written as task dirs (``maze.json``) under ``out_dir``.
    The mazes depend on ``seed`` only: ``feedback`` changes what the terminal says, not the maze."""
    if feedback not in FEEDBACKS:
        raise ValueError(f"maze feedback must be one of {FEEDBACKS}, got {feedback!r}")
    rng = random.Random(seed)
    out_dir = Path(out_dir)
    tasks = []
    for i in range(n):
        maze = generate_maze(sizes[i % len(sizes)], rng)
        maze.feedback = feedback
        task_dir = out_dir / f"maze-{seed}-{i:05d}"
        task_dir.mkdir(parents=True, exist_ok=True)
        _write_once(task_dir / "maze.json", maze.to_json())
        tasks.append(Task(
            task_id=task_dir.name, instruction=instruction(maze), task_dir=task_dir, test_command="",
            reward_from="file", solution=" ".join(bfs_actions(maze)), family=f"maze{maze.size}",
        ))  # fmt: skip
    return tasks


def _write_once(path: Path, text: str) -> None:
    """Write ``text`` unless the file already holds it; a new file appears whole (runs side by
    side share task dirs: a reader never sees a half-written maze)."""
    if path.is_file() and path.read_text() == text:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def vocabulary() -> list[str]:
    """Every word of the protocol, the agent loop's notices included (ids are stable)."""
    from itertools import combinations

    words = ["<pad>", "<eos>", "<unk>", "maze", "moved", "blocked", "goal", *DIRECTIONS]
    words += [open_word(list(c)) for n in range(1, 5) for c in combinations(DIRECTIONS, n)]
    words += [f"{n}x{n}" for n in SIZES] + [str(i) for i in range(MAX_DIST + 1)]
    notices = (INVALID + " WARNING: your reply was cut off at tokens WARNING: turn limit of reached, the "
               "episode ends WARNING: context budget tokens used up, WARNING: only the first tool call "
               "runs, more ignored")  # the loop's own notices (pipeline/rollout/loop.py)
    for w in notices.split():
        if w not in words:
            words.append(w)
    return words + ["closer", "farther"]  # feedback: compare (last: the ids before them are unchanged)


def maze_tokenizer(out_dir: str | Path | None = None):
    """The project's word-level tokenizer for the protocol (a fast HF tokenizer).
    Saved to ``out_dir`` when given (the engine's model dir needs it)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    if out_dir is not None:  # each file appears whole (runs side by side share the directory)
        import tempfile

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".save-") as tmp:
            tok.save_pretrained(tmp)
            for f in Path(tmp).iterdir():
                if not (out_dir / f.name).is_file() or (out_dir / f.name).read_bytes() != f.read_bytes():
                    f.replace(out_dir / f.name)
    return tok
