"""Learner ranks never sit in a collective waiting for rollouts: with a process-group
timeout of 3 s, rank 0 hands over after 6 s and the other rank gets the data; the plain
collective with the same delay times out (the control that shows the test bites)."""

from __future__ import annotations

import os
import socket
import time
from datetime import timedelta

import pytest
import torch.multiprocessing as mp


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, plain: bool, out):
    import torch.distributed as dist

    from pipeline.learner.parallel import handover as _broadcast

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=3))
    try:
        if rank == 0:
            time.sleep(6)  # "the rollout"
        obj = {"trajectories": [1, 2, 3]} if rank == 0 else None
        if plain:
            box = [obj]
            dist.broadcast_object_list(box, src=0)
            obj = box[0]
        else:
            obj = _broadcast(obj)
        out.put((rank, "ok", obj))
    except Exception as e:  # noqa: BLE001 - reported to the parent
        out.put((rank, "error", f"{type(e).__name__}: {str(e)[:200]}"))
    finally:
        try:
            dist.destroy_process_group()
        except Exception:
            pass


def _run(plain: bool) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, _port_cache[0], plain, q)) for r in range(2)]
    for p in procs:
        p.start()
    results = {}
    for _ in range(2):
        rank, status, obj = q.get(timeout=120)
        results[rank] = (status, obj)
    for p in procs:
        p.join(30)
        if p.is_alive():
            p.kill()
    return results


_port_cache = [0]


@pytest.mark.slow
def test_the_handover_outlasts_the_collective_timeout_and_the_plain_collective_does_not():
    _port_cache[0] = _port()
    got = _run(plain=False)
    assert got[1] == ("ok", {"trajectories": [1, 2, 3]}), got
    _port_cache[0] = _port()
    control = _run(plain=True)
    assert control[1][0] == "error", control  # rank 1 waited 6 s in a 3 s collective
