"""Task sets in a real sandbox: every generated family's solution scores 1 and doing
nothing scores 0; Harbor and Terminal-Bench task dirs load and run their tests."""

import pytest

from pipeline.sandbox import SandboxConfig
from pipeline.sandbox.bwrap import BwrapBackend
from pipeline.tasks import TaskFormatError, VerifierError, load_task, run_verifier
from pipeline.tasks.generator import FAMILIES, generate



@pytest.fixture(scope="module")
def backend(tmp_path_factory, task_rootfs):
    cfg = SandboxConfig(rootfs=task_rootfs, timeout_s=20)
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


def test_terminal_bench_task_loads_and_runs(backend, tmp_path):
    d = tmp_path / "tb-hello"
    (d / "tests").mkdir(parents=True)
    (d / "task.yaml").write_text("instruction: Write hello to /app/hello.txt\nmax_agent_timeout_sec: 100\nmax_test_timeout_sec: 30\n")
    (d / "run-tests.sh").write_text("#!/bin/bash\npython3 /tests/test_hello.py\n")
    (d / "tests" / "test_hello.py").write_text("assert open('/app/hello.txt').read().strip() == 'hello'\n")
    (d / "solution.sh").write_text("echo hello > /app/hello.txt\n")
    (d / "Dockerfile").write_text("FROM echo-rl-base:latest\n")
    task = load_task(d)
    assert task.verifier_timeout_s == 30 and task.reward_from == "exit_code"
    with backend.start(task_dir=d) as sb:
        assert run_verifier(task, sb) == 0.0
    with backend.start(task_dir=d) as sb:
        sb.exec(task.solution)
        assert run_verifier(task, sb) == 1.0


def test_crashed_verifier_is_an_infra_error_not_zero(backend, tmp_path):
    (task_dir,) = generate(["files_mkdir"], 1, tmp_path)
    (task_dir / "tests" / "test.sh").write_text("#!/bin/bash\nexit 3\n")  # writes no reward
    task = load_task(task_dir)
    with backend.start(task_dir=task_dir) as sb:
        with pytest.raises(VerifierError, match="wrote no /logs/verifier/reward.txt"):
            run_verifier(task, sb)


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
