"""bubblewrap backend: a daemon-less sandbox per episode, one ``bwrap`` spawn per command.

Inside: the Debian rootfs from ``tools/build_rootfs.sh`` mounted read-only as ``/``;
writable ``/app`` (the task's work dir, persistent across the episode's commands),
``/logs`` and ``/tests`` (host dirs of this episode), a size-limited tmpfs ``/tmp``; fresh
``/proc`` and ``/dev``; all namespaces unshared (no network: only a down loopback), all
capabilities dropped, a cleared environment. Nothing else of the host is visible.

Limits: a per-episode cgroup (v1 ``pids`` and ``memory`` controllers) when the host lets
us create one, else per-process rlimits (``RLIMIT_AS``, ``RLIMIT_NPROC``; a root trainer
then runs the sandbox as uid 65534, because root ignores ``RLIMIT_NPROC``; that limit
counts all of that uid's processes on the host). Per command: a wall-clock timeout (the whole process tree is killed),
an output cap (the rest is drained up to ``drain_bytes``, then the command is stopped),
``RLIMIT_FSIZE`` against disk floods.

Departure from a container: each command is a fresh ``bash -c`` in ``/app``, so files
persist between commands but shell state (cwd, variables) does not.

Reaping: episode dirs and cgroups are named ``echo-rl-<trainer pid>-<n>``; ``reap_orphans``
(called on backend start) kills and removes those whose trainer is gone.
"""

from __future__ import annotations

import itertools
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from pipeline.sandbox.base import ExecResult, Sandbox, SandboxBackend, SandboxConfig, SandboxError

CGROUP_V1 = Path("/sys/fs/cgroup")
PREFIX = "echo-rl-"
_counter = itertools.count()
WRITABLE = ("/app", "/logs", "/tests")


def default_rootfs() -> Path:
    """The cached rootfs that ``tools/build_rootfs.sh`` prints (built if missing)."""
    script = Path(__file__).resolve().parents[2] / "tools" / "build_rootfs.sh"
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SandboxError(f"building the rootfs failed: {out.stderr[-2000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


class _Cgroup:
    """A v1 cgroup pair (pids, memory) for one episode; None-safe when unavailable."""

    def __init__(self, name: str):
        self.dirs = [CGROUP_V1 / ctrl / "echo-rl" / name for ctrl in ("pids", "memory")]

    @classmethod
    def create(cls, name: str, pids: int, memory_bytes: int) -> "_Cgroup":
        cg = cls(name)
        limits = ({"pids.max": pids}, {"memory.limit_in_bytes": memory_bytes})
        for d, files in zip(cg.dirs, limits):
            d.mkdir(parents=True, exist_ok=True)
            for f, v in files.items():
                (d / f).write_text(str(v))
        memsw = cg.dirs[1] / "memory.memsw.limit_in_bytes"
        if memsw.exists():  # swap accounting on: cap memory+swap too
            try:
                memsw.write_text(str(memory_bytes))
            except OSError:
                pass
        return cg

    @staticmethod
    def available() -> bool:
        try:
            probe = CGROUP_V1 / "pids" / "echo-rl"
            probe.mkdir(parents=True, exist_ok=True)
            return (CGROUP_V1 / "memory").is_dir() and os.access(probe, os.W_OK)
        except OSError:
            return False

    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs]

    def kill_all(self) -> None:
        delay = 0.0005  # exiting processes linger in cgroup.procs for well under a ms
        for _ in range(60):
            pids = set()
            for d in self.dirs:
                try:
                    pids |= {int(p) for p in (d / "cgroup.procs").read_text().split()}
                except OSError:
                    pass
            if not pids:
                return
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def remove(self) -> None:
        self.kill_all()
        for d in self.dirs:
            try:
                d.rmdir()
            except OSError:
                pass


class BwrapSandbox(Sandbox):
    def __init__(self, cfg: SandboxConfig, rootfs: Path, episode_dir: Path, cgroup: _Cgroup | None,
                 run_as: int | None = None):  # fmt: skip
        self.cfg, self.rootfs, self.dir, self.cgroup = cfg, rootfs, episode_dir, cgroup
        self.run_as = run_as  # uid/gid to drop to (rlimit fallback as root), None = caller's
        self.closed = False

    def _argv(self, command: str | None) -> list[str]:
        d = self.dir
        return [
            "bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--ro-bind", str(self.rootfs), "/",
            "--bind", str(d / "app"), "/app", "--bind", str(d / "logs"), "/logs",
            "--bind", str(d / "tests"), "/tests",
            "--proc", "/proc", "--dev", "/dev", "--size", str(256 << 20), "--tmpfs", "/tmp",
            "--hostname", "sandbox", "--chdir", self.cfg.workdir, "--clearenv",
            "--setenv", "PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--setenv", "HOME", "/app", "--setenv", "TERM", "dumb", "--setenv", "LANG", "C.UTF-8",
            "--", "/bin/bash", *(["-c", command] if command is not None else ["-i"]),
        ]  # fmt: skip

    def _launcher(self) -> list[str]:
        """A bash prologue that joins the episode's cgroups and sets rlimits, then execs
        bwrap. Doing this in a child shell (not a Python ``preexec_fn``) lets subprocess
        use vfork: forking a trainer process that holds GBs of tensors costs far more."""
        cfg = self.cfg
        steps = [f'echo $$ > "{f}"' for f in (self.cgroup.procs_files() if self.cgroup else [])]
        steps.append(f"ulimit -f {(1 << 30) // 512}")  # RLIMIT_FSIZE, in 512-byte blocks
        if not self.cgroup:  # no cgroup: per-process limits
            steps += [f"ulimit -v {cfg.memory_mb << 10}", f"ulimit -u {cfg.pids}"]
        run = 'exec "$@"'
        if self.run_as is not None:  # RLIMIT_NPROC does not bind root: run unprivileged
            run = f'exec setpriv --reuid={self.run_as} --regid={self.run_as} --clear-groups "$@"'
        return ["/bin/bash", "-c", " && ".join(steps + [run]), "echo-rl-sandbox"]

    def exec(self, command: str, *, timeout_s: float | None = None) -> ExecResult:
        if self.closed:
            raise SandboxError("exec on a closed sandbox")
        cfg = self.cfg
        timeout = cfg.timeout_s if timeout_s is None else timeout_s
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                self._launcher() + self._argv(command), stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        except OSError as e:
            raise SandboxError(f"bwrap could not start: {e}") from e
        buf, total, timed_out, flooded = bytearray(), 0, False, False
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        fd = proc.stdout.fileno()
        while True:
            remaining = start + timeout - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            if not sel.select(timeout=remaining):
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            total += len(chunk)
            if len(buf) < cfg.output_bytes:
                buf += chunk[: cfg.output_bytes - len(buf)]
            if total > cfg.output_bytes + cfg.drain_bytes:
                flooded = True
                break
        if timed_out or flooded:
            self._kill(proc)
        proc.wait()
        sel.close()
        proc.stdout.close()
        if self.cgroup:
            self.cgroup.kill_all()  # nothing outlives its command (daemons included)
        killed = timed_out or flooded
        return ExecResult(
            output=buf.decode("utf-8", errors="replace"), exit_code=None if killed else proc.returncode,
            timed_out=timed_out, truncated=total > cfg.output_bytes, output_total_bytes=total,
            duration_s=time.monotonic() - start, timeout_s=timeout,
        )  # fmt: skip

    def shell(self) -> int:
        """An interactive shell in the episode's environment (same limits, no timeout)."""
        return subprocess.call(self._launcher() + self._argv(None))

    def _kill(self, proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.cgroup:
            self.cgroup.kill_all()

    def put_files(self, files: dict[str, bytes], *, mode: int = 0o644) -> None:
        for path, data in files.items():
            top = "/" + path.lstrip("/").split("/", 1)[0]
            if top not in WRITABLE or ".." in Path(path).parts:
                raise SandboxError(f"put_files: {path} is not under {WRITABLE}")
            host = self.dir / path.lstrip("/")
            host.parent.mkdir(parents=True, exist_ok=True)
            host.write_bytes(data)
            host.chmod(mode)
            if self.run_as is not None:
                os.chown(host, self.run_as, self.run_as)

    def read_file(self, path: str) -> bytes | None:
        host = self.dir / path.lstrip("/")
        return host.read_bytes() if host.is_file() else None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.cgroup:
            self.cgroup.remove()
        shutil.rmtree(self.dir, ignore_errors=True)


class BwrapBackend(SandboxBackend):
    def __init__(self, cfg: SandboxConfig, *, root: str | Path | None = None):
        if shutil.which("bwrap") is None:
            raise SandboxError("bubblewrap is not installed (apt-get install bubblewrap)")
        self.cfg = cfg
        self.rootfs = Path(cfg.rootfs) if cfg.rootfs else default_rootfs()
        if not (self.rootfs / "bin").exists():
            raise SandboxError(f"{self.rootfs} is not a root filesystem")
        self.root = Path(root or os.environ.get("ECHO_RL_SANDBOX_ROOT") or Path(tempfile.gettempdir()) / "echo-rl-sandboxes")
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        self.use_cgroup = _Cgroup.available()
        # Without cgroups the process limit is RLIMIT_NPROC, which root ignores: drop to nobody.
        self.run_as = 65534 if (not self.use_cgroup and os.geteuid() == 0) else None
        if self.run_as is not None:
            self._check_reachable_by(self.run_as)
        self.reap_orphans()

    def _check_reachable_by(self, uid: int) -> None:
        for path in (self.rootfs / "bin", self.root):
            probe = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                                    "test", "-x", str(path)])  # fmt: skip
            if probe.returncode != 0:
                raise SandboxError(
                    f"{path} is not reachable by uid {uid}, which runs the sandboxes on this host "
                    "(no writable cgroup hierarchy): put the rootfs and ECHO_RL_SANDBOX_ROOT under "
                    "world-traversable directories (e.g. /var/cache/echo-rl, /tmp/echo-rl-sandboxes)"
                )

    @property
    def containment(self) -> str:
        if self.use_cgroup:
            return "cgroup v1 (pids, memory)"
        return "rlimits (AS, NPROC)" + (f", as uid {self.run_as}" if self.run_as is not None else "")

    def start(self, *, task_dir: Path | None = None, episode: str = "") -> BwrapSandbox:
        if task_dir is not None:
            check_dockerfile_supported(task_dir)
        name = f"{PREFIX}{os.getpid()}-{next(_counter)}"
        d = self.root / name
        for sub in ("app", "logs/verifier", "tests"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        seed = task_dir / "environment" / "app" if task_dir else None
        if seed is not None and seed.is_dir():
            shutil.copytree(seed, d / "app", dirs_exist_ok=True, symlinks=True)
        (d / "owner").write_text(f"{os.getpid()} {episode}\n")
        if self.run_as is not None:
            for p in [d, *d.rglob("*")]:
                os.chown(p, self.run_as, self.run_as, follow_symlinks=False)
        cg = _Cgroup.create(name, self.cfg.pids, self.cfg.memory_mb << 20) if self.use_cgroup else None
        return BwrapSandbox(self.cfg, self.rootfs, d, cg, self.run_as)

    def reap_orphans(self) -> int:
        reaped = 0
        for d in self.root.glob(f"{PREFIX}*"):
            try:
                owner = int(d.name[len(PREFIX):].split("-")[0])
            except ValueError:
                continue
            if _alive(owner):
                continue
            if self.use_cgroup:
                _Cgroup(d.name).remove()
            shutil.rmtree(d, ignore_errors=True)
            reaped += 1
        return reaped


def check_dockerfile_supported(task_dir: Path) -> None:
    """bwrap runs on the shared rootfs with ``environment/app`` copied into /app; a task
    whose Dockerfile does more (RUN, other COPY targets, ENV, ...) needs the docker backend."""
    dockerfile = task_dir / "environment" / "Dockerfile"
    if not dockerfile.is_file():
        return
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        op = words[0].upper()
        if op == "FROM" or (op == "WORKDIR" and words[1:] == ["/app"]) or \
                (op == "COPY" and words[1:] in (["app/", "/app/"], ["app", "/app"])):  # fmt: skip
            continue
        raise SandboxError(
            f"{dockerfile}: `{line.strip()}` cannot be reproduced by the bwrap backend "
            "(it only seeds /app from environment/app); use sandbox.backend=docker"
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
