"""The sandbox fleet's cost: episodes/min through one Docker API host directly, through a
fleet of that one host, and through a fleet of two hosts on this same machine; and the
container start an episode waits for.

    python tools/bench/sandbox_fleet.py [--episodes 24] [--concurrency 4] [--commands 3] [--rounds 2]

An episode here is the sandbox part of one: start a container on the base image, run
``--commands`` shell commands, close it. Arms alternate (direct, fleet-1, fleet-2, ...) for
``--rounds`` rounds; the medians are printed with two ratios: fleet of 1 ÷ direct (the
placement layer's overhead; goal ≤ 1.05 in time) and fleet of 2 ÷ fleet of 1 in
episodes/min (the speed-up; on one 2-core machine both hosts share the same CPUs, so it
measures that spreading costs nothing, not that it helps). Hosts are Podman services made
by ``tools/podman_host.sh`` (bench-a, bench-b).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def _host(name: str) -> str:
    return subprocess.run(["bash", str(ROOT / "tools/podman_host.sh"), name], check=True, capture_output=True,
                          text=True).stdout.strip()  # fmt: skip


def _episode(backend, commands: int) -> float:
    t0 = time.perf_counter()
    box = backend.start(episode="bench")
    try:
        box.exec("true")
        started = time.perf_counter() - t0
        for k in range(commands - 1):
            box.exec(f"echo {k} > /tmp/f{k} && cat /tmp/f{k}")
    finally:
        box.close()
    return started


def _arm(backend, episodes: int, concurrency: int, commands: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        starts = list(pool.map(lambda _: _episode(backend, commands), range(episodes)))
    return episodes / (time.perf_counter() - t0) * 60, statistics.median(starts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--episodes", type=int, default=24)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--commands", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()

    from pipeline.sandbox.base import SandboxConfig
    from pipeline.sandbox.docker import DockerBackend
    from pipeline.sandbox.fleet import SandboxFleet

    url_a, url_b = _host("bench-a"), _host("bench-b")
    cfg = SandboxConfig(backend="docker", timeout_s=30)
    arms = {
        "direct": DockerBackend(cfg, base_url=url_a),
        "fleet-1": SandboxFleet(SandboxConfig(backend="docker", timeout_s=30,
                                              hosts=[{"url": url_a, "max_concurrent": a.concurrency}])),
        "fleet-2": SandboxFleet(SandboxConfig(backend="docker", timeout_s=30,
                                              hosts=[{"url": url_a, "max_concurrent": a.concurrency},
                                                     {"url": url_b, "max_concurrent": a.concurrency}])),
    }  # fmt: skip
    _arm(arms["direct"], a.concurrency, a.concurrency, 1)  # warm the store's caches
    rates: dict[str, list[float]] = {k: [] for k in arms}
    starts: dict[str, list[float]] = {k: [] for k in arms}
    for _ in range(a.rounds):
        for name, backend in arms.items():
            r, s = _arm(backend, a.episodes, a.concurrency, a.commands)
            rates[name].append(r)
            starts[name].append(s)
    med = {k: statistics.median(v) for k, v in rates.items()}
    out = {
        "episodes": a.episodes, "concurrency": a.concurrency, "commands": a.commands, "rounds": a.rounds,
        "episodes_per_min": {k: round(v, 1) for k, v in med.items()},
        "container_start_s": {k: round(statistics.median(v), 3) for k, v in starts.items()},
        "fleet1_time_over_direct": round(med["direct"] / med["fleet-1"], 3),
        "fleet2_rate_over_fleet1": round(med["fleet-2"] / med["fleet-1"], 3),
    }  # fmt: skip
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
