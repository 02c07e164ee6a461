"""What the verifier's isolation costs per episode, printed, not asserted.

    python tools/bench/verifier_isolation.py [--n 10] [--backends bwrap,docker]

One episode here = start the task's sandbox, run its reference solution as the agent,
verify, close. ``same`` verifies in the agent's sandbox (Harbor's semantics), ``fresh``
in a new sandbox of the task's image with only the work tree copied in. Alternating, same
process; prints the medians and their ratio fresh / same.
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
    args = ap.parse_args()
    from pipeline.sandbox import SandboxConfig, make_backend
    from pipeline.tasks import load_task, verify
    from pipeline.tasks.generator import generate

    out = Path(tempfile.mkdtemp(prefix="echo-rl-bench-"))
    out.chmod(0o755)
    tasks = [load_task(d) for d in generate(["text_replace", "git_commit"], 1, out, seed=0)]
    for name in args.backends.split(","):
        backends = {iso: make_backend(SandboxConfig(backend=name, verifier_isolation=iso)) for iso in ("same", "fresh")}
        times = {"same": [], "fresh": []}
        for i in range(args.n):
            for iso, backend in backends.items():
                task = tasks[i % len(tasks)]
                t0 = time.perf_counter()
                with backend.start(task=task) as box:
                    box.exec(task.solution)
                    verdict = verify(task, box, backend, backend.cfg)
                times[iso].append(time.perf_counter() - t0)
                assert verdict.reward == 1.0, (iso, task.task_id, verdict)
        same, fresh = statistics.median(times["same"]), statistics.median(times["fresh"])
        print(f"{name}: episode (start, solution, verify, close) same {same * 1e3:.0f} ms, fresh {fresh * 1e3:.0f} ms, "
              f"fresh/same {fresh / same:.2f} (median of {args.n})")  # fmt: skip


if __name__ == "__main__":
    main()
