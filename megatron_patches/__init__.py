"""Small, isolated patches to Megatron-Core, applied by an explicit call — never on import.

    from megatron_patches import apply_cpu_patches
    apply_cpu_patches()  # only when no GPU is present

Each patch lives in its own file that says what it changes, why, which Megatron-Core
versions it was checked against, and that the math is unchanged. A patch whose target
is missing raises ``PatchTargetMissing`` instead of silently doing nothing.
"""

from megatron_patches.common import PatchTargetMissing
from megatron_patches.cpu_devices import apply as _apply_cpu_devices
from megatron_patches.cpu_grad_clip import apply as _apply_cpu_grad_clip
from megatron_patches.cpu_rng import apply as _apply_cpu_rng
from megatron_patches.cpu_tied_embeddings import apply as _apply_cpu_tied_embeddings

_APPLIED: list[str] = []


def apply_cpu_patches() -> list[str]:
    """Make Megatron-Core run on CPU (gloo). Idempotent; returns the names applied."""
    if "cpu" not in _APPLIED:
        _apply_cpu_devices()
        _apply_cpu_rng()
        _apply_cpu_grad_clip()
        _apply_cpu_tied_embeddings()
        _APPLIED.append("cpu")
    return ["cpu_devices", "cpu_rng", "cpu_grad_clip", "cpu_tied_embeddings"]


__all__ = ["apply_cpu_patches", "PatchTargetMissing"]
