"""The vLLM engine: the offline ``vllm.LLM`` in this process (GPU nodes; vLLM's CPU build here).

Where it sits: rollout → **VLLMEngine** (a ``BatchingEngine``) → Generation; learner →
weights stream → ``update_weights`` → each vLLM worker's ``model.load_weights``.

Weights travel through ``LLM.collective_rpc`` to ``WeightLoader.echo_load_weights``, a
worker extension (vLLM's ``worker_extension_cls``, as in its RLHF examples): one call per
version (buckets staged and checksummed first), as safetensors bytes (a host copy: right for CPU and small models; a
GPU cluster wants CUDA IPC or NCCL here, not built); the worker loads HF-named tensors
with the model's ``load_weights`` (which fuses q/k/v and gate/up itself).

Log-probs: vLLM reports ``raw_logprobs`` (T = 1) by default and ``processed_logprobs``
(after temperature) on request; the engine picks the mode that matches the learner's
``logprob_temperature`` and refuses a mismatch instead of logging a wrong ratio.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pipeline.engines.base import BatchingEngine, EngineError, Generation, apply_buckets

logger = logging.getLogger(f"vllm.{__name__}")  # under vLLM's logger: printed in the server log


class WeightLoader:
    """vLLM worker extension (runs inside each vLLM worker)."""

    def echo_load_weights(self, payload: bytes) -> int:
        """``payload``: one bucket as safetensors bytes (vLLM's RPC carries bytes as they are)."""
        from safetensors.torch import load

        return self._load(list(load(payload).items()))

    def _load(self, items) -> int:
        # vLLM's in-place reload: load_weights, then redo the post-load processing (CPU
        # kernels repack weights, so a bare model.load_weights would not reach them)
        from pipeline.engines.gloo_transfer import refresh_tied_head

        self.reload_weights(weights_iterator=iter(items), is_checkpoint_format=True)  # type: ignore[attr-defined]
        refresh_tied_head(self.model_runner.model)  # type: ignore[attr-defined]
        return len(items)

    def echo_load_weights_from_dir(self, path_json: str) -> int:
        """Server transport: load ``model.safetensors`` from a shared directory."""
        import json

        from safetensors.torch import load_file

        t0 = time.perf_counter()
        tensors = load_file(f"{json.loads(path_json)}/model.safetensors")
        t1 = time.perf_counter()
        n = self._load(list(tensors.items()))
        logger.info("filesystem weights: %.2f GB: read %.2f s, reload %.2f s", sum(t.nbytes for t in tensors.values()) / 1e9,
                    t1 - t0, time.perf_counter() - t1)  # fmt: skip
        return n


class VLLMEngine(BatchingEngine):
    def __init__(self, hf_dir: str | Path, *, logprob_temperature: float = 1.0, max_batch: int = 64,
                 batch_wait_ms: float = 5.0, seed: int = 0, max_model_len: int | None = None, **llm_kwargs):  # fmt: skip
        from vllm import LLM

        self.logprob_temperature = logprob_temperature
        mode = "raw_logprobs" if logprob_temperature == 1.0 else "processed_logprobs"
        self.logprobs_mode = mode
        kwargs = dict(dtype="float32", enforce_eager=True, gpu_memory_utilization=0.1, seed=seed,
                      skip_tokenizer_init=True, logprobs_mode=mode,
                      worker_extension_cls=f"{__name__}.WeightLoader", max_model_len=max_model_len)  # fmt: skip
        import torch

        if not torch.cuda.is_available() and "gpu_memory_utilization" not in llm_kwargs:
            # vLLM's CPU worker sizes the KV cache as a fraction of its NUMA node minus what
            # the process already holds; on a small node 0.1 is less than the process itself
            # (a negative budget). A fixed cache is what the tiny models need.
            kwargs.pop("gpu_memory_utilization")
            kwargs.setdefault("kv_cache_memory_bytes", 512 << 20)
        kwargs.update(llm_kwargs)
        self.llm = LLM(model=str(hf_dir), **kwargs)
        super().__init__(max_batch, batch_wait_ms)

    def update_weights(self, buckets):
        """Stage one version's buckets (checked by ``apply_buckets``), then reload once: vLLM's
        in-place reload re-processes whole layers, so it gets the complete set."""
        staged: dict = {}
        with self._lock:
            version = apply_buckets(buckets, lambda items: staged.update(
                {n: t.detach().cpu().contiguous() for n, t in items}))  # fmt: skip
            self.load_weights(list(staged.items()))
            self.policy_version = version
        return version

    def load_weights(self, items) -> None:
        """Reload these HF-named tensors in every vLLM worker now."""
        from safetensors.torch import save

        self.llm.collective_rpc("echo_load_weights", args=(save({n: t.detach().cpu().contiguous() for n, t in items}),))

    def generate_batch(self, prompts, params):
        from vllm import SamplingParams as VSP

        for p in params:
            if self.logprobs_mode == "processed_logprobs" and p.temperature != self.logprob_temperature:
                raise EngineError(
                    f"vLLM reports log-probs at T=1 or at the sampling temperature; the learner uses "
                    f"T={self.logprob_temperature} but sampling uses T={p.temperature}"
                )
        sps = [VSP(temperature=p.temperature, top_p=p.top_p, max_tokens=p.max_tokens, stop_token_ids=p.stop_token_ids,
                   logprobs=0, detokenize=False, seed=p.seed) for p in params]  # fmt: skip
        outs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], sps, use_tqdm=False)
        gens = []
        for out, p in zip(outs, params):
            c = out.outputs[0]
            toks = list(c.token_ids)
            lps = [float(d[t].logprob) for t, d in zip(toks, c.logprobs)]
            stopped = bool(toks) and toks[-1] in p.stop_token_ids
            gens.append(Generation(toks, lps, "stop" if stopped else "length", self.policy_version))
        return gens

    def close(self) -> None:
        super().close()
        llm = getattr(self, "llm", None)
        if llm is not None:
            del self.llm
