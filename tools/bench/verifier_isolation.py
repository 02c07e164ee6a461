"""What the verifier's isolation costs per episode, printed, not asserted.

    python tools/bench/verifier_isolation.py [--n 10] [--backends bwrap,docker]

One episode here = start the task's sandbox, run its reference solution as the agent,
verify, close. ``same`` verifies in the agent's sandbox (Harbor's semantics), ``separate``
(the default) in a new container of the task's image in the agent's network namespace with
the agent's changed files copied in (bwrap: the agent's own sandbox, swept), ``fresh`` in
a new sandbox with only the work tree copied in. Alternating, same process; prints the
medians and their ratios to ``same``.

``--cost`` instead: what the agent can make its own verification cost. An honest solution
plus N empty files left in the work dir, N = 0 (clean), ``sandbox.copy_entries`` (at the
cap: the most that crosses) and 3 × the cap (refused, the agent's failure); prints the
verify time of each and its excess over the clean one (the bound: 30 s on docker).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--backends", default="bwrap,docker")
    ap.add_argument("--cost", action="store_true", help="verification cost of a tree at and over the entry cap")
    args = ap.parse_args()
    if args.cost:
        return cost(args.backends.split(","))
    from pipeline.sandbox import SandboxConfig, make_backend
    from pipeline.tasks import load_task, verify
    from pipeline.tasks.generator import generate

    out = Path(tempfile.mkdtemp(prefix="echo-rl-bench-"))
    out.chmod(0o755)
    tasks = [load_task(d) for d in generate(["text_replace", "git_commit"], 1, out, seed=0)]
    for name in args.backends.split(","):
        isolations = ("same", "separate", "fresh")
        backends = {iso: make_backend(SandboxConfig(backend=name, verifier_isolation=iso)) for iso in isolations}
        times = {iso: [] for iso in isolations}
        for i in range(args.n):
            for iso, backend in backends.items():
                task = tasks[i % len(tasks)]
                t0 = time.perf_counter()
                with backend.start(task=task) as box:
                    box.exec(task.solution)
                    verdict = verify(task, box, backend, backend.cfg)
                times[iso].append(time.perf_counter() - t0)
                assert verdict.reward == 1.0, (iso, task.task_id, verdict)
        med = {iso: statistics.median(t) for iso, t in times.items()}
        print(f"{name}: episode (start, solution, verify, close), median of {args.n}: "
              + ", ".join(f"{iso} {med[iso] * 1e3:.0f} ms ({med[iso] / med['same']:.2f}x)" for iso in isolations))


def cost(names: list[str]) -> None:
    from pipeline.sandbox import SandboxConfig, make_backend
    from pipeline.tasks import load_task, verify
    from pipeline.tasks.generator import generate

    out = Path(tempfile.mkdtemp(prefix="echo-rl-bench-"))
    out.chmod(0o755)
    (task,) = [load_task(d) for d in generate(["text_replace"], 1, out, seed=0)]
    for name in names:
        backend = make_backend(SandboxConfig(backend=name))
        cap = backend.cfg.copy_entries
        clean = None
        for n in (0, cap - 1000, 3 * cap):  # (the work dir holds a few entries of its own)
            with backend.start(task=task) as box:
                box.exec(task.solution)
                if n:
                    box.exec(f"mkdir -p /app/junk && cd /app/junk && python3 -c 'for i in range({n}): "
                             "open(str(i), \"w\").close()'", timeout_s=600)  # fmt: skip
                t0 = time.perf_counter()
                verdict = verify(task, box, backend, backend.cfg)
                dt = time.perf_counter() - t0
            clean = dt if clean is None else clean
            print(f"{name}: {n:>7} empty files left: verify {dt:6.1f} s (+{dt - clean:5.1f} s over clean), "
                  f"reward {verdict.reward:g}{' ' + verdict.failure if verdict.failure else ''}", flush=True)


if __name__ == "__main__":
    main()
