"""Shared fixtures: the bubblewrap task rootfs (built by tools/build_rootfs.sh, cached)."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def task_rootfs() -> str:
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed (apt-get install bubblewrap)")
    out = subprocess.run(["bash", str(ROOT / "tools/build_rootfs.sh")], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"no rootfs: {out.stderr[-300:]}")
    return out.stdout.strip().splitlines()[-1]
