"""Terminal sandboxes: one interface (``base``), backends ``bwrap`` (and ``docker``, planned)."""

from pipeline.sandbox.base import ExecResult, Sandbox, SandboxBackend, SandboxConfig, SandboxError


def make_backend(cfg: SandboxConfig) -> SandboxBackend:
    if cfg.backend == "bwrap":
        from pipeline.sandbox.bwrap import BwrapBackend

        return BwrapBackend(cfg)
    raise SandboxError(f"sandbox backend {cfg.backend!r} is not built yet (available: bwrap)")


__all__ = ["ExecResult", "Sandbox", "SandboxBackend", "SandboxConfig", "SandboxError", "make_backend"]
