"""Checkpoint export/import: ``python tools/convert.py`` or ``echo-rl convert``.

    convert mcore-to-hf --ckpt DIR --out DIR [--dtype bfloat16] [--tokenizer DIR]
    convert hf-to-mcore --hf DIR --out DIR [--tp N --pp N] [--dtype float32]
    convert verify --hf DIR --ckpt DIR [--tol 1e-4]    # exit 1 above the tolerance

mcore-to-hf output loads with ``transformers.AutoModelForCausalLM.from_pretrained`` and
vLLM. Megatron dist checkpoints are layout-free: hf-to-mcore output loads at any TP/PP
(``--tp/--pp`` are validated against the model). Nothing partial is ever left at --out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="echo-rl convert", description=__doc__.splitlines()[0])
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
    from pipeline.weights import convert

    try:
        if args.cmd == "mcore-to-hf":
            out = convert.mcore_to_hf(args.ckpt, args.out, dtype=args.dtype, tokenizer=args.tokenizer,
                                      max_shard_bytes=int(args.max_shard_gb * 2**30))  # fmt: skip
            print(f"wrote {out}")
        elif args.cmd == "hf-to-mcore":
            out = convert.hf_to_mcore(args.hf, args.out, tp=args.tp, pp=args.pp, dtype=args.dtype)
            print(f"wrote {out} (loads at any TP/PP; checked TP={args.tp} PP={args.pp})")
        else:
            diff = convert.verify(args.hf, args.ckpt, tokens=args.tokens)
            ok = diff <= args.tol
            print(f"max |logit diff| = {diff:.3e} ({'OK' if ok else 'FAIL'}, tolerance {args.tol:g})")
            return 0 if ok else 1
    except (convert.ConversionError, ModelConfigError, FileNotFoundError, KeyError) as e:
        print(f"convert: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
