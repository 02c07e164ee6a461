"""The generation-engine interface: token ids in; token ids and log-probs out.

Where it sits: rollout loop → **Engine.submit** → sampled ACTION tokens; learner →
weights stream → **Engine.update_weights** → ``policy_version``.

    engine = make_engine(cfg.engine, hf_dir, logprob_temperature=cfg.learner.temperature)
    fut = engine.submit(prompt_ids, SamplingParams(temperature=0.8, max_tokens=256, stop_token_ids=[im_end]))
    gen = fut.result()          # Generation(token_ids, logprobs, finish_reason, policy_version)
    engine.update_weights(stream_hf_weights(...))   # see pipeline/weights/stream.py's contract

Many episodes run in threads; each ``submit`` returns a future. Local engines (HF, the
offline vLLM ``LLM``) own one worker thread that takes whatever requests are waiting and
runs them as one batch, so generation of many episodes overlaps with their sandbox
commands. Log-probs are of the realized tokens at ``logprob_temperature`` (the learner's
temperature), so the learner's importance ratio compares like with like.
"""

from __future__ import annotations

import abc
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Iterable

from pipeline.weights.buckets import StreamChecksum, WeightBucket


@dataclass
class EngineConfig:
    backend: str = "hf"  # hf (transformers generate, the CPU default) | vllm (offline LLM) | vllm_server (OpenAI API)
    max_batch: int = 64  # most requests one local batch holds
    batch_wait_ms: float = 5.0  # how long a local engine waits for more requests to batch
    server_urls: list[str] = field(default_factory=list)  # vllm_server: base URLs (http://host:port)
    request_timeout_s: float = 600.0  # vllm_server: per request
    server_start_timeout_s: float = 1800.0  # vllm_server: how long to wait for the servers to answer
    vllm_kwargs: dict = field(default_factory=dict)  # extra vllm.LLM(...) arguments (e.g. tensor_parallel_size)
    weight_transport: str = "filesystem"  # vllm_server (what launch.py runs): filesystem (RUN_DIR/engine_model/stream/vN) | dist (a process group: pipeline/engines/gloo_transfer.py); local engines take weights in memory either way
    weight_transfer_address: str = ""  # dist: this learner's address as the servers reach it ("" = its hostname's)
    weight_transfer_port: int = 0  # dist: the rendezvous port on the learner (0 = any free one)
    weight_transfer_timeout_s: float = 600.0  # dist: bound on every collective and request of one version
    weight_transport_fallback: bool = True  # dist: a version that fails over the group goes through the filesystem

    def check(self) -> list[tuple[str, str]]:
        errs = []
        if self.backend not in ("hf", "vllm", "vllm_server"):
            errs.append(("backend", f"must be hf, vllm or vllm_server, got {self.backend!r}"))
        if self.backend == "vllm_server" and not self.server_urls:
            errs.append(("server_urls", "vllm_server needs at least one URL"))
        if self.weight_transport not in ("filesystem", "dist"):
            errs.append(("weight_transport", f"must be filesystem or dist, got {self.weight_transport!r}"))
        if self.weight_transfer_timeout_s <= 0:
            errs.append(("weight_transfer_timeout_s", f"must be > 0, got {self.weight_transfer_timeout_s}"))
        if self.max_batch < 1:
            errs.append(("max_batch", f"must be ≥ 1, got {self.max_batch}"))
        return errs


@dataclass
class SamplingParams:
    temperature: float = 1.0
    max_tokens: int = 256
    stop_token_ids: list[int] = field(default_factory=list)
    top_p: float = 1.0
    seed: int | None = None


@dataclass
class Generation:
    token_ids: list[int]  # sampled ids, the stop token included when one was sampled
    logprobs: list[float]  # sampler log p of each, at the engine's logprob temperature
    finish_reason: str  # "stop" (a stop token was sampled) | "length" (max_tokens reached)
    policy_version: int  # weights version that sampled these tokens


class EngineError(RuntimeError):
    """Generation failed (the engine, not the model's output)."""


class StreamAgain(EngineError):
    """The version did not reach the engine over its fast transport, and the engine can
    take it once more: the learner streams the same version again
    (``update_weights(stream, transport=self.transport)``: ``dist`` over a rebuilt group,
    or the ``filesystem`` fallback)."""

    def __init__(self, message: str, transport: str = "filesystem"):
        super().__init__(message)
        self.transport = transport


class Engine(abc.ABC):
    """A generation engine. ``policy_version`` is the version of its current weights."""

    policy_version: int = 0

    @abc.abstractmethod
    def submit(self, prompt_ids: list[int], params: SamplingParams) -> "Future[Generation]": ...

    @abc.abstractmethod
    def update_weights(self, buckets: Iterable[WeightBucket]) -> int:
        """Apply one version's buckets in order; return the version now held."""

    def stage_weights(self, buckets: Iterable[WeightBucket]):
        """Take one version's buckets now, to serve them later (``apply_staged``, between
        rollout batches of an asynchronous run). The stream's tensors may view the live
        parameters, so they are copied to host memory (one model copy); engines that can
        park a version elsewhere (``vllm_server``: its shared directory) override this."""
        return [replace(b, items=[(n, t.detach().to("cpu", copy=True)) for n, t in b.items]) for b in buckets]

    def apply_staged(self, staged) -> int:
        """Serve a version from ``stage_weights``; return the version now held."""
        return self.update_weights(iter(staged))

    def health(self) -> dict:
        """Per-step gauges of the engine's serving side (``vllm_server``: servers alive)."""
        return {}

    def close(self) -> None:
        pass


def read_version(buckets: Iterable[WeightBucket]) -> tuple[int, list[list]]:
    """Read one version's whole stream and check it: order, completeness, the final checksum.
    Returns ``(version, items of each bucket)``; raises ``EngineError`` before anything was
    loaded (a rejected stream never touches the weights being served)."""
    digest, version, expect, staged = StreamChecksum(), None, 0, []
    for b in buckets:
        if version is None:
            version = b.version
        if b.version != version or b.index != expect:
            raise EngineError(f"weight stream out of order: got version {b.version} bucket {b.index}, "
                              f"expected version {version} bucket {expect}")  # fmt: skip
        for name, t in b.items:
            digest.update(name, t)
        staged.append(b.items)
        expect += 1
        if b.last:
            if b.checksum != digest.hexdigest():
                raise EngineError(f"weight stream version {version}: checksum mismatch")
            return version, staged
    raise EngineError("weight stream ended without its last bucket")


def apply_buckets(buckets: Iterable[WeightBucket], load) -> int:
    """Check one version's stream whole (``read_version``), then feed each bucket's items to
    ``load(items)``; return the version. Stage, then commit: nothing is loaded before the
    version's checksum is known good (the ordering contract of ``pipeline/weights/stream.py``);
    the staged items are the stream's own tensors (views of the learner's parameters, or the
    resharded copies: at most one model copy held)."""
    version, staged = read_version(buckets)
    for items in staged:
        load(items)
    return version


class BatchingEngine(Engine):
    """A local engine: one worker thread runs waiting requests as batches."""

    def __init__(self, max_batch: int, batch_wait_ms: float):
        self.max_batch, self.batch_wait_s = max_batch, batch_wait_ms / 1000
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()  # held by a batch and by update_weights
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=f"{type(self).__name__}", daemon=True)
        self._thread.start()

    @abc.abstractmethod
    def generate_batch(self, prompts: list[list[int]], params: list[SamplingParams]) -> list[Generation]: ...

    @abc.abstractmethod
    def load_weights(self, items: list[tuple[str, "object"]]) -> None: ...

    def submit(self, prompt_ids, params):
        if self._closed:
            raise EngineError("engine is closed")
        fut: Future = Future()
        self._queue.put((list(prompt_ids), params, fut))
        return fut

    def update_weights(self, buckets):
        """A rejected stream changes nothing (``read_version`` before any load); a load that
        fails part-way leaves the weights mixed, and the engine then refuses to sample until
        a whole version has loaded."""
        with self._lock:  # no batch runs while the weights change
            version, staged = read_version(buckets)
            self._mixed = True
            for items in staged:
                self.load_weights(items)
            self._mixed, self.policy_version = False, version
        return self.policy_version

    def _serve(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            try:
                while len(batch) < self.max_batch:
                    item = self._queue.get(timeout=self.batch_wait_s)
                    if item is None:
                        self._queue.put(None)
                        break
                    batch.append(item)
            except queue.Empty:
                pass
            self.run_batch(batch)

    def run_batch(self, batch: list) -> None:
        """Generate one batch of (prompt ids, params, future) and settle every future: its
        Generation, or the engine's error (handed to every waiting episode)."""
        with self._lock:  # no weight update mid-batch
            try:
                if getattr(self, "_mixed", False):
                    raise EngineError(f"a weight version failed part-way through loading; v{self.policy_version} "
                                      "is no longer whole: no sampling until a whole version has loaded")  # fmt: skip
                results = self.generate_batch([b[0] for b in batch], [b[1] for b in batch])
            except Exception as e:  # noqa: BLE001 - handed to every waiting episode
                for _, _, fut in batch:
                    fut.set_exception(EngineError(f"{type(self).__name__}: {type(e).__name__}: {e}"))
                return
        for (_, _, fut), res in zip(batch, results):
            fut.set_result(res)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join(timeout=60)
