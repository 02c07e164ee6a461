"""Offline-ready task images: ``echo-rl tasks prepare DATASET... --wheelhouse DIR``.

Compute nodes often have no internet, and Terminal-Bench 2 / Harbor verifiers install their
tools when they run (``curl … astral.sh/uv/install.sh | sh``, then ``uvx -w pytest …
pytest``). Run this once where a package index is reachable (or with a wheelhouse the user
made from a mirror): for each task it builds, from the task's own image, an image with the
verifier's toolchain baked in, checks that the reference solution passes in it **with the
verifier phase offline**, and only then tags it; training and ``tasks check`` use it from
then on (``DockerImages.task_image``), with the same result offline.

What is baked in (``/opt/echo-rl``, which the verifier phase's boundary never lets the agent
change: ``boundary.TOOLCHAIN``):
- the wheels (``--wheelhouse``, or ``--download`` the ``--tools`` with pip, through the
  user's pip configuration: index, mirror, find-links), offered to uv and pip as their only
  source (``UV_OFFLINE``, ``UV_FIND_LINKS``, ``PIP_NO_INDEX``, ``PIP_FIND_LINKS``; their
  user config files ignored: ``UV_NO_CONFIG``, ``PIP_CONFIG_FILE=/dev/null``) and uv's cache;
- uv itself (from its wheel) where its installer puts it (``~/.local/bin/{uv,uvx,env}``,
  and ``/usr/local/bin``), so a test.sh whose ``curl | sh`` fails offline goes on to
  ``source $HOME/.local/bin/env`` and finds it.

The prepared image is tagged ``<task image>-prep`` and labelled with the wheelhouse's hash;
a changed task (its build context hashes to another task image tag) is not prepared until
prepared again. A prepared task is verified offline without the "needs the network"
verdict (its oracle passed offline: what its install steps print offline is noise). Not
covered: verifiers that download a Python (``uvx -p 3.13`` with no such interpreter in the
image) or install system packages (``apt-get install``) they lack.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.sandbox.docker_images import PREP, prepared_tag  # noqa: F401

TOOLS = ("uv", "pytest", "pytest-json-ctrf")
WHEELS = "/opt/echo-rl/wheels"

_INSTALL_UV = r'''
import glob, os, zipfile
bindir = os.path.expanduser("~/.local/bin")
os.makedirs(bindir, exist_ok=True)
for whl in sorted(glob.glob("/opt/echo-rl/wheels/uv-*.whl"))[-1:]:
    with zipfile.ZipFile(whl) as z:
        for name in z.namelist():
            if "/scripts/" in name and os.path.basename(name) in ("uv", "uvx"):
                dst = os.path.join(bindir, os.path.basename(name))
                with open(dst, "wb") as f:
                    f.write(z.read(name))
                os.chmod(dst, 0o755)
                link = os.path.join("/usr/local/bin", os.path.basename(name))
                if not os.path.lexists(link):
                    os.symlink(dst, link)
with open(os.path.join(bindir, "env"), "w") as f:  # what uv's installer writes
    f.write('case ":${PATH}:" in *:"$HOME/.local/bin":*) ;; *) export PATH="$HOME/.local/bin:$PATH" ;; esac\n')
'''

DOCKERFILE = """FROM {base}
COPY wheels {wheels}
COPY install_uv.py /opt/echo-rl/install_uv.py
RUN (command -v python3 || command -v python) >/dev/null && "$(command -v python3 || command -v python)" /opt/echo-rl/install_uv.py
ENV UV_OFFLINE=1 UV_FIND_LINKS={wheels} UV_NO_CONFIG=1 UV_PYTHON_DOWNLOADS=never UV_CACHE_DIR=/opt/echo-rl/uv-cache \\
    PIP_NO_INDEX=1 PIP_FIND_LINKS={wheels} PIP_CONFIG_FILE=/dev/null
LABEL echo-rl.prepared-from="{base}" echo-rl.wheelhouse="{digest}"
"""


def wheelhouse_digest(wheels: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(wheels.glob("*.whl")):
        h.update(p.name.encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()[:16]


def download(tools: list[str], dest: Path) -> None:
    """The tools and their dependencies as wheels, through the user's pip configuration."""
    dest.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--dest", str(dest),
                        *tools], capture_output=True, text=True)  # fmt: skip
    if r.returncode != 0:
        raise RuntimeError(f"pip download {' '.join(tools)} failed (is a package index or mirror reachable? "
                           f"pip's configuration says where): {r.stderr.strip()[-600:]}")  # fmt: skip


def prepare_task(path: Path, backend, cfg, wheels: Path) -> dict:
    """Build the task's prepared image, check its oracle offline in it, tag it; one row."""
    from pipeline.sandbox.base import SandboxError
    from pipeline.tasks.base import TaskFormatError, VerifierError
    from pipeline.tasks.check import check_task
    from pipeline.tasks.formats import load_task

    row = {"task": path.name, "path": str(path), "status": "fail", "cause": ""}
    t0 = time.perf_counter()
    try:
        task = load_task(path)
        row["task"] = task.task_id
        base = backend.task_image(task.task_dir, task, prepared=False)
        digest = wheelhouse_digest(wheels)
        final = prepared_tag(base)
        with tempfile.TemporaryDirectory(prefix="echo-rl-prepare-") as ctx:
            shutil.copytree(wheels, Path(ctx) / "wheels")
            (Path(ctx) / "install_uv.py").write_text(_INSTALL_UV)
            (Path(ctx) / "Dockerfile").write_text(DOCKERFILE.format(base=base, wheels=WHEELS, digest=digest))
            candidate = f"{final}-candidate"
            try:
                backend.client.images.build(path=ctx, tag=candidate, rm=True, network_mode="none",
                                            timeout=int(task.build_timeout_s))  # fmt: skip
            except Exception as e:
                raise SandboxError(f"building the prepared image of {base} failed: {str(e)[-800:]}") from e
        backend.client.images.get(candidate).tag(*final.rsplit(":", 1))
        try:
            checked = check_task(path, backend, cfg)  # in the prepared image (now tagged), its verifier offline
        finally:
            _untag(backend, candidate)
        row.update(image=final, base=base, wheelhouse=digest, oracle=checked.get("oracle"), noop=checked.get("noop"))
        if checked["status"] != "pass":
            _untag(backend, final)  # never used unless its oracle passes offline
            row["cause"] = f"offline in the prepared image: {checked['cause']}"
            row.update({k: checked[k] for k in ("verifier_tail", "oracle_tail") if checked.get(k)})
        else:
            row["status"] = "pass"
    except (TaskFormatError, SandboxError, VerifierError, OSError) as e:
        row["cause"] = f"{type(e).__name__}: {e}"[:500]
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def _untag(backend, tag: str) -> None:
    try:
        backend.client.images.remove(tag, noprune=True)
    except Exception:  # noqa: BLE001 - best effort
        pass


def main(argv: list[str]) -> int:
    from pipeline.config import ConfigError, load_config
    from pipeline.sandbox import SandboxError, make_backend
    from pipeline.tasks.formats import task_dirs_in

    p = argparse.ArgumentParser(prog="echo-rl tasks prepare", description=__doc__.splitlines()[0])
    p.add_argument("dirs", nargs="+", help="task dirs or datasets")
    p.add_argument("--config", default=None, help="YAML recipe whose sandbox section to use (docker)")
    p.add_argument("--wheelhouse", default=None, help="a directory of wheels (the tools and their dependencies)")
    p.add_argument("--download", action="store_true", help="fetch --tools into the wheelhouse with pip first")
    p.add_argument("--tools", default=",".join(TOOLS), help="what --download fetches (pip requirement specifiers)")
    p.add_argument("--json", default=None, help="write the per-task results here")
    overrides = [x for x in argv if "=" in x and not x.startswith("-") and not Path(x).exists()]
    a = p.parse_args([x for x in argv if x not in overrides])
    try:
        # the oracle is checked with the verifier phase offline, as on a compute node
        cfg = dataclasses.replace(load_config(a.config, ["sandbox.backend=docker", *overrides]).sandbox,
                                  verifier_network="none")  # fmt: skip
        if cfg.hosts:
            raise ConfigError("tasks prepare runs against one Docker API host at a time (DOCKER_HOST); "
                              "run it once per host of sandbox.hosts")  # fmt: skip
        backend = make_backend(cfg)
    except (ConfigError, SandboxError) as e:
        print(f"echo-rl: {e}", file=sys.stderr)
        return 2
    wheels = Path(a.wheelhouse) if a.wheelhouse else Path(tempfile.mkdtemp(prefix="echo-rl-wheels-"))
    if a.download:
        try:
            download([t for t in a.tools.split(",") if t], wheels)
        except RuntimeError as e:
            print(f"echo-rl: {e}", file=sys.stderr)
            return 2
    if not any(wheels.glob("*.whl")):
        print(f"echo-rl: no wheels in {wheels} (give --wheelhouse DIR, or --download)", file=sys.stderr)
        return 2
    paths = task_dirs_in(a.dirs)
    if not paths:
        print(f"echo-rl: no task directories in {a.dirs}", file=sys.stderr)
        return 2
    rows = [prepare_task(path, backend, cfg, wheels) for path in paths]
    width = max(len(r["task"]) for r in rows)
    for r in rows:
        print(f"{r['task']:<{width}}  {r['status'].upper():<4}  {r['seconds']:6.1f}s  {r.get('image', '')}  {r['cause']}")
    failed = sum(r["status"] != "pass" for r in rows)
    print(f"{len(rows) - failed}/{len(rows)} prepared (wheelhouse {wheels}, {wheelhouse_digest(wheels)})")
    if a.json:
        Path(a.json).write_text(json.dumps({"wheelhouse": str(wheels), "tasks": rows}, indent=1))
    return 1 if failed else 0
