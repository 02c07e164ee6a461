"""Weight transport: ``dist`` (a gloo process group) ÷ ``filesystem`` (safetensors in a shared
directory + ``/collective_rpc``), one version of the Qwen3-0.6B shape in bf16 (1.19 GB)
from this process to one vLLM CPU server, alternating, same server, same run.

    python tools/bench/weight_transport.py [--model configs/models/qwen3-0.6b.json] [--repeats 3]

Timed: ``VLLMServerEngine.update_weights(buckets)`` from the first bucket to the version
confirmed by the server (its workers loaded every tensor; the dist path also verified the
stream's checksum there). The buckets are the learner stream's (256 MiB, HF names, bf16)
built from an HF model here: the learner-side gather is the same for both transports and
is measured by ``tools/bench/weight_sync.py``. The server runs the model in fp32 (vLLM's
CPU build), so both paths also convert bf16 → fp32 on load. Goal: ratio ≤ 0.3.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def buckets(model, version: int, bucket_bytes: int = 256 << 20):
    import torch

    from pipeline.weights.buckets import StreamChecksum, WeightBucket

    items = [(n, p.detach().to(torch.bfloat16)) for n, p in model.named_parameters()]
    digest, out, cur, size = StreamChecksum(), [], [], 0
    for n, t in items:
        digest.update(n, t)
        cur.append((n, t))
        size += t.numel() * t.element_size()
        if size >= bucket_bytes:
            out.append(cur)
            cur, size = [], 0
    if cur:
        out.append(cur)
    return [WeightBucket(version, i, b, last=i == len(out) - 1, checksum=digest.hexdigest() if i == len(out) - 1 else "")
            for i, b in enumerate(out)]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="configs/models/qwen3-0.6b.json")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    import requests
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from pipeline.engines.vllm_server import VLLMServerEngine
    from tests.helpers.dist import free_port

    tmp = Path(tempfile.mkdtemp(prefix="bench-transport-"))
    hf = json.loads((ROOT / a.model).read_text())
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(**{k: v for k, v in hf.items() if k not in ("architectures",)}))
    model.save_pretrained(tmp / "m")
    for f in (ROOT / "configs/tokenizer/tiny").iterdir():  # the server only needs a tokenizer to start
        shutil.copy(f, tmp / "m" / f.name)
    port = free_port()
    log = open(tmp / "server.log", "w")  # the workers' per-phase timings ("gloo weights: …", "filesystem weights: …")
    server = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tmp / "m"), "--dtype", "float32",
         "--enforce-eager", "--kv-cache-memory-bytes", str(256 << 20), "--max-model-len", "256", "--port", str(port),
         "--worker-extension-cls", "pipeline.engines.vllm.WeightLoader", "--weight-transfer-config", '{"backend": "gloo"}'],
        env=dict(os.environ, VLLM_SERVER_DEV_MODE="1"), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 900
        while True:
            if server.poll() is not None or time.time() > deadline:
                raise SystemExit("the vLLM server did not come up")
            try:
                if requests.get(f"{url}/v1/models", timeout=2).ok:
                    break
            except requests.RequestException:
                time.sleep(3)
        engines = {
            "filesystem": VLLMServerEngine([url], weights_dir=tmp / "stream", start_timeout_s=60),
            "dist": VLLMServerEngine([url], weights_dir=tmp / "stream-unused", start_timeout_s=60,
                                     weight_transport="dist", transfer_address="127.0.0.1", transfer_timeout_s=600),
        }  # fmt: skip
        nbytes = sum(t.numel() * t.element_size() for b in buckets(model, 0) for _, t in b.items)
        times = {k: [] for k in engines}
        version = 0
        for i in range(a.repeats + 1):  # the first round warms both paths up (group formed, caches)
            for name in (("dist", "filesystem") if i % 2 else ("filesystem", "dist")):
                version += 1
                bs = buckets(model, version)
                t0 = time.perf_counter()
                got = engines[name].update_weights(bs)
                dt = time.perf_counter() - t0
                assert got == version
                if i:
                    times[name].append(dt)
                print(f"{name} v{version}: {dt:.2f} s", flush=True)
        for e in engines.values():
            e.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        log.close()
        phases = [ln.split("] ", 1)[-1].strip() for ln in (tmp / "server.log").read_text().splitlines()
                  if "gloo weights:" in ln or "filesystem weights:" in ln]  # fmt: skip
        shutil.rmtree(tmp, ignore_errors=True)
    print("server-side phases, per version:\n  " + "\n  ".join(phases))
    med = {k: statistics.median(v) for k, v in times.items()}
    # vLLM's own reload (layerwise: materialize, load, re-pack for the CPU GEMM kernels) is the
    # same work on both paths; what is left is the transport
    reload = {"filesystem": [float(re.search(r"reload ([\d.]+) s", p).group(1)) for p in phases if p.startswith("filesystem")],
              "dist": [float(re.search(r"load ([\d.]+) s", p).group(1)) + float(re.search(r"finish ([\d.]+) s", p).group(1))
                       for p in phases if p.startswith("gloo")]}  # fmt: skip
    reload_med = {k: statistics.median(v[1:] if len(v) > 1 else v) for k, v in reload.items()}  # first: warm-up
    transport = {k: med[k] - reload_med[k] for k in med}
    res = {"model": a.model, "bytes": nbytes, "repeats": a.repeats, "median_s": med, "vllm_reload_s": reload_med,
           "transport_s": transport, "transport_only_dist_over_filesystem": transport["dist"] / transport["filesystem"],
           "dist_over_filesystem": med["dist"] / med["filesystem"],
           "dist_GBps": nbytes / med["dist"] / 1e9, "filesystem_GBps": nbytes / med["filesystem"] / 1e9}  # fmt: skip
    print(json.dumps(res, indent=2))
    print(f"\n| transport | median s ({nbytes / 1e9:.2f} GB bf16) | GB/s |\n|---|---|---|")
    for k in ("filesystem", "dist"):
        print(f"| {k} | {med[k]:.2f} | {nbytes / med[k] / 1e9:.2f} |")
    print(f"dist ÷ filesystem = {res['dist_over_filesystem']:.3f}; without vLLM's reload (same on both): "
          f"{transport['dist']:.2f} s ÷ {transport['filesystem']:.2f} s = {res['transport_only_dist_over_filesystem']:.3f}")
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
