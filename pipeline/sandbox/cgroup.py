"""Per-episode cgroup v1 pair (pids, memory) for the bwrap backend: limits and the kill
of everything an episode's commands left behind."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

CGROUP_V1 = Path("/sys/fs/cgroup")


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
