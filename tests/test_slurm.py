"""Cluster launch: the sbatch scripts are shellcheck-clean, the launcher's plan is right, and
a real one-node Slurm cluster (``tools/slurm_local.sh``) runs ``slurm/echo_14b.sbatch``
with the tiny recipe: a vLLM CPU server as the rollout component and the Megatron learner
(gloo, under srun torchrun) as separate job steps; scancel + resubmit resumes; MLflow has
every step exactly once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_config
from pipeline.launch import describe, plan

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["slurm/echo_14b.sbatch", "slurm/echo_8b.sbatch", "slurm/env.sh", "tools/slurm_local.sh"]


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (make setup installs it)")
def test_scripts_are_shellcheck_clean():
    r = subprocess.run(["shellcheck", "-x", *SCRIPTS], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_plan_puts_learners_first_and_every_server_in_the_learners_urls():
    cfg = load_config(ROOT / "configs/qwen3_14b_echo.yaml")
    steps = plan(cfg, "configs/qwen3_14b_echo.yaml", ["run.steps=5"], ["g1", "g2", "g3", "g4", "g5"], job_id="42")
    rollouts, learner = steps[:-1], steps[-1]
    assert [s.host for s in rollouts] == ["g3"] * 4 + ["g4"] * 4  # 8 GPUs / TP 2 per rollout node; g5 unused
    assert [s.url for s in rollouts][:2] == ["http://g3:8100", "http://g3:8101"]
    assert all("--gpus=2" in s.argv and "--tensor-parallel-size" in s.argv for s in rollouts)
    a = learner.argv
    assert "--nodelist=g1,g2" in a and "--nproc-per-node=8" in a and "--rdzv-endpoint=g1:29500" in a
    assert a[a.index("train") + 1 :][:2] == ["configs/qwen3_14b_echo.yaml", "run.steps=5"]
    urls = next(x for x in a if x.startswith("engine.server_urls="))
    # the learner's own config parser accepts exactly what the launcher passes
    lc = load_config(ROOT / "configs/qwen3_14b_echo.yaml", ["engine.backend=vllm_server", urls])
    assert lc.engine.server_urls == [s.url for s in rollouts]
    assert "/logs/42/learner-%t.log" in describe(steps)
    with pytest.raises(SystemExit, match="wants cluster.learner_nodes=2"):
        plan(cfg, "r.yaml", [], ["g1", "g2", "g3"], job_id="1")
    with pytest.raises(ConfigError, match="cluster.vllm_tensor_parallel must divide"):
        load_config(ROOT / "configs/qwen3_14b_echo.yaml", ["cluster.vllm_tensor_parallel=3"])


def test_dry_run_prints_each_nodes_command():
    r = subprocess.run([sys.executable, "-m", "pipeline.launch", "--dry-run", "--nodes", "a,b", "configs/qwen3_8b_echo.yaml"],
                       cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert sum(line.startswith("# rollout on b") for line in lines) == 8
    assert sum(line.startswith("# learner on a") for line in lines) == 1
    assert sum(line.startswith("srun ") for line in lines) == 9


def _slurm_up() -> bool:
    if os.geteuid() != 0 and shutil.which("sinfo") is None:
        return False
    r = subprocess.run(["bash", "tools/slurm_local.sh"], cwd=ROOT, capture_output=True, text=True)
    return r.returncode == 0


STEPS = 4


def _overrides(run_dir: Path) -> list[str]:
    return ["model.load=''", "model.warmstart_steps=0", f"run.output_dir={run_dir}", f"run.steps={STEPS}", "eval.probe=false",
            "rollout.tasks_per_step=2", "rollout.group_size=2", "rollout.max_turns=2", "rollout.max_tokens_per_turn=32",
            "rollout.max_context_tokens=768", "tasks.families=[text_count]", "tasks.eval_per_family=1", "eval.samples=1",
            "eval.k=[1]", "cluster.gpus_per_node=0", "cluster.vllm_args=[--dtype,float32,--enforce-eager]",
            "engine.request_timeout_s=120", "engine.server_start_timeout_s=600", "loss.env_targets=output+warning",
            "rollout.max_staleness=1"]  # fmt: skip


def _sbatch(run_dir: Path, extra: list[str]) -> str:
    tiny = _overrides(run_dir) + extra
    r = subprocess.run(["sbatch", "--parsable", "--nodes=1", "--gpus-per-node=0", f"--output={run_dir}/slurm-%j.out",
                        "slurm/echo_14b.sbatch", "configs/tiny.yaml", *tiny], cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().split(";")[0]


def _state(job: str) -> str:
    r = subprocess.run(["scontrol", "show", "job", job, "-o"], capture_output=True, text=True)
    for field in r.stdout.split():
        if field.startswith("JobState="):
            return field.split("=", 1)[1]
    return "GONE"


def _wait(job: str, until, timeout_s: float, run_dir: Path) -> None:
    deadline = time.time() + timeout_s
    while not until():
        if time.time() > deadline:
            subprocess.run(["scancel", job])
            logs = "\n".join(f"== {p}\n{p.read_text()[-3000:]}" for p in sorted(run_dir.rglob("*.log")) + sorted(run_dir.glob("slurm-*.out")))
            pytest.fail(f"job {job} ({_state(job)}) timed out\n{logs}")
        time.sleep(2)


@pytest.mark.slow
def test_sbatch_runs_the_tiny_job_asynchronously_on_a_real_slurm_and_resumes_after_kill_9(tmp_path):
    """The cluster path as a user runs it: sbatch → launch → a vLLM CPU server + the learner,
    with rollouts one step ahead (rollout.max_staleness=1); every process of the job killed
    with SIGKILL mid-run; the same sbatch command resumes: every step exactly once in MLflow,
    each step's tasks as the seed says, staleness ≤ 1, bounded disk."""
    pytest.importorskip("vllm", reason="the rollout component is vLLM's CPU server")
    if not _slurm_up():
        pytest.skip("no Slurm here (tools/slurm_local.sh needs root and apt)")
    from pipeline.config import load_config
    from pipeline.tasks.sets import TaskSampler
    from pipeline.tracking import read_metric_history
    from pipeline.trajectory import load_jsonl

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    job = _sbatch(run_dir, [])
    # let it checkpoint step 1, then kill -9 the learner (torchrun and its rank: no handler
    # runs, a rollout batch is in flight); the launcher stops the servers and the job fails
    _wait(job, lambda: (run_dir / "ckpt" / "latest").is_file() or _state(job) in ("COMPLETED", "FAILED"), 900, run_dir)
    assert _state(job) == "RUNNING", (run_dir / f"slurm-{job}.out").read_text()[-3000:]
    subprocess.run(["pkill", "-KILL", "-f", f"pipeline.cli train configs/tiny.yaml.*run.output_dir={run_dir}"], check=True)
    _wait(job, lambda: _state(job) in ("CANCELLED", "FAILED", "GONE", "COMPLETED"), 180, run_dir)
    killed = (run_dir / f"slurm-{job}.out").read_text()
    assert "launch: learner exited with" in killed and "learner exited with 0 " not in killed, killed[-3000:]
    first = (run_dir / "ckpt" / "latest").read_text().strip()
    assert not (run_dir / "summary.json").exists()
    job2 = _sbatch(run_dir, [])
    _wait(job2, lambda: _state(job2) in ("COMPLETED", "FAILED", "CANCELLED", "GONE"), 900, run_dir)
    out = (run_dir / f"slurm-{job2}.out").read_text()
    learner_log = (run_dir / "logs" / job2 / "learner-0.log").read_text()
    assert _state(job2) in ("COMPLETED", "GONE") and "learner exited with 0" in out, out[-3000:] + learner_log[-3000:]
    # the components ran as separate job steps, each with its own log
    rollout_log = (run_dir / "logs" / job2 / f"rollout-{os.uname().nodename.split('.')[0]}-0.log").read_text()
    assert "serve:" in rollout_log and "vllm.entrypoints.openai.api_server" in rollout_log
    assert f"resuming from {run_dir / 'ckpt'} at step {int(first[-6:])}" in learner_log
    assert f"step {STEPS}/{STEPS}" in learner_log and "step 1/" not in learner_log  # the second job did not start over
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == STEPS
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    history = lambda key: read_metric_history(f"sqlite:///{run_dir / 'mlflow.db'}", run_id, key)  # noqa: E731
    assert [s for s, _ in history("loss")] == list(range(STEPS))  # every step exactly once, in one MLflow run
    # asynchronous: after step 0 every batch was sampled one version behind the learner
    # (or by the learner's own version, for a batch re-done right after the resume)
    ages = [v for _, v in history("rollout/staleness_max")]
    assert ages[0] == 0 and all(a <= 1 for a in ages) and ages.count(1) >= 2, ages
    # each step trained on the tasks its seed names (in-flight rollouts re-done alike)
    cfg = load_config(ROOT / "configs/tiny.yaml", _overrides(run_dir))
    sampler = TaskSampler(cfg.tasks, tmp_path / "tasks", cfg.run.seed)
    for step in range(STEPS):
        want = sorted(t.task_id for t in sampler.for_step(step, cfg.rollout.tasks_per_step))
        got = sorted({t.task_id for t in load_jsonl(run_dir / "trajectories" / f"step_{step:06d}.jsonl")})
        assert got == want, step
    # bounded disk: learner.keep_checkpoints (2) checkpoints; only the served weights version
    assert len(list((run_dir / "ckpt").glob("step_*"))) == 2
    assert [p.name for p in (run_dir / "engine_model" / "stream").iterdir()] == [f"v{STEPS}"]


@pytest.mark.slow
def test_sbatch_pushes_the_weights_over_a_process_group(tmp_path):
    """engine.weight_transport=dist under the real Slurm: the server joins the learner's gloo
    group (its rank offset from the learner, the learner's address from launch.py), samples
    from every new version (sampler-vs-learner gap at fp32 noise after every step: a stale
    or wrong load would show as a large gap), and nothing is written to stream/vN."""
    pytest.importorskip("vllm", reason="the rollout component is vLLM's CPU server")
    if not _slurm_up():
        pytest.skip("no Slurm here (tools/slurm_local.sh needs root and apt)")
    from pipeline.tracking import read_metric_history

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    job = _sbatch(run_dir, ["rollout.max_staleness=0", "engine.weight_transport=dist", "run.steps=2",
                            "engine.weight_transfer_timeout_s=120"])  # fmt: skip
    _wait(job, lambda: _state(job) in ("COMPLETED", "FAILED", "CANCELLED", "GONE"), 900, run_dir)
    out = (run_dir / f"slurm-{job}.out").read_text()
    learner_log = (run_dir / "logs" / job / "learner-0.log").read_text()
    assert "learner exited with 0" in out, out[-3000:] + learner_log[-3000:]
    assert "--weight-transfer-config" in out and "engine.weight_transfer_address=" in out
    assert "through the filesystem" not in learner_log  # no fallback was needed
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    gaps = read_metric_history(f"sqlite:///{run_dir / 'mlflow.db'}", run_id, "logprob_abs_gap")
    # step 1 samples from v1, which only the process group delivered
    assert [s for s, _ in gaps] == [0, 1] and all(v < 1e-4 for _, v in gaps), gaps
    env_ce = read_metric_history(f"sqlite:///{run_dir / 'mlflow.db'}", run_id, "env_ce_warning")
    assert all(v > 0 for _, v in env_ce)  # the env term trained: the weights changed every step
    assert not (run_dir / "engine_model" / "stream").exists() or not any((run_dir / "engine_model" / "stream").iterdir())


def test_scaling_plan_counts_the_published_parameters_and_prints_every_section():
    sys.path.insert(0, str(ROOT / "tools"))
    from scaling_plan import params

    assert round(params(json.loads((ROOT / "configs/models/qwen3-14b.json").read_text())) / 1e9, 1) == 14.8
    assert round(params(json.loads((ROOT / "configs/models/qwen3-8b.json").read_text())) / 1e9, 1) == 8.2
    r = subprocess.run([sys.executable, "tools/scaling_plan.py", "configs/qwen3_14b_echo.yaml"], cwd=ROOT,
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    for section in ("## learner: 2 node(s)", "## rollout per step: 16 tasks × 16 samples = 256 episodes",
                    "## weight sync per step: 27.5 GiB", "(fits)", "## step time, serial vs overlapped"):  # fmt: skip
        assert section in r.stdout
    # the overlapped step is the slower side, never more than the serial sum
    import re

    serial = float(re.search(r"serial \(0\), filesystem:.* = (\d+) s", r.stdout).group(1))
    overlapped = float(re.search(r"\) = (\d+) s \(", r.stdout).group(1))
    assert 0 < overlapped < serial
