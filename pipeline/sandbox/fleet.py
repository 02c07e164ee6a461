"""A sandbox fleet: several Docker Engine API hosts behind one backend (``sandbox.hosts``).

Where it sits: rollout → ``make_backend(cfg)`` → **SandboxFleet** (when ``sandbox.hosts``
is set) → one ``DockerBackend`` per host → that host's containers. The agent loop, the
verifier phase and every reward-integrity rule are the ``docker`` backend's, unchanged, on
whichever host an episode lands.

Placement: an episode's sandbox goes to the up host with the most free slots (its
``max_concurrent`` minus the episodes it holds; ties: the first listed); when every slot
is taken the episode waits for one. A sandbox started by an episode that already holds one
(the verifier's fresh or blame sandbox) goes to the same host without waiting for a slot
(no episode can deadlock on its own second sandbox). A task's image is built once per host
(each host's ``DockerBackend`` keeps its own cache).

Hosts lost and back: a host whose API stops answering (its start fails and a ping fails)
is marked down with the reason; its episodes' sandboxes say they are not alive, so each
becomes an ``infra_error`` and runs again on another host (``rollout.infra_retries``),
never reward 0. A down host is pinged again at most every ``sandbox.host_probe_s`` and
re-admitted when it answers (the containers of the episodes it lost are removed then).
``health()`` reports ``sandbox/hosts_alive`` for MLflow.

Routes: ``unix://`` sockets, ``ssh://`` (the docker SDK's SSH transport), and ``tcp://``
only with TLS verification (``tls_ca``, ``tls_cert``, ``tls_key``): never an
unauthenticated TCP socket (anyone who reaches it owns the host).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from pipeline.sandbox.base import Sandbox, SandboxBackend, SandboxConfig, SandboxError
from pipeline.sandbox.hosts import HostSpec, host_specs, tls_config


class _Host:
    def __init__(self, spec: HostSpec):
        self.spec = spec
        self.backend = None  # a DockerBackend while up
        self.held = 0  # episodes holding a slot here
        self.boxes: set = set()  # sandboxes started here and not closed
        self.lost: list = []  # containers of episodes lost when the host went down
        self.down_why = ""
        self.probed = 0.0


class SandboxFleet(SandboxBackend):
    def __init__(self, cfg: SandboxConfig):
        self.cfg = cfg
        self.hosts = [_Host(s) for s in host_specs(cfg.hosts)]
        self._cond = threading.Condition()
        self._local = threading.local()  # the host of the episode this thread runs
        deadline = time.monotonic() + cfg.host_wait_s
        while True:  # hosts started beside the learner (pipeline.launch) may still be coming up
            for h in self.hosts:
                if h.backend is None:
                    self._connect(h)
            if any(h.backend for h in self.hosts) or time.monotonic() >= deadline:
                break
            time.sleep(2)
        if not any(h.backend for h in self.hosts):
            raise SandboxError(f"no sandbox host answered within sandbox.host_wait_s={cfg.host_wait_s:g} s: "
                               + "; ".join(f"{h.spec.url}: {h.down_why}" for h in self.hosts))  # fmt: skip
        down = [h.spec.url for h in self.hosts if h.backend is None]
        if down:
            print(f"sandbox fleet: {len(self.hosts) - len(down)} of {len(self.hosts)} hosts up; probing {down}", flush=True)

    # -- hosts ---------------------------------------------------------------------------
    def _connect(self, h: _Host) -> bool:
        from pipeline.sandbox.docker import DockerBackend

        h.probed = time.monotonic()
        try:
            backend = DockerBackend(self.cfg, base_url=h.spec.url, tls=tls_config(h.spec))
        except SandboxError as e:
            h.down_why = str(e)[:300]
            return False
        with self._cond:
            h.backend, h.down_why = backend, ""
            lost, h.lost = h.lost, []
            self._cond.notify_all()
        from pipeline.sandbox.docker_sandbox import _discard

        _discard(lost)  # what its lost episodes left, now that it answers again
        return True

    def _mark_down(self, h: _Host, why: str) -> None:
        with self._cond:
            if h.backend is None:
                return
            h.backend, h.down_why, h.probed = None, why[:300], time.monotonic()
            for box in h.boxes:
                box.host_lost = True  # its episode is an infra_error, run again elsewhere
                h.lost.append(box.container)
        print(f"sandbox fleet: host {h.spec.url} is down ({h.down_why}); "
              f"{sum(x.backend is not None for x in self.hosts)} of {len(self.hosts)} up", flush=True)  # fmt: skip

    def _probe(self) -> None:
        """Ping down hosts that were not tried for ``host_probe_s``; re-admit those that answer."""
        now = time.monotonic()
        for h in self.hosts:
            if h.backend is None and now - h.probed >= self.cfg.host_probe_s:
                if self._connect(h):
                    print(f"sandbox fleet: host {h.spec.url} is back", flush=True)

    def _answers(self, h: _Host) -> bool:
        try:
            return h.backend is not None and bool(h.backend.client.ping())
        except Exception:  # noqa: BLE001 - any failure to answer is "down"
            return False

    def _place(self) -> _Host:
        """The up host with the most free slots, waiting for one while all are taken."""
        with self._cond:
            while True:
                up = [h for h in self.hosts if h.backend is not None]
                if not up:
                    raise SandboxError("no sandbox host is up: " + "; ".join(f"{h.spec.url}: {h.down_why}" for h in self.hosts))
                best = max(up, key=lambda h: h.spec.max_concurrent - h.held)
                if best.spec.max_concurrent - best.held > 0:
                    best.held += 1
                    return best
                self._cond.wait(timeout=self.cfg.host_probe_s)
                self._probe_locked_out()

    def _probe_locked_out(self) -> None:
        self._cond.release()
        try:
            self._probe()
        finally:
            self._cond.acquire()

    def _release(self, h: _Host, box) -> None:
        with self._cond:
            h.boxes.discard(box)
            if getattr(box, "_fleet_slot", False):
                h.held -= 1
            self._cond.notify_all()

    # -- the backend ---------------------------------------------------------------------
    def start(self, *, task_dir: Path | None = None, episode: str = "", task=None) -> Sandbox:
        self._probe()
        nested = getattr(self._local, "host", None)
        tried: set[int] = set()
        while True:
            if nested is not None and nested.backend is not None:
                h, slot = nested, False  # the episode's second sandbox: its host, no slot wait
            else:
                h, slot = self._place(), True
            backend = h.backend
            try:
                if backend is None:
                    raise SandboxError(f"host {h.spec.url} went down")
                box = backend.start(task_dir=task_dir, episode=episode, task=task)
            except SandboxError as e:
                if slot:
                    with self._cond:
                        h.held -= 1
                        self._cond.notify_all()
                if self._answers(h) or id(h) in tried:
                    raise  # the host is fine: the task's own failure (image, services)
                tried.add(id(h))
                self._mark_down(h, str(e))
                nested = None
                continue
            box.host_url, box._fleet_slot = h.spec.url, slot
            with self._cond:
                h.boxes.add(box)
            box.on_close.append(lambda h=h, box=box: self._release(h, box))
            if slot:
                self._local.host = h
                box.on_close.append(lambda: setattr(self._local, "host", None))
            return box

    def verifier_sandbox(self, box, task=None, *, episode: str = ""):
        """The verifier's sandbox: made by the host that holds the agent's."""
        h = next((h for h in self.hosts if box in h.boxes), None)
        if h is None or h.backend is None:
            raise SandboxError(f"the host of episode {episode} is down")
        return h.backend.verifier_sandbox(box, task, episode=episode)

    def task_image(self, task_dir: Path, task=None, **kw) -> str:
        """Build (or find) the task's image on every up host; its name on the first."""
        names = [h.backend.task_image(task_dir, task, **kw) for h in self.hosts if h.backend is not None]
        if not names:
            raise SandboxError("no sandbox host is up")
        return names[0]

    def reap_orphans(self) -> int:
        return sum(h.backend.reap_orphans() for h in self.hosts if h.backend is not None)

    def health(self) -> dict:
        for h in self.hosts:  # a host that stopped answering between episodes counts as down now
            if h.backend is not None and not self._answers(h):
                self._mark_down(h, "does not answer a ping")
        self._probe()
        return {"sandbox/hosts_alive": float(sum(h.backend is not None for h in self.hosts)),
                "sandbox/hosts": float(len(self.hosts))}  # fmt: skip

    @property
    def builds(self) -> int:
        return sum(h.backend.builds for h in self.hosts if h.backend is not None)
