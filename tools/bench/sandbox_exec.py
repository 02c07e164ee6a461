"""Sandbox exec latency and throughput (bubblewrap backend), printed, not asserted.

    python tools/bench/sandbox_exec.py [--n 200] [--seconds 5]

- latency: our ``BwrapSandbox.exec("true")`` (cgroup attach, limits, capture, notices)
  vs the raw engine call (``subprocess.run`` of the same ``bwrap ... true`` argv), same
  process, alternating; ratio of medians (goal ≤ 1.1).
- throughput: commands/s with 1, 4 and 16 episodes in flight (one thread each).
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
    args = ap.parse_args()

    from pipeline.sandbox import SandboxConfig
    from pipeline.sandbox.bwrap import BwrapBackend

    backend = BwrapBackend(SandboxConfig())
    print(f"containment: {backend.containment}")
    with backend.start() as sb:
        argv = sb._argv("true")
        ours, raw = [], []
        for i in range(args.n):
            for name in (("ours", "raw") if i % 2 else ("raw", "ours")):
                t = time.perf_counter()
                if name == "ours":
                    sb.exec("true")
                    ours.append(time.perf_counter() - t)
                else:
                    subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=True)
                    raw.append(time.perf_counter() - t)
        o, r = statistics.median(ours), statistics.median(raw)
        print(f"exec latency (median of {args.n}): ours {o * 1e3:.1f} ms, raw bwrap {r * 1e3:.1f} ms, ratio {o / r:.3f}")
    t = time.perf_counter()
    with backend.start():
        pass
    print(f"episode start + close: {(time.perf_counter() - t) * 1e3:.1f} ms")
    for k in (1, 4, 16):
        counts = [0] * k
        stop = time.monotonic() + args.seconds

        def worker(j):
            with backend.start() as box:
                while time.monotonic() < stop:
                    box.exec("echo x")
                    counts[j] += 1

        threads = [threading.Thread(target=worker, args=(j,)) for j in range(k)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        print(f"{k:2d} episodes in flight: {sum(counts) / args.seconds:.0f} commands/s")


if __name__ == "__main__":
    main()
