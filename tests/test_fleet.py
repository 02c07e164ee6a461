"""The sandbox fleet (``sandbox.hosts``, pipeline/sandbox/fleet.py) over real Podman API
services on this machine, each with its own storage and socket (``tools/podman_host.sh``):
placement by free slots, a host stopped under a running episode, re-admission, the config's
refusal of unauthenticated TCP, and a training run that loses a host after its first step."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_config
from pipeline.sandbox.base import SandboxConfig, SandboxError

ROOT = Path(__file__).resolve().parents[1]


def _host(name: str, *args: str) -> str:
    r = subprocess.run(["bash", "tools/podman_host.sh", name, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.fixture(scope="module")
def hosts():
    """Two Podman services (fleet-a, fleet-b), each with its own store and socket."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (make setup installs it)")
    from pipeline.sandbox.docker import DockerBackend

    try:
        DockerBackend(SandboxConfig(backend="docker"))
    except SandboxError as e:
        pytest.skip(f"docker backend unavailable: {e}")
    urls = [_host("fleet-a"), _host("fleet-b")]
    yield urls
    for name in ("fleet-a", "fleet-b"):
        _host(name)  # left running for the next module, as tools/podman_setup.sh's is


def _containers(url: str) -> list[dict]:
    import docker

    return [c.attrs for c in docker.DockerClient(base_url=url).containers.list(all=True)]


def test_config_refuses_an_unauthenticated_tcp_host_and_names_the_key():
    with pytest.raises(ConfigError, match=r"sandbox.hosts\[1\].url.*tcp://10.0.0.9:2375 is TCP without TLS"):
        load_config(ROOT / "configs/tiny.yaml", ["sandbox.backend=docker",
                                                 "sandbox.hosts=[unix:///run/a.sock,tcp://10.0.0.9:2375]"])  # fmt: skip
    with pytest.raises(ConfigError, match="sandbox.hosts.*needs backend docker"):
        load_config(ROOT / "configs/tiny.yaml", ["sandbox.hosts=[unix:///run/a.sock]"])
    ok = load_config(ROOT / "configs/tiny.yaml", ["sandbox.backend=docker", "sandbox.hosts=[ssh://u@n1,{url: "
                                                  "'tcp://n2:2376', tls_ca: ca.pem, tls_cert: c.pem, tls_key: k.pem}]"])  # fmt: skip
    assert [h if isinstance(h, str) else h["url"] for h in ok.sandbox.hosts] == ["ssh://u@n1", "tcp://n2:2376"]


def test_fleet_places_by_free_slots_survives_a_stopped_host_and_readmits_it(hosts):
    from pipeline.sandbox.fleet import SandboxFleet

    a, b = hosts
    cfg = SandboxConfig(backend="docker", host_probe_s=0.5,
                        hosts=[{"url": a, "max_concurrent": 1}, {"url": b, "max_concurrent": 2}])  # fmt: skip
    fleet = SandboxFleet(cfg)
    assert fleet.health() == {"sandbox/hosts_alive": 2.0, "sandbox/hosts": 2.0}
    boxes, placed = {}, []

    def episode(name: str, hold: threading.Event) -> None:  # one episode per thread, as the rollout runs them
        box = fleet.start(episode=name)
        boxes[name] = box
        placed.append((name, box.host_url))
        hold.wait(60)

    holds = {n: threading.Event() for n in ("e1", "e2", "e3", "e4")}
    threads = {n: threading.Thread(target=episode, args=(n, holds[n]), daemon=True) for n in holds}
    for n in ("e1", "e2", "e3"):
        threads[n].start()
        while n not in boxes:
            time.sleep(0.05)
    # the most free slots first (b: 2, then a and b tie at 1: the first listed)
    assert placed == [("e1", b), ("e2", a), ("e3", b)]
    threads["e4"].start()  # every slot is taken: it waits
    time.sleep(1.0)
    assert "e4" not in boxes
    # a running episode on b; the same path with a harmless command answers first
    assert boxes["e3"].exec("echo before").output.strip() == "before"
    _host("fleet-b", "--stop")
    with pytest.raises(SandboxError):
        boxes["e3"].exec("echo after")
    assert not boxes["e3"].alive()  # so the agent loop calls it infrastructure, never the agent's failure
    assert boxes["e2"].exec("echo still").output.strip() == "still"  # the other host is untouched
    assert fleet.health()["sandbox/hosts_alive"] == 1.0
    boxes["e2"].close()  # a's slot frees: e4 goes there, never to the down host
    holds["e2"].set()
    while "e4" not in boxes:
        time.sleep(0.05)
    assert boxes["e4"].host_url == a
    for n in ("e1", "e3"):  # the lost episodes end; their containers wait for the host
        boxes[n].close()
        holds[n].set()
    lost = boxes["e3"].container.id
    _host("fleet-b")  # back
    time.sleep(0.6)
    assert fleet.health()["sandbox/hosts_alive"] == 2.0
    assert lost not in [c["Id"] for c in _containers(b)]  # what its lost episodes left is removed
    fresh = fleet.start(episode="e5")  # a on hold by e4 (its only slot): b
    assert fresh.host_url == b and fresh.exec("echo back").output.strip() == "back"
    fresh.close()
    boxes["e4"].close()
    holds["e4"].set()
    assert [h.held for h in fleet.hosts] == [0, 0]


@pytest.mark.slow
def test_training_with_two_hosts_finishes_every_step_when_one_is_stopped_after_the_first(hosts, tmp_path):
    """``sandbox.hosts`` of two Podman services; the second is stopped once step 0's batch is
    in (while its own containers may still run): every step finishes, no episode is an
    infra_error or scored 0 because of the lost host (an attempt lost with it ran again on
    the other), ``sandbox/hosts_alive`` 2 → 1."""
    import os
    import sys

    from pipeline.tracking import read_metric_history
    from pipeline.trajectory import load_jsonl

    a, b = hosts
    rd = tmp_path / "run"
    spec = f"[{{url: '{a}', max_concurrent: 2}}, {{url: '{b}', max_concurrent: 2}}]"
    cmd = [str(Path(sys.executable).parent / "echo-rl"), "train", "configs/tiny.yaml", f"run.output_dir={rd}", "run.steps=3",
           "eval.every=0", "model.load=''", "model.warmstart_steps=0", "eval.probe=false", "sandbox.backend=docker",
           f"sandbox.hosts={spec}", "sandbox.host_probe_s=1", "rollout.tasks_per_step=2", "rollout.group_size=2",
           "rollout.max_turns=3", "rollout.max_tokens_per_turn=48", "tasks.families=[text_count,files_mkdir]",
           "rollout.max_concurrent_episodes=4"]  # fmt: skip
    p = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="2"), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.time() + 600
        while not (rd / "trajectories" / "step_000000.jsonl").exists():
            assert p.poll() is None and time.time() < deadline, p.communicate()[0][-4000:]
            time.sleep(0.05)
        _host("fleet-b", "--stop")
        out, _ = p.communicate(timeout=900)
    finally:
        if p.poll() is None:
            p.kill()
        _host("fleet-b")
    assert p.returncode == 0, out[-5000:]
    assert "sandbox fleet: host " + b + " is down" in out
    run_id = (rd / "mlflow_run_id").read_text().strip()
    history = lambda key: read_metric_history(f"sqlite:///{rd / 'mlflow.db'}", run_id, key)  # noqa: E731
    assert [s for s, _ in history("loss")] == [0, 1, 2]
    assert [v for _, v in history("sandbox/hosts_alive")] == [2.0, 1.0, 1.0]
    trajs = {s: load_jsonl(rd / "trajectories" / f"step_{s:06d}.jsonl") for s in range(3)}
    assert {t.metadata["sandbox_host"] for t in trajs[0]} == {a, b}  # both hosts served step 0
    later = trajs[1] + trajs[2]
    assert later, "no episode ran after the host was stopped: the checks below would hold vacuously"
    assert not [t.task_id for t in later if t.infra_error]  # no episode lost with the host
    assert all(t.metadata["sandbox_host"] == a for t in later)  # nothing ran on the stopped host
    moved = [t for t in later if t.metadata.get("infra_lost_on")]
    assert all(t.metadata["infra_lost_on"] == [b] and t.metadata["attempts"] == 2 for t in moved)
    print(json.dumps({"episodes_moved_off_the_lost_host": len(moved)}))


FLEET_ATTACKS = ("prewrite_reward", "background_rewriter", "answer_links_to_ground", "leftover_ground_reader",
                 "replace_system_binaries", "pytest_conftest_pass")  # fmt: skip


def test_reward_integrity_holds_on_every_host_of_a_fleet(hosts, tmp_path):
    """The hardened verifier phase is the docker backend's on whichever host an episode
    lands: kinds of attack score 0 (not infra_error) on both hosts; the reference solution
    scores 1 and a no-op 0 on both (the positive control of the same path)."""
    from pipeline.rollout.chat import ChatFormat, load_tokenizer
    from pipeline.sandbox.fleet import SandboxFleet
    from pipeline.tasks import load_task
    from pipeline.tasks.attacks import BY_NAME
    from pipeline.tasks.generator import generate
    from tests.test_reward_integrity import _episode

    chat = ChatFormat(load_tokenizer(ROOT / "configs/tokenizer/tiny"))
    a, b = hosts
    tmp_path.chmod(0o755)
    task = load_task(generate(["text_replace"], 1, tmp_path, seed=5)[0])
    for url in (a, b):  # one host per fleet of one, so each attack surely runs on each
        fleet = SandboxFleet(SandboxConfig(backend="docker", hosts=[url]))
        good = _episode(task, [task.solution], fleet, chat)
        assert (good.infra_error, good.reward, good.metadata["sandbox_host"]) == (False, 1.0, url), good.metadata
        assert _episode(task, ["true"], fleet, chat).reward == 0.0
        for name in FLEET_ATTACKS:
            traj = _episode(task, ["ls -la /app /logs /tests", BY_NAME[name].command], fleet, chat)
            assert not traj.infra_error and traj.reward == 0.0, (url, name, traj.metadata.get("infra_error"), traj.reward)
