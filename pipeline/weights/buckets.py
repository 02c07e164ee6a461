"""The unit of the per-step weight stream, and its checksum: a dependency-free leaf (torch
only), so the engines and the vLLM workers that load weights never import Megatron.

Where it sits: learner (``weights/stream.py`` makes buckets) → **WeightBucket** → engine
``update_weights`` (``engines/base.apply_buckets`` checks order and checksum).
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass, field

import torch


@dataclass
class WeightBucket:
    version: int  # optimizer steps contained in these weights
    index: int  # position in this version's stream
    items: list[tuple[str, torch.Tensor]]  # (HF name, full tensor)
    last: bool = False  # the final bucket of this version
    checksum: str = ""  # on the last bucket: checksum of every tensor of the version
    nbytes: int = field(default=0)


def tensor_crc(t: torch.Tensor) -> int:
    data = t.detach().contiguous().cpu().view(torch.uint8).numpy()
    return zlib.crc32(memoryview(data))


class StreamChecksum:
    """Order-sensitive digest over (name, shape, dtype, crc32 of bytes) of each tensor."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def update(self, name: str, t: torch.Tensor) -> None:
        self._h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|{tensor_crc(t)};".encode())

    def hexdigest(self) -> str:
        return self._h.hexdigest()
