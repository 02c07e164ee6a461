"""No privilege and no configuration crosses into the verifier (``pipeline/sandbox/boundary.py``).

Through the real episode path (``run_episode``, one crafted command, the verifier as in
training), a root agent on docker:
- privilege carried in file metadata (a setuid copy of python3, a copy with a file
  capability) that the agent's programs exec when the check runs them as the agent: each of
  the three defences (``boundary.Defences``) alone stops it, and with all three off it scores
  1 (the positive control: the attack is real);
- configuration above the verifier's files (pytest's ini file and a passing ``conftest.py``
  at ``/``): it stays behind under ``separate``, and scores 1 where the verifier shares the
  agent's sandbox (the positive control).
Unit checks of the same rules (``crosses``, ``filter_tar``, the sweep) run without a sandbox.
"""

import io
import os
import stat
import subprocess
import sys
import tarfile

import pytest

from pipeline.sandbox import boundary
from pipeline.tasks import load_task
from pipeline.tasks.attacks import BY_NAME
from pipeline.tasks.generator import generate
from tests.test_reward_integrity import FIXTURES, IMAGE_MAP, _backend, _episode, chat  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(600)

LAYERS = ("strip_privilege", "no_new_privs_container", "no_new_privs_drop")


@pytest.fixture(scope="module")
def python_fix(tmp_path_factory):
    out = tmp_path_factory.mktemp("priv")
    out.chmod(0o755)
    (d,) = generate(["python_fix"], 1, out, seed=5)
    task = load_task(d)
    ORIGINAL[task.task_id] = dict(task.tests)
    assert b"--no-new-privs --inh-caps=-all " in task.tests["/tests/test.sh"]
    return task


@pytest.fixture(scope="module")
def root_docker(task_rootfs, tmp_path_factory):
    return _backend("docker", task_rootfs, tmp_path_factory.mktemp("sb"), agent_user="root", image_map=IMAGE_MAP)


def _defences(monkeypatch, on: tuple[str, ...], task=None):
    """Switch the layers; the task's own drop (its ``as_agent``) follows ``no_new_privs_drop``."""
    for layer in LAYERS:
        monkeypatch.setattr(boundary.DEFENCES, layer, layer in on, raising=False)
    if task is not None:
        flags = boundary.drop_flags().encode()
        monkeypatch.setattr(task, "tests", {k: v.replace(b"--no-new-privs --inh-caps=-all ", flags)
                                            for k, v in ORIGINAL[task.task_id].items()})  # fmt: skip


ORIGINAL: dict = {}


@pytest.mark.docker
@pytest.mark.parametrize("attack", ["setuid_copy", "file_capability_copy"])
def test_privilege_in_file_metadata_never_crosses(attack, python_fix, root_docker, chat, monkeypatch):
    """Each layer alone holds; all three off, the attack scores 1 (it is real)."""
    command = BY_NAME[attack].command
    _defences(monkeypatch, (), python_fix)
    open_door = _episode(python_fix, [command], root_docker, chat)
    assert (open_door.infra_error, open_door.reward) == (False, 1.0), open_door.metadata
    for layer in LAYERS:
        _defences(monkeypatch, (layer,), python_fix)
        traj = _episode(python_fix, [command], root_docker, chat)
        assert (traj.infra_error, traj.reward) == (False, 0.0), (layer, traj.metadata)
    _defences(monkeypatch, LAYERS, python_fix)
    good = _episode(python_fix, [python_fix.solution], root_docker, chat)
    assert (good.infra_error, good.reward) == (False, 1.0), good.metadata


@pytest.mark.docker
def test_configuration_above_the_verifier_stays_behind(task_rootfs, root_docker, chat, tmp_path):
    """pytest's ini file and a conftest that passes every test, at ``/`` and above the work
    dir: a Harbor task whose test.sh runs ``pytest /tests/test_outputs.py`` scores 0 for the
    no-op under ``separate``; in the agent's own sandbox (Harbor's ``same``) 1 (the control)."""
    task = load_task(FIXTURES / "harbor-pytest-ctrf")
    command = BY_NAME["config_above"].command
    same = _backend("docker", task_rootfs, tmp_path, profile="harbor", image_map=IMAGE_MAP)
    control = _episode(task, [command], same, chat)
    assert (control.infra_error, control.reward) == (False, 1.0), control.metadata
    traj = _episode(task, [command], root_docker, chat)
    assert (traj.infra_error, traj.reward) == (False, 0.0), traj.metadata
    good = _episode(task, [task.solution], root_docker, chat)
    assert (good.infra_error, good.reward) == (False, 1.0), good.metadata


def test_crosses_is_an_allow_list_with_nothing_above_the_verifier():
    assert boundary.crosses("/app/x.py", "/app") and boundary.crosses("/app/.git/index", "/app")
    assert boundary.crosses("/home/u/notes", "/app") and boundary.crosses("/logs/agent/a.txt", "/app")
    assert boundary.crosses("/srv/work/total.txt", "/srv/work") and boundary.crosses("/etc/nginx/x.conf", "/app")
    for p in ("/conftest.py", "/pytest.ini", "/pyproject.toml", "/node_modules", "/.git/config", "/logs/conftest.py",
              "/newtop/x", "/usr/local/bin/python3", "/tmp/x", "/tests/x", "/root/.local/bin/uv", "/etc/profile"):
        assert not boundary.crosses(p, "/app"), p
    # the directories above a work dir deeper down: their data crosses, their configuration not
    for p in ("/srv/pytest.ini", "/srv/conftest.py", "/srv/node_modules", "/srv/__init__.py", "/srv/Makefile",
              "/home/u/.git", "/home/u/pyproject.toml", "/home/u/x.pth", "/home/conftest.py"):
        assert not boundary.crosses(p, "/home/u/proj" if p.startswith("/home") else "/srv/work"), p
    assert boundary.crosses("/home/u/proj/.git", "/home/u/proj") and boundary.crosses("/home/u/word.txt", "/home/u/proj")
    assert boundary.crosses("/srv/data.csv", "/srv/work") and boundary.crosses("/home/u/proj/conftest.py", "/home/u/proj")
    assert boundary.crosses("/home/u", "/home/u/proj") and boundary.crosses("/srv/other/x", "/app")


def _member(name: str, mode: int, xattr: bool = True) -> tarfile.TarInfo:
    m = tarfile.TarInfo(name)
    m.size, m.mode = 3, mode
    if xattr:
        m.pax_headers = {"SCHILY.xattr.security.capability": "\x01\x00\x00\x02", "SCHILY.acl.access": "u::rwx"}
    return m


def _filtered(monkeypatch, strip: bool) -> dict[str, tarfile.TarInfo]:
    monkeypatch.setattr(boundary.DEFENCES, "strip_privilege", strip, raising=False)
    src = io.BytesIO()
    with tarfile.open(fileobj=src, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, mode in (("app/.p", 0o4755), ("app/.git/index", 0o644), ("app/g", 0o2755), ("./app/d", 0o2775)):
            m = _member(name, mode)
            if name.endswith("/d"):
                m.type, m.size = tarfile.DIRTYPE, 0
                tar.addfile(m)
            else:
                tar.addfile(m, io.BytesIO(b"abc"))
    out = io.BytesIO()
    boundary.filter_tar([src.getvalue()], "/", out, {"bytes": 1 << 20, "entries": 100}, workdir="/app")
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        return {m.name.removeprefix("./"): m for m in tar.getmembers()}


def test_filter_tar_strips_privilege_and_keeps_dot_directories(monkeypatch):
    kept = _filtered(monkeypatch, strip=True)
    assert set(kept) == {"app/.p", "app/.git/index", "app/g", "app/d"}  # ".git" keeps its dot
    assert kept["app/.p"].mode == 0o755 and kept["app/g"].mode == 0o755 and kept["app/d"].mode == 0o2775
    assert not any(k.startswith("SCHILY") for m in kept.values() for k in m.pax_headers)
    control = _filtered(monkeypatch, strip=False)  # the control: the same stream, unstripped
    assert control["app/.p"].mode == 0o4755 and "SCHILY.xattr.security.capability" in control["app/.p"].pax_headers


@pytest.mark.skipif(os.geteuid() != 0, reason="setting a security xattr needs root")
def test_the_sweep_strips_privilege_in_place(tmp_path, monkeypatch):
    f, d = tmp_path / "p", tmp_path / "d"
    f.write_bytes(b"x")
    d.mkdir()
    for strip in (False, True):
        os.chmod(f, 0o6755)
        os.chmod(d, 0o2775)
        os.setxattr(f, "trusted.echo", b"1")
        os.setxattr(f, "user.keep", b"1")
        monkeypatch.setattr(boundary.DEFENCES, "strip_privilege", strip, raising=False)
        cmd = boundary.sweep_command([str(tmp_path)]).replace("python3 -I", f"{sys.executable} -I", 1)
        out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=60)
        assert "sweep-removed 0" in out.stdout, out
        mode, names = stat.S_IMODE(os.stat(f).st_mode), os.listxattr(f)
        if strip:
            assert (mode, stat.S_IMODE(os.stat(d).st_mode), names) == (0o755, 0o2775, ["user.keep"])
        else:  # the control: nothing changes without the defence
            assert mode == 0o6755 and "trusted.echo" in names


@pytest.mark.docker
def test_audit_flags_a_task_that_runs_the_agents_program_as_root(tmp_path):
    """`echo-rl tasks audit` tries, for every program of the agent's that a verifier may run,
    a stand-in that writes the reward files, reads /tests and forges a pytest summary:
    the fixture whose test.sh runs /app/solve.py as root is flagged; the same task running
    it as the agent (``setpriv``, no-new-privs) is not (the control)."""
    import json
    import shutil

    root = tmp_path / "hole"
    shutil.copytree(FIXTURES.parent / "audit" / "harbor-root-runs-program", root / "t")
    sound = tmp_path / "sound" / "t"
    shutil.copytree(root / "t", sound)
    test_sh = sound / "tests" / "test.sh"
    test_sh.write_text(test_sh.read_text().replace(
        "out=$(python3", "chmod 644 /tmp/input.txt; out=$(setpriv --reuid=65534 --regid=65534 --clear-groups "
        "--no-new-privs -- python3"))  # fmt: skip
    for where, code in ((root, 1), (sound, 0)):
        r = subprocess.run([sys.executable, "-m", "pipeline.cli", "tasks", "audit", str(where), "--backend", "docker",
                            "--attacks", "code_reads_the_check", "--json", str(tmp_path / "a.json")],
                           capture_output=True, text=True, timeout=300, cwd=FIXTURES.parents[2])  # fmt: skip
        assert r.returncode == code, (where, r.stdout + r.stderr[-2000:])
        got = json.loads((tmp_path / "a.json").read_text())["tasks"][0]["got_through"]
        assert got == (["code_reads_the_check"] if code else []), got


@pytest.mark.docker
def test_fixed_attacks_work_where_nothing_stops_them(python_fix, task_rootfs, tmp_path, chat):
    """The two attacks that could not raise a reward even undefended, fixed, and shown to
    work where their defence is absent: ``background_rewriter`` under Harbor's semantics
    (the agent's processes run on into the verifier: reward.json, read first, says 1), and
    ``user_site_pth`` for a Python that honours the agent's user site (the payload runs)."""
    harbor = _backend("docker", task_rootfs, tmp_path, profile="harbor", image_map=IMAGE_MAP)
    traj = _episode(python_fix, [BY_NAME["background_rewriter"].command], harbor, chat)
    assert (traj.infra_error, traj.reward) == (False, 1.0), traj.metadata
    with harbor.start(task=python_fix) as box:
        box.exec(BY_NAME["user_site_pth"].command)
        box.exec("python3 -c pass")  # the agent's own python (its user site on)
        assert box.read_file("/logs/verifier/reward.txt") == b"1"
        assert box.read_file("/logs/verifier/reward.json") == b'{"reward": 1}'
