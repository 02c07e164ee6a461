"""Network by phase (docker backend, Podman): the agent phase is offline unless
``sandbox.agent_network=task``; the verifier phase has what the task declares
(``sandbox.verifier_network=task``); an offline verifier that needs the network is an
infrastructure error naming the cause, never reward 0, and the agent cannot buy that
verdict by printing network errors. Compose services run beside the agent's container.

The "internet" here is an HTTP server on the host, reached through the public network's
gateway: it records every request, so "the agent reached it" is observed, not inferred.
"""

from __future__ import annotations

import json
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipeline.sandbox import SandboxConfig, SandboxError
from pipeline.tasks import load_task, verify
from pipeline.tasks.verifier import NetworkNeeded

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "tasks"


def _docker(**kw):
    from pipeline.sandbox.docker import DockerBackend

    try:
        return DockerBackend(SandboxConfig(backend="docker", timeout_s=20, **kw))
    except SandboxError as e:
        pytest.skip(f"docker backend unavailable: {e}")


@pytest.fixture(scope="module")
def server():
    """(url, hits): url is reachable only from a container on the public network."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            body = b"42\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("0.0.0.0", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    b = _docker()
    gateway = b.client.networks.get("bridge").attrs["IPAM"]["Config"][0]["Gateway"]
    yield f"http://{gateway}:{srv.server_address[1]}", hits
    srv.shutdown()


FETCH = "python3 -c \"import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())\""


def _task(tmp_path: Path, monkeypatch, url: str, test_sh: str, *, allow_internet: bool = True):
    d = tmp_path / "net-task"
    (d / "tests").mkdir(parents=True)
    (d / "environment").mkdir()
    (d / "instruction.md").write_text("Write the number the service answers to /app/answer.txt\n")
    (d / "task.toml").write_text(textwrap.dedent(f"""\
        [verifier]
        timeout_sec = 60
        env = {{ URL = "${{ECHO_TEST_URL}}" }}
        [environment]
        allow_internet = {str(allow_internet).lower()}
        """))
    (d / "tests" / "test.sh").write_text(test_sh)
    monkeypatch.setenv("ECHO_TEST_URL", url)  # [verifier] env is resolved on the host, at load
    return load_task(d)


# Fetches the answer from the "internet" and compares: an install step's stand-in.
VERIFIER_FETCHES = """#!/bin/bash
want=$(python3 -c "import os, urllib.request; print(urllib.request.urlopen(os.environ['URL'] + '/verifier', timeout=5).read().decode().strip())" 2>&1) \
  || { echo "fetch failed: $want"; exit 1; }
[ "$(cat /app/answer.txt 2>/dev/null)" = "$want" ] && echo 1 > /logs/verifier/reward.txt || echo 0 > /logs/verifier/reward.txt
"""


def test_the_agent_is_offline_and_the_verifier_has_the_tasks_network(tmp_path, monkeypatch, server):
    url, hits = server
    task = _task(tmp_path, monkeypatch, url, VERIFIER_FETCHES)
    b = _docker()
    with b.start(task=task) as box:
        out = box.exec(f"{FETCH} {url}/agent").output
        assert "Network is unreachable" in out, out
        box.exec("echo 42 > /app/answer.txt")
        assert verify(task, box, b, b.cfg).reward == 1.0  # the verifier fetched over the network
    assert "/verifier" in hits and "/agent" not in hits
    # positive control: the same command with agent_network=task reaches the server
    b2 = _docker(agent_network="task")
    with b2.start(task=task) as box:
        assert box.exec(f"{FETCH} {url}/agent").output == "42\n\n"
    assert "/agent" in hits
    # a task that declares no internet gets none in either phase, whatever the config says
    offline = _task(tmp_path / "off", monkeypatch, url, VERIFIER_FETCHES, allow_internet=False)
    with b2.start(task=offline) as box:
        assert "Network is unreachable" in box.exec(f"{FETCH} {url}/agent-offline").output
    assert "/agent-offline" not in hits


def test_an_offline_verifier_that_needs_the_network_is_an_infra_error_not_zero(tmp_path, monkeypatch, server):
    url, _ = server
    task = _task(tmp_path, monkeypatch, url, VERIFIER_FETCHES)
    b = _docker(verifier_network="none")
    with b.start(task=task) as box:
        box.exec("echo 42 > /app/answer.txt")
        with pytest.raises(NetworkNeeded, match="verifier needs the network: .*Network is unreachable"):
            verify(task, box, b, b.cfg)
    # the same shape of verifier that writes reward 0 itself when its install step fails (TB2's test.sh)
    zero = _task(tmp_path / "z", monkeypatch, url, VERIFIER_FETCHES.replace("exit 1", "echo 0 > /logs/verifier/reward.txt; exit 1"))
    with b.start(task=zero) as box:
        box.exec("echo 42 > /app/answer.txt")
        with pytest.raises(NetworkNeeded, match="scored 0 offline"):
            verify(zero, box, b, b.cfg)


def test_the_agent_cannot_turn_its_failure_into_infra_by_printing_network_errors(tmp_path, monkeypatch, server):
    """The verifier runs the agent's script and shows its output; the script prints what an
    offline install step would. Where no agent acted the same verifier prints no such
    thing, so the episode keeps its 0."""
    url, _ = server
    test_sh = ("#!/bin/bash\nout=$(setpriv --reuid=$ECHO_RL_AGENT_UID --regid=$ECHO_RL_AGENT_UID --clear-groups "
               "bash /app/run.sh 2>&1); echo \"$out\"\n"
               "[ \"$out\" = ok ] && echo 1 > /logs/verifier/reward.txt || echo 0 > /logs/verifier/reward.txt\n")
    task = _task(tmp_path, monkeypatch, url, test_sh)
    b = _docker(verifier_network="none")
    with b.start(task=task) as box:
        box.exec("printf 'echo \"curl: (6) Could not resolve host: astral.sh\"\\n' > /app/run.sh")
        verdict = verify(task, box, b, b.cfg)
    assert verdict.reward == 0.0 and "Could not resolve host" in verdict.detail
    with b.start(task=task) as box:  # positive control: the honest script scores 1 on the same path
        box.exec("echo 'echo ok' > /app/run.sh")
        assert verify(task, box, b, b.cfg).reward == 1.0


def test_what_the_agent_left_running_does_not_get_the_verifiers_network(tmp_path, monkeypatch, server):
    url, hits = server
    slow = VERIFIER_FETCHES.replace("want=$(", "sleep 2\nwant=$(", 1)  # time for a leftover to try
    task = _task(tmp_path, monkeypatch, url, slow)
    loop = f"nohup bash -c 'while true; do {FETCH} {url}/{{tag}} >/dev/null 2>&1; sleep 0.2; done' >/dev/null 2>&1 &"
    b = _docker()
    with b.start(task=task) as box:
        box.exec(loop.replace("{tag}", "leftover") + " echo 42 > /app/answer.txt")
        assert verify(task, box, b, b.cfg).reward == 1.0
    assert "/leftover" not in hits
    b2 = _docker(agent_network="task")  # positive control: with the network, the same loop is seen
    with b2.start(task=task) as box:
        box.exec(loop.replace("{tag}", "leftover-online") + " echo 42 > /app/answer.txt")
        assert verify(task, box, b2, b2.cfg).reward == 1.0
    assert "/leftover-online" in hits


def test_compose_services_run_beside_the_agent_and_go_with_it():
    task = load_task(FIXTURES / "harbor-compose-service")
    assert set(task.services) == {"api"}
    b = _docker()
    with b.start(task=task) as box:
        side = [c.id for c in box.side]
        network = box.network.name
        assert "token-" in box.exec(f"{FETCH} http://api:8000/token").output  # by its name, on its own network
        assert "Network is unreachable" in box.exec(f"{FETCH} http://10.88.0.1:9/").output  # still no route out
    names = {c.id for c in b.client.containers.list(all=True)}
    assert not names & set(side) and network not in {n.name for n in b.client.networks.list()}


def test_bwrap_refuses_a_task_whose_verifier_wants_the_network(task_rootfs, tmp_path):
    from pipeline.sandbox.bwrap import BwrapBackend

    task = load_task(FIXTURES / "tb1-hello-world")  # Terminal-Bench's harness gives its tasks the network
    with pytest.raises(SandboxError, match="verifier phase has the network.*sandbox.verifier_network=none"):
        BwrapBackend(SandboxConfig(rootfs=task_rootfs), root=tmp_path / "sb").start(task=task)
    offline = BwrapBackend(SandboxConfig(rootfs=task_rootfs, verifier_network="none"), root=tmp_path / "sb2")
    offline.start(task=task).close()  # positive control: offline, it runs


def test_phase_networks_resolution():
    from pipeline.sandbox.base import phase_networks
    from pipeline.tasks.base import Task

    t = Task(task_id="t", instruction="", task_dir=Path("."), network="public")
    assert phase_networks(SandboxConfig(), t) == ("none", "public")
    assert phase_networks(SandboxConfig(agent_network="task", verifier_network="none"), t) == ("public", "none")
    allow = Task(task_id="a", instruction="", task_dir=Path("."), network="allowlist", allowed_hosts=["pypi.org"])
    with pytest.raises(SandboxError, match="allowlisted.*pypi.org.*sandbox.verifier_network=none"):
        phase_networks(SandboxConfig(), allow)
    assert SandboxConfig(agent_network="public").check() == [("agent_network", "must be none or task, got 'public'")]
    assert json.dumps(phase_networks(SandboxConfig(), None)) == '["none", "none"]'
