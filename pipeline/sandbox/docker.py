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

Two principals. The agent's commands run as the task's ``[agent] user`` (root where it
names none, as in Harbor; ``sandbox.agent_user`` can say ``unprivileged``: ``echo-agent``,
uid 10001, owner of the work dir, ``/logs/agent`` and its home). Every exec runs as root
and drops to the agent for its command alone, whose output goes to a root-only tmpfs; the
trainer reads the exec's stream with a byte bound and a deadline. The verifier runs as
root with a clean environment (``exec(..., verifier=True)``), by default in its own
container (``verifier_sandbox``, ``verifier_isolation: separate``): the task's image, in the
agent container's network namespace, with the agent's files copied in by the rules of
``pipeline/sandbox/boundary.py``.

Images, in order: the task's prebuilt ``image`` (Harbor ``docker_image``), its Dockerfile
(Harbor ``environment/``, Terminal-Bench's task dir; built once, cached under a tag derived
from the hash of the build context), or the base image with ``environment/app`` copied
into ``/app``. ``sandbox.image_map`` maps public names (a ``FROM`` line, a
``docker_image``) to local images; a name that is neither present nor mapped nor
pullable fails with one line naming the image, the task and the key.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shlex
import socket
import tarfile
import threading
import time
from pathlib import Path

from pipeline.sandbox import boundary
from pipeline.sandbox.boundary import NOBODY, OOM_AGENT
from pipeline.sandbox.docker_images import DockerImages, _tree
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
OUT, OUTV = "/run/echo-rl-out", "/run/echo-rl-vout"  # the agent's / the verifier's output tmpfs (root's, 0700)
EXEC_GRACE_S = 15.0  # past a command's own timeout, the trainer stops waiting for its exec
EXEC_READ_BYTES = 64 << 10  # read past output_bytes (the trailer, a little slack) before the rest is dropped
TRAILER = "ECHO-RL-EXEC-END"
AGENT_UID, AGENT_NAME, AGENT_HOME = 10001, "echo-agent", "/home/echo-agent"
PUBLIC_NET = "bridge"
KILL_ALL = "for ((i = 0; i < 10000; i++)); do kill -9 -1 2>/dev/null || break; done; "  # the engine's default network (Podman's "podman", by its Docker name)


def _tar(files: dict[str, bytes], mode: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            info.uid = info.gid = 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


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


class DockerSandbox(Sandbox):
    def __init__(self, cfg: SandboxConfig, container, *, workdir: str, agent_uid: int | None, env: dict,
                 networks: tuple[str, str] = ("none", "none"), side: list | None = None, network=None):  # fmt: skip
        self.cfg, self.container, self.closed = cfg, container, False
        self.workdir, self.agent_uid, self.env = workdir, agent_uid, env
        self.agent_gid, self.agent_name, self.agent_home = agent_uid, AGENT_NAME, AGENT_HOME  # (a task's own user: its)
        self.agent_net, self.verifier_net = networks  # "none" | "public", by phase
        self.net_now = self.agent_net
        self.side, self.network = side or [], network  # compose services beside it, their internal network
        self.on_close: list = []  # called once it is gone (a fleet frees its host's slot)
        self.host_lost = False

    def _switch_network(self, want: str) -> None:
        if want == self.net_now:
            return
        try:
            net = self.container.client.networks.get(PUBLIC_NET)
            net.connect(self.container) if want == "public" else net.disconnect(self.container, force=True)
        except Exception as e:
            raise SandboxError(f"switching the network to {want} failed: {e}") from e
        self.net_now = want

    def _script(self, command: str, timeout: float, out: str, prefix: str = "", agent: bool = False) -> str:
        # The script runs as root. Output goes to a file in a root-only tmpfs sized cap +
        # drain (a flood hits ENOSPC there, not the host; the agent can neither replace the
        # file, by a FIFO, nor reach the exec's own stream); then the first output_bytes are
        # printed, followed by a trailer with exit code and size. An agent command alone
        # drops to the agent's uid, as the OOM killer's first choice (boundary.OOM_AGENT).
        run = f"bash -c {shlex.quote(command)}"
        if agent:
            drop = self.dropper() if self.agent_uid is not None else ""
            inner = f'echo {OOM_AGENT} > /proc/self/oom_score_adj 2>/dev/null; exec {drop}bash -c "$1"'
            run = f"bash -c {shlex.quote(inner)} echo-rl {shlex.quote(command)}"
        # A fresh capture file per command (mktemp: never one that exists), read under a
        # timeout of its own: whatever a root agent puts at its path cannot block the exec.
        return (
            f"o=$(mktemp {out}/o.XXXXXXXX) || exit 99; {prefix}timeout -k 1 {timeout:g} {run} > \"$o\" 2>&1 < /dev/null; "
            f"rc=$?; timeout -s KILL 5 head -c {self.cfg.output_bytes} \"$o\"; size=$(stat -c %s \"$o\"); rm -f \"$o\"; "
            f'printf "\\n{TRAILER} %s %s" "$rc" "$size"'
        )

    def dropper(self) -> str:
        """The command prefix that runs what follows as the agent (util-linux setpriv)."""
        return f"setpriv --reuid={self.agent_uid} --regid={self.agent_gid} --init-groups -- "

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

    def _run(self, script: str, user: str, environment: dict | None = None, workdir: str | None = None,
             deadline_s: float = 600.0) -> bytes:
        """Run ``script`` and return its output, read on the trainer's side with a bound in
        bytes (``EXEC_READ_BYTES`` past the cap: a process that writes around the capture
        cannot flood the trainer) and a deadline (a command that never returns cannot hang
        it). Past the deadline the stream is cut: the output read so far comes back without
        a trailer (the caller decides what that means)."""
        api = self.container.client.api
        try:
            exec_id = api.exec_create(self.container.id, ["bash", "-c", script], workdir=workdir or self.workdir, user=user,
                                      environment=environment)["Id"]  # fmt: skip
            stream = api.exec_start(exec_id, stream=True)
            api._disable_socket_timeout(api._get_raw_response_socket(stream._response))  # the deadline is ours
        except Exception as e:  # the engine or the container died: not the command's fault
            raise SandboxError(f"docker exec failed: {e}") from e
        limit = self.cfg.output_bytes + EXEC_READ_BYTES
        state = {"head": bytearray(), "tail": b"", "error": None}

        def read() -> None:
            total = 0
            try:
                for chunk in stream:
                    total += len(chunk)
                    if len(state["head"]) < limit:
                        state["head"] += chunk[: limit - len(state["head"])]
                    state["tail"] = (state["tail"] + chunk)[-512:]
                    if total > limit + self.cfg.drain_bytes:
                        break  # flooded past every bound: stop reading, the rest is dropped
            except Exception as e:  # noqa: BLE001 (reported to the caller)
                state["error"] = e

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(deadline_s)
        try:
            stream.close()  # (also after a flood: the engine stops sending)
        except Exception:  # noqa: BLE001
            pass
        reader.join(5)
        if state["error"] is not None:
            raise SandboxError(f"docker exec failed: {state['error']}")
        head, tail = bytes(state["head"]), state["tail"]
        if len(head) >= limit and TRAILER.encode() in tail:  # the trailer is the stream's last bytes
            head = head[: self.cfg.output_bytes] + tail[tail.rindex(b"\n" + TRAILER.encode()):]
        return head

    def exec(self, command: str, *, timeout_s: float | None = None, verifier: bool = False,
             env: dict[str, str] | None = None) -> ExecResult:  # fmt: skip
        if self.closed:
            raise SandboxError("exec on a closed sandbox")
        cfg = self.cfg
        timeout = cfg.timeout_s if timeout_s is None else timeout_s
        start = time.monotonic()
        deadline = timeout + EXEC_GRACE_S
        if verifier:
            script = self._script(command, timeout, OUTV, self._verifier_env(env))
            raw = self._run(script, "0", deadline_s=deadline)
            if not raw and time.monotonic() - start < deadline:  # the engine's stream broke before a byte: once more
                raw = self._run(script, "0", deadline_s=deadline)
        else:
            home = {"HOME": self.agent_home, "USER": self.agent_name} if self.agent_uid is not None else {}
            raw = self._run(self._script(command, timeout, OUT, agent=True), "0", {**home, **(env or {})},
                            deadline_s=deadline)  # fmt: skip
        body, sep, trailer = raw.rpartition(b"\n" + TRAILER.encode() + b" ")
        if not sep and time.monotonic() - start >= deadline and self.alive():  # it never returned: a timeout
            return ExecResult(output=raw[: cfg.output_bytes].decode("utf-8", errors="replace"), exit_code=None,
                              timed_out=True, truncated=len(raw) > cfg.output_bytes, output_total_bytes=len(raw),
                              duration_s=time.monotonic() - start, timeout_s=timeout)  # fmt: skip
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
        if not raw:  # the engine's stream broke before a byte (setup is idempotent): once more
            raw = self._run(f"{script}; printf '\\n{TRAILER} %s' $?", "0", workdir="/")
        if not raw.rstrip().endswith(f"{TRAILER} 0".encode()):
            raise SandboxError(f"sandbox setup failed: {raw[-300:]!r}")

    @property
    def check_uid(self) -> int:
        return self.agent_uid if self.agent_uid is not None else NOBODY

    def network_for_verifier(self) -> None:
        """Give the sandbox the verifier phase's network. A process the agent left would get
        the network the agent was denied: those are stopped first (kill -1 as the agent's
        uid reaches only the agent's processes; a root agent's all but the keeper)."""
        if self.verifier_net == "public" and self.net_now == "none":
            user = "0" if self.agent_uid is None else f"{self.agent_uid}:{self.agent_gid}"
            raw = self._run(f"{KILL_ALL}printf '\\n{TRAILER} 0'", user, workdir="/", deadline_s=60)
            if TRAILER.encode() not in raw:
                raise SandboxError(f"stopping the agent's processes failed: {raw[-300:]!r}")
        self._switch_network(self.verifier_net)

    def prepare_verifier(self, *, stop_agent: bool) -> None:
        self.network_for_verifier()
        self._root((KILL_ALL if stop_agent else "") + "rm -rf /tests && mkdir -p -m 700 /tests /logs/verifier && "
                   "find /logs/verifier -mindepth 1 -delete && chown 0:0 /tests /logs/verifier && "
                   f"chmod {boundary.TESTS_MODE:o} /tests && chmod 755 /logs/verifier")  # fmt: skip

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
        if self.host_lost:  # its host went down (pipeline/sandbox/fleet.py): never trust it again
            return False
        try:
            self.container.reload()
            return self.container.status == "running"
        except Exception:
            return False

    def copy_workdir_to(self, other: Sandbox) -> None:
        if not isinstance(other, DockerSandbox):
            raise SandboxError("copy_workdir_to: both sandboxes must be docker ones")
        wd = self.workdir.rstrip("/") or "/"
        other._root(f"find {shlex.quote(wd)} -mindepth 1 -delete")
        from pipeline.sandbox.docker_carry import copy_paths

        copy_paths(self, other, [wd])
        if other.agent_uid is not None:  # the engine extracts as root: give the tree back to the agent
            other._root(f"chown -R -h {other.agent_uid}:{other.agent_gid} {shlex.quote(wd)}")

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            _discard([self.container, *self.side], self.network)
            for done in self.on_close:
                done()


class DockerBackend(DockerImages, SandboxBackend):
    def __init__(self, cfg: SandboxConfig, *, base_url: str | None = None, image: str = "echo-rl-base:latest", tls=None):
        import docker

        url = base_url or os.environ.get("DOCKER_HOST") or "unix:///run/podman/podman.sock"
        try:
            self.client = docker.DockerClient(base_url=url, max_pool_size=64, tls=tls or False)  # (concurrent execs)
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

    def start(self, *, task_dir: Path | None = None, episode: str = "", task=None) -> DockerSandbox:
        cfg = self.cfg
        if task is not None and task_dir is None:
            task_dir = task.task_dir
        image = self.task_image(task_dir, task) if task_dir else self.image
        # "task": the task's [agent] user, and root where it names none (Harbor's default)
        agent_root = cfg.agent_user == "root" or (cfg.agent_user == "task" and (task is None or task.agent_user in
                                                                                ("", "root", "0")))  # fmt: skip
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
        spec = {"image": image, "environment": env, "mem_limit": f"{memory}m", "memswap_limit": f"{memory}m",
                "labels": labels, **extra}  # (the verifier's container is made to the same spec)
        try:
            container = self._create(spec, net_kw)
        except SandboxError:
            _discard(side, network)
            raise
        attrs = container.attrs.get("Config") or {}
        image_env = dict(e.split("=", 1) for e in attrs.get("Env") or [] if "=" in e)
        workdir = (task.workdir if task is not None and task.workdir else "") or attrs.get("WorkingDir") or ""
        workdir = workdir if workdir not in ("", "/") else cfg.workdir
        box = DockerSandbox(cfg, container, workdir=cfg.workdir, agent_uid=None if agent_root else AGENT_UID,
                            env=image_env, networks=nets, side=side, network=network)  # fmt: skip
        box.net_now = "public" if net_kw.get("network") == PUBLIC_NET else "none"
        box.spec, box.own_user = spec, cfg.agent_user == "task" and task is not None and task.agent_user not in ("", "root", "0")
        try:
            box._switch_network(box.agent_net)  # before any command of the agent's
            if box.own_user:  # the task's [agent] user: its image's account, its image's ownership
                self._task_user(box, task)
                box.own_user = box.agent_uid is not None
            box.workdir = workdir
            self._lay_users(box)
            if box.own_user:
                return box
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

    def _create(self, spec: dict, net_kw: dict):
        cfg = self.cfg
        try:
            return self.client.containers.run(
                spec["image"], ["python3", "-c", KEEPER], detach=True, **net_kw, pids_limit=cfg.pids, user="0",
                cap_drop=["NET_RAW"], **{k: v for k, v in spec.items() if k != "image"},
                tmpfs={"/tmp": "size=256m,mode=1777", OUT: f"size={cfg.output_bytes + cfg.drain_bytes},mode=0700",
                       OUTV: f"size={cfg.output_bytes + cfg.drain_bytes},mode=0700",
                       "/logs/verifier": "size=64m,mode=0755"},
            )  # fmt: skip
        except Exception as e:
            raise SandboxError(f"container start failed ({spec['image']}): {e}") from e

    @staticmethod
    def _lay_users(box: DockerSandbox) -> None:
        """The agent's account, its dirs (owned by it unless it is root or the task's own
        user), root's /logs and /tests."""
        wd = shlex.quote(box.workdir)
        own = f"{wd} /app /logs/agent {AGENT_HOME}"
        if box.own_user:
            box._root(f"mkdir -p /logs/agent && chown {box.agent_uid}:{box.agent_gid} /logs/agent && "
                      "chown 0:0 /logs /tests /logs/verifier && chmod 755 /logs /tests /logs/verifier")  # fmt: skip
            return
        box._root(
            f"mkdir -p /app /logs/agent /logs/verifier /tests {wd} {AGENT_HOME} && "
            f"(grep -q '^{AGENT_NAME}:' /etc/passwd || echo '{AGENT_NAME}:x:{AGENT_UID}:{AGENT_UID}::{AGENT_HOME}:/bin/bash' >> /etc/passwd) && "
            + (f"chown -R -h {AGENT_UID}:{AGENT_UID} {own} && " if box.agent_uid is not None else "")
            + "chown 0:0 /logs /tests /logs/verifier && chmod 755 /logs /tests /logs/verifier"
        )  # fmt: skip

    @contextlib.contextmanager
    def verifier_sandbox(self, box: DockerSandbox, task=None, *, episode: str = ""):
        """``verifier_isolation: separate``: a new container of the task's image in the agent
        container's network namespace (what the agent left listening stays reachable on
        loopback), with its own processes, scratch dirs and toolchain, into which the agent's
        filesystem changes that cross the boundary (``boundary.crosses``) are copied."""
        box.network_for_verifier()
        spec = {**box.spec, "labels": {**box.spec["labels"], "echo-rl.episode": f"{episode}-verifier"}}
        container = self._create(spec, {"network_mode": f"container:{box.container.id}"})
        vbox = DockerSandbox(self.cfg, container, workdir=box.workdir, agent_uid=box.agent_uid, env=box.env,
                             networks=(box.verifier_net, box.verifier_net))  # fmt: skip
        vbox.agent_gid, vbox.agent_name, vbox.agent_home = box.agent_gid, box.agent_name, box.agent_home
        vbox.spec, vbox.own_user, vbox.sweep_roots = spec, box.own_user, ()
        try:
            self._lay_users(vbox)
            from pipeline.sandbox.docker_carry import carry_changes

            vbox.sweep_roots = carry_changes(box, vbox)
            yield vbox
        finally:
            vbox.close()

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
        # Verifier containers first (they live in their agent container's network namespace,
        # which cannot go before them); a container another trainer reaps at the same time
        # is gone already: never an error.
        orphans = [c for c in self.client.containers.list(all=True, filters=host) if dead(c.labels)]
        for c in sorted(orphans, key=lambda c: not c.labels.get("echo-rl.episode", "").endswith("-verifier")):
            try:
                c.remove(force=True)
                reaped += 1
            except Exception:  # noqa: BLE001
                pass
        for n in self.client.networks.list(filters=host):
            if dead(n.attrs.get("Labels") or {}):
                try:
                    n.remove()
                except Exception:
                    pass
        return reaped
