"""The HF engine: transformers ``generate`` on CPU (the embedded default), batched.

Where it sits: rollout → **HFEngine** (a ``BatchingEngine``) → Generation; weights come
from the learner's stream (``update_weights``), so the engine starts from a config only.

Two paths. The default calls ``generate`` and keeps no KV cache across turns: each turn
re-reads its whole prompt, and the raw logits of every generated step are kept for the
log-probs ([steps, B, V] floats): right for tiny models, not for a 150k vocabulary at
scale (use vLLM there). ``prefix_cache=True`` (the microcosm's engine) runs its own
decode loop and keeps each sequence's keys/values between calls (``_PrefixStore``): the
next turn of an episode, whose prompt starts with the previous prompt and generation,
computes only its new tokens. At 10M parameters and 32 turns that re-reading was ~90% of an
evaluation (``tools/bench/microcosm_eval.py``). Rows of one batch have different cached
and new lengths, so the batch is laid out right-aligned with a 4-D additive mask and
explicit positions, in one preallocated buffer (``_SlotCache``); new weights empty the store.
"""

from __future__ import annotations

import json
from collections import Counter
from itertools import groupby
from pathlib import Path

import torch

from pipeline.engines.base import BatchingEngine, Generation, SamplingParams


class HFEngine(BatchingEngine):
    def __init__(self, hf_dir: str | Path, *, logprob_temperature: float = 1.0, max_batch: int = 64,
                 batch_wait_ms: float = 5.0, seed: int = 0, pad_token_id: int = 0, prefix_cache: bool = False,
                 prefix_cache_bytes: int = 2 << 30):  # fmt: skip
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
        self.store = _PrefixStore(prefix_cache_bytes) if prefix_cache else None
        torch.manual_seed(seed)
        super().__init__(max_batch, batch_wait_ms)

    def load_weights(self, items) -> None:
        if self.store is not None:  # keys/values of the old weights
            self.store.clear()
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
            gen = self._generate if self.store is None else self._generate_cached
            for i, g in zip(idx, gen([prompts[i] for i in idx], [params[i] for i in idx])):
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

    @torch.no_grad()
    def _generate_cached(self, prompts: list[list[int]], params: list[SamplingParams]) -> list[Generation]:
        """Sample with the keys/values of each prompt's longest stored prefix.

        Layout of the batch's columns: [cached part (Lmax) | new prompt tokens (Nmax) |
        sampled tokens], each row right-aligned in the first two; a column a row does not
        use is masked for it. Pad queries attend to themselves only (no fully masked row)."""
        hits = [self.store.take(p) for p in prompts]
        # a row without a stored prefix would pad every row's prefill to its whole prompt:
        # rows with long new parts run as their own batch
        long = [i for i, (p, h) in enumerate(zip(prompts, hits)) if len(p) - (0 if h is None else h.shape[3]) > 32]
        if not long or len(long) == len(prompts):
            return self._decode(prompts, params, hits)
        out: list[Generation | None] = [None] * len(prompts)
        short = sorted(set(range(len(prompts))) - set(long))
        for idx in (long, short):
            for i, g in zip(idx, self._decode([prompts[i] for i in idx], [params[i] for i in idx], [hits[i] for i in idx])):
                out[i] = g
        return out

    def _decode(self, prompts: list[list[int]], params: list[SamplingParams], hits: list) -> list[Generation]:
        cfg = self.model.config
        n_layers, heads, dim = cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim
        B = len(prompts)
        lens = [0 if h is None else h.shape[3] for h in hits]
        news = [p[n:] for p, n in zip(prompts, lens)]
        lmax, nmax = max(lens), max(len(n) for n in news)
        max_new = max(p.max_tokens for p in params)
        width = lmax + nmax + max_new
        valid = torch.zeros(B, width, dtype=torch.bool)
        ids = torch.full((B, nmax), self.pad_token_id, dtype=torch.long)
        pos = torch.zeros(B, nmax, dtype=torch.long)
        # every column a forward writes before it reads; only the cached part's left pads
        # are never written, and they must be finite (masked scores still multiply them)
        kv = torch.empty(n_layers, 2, B, heads, width, dim)
        for i, (h, n, new) in enumerate(zip(hits, lens, news)):
            kv[:, :, i, :, : lmax - n] = 0.0
            if n:
                kv[:, :, i, :, lmax - n: lmax] = h
                valid[i, lmax - n: lmax] = True
            valid[i, lmax + nmax - len(new): lmax + nmax] = True
            ids[i, nmax - len(new):] = torch.tensor(new)
            pos[i, nmax - len(new):] = torch.arange(n, n + len(new))
        cache = _SlotCache(kv, lmax)
        neg = torch.finfo(torch.float32).min
        q = torch.arange(nmax)[:, None] + lmax  # the prefill's query columns
        k = torch.arange(lmax + nmax)[None, :]
        allowed = valid[:, None, : lmax + nmax] & (k <= q)[None]  # [B, Q, K]
        allowed |= (k == q)[None]
        mask = torch.zeros(allowed.shape).masked_fill_(~allowed, neg)[:, None]
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                            use_cache=True, logits_to_keep=1).logits[:, -1].float()  # fmt: skip
        # each row draws from its own generator, seeded by its request: what a request samples
        # does not depend on which requests the worker thread happened to batch it with
        rngs = [None if p.seed is None else torch.Generator().manual_seed(p.seed) for p in params]
        temp, top_p = params[0].temperature, params[0].top_p
        stops = [set(p.stop_token_ids) for p in params]
        toks: list[list[int]] = [[] for _ in range(B)]
        lps: list[list[float]] = [[] for _ in range(B)]
        done = [p.max_tokens <= 0 for p in params]
        nxt = torch.tensor([len(p) for p in prompts])  # the next sampled token's position
        col = lmax + nmax
        for t in range(max_new):
            tok = _sample(logits, temp, top_p, rngs)
            lp = torch.log_softmax(logits / self.logprob_temperature, -1).gather(-1, tok[:, None])[:, 0]
            for i in range(B):
                if not done[i]:
                    toks[i].append(int(tok[i]))
                    lps[i].append(float(lp[i]))
                    done[i] = toks[i][-1] in stops[i] or len(toks[i]) >= params[i].max_tokens
            if all(done) or t == max_new - 1:
                break
            valid[:, col] = True  # a finished row's column is fed but never stored
            step_mask = torch.zeros(B, col + 1).masked_fill_(~valid[:, : col + 1], neg)[:, None, None]
            logits = self.model(input_ids=tok[:, None], attention_mask=step_mask, position_ids=(nxt + t)[:, None],
                                past_key_values=cache, use_cache=True).logits[:, -1].float()  # fmt: skip
            col += 1
        gens = []
        for i, (p, new) in enumerate(zip(params, news)):
            # keys/values held for prompt + all sampled tokens but the last (never fed)
            cols = torch.cat([torch.arange(lmax - lens[i], lmax), torch.arange(lmax + nmax - len(new), lmax + nmax),
                              torch.arange(lmax + nmax, lmax + nmax + len(toks[i]) - 1)])  # fmt: skip
            held = kv[:, :, i][:, :, :, cols]  # [layers, 2, heads, length, dim], a copy
            self.store.put(prompts[i] + toks[i][:-1], held)
            end = toks[i][-1] in stops[i] if toks[i] else False
            gens.append(Generation(toks[i], lps[i], "stop" if end else "length", self.policy_version))
        return gens


class _SlotCache:
    """The batch's keys/values in one preallocated [layers, 2, B, heads, width, dim] tensor:
    a forward writes its new columns in place and attends to the filled prefix (a view).
    transformers' DynamicCache concatenates instead, copying the whole cache every decoded
    token. Only what the Qwen3 forward calls is here (``update``; ``get_seq_length``)."""

    def __init__(self, kv: torch.Tensor, filled: int):
        self.kv, self.ends = kv, [filled] * kv.shape[0]

    def update(self, key, value, layer_idx: int, cache_kwargs=None):
        a = self.ends[layer_idx]
        b = self.ends[layer_idx] = a + key.shape[2]
        self.kv[layer_idx, 0, :, :, a:b] = key
        self.kv[layer_idx, 1, :, :, a:b] = value
        return self.kv[layer_idx, 0, :, :, :b], self.kv[layer_idx, 1, :, :, :b]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.ends[layer_idx]


def _sample(logits: torch.Tensor, temperature: float, top_p: float, rngs: list | None = None) -> torch.Tensor:
    """One token per row from softmax(logits / temperature), nucleus-filtered when top_p < 1.
    ``rngs``: a ``torch.Generator`` per row (None: that row draws from the global generator);
    a row's token is the inverse CDF at its own uniform draw."""
    probs = torch.softmax(logits / temperature, -1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p  # keeps the smallest set whose mass reaches top_p
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p.masked_fill(drop, 0.0))
    if rngs is None:
        return torch.multinomial(probs, 1)[:, 0]
    cdf = probs.double().cumsum(-1)
    u = torch.stack([torch.rand((), dtype=torch.float64, generator=g) for g in rngs])
    tok = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]  # zero-mass tokens are never drawn
    return tok.clamp_(max=probs.shape[-1] - 1)


class _PrefixStore:
    """Keys/values per token sequence ([layers, 2, heads, length, head_dim]), at most
    ``max_bytes``: a sequence that does not fit is not stored (its next turn reads its
    prompt again). Not least-recently-used eviction: batches of episodes come round in
    turn, so evicting the oldest would drop exactly the entries needed next. Several
    episodes may hold the same sequence (two samples of one task that moved alike), so a
    key holds a list. ``take`` removes what it returns: an episode's next turn stores its
    longer sequence in its place."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes = max_bytes, 0
        self.entries: dict[tuple[int, ...], list[torch.Tensor]] = {}
        self.lengths: Counter[int] = Counter()
        self.hits = self.misses = self.dropped = 0

    def take(self, prompt: list[int]) -> torch.Tensor | None:
        for n in sorted((n for n in self.lengths if n < len(prompt)), reverse=True):  # ≥ 1 new token left
            key = tuple(prompt[:n])
            held = self.entries.get(key)
            if held:
                kv = held.pop()
                if not held:
                    del self.entries[key]
                self._forget(n, kv)
                self.hits += 1
                return kv
        self.misses += 1
        return None

    def put(self, tokens: list[int], kv: torch.Tensor) -> None:
        if not tokens:
            return
        if self.bytes + kv.nbytes > self.max_bytes:
            self.dropped += 1
            return
        self.entries.setdefault(tuple(tokens), []).append(kv)
        self.lengths[len(tokens)] += 1
        self.bytes += kv.nbytes

    def _forget(self, n: int, kv: torch.Tensor) -> None:
        self.bytes -= kv.nbytes
        self.lengths[n] -= 1
        if not self.lengths[n]:
            del self.lengths[n]

    def clear(self) -> None:
        self.entries.clear()
        self.lengths.clear()
        self.bytes = 0
