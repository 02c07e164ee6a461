"""The sandbox interface: one isolated terminal per episode, one ``exec`` per command.

Where it sits: rollout (agent loop) → **Sandbox.exec** → ExecResult → observation.

Backends implement ``SandboxBackend.start(...) -> Sandbox``. Containment is the default,
not an option: no network, memory / process-count limits, a per-command timeout, an
output cap with a visible notice, a writable work dir on a read-only root, nothing of
the host but what the task provides, and reaping of leftovers from a killed trainer.
"""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass
class SandboxConfig:
    backend: str = "bwrap"  # bwrap (no daemon) | docker (Docker Engine API; Podman in CI) | maze (microcosm)
    rootfs: str = ""  # bwrap root filesystem ("" = the cached one from tools/build_rootfs.sh)
    memory_mb: int = 1024  # memory limit of an episode's processes
    pids: int = 256  # process-count limit (fork bombs)
    timeout_s: float = 30.0  # per-command wall-clock limit
    output_bytes: int = 16384  # output returned to the agent; the rest is cut with a notice
    drain_bytes: int = 8 << 20  # output read past the cap before the command is stopped
    workdir: str = "/app"  # the task's writable directory inside the sandbox

    def check(self) -> list[tuple[str, str]]:
        errs = []
        if self.backend not in ("bwrap", "docker", "maze"):
            errs.append(("backend", f"must be bwrap, docker or maze, got {self.backend!r}"))
        for n in ("memory_mb", "pids", "output_bytes", "drain_bytes"):
            if getattr(self, n) < 1:
                errs.append((n, f"must be ≥ 1, got {getattr(self, n)}"))
        if self.timeout_s <= 0:
            errs.append(("timeout_s", f"must be > 0, got {self.timeout_s}"))
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

    def notices(self, cfg: SandboxConfig) -> list[str]:
        """Harness-written text the agent sees after the output (WARNING tokens)."""
        out = []
        if self.truncated:
            out.append(f"WARNING: output truncated, showing the first {cfg.output_bytes} bytes of "
                       f"{'more than ' if self.exit_code is None else ''}{self.output_total_bytes}")  # fmt: skip
        if self.timed_out:
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


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the command): the episode is an infrastructure error."""


class Sandbox(abc.ABC):
    """One episode's terminal. Use as a context manager; ``close`` is idempotent."""

    @abc.abstractmethod
    def exec(self, command: str, *, timeout_s: float | None = None) -> ExecResult: ...

    @abc.abstractmethod
    def put_files(self, files: dict[str, bytes], *, mode: int = 0o644) -> None:
        """Write files at absolute paths inside the sandbox (e.g. the tests, after the agent)."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SandboxBackend(abc.ABC):
    @abc.abstractmethod
    def start(self, *, task_dir: Path | None = None, episode: str = "") -> Sandbox: ...

    @abc.abstractmethod
    def reap_orphans(self) -> int:
        """Remove what killed trainers left behind; returns how many episodes were reaped."""
