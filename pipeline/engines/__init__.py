"""Generation engines behind one interface (``pipeline.engines.base``): hf, vllm, vllm_server."""

from pipeline.engines.base import Engine, EngineConfig, EngineError, Generation, SamplingParams


def make_engine(cfg: EngineConfig, hf_dir, *, logprob_temperature: float, seed: int = 0,
                pad_token_id: int = 0, weights_dir=None, max_model_len: int | None = None) -> Engine:  # fmt: skip
    """The configured engine; ``hf_dir`` holds the model's config.json (and weights for vllm)."""
    if cfg.backend == "hf":
        from pipeline.engines.hf import HFEngine

        return HFEngine(hf_dir, logprob_temperature=logprob_temperature, max_batch=cfg.max_batch,
                        batch_wait_ms=cfg.batch_wait_ms, seed=seed, pad_token_id=pad_token_id)  # fmt: skip
    if cfg.backend == "vllm":
        from pipeline.engines.vllm import VLLMEngine

        return VLLMEngine(hf_dir, logprob_temperature=logprob_temperature, max_batch=cfg.max_batch,
                          batch_wait_ms=cfg.batch_wait_ms, seed=seed, max_model_len=max_model_len, **cfg.vllm_kwargs)  # fmt: skip
    from pipeline.engines.vllm_server import VLLMServerEngine

    return VLLMServerEngine(cfg.server_urls, weights_dir=weights_dir or f"{hf_dir}/stream",
                            timeout_s=cfg.request_timeout_s, start_timeout_s=cfg.server_start_timeout_s,
                            logprob_temperature=logprob_temperature, weight_transport=cfg.weight_transport,
                            transfer_address=cfg.weight_transfer_address, transfer_port=cfg.weight_transfer_port,
                            transfer_timeout_s=cfg.weight_transfer_timeout_s,
                            transfer_fallback=cfg.weight_transport_fallback)  # fmt: skip


__all__ = ["Engine", "EngineConfig", "EngineError", "Generation", "SamplingParams", "make_engine"]
