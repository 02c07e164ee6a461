"""Shared helpers of the patch files."""

import importlib
from types import ModuleType


class PatchTargetMissing(RuntimeError):
    """The Megatron-Core symbol a patch replaces is gone: the patch must be revisited."""


def require(module_name: str, attr: str) -> ModuleType:
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise PatchTargetMissing(f"{module_name} cannot be imported: {e}") from e
    if not hasattr(module, attr):
        raise PatchTargetMissing(f"{module_name}.{attr} is missing (Megatron-Core changed)")
    return module
