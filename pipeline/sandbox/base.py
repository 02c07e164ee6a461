"""The sandbox interface: one isolated terminal per episode, one ``exec`` per command.

Where it sits: rollout (agent loop) → **Sandbox.exec** → ExecResult → observation.

Backends implement ``SandboxBackend.start(...) -> Sandbox``. Containment is the default,
not an option: no network, memory / process-count limits, a per-command timeout, an
output cap with a visible notice, a writable work dir on a read-only root, nothing of
the host but what the task provides, and reaping of leftovers from a killed trainer.
"""

from __future__ import annotations

import abc
import contextlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.sandbox.boundary import AGENT_ROOTS
from pipeline.sandbox.errors import SandboxError


@dataclass
class SandboxConfig:
    backend: str = "bwrap"  # bwrap (no daemon) | docker (Docker Engine API; Podman in CI) | maze (microcosm)
    rootfs: str = ""  # bwrap root filesystem ("" = the cached one from pipeline/sandbox/build_rootfs.sh)
    memory_mb: int = 1024  # memory limit of an episode's processes
    pids: int = 256  # process-count limit (fork bombs)
    timeout_s: float = 30.0  # per-command wall-clock limit
    output_bytes: int = 16384  # output returned to the agent; the rest is cut with a notice
    drain_bytes: int = 8 << 20  # output read past the cap before the command is stopped
    workdir: str = "/app"  # the task's writable directory inside the sandbox (docker: the image's WORKDIR wins)
    agent_user: str = "task"  # who runs the agent's commands (docker): task (its [agent] user, else root, as Harbor) | root | unprivileged
    profile: str = "training"  # training: the hardened verifier phase (boundary.py) | harbor: Harbor's own semantics, for comparable evaluation (see the README)
    verifier_isolation: str = "separate"  # separate: a new sandbox with the agent's files and services (boundary.py) | same: the agent's (Harbor) | fresh: a new one with only the work tree
    copy_bytes: int = 256 << 20  # apparent bytes of the agent's files that may cross into the verifier's sandbox
    copy_entries: int = 30_000  # files, dirs and links of the agent's that may cross (more is refused: the agent's failure); Podman's extraction grows faster than linearly: tools/bench/verifier_isolation.py --cost
    reward_key: str = "reward"  # reward.json: the key trained on (no such key: the mean of its values)
    image_map: dict = field(default_factory=dict)  # public image name → local one (air-gapped clusters, this machine)
    agent_network: str = "none"  # the agent phase's network: none | task (what the task declares: allow_internet / network_mode)
    verifier_network: str = "task"  # the verifier phase's: none | task (TB2's test.sh installs its tools from the internet)
    build_network: str = "public"  # a task image's build (docker): public (the engine's default network, as Harbor and Terminal-Bench build: apt, pip) | none
    hosts: list = field(default_factory=list)  # docker: a fleet of Docker API hosts (pipeline/sandbox/fleet.py): URLs or {url, max_concurrent, tls_ca, tls_cert, tls_key}; [] = DOCKER_HOST alone
    host_probe_s: float = 10.0  # a down host is pinged again at most this often
    host_wait_s: float = 300.0  # at start, how long to wait for the first host of the fleet to answer

    def __post_init__(self):
        if self.profile == "harbor":  # Harbor's semantics: a root agent, verified in its own container, its
            self.agent_user, self.verifier_isolation = "root", "same"  # processes left running

    def check(self) -> list[tuple[str, str]]:
        errs = []
        if self.backend not in ("bwrap", "docker", "maze"):
            errs.append(("backend", f"must be bwrap, docker or maze, got {self.backend!r}"))
        if self.agent_user not in ("unprivileged", "root", "task"):
            errs.append(("agent_user", f"must be unprivileged, root or task, got {self.agent_user!r}"))
        if self.profile not in ("training", "harbor"):
            errs.append(("profile", f"must be training or harbor, got {self.profile!r}"))
        if self.verifier_isolation not in ("separate", "same", "fresh"):
            errs.append(("verifier_isolation", f"must be separate, same or fresh, got {self.verifier_isolation!r}"))
        for n in ("agent_network", "verifier_network"):
            if getattr(self, n) not in ("none", "task"):
                errs.append((n, f"must be none or task, got {getattr(self, n)!r}"))
        if self.build_network not in ("none", "public"):
            errs.append(("build_network", f"must be none or public, got {self.build_network!r}"))
        for n in ("memory_mb", "pids", "output_bytes", "drain_bytes", "copy_bytes", "copy_entries"):
            if getattr(self, n) < 1:
                errs.append((n, f"must be ≥ 1, got {getattr(self, n)}"))
        if self.timeout_s <= 0:
            errs.append(("timeout_s", f"must be > 0, got {self.timeout_s}"))
        if self.hosts:
            from pipeline.sandbox.hosts import check_hosts

            errs += check_hosts(self.hosts)
            if self.backend != "docker":
                errs.append(("hosts", f"a fleet of hosts needs backend docker, got {self.backend!r}"))
        return errs


@dataclass
class ExecResult:
    output: str  # stdout+stderr interleaved, utf-8 (invalid bytes replaced), ≤ output_bytes
    exit_code: int | None  # None when the command was killed (timeout, output flood)
    timed_out: bool = False
    truncated: bool = False  # more output than output_bytes was produced
    output_total_bytes: int = 0  # bytes the command wrote (up to drain_bytes + cap)
    duration_s: float = 0.0
    timeout_s: float = 0.0  # the limit this command ran under
    done: bool = False  # the environment ended the episode (e.g. a maze's goal reached)
    killed: bool = False  # the command's own shell was killed (e.g. by the command's `kill -9 -1`)

    def notices(self, cfg: SandboxConfig) -> list[str]:
        """Harness-written text the agent sees after the output (WARNING tokens)."""
        out = []
        if self.truncated:
            out.append(f"WARNING: output truncated, showing the first {cfg.output_bytes} bytes of "
                       f"{'more than ' if self.exit_code is None else ''}{self.output_total_bytes}")  # fmt: skip
        if self.killed:
            out.append("WARNING: the command's shell was killed before it finished")
        elif self.timed_out:
            out.append(f"WARNING: command timed out after {self.timeout_s:g} s and was killed")
        elif self.exit_code is None:
            out.append("WARNING: command stopped, it produced too much output")
        return out

    def observation(self, cfg: SandboxConfig) -> list[tuple[str, str]]:
        """What the agent sees, as (text, kind) segments; kind is "output" (the terminal's
        text and exit code: OUTPUT tokens) or "warning" (harness notices: WARNING tokens).
        Leading blank lines of the output are dropped (see ``join_lines``)."""
        output = _LEADING_BLANK.sub("", self.output)
        parts = [(output, "output")] if output else []
        if self.exit_code is not None:
            parts.append((f"exit code: {self.exit_code}", "output"))
        return join_lines(parts + [(n, "warning") for n in self.notices(cfg)])


_LEADING_BLANK = re.compile(r"\A(?:[ \t]*\r?\n)+")


def join_lines(parts: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Put each part on its own line; the separating newline belongs to the part before it.

    Why this layout: byte-level BPE pre-tokenizers (Qwen's) glue newlines to the
    punctuation before them (``"]\n"`` is one token). Ending every part but the last with
    its own newline, starting the first with a non-blank line, and ending the last with a
    letter or digit (``exit code: 0``, notices without a final period) makes every role
    boundary a token boundary, so an observation's OUTPUT and WARNING tokens decode to
    exactly the terminal's text and the harness's text."""
    out = []
    for i, (text, kind) in enumerate(parts):
        if i < len(parts) - 1 and text and not text.endswith("\n"):
            text += "\n"
        out.append((text, kind))
    return out


def phase_networks(cfg: SandboxConfig, task) -> tuple[str, str]:
    """The network of the agent phase and of the verifier phase: "none" or "public".

    ``task`` in the config means what the task declares (Harbor ``allow_internet`` /
    ``network_mode``; Terminal-Bench 1 tasks run with the network, as its harness runs
    them). An ``allowlist`` task needs an egress proxy that no backend here has: refused,
    naming the key that asked for it."""
    declared = getattr(task, "network", "none") if task is not None else "none"
    out = []
    for phase, key in (("agent", "agent_network"), ("verifier", "verifier_network")):
        net = declared if getattr(cfg, key) == "task" else "none"
        if net == "allowlist":
            raise SandboxError(f"task {task.task_id}: its {phase} phase would have an allowlisted network "
                               f"({', '.join(task.allowed_hosts) or 'no hosts'}), which needs an egress proxy "
                               f"no backend here has; set sandbox.{key}=none to run it offline")  # fmt: skip
        out.append("public" if net == "public" else "none")
    return out[0], out[1]


class Sandbox(abc.ABC):
    """One episode's terminal. Use as a context manager; ``close`` is idempotent.

    Two principals share it: the agent (``exec``: an unprivileged user where the backend
    can separate users) and the verifier (``exec(..., verifier=True)``: root, a clean
    process environment, after ``prepare_verifier`` laid its directories anew)."""

    agent_uid: int | None = None  # the agent's uid where it differs from the verifier's, else None
    check_uid: int | None = None  # the uid a check runs the agent's code as (never root), None: no user boundary
    sweep_roots: tuple[str, ...] = AGENT_ROOTS  # where the agent could have written, swept before the tests

    @abc.abstractmethod
    def exec(self, command: str, *, timeout_s: float | None = None, verifier: bool = False,
             env: dict[str, str] | None = None) -> ExecResult: ...  # fmt: skip

    @abc.abstractmethod
    def put_files(self, files: dict[str, bytes], *, mode: int = 0o644) -> None:
        """Write files at absolute paths inside the sandbox, owned by the verifier (root)
        (e.g. the tests, after the agent). Never writes through a link the agent made."""

    @abc.abstractmethod
    def read_file(self, path: str, *, max_bytes: int = 1 << 16) -> bytes | None:
        """A regular file's content, read without following links; None when the path is
        absent, a link, a directory or anything but a regular file, or over ``max_bytes``."""

    def prepare_verifier(self, *, stop_agent: bool) -> None:
        """Right before the verifier: remove whatever the agent left at ``/tests`` and ``/logs/verifier`` (``boundary.GROUND``)
        (files, links, directories, modes) and lay them anew, owned by the verifier and not
        writable by the agent; with ``stop_agent``, kill every process the agent left."""

    def alive(self) -> bool:
        """Whether the sandbox itself still runs (a failed exec in a live sandbox is the
        agent's doing: a fork bomb, a broken shell; in a dead one, the infrastructure's)."""
        return not getattr(self, "closed", False)

    def cleanup_sweep(self) -> str:
        """Run ``boundary.SWEEP`` over ``sweep_roots`` as the verifier: links into the
        verifier's ground and special files go. Returns its report."""
        from pipeline.sandbox.boundary import sweep_command

        result = self.exec(sweep_command(["/" + r.strip("/") for r in self.sweep_roots]), verifier=True, timeout_s=120)
        if "sweep-removed" not in result.output:
            raise SandboxError(f"the sweep of the agent's tree failed: {result.output[-300:]}")
        return result.output

    def copy_workdir_to(self, other: "Sandbox") -> None:
        """Copy the agent's work tree into ``other`` (``verifier_isolation: fresh``)."""
        raise SandboxError(f"{type(self).__name__} cannot copy its work tree")

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SandboxBackend(abc.ABC):
    @abc.abstractmethod
    def start(self, *, task_dir: Path | None = None, episode: str = "", task=None) -> Sandbox:
        """A fresh sandbox for ``task`` (a ``pipeline.tasks.Task``: its image, limits, work
        dir, agent user), or a bare one on the base image."""

    @contextlib.contextmanager
    def verifier_sandbox(self, box: Sandbox, task=None, *, episode: str = ""):
        """``verifier_isolation: separate``: the sandbox the verifier runs in, made from the
        agent's ``box`` by ``pipeline/sandbox/boundary.py``'s rules. This default is the
        agent's own sandbox, for backends where nothing of the agent outlives its commands
        and scratch dirs are per command (bwrap)."""
        yield box

    @abc.abstractmethod
    def reap_orphans(self) -> int:
        """Remove what killed trainers left behind; returns how many episodes were reaped."""

    def health(self) -> dict:
        """Per-step gauges (a fleet: ``sandbox/hosts_alive``)."""
        return {}
