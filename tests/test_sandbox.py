"""The hostile-command suite on both backends: bubblewrap (real bwrap, real Debian rootfs)
and docker (the docker SDK against Podman's Docker Engine API, the rootfs as the image).

CI sets both up (make setup: bubblewrap, debootstrap, the rootfs, tools/podman_setup.sh);
where one is missing locally its tests are skipped with the reason.
"""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from pipeline.sandbox import SandboxConfig, SandboxError
from pipeline.sandbox.bwrap import PREFIX, BwrapBackend, _Cgroup

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rootfs(task_rootfs):  # tests/conftest.py builds or finds it (skips without bubblewrap)
    return task_rootfs


def _cfg(rootfs):
    # the unprivileged agent: these tests check that boundary (root agents: test_reward_integrity.py)
    return SandboxConfig(rootfs=rootfs, timeout_s=5, output_bytes=1000, pids=64, memory_mb=256, agent_user="unprivileged")


@pytest.fixture(params=["bwrap", "docker"])
def backend(request, rootfs, tmp_path):
    if request.param == "bwrap":
        return BwrapBackend(_cfg(rootfs), root=tmp_path / "sandboxes")
    from pipeline.sandbox.docker import DockerBackend

    try:
        return DockerBackend(_cfg(rootfs))
    except SandboxError as e:
        pytest.skip(f"docker backend unavailable: {e}")


@pytest.fixture()
def bwrap_backend(rootfs, tmp_path):
    return BwrapBackend(_cfg(rootfs), root=tmp_path / "sandboxes")


def _host_procs_matching(token: str) -> list[str]:
    """Host processes whose command line holds ``token`` as whole words ("sleep 30" is not
    "sleep 300", which something else on a shared machine may run)."""
    import re

    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    word = re.compile(rf"(^|\s){re.escape(token)}($|\s)")
    return [line for line in out.splitlines() if word.search(line) and "ps -eo" not in line]


def test_plain_commands_and_files_persist(backend):
    with backend.start() as sb:
        r = sb.exec("echo hello; python3 -c 'print(6*7)'; pwd")
        assert (r.exit_code, r.output) == (0, "hello\n42\n/app\n")
        assert sb.exec("echo data > f.txt").exit_code == 0
        assert sb.exec("cat f.txt").output == "data\n"
        assert sb.exec("exit 3").exit_code == 3
        assert sb.exec("echo err >&2").output == "err\n"


def test_network_access_fails(backend):
    with backend.start() as sb:
        r = sb.exec("python3 -c \"import socket; s=socket.socket(); s.settimeout(2); s.connect(('1.1.1.1', 80))\"")
        assert r.exit_code != 0 and "Network is unreachable" in r.output
        assert sb.exec("getent hosts deb.debian.org").exit_code != 0


def test_fork_bomb_is_contained_and_leaves_nothing(backend):
    token = f"bomb{os.getpid()}"
    with backend.start() as sb:
        r = sb.exec(f"{token}() {{ {token} | {token} & }}; {token}; sleep 1; echo survived")
        # Either the command's timeout fired, or (docker) the bomb held every pid of the
        # container's limit while the wrapper shell needed one more fork: bash then exits
        # without its trailer and the result says the command's shell was killed.
        assert r.exit_code is not None or r.timed_out or r.killed
        assert r.exit_code is not None or r.notices(backend.cfg)  # the agent is told why it has no exit code
        if isinstance(backend, BwrapBackend):  # nothing outlives its command
            time.sleep(0.2)
            assert _host_procs_matching(token) == []
            assert sb.exec("echo still-usable").output == "still-usable\n"
        else:  # docker keeps it (as Harbor does) inside the pids limit; the sandbox lives on
            assert len(_host_procs_matching(token)) <= backend.cfg.pids
            assert sb.alive()
    time.sleep(0.5)
    assert _host_procs_matching(token) == []  # everything died with the container


def test_background_processes_live_as_the_backend_says(backend):
    marker = f"sleep {4242 + os.getpid() % 1000}"
    with backend.start() as sb:
        assert sb.exec(f"nohup {marker} > /dev/null 2>&1 & echo started").output == "started\n"
        if isinstance(backend, BwrapBackend):  # no container to bound them: killed after each command
            assert _host_procs_matching(marker) == []
        else:  # Harbor's one live container: a server the agent starts answers in later commands
            assert sb.exec(f"pgrep -f '{marker}' >/dev/null && echo running").output == "running\n"
            sb.exec("cd /app && nohup python3 -m http.server 8765 --bind 127.0.0.1 > /dev/null 2>&1 &")
            r = sb.exec("for i in $(seq 50); do python3 -c \"import urllib.request as u; "
                        "print(u.urlopen('http://127.0.0.1:8765/').status)\" 2>/dev/null && break; sleep 0.1; done")
            assert r.output.strip() == "200"
    assert _host_procs_matching(marker) == []


def test_huge_output_is_capped_with_a_notice(backend):
    with backend.start() as sb:
        start = time.monotonic()
        r = sb.exec("head -c 1000000000 /dev/zero | tr '\\0' 'x'")
        assert time.monotonic() - start < 5
        assert len(r.output) == 1000 and r.truncated
        notices = r.notices(backend.cfg)
        assert any("output truncated" in n for n in notices)


def test_timeout_kills_with_a_notice(backend):
    with backend.start() as sb:
        r = sb.exec("echo before; sleep 30", timeout_s=1)
        assert r.timed_out and r.exit_code is None and r.output == "before\n"
        assert r.duration_s < 3
        assert any("timed out after" in n for n in r.notices(backend.cfg))
        assert _host_procs_matching("sleep 30") == []


def test_memory_limit(backend):
    with backend.start() as sb:
        r = sb.exec("python3 -c 'x = bytearray(1 << 30); print(len(x))'")
        assert r.exit_code != 0 and "1073741824" not in r.output


def test_rm_rf_root_leaves_host_and_next_episode_untouched(backend, tmp_path):
    canary = tmp_path / "canary"
    canary.write_text("alive")
    with backend.start() as sb:
        sb.exec("echo mine > mine.txt")
        sb.exec("rm -rf --no-preserve-root / 2>/dev/null; true")
        if isinstance(backend, BwrapBackend):  # read-only root: only its own work dir went
            assert sb.exec("ls /app").output == ""
    assert canary.read_text() == "alive"
    with backend.start() as sb2:
        r = sb2.exec("ls /usr/bin/python3 && ls /app | wc -l")
        assert r.output == "/usr/bin/python3\n0\n"


def test_host_files_are_invisible(backend, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    with backend.start() as sb:
        for path in (secret, Path.home(), ROOT / "pyproject.toml", Path("/etc/shadow")):
            r = sb.exec(f"cat {path} 2>&1; ls {path} 2>&1")
            assert "TOPSECRET" not in r.output and "echo-rl" not in r.output
        assert "TOPSECRET" not in sb.exec("grep -rs TOPSECRET / 2>/dev/null | head -1").output


def test_tests_are_copied_in_after_the_agent(backend):
    with backend.start() as sb:
        assert sb.exec("ls /tests").output == ""
        sb.prepare_verifier(stop_agent=False)
        sb.put_files({"/tests/test.sh": b"#!/bin/bash\necho 1 > /logs/verifier/reward.txt\n"}, mode=0o755)
        # the verifier's ground is root's: the agent cannot write it, the verifier can
        assert "Permission denied" in sb.exec("bash /tests/test.sh").output
        assert sb.exec("bash /tests/test.sh", verifier=True).exit_code == 0
        assert sb.read_file("/logs/verifier/reward.txt") == b"1\n"
        if isinstance(backend, BwrapBackend):  # only the bound dirs are writable from the host
            with pytest.raises(SandboxError):
                sb.put_files({"/etc/passwd": b"x"})


def test_orphans_of_a_killed_trainer_are_reaped(bwrap_backend, tmp_path):
    backend = bwrap_backend
    # a "trainer" that starts a sandbox running a long command and is SIGKILLed
    script = tmp_path / "trainer.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from pipeline.sandbox import SandboxConfig\n"
        "from pipeline.sandbox.bwrap import BwrapBackend\n"
        f"b = BwrapBackend(SandboxConfig(rootfs={str(backend.rootfs)!r}, timeout_s=60), root={str(backend.root)!r})\n"
        "sb = b.start()\n"
        "print('ready', flush=True)\n"
        "sb.exec('sleep 7777')\n"
    )
    proc = subprocess.Popen(["python3", str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    proc.kill()
    proc.wait()
    time.sleep(0.3)
    assert _host_procs_matching("sleep 7777") == []  # --die-with-parent took the sandbox down
    leftovers = list(backend.root.glob(f"{PREFIX}{proc.pid}-*"))
    assert leftovers, "the killed trainer's episode dir should still be there before reaping"
    assert backend.reap_orphans() >= 1
    assert not list(backend.root.glob(f"{PREFIX}{proc.pid}-*"))
    if backend.use_cgroup:
        assert not any(d.exists() for d in _Cgroup(leftovers[0].name).dirs)


def test_cli_prints_the_agents_observation(backend):
    name = "bwrap" if isinstance(backend, BwrapBackend) else "docker"
    run = lambda *a: subprocess.run([str(Path(os.sys.executable).parent / "echo-rl"), "sandbox", "exec",  # noqa: E731
                                     "--backend", name, *a], capture_output=True, text=True)  # fmt: skip
    r = run("--", "echo out; echo err >&2; exit 4")
    assert r.returncode == 0 and r.stdout == "out\nerr\nexit code: 4\n"
    r = run("--timeout", "1", "--", "printf partial; sleep 5")
    assert r.stdout == "partial\nWARNING: command timed out after 1 s and was killed\n"
    r = subprocess.run([str(Path(os.sys.executable).parent / "echo-rl"), "sandbox", "exec", "--backend", "nope",
                        "--", "ls"], capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2 and "sandbox.backend must be bwrap, docker or maze" in r.stderr


def test_observation_segments_have_roles(backend):
    with backend.start() as sb:
        r = sb.exec("seq 1 2000")  # 8,893 bytes > the 1,000-byte cap, exits 0
        segments = r.observation(backend.cfg)
        assert [k for _, k in segments] == ["output", "output", "warning"]
        assert segments[1][0].strip() == "exit code: 0" and "output truncated" in segments[2][0]


@pytest.fixture()
def rlimit_backend(bwrap_backend):
    backend = bwrap_backend
    """The fallback for hosts without a writable cgroup hierarchy (a root trainer then runs
    sandboxes as uid 65534, so the rootfs and the sandbox root must be reachable by it)."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="echo-rl-rlimit-", dir="/tmp"))
    fallback = BwrapBackend(backend.cfg, root=root)
    fallback.use_cgroup = False
    if os.geteuid() == 0:
        fallback.run_as = 65534
        fallback._check_reachable_by(65534)
    yield fallback
    shutil.rmtree(root, ignore_errors=True)


def test_rlimit_fallback_contains_too(rlimit_backend):
    with rlimit_backend.start() as sb:
        assert sb.exec("echo ok > f; cat f").output == "ok\n"  # /app stays writable
        r = sb.exec("python3 -c 'x = bytearray(1 << 30); print(len(x))'")
        assert r.exit_code != 0 and "1073741824" not in r.output
        token = f"fbomb{os.getpid()}"
        r = sb.exec(f"{token}() {{ {token} | {token} & }}; {token}; sleep 1; echo done", timeout_s=3)
        time.sleep(0.2)
        assert _host_procs_matching(token) == []
        assert sb.exec("getent hosts example.com").exit_code != 0
        sb.put_files({"/tests/t.sh": b"echo 1 > /logs/verifier/reward.txt"})
        assert sb.exec("bash /tests/t.sh", verifier=True).exit_code == 0


def test_docker_orphans_of_dead_trainers_are_reaped(rootfs):
    from pipeline.sandbox.docker import HOST, OWNER, DockerBackend

    try:
        backend = DockerBackend(_cfg(rootfs))
    except SandboxError as e:
        pytest.skip(f"docker backend unavailable: {e}")
    dead = subprocess.Popen(["true"])
    dead.wait()
    c = backend.client.containers.run(backend.image, ["sleep", "infinity"], detach=True, network_mode="none",
                                      labels={OWNER: str(dead.pid), HOST: __import__("socket").gethostname()})  # fmt: skip
    assert backend.reap_orphans() >= 1
    assert c.id not in {x.id for x in backend.client.containers.list(all=True)}
