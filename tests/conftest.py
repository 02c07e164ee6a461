"""Shared fixtures: the bubblewrap task rootfs (built by tools/build_rootfs.sh, cached)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

# task fixtures hold other projects' tests (Terminal-Bench pytest files): data, not this suite
collect_ignore_glob = ["fixtures/*"]

ROOT = Path(__file__).resolve().parents[1]

# vLLM's processes reach each other over the machine's first interface address unless told
# otherwise: the tests keep every byte on loopback
os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")


@pytest.fixture(scope="session")
def task_rootfs() -> str:
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed (apt-get install bubblewrap)")
    out = subprocess.run(["bash", str(ROOT / "tools/build_rootfs.sh")], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"no rootfs: {out.stderr[-300:]}")
    return out.stdout.strip().splitlines()[-1]


def _traversable(path) -> None:
    import os

    for p in (path, *path.parents):
        if p == p.parent:
            break
        if p.owner() == "root" and not p.stat().st_mode & 0o001:
            os.chmod(p, p.stat().st_mode | 0o011)


@pytest.fixture(autouse=True)
def _sandbox_user_can_reach_tmp(request):
    """A root trainer runs bwrap sandboxes as uid 65534, which must traverse the episode
    dirs under pytest's tmp dirs (created 0700): let others traverse (not list) them."""
    if "tmp_path" in request.fixturenames:
        _traversable(request.getfixturevalue("tmp_path"))


@pytest.fixture(scope="session", autouse=True)
def _sandbox_user_can_reach_basetemp(tmp_path_factory):
    _traversable(tmp_path_factory.getbasetemp())
