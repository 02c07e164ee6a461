"""Nothing the agent leaves behind reaches the reward or the trainer: the kinds of
``pipeline/sandbox/boundary.py`` (links, checks readable by the code under test, leftover
processes, scratch dirs, streams, memory, sparse and deep trees), each with its positive
control — the same attack with the one defence that stops it turned off gets through, so
"0" below means contained, not "never worked".

The attacks themselves (``attacks.LEFTOVER_ATTACKS``) also run against every target of
``tests/test_reward_integrity.py`` on both backends; here each kind meets its control.
"""

import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.sandbox import boundary
from pipeline.sandbox.base import Sandbox
from pipeline.sandbox.bwrap import BwrapBackend, _remove
from pipeline.tasks import load_task
from pipeline.tasks.attacks import BY_NAME
from pipeline.tasks.generator import generate
from pipeline.tasks.verifier import pytest_reward
from tests.test_reward_integrity import IMAGE_MAP, _backend, _cfg, _episode, chat  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def family_tasks(tmp_path_factory):
    out = tmp_path_factory.mktemp("leftover-tasks")
    out.chmod(0o755)
    return {d.name.split("-")[0]: load_task(d) for d in generate(["text_replace", "python_fix"], 1, out, seed=7)}


@pytest.fixture(scope="module", params=["bwrap", "docker"])
def backend(request, task_rootfs, tmp_path_factory):
    root = tmp_path_factory.mktemp("sb")
    root.chmod(0o755)
    return _backend(request.param, task_rootfs, root, image_map=IMAGE_MAP)


def _reward(task, command, backend, chat):
    traj = _episode(task, [command], backend, chat)
    assert not traj.infra_error, traj.metadata.get("infra_error")
    return traj.reward


@pytest.mark.parametrize("attack", ["answer_links_to_ground", "answer_links_via_proc"])
def test_links_into_the_ground_are_swept(attack, backend, family_tasks, chat, monkeypatch):
    task = family_tasks["text_replace"]  # its check compares /app/config.ini with /tests/expected/config.ini
    assert _reward(task, BY_NAME[attack].command, backend, chat) == 0.0
    monkeypatch.setattr(Sandbox, "cleanup_sweep", lambda self: "")  # the control: no sweep
    assert _reward(task, BY_NAME[attack].command, backend, chat) == 1.0


def test_code_under_test_cannot_read_the_check(backend, family_tasks, chat, monkeypatch):
    task = family_tasks["python_fix"]  # its check runs the agent's sum.py (as the agent)
    assert _reward(task, BY_NAME["code_reads_the_check"].command, backend, chat) == 0.0
    if backend.cfg.backend == "bwrap" and backend.run_as is None:
        pytest.skip("a non-root trainer has no user boundary for the control")
    monkeypatch.setattr(boundary, "TESTS_MODE", 0o755)  # the control: the check readable
    assert _reward(task, BY_NAME["code_reads_the_check"].command, backend, chat) == 1.0


def test_leftover_processes_see_nothing_of_the_verifier(task_rootfs, family_tasks, chat, monkeypatch, tmp_path):
    """docker keeps what the agent started running (Harbor's semantics). A root agent's
    readers get nothing in the separate verifier container, even with /tests
    world-readable; in the agent's own container an unprivileged agent's readers are
    stopped by /tests' mode alone (the control: open it, and they win)."""
    task, reader = family_tasks["text_replace"], BY_NAME["leftover_ground_reader"].command
    separate = _backend("docker", task_rootfs, tmp_path, agent_user="root")
    same = _backend("docker", task_rootfs, tmp_path, agent_user="unprivileged", verifier_isolation="same")
    assert _reward(task, reader, separate, chat) == 0.0
    assert _reward(task, reader, same, chat) == 0.0
    monkeypatch.setattr(boundary, "TESTS_MODE", 0o755)
    assert _reward(task, reader, separate, chat) == 0.0  # the separate container alone contains it
    assert _reward(task, reader + "; sleep 1", same, chat) == 1.0  # the control


def test_scratch_links_do_not_redirect_the_verifier(task_rootfs, family_tasks, chat, tmp_path, monkeypatch):
    """A verifier that writes a scratch file as root (here: the value 1, innocently) after
    writing reward 0. Two defences, each enough: the separate verifier has its own /tmp,
    and the sweep removes links into the ground. With neither (the agent's own container,
    no sweep), the agent's /tmp link turns that write into reward 1: the control."""
    (d,) = generate(["csv_sum"], 1, tmp_path / "t", seed=3)
    (d / "tests" / "test.sh").write_text("#!/bin/bash\necho 0 > /logs/verifier/reward.txt\necho 1 > /tmp/out.txt\n")
    task = load_task(d)
    separate = _backend("docker", task_rootfs, tmp_path)
    same = _backend("docker", task_rootfs, tmp_path, verifier_isolation="same")
    assert _reward(task, BY_NAME["scratch_links"].command, same, chat) == 0.0
    monkeypatch.setattr(Sandbox, "cleanup_sweep", lambda self: "")
    assert _reward(task, BY_NAME["scratch_links"].command, separate, chat) == 0.0
    if Path("/proc/sys/fs/protected_symlinks").read_text().strip() != "0":
        pytest.skip("this host's fs.protected_symlinks stops the control itself")
    assert _reward(task, BY_NAME["scratch_links"].command, same, chat) == 1.0


def test_stream_flood_is_bounded_on_the_trainers_side(backend):
    cap = backend.cfg.output_bytes
    with backend.start() as box:
        own = box.exec("head -c 2000000 /dev/zero | tr '\\0' A")  # the control: the volume is real
        assert own.truncated and own.output_total_bytes >= 2_000_000 and len(own.output) == cap
        flood = box.exec(BY_NAME["stream_flood"].command)
        assert len(flood.output.encode()) <= cap, len(flood.output)
        assert box.exec("echo still here").output == "still here\n"


def test_an_exec_that_never_returns_is_a_timeout_not_a_hang(task_rootfs, tmp_path, monkeypatch):
    """A root agent can reach the exec's own machinery. Its capture replaced by a FIFO: the
    read of it has its own timeout. The exec's shell stopped (SIGSTOP): it never returns,
    and the trainer's deadline turns that into a timeout observation."""
    from pipeline.sandbox import docker_sandbox as docker_mod

    monkeypatch.setattr(docker_mod, "EXEC_GRACE_S", 2.0)
    backend = _backend("docker", task_rootfs, tmp_path, agent_user="root")
    with backend.start() as box:
        assert box.exec("echo ok", timeout_s=2).output == "ok\n"  # the control
        t0 = time.monotonic()
        box.exec(BY_NAME["capture_fifo"].command, timeout_s=2)
        assert time.monotonic() - t0 < 10 and box.alive()
        t0 = time.monotonic()
        r = box.exec("for p in $(pgrep -f 'o.XXXXXXXX'); do kill -STOP $p; done; sleep 1", timeout_s=2)
        assert time.monotonic() - t0 < 10 and r.timed_out and r.exit_code is None, r
        assert box.alive() and box.exec("echo ok", timeout_s=2).output == "ok\n"
        t0 = time.monotonic()
        assert box._run("sleep 30", "0", deadline_s=1.5) == b""  # the bare primitive
        assert time.monotonic() - t0 < 5


def test_memory_filled_through_a_memfd_kills_the_agent_not_the_sandbox(backend, family_tasks, chat):
    with backend.start() as box:
        r = box.exec(BY_NAME["memfd_fill"].command.replace("; true", "; echo rc=$?"))
        assert "rc=0" not in r.output, r.output  # the control: the fill was stopped (killed or refused)
        assert box.alive() and box.exec("echo alive").output == "alive\n"
    assert _reward(family_tasks["text_replace"], BY_NAME["memfd_fill"].command, backend, chat) == 0.0


def test_sparse_files_are_refused_by_size_not_copied(backend, family_tasks, chat):
    """0-byte files of 700 MB apparent size: the separate/fresh verifier refuses the tree
    by its apparent size (reward 0, the agent's failure) without reading it."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with backend.start() as box:
        listing = box.exec(BY_NAME["sparse_bomb"].command + "; ls -ls /app/.s1").output
        assert "734003200" in listing  # the control: the apparent size is real
    cfg = backend.cfg
    fresh = type(backend)(type(cfg)(**{**cfg.__dict__, "verifier_isolation": "fresh"}),
                          **({"root": backend.root} if isinstance(backend, BwrapBackend) else {}))  # fmt: skip
    for b in (backend, fresh):
        traj = _episode(family_tasks["text_replace"], [BY_NAME["sparse_bomb"].command], b, chat)
        assert (traj.infra_error, traj.reward) == (False, 0.0), traj.metadata
        if b.cfg.backend == "docker" or b is fresh:
            assert traj.metadata.get("verifier_failure") == "agent", traj.metadata
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 300, f"the trainer grew by {grown_mb:.0f} MB"


def test_deep_trees_never_crash_cleanup(tmp_path, task_rootfs):
    deep = tmp_path / "deep"
    deep.mkdir()
    subprocess.run([sys.executable, "-c", "import os\nfor _ in range(3000):\n    os.mkdir('d')\n    os.chdir('d')"],
                   cwd=deep, check=True)  # fmt: skip
    with pytest.raises(RecursionError):  # the control: a recursive walk dies on it
        shutil.rmtree(deep)
    _remove(deep)
    assert not deep.exists()
    box = BwrapBackend(_cfg(task_rootfs), root=tmp_path / "sb").start()
    box.exec(BY_NAME["deep_tree"].command.replace("; true", "; echo made"))
    box.close()
    assert not box.dir.exists()


def test_a_pytest_that_contradicts_its_summary_scores_zero():
    passed = "=== short test summary info ===\nPASSED test_outputs.py::test_a\n===== 1 passed in 0.01s =====\n"
    assert pytest_reward(passed, 0) == 1.0  # the control
    forged = "=== short test summary info ===\nPASSED test_outputs.py::test_a\n"
    assert pytest_reward(forged, 0) == 0.0  # no final line: a summary printed, then pytest stopped
    assert pytest_reward(passed, 137) == 0.0  # killed
    assert pytest_reward(passed, None) == 0.0  # timed out
    assert pytest_reward(passed.replace("PASSED", "FAILED").replace("1 passed", "1 failed"), 1) == 0.0


def test_a_restarted_trainer_reaps_a_deep_episode_dir(tmp_path, task_rootfs):
    """The episode dir of a killed trainer holding a deep tree: the next start reaps it."""
    root = tmp_path / "sb"
    code = ("import os, sys\nfrom pathlib import Path\nfrom pipeline.sandbox.bwrap import BwrapBackend\n"
            "from pipeline.sandbox import SandboxConfig\n"
            f"b = BwrapBackend(SandboxConfig(rootfs={str(task_rootfs)!r}), root={str(root)!r})\nbox = b.start()\n"
            f"box.exec({BY_NAME['deep_tree'].command!r})\nprint(box.dir, flush=True)\nos._exit(0)\n")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    left = Path(out.stdout.strip().splitlines()[-1])
    assert left.exists(), out.stderr[-500:]
    assert BwrapBackend(_cfg(task_rootfs), root=root).reap_orphans() == 0  # the start reaped it already
    assert not left.exists()


def test_sweep_keeps_honest_links(backend):
    """The sweep removes links into the ground and special files, and nothing else."""
    with backend.start() as box:
        box.exec("mkdir -p /app/releases/v2 && ln -s /app/releases/v2 /app/current && ln -s ../etc/hostname /app/h && "
                 "ln -s /tests/x /app/bad && mkfifo /app/fifo && echo ok > /app/file")  # fmt: skip
        box.prepare_verifier(stop_agent=False)
        report = box.cleanup_sweep()
        left = box.exec("ls -A /app", verifier=True).output.split()
    assert sorted(left) == ["current", "file", "h", "releases"], (left, report)


def _weak_tasks(out: Path) -> dict[str, Path]:
    """Task-level weaknesses (the task's own verifier design, Harbor's harness has them too):
    pytest run on a test copied into the agent's work dir (reads its conftest.py), and a
    verifier that runs the agent's program as root (it can read /tests, write the reward)."""
    (pytest_dir,) = generate(["csv_sum"], 1, out, seed=1)
    (pytest_dir / "tests" / "test_outputs.py").write_text(
        "def test_answer():\n    assert open('/app/answer.txt').read().strip() == 'never written by the agent'\n")
    (pytest_dir / "tests" / "test.sh").write_text(
        "#!/bin/bash\ncp /tests/test_outputs.py /app/ && cd /app && python3 -m pytest -q -rA test_outputs.py\n"
        "if [ $? -eq 0 ]; then echo 1 > /logs/verifier/reward.txt; else echo 0 > /logs/verifier/reward.txt; fi\n")
    (root_dir,) = generate(["python_fix"], 1, out, seed=1)
    check = (root_dir / "tests" / "check.sh").read_text().replace("as_agent ", "")
    (root_dir / "tests" / "test.sh").write_text(f"#!/bin/bash\ncd /app\n{check.splitlines()[1]} && r=1 || r=0\n"
                                               "echo $r > /logs/verifier/reward.txt\n")  # fmt: skip
    return {"pytest_conftest_pass": pytest_dir, "code_reads_the_check": root_dir}


def test_tasks_audit_flags_task_level_kinds_and_training_refuses_them(tmp_path):
    weak = _weak_tasks(tmp_path / "weak")
    sound = generate(["python_fix", "text_replace"], 1, tmp_path / "sound", seed=2)
    report = tmp_path / "audit.json"
    attacks = "pytest_conftest_pass,code_reads_the_check,answer_links_to_ground,answer_fifos"
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "tasks", "audit", str(tmp_path / "weak"), str(tmp_path / "sound"),
                        "--attacks", attacks, "--jobs", "2", "--json", str(report), "sandbox.backend=bwrap"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)  # fmt: skip
    rows = {row["task"]: row for row in __import__("json").loads(report.read_text())["tasks"]}
    for attack, d in weak.items():
        assert attack in rows[d.name]["got_through"], (attack, rows[d.name], r.stdout[-2000:])
    for d in sound:  # the same kinds against the built-in families: nothing gets through
        assert rows[d.name]["got_through"] == [], rows[d.name]
    assert r.returncode == 1

    from pipeline.tasks.base import TaskFormatError
    from pipeline.tasks.sets import TaskSampler, TaskSetConfig

    cfg = TaskSetConfig(train_dirs=[str(tmp_path / "weak"), str(tmp_path / "sound")], audit=str(report))
    with pytest.raises(TaskFormatError, match=rf"task {weak['pytest_conftest_pass'].name}: the audit .*pytest_conftest_pass"):
        TaskSampler(cfg, tmp_path / "run", seed=0)
    cfg.audit_failures = "skip"
    kept = {t.task_id for t in TaskSampler(cfg, tmp_path / "run", seed=0)._pool}
    assert kept == {d.name for d in sound}


def test_tasks_audit_passes_every_built_in_family_against_the_leftover_kinds(tmp_path):
    from pipeline.tasks.attacks import LEFTOVER_ATTACKS
    from pipeline.tasks.generator import FAMILIES

    generate(sorted(FAMILIES), 1, tmp_path / "families", seed=9)
    report = tmp_path / "audit.json"
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "tasks", "audit", str(tmp_path / "families"), "--attacks",
                        ",".join(a.name for a in LEFTOVER_ATTACKS), "--jobs", "2", "--json", str(report),
                        "sandbox.backend=bwrap"], capture_output=True, text=True, cwd=ROOT, timeout=1200)  # fmt: skip
    rows = __import__("json").loads(report.read_text())["tasks"]
    assert len(rows) == len(FAMILIES) and r.returncode == 0, r.stdout[-3000:]
    assert all(row["got_through"] == [] for row in rows)


def test_the_harbor_profile_is_for_evaluation_only(tmp_path):
    from pipeline.config import ConfigError, load_config
    from pipeline.main import train

    cfg = load_config(str(ROOT / "configs/tiny.yaml"), ["sandbox.profile=harbor", f"run.output_dir={tmp_path}"])
    assert (cfg.sandbox.agent_user, cfg.sandbox.verifier_isolation) == ("root", "same")  # Harbor's semantics
    with pytest.raises(ConfigError, match="sandbox.profile"):
        train(cfg)
    assert not any(tmp_path.iterdir())
    with pytest.raises(ConfigError, match="profile"):
        load_config(str(ROOT / "configs/tiny.yaml"), ["sandbox.profile=lenient"])
