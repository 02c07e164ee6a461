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
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.sandbox import boundary
from pipeline.sandbox.boundary import TreeRefused
from pipeline.sandbox.cgroup import _Cgroup
from pipeline.sandbox.boundary import VERIFIER_PATH
from pipeline.sandbox.base import (ExecResult, Sandbox, SandboxBackend, SandboxConfig, SandboxError,
                                   phase_networks)  # fmt: skip

PREFIX = "echo-rl-"
_counter = itertools.count()
WRITABLE = ("/app", "/logs", "/tests", "/solution")  # host dirs of the episode (/solution: read-only inside)


def default_rootfs() -> Path:
    """The cached rootfs that ``build_rootfs.sh`` (package data, beside this module) prints
    (built if missing)."""
    script = Path(__file__).resolve().parent / "build_rootfs.sh"
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SandboxError(f"building the rootfs failed: {out.stderr[-2000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


# What the root verifier may do inside its sandbox (none of it reaches the host: the root is
# read-only, /proc/sys is covered read-only): write the agent's files, run the agent's
# code as the agent (setpriv), own and chmod what it writes.
VERIFIER_CAPS = ("CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_CHOWN", "CAP_SETUID", "CAP_SETGID", "CAP_KILL")
PROC_COVER = ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus")


class BwrapSandbox(Sandbox):
    def __init__(self, cfg: SandboxConfig, rootfs: Path, episode_dir: Path, cgroup: _Cgroup | None,
                 run_as: int | None = None):  # fmt: skip
        self.cfg, self.rootfs, self.dir, self.cgroup = cfg, rootfs, episode_dir, cgroup
        self.run_as = run_as  # the agent's uid/gid (a root trainer), None = the caller's (no user boundary)
        self.agent_uid = self.check_uid = run_as
        self.closed = False

    def _argv(self, command: str | None, verifier: bool = False, env: dict[str, str] | None = None) -> list[str]:
        d = self.dir
        privileged = verifier and self.run_as is not None  # a root trainer: the verifier is real root, no user ns
        unshare = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"] \
            if privileged else ["--unshare-all"]  # fmt: skip
        caps = [a for c in VERIFIER_CAPS for a in ("--cap-add", c)] if privileged else []
        cover = [a for p in PROC_COVER if os.path.exists(p) for a in ("--ro-bind", p, p)]
        home = "/tmp" if verifier else "/app"  # the verifier's HOME: this spawn's fresh tmpfs
        setenv = [a for k, v in (env or {}).items() for a in ("--setenv", k, v)]
        if verifier:
            setenv += ["--setenv", "PYTHONNOUSERSITE", "1", "--setenv", "PYTHONSAFEPATH", "1"]
        return [
            "bwrap", *unshare, "--die-with-parent", "--new-session", "--cap-drop", "ALL", *caps,
            "--ro-bind", str(self.rootfs), "/",
            "--bind", str(d / "app"), "/app", "--bind", str(d / "logs"), "/logs",
            "--bind", str(d / "tests"), "/tests", "--ro-bind", str(d / "solution"), "/solution",
            "--proc", "/proc", *cover, "--dev", "/dev", "--size", str(256 << 20), "--tmpfs", "/tmp",
            "--hostname", "sandbox", "--chdir", self.cfg.workdir, "--clearenv",
            "--setenv", "PATH", VERIFIER_PATH,
            "--setenv", "HOME", home, "--setenv", "TERM", "dumb", "--setenv", "LANG", "C.UTF-8", *setenv,
            "--", "/bin/bash", *(["-c", command] if command is not None else ["-i"]),
        ]  # fmt: skip

    def _launcher(self, verifier: bool = False) -> list[str]:
        """A bash prologue that joins the episode's cgroups and sets rlimits, then execs
        bwrap. Doing this in a child shell (not a Python ``preexec_fn``) lets subprocess
        use vfork: forking a trainer process that holds GBs of tensors costs far more."""
        cfg = self.cfg
        steps = [f'echo $$ > "{f}"' for f in (self.cgroup.procs_files() if self.cgroup else [])]
        steps.append(f"ulimit -f {(1 << 30) // 512}")  # RLIMIT_FSIZE, in 512-byte blocks
        if not self.cgroup:  # no cgroup: per-process limits
            steps += [f"ulimit -v {cfg.memory_mb << 10}"] + ([f"ulimit -u {cfg.pids}"] if not verifier else [])
        run = 'exec "$@"'
        if self.run_as is not None and not verifier:  # the agent never runs as the trainer's root
            run = f'exec setpriv --reuid={self.run_as} --regid={self.run_as} --clear-groups {boundary.drop_flags()}"$@"'
        return ["/bin/bash", "-c", " && ".join(steps + [run]), "echo-rl-sandbox"]

    def exec(self, command: str, *, timeout_s: float | None = None, verifier: bool = False,
             env: dict[str, str] | None = None) -> ExecResult:  # fmt: skip
        if self.closed:
            raise SandboxError("exec on a closed sandbox")
        cfg = self.cfg
        timeout = cfg.timeout_s if timeout_s is None else timeout_s
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                self._launcher(verifier) + self._argv(command, verifier, env), stdin=subprocess.DEVNULL,
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

    def _host_path(self, path: str, *, create_parents: bool) -> Path:
        """The host path of a sandbox path under ``WRITABLE``, refusing any link on the way
        (the agent can plant links; the harness must not write or read through them)."""
        rel = Path(path.lstrip("/"))
        if "/" + rel.parts[0] not in WRITABLE or ".." in rel.parts:
            raise SandboxError(f"{path} is not under {WRITABLE}")
        cur = self.dir
        for part in rel.parts[:-1]:
            cur = cur / part
            if cur.is_symlink() or (cur.exists() and not cur.is_dir()):
                raise SandboxError(f"{path}: {cur.relative_to(self.dir)} is not a directory")
            if not cur.exists():
                if not create_parents:
                    raise FileNotFoundError(path)
                cur.mkdir(mode=0o755)
        return cur / rel.parts[-1]

    def put_files(self, files: dict[str, bytes], *, mode: int = 0o644) -> None:
        for path, data in files.items():
            host = self._host_path(path, create_parents=True)
            if host.is_symlink() or host.is_dir():
                raise SandboxError(f"put_files: {path} is a link or a directory")
            host.write_bytes(data)
            host.chmod(mode)

    def read_file(self, path: str, *, max_bytes: int = 1 << 16) -> bytes | None:
        # Opened component by component relative to the episode dir with O_NOFOLLOW: a link
        # the agent planted anywhere on the path is refused, never followed to the host.
        parts = Path(path.lstrip("/")).parts
        if ".." in parts or not parts:
            return None
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for part in parts[:-1]:
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = nxt
            f = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
        except OSError:
            return None
        finally:
            os.close(fd)
        try:
            st = os.fstat(f)
            if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
                return None
            return os.read(f, max_bytes + 1)
        finally:
            os.close(f)

    def prepare_verifier(self, *, stop_agent: bool) -> None:
        # Nothing of the agent runs now (each command's pid namespace died with it, and the
        # cgroup was emptied); lay the verifier's directories anew, root's when we are root.
        if self.cgroup:
            self.cgroup.kill_all()
        logs = self.dir / "logs"
        if logs.is_symlink() or not logs.is_dir():
            _remove(logs)
            logs.mkdir(mode=0o755)
        for sub, mode in (("tests", boundary.TESTS_MODE), ("logs/verifier", 0o755)):
            p = self.dir / sub
            _remove(p)
            p.mkdir(mode=mode)
            os.chmod(p, mode)

    def copy_workdir_to(self, other: Sandbox) -> None:
        if not isinstance(other, BwrapSandbox):
            raise SandboxError("copy_workdir_to: both sandboxes must be bwrap ones")
        _remove(other.dir / "app")
        _copy_tree(self.dir / "app", other.dir / "app", self.cfg.copy_bytes)
        if other.run_as is not None:  # still the agent's: checks that run as the agent read it as before
            subprocess.run(["chown", "-R", "-h", f"{other.run_as}:{other.run_as}", "--", str(other.dir / "app")],
                           capture_output=True, timeout=300)  # fmt: skip

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            if self.cgroup:
                self.cgroup.remove()
        finally:
            _remove(self.dir)


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
        # A root trainer runs the agent as nobody: it cannot write the verifier's ground (and
        # without cgroups the process limit is RLIMIT_NPROC, which root ignores).
        self.run_as = 65534 if os.geteuid() == 0 else None
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

    def start(self, *, task_dir: Path | None = None, episode: str = "", task=None) -> BwrapSandbox:
        if task is not None and task_dir is None:
            task_dir = task.task_dir
        if task is not None:
            check_task_supported(task, self.cfg)
        elif task_dir is not None:
            check_dockerfile_supported(task_dir / "environment" / "Dockerfile")
        name = f"{PREFIX}{os.getpid()}-{next(_counter)}"
        d = self.root / name
        for sub in ("app", "logs/verifier", "logs/agent", "tests", "solution"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        for p in (d, d / "logs", d / "logs/verifier", d / "tests"):
            p.chmod(0o755)
        seed = task_dir / "environment" / "app" if task_dir else None
        if seed is not None and seed.is_dir():
            shutil.copytree(seed, d / "app", dirs_exist_ok=True, symlinks=True)
        (d / "owner").write_text(f"{os.getpid()} {episode}\n")
        if self.run_as is not None:  # the agent owns its work tree and /logs/agent, root the rest
            for p in [d / "app", *(d / "app").rglob("*"), d / "logs/agent"]:
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
            try:
                if self.use_cgroup:
                    _Cgroup(d.name).remove()
            except OSError:
                pass
            _remove(d)
            reaped += 1
        return reaped


def _remove(p: Path) -> None:
    """Remove whatever is at ``p`` (file, link, tree) without following links, however deep
    or unreadable the agent made it (GNU rm/chmod walk with fts: no recursion limit). Never
    raises: what cannot be removed is reported, and the trainer goes on."""
    if not os.path.lexists(p):
        return
    try:
        if os.geteuid() != 0:  # the agent may have made its tree unreadable to us: restore modes first
            subprocess.run(["chmod", "-R", "-f", "u+rwX", "--", str(p)], timeout=300, check=False)
        r = subprocess.run(["rm", "-rf", "--", str(p)], capture_output=True, timeout=300, check=False)
        if r.returncode != 0 or os.path.lexists(p):
            print(f"echo-rl: could not remove {p}: {r.stderr[-300:].decode(errors='replace')}", file=sys.stderr)
    except Exception as e:  # noqa: BLE001 (cleanup never ends a run)
        print(f"echo-rl: could not remove {p}: {e}", file=sys.stderr)


def _copy_tree(src: Path, dst: Path, cap: int) -> None:
    """``verifier_isolation: fresh``: the agent's tree, sparse files kept sparse, links as
    links, special files left behind (the sweep would remove them), refused over ``cap``
    apparent bytes (the agent's doing: reward 0 after the blame check)."""
    du = subprocess.run(["du", "-s", "-B1", "--apparent-size", "--", str(src)], capture_output=True, text=True,
                        timeout=300)  # fmt: skip
    size = int(du.stdout.split()[0]) if du.returncode == 0 and du.stdout else cap + 1
    if size > cap:
        raise TreeRefused(f"the agent's work tree is {size} bytes apparent, over the copy cap {cap}")
    r = subprocess.run(["cp", "-a", "--sparse=always", "--", str(src), str(dst)], capture_output=True, timeout=600)
    if r.returncode != 0 and not dst.is_dir():
        raise SandboxError(f"copying the work tree failed: {r.stderr[-300:].decode(errors='replace')}")
    subprocess.run(["find", str(dst), "(", "-type", "p", "-o", "-type", "s", "-o", "-type", "b", "-o", "-type", "c", ")",
                    "-delete"], capture_output=True, timeout=300)  # fmt: skip


def check_task_supported(task, cfg=None) -> None:
    """What bwrap cannot reproduce of a task: refused at start with the reason."""
    why = ""
    nets = phase_networks(cfg, task) if cfg is not None else ("none", "none")
    if task.image:
        why = f"it runs on the prebuilt image {task.image!r}"
    elif task.services:
        why = f"its docker-compose file runs other services ({', '.join(task.services)})"
    elif "public" in nets:
        phase, key = ("agent", "agent_network") if nets[0] == "public" else ("verifier", "verifier_network")
        why = (f"its {phase} phase has the network (sandbox.{key}=task and the task allows the internet) and "
               f"bwrap sandboxes have none; set sandbox.{key}=none to run it offline")
    if why:
        raise SandboxError(f"task {task.task_id}: bwrap cannot run it: {why}{' or' if 'offline' in why else ';'} "
                           "use sandbox.backend=docker")  # fmt: skip
    if task.dockerfile is not None:
        check_dockerfile_supported(task.dockerfile)


def check_dockerfile_supported(dockerfile: Path) -> None:
    """bwrap runs on the shared rootfs with ``environment/app`` copied into /app; a task
    whose Dockerfile does more (RUN, other COPY targets, ENV, ...) needs the docker backend.
    It also keeps killing what a command leaves running (no container to bound it), where
    docker keeps it alive into the later commands as Harbor does."""
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
