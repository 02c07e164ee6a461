"""Honest work always scores: every task format × every pytest output mode × every kind of
change an honest agent makes, through the real episode path on both backends. The oracle
scores 1, the no-op 0; and on docker ``separate`` (the default) agrees with ``same``
(Harbor's semantics: the verifier in the agent's own container) on every oracle.

One task per format and output mode, whose check demands every kind of change at once:
a new file, an edit inside a directory the image already had, dot-directories (edited and
new), a commit in a git repository the image already had (``git status`` clean after it),
a file owned by another user (where the agent is root), a symbolic link, an empty
directory, a deletion, an executable bit.
"""

import shutil
import subprocess
from dataclasses import replace

import pytest

from pipeline.tasks import load_task
from tests.test_reward_integrity import IMAGE_MAP, _backend, _episode, chat  # noqa: F401 (fixture)

pytestmark = [pytest.mark.timeout(900), pytest.mark.redteam]

ORACLE = r"""set -e
cd /app
mkdir -p new && echo hello > new/hello.txt
echo edited >> data/keep.txt
echo edited >> .config/tool.conf
mkdir -p .cache2 && echo x > .cache2/x
rm data/old.txt
ln -s new/hello.txt link
mkdir emptydir
printf '#!/bin/sh\necho ran\n' > run.sh && chmod 755 run.sh
cd repo && echo fixed > f.txt && git add f.txt && git -c user.name=a -c user.email=a@b commit -qm honest-commit
if [ "$(id -u)" = 0 ]; then cd /app && echo mine > owned.txt && chown 1234:1234 owned.txt; fi
"""

CHECK = r"""#!/bin/bash
export GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=safe.directory GIT_CONFIG_VALUE_0='*'
cd /app || exit 1
fail() { echo "FAIL: $1"; exit 1; }
[ "$(cat new/hello.txt)" = hello ] || fail new
[ "$(tail -1 data/keep.txt)" = edited ] || fail edit
[ "$(tail -1 .config/tool.conf)" = edited ] || fail dotdir-edit
[ -f .cache2/x ] || fail dotdir-new
[ ! -e data/old.txt ] || fail deletion
[ "$(readlink link)" = new/hello.txt ] || fail link
[ -d emptydir ] || fail emptydir
[ "$(./run.sh)" = ran ] || fail exec
[ "$(git -C repo log -1 --format=%s)" = honest-commit ] || fail commit
[ -z "$(git -C repo status --porcelain)" ] || fail "git status: $(git -C repo status --porcelain | head -3)"
if [ -e owned.txt ]; then [ "$(stat -c %u:%g owned.txt)" = 1234:1234 ] || fail "owner $(stat -c %u:%g owned.txt)"; fi
echo all-changes-seen
"""

TEST_OUTPUTS = """import subprocess


def test_every_change_is_seen():
    r = subprocess.run(["bash", "/tests/check.sh"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
"""

# Terminal-Bench 1's pytest runs in the shapes its tasks use (all need -rA for TB's parser)
PYTEST_MODES = {"rA": "-rA", "q": "-q -rA", "v": "-v -rA", "plugins": "-rA -p no:cacheprovider -p no:randomly"}
FORMATS = ["harbor-txt", "harbor-json", "exit-code", *(f"tb1-{m}" for m in PYTEST_MODES)]


def _image(d):
    app = d / "environment" / "app"
    (app / "data").mkdir(parents=True)
    (app / "data" / "keep.txt").write_text("kept\n")
    (app / "data" / "old.txt").write_text("to delete\n")
    (app / ".config").mkdir()
    (app / ".config" / "tool.conf").write_text("a = 1\n")
    repo = app / "repo"
    repo.mkdir()
    (repo / "f.txt").write_text("broken\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git[:3] + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "f.txt"], check=True)
    subprocess.run(git + ["commit", "-qm", "initial"], check=True)
    (d / "environment" / "Dockerfile").write_text("FROM debian:bookworm-slim\nWORKDIR /app\nCOPY app/ /app/\n")


def _task(root, fmt: str):
    d = root / fmt
    (d / "tests").mkdir(parents=True)
    _image(d)
    (d / "tests" / "check.sh").write_text(CHECK)
    if fmt.startswith("tb1-"):
        (d / "environment" / "Dockerfile").unlink()  # TB1: the Dockerfile at the top, its context the task dir
        shutil.copytree(d / "environment" / "app", d / "app", symlinks=True)  # (bwrap seeds from environment/app)
        (d / "Dockerfile").write_text("FROM ghcr.io/laude-institute/t-bench/ubuntu-24-04:latest\nWORKDIR /app\n"
                                      "COPY app/ /app/\n")
        (d / "task.yaml").write_text("instruction: |-\n  Make every change.\nparser_name: pytest\n"
                                     "max_agent_timeout_sec: 300.0\nmax_test_timeout_sec: 120.0\n")  # fmt: skip
        (d / "solution.sh").write_text(ORACLE)
        (d / "tests" / "test_outputs.py").write_text(TEST_OUTPUTS)
        mode = PYTEST_MODES[fmt[4:]]
        (d / "run-tests.sh").write_text(f"#!/bin/bash\ncd /app\npython3 -P -m pytest $TEST_DIR/test_outputs.py {mode}\n")
    else:
        (d / "instruction.md").write_text("Make every change.\n")
        (d / "task.toml").write_text('version = "1.0"\n[verifier]\ntimeout_sec = 120\n[agent]\ntimeout_sec = 300\n')
        (d / "solution").mkdir()
        (d / "solution" / "solve.sh").write_text(ORACLE)
        write = {"harbor-txt": 'echo "$r" > /logs/verifier/reward.txt',
                 "harbor-json": 'printf \'{"reward": %d, "seen": %d}\\n\' "$r" "$r" > /logs/verifier/reward.json',
                 "exit-code": 'exit $((1 - r))'}[fmt]  # fmt: skip
        (d / "tests" / "test.sh").write_text(f"#!/bin/bash\nif bash /tests/check.sh; then r=1; else r=0; fi\n{write}\n")
    task = load_task(d)
    if fmt == "exit-code":
        task = replace(task, reward_from="exit_code")
    return task


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    root = tmp_path_factory.mktemp("honest")
    root.chmod(0o755)
    return {fmt: _task(root, fmt) for fmt in FORMATS}


@pytest.fixture(scope="module", params=["bwrap", "docker"])
def backend(request, task_rootfs, tmp_path_factory):
    root = tmp_path_factory.mktemp("sandboxes")
    root.chmod(0o755)
    return _backend(request.param, task_rootfs, root, image_map=IMAGE_MAP)


@pytest.mark.parametrize("fmt", FORMATS)
def test_oracle_scores_one_and_noop_zero(fmt, tasks, backend, chat):
    task = tasks[fmt]
    good = _episode(task, [task.solution], backend, chat)
    assert (good.infra_error, good.reward) == (False, 1.0), (fmt, good.metadata)
    noop = _episode(task, ["true"], backend, chat)
    assert (noop.infra_error, noop.reward) == (False, 0.0), (fmt, noop.metadata)


@pytest.mark.docker
def test_separate_agrees_with_same_on_honest_work(tasks, task_rootfs, tmp_path, chat):
    same = _backend("docker", task_rootfs, tmp_path, verifier_isolation="same", image_map=IMAGE_MAP)
    for fmt in ("harbor-txt", "tb1-q"):
        traj = _episode(tasks[fmt], [tasks[fmt].solution], same, chat)
        assert (traj.infra_error, traj.reward) == (False, 1.0), (fmt, traj.metadata)


def test_quiet_pytest_summary_is_honest():
    """The TB1 parser on each output shape pytest prints: -q's final line has no rules."""
    from pipeline.tasks.verifier import pytest_reward

    summary = "=========================== short test summary info ============================\nPASSED t.py::test_a\n"
    assert pytest_reward(summary + "1 passed in 0.01s\n", 0) == 1.0
    assert pytest_reward(summary + "============================== 1 passed in 0.01s ===============================\n", 0) == 1.0
    assert pytest_reward(summary + "1 passed, 2 warnings in 0.31s\n", 0) == 1.0
    assert pytest_reward(summary, 0) == 0.0  # no final line after the summary: forged, then killed
    assert pytest_reward(summary + "1 passed in 0.01s\n", 1) == 0.0
    assert pytest_reward(summary + "echo 1 passed in 0.01s\n", 0) == 0.0
