"""The red-team suite: a hostile agent against the verifier, through the real episode path
(``run_episode`` with a scripted engine: one crafted command, then finish; the verifier
runs exactly as in training), on bwrap and docker (Podman).

Every attack must score 0 without an exception and without an infrastructure error (an
escape from a negative reward is as learnable as a raised one). Positive controls on the
same path: the reference solution scores 1; the attack payload, written by the verifier's
own principal, is read back as reward 1 (so "0" means contained, not "never read"); and
with the agent as root verifying in its own sandbox, attacks that rewrite the system do
raise the reward — the harm ``verifier_isolation: fresh`` then contains.
"""

import json
import shlex
from pathlib import Path

import pytest

from pipeline.engines.base import BatchingEngine, Generation
from pipeline.rollout.chat import ChatFormat, load_tokenizer
from pipeline.rollout.loop import RolloutConfig, rollout_metrics, run_episode
from pipeline.sandbox import SandboxConfig, SandboxError
from pipeline.sandbox.bwrap import BwrapBackend
from pipeline.tasks import load_task, run_verifier
from pipeline.tasks.attacks import ATTACKS, BY_NAME, PAYLOAD
from pipeline.tasks.generator import FAMILIES, generate

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests/fixtures/tasks"


def call(name: str, **arguments) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


class Commands(BatchingEngine):
    """Plays the same commands, then finish, in every episode (turn = tool responses seen)."""

    def __init__(self, tok, commands: list[str], stop_id: int):
        self.tok, self.stop_id = tok, stop_id
        self.script = [call("bash", command=c) for c in commands] + [call("finish")]
        super().__init__(max_batch=8, batch_wait_ms=0)

    def generate_batch(self, prompts, params):
        out = []
        for p in prompts:
            turn = self.tok.decode(p).count("<tool_response>")
            ids = self.tok(self.script[min(turn, len(self.script) - 1)], add_special_tokens=False)["input_ids"]
            out.append(Generation(ids + [self.stop_id], [-0.1] * (len(ids) + 1), "stop", 0))
        return out

    def load_weights(self, items):
        raise AssertionError("not used")


def _cfg(rootfs, **kw):
    return SandboxConfig(rootfs=rootfs, timeout_s=20, output_bytes=2000, pids=128, memory_mb=512, **kw)


def _backend(name, rootfs, root, **kw):
    if name == "bwrap":  # offline verifiers: bwrap has no network (it refuses tasks whose verifier wants one)
        return BwrapBackend(_cfg(rootfs, **{"verifier_network": "none", **kw}), root=root)
    from pipeline.sandbox.docker import DockerBackend

    try:
        return DockerBackend(_cfg(rootfs, backend="docker", **kw))
    except SandboxError as e:
        pytest.skip(f"docker backend unavailable: {e}")


@pytest.fixture(scope="module")
def chat():
    return ChatFormat(load_tokenizer(ROOT / "configs/tokenizer/tiny"))


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    """Tasks that were hackable or execute the agent's code: the expected answer used to sit
    in /app (text_replace), the check runs agent code (python_fix, shell_script), a
    Terminal-Bench 1 task decided by pytest, a Harbor task whose reward is reward.json."""
    out = tmp_path_factory.mktemp("targets")
    out.chmod(0o755)
    tasks = [load_task(d) for d in generate(["text_replace", "python_fix"], 1, out, seed=5)]
    return tasks + [load_task(FIXTURES / n) for n in ("tb1-hello-world", "harbor-reward-json", "harbor-service")]


IMAGE_MAP = {"ghcr.io/laude-institute/t-bench/ubuntu-24-04:latest": "ubuntu:24.04"}


def _episode(task, commands, backend, chat):
    engine = Commands(chat.tok, commands, chat.stop_token_id)
    try:
        return run_episode(task, "g0", engine, backend, chat, RolloutConfig(max_turns=4, infra_retries=0), backend.cfg)
    finally:
        engine.close()


def _supported(backend, task):
    if isinstance(backend, BwrapBackend) and task.dockerfile is not None and "FROM python" in task.dockerfile.read_text():
        pytest.skip("bwrap cannot reproduce this task's image (WORKDIR other than /app)")


@pytest.fixture(scope="module", params=["bwrap", "docker"])
def backend(request, task_rootfs, tmp_path_factory):
    root = tmp_path_factory.mktemp("sandboxes")
    root.chmod(0o755)
    return _backend(request.param, task_rootfs, root, image_map=IMAGE_MAP)


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.name)
def test_attack_scores_zero_and_stays_the_agents(attack, backend, targets, chat):
    for task in targets:
        if isinstance(backend, BwrapBackend) and task.dockerfile is not None and "python:3.12" in task.dockerfile.read_text():
            continue  # a docker-only task
        traj = _episode(task, ["ls -la /app /logs /tests", attack.command], backend, chat)
        assert not traj.infra_error, f"{attack.name} on {task.task_id}: {traj.metadata.get('infra_error')}"
        assert traj.reward == 0.0, f"{attack.name} raised {task.task_id}'s reward to {traj.reward}"


def test_honest_episodes_on_the_same_path(backend, targets, chat):
    """Positive control: the reference solution scores 1, the no-op 0, through run_episode."""
    for task in targets:
        if isinstance(backend, BwrapBackend) and task.dockerfile is not None and "python:3.12" in task.dockerfile.read_text():
            continue
        if isinstance(backend, BwrapBackend) and task.task_id == "harbor-service":
            continue  # its solution leaves a server running: bwrap kills it (docker keeps it, as Harbor)
        solution = task.solution
        if "/solution/summarize.py" in task.solution_files:  # its helper file, inlined (no /solution for an agent)
            solution = f"cd /srv/work && python3 -c {shlex.quote(task.solution_files['/solution/summarize.py'].decode())} prices.csv"
        good = _episode(task, [solution], backend, chat)
        assert (good.infra_error, good.reward) == (False, 1.0), (task.task_id, good.metadata)
        noop = _episode(task, ["true"], backend, chat)
        assert (noop.infra_error, noop.reward) == (False, 0.0), (task.task_id, noop.metadata)


def test_payload_written_by_the_verifier_is_read_as_reward(backend, targets):
    """Positive control for the reward path: the same payload, written by the verifier's
    own principal, is what the harness reads."""
    task = targets[0]
    with backend.start(task=task) as box:
        box.prepare_verifier(stop_agent=False)
        box.exec(PAYLOAD, verifier=True)
        assert box.read_file("/logs/verifier/reward.txt") == b"1\n"
        assert json.loads(box.read_file("/logs/verifier/reward.json")) == {"reward": 1}


def test_agent_caused_verifier_failure_is_zero_not_infra(backend, targets, chat):
    """A verifier the agent broke scores 0 with verifier_failure=agent; one that fails on a
    fresh sandbox too stays an infra error; the metric counts the former."""
    from dataclasses import replace

    # python_fix: its check runs the agent's sum.py, as the agent; a sum.py that never ends
    # makes the verifier time out (5 s here), where the untouched one ends at once
    task = replace(targets[1], verifier_timeout_s=5)
    hang = "printf 'import time\\ntime.sleep(120)\\n' > /app/sum.py"
    traj = _episode(task, [hang], backend, chat)
    assert (traj.infra_error, traj.reward) == (False, 0.0), traj.metadata
    assert traj.metadata["verifier_failure"] == "agent" and "timed out" in traj.metadata["verifier_detail"]
    broken = load_task(task.task_dir)
    broken.tests = {"/tests/test.sh": b"#!/bin/bash\nexit 3\n"}
    traj2 = _episode(broken, ["true"], backend, chat)
    assert traj2.infra_error and "on a fresh sandbox too" in traj2.metadata["infra_error"]
    m = rollout_metrics([traj, traj2])
    assert m["rollout/verifier_agent_failures"] == 1.0


def test_reward_file_is_read_without_following_links(backend, targets, tmp_path):
    """Even where the ground could not be relaid, a link at the reward path is refused."""
    host = tmp_path / "host-one"
    host.write_text("1\n")
    task = targets[0]
    with backend.start(task=task) as box:
        box.prepare_verifier(stop_agent=False)
        box.exec(f"ln -s {host} /logs/verifier/reward.txt", verifier=True)
        assert box.read_file("/logs/verifier/reward.txt") is None
        box.exec("rm /logs/verifier/reward.txt && echo 1 > /logs/verifier/reward.txt", verifier=True)
        assert box.read_file("/logs/verifier/reward.txt") == b"1\n"  # positive control


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_no_family_keeps_its_answer_where_the_agent_can_read_it(family, tmp_path):
    (d,) = generate([family], 1, tmp_path, seed=11)
    seeded = {p.relative_to(d / "environment/app").as_posix(): p.read_bytes()
              for p in (d / "environment/app").rglob("*") if p.is_file()}  # fmt: skip
    expected = [p.read_bytes() for p in (d / "tests").rglob("*") if p.is_file() and "expected" in p.parts]
    assert not any(name.startswith(".expected") for name in seeded)
    for data in expected:  # an expected output never sits in the agent's files
        assert data not in seeded.values()


def test_docker_root_agent_is_contained_by_separate_and_fresh_isolation(task_rootfs, targets, chat, tmp_path):
    """With the agent as root, attacks that rewrite the system raise the reward when the
    verifier shares the agent's sandbox (``same``, Harbor's semantics: the positive control,
    these are real attacks), and score 0 with ``separate`` (the default: the task image's
    toolchain, the agent's files and services) and ``fresh`` (the work tree only)."""
    same = _backend("docker", task_rootfs, tmp_path, agent_user="root", verifier_isolation="same", image_map=IMAGE_MAP)
    task = targets[0]
    system = [a for a in ATTACKS if a.name in ("fake_compare_tools", "replace_system_binaries", "path_trojans")]
    raised = [a.name for a in system if _episode(task, [a.command], same, chat).reward > 0]
    assert raised, "no root attack got through a shared sandbox: the control does not exercise anything"
    for iso in ("separate", "fresh"):
        contained = _backend("docker", task_rootfs, tmp_path, agent_user="root", verifier_isolation=iso,
                             image_map=IMAGE_MAP)  # fmt: skip
        for a in ATTACKS:
            traj = _episode(task, [a.command], contained, chat)
            assert (traj.infra_error, traj.reward) == (False, 0.0), (iso, a.name, traj.metadata.get("infra_error"))
        good = _episode(task, [task.solution], contained, chat)
        assert good.reward == 1.0, (iso, good.metadata)


def test_bwrap_refuses_what_it_cannot_reproduce(task_rootfs, tmp_path):
    b = BwrapBackend(_cfg(task_rootfs), root=tmp_path / "sb")
    with pytest.raises(SandboxError, match="use sandbox.backend=docker"):
        b.start(task=load_task(FIXTURES / "tb1-compose"))


def test_tasks_audit_flags_a_hackable_task_and_passes_a_sound_one(tmp_path):
    """`echo-rl tasks audit`: a task whose verifier accepts any answer containing "1" is
    flagged (rewrite_task_data writes 1 everywhere); a generated family is not."""
    import subprocess
    import sys

    sound, weak = tmp_path / "sound", tmp_path / "weak"
    generate(["csv_sum"], 1, sound, seed=4)
    (d,) = generate(["csv_sum"], 1, weak, seed=4)
    (d / "tests" / "check.sh").write_text("#!/bin/bash\ngrep -q 1 /app/answer.txt\n")
    for where, code, needle in ((sound, 0, "1/1 passed"), (weak, 1, "rewrite_task_data")):
        r = subprocess.run([sys.executable, "-m", "pipeline.cli", "tasks", "audit", str(where), "--attacks",
                            "prewrite_reward,rewrite_task_data", "--json", str(tmp_path / "a.json")],
                           capture_output=True, text=True, cwd=ROOT)  # fmt: skip
        assert r.returncode == code and needle in r.stdout, r.stdout + r.stderr[-2000:]
    assert json.loads((tmp_path / "a.json").read_text())["tasks"][0]["got_through"] == ["rewrite_task_data"]


def test_exhaust_pids_does_fill_the_process_table(backend, targets):
    """Positive control for the exhaust_pids attack (which scores 0 above): right after it,
    in the same command, the sandbox's process count is at its limit (counted with shell
    builtins only: a fork would fail now)."""
    count = "; n=0; for p in /proc/[0-9]*; do n=$((n + 1)); done; echo procs=$n"
    with backend.start(task=targets[0]) as box:
        idle = box.exec("true" + count)
        full = box.exec(BY_NAME["exhaust_pids"].command + count)
    n_idle, n_full = (int(r.output.rsplit("procs=", 1)[1]) for r in (idle, full))
    assert n_idle < 10 and n_full >= backend.cfg.pids - 10, (n_idle, n_full, backend.cfg.pids)
