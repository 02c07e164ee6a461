"""Offline-ready task images (``echo-rl tasks prepare``, pipeline/tasks/prepare.py): a
Terminal-Bench-2-shaped task whose test.sh installs pytest with uv at verification time
fails offline, named as needing the network; prepared from a local wheelhouse it passes
offline with the same verifier; and what the agent leaves on the verifier's PATH does not
stand in for the baked-in tools."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests/fixtures/offline/tb2-uv-pytest"


def _echo_rl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "echo-rl"), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=900, env=dict(os.environ, PYTHONWARNINGS="ignore"))  # fmt: skip


@pytest.mark.slow
def test_a_tb2_task_that_installs_pytest_with_uv_passes_offline_only_once_prepared(tmp_path):
    from pipeline.sandbox import SandboxConfig, SandboxError
    from pipeline.sandbox.docker import DockerBackend

    try:
        DockerBackend(SandboxConfig(backend="docker"))
    except SandboxError as e:
        pytest.skip(f"docker backend unavailable: {e}")
    wheels = tmp_path / "wheels"
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "-d", str(wheels),
                        "uv", "pytest==8.4.2"], capture_output=True, text=True, timeout=300)  # fmt: skip
    if r.returncode != 0:
        pytest.skip(f"no package index reachable to make the wheelhouse: {r.stderr[-300:]}")
    task = tmp_path / "tasks" / "tb2-uv-pytest"
    shutil.copytree(FIXTURE, task)
    (task / "environment" / "nonce").write_text(uuid.uuid4().hex)  # a task image no earlier run prepared
    offline = ["--backend", "docker", "sandbox.verifier_network=none"]

    r = _echo_rl("tasks", "check", str(task), *offline, "--json", str(tmp_path / "before.json"))
    row = json.loads((tmp_path / "before.json").read_text())["tasks"][0]
    assert r.returncode == 1 and row["status"] == "fail", r.stdout[-3000:]
    assert "NetworkNeeded" in row["cause"] and "verifier needs the network" in row["cause"], row

    r = _echo_rl("tasks", "prepare", str(task), "--wheelhouse", str(wheels), "--json", str(tmp_path / "prep.json"))
    prep = json.loads((tmp_path / "prep.json").read_text())["tasks"][0]
    assert r.returncode == 0 and prep["status"] == "pass", r.stdout[-3000:] + r.stderr[-2000:]
    assert prep["image"].endswith("-prep") and (prep["oracle"], prep["noop"]) == (1.0, 0.0)

    r = _echo_rl("tasks", "check", str(task), *offline, "--json", str(tmp_path / "after.json"))
    row = json.loads((tmp_path / "after.json").read_text())["tasks"][0]
    assert r.returncode == 0 and row["status"] == "pass", r.stdout[-3000:]
    assert "2 passed" in row["verifier_tail"]  # uvx ran pytest from the baked-in wheels

    # a root agent's stand-ins where test.sh looks first (~/.local/bin) do not reach the verifier
    from pipeline.tasks.check import _episode
    from pipeline.tasks.formats import load_task

    cfg = SandboxConfig(backend="docker", verifier_network="none")
    backend, t = DockerBackend(cfg), load_task(task)
    fake = ("mkdir -p /root/.local/bin && for b in uvx uv python3 pytest; do printf '#!/bin/sh\\nexit 0\\n' "
            "> /root/.local/bin/$b; chmod +x /root/.local/bin/$b; done")  # fmt: skip
    assert _episode(t, backend, cfg, fake).reward == 0.0
    assert _episode(t, backend, cfg, t.solution_command, oracle=True).reward == 1.0  # the same path, honest


@pytest.mark.slow
def test_compose_depends_on_healthy_starts_the_agent_once_the_service_answers(tmp_path):
    """A compose task whose service takes 5 s to listen and whose reference solution asks it
    once, at once: with ``depends_on: {api: {condition: service_healthy}}`` and a healthcheck
    it passes (the agent starts after the service answers); the same task with a
    healthcheck that never passes is an infrastructure failure naming the service and
    carrying its log, never the agent's 0."""
    import yaml

    from pipeline.sandbox import SandboxConfig, SandboxError
    from pipeline.sandbox.docker import DockerBackend
    from pipeline.tasks.check import check_task

    try:
        backend = DockerBackend(SandboxConfig(backend="docker"))
    except SandboxError as e:
        pytest.skip(f"docker backend unavailable: {e}")
    task = tmp_path / "compose-healthy"
    shutil.copytree(ROOT / "tests/fixtures/tasks/harbor-compose-service", task)
    (task / "solution" / "solve.sh").write_text(  # one try, no retry loop: the service must be up already
        "#!/bin/bash\npython3 -c \"import urllib.request; print(urllib.request.urlopen('http://api:8000/token', "
        "timeout=2).read().decode().strip())\" > /app/token.txt\n")  # fmt: skip
    compose = task / "environment" / "docker-compose.yaml"
    doc = yaml.safe_load(compose.read_text())
    doc["services"]["api"]["command"] = ["sh", "-c", "echo api starting; sleep 5; exec python3 /srv/server.py"]
    doc["services"]["api"]["healthcheck"] = {
        "test": ["CMD", "python3", "-c", "import urllib.request; urllib.request.urlopen('http://localhost:8000/token', timeout=1)"],
        "interval": "1s", "timeout": "2s", "retries": 20}  # fmt: skip
    compose.write_text(yaml.safe_dump(doc))
    row = check_task(task, backend, backend.cfg)  # no depends_on: the agent starts before the service answers
    assert row["oracle"] == 0.0, row
    doc["services"]["main"]["depends_on"] = {"api": {"condition": "service_healthy"}}
    compose.write_text(yaml.safe_dump(doc))
    row = check_task(task, backend, backend.cfg)
    assert row["status"] == "pass" and (row["oracle"], row["noop"]) == (1.0, 0.0), row

    doc["services"]["api"]["healthcheck"]["test"] = ["CMD", "false"]
    doc["services"]["api"]["healthcheck"]["retries"] = 2
    compose.write_text(yaml.safe_dump(doc))
    row = check_task(task, backend, backend.cfg)
    assert row["status"] == "fail" and "service api never became healthy" in row["cause"], row
    assert "api starting" in row["cause"]  # its log, for whoever reads why

    import time  # a check that never returns is given up after its timeout: no stuck start

    doc["services"]["api"]["healthcheck"].update(test=["CMD", "sleep", "1000"], timeout="1s", interval="1s", retries=2)
    compose.write_text(yaml.safe_dump(doc))
    t0 = time.monotonic()
    row = check_task(task, backend, backend.cfg)
    assert row["status"] == "fail" and "service api never became healthy" in row["cause"], row
    assert time.monotonic() - t0 < 60
