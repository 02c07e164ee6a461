"""One episode's Docker container and how commands run in it (``DockerSandbox``): the
exec script (root, dropping to the agent for its command alone), output captured in a
root-only tmpfs and read back with a byte bound and a deadline, the phase networks, files
in and out. Made by ``DockerBackend`` (``pipeline/sandbox/docker.py``), which says what
the containment is; the constants here (labels, the keeper, the output dirs) are shared
with the carry (``docker_carry.py``) and the fleet (``fleet.py``).
"""

from __future__ import annotations

import io
import os
import re
import shlex
import tarfile
import threading
import time

from pipeline.sandbox import boundary
from pipeline.sandbox.boundary import NOBODY, OOM_AGENT, OUT, OUTV
from pipeline.sandbox.boundary import UNSAFE_ENV, VERIFIER_PATH
from pipeline.sandbox.base import (ExecResult, Sandbox, SandboxConfig, SandboxError,
                                   phase_networks)  # fmt: skip

OWNER, HOST = "echo-rl.owner", "echo-rl.host"
# PID 1 of every episode container: immune to `kill -9 -1` (which stops a root agent's
# processes before the verifier), and reaps every orphan reparented to it, so dead
# processes never hold on to the pids limit. Given arguments, it first starts them as its
# child: the image's ENTRYPOINT with Harbor's command (``HARBOR_COMMAND``), as Harbor runs a
# task's main container (an entrypoint that starts the task's service, then sleeps).
KEEPER = (
    "import os, signal, sys\n"
    "signal.signal(signal.SIGCHLD, lambda *a: None)\n"
    "if len(sys.argv) > 1 and os.fork() == 0:\n"
    "    try:\n"
    "        os.execvp(sys.argv[1], sys.argv[1:])\n"
    "    finally:\n"
    "        os._exit(127)\n"
    "while True:\n"
    "    try:\n"
    "        os.waitpid(-1, 0)\n"
    "    except ChildProcessError:\n"
    "        signal.pause()\n"
)
HARBOR_COMMAND = ["sh", "-c", "sleep infinity"]  # the main container's command under Harbor (its CMD replaced)
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
        self.prepared = False  # its image is a task's offline-ready one (pipeline/tasks/prepare.py)

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
        """The command prefix that runs what follows as the agent (util-linux setpriv): with
        no-new-privs and no inheritable capabilities (``boundary.drop_flags``), so nothing the
        agent runs gains privilege from a file's metadata; a task's own ``[agent] user`` keeps
        what its image grants it (sudo), the verifier's defences stay (``boundary.Defences``)."""
        flags = "" if getattr(self, "own_user", False) else boundary.drop_flags()
        return f"setpriv --reuid={self.agent_uid} --regid={self.agent_gid} --init-groups {flags}-- "

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
