"""`echo-rl tasks check` says why a task failed, and a service task whose solution needs
root passes in the training profile (the verifier in its own container, in the agent's
network namespace)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests/fixtures/tasks/harbor-root-service"


def check(*args, tmp_path):
    out = tmp_path / "check.json"
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "tasks", "check", str(FIXTURE), "--backend", "docker",
                        "--json", str(out), *args], capture_output=True, text=True, cwd=ROOT, timeout=600)  # fmt: skip
    if "no Docker Engine API" in r.stderr:
        pytest.skip(r.stderr.strip())
    return r, json.loads(out.read_text())["tasks"][0]


def test_a_root_service_task_passes_in_the_training_profile(tmp_path):
    r, row = check(tmp_path=tmp_path)
    assert r.returncode == 0 and row["status"] == "pass", r.stdout[-2000:]
    assert "GET /health -> ready" in row["verifier_tail"]  # the verifier reached the agent's service


def test_a_failing_check_says_why_and_which_setting_passes(tmp_path):
    r, row = check("sandbox.agent_user=unprivileged", tmp_path=tmp_path)
    assert r.returncode == 1 and row["status"] == "fail"
    assert "Permission denied" in row["oracle_tail"] and row["reward_file"].strip() == "0"
    assert "Connection refused" in row["verifier_tail"]  # nothing listened: the service never started
    assert row["hint"].startswith("it passes with sandbox.agent_user=root")
    why = [line for line in r.stdout.splitlines() if line.strip().startswith("why:")]
    assert len(why) == 1 and "hint: it passes with sandbox.agent_user=root" in why[0] and "Permission denied" in why[0]
