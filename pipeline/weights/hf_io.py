"""HF checkpoint directories: sharded safetensors + index, config, generation config.

Writes go to ``OUT.tmp-*`` and are renamed into place only when complete, so a failed
conversion never leaves a partial directory behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "chat_template.jinja")  # fmt: skip


@contextmanager
def atomic_dir(out: str | Path) -> Iterator[Path]:
    """Yield a temp dir next to ``out``; on success it replaces ``out``, on error it is removed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def write_hf_dir(
    out: Path, tensors: Iterable[tuple[str, torch.Tensor]], hf_config: dict, *,
    max_shard_bytes: int = 2 << 30, tokenizer_dir: str | Path | None = None,
) -> dict:  # fmt: skip
    """Write ``model-0000k-of-0000n.safetensors`` shards + index into ``out`` (an existing
    empty dir, e.g. from ``atomic_dir``). Returns the index's weight_map."""
    shards: list[list[str]] = []
    weight_map: dict[str, str] = {}
    current: dict[str, torch.Tensor] = {}
    size, total, n = 0, 0, 0

    def flush():
        nonlocal current, size, n
        if current:
            n += 1
            save_file(current, str(out / f"shard-{n}.safetensors"), metadata={"format": "pt"})
            shards.append(list(current))
            current, size = {}, 0

    for name, t in tensors:
        if name in weight_map or name in current:
            raise ValueError(f"tensor {name} written twice")
        nbytes = t.numel() * t.element_size()
        if current and size + nbytes > max_shard_bytes:
            flush()
        current[name] = t.detach().contiguous().cpu()
        size += nbytes
        total += nbytes
    flush()
    for k, names in enumerate(shards, start=1):
        final = f"model-{k:05d}-of-{n:05d}.safetensors"
        os.replace(out / f"shard-{k}.safetensors", out / final)
        weight_map.update({name: final for name in names})
    if n == 1:
        os.replace(out / "model-00001-of-00001.safetensors", out / "model.safetensors")
        weight_map = {name: "model.safetensors" for name in weight_map}
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    (out / "config.json").write_text(json.dumps(hf_config, indent=2))
    gen = {k: hf_config[k] for k in ("bos_token_id", "eos_token_id") if k in hf_config}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2))
    if tokenizer_dir:
        for f in TOKENIZER_FILES:
            if (Path(tokenizer_dir) / f).is_file():
                shutil.copy(Path(tokenizer_dir) / f, out / f)
    return weight_map


class HFWeights:
    """Lazy reader of an HF safetensors checkpoint (single file or sharded with index)."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        index = self.dir / "model.safetensors.index.json"
        if index.is_file():
            self.weight_map = json.loads(index.read_text())["weight_map"]
        elif (self.dir / "model.safetensors").is_file():
            with safe_open(str(self.dir / "model.safetensors"), "pt") as f:
                self.weight_map = {k: "model.safetensors" for k in f.keys()}
        else:
            raise FileNotFoundError(f"no model.safetensors(.index.json) in {self.dir}")
        self._files: dict[str, object] = {}

    def names(self) -> list[str]:
        return list(self.weight_map)

    def get(self, name: str) -> torch.Tensor:
        if name not in self.weight_map:
            raise KeyError(f"{self.dir}: no tensor {name!r}")
        fname = self.weight_map[name]
        if fname not in self._files:
            path = self.dir / fname
            if not path.is_file():
                raise FileNotFoundError(f"{path} (listed in the index) is missing")
            self._files[fname] = safe_open(str(path), "pt")
        return self._files[fname].get_tensor(name)
