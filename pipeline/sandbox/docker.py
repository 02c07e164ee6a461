"""Docker backend: the Docker Engine API through the ``docker`` SDK (Podman's compatible
API in CI). One container per episode, live across its turns (as in Harbor: what the agent
starts in the background keeps running into its later commands and the verifier); one
``exec`` per command.

Containment: ``network_mode=none``; memory (no swap), pids and CPU limits; the image is
never written (the container's private copy-on-write layer is discarded with it); each
command runs under ``timeout`` (TERM, then KILL a second later, to its process group)
with its output written to a tmpfs of cap + drain bytes (a flood fills that, not the
host). Everything the agent started dies with the container. Containers carry the labels
``echo-rl.owner`` (trainer pid) and ``echo-rl.host``: ``reap_orphans`` removes those of
dead trainers on this host.

Two principals: the agent's commands run as ``echo-agent`` (uid 10001, owner of the work
dir, ``/logs/agent`` and its home) unless ``sandbox.agent_user`` says root; the verifier
runs as root with a clean environment (``exec(..., verifier=True)``). ``/tests`` and
``/logs/verifier`` (its own tmpfs) are root's: the unprivileged agent cannot write them,
nor any system binary the verifier calls.

Images, in order: the task's prebuilt ``image`` (Harbor ``docker_image``), its Dockerfile
(Harbor ``environment/``, Terminal-Bench's task dir; built once, cached under a tag derived
from the hash of the build context), or the base image with ``environment/app`` copied
into ``/app``. ``sandbox.image_map`` maps public names (a ``FROM`` line, a
``docker_image``) to local images; a name that is neither present nor mapped nor
pullable fails with one line naming the image, the task and the key.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shlex
import socket
import tarfile
import time
from pathlib import Path

from pipeline.sandbox.base import (UNSAFE_ENV, VERIFIER_PATH, ExecResult, Sandbox, SandboxBackend,
                                   SandboxConfig, SandboxError, phase_networks)  # fmt: skip

OWNER, HOST = "echo-rl.owner", "echo-rl.host"
# PID 1 of every episode container: immune to `kill -9 -1` (which stops a root agent's
# processes before the verifier), has no child of its own for that loop to kill, and reaps
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
OUT, OUTV = "/run/echo-rl-out", "/run/echo-rl-vout"  # the agent's / the verifier's output tmpfs
TRAILER = "ECHO-RL-EXEC-END"
AGENT_UID, AGENT_NAME, AGENT_HOME = 10001, "echo-agent", "/home/echo-agent"
PUBLIC_NET = "bridge"  # the engine's default network (Podman's "podman", by its Docker name)


def _tar(files: dict[str, bytes], mode: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            info.uid = info.gid = 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _discard(containers, network=None) -> None:
    """Remove an episode's containers and its service network, whatever state they are in."""
    for c in containers:
        try:
            c.remove(force=True)
        except Exception:
            pass
    if network is not None:
        try:
            network.remove()
        except Exception:
            pass


def _context_digest(context: Path, extra: str) -> str:
    digest = hashlib.sha256(extra.encode())
    for rel, data in sorted(_tree(context).items()):
        digest.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()[:16]


class DockerSandbox(Sandbox):
    def __init__(self, cfg: SandboxConfig, container, *, workdir: str, agent_uid: int | None, env: dict,
                 networks: tuple[str, str] = ("none", "none"), side: list | None = None, network=None):  # fmt: skip
        self.cfg, self.container, self.closed = cfg, container, False
        self.workdir, self.agent_uid, self.env = workdir, agent_uid, env
        self.agent_gid, self.agent_name, self.agent_home = agent_uid, AGENT_NAME, AGENT_HOME  # (a task's own user: its)
        self.agent_net, self.verifier_net = networks  # "none" | "public", by phase
        self.net_now = self.agent_net
        self.side, self.network = side or [], network  # compose services beside it, their internal network

    def _switch_network(self, want: str) -> None:
        if want == self.net_now:
            return
        try:
            net = self.container.client.networks.get(PUBLIC_NET)
            net.connect(self.container) if want == "public" else net.disconnect(self.container, force=True)
        except Exception as e:
            raise SandboxError(f"switching the network to {want} failed: {e}") from e
        self.net_now = want

    def _script(self, command: str, timeout: float, out: str, prefix: str = "") -> str:
        # Output goes to a file on a tmpfs sized cap + drain (a flood hits ENOSPC there, not
        # the host); then the first output_bytes are printed, followed by a trailer with
        # exit code and size.
        return (
            f"{prefix}timeout -k 1 {timeout:g} bash -c {shlex.quote(command)} > {out}/o 2>&1 < /dev/null; rc=$?; "
            f"head -c {self.cfg.output_bytes} {out}/o; size=$(stat -c %s {out}/o); rm -f {out}/o; "
            f'printf "\\n{TRAILER} %s %s" "$rc" "$size"'
        )

    def _verifier_env(self, env: dict[str, str] | None) -> str:
        """``env -i ...``: the image's own variables (the task's, not the agent's) minus
        those that change what programs load, system dirs first on PATH, a fresh HOME."""
        base = {k: v for k, v in self.env.items() if k not in UNSAFE_ENV}
        extra = [p for p in base.get("PATH", "").split(":") if p and p not in VERIFIER_PATH.split(":")]
        base.update(PATH=":".join([VERIFIER_PATH, *extra]), PYTHONNOUSERSITE="1", PYTHONSAFEPATH="1", USER="root",
                    **(env or {}))  # fmt: skip
        base.pop("HOME", None)  # HOME: a fresh root-only dir (mktemp: the agent cannot pre-create it); it
        # stays on the container's /tmp tmpfs, which goes with the container
        items = " ".join(shlex.quote(f"{k}={v}") for k, v in base.items() if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k))
        return f'h=$(mktemp -d /tmp/.echo-rl-verifier.XXXXXX) && env -i HOME="$h" {items} '

    def _run(self, script: str, user: str, environment: dict | None = None, workdir: str | None = None) -> bytes:
        api = self.container.client.api
        try:
            exec_id = api.exec_create(self.container.id, ["bash", "-c", script], workdir=workdir or self.workdir, user=user,
                                      environment=environment)["Id"]  # fmt: skip
            return b"".join(api.exec_start(exec_id, stream=True))
        except Exception as e:  # the engine or the container died: not the command's fault
            raise SandboxError(f"docker exec failed: {e}") from e

    def exec(self, command: str, *, timeout_s: float | None = None, verifier: bool = False,
             env: dict[str, str] | None = None) -> ExecResult:  # fmt: skip
        if self.closed:
            raise SandboxError("exec on a closed sandbox")
        cfg = self.cfg
        timeout = cfg.timeout_s if timeout_s is None else timeout_s
        start = time.monotonic()
        if verifier:
            raw = self._run(self._script(command, timeout, OUTV, self._verifier_env(env)), "0")
        else:
            user = "0" if self.agent_uid is None else f"{self.agent_uid}:{self.agent_gid}"
            home = {"HOME": self.agent_home, "USER": self.agent_name} if self.agent_uid is not None else {}
            raw = self._run(self._script(command, timeout, OUT), user, {**home, **(env or {})})
        body, sep, trailer = raw.rpartition(b"\n" + TRAILER.encode() + b" ")
        if not sep and not verifier and self.alive():  # the agent killed its own command's shell
            return ExecResult(output=raw[: cfg.output_bytes].decode("utf-8", errors="replace"), exit_code=None,
                              killed=True, duration_s=time.monotonic() - start, timeout_s=timeout)  # fmt: skip
        if not sep:
            raise SandboxError(f"docker exec returned no trailer (container gone or shell broken?): {raw[-300:]!r}")
        fields = trailer.split()  # "RC SIZE"; SIZE is missing if the command deleted stat(1)
        try:
            rc = int(fields[0])
            total = int(fields[1]) if len(fields) > 1 else len(body)
        except (ValueError, IndexError):
            raise SandboxError(f"docker exec returned a malformed trailer: {raw[-300:]!r}") from None
        duration = time.monotonic() - start
        timed_out = rc in (124, 137) and duration >= timeout
        return ExecResult(
            output=body.decode("utf-8", errors="replace"), exit_code=None if timed_out else rc,
            timed_out=timed_out, truncated=total > cfg.output_bytes, output_total_bytes=total,
            duration_s=duration, timeout_s=timeout,
        )  # fmt: skip

    def _root(self, script: str) -> None:
        raw = self._run(f"{script}; printf '\\n{TRAILER} %s' $?", "0", workdir="/")
        if not raw.rstrip().endswith(f"{TRAILER} 0".encode()):
            raise SandboxError(f"sandbox setup failed: {raw[-300:]!r}")

    def prepare_verifier(self, *, stop_agent: bool) -> None:
        kill = "for ((i = 0; i < 10000; i++)); do kill -9 -1 2>/dev/null || break; done; "
        if self.verifier_net == "public" and self.net_now == "none" and not stop_agent and self.agent_uid is not None:
            # A process the agent left would get the network the agent was denied: stop
            # them first (kill -1 as the agent's uid reaches only the agent's processes).
            raw = self._run(f"{kill}printf '\\n{TRAILER} 0'", f"{self.agent_uid}:{self.agent_gid}", workdir="/")
            if TRAILER.encode() not in raw:
                raise SandboxError(f"stopping the agent's processes failed: {raw[-300:]!r}")
        self._root((kill if stop_agent else "") + "rm -rf /tests && mkdir -p -m 755 /tests /logs/verifier && "
                   "find /logs/verifier -mindepth 1 -delete && chown 0:0 /tests /logs/verifier && "
                   "chmod 755 /tests /logs/verifier")  # fmt: skip
        self._switch_network(self.verifier_net)

    def shell(self) -> int:
        """An interactive shell in the episode's container (through the docker/podman CLI)."""
        import shutil
        import subprocess

        cli = shutil.which("docker") or shutil.which("podman")
        if cli is None:
            raise SandboxError("an interactive shell needs the docker or podman CLI")
        user = ["-u", str(self.agent_uid)] if self.agent_uid is not None else []
        return subprocess.call([cli, "exec", "-it", *user, "-w", self.workdir, self.container.id, "bash"])

    def put_files(self, files: dict[str, bytes], *, mode: int = 0o644) -> None:
        if not files:
            return
        try:
            self.container.put_archive("/", _tar(files, mode))
        except Exception as e:
            raise SandboxError(f"put_files failed: {e}") from e

    def read_file(self, path: str, *, max_bytes: int = 1 << 16) -> bytes | None:
        # The engine resolves the path inside the container's root, never on the host; a
        # link comes back as a link member and is refused.
        try:
            stream, _ = self.container.get_archive(path)
            data = b"".join(stream)
        except Exception:
            return None
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            member = tar.next()
            if member is None or not member.isfile() or member.size > max_bytes:
                return None
            f = tar.extractfile(member)
            return f.read(max_bytes + 1) if f is not None else None

    def alive(self) -> bool:
        try:
            self.container.reload()
            return self.container.status == "running"
        except Exception:
            return False

    def copy_workdir_to(self, other: Sandbox) -> None:
        if not isinstance(other, DockerSandbox):
            raise SandboxError("copy_workdir_to: both sandboxes must be docker ones")
        wd = self.workdir.rstrip("/") or "/"
        try:
            stream, _ = self.container.get_archive(wd)
            data = b"".join(stream)
        except Exception as e:
            raise SandboxError(f"reading the work tree {wd} failed: {e}") from e
        other._root(f"find {shlex.quote(wd)} -mindepth 1 -delete")
        try:
            other.container.put_archive(str(Path(wd).parent), data)
        except Exception as e:
            raise SandboxError(f"copying the work tree failed: {e}") from e
        if other.agent_uid is not None:  # the engine extracts as root: give the tree back to the agent
            other._root(f"chown -R -h {other.agent_uid}:{other.agent_gid} {shlex.quote(wd)}")

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            _discard([self.container, *self.side], self.network)


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

    def resolve_image(self, name: str, task_id: str, what: str) -> str:
        """A local image for the public ``name``: mapped, present, or pulled."""
        mapped = self.cfg.image_map.get(name, name)
        for candidate in (mapped, mapped if ":" in mapped.rsplit("/", 1)[-1] else f"{mapped}:latest"):
            try:
                self.client.images.get(candidate)
                return candidate
            except Exception:
                pass
        try:
            self.client.images.pull(mapped)
            return mapped
        except Exception as e:
            raise SandboxError(
                f"task {task_id}: image {name!r} ({what}) is not present, not mapped and cannot be pulled "
                f"({str(e)[:120]}): set sandbox.image_map.{name}=LOCAL_IMAGE or build it (tools/podman_setup.sh "
                "builds local stand-ins for debian/ubuntu/python bases)"
            ) from None

    def _build(self, dockerfile: Path, context: Path, task_id: str, timeout_s: float) -> str:
        text = dockerfile.read_text()
        for name in re.findall(r"^\s*FROM\s+(?:--\S+\s+)*(\S+)", text, re.M | re.I):
            if name.lower() == "scratch" or "$" in name:
                continue
            local = self.resolve_image(name, task_id, f"FROM in {dockerfile.name}")
            if local != name:  # the Dockerfile names the public tag: give it that name here
                repo, _, tag = name.rpartition(":") if ":" in name.rsplit("/", 1)[-1] else (name, "", "latest")
                self.client.images.get(local).tag(repo, tag)
        rel = str(dockerfile.relative_to(context)) if dockerfile.is_relative_to(context) else str(dockerfile)
        tag = f"echo-rl-task:{_context_digest(context, rel + repr(sorted(self.cfg.image_map.items())))}"
        try:
            self.client.images.get(tag)
            return tag
        except Exception:
            pass
        try:
            self.client.images.build(path=str(context), dockerfile=rel, tag=tag, rm=True, network_mode="none",
                                     timeout=int(timeout_s))  # fmt: skip
        except Exception as e:
            raise SandboxError(f"task {task_id}: building {dockerfile} failed: {str(e)[-1500:]}") from e
        self.builds += 1
        return tag

    def task_image(self, task_dir: Path, task=None) -> str:
        task_id = task.task_id if task is not None else task_dir.name
        if task is not None and task.image:
            return self.resolve_image(task.image, task_id, "docker_image")
        dockerfile = task.dockerfile if task is not None else task_dir / "environment" / "Dockerfile"
        if dockerfile is None or not dockerfile.is_file():
            return self.image
        return self._build(dockerfile, dockerfile.parent, task_id, task.build_timeout_s if task else 600)

    def start(self, *, task_dir: Path | None = None, episode: str = "", task=None) -> DockerSandbox:
        cfg = self.cfg
        if task is not None and task_dir is None:
            task_dir = task.task_dir
        image = self.task_image(task_dir, task) if task_dir else self.image
        agent_root = cfg.agent_user == "root" or (cfg.agent_user == "task" and task is not None
                                                  and task.agent_user in ("root", "0"))  # fmt: skip
        memory = task.memory_mb if task is not None and task.memory_mb else cfg.memory_mb
        memory = min(memory, cfg.memory_mb) if cfg.memory_mb else memory  # the sandbox's cap bounds the task's ask
        extra = {"nano_cpus": int(task.cpus * 1e9)} if task is not None and task.cpus else {}
        env = dict(task.env) if task is not None else {}
        nets = phase_networks(cfg, task)
        labels = {OWNER: str(os.getpid()), HOST: socket.gethostname(), "echo-rl.episode": episode}
        side, network = [], None
        if task is not None and task.services:  # compose services: on the episode's own network, no internet
            network, side = self._start_services(task, labels)
        if network is not None:
            net_kw = {"network": network.name}
        elif "public" in nets:  # starts on the public network; left before any agent command if the agent has none
            net_kw = {"network": PUBLIC_NET}
        else:
            net_kw = {"network_mode": "none"}
        try:
            container = self.client.containers.run(
                image, ["python3", "-c", KEEPER], detach=True, environment=env, **net_kw,
                mem_limit=f"{memory}m", memswap_limit=f"{memory}m", pids_limit=cfg.pids, user="0", labels=labels,
                tmpfs={"/tmp": "size=256m,mode=1777", OUT: f"size={cfg.output_bytes + cfg.drain_bytes}",
                       OUTV: f"size={cfg.output_bytes + cfg.drain_bytes},mode=0700",
                       "/logs/verifier": "size=64m,mode=0755"}, **extra,
            )  # fmt: skip
        except Exception as e:
            _discard(side, network)
            raise SandboxError(f"container start failed ({image}): {e}") from e
        attrs = container.attrs.get("Config") or {}
        image_env = dict(e.split("=", 1) for e in attrs.get("Env") or [] if "=" in e)
        workdir = (task.workdir if task is not None and task.workdir else "") or attrs.get("WorkingDir") or ""
        workdir = workdir if workdir not in ("", "/") else cfg.workdir
        box = DockerSandbox(cfg, container, workdir=cfg.workdir, agent_uid=None if agent_root else AGENT_UID,
                            env=image_env, networks=nets, side=side, network=network)  # fmt: skip
        box.net_now = "public" if net_kw.get("network") == PUBLIC_NET else "none"
        try:
            box._switch_network(box.agent_net)  # before any command of the agent's
            own_user = cfg.agent_user == "task" and task is not None and task.agent_user not in ("", "root", "0")
            if own_user:  # the task's [agent] user: its image's account, its image's ownership
                self._task_user(box, task)
                box._root(f"mkdir -p /logs/agent && chown {box.agent_uid}:{box.agent_gid} /logs/agent {OUT} && "
                          "chown 0:0 /logs /tests /logs/verifier && chmod 755 /logs /tests /logs/verifier")  # fmt: skip
                box.workdir = workdir
                return box
            wd = shlex.quote(workdir)
            own = f"{wd} /app /logs/agent {AGENT_HOME} {OUT}"
            box._root(
                f"mkdir -p /app /logs/agent /logs/verifier /tests {wd} {AGENT_HOME} && "
                f"(grep -q '^{AGENT_NAME}:' /etc/passwd || echo '{AGENT_NAME}:x:{AGENT_UID}:{AGENT_UID}::{AGENT_HOME}:/bin/bash' >> /etc/passwd) && "
                + (f"chown -R {AGENT_UID}:{AGENT_UID} {own} && " if not agent_root else "")
                + "chown 0:0 /logs /tests /logs/verifier && chmod 755 /logs /tests /logs/verifier"
            )  # fmt: skip
        except SandboxError:
            box.close()
            raise
        box.workdir = workdir
        seed = task_dir / "environment" / "app" if task_dir else None
        if image == self.image and seed is not None and seed.is_dir():
            files = _tree(seed)
            box.put_files({f"/app/{rel}": data for rel, data in files.items()})
            if not agent_root and files:
                box._root(f"chown -R {AGENT_UID}:{AGENT_UID} /app")
        return box

    @staticmethod
    def _task_user(box: DockerSandbox, task) -> None:
        name = task.agent_user
        raw = box._run(f"getent passwd {shlex.quote(name)} || true", "0", workdir="/").decode(errors="replace")
        fields = raw.strip().split(":")
        if len(fields) < 7 or not fields[2].isdigit():
            raise SandboxError(f"task {task.task_id}: [agent] user {name!r} is not an account of its image")
        box.agent_name, box.agent_home = fields[0], fields[5] or "/"
        box.agent_uid, box.agent_gid = int(fields[2]), int(fields[3])
        if box.agent_uid == 0:
            box.agent_uid = box.agent_gid = None  # another name for root: the root agent's rules

    def _start_services(self, task, labels: dict):
        """The task's other compose services, each reachable by its name, on a new internal
        network (no route out) that the agent's container joins."""
        tag = f"{os.getpid()}-{labels['echo-rl.episode']}-{time.time_ns()}"
        name = f"echo-rl-{hashlib.sha256(tag.encode()).hexdigest()[:12]}"
        try:
            network = self.client.networks.create(name, internal=True, labels=labels)
        except Exception as e:
            raise SandboxError(f"task {task.task_id}: creating its service network failed: {e}") from e
        side = []
        try:
            for svc in task.services.values():
                if svc.dockerfile is not None:
                    image = self._build(svc.dockerfile, svc.dockerfile.parent, task.task_id, task.build_timeout_s)
                else:
                    image = self.resolve_image(svc.image, task.task_id, f"service {svc.name}")
                kw = {k: v for k, v in (("command", svc.command), ("entrypoint", svc.entrypoint),
                                        ("working_dir", svc.workdir or None)) if v is not None}  # fmt: skip
                side.append(self.client.containers.run(
                    image, detach=True, environment=svc.env, labels=labels, mem_limit=f"{self.cfg.memory_mb}m",
                    pids_limit=self.cfg.pids, network=name,
                    networking_config={name: self.client.api.create_endpoint_config(aliases=[svc.name])}, **kw,
                ))  # fmt: skip
        except Exception as e:
            _discard(side, network)
            if isinstance(e, SandboxError):
                raise
            raise SandboxError(f"task {task.task_id}: starting its compose services failed: {e}") from e
        return network, side

    def reap_orphans(self) -> int:
        """Remove the containers (and service networks) of trainers on this host that died."""

        def dead(labels: dict) -> bool:
            try:
                os.kill(int(labels.get(OWNER, "0") or 0), 0)
            except ProcessLookupError:
                return True
            except (PermissionError, ValueError):
                pass
            return False

        host = {"label": f"{HOST}={socket.gethostname()}"}
        reaped = 0
        for c in self.client.containers.list(all=True, filters=host):
            if dead(c.labels):
                c.remove(force=True)
                reaped += 1
        for n in self.client.networks.list(filters=host):
            if dead(n.attrs.get("Labels") or {}):
                try:
                    n.remove()
                except Exception:
                    pass
        return reaped
