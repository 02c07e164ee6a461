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


# Families of expensive tests, by file, so one family runs alone (`make test ARGS="-m docker"`)
# and the fast tier leaves them out (`make test-fast`). A file's own marks add to these.
FAMILIES = {
    "docker": ("test_fleet", "test_honest_matrix", "test_leftovers", "test_prepare", "test_privilege",
               "test_published_shapes", "test_reward_integrity", "test_task_check_why", "test_task_network",
               "test_train_under_attack"),
    "redteam": ("test_honest_matrix", "test_leftovers", "test_privilege", "test_reward_integrity",
                "test_train_under_attack"),
    "slurm": ("test_slurm",),
    "microcosm": ("test_microcosm",),
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        stem = item.path.stem
        for mark, files in FAMILIES.items():
            if stem in files:
                item.add_marker(getattr(pytest.mark, mark))


# CI fails on a skip whose reason is not one of these (printed with every reason at the end):
# what this machine cannot have. Anything else that skips (Podman down, no rootfs, no
# Slurm) means the suite did not test what it says.
ALLOWED_SKIPS = ("GPU", "CUDA", "Transformer Engine", "transformer_engine", "TE is not installed")
_skips: list[tuple[str, str]] = []


def pytest_runtest_logreport(report):
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skips.append((report.nodeid, reason))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _skips:
        return
    bad = [(n, r) for n, r in _skips if not any(a in r for a in ALLOWED_SKIPS)]
    terminalreporter.section("skips")
    for n, r in _skips:
        terminalreporter.write_line(f"{'UNEXPECTED ' if (n, r) in bad else ''}SKIP {n}: {r}")
    if bad and os.environ.get("CI"):
        terminalreporter.write_line(f"{len(bad)} unexpected skips: CI fails (tests/conftest.py ALLOWED_SKIPS)", red=True)


def pytest_sessionfinish(session, exitstatus):
    if hasattr(session.config, "workerinput"):  # an xdist worker: the controller decides
        return
    if os.environ.get("CI") and any(not any(a in r for a in ALLOWED_SKIPS) for _, r in _skips) and exitstatus == 0:
        session.exitstatus = 1
