"""Every GPU check in one run, one JSON: the script to run when a session is lent a device.

    python tools/gpu_check.py --out $OUT/gpu_check.json              # one H100/H200, ≤ 8 min (--budget-s)
    python tools/gpu_check.py --cpu --out /tmp/gpu_check.json        # the same code on a tiny shape, here

Sections (each records its own error and seconds; one that would start past ``--budget-s``
is recorded as skipped, so the JSON always comes back):

- ``output_stage``: output-layer matmul + log-probs + backward at V = 151,936 (the fused path
  and the chunked one; TE's where it imports): error against fp64, time, peak extra memory
  ÷ the bf16 logits bytes (goal ≤ 0.25). ``tools/bench/gpu_learner.py:output_stage_check``.
- ``attention``: packed (varlen) attention in bf16 against the masked reference and fp32
  (CUDA only). ``gpu_learner.attention_check``.
- ``learner``: the Megatron learner (NCCL, bf16, distributed optimizer) on the Qwen3-1.7B
  shape at each ``--tokens`` micro-batch with packed attention: ECHO step time, tokens/s,
  MFU (goal ≥ 40%), peak memory, ECHO ÷ GRPO step time on the same batch, alternating
  (goal ≤ 1.02); whether each fits (an OOM is a result, not a crash); then peak memory by
  recompute none / selective / full at ``--recompute-tokens``.
- ``reference``: the ECHO and GRPO losses of one micro-batch on the same weights (set from a
  CPU generator, so the devices start equal) in fp32 on the device and in a CPU subprocess
  (gloo) whose log-probs come from another implementation (Megatron's
  ``vocab_parallel_cross_entropy``): |Δ| ≤ ``--ref-tol`` relative.

Every section's goals are checked (``failures``): the run exits 1 naming each section that
errored, was skipped or missed its goal (``--cpu``: correctness goals only).

Paths that cannot run on the lent machine (no TE or vLLM CUDA wheels travel): Transformer
Engine's layers and its cross-entropy (``te`` rows say ImportError), NCCL weights to vLLM.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools" / "bench"))

import torch  # noqa: E402

PEAK_BF16 = {"H100": 989e12, "H200": 989e12}  # dense bf16 tensor-core peak (SXM)


def _learner(model: str, tokens: int, *, cpu: bool, dtype: str, attention: str, recompute: str,
             logprob_impl: str = "auto"):
    from pipeline.config import load_config
    from pipeline.learner.learner import Learner

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:  # one process, world size 1: any free port
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(sock.getsockname()[1])
    cfg = load_config(None, [f"model.hf_config={model}", f"model.dtype={dtype}", "optim.lr=1e-6",
                             f"learner.micro_batch_tokens={tokens}", f"learner.attention={attention}",
                             f"learner.recompute={recompute}", f"parallel.backend={'gloo' if cpu else 'nccl'}",
                             f"learner.logprob_impl={logprob_impl}"])  # fmt: skip
    return cfg, Learner(cfg.model, cfg.parallel, cfg.optim, cfg.learner, cfg.loss)


def _batch(cfg, learner, tokens: int, n: int = 32):
    from pipeline.advantages import group_advantages
    from pipeline.learner.smoke import synthetic_trajectories
    from pipeline.trajectory import pack_micro_batches

    trajs = synthetic_trajectories(n, vocab_size=learner.hf["vocab_size"], min_len=tokens // 4, max_len=tokens // 2, seed=0)
    return trajs, pack_micro_batches(trajs, group_advantages(trajs, cfg.advantages), tokens)[0]


def _set_weights(learner, seed: int = 0) -> None:
    """The same weights on any device: drawn from a CPU generator in name order."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(learner.model.named_parameters()):
            w = torch.ones(p.shape) if "norm" in name else torch.randn(p.shape, generator=g) * 0.02
            p.copy_(w.to(p.dtype))


def _losses(learner, mbs) -> dict:
    import dataclasses

    out = {}
    base = learner.loss_cfg
    for name, lc in (("echo", dataclasses.replace(base, mode="echo", env_coef=0.05)), ("grpo", dataclasses.replace(base, mode="grpo"))):
        _set_weights(learner)
        learner.loss_cfg = lc
        out[name] = float(learner.train_step(mbs, step=0)["loss"])  # the loss before the update
    learner.loss_cfg = base
    return out


def learner_section(model: str, tokens: int, repeats: int, *, cpu: bool, attention: str, recompute: str) -> dict:
    import dataclasses

    dev = "cpu" if cpu else "cuda"
    sync = (lambda: None) if cpu else torch.cuda.synchronize
    try:
        cfg, learner = _learner(model, tokens, cpu=cpu, dtype="float32" if cpu else "bfloat16", attention=attention,
                                recompute=recompute)  # fmt: skip
        trajs, mbs = _batch(cfg, learner, tokens)
        echo, grpo = dataclasses.replace(cfg.loss, mode="echo", env_coef=0.05), dataclasses.replace(cfg.loss, mode="grpo")
        times: dict[str, list[float]] = {"echo": [], "grpo": []}
        if not cpu:
            torch.cuda.reset_peak_memory_stats()
        for i in range(repeats + 1):
            for name, lc in (("grpo", grpo), ("echo", echo)) if i % 2 else (("echo", echo), ("grpo", grpo)):
                learner.loss_cfg = lc
                sync()
                m = learner.train_step(mbs, step=0)
                sync()
                if i:  # the first round warms up
                    times[name].append(m["step_time_s"])
    except torch.cuda.OutOfMemoryError as e:
        return {"micro_batch_tokens": tokens, "recompute": recompute, "fits": False, "error": f"OOM: {e}"[:300]}
    n_tok = sum(mb.num_tokens for mb in mbs)
    n_params = sum(p.numel() for p in learner.model.parameters())
    hf = learner.hf
    L, H, D = hf["num_hidden_layers"], hf["num_attention_heads"], hf["head_dim"]
    attn = sum(12 * L * H * D * (len(t) - 1) ** 2 / 2 for t in trajs)  # causal QK^T and AV, fwd+bwd
    step = statistics.median(times["echo"])
    name = "cpu" if cpu else torch.cuda.get_device_name()
    peak = None if cpu else next((v for k, v in PEAK_BF16.items() if k in name), 989e12)
    row = {"device": name, "micro_batch_tokens": tokens, "recompute": recompute, "fits": True, "params": n_params,
           "tokens_per_step": n_tok, "micro_batches": len(mbs), "echo_step_s": step,
           "grpo_step_s": statistics.median(times["grpo"]), "echo_over_grpo": step / statistics.median(times["grpo"]),
           "tokens_per_s": n_tok / step, "mfu": None if peak is None else (6 * n_params * n_tok + attn) / step / peak,
           "peak_mem_gib": None if cpu else torch.cuda.max_memory_allocated() / 2**30, "te_layers": learner.use_te,
           "attention": learner.attention, "logprob_impl": learner.logprob_impl, "loss": m["loss"]}  # fmt: skip
    del learner
    if dev == "cuda":
        torch.cuda.empty_cache()
    return row


def reference_losses(model: str, tokens: int, cpu: bool, logprob_impl: str = "auto") -> dict:
    cfg, learner = _learner(model, tokens, cpu=cpu, dtype="float32", attention="auto", recompute="none",
                            logprob_impl=logprob_impl)  # fmt: skip
    _, mbs = _batch(cfg, learner, tokens, n=8)
    return _losses(learner, mbs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="the same code on a tiny shape, on this CPU (gloo)")
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--budget-s", type=float, default=480.0, help="no section starts after this many seconds")
    ap.add_argument("--model", default=None, help="default: qwen3-1.7b (GPU) / qwen3-tiny (--cpu)")
    ap.add_argument("--tokens", default=None, help="micro-batch lengths (default 4096,16384,32768; --cpu: 256,512)")
    ap.add_argument("--recompute-tokens", type=int, default=None, help="where recompute modes are compared (16384; --cpu 256)")
    ap.add_argument("--repeats", type=int, default=None, help="ECHO/GRPO alternations per length (8; --cpu 2)")
    ap.add_argument("--ref-tol", type=float, default=1e-4, help="relative |Δ| of device vs CPU losses")
    ap.add_argument("--reference-only", action="store_true", help=argparse.SUPPRESS)  # the CPU subprocess
    a = ap.parse_args(argv)
    model = a.model or ("configs/models/qwen3-tiny.json" if a.cpu else "configs/models/qwen3-1.7b.json")
    ref_model, ref_tokens = "configs/models/qwen3-tiny.json", 256
    if a.reference_only:  # another implementation of the log-probs: Megatron's own cross-entropy
        Path(a.out).write_text(json.dumps(reference_losses(ref_model, ref_tokens, cpu=True, logprob_impl="megatron")))
        return 0
    tokens = [int(t) for t in (a.tokens or ("256,512" if a.cpu else "4096,16384,32768")).split(",")]
    rtok = a.recompute_tokens or (256 if a.cpu else 16384)
    repeats = a.repeats or (2 if a.cpu else 8)
    t_start = time.perf_counter()
    res: dict = {"cpu_mode": a.cpu, "model": model, "budget_s": a.budget_s, "sections": {}}

    def section(name, fn):
        t0 = time.perf_counter()
        if t0 - t_start > a.budget_s:
            res["sections"][name] = {"skipped": f"budget: {t0 - t_start:.0f} s spent of {a.budget_s:.0f}"}
        else:
            try:
                res["sections"][name] = {"result": fn()}
            except Exception as e:  # noqa: BLE001 - one section's failure is a result; the rest still run
                res["sections"][name] = {"error": f"{type(e).__name__}: {e}"[:500]}
            res["sections"][name]["seconds"] = round(time.perf_counter() - t0, 1)
        Path(a.out).write_text(json.dumps(res, indent=1))  # after every section: a killed run keeps what it had
        print(f"[gpu_check] {name}: {json.dumps(res['sections'][name])[:400]}", flush=True)

    from gpu_learner import attention_check, output_stage_check

    if a.cpu:
        section("output_stage", lambda: output_stage_check(["chunked", "fused"], V=2048, N=256, H=64, device="cpu"))
        res["sections"]["attention"] = {"skipped": "CUDA only (packed varlen attention on the GPU)"}
    else:
        section("output_stage", lambda: output_stage_check(["chunked", "fused", "te"]))
        section("attention", attention_check)
    for t in tokens:
        section(f"learner_{t}", lambda t=t: learner_section(model, t, repeats, cpu=a.cpu, attention="packed", recompute="none"))
    for rc in ("selective", "full"):
        section(f"recompute_{rc}_{rtok}", lambda rc=rc: learner_section(model, rtok, 1, cpu=a.cpu, attention="packed",
                                                                         recompute=rc))  # fmt: skip

    def reference():
        ref_json = Path(a.out).with_suffix(".cpu_ref.json")
        env = {k: v for k, v in os.environ.items() if k != "MASTER_PORT"}  # the subprocess picks its own
        env["CUDA_VISIBLE_DEVICES"] = ""
        proc = subprocess.run([sys.executable, __file__, "--reference-only", "--out", str(ref_json)], env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        if proc.returncode:
            raise RuntimeError(f"CPU reference failed: {proc.stderr[-1500:]}")
        cpu_ref = json.loads(ref_json.read_text())
        mine = reference_losses(ref_model, ref_tokens, cpu=a.cpu)  # in this process, on its device
        rel = {k: abs(mine[k] - cpu_ref[k]) / max(abs(cpu_ref[k]), 1e-12) for k in cpu_ref}
        return {"device": mine, "cpu": cpu_ref, "relative_delta": rel, "tolerance": a.ref_tol,
                "equal_within_tolerance": all(v <= a.ref_tol for v in rel.values())}  # fmt: skip

    section("reference", reference)
    res["seconds"] = round(time.perf_counter() - t_start, 1)
    res["failures"] = failures(res["sections"], cpu=a.cpu)
    res["ok"] = not res["failures"]
    Path(a.out).write_text(json.dumps(res, indent=1))
    for f in res["failures"]:
        print(f"[gpu_check] FAIL {f}", flush=True)
    print(f"[gpu_check] {'all goals met' if res['ok'] else str(len(res['failures'])) + ' failures'} "
          f"in {res['seconds']} s", flush=True)
    return 0 if res["ok"] else 1


# What each section must show. CPU mode checks correctness only (its timings are noise of a
# 2-core machine, and it has no MFU or device memory); the GPU adds the speed and memory goals.
GPU_GOALS = {"mfu_min": 0.40, "echo_over_grpo_max": 1.02, "extra_mem_x_bf16_logits_max": 0.25}


def failures(sections: dict, *, cpu: bool) -> list[str]:
    """Every section that errored, was skipped (not checked is not passed) or missed a goal,
    named with the value and the goal. Transformer Engine's rows and the CUDA-only attention
    in CPU mode are not failures: they cannot run there (the README says so)."""
    out = []
    for name, sec in sections.items():
        if "error" in sec:
            out.append(f"{name}: {sec['error'][:200]}")
            continue
        if "skipped" in sec:
            if not (cpu and name == "attention"):
                out.append(f"{name}: skipped ({sec['skipped']})")
            continue
        r = sec["result"]
        if name == "output_stage":
            tol = 1e-4 if cpu else 0.1
            for row in r:
                impl = row.get("stage_impl")
                if "error" in row:
                    if not (impl == "te" and "ImportError" in row["error"] or "Transformer Engine" in row["error"]):
                        out.append(f"output_stage/{impl}: {row['error'][:200]}")
                    continue
                for k in ("max_abs_err", "max_dhidden_err"):
                    if not row[k] <= tol:
                        out.append(f"output_stage/{impl}: {k} {row[k]:.3g} > {tol:g} (against fp64)")
                if not cpu and impl == "fused" and not row["extra_mem_x_bf16_logits"] <= GPU_GOALS["extra_mem_x_bf16_logits_max"]:
                    out.append(f"output_stage/fused: extra memory {row['extra_mem_x_bf16_logits']:.3f} × the bf16 logits "
                               f"> {GPU_GOALS['extra_mem_x_bf16_logits_max']}")  # fmt: skip
        elif name == "attention":
            for row in r:
                if not row["fp32_packed_vs_fp32_mask"] <= 1e-4:
                    out.append(f"attention {row['lengths']}: fp32 packed vs mask {row['fp32_packed_vs_fp32_mask']:.3g} > 1e-4")
                if not row["bf16_packed_vs_fp32_mask"] <= 2 * row["bf16_mask_vs_fp32_mask"] + 1e-3:
                    out.append(f"attention {row['lengths']}: bf16 packed error {row['bf16_packed_vs_fp32_mask']:.3g} over "
                               f"twice the masked bf16's {row['bf16_mask_vs_fp32_mask']:.3g}")  # fmt: skip
        elif name.startswith(("learner_", "recompute_")):
            if not r.get("fits"):
                out.append(f"{name}: does not fit ({r.get('error', '')[:150]})")
                continue
            if not (isinstance(r["loss"], float) and r["loss"] == r["loss"] and abs(r["loss"]) < float("inf")):
                out.append(f"{name}: loss {r['loss']} is not finite")
            if not cpu and name.startswith("learner_"):
                if not r["mfu"] >= GPU_GOALS["mfu_min"]:
                    out.append(f"{name}: MFU {r['mfu']:.3f} < {GPU_GOALS['mfu_min']}")
                if not r["echo_over_grpo"] <= GPU_GOALS["echo_over_grpo_max"]:
                    out.append(f"{name}: ECHO ÷ GRPO step time {r['echo_over_grpo']:.3f} > {GPU_GOALS['echo_over_grpo_max']}")
        elif name == "reference":
            if not r["equal_within_tolerance"]:
                out.append(f"reference: relative Δ {r['relative_delta']} > {r['tolerance']:g} (device vs Megatron's CE on CPU)")
    return out


if __name__ == "__main__":
    sys.exit(main())
