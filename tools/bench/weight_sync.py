"""Weight sync and conversion speed on CPU (one process): per-step stream time and
checkpoint conversion throughput, for the tiny and a Qwen3-0.6B-shaped random model.

    python tools/bench/weight_sync.py [--models configs/models/qwen3-tiny.json,configs/models/qwen3-0.6b.json]

- sync: ``stream_hf_weights`` over the whole model (TP gather is a no-op at world 1; the
  name mapping, bucket assembly and the crc32/sha256 checksum of every tensor are real),
  bf16, 256 MiB buckets. The engine side (applying the buckets) is not timed here.
- mcore-to-hf / hf-to-mcore: the ``tools/convert`` functions end to end (load, map,
  write), throughput = parameter bytes ÷ wall time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="configs/models/qwen3-tiny.json,configs/models/qwen3-0.6b.json")
    ap.add_argument("--bucket-mb", type=int, default=256)
    args = ap.parse_args()

    import torch
    from megatron.core import dist_checkpointing

    from pipeline.learner.model import build_gpt, load_hf_config, transformer_config
    from pipeline.learner.parallel import init_parallel
    from pipeline.weights import convert
    from pipeline.weights.stream import stream_hf_weights

    for path in args.models.split(","):
        hf = dict(load_hf_config(path), torch_dtype="bfloat16")
        init_parallel(1, 1, backend="gloo")
        t0 = time.perf_counter()
        model = build_gpt(hf, transformer_config(hf, dtype=torch.bfloat16), pre_process=True,
                          post_process=True, use_te=False)  # fmt: skip
        build_s = time.perf_counter() - t0
        nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
        gb = nbytes / 1e9
        t0 = time.perf_counter()
        n_buckets = sum(1 for _ in stream_hf_weights(model, hf, version=1, bucket_bytes=args.bucket_mb << 20))
        sync_s = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = Path(tmp) / "mcore" / "step_000000"
            ckpt.mkdir(parents=True)
            dist_checkpointing.save({"model": model.sharded_state_dict(), "step": 0, "hf_config": hf}, str(ckpt))
            del model
            t0 = time.perf_counter()
            convert.mcore_to_hf(Path(tmp) / "mcore" / "step_000000", Path(tmp) / "hf", progress=False)
            m2h = time.perf_counter() - t0
            t0 = time.perf_counter()
            convert.hf_to_mcore(Path(tmp) / "hf", Path(tmp) / "mcore2")
            h2m = time.perf_counter() - t0
        print(f"{Path(path).stem}: {gb:.3f} GB bf16 params (built in {build_s:.1f} s)")
        print(f"  per-step sync stream: {sync_s:.2f} s for {n_buckets} buckets = {gb / sync_s:.2f} GB/s")
        print(f"  mcore-to-hf: {m2h:.2f} s = {gb / m2h:.3f} GB/s;  hf-to-mcore: {h2m:.2f} s = {gb / h2m:.3f} GB/s")


if __name__ == "__main__":
    main()
