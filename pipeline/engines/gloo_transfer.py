"""Weights over a process group: a gloo backend for vLLM's weight-transfer API, worker side
and trainer side, registered through vLLM's ``vllm.general_plugins`` entry point.

Where it sits: learner rank 0 → ``VLLMServerEngine`` (``engine.weight_transport=dist``)
→ **GlooTrainerWeightTransferEngine.send_weights(buckets)** → one broadcast per bucket →
**GlooWeightTransferEngine.receive_weights** in every vLLM worker → ``model.load_weights``.

vLLM 0.32's own backends (nccl, ipc, …) are CUDA-only; this one uses the same server
routes (``/init_weight_transfer_engine``, ``/start_weight_update``, ``/update_weights``,
``/finish_weight_update``, ``/shutdown_weight_transfer_engine``; servers started with
``--weight-transfer-config '{"backend":"gloo"}'`` and ``VLLM_SERVER_DEV_MODE=1``) and
the same lifecycle (layerwise reload between start and finish). On a cluster with GPUs
the NCCL backend is the one to use; the protocol here (one packed buffer per bucket of
the learner's stream, its names/dtypes/shapes in the ``update_weights`` body, the
stream's checksum verified by every worker on the last bucket) is transport-agnostic.

Group. The trainer (rank 0) serves a ``TCPStore`` at ``master_address:master_port``; each
server's workers join as ranks ``rank_offset + worker rank`` (``rank_offset`` = 1 + the
world sizes of the servers before it) of one ``ProcessGroupGloo`` of ``world_size`` =
1 + every server's world size, under a fresh store prefix per group (a group torn down
after a failure is never reused). Every collective has ``timeout_s``: a stalled transfer
raises on every side instead of hanging.

Imports torch and vLLM's weight-transfer base only: vLLM workers load it; no Megatron.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import ClassVar

import torch

from pipeline.weights.buckets import StreamChecksum

BACKEND = "gloo"
logger = logging.getLogger(f"vllm.{__name__}")  # under vLLM's logger: its handler prints it in the server log


def register() -> None:
    """The ``vllm.general_plugins`` entry point: runs in every vLLM process (idempotent)."""
    from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory, WeightTransferTrainerFactory

    if BACKEND not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(BACKEND, __name__, "GlooWeightTransferEngine")
    if BACKEND not in WeightTransferTrainerFactory._registry:
        WeightTransferTrainerFactory.register_engine(BACKEND, __name__, "GlooTrainerWeightTransferEngine")


def open_group(address: str, port: int, prefix: str, rank: int, world_size: int, timeout_s: float, *,
               store=None):  # fmt: skip
    """A ``ProcessGroupGloo`` over the trainer's TCPStore (``store`` given: the trainer's own)."""
    import torch.distributed as dist

    timeout = timedelta(seconds=timeout_s)
    if store is None:
        store = dist.TCPStore(address, port, is_master=False, timeout=timeout)
    return dist.ProcessGroupGloo(dist.PrefixStore(prefix, store), rank, world_size, timeout)


def pack(items: list[tuple[str, torch.Tensor]]) -> tuple[torch.Tensor, dict]:
    """One bucket → a flat uint8 buffer + the metadata its receiver needs to split it."""
    flat = [t.detach().contiguous().cpu().reshape(-1).view(torch.uint8) for _, t in items]
    meta = {"names": [n for n, _ in items], "dtype_names": [str(t.dtype).removeprefix("torch.") for _, t in items],
            "shapes": [list(t.shape) for _, t in items]}  # fmt: skip
    return (torch.cat(flat) if flat else torch.empty(0, dtype=torch.uint8)), meta


def unpack(buf: torch.Tensor, names, dtype_names, shapes) -> list[tuple[str, torch.Tensor]]:
    out, offset = [], 0
    for name, dt, shape in zip(names, dtype_names, shapes):
        dtype = getattr(torch, dt)
        n = int(torch.Size(shape).numel()) * torch.empty(0, dtype=dtype).element_size()
        out.append((name, buf[offset : offset + n].view(dtype).reshape(shape)))
        offset += n
    if offset != buf.numel():
        raise ValueError(f"bucket holds {buf.numel()} bytes, its metadata describes {offset}")
    return out


def refresh_tied_head(model) -> None:
    """A tied lm_head is never "loaded", so a reload does not redo its post-load step; on
    CPU that step packs the weight for the GEMM kernel (without it the head kept sampling
    from the old weights: a 0.1 log-prob error after an update, measured). Redo it."""
    head, embed = getattr(model, "lm_head", None), getattr(getattr(model, "model", None), "embed_tokens", None)
    if getattr(getattr(model, "config", None), "tie_word_embeddings", False) and head is not None and embed is not None:
        if head.weight.data_ptr() != embed.weight.data_ptr():
            head.weight.data.copy_(embed.weight.data)
        method = getattr(head, "quant_method", None)
        if method is not None and hasattr(method, "process_weights_after_loading"):
            method.process_weights_after_loading(head)


def _base():
    from vllm.distributed.weight_transfer import base

    return base


# -- worker side (inside each vLLM worker) --------------------------------------------------
def _worker_classes():
    base = _base()

    @dataclass
    class GlooInitInfo(base.WeightTransferInitInfo):
        master_address: str
        master_port: int
        rank_offset: int
        world_size: int
        group: str  # store prefix of this group
        timeout_s: float = 600.0

    @dataclass
    class GlooUpdateInfo(base.WeightTransferUpdateInfo):
        version: int
        index: int
        last: bool
        nbytes: int
        names: list[str]
        dtype_names: list[str]
        shapes: list[list[int]]
        checksum: str = ""  # on the last bucket: the stream's checksum of the whole version

    class GlooWeightTransferEngine(base.WeightTransferEngine):
        init_info_cls = GlooInitInfo
        update_info_cls = GlooUpdateInfo

        def __init__(self, config, vllm_config, device, model):
            super().__init__(config, vllm_config, device, model)
            self.group = None
            self.digest, self.expect = None, 0
            self.timing: dict[str, float] = {}  # seconds per phase of the version being received

        def init_transfer_engine(self, init_info) -> None:
            self.shutdown()
            rank = init_info.rank_offset + self.parallel_config.rank
            self.group = open_group(init_info.master_address, init_info.master_port, init_info.group, rank,
                                    init_info.world_size, init_info.timeout_s)  # fmt: skip

        def start_weight_update(self) -> None:
            from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

            t0 = time.perf_counter()
            self.digest, self.expect, self.pending = StreamChecksum(), 0, []
            initialize_layerwise_reload(self.model)
            self.timing = {"start": time.perf_counter() - t0, "receive": 0.0, "checksum": 0.0, "load": 0.0, "bytes": 0}

        def update_weights(self, update_info) -> None:
            if isinstance(update_info, dict) and update_info.get("abort"):
                # the trainer gave this version up (a member was lost): raising here is what
                # makes vLLM's worker end its session, so the next version can start
                self.digest = None
                raise RuntimeError("weight update aborted by the trainer")
            # the base class ends with torch.accelerator.synchronize(), which raises on CPU
            # torch; a gloo broadcast has completed when wait() returns
            self.receive_weights(self.parse_update_info(update_info))

        def receive_weights(self, info) -> None:
            if self.group is None:
                raise RuntimeError("gloo weight transfer not initialized: call /init_weight_transfer_engine first")
            if self.digest is None or info.index != self.expect:
                raise RuntimeError(f"weight stream out of order: bucket {info.index} of version {info.version}, "
                                   f"expected {self.expect}")  # fmt: skip
            t0 = time.perf_counter()
            buf = torch.empty(info.nbytes, dtype=torch.uint8)
            self.group.broadcast(buf, 0).wait()
            items = unpack(buf, info.names, info.dtype_names, info.shapes)
            t1 = time.perf_counter()
            for name, t in items:
                self.digest.update(name, t)
            tm = self.timing
            tm["receive"] += t1 - t0
            tm["checksum"] += time.perf_counter() - t1
            tm["bytes"] += info.nbytes
            self.expect += 1
            self.pending.append(items)  # stage, then commit: nothing loads before the checksum matched
            if not info.last:
                return
            if info.checksum != self.digest.hexdigest():
                self.pending = []
                raise RuntimeError(f"weight stream version {info.version}: checksum mismatch")
            t2 = time.perf_counter()
            for staged in self.pending:
                self.model.load_weights([(n, t.to(self.device)) for n, t in staged])
            self.pending = []
            tm["load"] += time.perf_counter() - t2

        def finish_weight_update(self) -> None:
            from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

            t0 = time.perf_counter()
            finalize_layerwise_reload(self.model, self.model_config)
            refresh_tied_head(self.model)
            self.digest = None
            tm = self.timing
            tm["finish"] = time.perf_counter() - t0
            logger.info("gloo weights: %d buckets, %.2f GB: start %.2f s, receive %.2f s, checksum %.2f s, load %.2f s, "
                        "finish %.2f s", self.expect, tm.get("bytes", 0) / 1e9, tm.get("start", 0), tm.get("receive", 0),
                        tm.get("checksum", 0), tm.get("load", 0), tm["finish"])  # fmt: skip

        def shutdown(self) -> None:
            self.group = None  # gloo pairs close with the object

    return GlooInitInfo, GlooUpdateInfo, GlooWeightTransferEngine


# -- trainer side (learner rank 0) ----------------------------------------------------------
def _trainer_classes():
    base = _base()

    @dataclass
    class GlooTrainerInitInfo(base.TrainerInitInfo):
        backend: ClassVar[str] = BACKEND
        master_address: str = "127.0.0.1"
        master_port: int = 0
        world_sizes: list[int] = field(default_factory=list)  # each server's world size, in client order
        group: str = "g0"
        timeout_s: float = 600.0

    class GlooTrainerWeightTransferEngine(base.TrainerWeightTransferEngine):
        """The sender. ``client`` drives every server (``/init…``, ``/update_weights`` …);
        ``send_weights(buckets)`` takes one version's stream (not a ``WeightSource``: the
        learner's stream is already the gathered HF tensors, one bucket at a time)."""

        init_info_cls = GlooTrainerInitInfo

        @classmethod
        def trainer_init(cls, init_info, *, client, source=None, store=None):
            import threading

            self = cls(client=client, source=None, is_sender=init_info.is_sender)
            self.timeout_s = init_info.timeout_s
            world = 1 + sum(init_info.world_sizes)
            offsets = [1 + sum(init_info.world_sizes[:i]) for i in range(len(init_info.world_sizes))]
            infos = [{"master_address": init_info.master_address, "master_port": init_info.master_port,
                      "rank_offset": off, "world_size": world, "group": init_info.group,
                      "timeout_s": init_info.timeout_s} for off in offsets]  # fmt: skip
            errors: list[BaseException] = []
            t = threading.Thread(target=lambda: _collect(errors, client.init_weight_transfer_engine, infos), daemon=True)
            t.start()
            try:
                self.group = open_group(init_info.master_address, init_info.master_port, init_info.group, 0, world,
                                        init_info.timeout_s, store=store)  # fmt: skip
            finally:
                t.join(timeout=init_info.timeout_s + 30)
            if errors:
                raise errors[0]
            return self

        def send_weights(self, buckets=None) -> int:
            """Broadcast each bucket while every server receives it; the version, once every
            server finished (its workers matched the checksum)."""
            import threading

            self.client.start_weight_update()
            version = None
            for b in buckets:
                version = b.version
                buf, meta = pack(b.items)
                info = {"version": b.version, "index": b.index, "last": b.last, "nbytes": int(buf.numel()),
                        "checksum": b.checksum, **meta}  # fmt: skip
                errors: list[BaseException] = []
                t = threading.Thread(target=lambda: _collect(errors, self.client.update_weights, info), daemon=True)
                t.start()
                try:
                    self.group.broadcast(buf, 0).wait()
                except Exception as e:  # a member died or stalled: its HTTP call names it
                    t.join(timeout=min(self.timeout_s, 30))
                    raise (errors[0] if errors else e) from e
                t.join(timeout=self.timeout_s + 30)
                if t.is_alive():
                    raise TimeoutError(f"a server did not confirm bucket {b.index} of v{b.version} within "
                                       f"{self.timeout_s:g} s")  # fmt: skip
                if errors:
                    raise errors[0]
            if version is None:
                raise ValueError("weight stream ended without its last bucket")
            self.client.finish_weight_update(str(version))
            return version

        def shutdown(self) -> None:
            self.group = None

    return GlooTrainerInitInfo, GlooTrainerWeightTransferEngine


def _collect(errors: list, fn, *args) -> None:
    try:
        fn(*args)
    except BaseException as e:  # noqa: BLE001 - re-raised by the caller
        errors.append(e)


def __getattr__(name: str):
    """The engine classes subclass vLLM's bases, so they are built on first use: importing
    this module (the learner, the tests) needs no vLLM."""
    if name in ("GlooInitInfo", "GlooUpdateInfo", "GlooWeightTransferEngine"):
        return dict(zip(("GlooInitInfo", "GlooUpdateInfo", "GlooWeightTransferEngine"), _cached("worker")))[name]
    if name in ("GlooTrainerInitInfo", "GlooTrainerWeightTransferEngine"):
        return dict(zip(("GlooTrainerInitInfo", "GlooTrainerWeightTransferEngine"), _cached("trainer")))[name]
    raise AttributeError(name)


_CACHE: dict = {}


def _cached(kind: str):
    if kind not in _CACHE:
        _CACHE[kind] = _worker_classes() if kind == "worker" else _trainer_classes()
    return _CACHE[kind]
