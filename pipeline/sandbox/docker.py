"""Docker backend: the Docker Engine API through the ``docker`` SDK (Podman's compatible
API in CI). One container per episode (``docker_sandbox.py``: how commands run in it), live across its turns (as in Harbor: what the agent
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
import os
import shlex
import socket
import time
from pathlib import Path

from pipeline.sandbox import boundary
from pipeline.sandbox.base import SandboxBackend, SandboxConfig, SandboxError, phase_networks
from pipeline.sandbox.docker_images import PREP, DockerImages, _tree
from pipeline.sandbox.docker_sandbox import (AGENT_HOME, AGENT_NAME, AGENT_UID, HARBOR_COMMAND, HOST, KEEPER, OUT,
                                             OUTV, OWNER, PUBLIC_NET, DockerSandbox, _discard)  # noqa: F401 - the backend's names


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
        box.prepared = image.endswith(PREP)  # its oracle passed offline: install noise is not "needs the network"
        try:
            if task is not None and task.healthcheck is not None:  # the image's own service is up first
                _wait_for(container, task.healthcheck, "service_healthy", task.task_id)
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

    def _create(self, spec: dict, net_kw: dict, verifier: bool = False):
        """A container of ``spec``. The verifier's runs with no-new-privileges: no process in
        it gains privilege from a setuid bit or a file capability (``boundary.Defences``)."""
        cfg = self.cfg
        if verifier and boundary.DEFENCES.no_new_privs_container:
            net_kw = {**net_kw, "security_opt": ["no-new-privileges"]}
        # The image's ENTRYPOINT runs as Harbor runs it (with Harbor's command), as the keeper's
        # child; never in the verifier's container (the agent's already started the services,
        # and they stay reachable in its network namespace).
        entry = [] if verifier else self._entrypoint(spec["image"])
        run = {"entrypoint": ["python3", "-c", KEEPER], "command": [*entry, *HARBOR_COMMAND]} if entry \
            else {"command": ["python3", "-c", KEEPER]}  # fmt: skip
        try:
            return self.client.containers.run(
                spec["image"], **run, detach=True, **net_kw, pids_limit=cfg.pids, user="0",
                cap_drop=["NET_RAW"], **{k: v for k, v in spec.items() if k != "image"},
                tmpfs={"/tmp": "size=256m,mode=1777", OUT: f"size={cfg.output_bytes + cfg.drain_bytes},mode=0700",
                       OUTV: f"size={cfg.output_bytes + cfg.drain_bytes},mode=0700",
                       "/logs/verifier": "size=64m,mode=0755"},
            )  # fmt: skip
        except Exception as e:
            raise SandboxError(f"container start failed ({spec['image']}): {e}") from e

    def _entrypoint(self, image: str) -> list[str]:
        """The image's ENTRYPOINT ([] when it has none, or it is a shell that would only run
        Harbor's command)."""
        try:
            entry = (self.client.images.get(image).attrs.get("Config") or {}).get("Entrypoint") or []
        except Exception:  # noqa: BLE001 - no such image: the create call says so
            return []
        entry = [entry] if isinstance(entry, str) else list(entry)
        return [] if entry in (["/bin/sh", "-c"], ["sh", "-c"], ["/bin/bash", "-c"], ["bash", "-c"]) else entry

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
        container = self._create(spec, {"network_mode": f"container:{box.container.id}"}, verifier=True)
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
        side, started = [], {}
        try:
            for svc in _in_order(task):
                for dep, cond in svc.depends_on.items():  # compose: its dependencies first, up to their condition
                    _wait_for(started[dep], task.services[dep], cond, task.task_id)
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
                started[svc.name] = side[-1]
            for dep, cond in task.service_deps.items():  # the agent's container starts once they are ready
                _wait_for(started[dep], task.services[dep], cond, task.task_id)
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


def _in_order(task) -> list:
    """The task's services, each after what it depends on (a cycle is the task's error)."""
    out, state = [], {}

    def visit(name: str) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            raise SandboxError(f"task {task.task_id}: its compose services depend on each other in a circle ({name})")
        state[name] = "visiting"
        for dep in task.services[name].depends_on:
            visit(dep)
        state[name] = "done"
        out.append(task.services[name])

    for name in task.services:
        visit(name)
    return out


def _wait_for(container, svc, condition: str, task_id: str) -> None:
    """Compose's ``depends_on`` conditions: started (now), healthy (its healthcheck, run here
    by exec: engines without systemd never run it themselves), completed successfully. A
    service that never gets there is the infrastructure's failure, with its log."""
    if condition == "service_started":
        return
    deadline = time.monotonic() + svc.health_start_s + max(svc.health_retries, 1) * (svc.health_interval_s + svc.health_timeout_s)
    if condition == "service_healthy" and svc.healthcheck is None:
        raise SandboxError(f"task {task_id}: service {svc.name} is waited for as healthy but has no healthcheck")
    while time.monotonic() < deadline:
        try:
            container.reload()
        except Exception as e:  # noqa: BLE001
            raise SandboxError(f"task {task_id}: service {svc.name} vanished: {e}") from e
        status = container.status
        if condition == "service_completed_successfully" and status == "exited":
            code = (container.attrs.get("State") or {}).get("ExitCode")
            if code == 0:
                return
            break
        if status in ("exited", "dead"):
            break
        if condition == "service_healthy" and status == "running" and _healthy(container, svc):
            return
        time.sleep(0.5)
    try:
        log = container.logs(tail=20).decode(errors="replace").strip()
    except Exception:  # noqa: BLE001
        log = ""
    what = {"service_healthy": "healthy", "service_completed_successfully": "completed successfully"}[condition]
    raise SandboxError(f"task {task_id}: service {svc.name} never became {what} (state {container.status}); "
                       f"its log: {log[-1500:] or '(empty)'}")  # fmt: skip


def _healthy(container, svc) -> bool:
    """One run of the service's healthcheck, given up after its timeout (a check that never
    returns leaves a daemon thread behind, never a stuck episode start)."""
    import threading

    result: list[bool] = []

    def check() -> None:
        try:
            result.append(container.exec_run(svc.healthcheck, user="0").exit_code == 0)
        except Exception:  # noqa: BLE001 - not ready to run it yet
            result.append(False)

    t = threading.Thread(target=check, daemon=True, name=f"health-{svc.name}")
    t.start()
    t.join(timeout=svc.health_timeout_s)
    return bool(result and result[0])
