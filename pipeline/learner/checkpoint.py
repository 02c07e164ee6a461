"""Learner checkpoints with Megatron-Core ``dist_checkpointing``.

Layout::

    DIR/step_000012/      dist checkpoint: model + optimizer (sharded, any TP/PP on load),
                          common state: step, LR scheduler, per-rank RNG states, the
                          model's HF config.json (so tools/convert needs nothing else)
    DIR/latest            text: "step_000012", written last (a crash mid-save leaves the
                          previous checkpoint as the latest)

A checkpoint saved at one TP/PP layout loads at another (model and optimizer are
resharded by dist_checkpointing); RNG states are restored only on the same layout.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state
from megatron.core.dist_checkpointing.mapping import ShardedObject


def _rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    state["tracker"] = get_cuda_rng_tracker().get_states()
    return state


def _set_rng_state(state: dict) -> None:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    get_cuda_rng_tracker().set_states(state["tracker"])


def _sharded(learner, *, is_loading: bool) -> dict:
    ps = parallel_state
    model_sd = learner.model.module.sharded_state_dict()
    rank_key = (ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank(),
                ps.get_data_parallel_rank())  # fmt: skip
    shape = (ps.get_pipeline_model_parallel_world_size(), ps.get_tensor_model_parallel_world_size(),
             ps.get_data_parallel_world_size())  # fmt: skip
    return {
        "model": model_sd,
        "optimizer": learner.optimizer.sharded_state_dict(model_sd, is_loading=is_loading),
        "rng_state": ShardedObject("rng_state", _rng_state(), shape, rank_key, replica_id=0),
    }


def _rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def save(learner, directory: str | Path, step: int, *, keep: int = 0, keep_every: int = 0) -> Path:
    """Write ``step_NNNNNN`` atomically and point ``latest`` at it; then ``prune`` (after
    ``latest`` moved: a kill at any point leaves a loadable one)."""
    root = Path(directory)
    name = f"step_{step:06d}"
    final, tmp = root / name, root / f"{name}.tmp"
    if _rank0():
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    _barrier()
    state = _sharded(learner, is_loading=False)
    state["step"] = step
    state["scheduler"] = learner.scheduler.state_dict()
    state["layout"] = {"tp": learner.topo.tp, "pp": learner.topo.pp, "dp": learner.topo.dp}
    state["hf_config"] = learner.hf  # lets tools/convert rebuild the model from the ckpt alone
    dist_checkpointing.save(state, str(tmp))
    _barrier()
    if _rank0():
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        (root / "latest.tmp").write_text(name)
        os.replace(root / "latest.tmp", root / "latest")
        prune(root, keep=keep, keep_every=keep_every)
    _barrier()
    return final


def prune(root: str | Path, *, keep: int, keep_every: int = 0) -> list[Path]:
    """Remove checkpoints but the newest ``keep``, every one whose step is a multiple of
    ``keep_every``, and the one ``latest`` names (``keep`` 0: keep all); the removed."""
    root = Path(root)
    if not keep:
        return []
    done = sorted(p for p in root.glob("step_*") if p.is_dir() and p.name[5:].isdigit())
    current = latest(root)
    gone = [p for p in done[:-keep] if p != current and not (keep_every and int(p.name[5:]) % keep_every == 0)]
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return gone


def latest(directory: str | Path) -> Path | None:
    marker = Path(directory) / "latest"
    if not marker.is_file():
        return None
    path = Path(directory) / marker.read_text().strip()
    return path if path.is_dir() else None


def load(learner, directory: str | Path, *, model_only: bool = False) -> int:
    """Load the latest checkpoint under ``directory`` (or ``directory`` itself); returns its
    step. ``model_only``: weights only (start a new run from them; step 0 is returned)."""
    path = latest(directory) or Path(directory)
    if not (path / "metadata.json").is_file():
        raise FileNotFoundError(f"no Megatron dist checkpoint at {directory}")
    common = dist_checkpointing.load_common_state_dict(str(path))
    same_layout = common.get("layout") == {
        "tp": learner.topo.tp, "pp": learner.topo.pp, "dp": learner.topo.dp,
    }  # fmt: skip
    if model_only:
        model_sd = learner.model.module.sharded_state_dict()
        state = dist_checkpointing.load({"model": model_sd}, str(path))
        learner.model.module.load_state_dict(state["model"])
        return 0
    request = _sharded(learner, is_loading=True)
    if not same_layout:
        request.pop("rng_state")
    state = dist_checkpointing.load(request, str(path))
    learner.model.module.load_state_dict(state["model"])
    learner.optimizer.load_state_dict(state["optimizer"])
    learner.scheduler.load_state_dict(state["scheduler"])
    if same_layout:
        _set_rng_state(state["rng_state"])
    return int(state["step"])
