"""Task directory formats: Harbor and Terminal-Bench 1.

Harbor::

    instruction.md              what the agent is told
    task.toml                   [agent] timeout_sec, [verifier] timeout_sec, [environment] memory_mb ...
    environment/Dockerfile      the image (docker backend); environment/app/ seeds /app for bwrap
    tests/test.sh               writes the reward to /logs/verifier/reward.txt
    solution/solve.sh           reference solution

Terminal-Bench 1::

    task.yaml                   instruction, max_agent_timeout_sec, max_test_timeout_sec
    Dockerfile, run-tests.sh, tests/, solution.sh      reward = run-tests.sh exits 0
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

from pipeline.tasks.base import Task, TaskFormatError, read_tree


def _need(path: Path) -> Path:
    if not path.is_file():
        raise TaskFormatError(f"{path.parent}: missing {path.name}")
    return path


def load_harbor(task_dir: str | Path) -> Task:
    d = Path(task_dir)
    instruction = _need(d / "instruction.md").read_text()
    try:
        meta = tomllib.loads(_need(d / "task.toml").read_text())
    except tomllib.TOMLDecodeError as e:
        raise TaskFormatError(f"{d / 'task.toml'}: {e}") from e
    _need(d / "tests" / "test.sh")
    solution = d / "solution" / "solve.sh"
    env = meta.get("environment", {})
    return Task(
        task_id=meta.get("metadata", {}).get("id", d.name), instruction=instruction, task_dir=d,
        tests=read_tree(d / "tests", "/tests"), test_command="bash /tests/test.sh", reward_from="file",
        solution=solution.read_text() if solution.is_file() else "",
        agent_timeout_s=float(meta.get("agent", {}).get("timeout_sec", 600)),
        verifier_timeout_s=float(meta.get("verifier", {}).get("timeout_sec", 120)),
        memory_mb=env.get("memory_mb"), family=meta.get("metadata", {}).get("family", ""),
    )  # fmt: skip


def load_terminal_bench(task_dir: str | Path) -> Task:
    d = Path(task_dir)
    try:
        meta = yaml.safe_load(_need(d / "task.yaml").read_text()) or {}
    except yaml.YAMLError as e:
        raise TaskFormatError(f"{d / 'task.yaml'}: {e}") from e
    if "instruction" not in meta:
        raise TaskFormatError(f"{d / 'task.yaml'}: no 'instruction'")
    tests = read_tree(d / "tests", "/tests")
    tests["/tests/run-tests.sh"] = _need(d / "run-tests.sh").read_bytes()
    solution = d / "solution.sh"
    return Task(
        task_id=d.name, instruction=meta["instruction"], task_dir=d, tests=tests,
        test_command="cd /app && bash /tests/run-tests.sh", reward_from="exit_code",
        solution=solution.read_text() if solution.is_file() else "",
        agent_timeout_s=float(meta.get("max_agent_timeout_sec", 600)),
        verifier_timeout_s=float(meta.get("max_test_timeout_sec", 120)),
    )  # fmt: skip


def load_task(task_dir: str | Path) -> Task:
    d = Path(task_dir)
    if (d / "task.toml").is_file():
        return load_harbor(d)
    if (d / "task.yaml").is_file():
        return load_terminal_bench(d)
    raise TaskFormatError(f"{d}: neither a Harbor (task.toml) nor a Terminal-Bench (task.yaml) task")


def load_task_set(root: str | Path) -> list[Task]:
    dirs = sorted(p for p in Path(root).iterdir() if p.is_dir())
    return [load_task(p) for p in dirs]
