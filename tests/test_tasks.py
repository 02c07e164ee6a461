"""Task sets in a real sandbox: every generated family's solution scores 1 and doing
nothing scores 0; Harbor and Terminal-Bench task dirs load as their harnesses read them
and run their tests; `echo-rl tasks check` passes the fixtures (public and own) on docker."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.sandbox import SandboxConfig
from pipeline.sandbox.bwrap import BwrapBackend
from pipeline.tasks import TaskFormatError, VerifierError, load_task, run_verifier
from pipeline.tasks.generator import FAMILIES, generate



@pytest.fixture(scope="module")
def backend(tmp_path_factory, task_rootfs):
    # verifier_network=none: bwrap has no network, and the public tasks' verifiers ask for one
    cfg = SandboxConfig(rootfs=task_rootfs, timeout_s=20, verifier_network="none")
    return BwrapBackend(cfg, root=tmp_path_factory.mktemp("sandboxes"))


def test_at_least_twelve_families():
    assert len(FAMILIES) >= 12


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_solution_passes_and_noop_fails(backend, tmp_path, family):
    for task_dir in generate([family], 2, tmp_path, seed=3):
        task = load_task(task_dir)
        assert task.family == family and task.solution
        with backend.start(task_dir=task_dir) as sb:  # the agent does nothing
            assert run_verifier(task, sb) == 0.0, f"{task.task_id}: no-op passed"
        with backend.start(task_dir=task_dir) as sb:
            r = sb.exec(task.solution)
            assert r.exit_code == 0, f"{task.task_id}: solution failed: {r.output}"
            assert run_verifier(task, sb) == 1.0, f"{task.task_id}: solution did not pass"


def test_generation_is_seeded(tmp_path):
    a = generate(["csv_sum"], 1, tmp_path / "a", seed=7)[0]
    b = generate(["csv_sum"], 1, tmp_path / "b", seed=7)[0]
    c = generate(["csv_sum"], 1, tmp_path / "c", seed=8)[0]
    read = lambda d: (d / "environment/app/sales.csv").read_text()  # noqa: E731
    assert read(a) == read(b) != read(c)


def test_agent_cannot_see_the_tests(backend, tmp_path):
    (task_dir,) = generate(["text_count"], 1, tmp_path)
    task = load_task(task_dir)
    with backend.start(task_dir=task_dir) as sb:
        assert sb.exec("ls -A /tests; grep -r reward / 2>/dev/null | head -1").output == ""


ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests/fixtures/tasks"


def test_terminal_bench_task_is_decided_by_the_pytest_summary(backend, tmp_path):
    d = tmp_path / "tb-hello"
    (d / "tests").mkdir(parents=True)
    (d / "task.yaml").write_text("instruction: Write hello to /app/hello.txt\nmax_agent_timeout_sec: 100\nmax_test_timeout_sec: 30\n")
    # exits 0 whatever pytest found: TB decides by the summary, not the exit code
    (d / "run-tests.sh").write_text("#!/bin/bash\ncd /app\npython3 -m pytest $TEST_DIR/test_hello.py -rA; exit 0\n")
    (d / "tests" / "test_hello.py").write_text("def test_hello():\n    assert open('/app/hello.txt').read().strip() == 'hello'\n")
    (d / "solution.sh").write_text("echo hello > /app/hello.txt\n")
    (d / "Dockerfile").write_text("FROM echo-rl-base:latest\n")
    task = load_task(d)
    assert (task.verifier_timeout_s, task.reward_from, task.verifier_env["TEST_DIR"]) == (30, "pytest", "/tests")
    with backend.start(task=task) as sb:
        assert run_verifier(task, sb) == 0.0
    with backend.start(task=task) as sb:
        sb.exec(task.solution)
        assert run_verifier(task, sb) == 1.0


def test_pytest_parser_as_terminal_bench():
    from pipeline.tasks.verifier import parse_pytest

    summary = "=========================== short test summary info ============================\n"
    assert parse_pytest("x\n" + summary + "PASSED t.py::a\nSKIPPED [1] t.py:3: later\nXFAIL t.py::c\n== 2 passed ==\n") == 1.0
    assert parse_pytest(summary + "PASSED t.py::a\nFAILED t.py::b - assert\n") == 0.0
    with pytest.raises(VerifierError, match="short test summary"):
        parse_pytest("1 passed in 0.1s")  # no -rA: a parse error, never a pass


@pytest.mark.parametrize("raw,rewards", [
    (b'{"reward": 1, "style": 0.5}', {"reward": 1.0, "style": 0.5}),
    (b'{"a": 1, "b": 0}', {"a": 1.0, "b": 0.0, "reward": 0.5}),  # no "reward": the mean
])  # fmt: skip
def test_reward_json(raw, rewards):
    from pipeline.tasks.verifier import rewards_from_json  # what the verifier itself reads

    assert rewards_from_json(raw, "reward") == rewards
    if "reward" not in rewards:  # another training key: the mean under that name
        assert rewards_from_json(raw, "score")["score"] == rewards["reward"]


@pytest.mark.parametrize("raw", [b"[1]", b"{}", b'{"reward": "1"}', b'{"reward": true}', b'{"reward": NaN}', b"nope"])
def test_malformed_reward_json_is_a_verifier_error(raw):
    from pipeline.tasks.verifier import parse_reward_json

    with pytest.raises(VerifierError):
        parse_reward_json(raw)


@pytest.mark.parametrize("raw", [b"", b"1 1", b"inf", b"one"])
def test_malformed_reward_txt_is_a_verifier_error(raw):
    from pipeline.tasks.verifier import parse_reward_txt

    with pytest.raises(VerifierError):
        parse_reward_txt(raw)


def test_harbor_task_toml_is_read_as_harbor_reads_it(monkeypatch):
    monkeypatch.setenv("ECHO_RL_FIXTURE_TOTAL", "61")
    t = load_task(FIXTURES / "harbor-reward-json")
    assert (t.memory_mb, t.storage_mb, t.cpus, t.network, t.verifier_timeout_s) == (1024, 2048, 1.0, "none", 60.0)
    assert t.verifier_env == {"EXPECTED_TOTAL": "61"}  # ${VAR:-default} resolved on the host
    assert t.extra["environment.future_field"] == "kept, not an error" and t.extra["version"] == "1.0"
    assert set(t.solution_files) == {"/solution/solve.sh", "/solution/summarize.py"}
    assert t.dockerfile == FIXTURES / "harbor-reward-json/environment/Dockerfile"
    tb = load_task(FIXTURES / "tb1-compose")
    assert tb.reward_from == "pytest" and tb.dockerfile == (FIXTURES / "tb1-compose/Dockerfile").resolve()
    assert tb.env["TEST_DIR"] == "/tests" and tb.env["MATHX_LEVEL"] == "basic"


def test_malformed_task_toml_values_name_the_field(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests/test.sh").write_text("true\n")
    (tmp_path / "instruction.md").write_text("x")
    for body, field in (('[agent]\ntimeout_sec = "soon"\n', "timeout_sec"), ('[environment]\nmemory = "lots"\n', "memory"),
                        ('[environment]\nnetwork_mode = "wifi"\n', "network_mode"), ('[verifier]\nenv = 3\n', "env")):  # fmt: skip
        (tmp_path / "task.toml").write_text(body)
        with pytest.raises(TaskFormatError, match=field):
            load_task(tmp_path)


def test_datasets_nested_one_level(tmp_path):
    from pipeline.tasks.formats import load_task_set

    generate(["files_mkdir"], 2, tmp_path / "registry" / "set-a", seed=1)
    generate(["csv_sum"], 1, tmp_path / "registry" / "set-b", seed=1)
    assert len(load_task_set(tmp_path / "registry")) == 3
    with pytest.raises(TaskFormatError, match="no task directories"):
        load_task_set(tmp_path / "registry" / "set-a" / "files_mkdir-1-0" / "tests")


@pytest.mark.timeout(1800)
@pytest.mark.docker
def test_tasks_check_passes_the_fixtures_on_docker(tmp_path):
    """The oracle run of every fixture, public and own, through the CLI on Podman."""
    from pipeline.sandbox import SandboxError
    from pipeline.sandbox.docker import DockerBackend

    try:
        DockerBackend(__import__("pipeline.sandbox", fromlist=["SandboxConfig"]).SandboxConfig(backend="docker"))
    except SandboxError as e:
        pytest.skip(f"docker backend unavailable: {e}")
    out = tmp_path / "check.json"
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "tasks", "check", str(FIXTURES), "--config",
                        str(FIXTURES / "check.yaml"), "--jobs", "2", "--json", str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=1500)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    rows = json.loads(out.read_text())["tasks"]
    assert {row["task"] for row in rows} == {"tb1-hello-world", "harbor-reward-json", "harbor-service", "tb1-compose",
                                          "harbor-compose-service", "harbor-pytest-ctrf", "harbor-root-service",
                                          "harbor-entrypoint-service", "harbor-build-installs", "harbor-agent-user"}
    assert all((row["noop"], row["oracle"]) == (0.0, 1.0) for row in rows)
    assert json.loads(out.read_text())["tasks"][0]["rewards"]  # the named rewards are reported


def test_tasks_check_fails_a_broken_task_with_its_cause(tmp_path):
    (d,) = generate(["files_mkdir"], 1, tmp_path / "set", seed=2)
    (d / "solution" / "solve.sh").write_text("#!/bin/bash\ntrue\n")  # a reference solution that solves nothing
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "tasks", "check", str(tmp_path / "set")],
                       capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert r.returncode == 1 and "the reference solution scores 0" in r.stdout, r.stdout + r.stderr[-2000:]


def test_unmapped_image_fails_with_one_line_naming_it(tmp_path):
    from pipeline.sandbox import SandboxConfig, SandboxError
    from pipeline.sandbox.docker import DockerBackend

    try:
        b = DockerBackend(SandboxConfig(backend="docker"))
    except SandboxError as e:
        pytest.skip(f"docker backend unavailable: {e}")
    import shutil

    shutil.copytree(FIXTURES / "tb1-hello-world", tmp_path / "t")
    public = "registry.example.invalid/no-stand-in/base:1"  # no stand-in is tagged under this name
    (tmp_path / "t" / "Dockerfile").write_text(f"FROM {public}\nWORKDIR /app\n")
    task = load_task(tmp_path / "t")
    try:  # an earlier run's mapped build tagged the stand-in under this name (the control below)
        b.client.images.remove(public)
    except Exception:  # noqa: BLE001 - not there
        pass
    with pytest.raises(SandboxError, match=r"registry.example.invalid/no-stand-in/base:1.*sandbox.image_map"):
        b.start(task=task)
    mapped = DockerBackend(SandboxConfig(backend="docker", image_map={public: "ubuntu:24.04"}))
    with mapped.start(task=task) as box:  # positive control: mapped, it builds and runs
        assert box.exec("pwd").output == "/app\n"


def test_crashed_verifier_is_an_infra_error_not_zero(backend, tmp_path):
    from pipeline.tasks import verify

    (task_dir,) = generate(["files_mkdir"], 1, tmp_path)
    (task_dir / "tests" / "test.sh").write_text("#!/bin/bash\nexit 3\n")  # writes no reward
    task = load_task(task_dir)
    with backend.start(task_dir=task_dir) as sb:
        with pytest.raises(VerifierError, match="wrote no /logs/verifier/reward.json or /logs/verifier/reward.txt"):
            run_verifier(task, sb)
    with backend.start(task=task) as sb:  # it fails on a fresh sandbox too: the task's fault, not the agent's
        with pytest.raises(VerifierError, match="on a fresh sandbox too"):
            verify(task, sb, backend, backend.cfg)


def test_malformed_task_dirs_name_the_problem(tmp_path):
    with pytest.raises(TaskFormatError, match="neither a Harbor"):
        load_task(tmp_path)
    (tmp_path / "task.toml").write_text("not = [valid")
    (tmp_path / "instruction.md").write_text("x")
    with pytest.raises(TaskFormatError, match="task.toml"):
        load_task(tmp_path)


def test_bwrap_refuses_dockerfiles_it_cannot_reproduce(backend, tmp_path):
    from pipeline.sandbox import SandboxError

    (task_dir,) = generate(["files_mkdir"], 1, tmp_path)
    backend.start(task_dir=task_dir).close()  # the generated form is fine
    (task_dir / "environment" / "Dockerfile").write_text("FROM debian:bookworm-slim\nRUN apt-get install -y jq\n")
    with pytest.raises(SandboxError, match="use sandbox.backend=docker"):
        backend.start(task_dir=task_dir)


def test_held_out_instances_never_meet_training_ones(tmp_path):
    """For a grid of seeds, steps and counts, no training instance is an evaluation one
    (the old scheme collided at run.seed=10 with 11 tasks per step)."""
    from pipeline.tasks.sets import TaskSampler, TaskSetConfig

    for seed in (0, 1, 10, 11, 1234):
        s = TaskSampler(TaskSetConfig(families=["csv_sum"], eval_per_family=12), tmp_path / f"s{seed}", seed)
        ident = lambda t: {t.task_id, (t.task_dir / "environment/app/sales.csv").read_text()}  # noqa: E731
        held = set().union(*(ident(t) for t in s.eval_tasks()))
        for step in (0, 1, 9):
            trained = set().union(*(ident(t) for t in s.for_step(step, 12)))
            assert not trained & held, (seed, step)


def test_a_task_in_both_training_and_eval_dirs_is_an_error(tmp_path):
    from pipeline.tasks.sets import TaskSampler, TaskSetConfig

    generate(["files_mkdir"], 2, tmp_path / "train", seed=1)
    generate(["files_mkdir"], 1, tmp_path / "eval", seed=1)  # files_mkdir-1-0 again
    with pytest.raises(TaskFormatError, match="files_mkdir-1-0"):
        TaskSampler(TaskSetConfig(train_dirs=[str(tmp_path / "train")], eval_dirs=[str(tmp_path / "eval")]), tmp_path, 0)
    generate(["csv_sum"], 1, tmp_path / "eval2", seed=1)  # positive control: disjoint sets start
    s = TaskSampler(TaskSetConfig(train_dirs=[str(tmp_path / "train")], eval_dirs=[str(tmp_path / "eval2")]), tmp_path, 0)
    assert len(s.for_step(0, 2)) == 2 and [t.task_id for t in s.eval_tasks()] == ["csv_sum-1-0"]


def test_the_tasks_own_agent_user_runs_the_agent_with_agent_user_task(tmp_path):
    """`[agent] user` (Harbor): with sandbox.agent_user=task, the agent's commands run as
    that account of the task's image; unknown accounts are refused naming the field."""
    from pipeline.sandbox import SandboxConfig, SandboxError
    from pipeline.sandbox.docker import DockerBackend
    from pipeline.tasks import verify

    try:
        own = DockerBackend(SandboxConfig(backend="docker", agent_user="task"))
    except SandboxError as e:
        pytest.skip(f"docker backend unavailable: {e}")
    d = tmp_path / "own-user"
    (d / "environment").mkdir(parents=True)
    (d / "tests").mkdir()
    (d / "instruction.md").write_text("Write ok to /app/out.txt\n")
    (d / "task.toml").write_text('[agent]\nuser = "app"\n[environment]\nallow_internet = false\n')
    (d / "environment" / "Dockerfile").write_text(
        "FROM debian:bookworm-slim\nRUN useradd -m -u 1234 app && mkdir -p /app && chown app /app\nWORKDIR /app\n")
    (d / "tests" / "test.sh").write_text(
        '#!/bin/bash\n[ "$(stat -c %U /app/out.txt)" = app ] && grep -qx ok /app/out.txt '
        '&& echo 1 > /logs/verifier/reward.txt || echo 0 > /logs/verifier/reward.txt\n')
    task = load_task(d)
    with own.start(task=task) as box:
        assert box.exec("id -un; echo $HOME").output == "app\n/home/app\n"
        box.exec("echo ok > /app/out.txt")
        assert verify(task, box, own, own.cfg).reward == 1.0
    default = DockerBackend(SandboxConfig(backend="docker", agent_user="unprivileged"))  # control: the sandbox's own user
    with default.start(task=task) as box:
        assert box.exec("id -un").output == "echo-agent\n"
    (d / "task.toml").write_text('[agent]\nuser = "nobody-here"\n')
    with pytest.raises(SandboxError, match="user 'nobody-here' is not an account of its image"):
        own.start(task=load_task(d))
