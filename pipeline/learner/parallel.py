"""Process groups for the learner: torch.distributed + Megatron-Core model parallel state.

NCCL with a GPU, gloo without (then the CPU patches of ``megatron_patches`` are applied,
explicitly, here and nowhere else). Ranks come from the usual torchrun/srun environment
(``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``); a single process with none
of them set runs as world size 1.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

from megatron_patches import apply_cpu_patches


@dataclass(frozen=True)
class Topology:
    tp: int
    pp: int
    dp: int
    tp_rank: int
    pp_rank: int
    dp_rank: int
    on_gpu: bool

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1


def init_parallel(tp: int, pp: int, *, backend: str = "auto", seed: int = 1234, timeout_s: float = 3600) -> Topology:
    on_gpu = torch.cuda.is_available() and backend != "gloo"
    if backend == "auto":
        backend = "nccl" if on_gpu else "gloo"
    if not on_gpu:
        apply_cpu_patches()
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        if "MASTER_PORT" not in os.environ and os.environ.get("WORLD_SIZE", "1") == "1":
            import socket

            with socket.socket() as sock:  # one process: any free port, so runs side by side never collide
                sock.bind(("127.0.0.1", 0))
                os.environ["MASTER_PORT"] = str(sock.getsockname()[1])
        os.environ.setdefault("MASTER_PORT", "29517")
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        if on_gpu:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    world = dist.get_world_size()
    if world % (tp * pp):
        raise ValueError(f"world size {world} is not divisible by TP={tp} × PP={pp}")
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp
    )
    model_parallel_cuda_manual_seed(seed)
    return current_topology(on_gpu)


def current_topology(on_gpu: bool) -> Topology:
    ps = parallel_state
    return Topology(
        tp=ps.get_tensor_model_parallel_world_size(),
        pp=ps.get_pipeline_model_parallel_world_size(),
        dp=ps.get_data_parallel_world_size(),
        tp_rank=ps.get_tensor_model_parallel_rank(),
        pp_rank=ps.get_pipeline_model_parallel_rank(),
        dp_rank=ps.get_data_parallel_rank(),
        on_gpu=on_gpu,
    )


def shutdown() -> None:
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


_handovers = itertools.count()


def handover(obj, poll_s: float = 0.05):
    """Rank 0's ``obj`` on every rank. The other ranks do not wait for rank 0 inside the
    collective, where the process group's timeout runs during a long rollout: they poll the
    rendezvous store for a per-hand-over key and enter the broadcast only once rank 0 has
    set it, i.e. once the data is ready. Every rank must call it the same number of times."""
    box = [obj]
    if dist.is_initialized() and dist.get_world_size() > 1:
        key = f"echo-rl/handover/{next(_handovers)}"
        store = dist.distributed_c10d._get_default_store()  # the rendezvous store (torch-private name)
        if dist.get_rank() == 0:
            store.set(key, b"1")
        else:
            while not store.check([key]):
                time.sleep(poll_s)
        dist.broadcast_object_list(box, src=0)
    return box[0]
