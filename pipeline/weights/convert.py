"""Checkpoint conversion: Megatron dist checkpoint ⇄ HF directory, and verification.

The command line ``echo-rl convert`` (``main``; ``tools/convert.py`` wraps it). Runs as one process (world size 1):
Megatron ``dist_checkpointing`` checkpoints are layout-free, so a checkpoint written
here loads at any TP/PP (``--tp``/``--pp`` are checked against the model's head and
layer counts), and any training checkpoint converts from here. The name mapping and
the streaming are the ones the per-step weight sync uses.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from megatron.core import dist_checkpointing

from pipeline.learner.checkpoint import latest
from pipeline.learner.model import (
    build_gpt, hf_dtype, load_hf_config, padded_vocab_size, transformer_config,
)  # fmt: skip
from pipeline.learner.parallel import init_parallel
from pipeline.weights import qwen3
from pipeline.weights.hf_io import HFWeights, atomic_dir, write_hf_dir
from pipeline.weights.stream import stream_hf_weights

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ConversionError(ValueError):
    """Bad input to a conversion (missing files, wrong architecture, bad layout)."""


def _ckpt_path(ckpt: str | Path) -> Path:
    path = latest(ckpt) or Path(ckpt)
    if not (path / "metadata.json").is_file():
        raise ConversionError(f"{ckpt}: not a Megatron dist checkpoint (no metadata.json)")
    return path


def _world1_model(hf: dict, dtype: torch.dtype):
    init_parallel(1, 1, backend="gloo" if not torch.cuda.is_available() else "auto")
    model = build_gpt(hf, transformer_config(hf, dtype=dtype), pre_process=True, post_process=True, use_te=False)
    return model.eval()


def load_mcore(ckpt: str | Path, dtype: torch.dtype | None = None):
    """(model at TP=PP=1, hf config, step) from a dist checkpoint written by this project."""
    path = _ckpt_path(ckpt)
    common = dist_checkpointing.load_common_state_dict(str(path))
    hf = common.get("hf_config")
    if hf is None:
        raise ConversionError(f"{path}: checkpoint has no hf_config (not written by echo-rl)")
    dtype = dtype or DTYPES.get(hf_dtype(hf), torch.float32)
    model = _world1_model(hf, dtype)
    state = dist_checkpointing.load({"model": model.sharded_state_dict()}, str(path))
    model.load_state_dict(state["model"])
    return model, hf, int(common.get("step", 0))


def mcore_to_hf(ckpt: str | Path, out: str | Path, *, dtype: str | None = None,
                tokenizer: str | None = None, max_shard_bytes: int = 2 << 30, progress: bool = True) -> Path:  # fmt: skip
    model, hf, step = load_mcore(ckpt, DTYPES[dtype] if dtype else None)
    hf_out = dict(hf, dtype=dtype or hf_dtype(hf))
    hf_out.pop("torch_dtype", None)

    def tensors():
        from tqdm import tqdm

        total = sum(p.numel() * p.element_size() for p in model.parameters())
        bar = tqdm(total=total, desc="mcore-to-hf", unit="B", unit_scale=True, disable=not progress)
        for bucket in stream_hf_weights(model, hf, version=step, bucket_bytes=64 << 20):
            bar.update(bucket.nbytes)
            yield from bucket.items
        bar.close()

    with atomic_dir(out) as tmp:
        write_hf_dir(tmp, tensors(), hf_out, max_shard_bytes=max_shard_bytes, tokenizer_dir=tokenizer)
    return Path(out)


def hf_to_mcore(hf_dir: str | Path, out: str | Path, *, tp: int = 1, pp: int = 1, dtype: str | None = None) -> Path:
    hf = load_hf_config(hf_dir)
    try:
        transformer_config(hf, tp=tp, pp=pp)  # the layout the user plans must be valid
    except ValueError as e:
        raise ConversionError(str(e)) from e
    weights = HFWeights(hf_dir)
    torch_dtype = DTYPES[dtype or hf_dtype(hf)]
    model = _world1_model(hf, torch_dtype)
    padded = padded_vocab_size(hf["vocab_size"], 1)
    used = set()

    def get(name):
        used.add(name)
        return weights.get(name)

    with torch.no_grad():
        for name, param in model.named_parameters():
            full = qwen3.hf_to_mcore(name, get, hf, padded)
            if full.shape != param.shape:
                raise ConversionError(f"{name}: HF gives {tuple(full.shape)}, model needs {tuple(param.shape)}")
            param.copy_(full.to(param.dtype))
    tied_extra = {"lm_head.weight"} if hf.get("tie_word_embeddings") else set()
    unused = sorted(set(weights.names()) - used - tied_extra)
    if unused:
        raise ConversionError(f"{hf_dir}: tensors the Qwen3 mapping does not use: {unused[:5]}")
    with atomic_dir(out) as tmp:
        step_dir = tmp / "step_000000"
        step_dir.mkdir()
        dist_checkpointing.save({"model": model.sharded_state_dict(), "step": 0, "hf_config": hf,
                                 "layout": {"tp": 1, "pp": 1, "dp": 1}}, str(step_dir))  # fmt: skip
        (tmp / "latest").write_text("step_000000")
    return Path(out)


def verify(hf_dir: str | Path, ckpt: str | Path, *, tokens: int = 64, seed: int = 0) -> float:
    """Max |logit difference| of HF transformers vs the Megatron checkpoint (fp32, same tokens)."""
    from transformers import AutoModelForCausalLM

    hf_model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    model, hf, _ = load_mcore(ckpt, torch.float32)
    vocab = hf["vocab_size"]
    if hf_model.config.vocab_size != vocab:
        raise ConversionError(f"vocab sizes differ: HF {hf_model.config.vocab_size}, ckpt {vocab}")
    ids = torch.randint(0, vocab, (1, tokens), generator=torch.Generator().manual_seed(seed))
    pos = torch.arange(tokens)[None]
    with torch.no_grad():
        ref = hf_model(input_ids=ids).logits
        got = model(ids, pos, None)[..., :vocab]
    return float((ref - got).abs().max())


def describe(ckpt: str | Path) -> str:
    path = _ckpt_path(ckpt)
    common = dist_checkpointing.load_common_state_dict(str(path))
    return json.dumps({"path": str(path), "step": common.get("step"), "layout": common.get("layout")})


CLI_USAGE = """Checkpoint export/import: ``python tools/convert.py`` or ``echo-rl convert``.

    convert mcore-to-hf --ckpt DIR --out DIR [--dtype bfloat16] [--tokenizer DIR]
    convert hf-to-mcore --hf DIR --out DIR [--tp N --pp N] [--dtype float32]
    convert verify --hf DIR --ckpt DIR [--tol 1e-4]    # exit 1 above the tolerance

mcore-to-hf output loads with ``transformers.AutoModelForCausalLM.from_pretrained`` and
vLLM. Megatron dist checkpoints are layout-free: hf-to-mcore output loads at any TP/PP
(``--tp/--pp`` are validated against the model). Nothing partial is ever left at --out.
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="echo-rl convert", description=CLI_USAGE.strip().splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("mcore-to-hf")
    a.add_argument("--ckpt", required=True)
    a.add_argument("--out", required=True)
    a.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    a.add_argument("--tokenizer", help="directory whose tokenizer files are copied along")
    a.add_argument("--max-shard-gb", type=float, default=2.0)
    b = sub.add_parser("hf-to-mcore")
    b.add_argument("--hf", required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--tp", type=int, default=1)
    b.add_argument("--pp", type=int, default=1)
    b.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    c = sub.add_parser("verify")
    c.add_argument("--hf", required=True)
    c.add_argument("--ckpt", required=True)
    c.add_argument("--tol", type=float, default=1e-4)
    c.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args(argv)

    from pipeline.learner.model import ModelConfigError

    try:
        if args.cmd == "mcore-to-hf":
            out = mcore_to_hf(args.ckpt, args.out, dtype=args.dtype, tokenizer=args.tokenizer,
                                      max_shard_bytes=int(args.max_shard_gb * 2**30))  # fmt: skip
            print(f"wrote {out}")
        elif args.cmd == "hf-to-mcore":
            out = hf_to_mcore(args.hf, args.out, tp=args.tp, pp=args.pp, dtype=args.dtype)
            print(f"wrote {out} (loads at any TP/PP; checked TP={args.tp} PP={args.pp})")
        else:
            diff = verify(args.hf, args.ckpt, tokens=args.tokens)
            ok = diff <= args.tol
            print(f"max |logit diff| = {diff:.3e} ({'OK' if ok else 'FAIL'}, tolerance {args.tol:g})")
            return 0 if ok else 1
    except (ConversionError, ModelConfigError, FileNotFoundError, KeyError) as e:
        print(f"convert: error: {e}", file=sys.stderr)
        return 2
    return 0

