"""The HF engine: transformers ``generate`` on CPU (the embedded default), batched.

Where it sits: rollout → **HFEngine** (a ``BatchingEngine``) → Generation; weights come
from the learner's stream (``update_weights``), so the engine starts from a config only.

Departures from a serving engine: no KV cache across turns (each turn re-reads its
prompt), and the raw logits of every generated step are kept for the log-probs
([steps, B, V] floats): right for tiny models, not for a 150k vocabulary at scale (use
vLLM there).
"""

from __future__ import annotations

import json
from itertools import groupby
from pathlib import Path

import torch

from pipeline.engines.base import BatchingEngine, Generation, SamplingParams


class HFEngine(BatchingEngine):
    def __init__(self, hf_dir: str | Path, *, logprob_temperature: float = 1.0, max_batch: int = 64,
                 batch_wait_ms: float = 5.0, seed: int = 0, pad_token_id: int = 0):  # fmt: skip
        from transformers import AutoConfig, AutoModelForCausalLM

        hf_dir = Path(hf_dir)
        if any(hf_dir.glob("*.safetensors")):
            self.model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
        else:  # weights arrive with the first update_weights
            config = AutoConfig.from_pretrained(str(hf_dir))
            self.model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        self.model.eval()
        self.tied = bool(json.loads((hf_dir / "config.json").read_text()).get("tie_word_embeddings"))
        self.logprob_temperature = logprob_temperature
        self.pad_token_id = pad_token_id
        torch.manual_seed(seed)
        super().__init__(max_batch, batch_wait_ms)

    def load_weights(self, items) -> None:
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, t in items:
                if name not in params:
                    if self.tied and name == "lm_head.weight":
                        continue
                    raise KeyError(f"HF engine: the model has no parameter {name!r}")
                params[name].copy_(t.to(params[name].dtype))

    def generate_batch(self, prompts, params):
        out: list[Generation | None] = [None] * len(prompts)
        key = lambda i: (params[i].temperature, params[i].top_p)  # noqa: E731
        for _, group in groupby(sorted(range(len(prompts)), key=key), key=key):
            idx = list(group)
            for i, g in zip(idx, self._generate([prompts[i] for i in idx], [params[i] for i in idx])):
                out[i] = g
        return out

    @torch.no_grad()
    def _generate(self, prompts: list[list[int]], params: list[SamplingParams]) -> list[Generation]:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):  # left padding
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        stop = sorted({s for p in params for s in p.stop_token_ids})
        if params[0].seed is not None:  # reproducible when batches are (max_batch=1, or one episode at a time)
            torch.manual_seed(params[0].seed)
        res = self.model.generate(
            input_ids=ids, attention_mask=mask, do_sample=True, temperature=params[0].temperature,
            top_p=params[0].top_p, top_k=0, max_new_tokens=max(p.max_tokens for p in params),
            eos_token_id=stop or None, pad_token_id=self.pad_token_id, output_logits=True,
            return_dict_in_generate=True,
        )  # fmt: skip
        new = res.sequences[:, width:]
        logp = torch.log_softmax(torch.stack(res.logits, 1).float() / self.logprob_temperature, -1)
        chosen = logp.gather(-1, new[:, : logp.shape[1], None]).squeeze(-1)
        gens = []
        for i, p in enumerate(params):
            toks = new[i].tolist()[: p.max_tokens]
            end = next((k + 1 for k, t in enumerate(toks) if t in p.stop_token_ids), None)
            toks = toks[:end] if end else toks
            gens.append(Generation(toks, chosen[i, : len(toks)].tolist(), "stop" if end else "length",
                                   self.policy_version))  # fmt: skip
        return gens
