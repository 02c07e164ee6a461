"""Sandbox latency and throughput, printed, not asserted.

    python tools/bench/sandbox_exec.py [--n 200] [--seconds 5] [--backends bwrap,docker]

- latency: our ``exec("true")`` (limits, capture, cleanup, notices) vs the raw engine
  call — ``subprocess.run`` of the same ``bwrap ... true`` argv, or the docker SDK's
  ``exec_run(["true"])`` in the same container — same process, alternating; ratio of
  medians (goal ≤ 1.1). Also episode start + close.
- throughput: commands/s with 1, 4 and 16 episodes in flight (one thread each).
- docker: building a task image on every batch vs our per-environment-hash cache.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--backends", default="bwrap,docker")
    args = ap.parse_args()
    for name in args.backends.split(","):
        bench(name, args)


def bench(name: str, args) -> None:
    from pipeline.sandbox import SandboxConfig, make_backend

    backend = make_backend(SandboxConfig(backend=name))
    print(f"== {name}" + (f" (containment: {backend.containment})" if name == "bwrap" else ""))
    with backend.start() as sb:
        if name == "bwrap":
            argv = sb._argv("true")
            raw_call = lambda: subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=True)  # noqa: E731
        else:
            raw_call = lambda: sb.container.exec_run(["true"])  # noqa: E731
        ours, raw = [], []
        for i in range(args.n):
            for which in (("ours", "raw") if i % 2 else ("raw", "ours")):
                t = time.perf_counter()
                sb.exec("true") if which == "ours" else raw_call()
                (ours if which == "ours" else raw).append(time.perf_counter() - t)
        o, r = statistics.median(ours), statistics.median(raw)
        print(f"exec latency (median of {args.n}): ours {o * 1e3:.1f} ms, raw {r * 1e3:.1f} ms, ratio {o / r:.3f}")
    t = time.perf_counter()
    with backend.start():
        pass
    print(f"episode start + close: {(time.perf_counter() - t) * 1e3:.1f} ms")
    if name == "docker":
        import tempfile

        from pipeline.tasks.generator import generate

        with tempfile.TemporaryDirectory() as tmp:
            (task_dir,) = generate(["csv_sum"], 1, tmp)
            env = task_dir / "environment"
            t = time.perf_counter()
            backend.client.images.build(path=str(env), tag="echo-rl-bench:rebuild", nocache=True, rm=True)
            rebuild = time.perf_counter() - t
            backend.task_image(task_dir)  # first use builds and caches
            t = time.perf_counter()
            for _ in range(10):
                backend.task_image(task_dir)
            cached = (time.perf_counter() - t) / 10
            print(f"task image per batch: rebuild {rebuild * 1e3:.0f} ms vs cache {cached * 1e3:.1f} ms "
                  f"(ratio {rebuild / cached:.0f}x)")  # fmt: skip
    for k in (1, 4, 16):
        counts = [0] * k
        ready = threading.Barrier(k + 1)
        stop = [0.0]

        def worker(j):
            with backend.start() as box:  # episode start is not part of the window
                ready.wait()
                ready.wait()
                while time.monotonic() < stop[0]:
                    box.exec("echo x")
                    counts[j] += 1

        threads = [threading.Thread(target=worker, args=(j,)) for j in range(k)]
        for th in threads:
            th.start()
        ready.wait()
        stop[0] = time.monotonic() + args.seconds
        ready.wait()
        for th in threads:
            th.join()
        print(f"{k:2d} episodes in flight: {sum(counts) / args.seconds:.0f} commands/s")


if __name__ == "__main__":
    main()
