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


def _run(out: Path, *args: str, code: int = 0) -> dict:
    proc = subprocess.run([sys.executable, "tools/gpu_check.py", "--cpu", "--out", str(out), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == code, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["ok"] == (code == 0) and all(f"[gpu_check] FAIL {f}" in proc.stdout for f in res["failures"])
    return res


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
        assert math.isfinite(row["loss"]) and row["echo_over_grpo"] > 0, row
    assert [sec[n]["result"]["recompute"] for n in ("learner_256", "recompute_selective_256", "recompute_full_256")] == ["none", "selective", "full"]
    ref = sec["reference"]["result"]
    assert set(ref["cpu"]) == {"echo", "grpo"} and ref["equal_within_tolerance"], ref
    assert ref["cpu"]["echo"] != ref["cpu"]["grpo"]  # the two losses differ: the comparison is not of one number
    assert res["failures"] == []


@pytest.mark.slow
def test_gpu_check_past_its_budget_skips_sections_and_still_writes_the_json(tmp_path):
    """Skipped is not passed: the run exits 1 and names every section it did not check."""
    res = _run(tmp_path / "check.json", "--budget-s", "0", code=1)
    assert all("budget" in v["skipped"] for k, v in res["sections"].items() if k != "attention"), res
    assert len(res["failures"]) == len(res["sections"]) - 1


def test_gpu_check_goals_fail_on_a_missed_goal():
    """The goal checker itself, on results that miss each kind of goal (and on ones that meet them)."""
    sys.path.insert(0, str(ROOT / "tools"))
    from gpu_check import failures

    good = {"output_stage": {"result": [{"stage_impl": "fused", "max_abs_err": 1e-6, "max_dhidden_err": 1e-6,
                                         "extra_mem_x_bf16_logits": 0.1},
                                        {"stage_impl": "te", "error": "ImportError: no transformer_engine"}]},
            "learner_4096": {"result": {"fits": True, "loss": 1.0, "mfu": 0.45, "echo_over_grpo": 1.01}},
            "reference": {"result": {"equal_within_tolerance": True, "relative_delta": {}, "tolerance": 1e-4}}}  # fmt: skip
    assert failures(good, cpu=False) == []
    bad = json.loads(json.dumps(good))
    bad["output_stage"]["result"][0]["extra_mem_x_bf16_logits"] = 0.5
    bad["learner_4096"]["result"].update(mfu=0.3, echo_over_grpo=1.2)
    bad["reference"]["result"]["equal_within_tolerance"] = False
    bad["attention"] = {"error": "RuntimeError: boom"}
    got = failures(bad, cpu=False)
    assert len(got) == 5 and any("MFU" in f for f in got) and any("extra memory" in f for f in got), got
    assert failures(bad, cpu=True) == [f for f in got if "MFU" not in f and "ECHO" not in f and "extra memory" not in f]
