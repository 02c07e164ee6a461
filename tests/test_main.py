"""The training loop end to end through the CLI (the README's main job, CI-sized): real
Megatron learner on gloo, HF engine, bubblewrap sandboxes, generated tasks, MLflow on
sqlite; resume after kill -9 with no missing or duplicated steps and the same losses."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.tracking import read_metric_history

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["rollout.tasks_per_step=2", "rollout.group_size=2", "rollout.max_turns=3", "rollout.max_tokens_per_turn=48",
         "tasks.families=[text_count,files_mkdir]", "tasks.eval_per_family=1", "eval.samples=1", "eval.k=[1]"]  # fmt: skip


def echo_rl(*args, timeout=900, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONWARNINGS="ignore")
    return subprocess.Popen([str(Path(sys.executable).parent / "echo-rl"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)  # fmt: skip


def run(*args, timeout=900):
    p = echo_rl(*args)
    out, _ = p.communicate(timeout=timeout)
    return p.returncode, out


def metric(run_dir: Path, key: str) -> list[tuple[int, float]]:
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    return read_metric_history(f"sqlite:///{run_dir / 'mlflow.db'}", run_id, key)


@pytest.mark.slow
def test_tiny_recipe_trains_end_to_end_with_warm_start_and_mlflow(tmp_path, task_rootfs):
    rd = tmp_path / "run"
    rc, out = run("train", "configs/tiny.yaml", f"run.output_dir={rd}", "run.steps=2", "eval.every=1",
                  f"model.load={tmp_path}/ws/ckpt", "model.warmstart_steps=4", *SMALL)  # fmt: skip
    assert rc == 0, out[-6000:]
    assert "warm start 4/4" in out and "step 2/2" in out and "mlflow ui --backend-store-uri" in out
    summary = json.loads((rd / "summary.json").read_text())
    assert summary["steps"] == 2
    for key in ("loss", "pg_loss", "env_ce_output", "rollout/pass_rate", "rollout/tokens_output", "grad_norm",
                "time/rollout_s", "eval/pass_at_1", "probe/output_ce", "logprob_abs_gap", "env_coef"):
        # training metrics at the step index; evaluations at the weights version they measured
        assert [s for s, _ in metric(rd, key)] == ([0, 1, 2] if key.startswith(("eval", "probe")) else [0, 1]), key
    # the HF engine's sampling log-probs and the Megatron learner's agree (fp32, same weights)
    assert all(v < 1e-4 for _, v in metric(rd, "logprob_abs_gap"))
    assert all(v == 0.05 for _, v in metric(rd, "env_coef"))
    # artifacts: curves, trajectories rendered by the viewer, the config, eval tables
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{rd / 'mlflow.db'}")
    run_id = summary["mlflow_run_id"]
    names = {a.path for a in client.list_artifacts(run_id)} | {a.path for a in client.list_artifacts(run_id, "trajectories")}
    assert {"curves.png", "config.yaml", "trajectories/step_000001.html"} <= names, names
    assert (rd / "mlartifacts").is_dir() and not (ROOT / "mlruns").exists()  # artifacts under RUN_DIR
    assert client.get_run(run_id).data.params["loss.env_coef"] == "0.05"
    # the HF export loads in transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(rd / "hf")
    assert AutoTokenizer.from_pretrained(rd / "hf").chat_template


@pytest.mark.slow
def test_kill_9_then_the_same_command_resumes_exactly(tmp_path, task_rootfs):
    # random-init policy: its actions are never valid tool calls, so every observation is a
    # deterministic WARNING; seeded one-at-a-time sampling makes the rollouts reproducible
    det = ["model.load=''", "model.warmstart_steps=0", "engine.max_batch=1", "rollout.max_concurrent_episodes=1",
           "loss.env_targets=output+warning", "run.steps=3", "eval.probe=false", *SMALL]  # fmt: skip
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    rc, out = run("train", "configs/tiny.yaml", f"run.output_dir={ref}", *det)
    assert rc == 0, out[-4000:]
    p = echo_rl("train", "configs/tiny.yaml", f"run.output_dir={killed}", *det, start_new_session=True)
    deadline = time.time() + 600
    while not (killed / "trajectories" / "step_000001.jsonl").exists():  # mid step 2: after its rollouts
        assert p.poll() is None and time.time() < deadline, p.communicate()[0][-4000:]
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert (killed / "ckpt" / "latest").read_text().strip() == "step_000001"
    assert [s for s, _ in metric(killed, "loss")] == [0]
    rc, out = run("train", "configs/tiny.yaml", f"run.output_dir={killed}", *det)
    assert rc == 0, out[-4000:]
    assert "step 1/3" not in out and "step 2/3" in out  # resumed at step 2, not from scratch
    got, want = metric(killed, "loss"), metric(ref, "loss")
    assert [s for s, _ in got] == [0, 1, 2]  # every step exactly once, in the same MLflow run
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6, abs=1e-9)
    assert metric(killed, "env_ce_warning")[1][1] > 0  # the compared losses are not trivially 0
    # bounded disk: learner.keep_checkpoints (2) newest checkpoints are kept
    assert sorted(p.name for p in (killed / "ckpt").glob("step_*")) == ["step_000002", "step_000003"]


@pytest.mark.slow
def test_nan_loss_stops_with_a_message_or_is_skipped_and_counted(tmp_path, task_rootfs):
    base = ["model.load=''", "model.warmstart_steps=0", "run.steps=1", "loss.env_coef=nan", "eval.probe=false",
            "loss.env_targets=output+warning", *SMALL]  # fmt: skip
    rc, out = run("train", "configs/tiny.yaml", f"run.output_dir={tmp_path / 'stop'}", *base)
    assert rc == 1 and "non-finite loss" in out and "learner.on_nonfinite=skip" in out
    rc, out = run("train", "configs/tiny.yaml", f"run.output_dir={tmp_path / 'skip'}", "learner.on_nonfinite=skip", *base)
    assert rc == 0, out[-4000:]
    assert [v for _, v in metric(tmp_path / "skip", "skipped_nonfinite")] == [1.0]


@pytest.mark.slow
def test_trains_on_a_directory_task_set_on_docker(tmp_path, task_rootfs):
    """Two steps of the tiny recipe on real task dirs (Harbor and Terminal-Bench 1 fixtures,
    Podman), held-out tasks from their own directory; the overlap check runs at start."""
    import shutil

    from pipeline.sandbox import SandboxConfig, SandboxError
    from pipeline.sandbox.docker import DockerBackend
    from pipeline.tasks.generator import generate

    try:
        DockerBackend(SandboxConfig(backend="docker"))
    except SandboxError as e:
        pytest.skip(f"docker backend unavailable: {e}")
    train = tmp_path / "train"
    for name in ("harbor-reward-json", "tb1-compose", "harbor-service"):
        shutil.copytree(ROOT / "tests/fixtures/tasks" / name, train / name)
    generate(["files_mkdir"], 1, tmp_path / "heldout", seed=3)
    rd = tmp_path / "run"
    rc, out = run("train", "configs/tiny.yaml", f"run.output_dir={rd}", "run.steps=2", "eval.every=2", "model.load=''",
                  "model.warmstart_steps=0", "eval.probe=false", "sandbox.backend=docker", f"tasks.train_dirs=[{train}]",
                  f"tasks.eval_dirs=[{tmp_path / 'heldout'}]", *SMALL[:4], "eval.samples=1", "eval.k=[1]")  # fmt: skip
    assert rc == 0, out[-6000:]
    assert "step 2/2" in out
    assert [s for s, _ in metric(rd, "rollout/verifier_agent_failures")] == [0, 1]
    assert all(v == 0 for _, v in metric(rd, "rollout/infra_errors")), out[-3000:]


@pytest.mark.slow
def test_a_batch_lost_to_infrastructure_stops_with_a_checkpoint_and_the_same_command_resumes(tmp_path, task_rootfs):
    """Step 1's task cannot start (its image cannot be built here: FROM an image this offline
    machine does not have), so every episode of step 1 fails on infrastructure: the run
    stops at step 1 saying so, with the checkpoint of step 0's training (nothing trained is
    lost) and step 0 in MLflow, never training on reward-0 rows. Once the image builds, the
    same command resumes at step 1, rolls its batch again (the saved all-infra batch is not
    reused) and finishes."""
    import shutil

    from pipeline.config import load_config
    from pipeline.sandbox import SandboxConfig, SandboxError
    from pipeline.sandbox.docker import DockerBackend
    from pipeline.tasks.sets import TaskSampler
    from pipeline.trajectory import load_jsonl

    try:
        DockerBackend(SandboxConfig(backend="docker"))
    except SandboxError as e:
        pytest.skip(f"docker backend unavailable: {e}")
    train = tmp_path / "train"
    for name in ("first", "second"):
        shutil.copytree(ROOT / "tests/fixtures/tasks/harbor-reward-json", train / name)
    rd = tmp_path / "run"
    cmd = ["train", "configs/tiny.yaml", f"run.output_dir={rd}", "run.steps=2", "eval.every=0", "model.load=''",
           "model.warmstart_steps=0", "eval.probe=false", "sandbox.backend=docker", f"tasks.train_dirs=[{train}]",
           "rollout.tasks_per_step=1", "rollout.group_size=2", "rollout.max_turns=1", "rollout.max_staleness=1",
           "rollout.infra_retries=0"]  # fmt: skip
    for seed in range(50):  # a seed whose steps 0 and 1 sample different tasks
        cfg = load_config(ROOT / "configs/tiny.yaml", [*cmd[2:], f"run.seed={seed}"])
        sampler = TaskSampler(cfg.tasks, tmp_path / f"sampled-{seed}", cfg.run.seed)
        picked = [Path(sampler.for_step(s, 1)[0].task_dir).name for s in (0, 1)]
        if picked[0] != picked[1]:
            cmd.append(f"run.seed={seed}")
            break
    assert picked[0] != picked[1]
    dockerfile = train / picked[1] / "environment" / "Dockerfile"
    good = dockerfile.read_text()
    dockerfile.write_text(good.replace("FROM python:3.12-slim", "FROM echo-rl-test/not-on-this-machine:1"))
    rc, out = run(*cmd)
    assert rc != 0 and "step 1: 2 of 2 episodes failed on infrastructure" in out, out[-4000:]
    assert f"checkpoint {rd / 'ckpt'} is at step 1: the same command resumes there" in out
    assert (rd / "ckpt" / "latest").read_text().strip() == "step_000001"
    assert [s for s, _ in metric(rd, "loss")] == [0]
    assert all(t.infra_error for t in load_jsonl(rd / "trajectories" / "step_000001.jsonl"))
    dockerfile.write_text(good)
    rc, out = run(*cmd)
    assert rc == 0, out[-4000:]
    assert f"resuming from {rd / 'ckpt'} at step 1" in out and "step 2/2" in out and "step 1/2" not in out
    assert [s for s, _ in metric(rd, "loss")] == [0, 1]
    assert not any(t.infra_error for t in load_jsonl(rd / "trajectories" / "step_000001.jsonl"))
