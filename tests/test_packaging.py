"""The package stands on its own: a wheel built from the tracked files, installed into a
fresh venv outside the checkout, runs its commands from another directory (nothing in
``pipeline/`` imports ``tools/`` or reads files by checkout-relative paths)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installed_outside_the_checkout_runs_config_and_convert(tmp_path):
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()  # fmt: skip
    for rel in files:  # build from a copy: building writes build/ and egg-info into the source tree
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes((ROOT / rel).read_bytes())
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(src), "-w", str(tmp_path / "dist")],
                       capture_output=True, text=True)  # fmt: skip
    if r.returncode != 0 and "bdist_wheel" in r.stderr + r.stdout:
        pytest.skip("no wheel builder in this environment")
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("echo_rl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "pipeline/sandbox/build_rootfs.sh" in names and not any(n.startswith("tools/") for n in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})["purelib"])
    # the heavy dependencies come from this environment's site-packages, added as a plain
    # path: its .pth files (the editable install of this checkout among them) are not run
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    py = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], check=True, capture_output=True)  # fmt: skip
    elsewhere = tmp_path / "project"  # a user's directory with its own copy of the recipes
    (elsewhere / "configs").mkdir(parents=True)
    for f in ("tiny.yaml",):
        (elsewhere / "configs" / f).write_bytes((ROOT / "configs" / f).read_bytes())
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    where = subprocess.run([str(py), "-c", "import pipeline, sys; print(pipeline.__file__)"], cwd=elsewhere,
                           capture_output=True, text=True, env=env, check=True).stdout  # fmt: skip
    assert str(venv) in where and str(ROOT) not in where, where
    exe = venv / "bin" / "echo-rl"
    cfg = subprocess.run([str(exe), "config", "configs/tiny.yaml"], cwd=elsewhere, capture_output=True, text=True,
                         env=env)  # fmt: skip
    assert cfg.returncode == 0 and "env_coef" in cfg.stdout, cfg.stderr[-2000:]
    conv = subprocess.run([str(exe), "convert", "--help"], cwd=elsewhere, capture_output=True, text=True, env=env)
    assert conv.returncode == 0 and "mcore-to-hf" in conv.stdout, conv.stderr[-2000:]
    rootfs = subprocess.run([str(py), "-c", "from pipeline.sandbox.bwrap import default_rootfs; print(default_rootfs())"],
                            cwd=elsewhere, capture_output=True, text=True, env=env)  # fmt: skip
    assert rootfs.returncode == 0 and Path(rootfs.stdout.strip()).is_dir(), rootfs.stderr[-2000:]


def test_pipeline_imports_nothing_from_tools():
    import ast

    for path in (ROOT / "pipeline").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []  # fmt: skip
            assert not any(m == "tools" or m.startswith("tools.") for m in mods), f"{path} imports {mods}"
        assert '"tools"' not in path.read_text(), f"{path} names the tools/ directory by path"


def test_engines_and_the_vllm_weight_loader_do_not_import_megatron():
    """The vLLM workers import ``pipeline.engines.vllm`` (their weight loader): the bucket
    types live in a torch-only leaf, so Megatron never loads there."""
    code = ("import sys; import pipeline.engines.base, pipeline.engines.vllm_server, pipeline.weights.buckets; "
            "import importlib.util as u; u.find_spec('vllm') and __import__('pipeline.engines.vllm'); "
            "print(sorted(m for m in sys.modules if m.startswith('megatron')))")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr[-2000:]
    control = subprocess.run([sys.executable, "-c", "import sys, pipeline.weights.stream; "
                              "print(any(m.startswith('megatron') for m in sys.modules))"],
                             capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert control.stdout.strip() == "True"  # the stream (learner side) does load it: the probe sees it
