"""Asynchronous ÷ synchronous training: the same steps of the tiny recipe with a vLLM CPU
server as a separate process (``engine.backend=vllm_server``), ``rollout.max_staleness``
1 vs 0, one server for all arms; and the learner's idle fraction in each.

    python tools/bench/async_rollouts.py [--steps 6] [--layouts shared,pinned] [--out FILE]

Layouts (what each measures):
- ``shared``: server and learner on every core of the machine. On a 2-core laptop the two
  sides compete for the same CPUs, so overlapping them gains little: this measures the
  scheduling overhead of the asynchronous loop more than its benefit.
- ``pinned``: the server under ``taskset -c 1`` (and vLLM's OpenMP threads bound there),
  the learner (and the sandboxes it starts) under ``taskset -c 0`` with one thread: the
  engine works off the learner's CPU budget, as rollout GPUs do on a cluster. This is the
  overlap the issue asks about.

Figures: step time = the sum of ``time/step_s`` over steps 1 … N-2 from the run's MLflow
(step 0 has no batch ahead of it; the last step runs the final evaluation); idle fraction
= Σ ``time/learner_wait_s`` ÷ Σ ``time/step_s`` over the same steps. A policy at random
initialization samples to ``max_tokens_per_turn`` every turn, so rollouts are pure decoding.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

RUN = ["model.load=''", "model.warmstart_steps=0", "eval.probe=false", "eval.every=0", "eval.samples=1", "eval.k=[1]",
       "tasks.eval_per_family=1", "tasks.families=[text_count,files_mkdir]", "rollout.tasks_per_step=2",
       "rollout.group_size=4", "rollout.max_turns=3", "rollout.max_tokens_per_turn=64", "rollout.max_context_tokens=768",
       "engine.request_timeout_s=300"]  # fmt: skip


def start_server(model_dir: Path, port: int, pin: str | None) -> subprocess.Popen:
    env = dict(os.environ, VLLM_SERVER_DEV_MODE="1")
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir), "--dtype", "float32",
           "--enforce-eager", "--kv-cache-memory-bytes", str(512 << 20), "--max-model-len", "768", "--port", str(port),
           "--worker-extension-cls", "pipeline.engines.vllm.WeightLoader"]  # fmt: skip
    if pin is not None:
        cmd = ["taskset", "-c", pin, *cmd]
        env["VLLM_CPU_OMP_THREADS_BIND"] = pin
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def wait_up(url: str, server: subprocess.Popen, timeout_s: float = 600) -> None:
    import requests

    deadline = time.time() + timeout_s
    while True:
        if server.poll() is not None or time.time() > deadline:
            raise SystemExit(f"vLLM server {url} did not come up")
        try:
            if requests.get(f"{url}/v1/models", timeout=2).ok:
                return
        except requests.RequestException:
            time.sleep(2)


def run_arm(run_dir: Path, url: str, k: int, steps: int, pin: str | None) -> dict:
    from pipeline.tracking import read_metric_history

    cmd = [str(Path(sys.executable).parent / "echo-rl"), "train", "configs/tiny.yaml", f"run.output_dir={run_dir}",
           f"run.steps={steps}", f"rollout.max_staleness={k}", "engine.backend=vllm_server",
           f'engine.server_urls=["{url}"]', *RUN]  # fmt: skip
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1" if pin else "2")
    if pin is not None:
        cmd = ["taskset", "-c", pin, *cmd]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"arm k={k} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    hist = lambda key: dict(read_metric_history(f"sqlite:///{run_dir / 'mlflow.db'}", run_id, key))  # noqa: E731
    step_s, wait_s = hist("time/step_s"), hist("time/learner_wait_s")
    eng_wait, ages = hist("time/engine_wait_s"), hist("rollout/staleness_mean")
    window = range(1, steps - 1)
    total = sum(step_s[s] for s in window)
    return {"max_staleness": k, "steps_timed": len(window), "step_s_sum": total, "process_wall_s": wall,
            "learner_idle_frac": sum(wait_s[s] for s in window) / total,
            "engine_wait_s_sum": sum(eng_wait[s] for s in window),
            "staleness_mean": sum(ages[s] for s in window) / len(window),
            "learner_s_sum": sum(hist("time/learner_s")[s] for s in window)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--layouts", default="shared,pinned")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from tests.helpers.dist import free_port

    tmp = Path(tempfile.mkdtemp(prefix="bench-async-"))
    model = tmp / "m"
    Qwen3ForCausalLM(Qwen3Config(**json.loads((ROOT / "configs/models/qwen3-tiny.json").read_text()))).save_pretrained(model)
    for f in (ROOT / "configs/tokenizer/tiny").iterdir():
        shutil.copy(f, model / f.name)
    results = {"cpus": os.cpu_count(), "steps": a.steps, "layouts": {}}
    try:
        for layout in a.layouts.split(","):
            srv_pin, learner_pin = ("1", "0") if layout == "pinned" else (None, None)
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            server = start_server(model, port, srv_pin)
            try:
                wait_up(url, server)
                arms = {}
                for k in (0, 1):
                    arms[k] = run_arm(tmp / f"{layout}-k{k}", url, k, a.steps, learner_pin)
                    print(f"{layout} k={k}: {json.dumps(arms[k])}", flush=True)
            finally:
                os.killpg(server.pid, signal.SIGTERM)
                server.wait(timeout=60)
            results["layouts"][layout] = {
                "arms": arms, "async_over_sync_step_time": arms[1]["step_s_sum"] / arms[0]["step_s_sum"],
            }  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n| layout | step time k=0 (s) | k=1 (s) | async ÷ sync | learner idle k=0 | k=1 | staleness k=1 |")
    print("|---|---|---|---|---|---|---|")
    for layout, r in results["layouts"].items():
        a0, a1 = r["arms"][0], r["arms"][1]
        print(f"| {layout} | {a0['step_s_sum']:.1f} | {a1['step_s_sum']:.1f} | {r['async_over_sync_step_time']:.2f} | "
              f"{a0['learner_idle_frac']:.0%} | {a1['learner_idle_frac']:.0%} | {a1['staleness_mean']:.2f} |")  # fmt: skip
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
