"""A terminal task, loaded from a task directory (Harbor, Terminal-Bench 1 or generated).

Where it sits: task set → **Task** → rollout (instruction, sandbox image and limits) →
verifier (``pipeline/tasks/verifier.py``) → reward. The tests are copied into the sandbox
only after the agent finished, so the agent can never read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


class TaskFormatError(ValueError):
    """A task directory is missing a file or has a malformed one (names which)."""


class VerifierError(RuntimeError):
    """The verifier could not produce a reward (crashed, timed out, no or a malformed reward
    file). Whether the agent or the infrastructure is to blame is decided by the caller
    (``pipeline.tasks.verifier.verify``)."""


@dataclass
class Service:
    """A docker-compose service that runs beside the agent's container (a database, an API
    the task talks to), reachable by its name on the episode's own internal network."""

    name: str
    image: str = ""  # a prebuilt image, or
    dockerfile: Path | None = None  # a recipe (its directory is the build context)
    command: list[str] | None = None  # compose ``command`` (None: the image's)
    entrypoint: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = ""
    depends_on: dict[str, str] = field(default_factory=dict)  # service → service_started | service_healthy | service_completed_successfully
    healthcheck: list[str] | None = None  # argv run in the service (compose CMD / CMD-SHELL), None: none
    health_interval_s: float = 30.0  # compose healthcheck interval, timeout, retries, start_period
    health_timeout_s: float = 30.0
    health_retries: int = 3
    health_start_s: float = 0.0


@dataclass
class Task:
    task_id: str
    instruction: str  # what the agent is told
    task_dir: Path  # the directory it was loaded from
    tests: dict[str, bytes] = field(default_factory=dict)  # sandbox path → content, copied after the agent
    test_command: str = "bash /tests/test.sh"  # run by the verifier
    reward_from: str = "file"  # file: reward.json / reward.txt | pytest: TB1's parser of the summary | exit_code
    solution: str = ""  # the reference solution's script text ("" if none)
    solution_files: dict[str, bytes] = field(default_factory=dict)  # /solution/... (Harbor's oracle copies solution/)
    solution_command: str = ""  # how the oracle runs it ("bash /solution/solve.sh")
    agent_timeout_s: float = 600.0  # the agent phase (Harbor: None = unlimited; ours is finite)
    verifier_timeout_s: float = 600.0
    build_timeout_s: float = 600.0
    memory_mb: int | None = None
    cpus: float | None = None
    storage_mb: int | None = None
    family: str = ""  # generated tasks: the family name
    image: str = ""  # a prebuilt image (Harbor's docker_image) used instead of building
    dockerfile: Path | None = None  # the image recipe; its directory is the build context
    compose: Path | None = None  # docker-compose.yaml (the service the agent uses: main / client)
    workdir: str = ""  # where commands run ("" = the image's WORKDIR, else the sandbox's)
    env: dict[str, str] = field(default_factory=dict)  # the container's environment
    verifier_env: dict[str, str] = field(default_factory=dict)  # [verifier] env
    solution_env: dict[str, str] = field(default_factory=dict)  # [solution] env
    agent_user: str = ""  # [agent] user ("" = the sandbox's choice)
    network: str = "none"  # what the task declares: none | public | allowlist
    allowed_hosts: list[str] = field(default_factory=list)
    services: dict[str, "Service"] = field(default_factory=dict)  # docker-compose services beside the agent's
    service_deps: dict[str, str] = field(default_factory=dict)  # the agent's service's depends_on (name → condition)
    healthcheck: "Service | None" = None  # the agent's own container's health check ([environment.healthcheck] or compose main's): gates the agent's start
    extra: dict = field(default_factory=dict)  # task.toml / task.yaml fields kept but not used


def read_tree(root: Path, prefix: str) -> dict[str, bytes]:
    """Files under ``root`` as {prefix/relative path: bytes}."""
    if not root.is_dir():
        return {}
    return {f"{prefix}/{p.relative_to(root)}": p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
