"""Terminal sandboxes: one interface (``base``), backends ``bwrap`` and ``docker``
(and ``maze``, the microcosm's grid world)."""

from pipeline.sandbox.base import ExecResult, Sandbox, SandboxBackend, SandboxConfig, SandboxError


def make_backend(cfg: SandboxConfig) -> SandboxBackend:
    if cfg.backend == "bwrap":
        from pipeline.sandbox.bwrap import BwrapBackend

        return BwrapBackend(cfg)
    if cfg.backend == "docker" and cfg.hosts:
        from pipeline.sandbox.fleet import SandboxFleet

        return SandboxFleet(cfg)
    if cfg.backend == "docker":
        from pipeline.sandbox.docker import DockerBackend

        return DockerBackend(cfg)
    if cfg.backend == "maze":
        from pipeline.sandbox.maze import MazeBackend

        return MazeBackend(cfg)
    raise SandboxError(f"unknown sandbox backend {cfg.backend!r} (available: bwrap, docker, maze)")


__all__ = ["ExecResult", "Sandbox", "SandboxBackend", "SandboxConfig", "SandboxError", "make_backend"]
