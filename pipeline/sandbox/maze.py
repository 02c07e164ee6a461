"""The maze "terminal": a sandbox backend whose commands are moves in a grid maze.

Where it sits: rollout loop → **MazeSandbox.exec("down")** → ExecResult (the response is
OUTPUT, an invalid action a WARNING) — the same interface as the bwrap and docker
terminals, so the microcosm runs the real agent loop, verifier call and trajectories.
The protocol is in ``pipeline/tasks/maze.py``. Nothing runs outside the process: a maze
is a pure function of its ``maze.json`` and the moves.
"""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.sandbox.base import ExecResult, Sandbox, SandboxBackend, SandboxConfig, SandboxError
from pipeline.tasks.verifier import REWARD_FILE
from pipeline.tasks.maze import DIRECTIONS, INVALID, Maze


class MazeResult(ExecResult):
    def observation(self, cfg: SandboxConfig) -> list[tuple[str, str]]:
        return [(self.output, "warning" if self.output.startswith("WARNING:") else "output")]


class MazeSandbox(Sandbox):
    def __init__(self, maze: Maze):
        self.maze, self.cell = maze, maze.start
        self.dist = maze.distances()
        self.closed = False

    def exec(self, command: str, *, timeout_s: float | None = None, verifier: bool = False,
             env: dict[str, str] | None = None) -> ExecResult:  # fmt: skip
        if self.closed:
            raise SandboxError("the maze sandbox is closed")
        t0 = time.perf_counter()
        move = command.strip()
        if not move:  # the verifier's command: nothing to run, the reward is read from REWARD_FILE
            return MazeResult("", 0)
        if move not in DIRECTIONS:
            return MazeResult(INVALID, 1, duration_s=time.perf_counter() - t0)
        self.cell, out = self.maze.response(self.cell, move, self.dist)
        return MazeResult(out, 0, done=self.cell == self.maze.goal, duration_s=time.perf_counter() - t0)

    def put_files(self, files: dict[str, bytes], *, mode: int = 0o644) -> None:
        if files:
            raise SandboxError("a maze has no file system")

    def cleanup_sweep(self) -> str:
        return "sweep-removed 0 (a maze has no file system)"

    def read_file(self, path: str, *, max_bytes: int = 1 << 16) -> bytes | None:
        return (b"1" if self.cell == self.maze.goal else b"0") if path == REWARD_FILE else None

    def close(self) -> None:
        self.closed = True


class MazeBackend(SandboxBackend):
    def __init__(self, cfg: SandboxConfig | None = None):
        self.cfg = cfg

    def start(self, *, task_dir: Path | None = None, episode: str = "", task=None) -> Sandbox:
        task_dir = task_dir if task_dir is not None else (task.task_dir if task is not None else None)
        path = Path(task_dir or "") / "maze.json"
        if not path.is_file():
            raise SandboxError(f"no maze.json in task dir {task_dir} (the maze backend runs maze tasks only)")
        return MazeSandbox(Maze.from_json(path.read_text()))

    def reap_orphans(self) -> int:
        return 0
