"""tools/gpu_check.py, the one script for a lent GPU, run here in its --cpu mode: the same
sections on a tiny shape, one JSON that always comes back (a section that fails or would
start past the budget says so instead)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(out: Path, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "tools/gpu_check.py", "--cpu", "--out", str(out), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_gpu_check_cpu_mode_runs_every_section_and_writes_one_json(tmp_path):
    res = _run(tmp_path / "check.json")
    sec = res["sections"]
    assert res["cpu_mode"] and set(sec) == {"output_stage", "attention", "learner_256", "learner_512",
                                            "recompute_selective_256", "recompute_full_256", "reference"}
    assert "CUDA only" in sec["attention"]["skipped"]
    stage = {r["stage_impl"]: r for r in sec["output_stage"]["result"]}
    assert set(stage) == {"chunked", "fused"} and all(r["max_abs_err"] < 1e-4 and r["max_dhidden_err"] < 1e-4 for r in stage.values())
    for name in ("learner_256", "learner_512", "recompute_selective_256", "recompute_full_256"):
        row = sec[name]["result"]
        assert row["fits"] and row["device"] == "cpu" and row["mfu"] is None and row["tokens_per_step"] > 0, row
        assert 0.2 < row["echo_over_grpo"] < 5 and math.isfinite(row["loss"]), row
    assert [sec[n]["result"]["recompute"] for n in ("learner_256", "recompute_selective_256", "recompute_full_256")] == ["none", "selective", "full"]
    ref = sec["reference"]["result"]
    assert set(ref["cpu"]) == {"echo", "grpo"} and ref["equal_within_tolerance"], ref
    assert ref["cpu"]["echo"] != ref["cpu"]["grpo"]  # the two losses differ: the comparison is not of one number


@pytest.mark.slow
def test_gpu_check_past_its_budget_skips_sections_and_still_writes_the_json(tmp_path):
    res = _run(tmp_path / "check.json", "--budget-s", "0")
    assert all("budget" in v["skipped"] for k, v in res["sections"].items() if k != "attention"), res
