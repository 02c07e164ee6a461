"""The ``dist`` weight transport of the ``vllm_server`` engine: learner rank 0 → every vLLM
server over one process group (``engine.weight_transport=dist``), through vLLM's
weight-transfer routes and our gloo backend (``pipeline/engines/gloo_transfer.py``).

Where it sits: ``VLLMServerEngine.update_weights`` → **DistTransport.send(buckets)** →
``GlooTrainerWeightTransferEngine`` (broadcast) ⇄ ``ServersClient`` (HTTP) → each server's
``GlooWeightTransferEngine``.

Contract (the filesystem transport's): buckets come straight from the learner's stream
(memory bounded by one packed bucket); a version is reported only after every server of
the group finished it (its workers verified the stream's checksum); a server that does not
answer is dropped, never waited for. The group holds the engine's ``targets()`` (live
servers and those coming back); once any server left or joined (the engine's ``epoch``;
one that left and came back is a new process), the next version forms a new group. A transfer that fails or stalls (every collective and request
has ``timeout_s``) raises ``TransferFailed`` naming the server; the group is then shut
down on every side and a fresh one (a new store prefix) is formed for the next version.
"""

from __future__ import annotations

import itertools
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import requests


class TransferFailed(RuntimeError):
    """This version did not reach every live server over the process group."""


class ServersClient:
    """vLLM's ``VLLMWeightSyncClient`` protocol over HTTP, fanned out to every live server
    (each call returns once every server answered, or raises naming the first that failed)."""

    def __init__(self, engine, timeout_s: float):
        self.engine, self.timeout_s = engine, timeout_s
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="weights-http")

    def _each(self, route: str, bodies) -> None:
        urls = self.engine.targets()
        bodies = bodies if isinstance(bodies, list) else [bodies] * len(urls)
        futs = {url: self._pool.submit(self._post, url, route, body) for url, body in zip(urls, bodies)}
        for url, fut in futs.items():
            fut.result()

    def _post(self, url: str, route: str, body: dict) -> None:
        try:
            r = requests.post(f"{url}{route}", json=body, timeout=self.timeout_s)
        except (requests.ConnectionError, requests.Timeout) as e:
            self.engine._drop(url, f"weight transfer {route}: {type(e).__name__}")
            raise TransferFailed(f"vLLM server {url}: {route}: {type(e).__name__}") from e
        if not r.ok:
            raise TransferFailed(f"vLLM server {url}: {route} answered {r.status_code}: {r.text[:300]}")

    def world_sizes(self) -> list[int]:
        out = []
        for url in self.engine.targets():
            try:
                r = requests.get(f"{url}/get_world_size", timeout=min(self.timeout_s, 30))
            except (requests.ConnectionError, requests.Timeout) as e:
                self.engine._drop(url, f"weight transfer /get_world_size: {type(e).__name__}")
                raise TransferFailed(f"vLLM server {url}: /get_world_size: {type(e).__name__}") from e
            r.raise_for_status()
            out.append(int(r.json()["world_size"]))
        return out

    # the protocol's four calls (init takes one body per server: its rank offset)
    def init_weight_transfer_engine(self, init_infos: list[dict]) -> None:
        self._each("/init_weight_transfer_engine", [{"init_info": i} for i in init_infos])

    def start_weight_update(self) -> None:
        self._each("/start_weight_update", {})

    def update_weights(self, update_info: dict) -> None:
        self._each("/update_weights", {"update_info": update_info})

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._each("/finish_weight_update", {"weight_version": weight_version})

    def shutdown(self) -> None:
        """Best effort: every server ends the version it may have started (an ``abort``
        update: vLLM's worker ends a session only when an update raises) and releases the
        group (a worker stuck in a receive frees itself when its collective times out)."""
        for url in self.engine.targets():
            for route, body in (("/update_weights", {"update_info": {"abort": True}}), ("/shutdown_weight_transfer_engine", {})):
                try:
                    requests.post(f"{url}{route}", json=body, timeout=5)
                except requests.RequestException:
                    break

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class DistTransport:
    def __init__(self, engine, *, address: str = "", port: int = 0, timeout_s: float = 600.0):
        import torch.distributed as dist

        from pipeline.engines.gloo_transfer import register

        register()
        self.engine, self.timeout_s = engine, timeout_s
        self.address = address or socket.gethostbyname(socket.gethostname())
        self.store = dist.TCPStore("0.0.0.0", port, is_master=True, wait_for_workers=False,
                                   timeout=timedelta(seconds=timeout_s))  # fmt: skip
        self.port = self.store.port
        self.client = ServersClient(engine, timeout_s)
        self._groups = itertools.count()
        self.sender = None
        self.epoch = -1  # the engine's membership epoch the current group was formed in
        self._lock = threading.Lock()

    def _connect(self):
        from pipeline.engines.gloo_transfer import GlooTrainerInitInfo, GlooTrainerWeightTransferEngine

        self.epoch = self.engine.epoch
        info = GlooTrainerInitInfo(rank=0, master_address=self.address, master_port=self.port,
                                   world_sizes=self.client.world_sizes(), group=f"g{next(self._groups)}",
                                   timeout_s=self.timeout_s)  # fmt: skip
        return GlooTrainerWeightTransferEngine.trainer_init(info, client=self.client, store=self.store)

    def send(self, buckets) -> int:
        """One version to every live server; its number once all finished it. On failure
        the rest of ``buckets`` is still consumed (the stream is a collective of every
        learner rank) and ``TransferFailed`` is raised."""
        it = iter(buckets)
        with self._lock:
            try:
                if self.sender is not None and self.epoch != self.engine.epoch:
                    self.client.shutdown()  # a server left or joined since: a new group of the current ones
                    self.sender = None
                if self.sender is None:
                    self.sender = self._connect()
                return self.sender.send_weights(it)
            except Exception as e:  # noqa: BLE001 - one line, naming the server
                self.sender = None
                self.client.shutdown()
                for _ in it:  # keep the learner ranks' collectives aligned
                    pass
                raise TransferFailed(f"weight transfer over the process group failed: {type(e).__name__}: {e}"[:500]) from e

    def close(self) -> None:
        if self.sender is not None:
            self.client.shutdown()
        self.sender = None
        self.client.close()
