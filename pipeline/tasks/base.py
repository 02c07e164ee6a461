"""A terminal task, loaded from a task directory, and running its verifier in a sandbox.

Where it sits: task set → **Task** → rollout (instruction, sandbox seed) → **run_verifier**
→ reward. The tests are copied into the sandbox only after the agent finished, so the
agent can never read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.sandbox.base import Sandbox

REWARD_FILE = "/logs/verifier/reward.txt"


class TaskFormatError(ValueError):
    """A task directory is missing a file or has a malformed one (names which)."""


@dataclass
class Task:
    task_id: str
    instruction: str  # what the agent is told
    task_dir: Path  # the directory it was loaded from
    tests: dict[str, bytes] = field(default_factory=dict)  # sandbox path → content, copied after the agent
    test_command: str = "bash /tests/test.sh"  # run by the verifier
    reward_from: str = "file"  # "file": read REWARD_FILE; "exit_code": 1 if the command exits 0
    solution: str = ""  # reference solution (a bash script), "" if none
    agent_timeout_s: float = 600.0
    verifier_timeout_s: float = 120.0
    memory_mb: int | None = None
    family: str = ""  # generated tasks: the family name


class VerifierError(RuntimeError):
    """The verifier could not produce a reward (crashed, timed out, no reward file)."""


def run_verifier(task: Task, sandbox: Sandbox) -> float:
    """Copy the tests in, run them, return the reward. Raises VerifierError when the
    verifier itself fails — an infrastructure error, never a reward of 0."""
    sandbox.put_files({p: data for p, data in task.tests.items()}, mode=0o755)
    result = sandbox.exec(task.test_command, timeout_s=task.verifier_timeout_s)
    if result.timed_out:
        raise VerifierError(f"{task.task_id}: verifier timed out after {task.verifier_timeout_s:g} s")
    if task.reward_from == "exit_code":
        return 1.0 if result.exit_code == 0 else 0.0
    raw = sandbox.read_file(REWARD_FILE)
    if raw is None:
        raise VerifierError(f"{task.task_id}: verifier wrote no {REWARD_FILE} (exit {result.exit_code}): "
                            f"{result.output[-500:]}")  # fmt: skip
    try:
        return float(raw.decode().strip())
    except ValueError as e:
        raise VerifierError(f"{task.task_id}: reward file holds {raw[:50]!r}") from e


def read_tree(root: Path, prefix: str) -> dict[str, bytes]:
    """Files under ``root`` as {prefix/relative path: bytes}."""
    if not root.is_dir():
        return {}
    return {f"{prefix}/{p.relative_to(root)}": p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
