"""Docker backend: the Docker Engine API through the ``docker`` SDK (Podman's compatible
API in CI). One container per episode, reused across its turns; one ``exec`` per command.

Containment: ``network_mode=none``; memory (no swap), pids and CPU limits; the image is
never written (the container's private copy-on-write layer is discarded with it); each
command runs under ``timeout`` (TERM, then KILL a second later) with its output written to
a tmpfs of cap + drain bytes (a flood fills that, not the host), and every process the
command left behind is killed before ``exec`` returns. Containers carry the labels
``echo-rl.owner`` (trainer pid) and ``echo-rl.host``: ``reap_orphans`` removes those of
dead trainers on this host.

Images: a task with ``environment/Dockerfile`` is built once and cached under a tag
derived from the hash of its environment directory (never rebuilt per batch); a task
without one runs on the base image with ``environment/app`` copied into ``/app``.
"""

from __future__ import annotations

import hashlib
import io
import os
import shlex
import socket
import tarfile
import time
from pathlib import Path

from pipeline.sandbox.base import ExecResult, Sandbox, SandboxBackend, SandboxConfig, SandboxError

OWNER, HOST = "echo-rl.owner", "echo-rl.host"
# PID 1 of every episode container: immune to `kill -9 -1` (which each command's wrapper
# repeats until nothing is left), has no child of its own for that loop to kill, and reaps
# every orphan reparented to it, so dead processes never hold on to the pids limit.
KEEPER = (
    "import os, signal\n"
    "signal.signal(signal.SIGCHLD, lambda *a: None)\n"
    "while True:\n"
    "    try:\n"
    "        os.waitpid(-1, 0)\n"
    "    except ChildProcessError:\n"
    "        signal.pause()\n"
)
OUT = "/run/echo-rl-out"
TRAILER = "ECHO-RL-EXEC-END"  # tmpfs of output_bytes + drain_bytes: the command's output file


def _tar(files: dict[str, bytes], mode: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


class DockerSandbox(Sandbox):
    def __init__(self, cfg: SandboxConfig, container):
        self.cfg, self.container, self.closed = cfg, container, False

    def _script(self, command: str, timeout: float) -> str:
        # Output goes to a file on a tmpfs sized cap + drain (a flood hits ENOSPC there, not
        # the host); after the command, a builtin kill loop (no fork needed, so it works
        # even with the pids limit exhausted) removes every process it left behind; then
        # the first output_bytes are printed, followed by a trailer with exit code and size.
        return (
            f"timeout -k 1 {timeout:g} bash -c {shlex.quote(command)} > {OUT}/o 2>&1 < /dev/null; rc=$?; "
            "for ((i = 0; i < 10000; i++)); do kill -9 -1 2>/dev/null || break; done; "
            f"head -c {self.cfg.output_bytes} {OUT}/o; size=$(stat -c %s {OUT}/o); rm -f {OUT}/o; "
            f'printf "\\n{TRAILER} %s %s" "$rc" "$size"'
        )

    def exec(self, command: str, *, timeout_s: float | None = None) -> ExecResult:
        if self.closed:
            raise SandboxError("exec on a closed sandbox")
        cfg = self.cfg
        timeout = cfg.timeout_s if timeout_s is None else timeout_s
        start = time.monotonic()
        api = self.container.client.api
        try:
            exec_id = api.exec_create(self.container.id, ["bash", "-c", self._script(command, timeout)],
                                      workdir=cfg.workdir)["Id"]  # fmt: skip
            raw = b"".join(api.exec_start(exec_id, stream=True))
        except Exception as e:  # the engine or the container died: not the command's fault
            raise SandboxError(f"docker exec failed: {e}") from e
        body, sep, trailer = raw.rpartition(b"\n" + TRAILER.encode() + b" ")
        if not sep:
            raise SandboxError(f"docker exec returned no trailer (container gone?): {raw[-300:]!r}")
        fields = trailer.split()  # "RC SIZE"; SIZE is missing if the command deleted stat(1)
        rc = int(fields[0])
        total = int(fields[1]) if len(fields) > 1 else len(body)
        duration = time.monotonic() - start
        timed_out = rc in (124, 137) and duration >= timeout
        return ExecResult(
            output=body.decode("utf-8", errors="replace"), exit_code=None if timed_out else rc,
            timed_out=timed_out, truncated=total > cfg.output_bytes, output_total_bytes=total,
            duration_s=duration, timeout_s=timeout,
        )  # fmt: skip

    def shell(self) -> int:
        """An interactive shell in the episode's container (through the docker/podman CLI)."""
        import shutil
        import subprocess

        cli = shutil.which("docker") or shutil.which("podman")
        if cli is None:
            raise SandboxError("an interactive shell needs the docker or podman CLI")
        return subprocess.call([cli, "exec", "-it", "-w", self.cfg.workdir, self.container.id, "bash"])

    def put_files(self, files: dict[str, bytes], *, mode: int = 0o644) -> None:
        try:
            self.container.put_archive("/", _tar(files, mode))
        except Exception as e:
            raise SandboxError(f"put_files failed: {e}") from e

    def read_file(self, path: str) -> bytes | None:
        try:
            stream, _ = self.container.get_archive(path)
        except Exception:
            return None
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.next()
            f = tar.extractfile(member) if member is not None else None
            return f.read() if f is not None else None

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.container.remove(force=True)
            except Exception:
                pass


class DockerBackend(SandboxBackend):
    def __init__(self, cfg: SandboxConfig, *, base_url: str | None = None, image: str = "echo-rl-base:latest"):
        import docker

        url = base_url or os.environ.get("DOCKER_HOST") or "unix:///run/podman/podman.sock"
        try:
            self.client = docker.DockerClient(base_url=url)
            self.client.ping()
        except Exception as e:
            raise SandboxError(f"no Docker Engine API at {url}: {e}") from e
        self.cfg, self.image = cfg, image
        try:
            self.client.images.get(image)
        except Exception as e:
            raise SandboxError(f"base image {image} is missing: run tools/podman_setup.sh (or import the rootfs)") from e
        self.builds = 0  # images built by this backend (the cache keeps this small)
        self.reap_orphans()

    def task_image(self, task_dir: Path) -> str:
        env = task_dir / "environment"
        if not (env / "Dockerfile").is_file():
            return self.image
        digest = hashlib.sha256()
        for rel, data in sorted(_tree(env).items()):
            digest.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
        tag = f"echo-rl-task:{digest.hexdigest()[:16]}"
        try:
            self.client.images.get(tag)
        except Exception:
            try:
                self.client.images.build(path=str(env), tag=tag, rm=True, network_mode="none")
            except Exception as e:
                raise SandboxError(f"building {env}/Dockerfile failed: {e}") from e
            self.builds += 1
        return tag

    def start(self, *, task_dir: Path | None = None, episode: str = "") -> DockerSandbox:
        cfg = self.cfg
        image = self.task_image(task_dir) if task_dir else self.image
        try:
            container = self.client.containers.run(
                image, ["python3", "-c", KEEPER], detach=True, network_mode="none",
                mem_limit=f"{cfg.memory_mb}m", memswap_limit=f"{cfg.memory_mb}m", pids_limit=cfg.pids,
                working_dir=cfg.workdir, labels={OWNER: str(os.getpid()), HOST: socket.gethostname(),
                                                 "echo-rl.episode": episode},
                tmpfs={"/tmp": "size=256m", OUT: f"size={cfg.output_bytes + cfg.drain_bytes}"},
            )  # fmt: skip
        except Exception as e:
            raise SandboxError(f"container start failed: {e}") from e
        box = DockerSandbox(cfg, container)
        seed = task_dir / "environment" / "app" if task_dir else None
        if image == self.image and seed is not None and seed.is_dir():
            box.put_files({f"{cfg.workdir}/{rel}": data for rel, data in _tree(seed).items()})
        box.exec("mkdir -p /app /logs/verifier /tests")
        return box

    def reap_orphans(self) -> int:
        reaped = 0
        for c in self.client.containers.list(all=True, filters={"label": f"{HOST}={socket.gethostname()}"}):
            owner = int(c.labels.get(OWNER, "0") or 0)
            try:
                os.kill(owner, 0)
                continue
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
            c.remove(force=True)
            reaped += 1
        return reaped
