"""Cluster launch: the sbatch scripts are shellcheck-clean, the launcher's plan is right, and
a real one-node Slurm cluster (``tools/slurm_local.sh``) runs ``slurm/echo_14b.sbatch``
with the tiny recipe: a vLLM CPU server as the rollout component and the Megatron learner
(gloo, under srun torchrun) as separate job steps; scancel + resubmit resumes; MLflow has
every step exactly once."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_config
from pipeline.launch import describe, plan

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["slurm/echo_14b.sbatch", "slurm/echo_8b.sbatch", "slurm/env.sh", "tools/slurm_local.sh", "tools/podman_host.sh"]


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
    assert "--nodelist=g1,g2" in a and "--nproc-per-node=8" in a and "--master-addr=g1" in a and "--master-port=29500" in a
    assert a[a.index("train") + 1 :][:2] == ["configs/qwen3_14b_echo.yaml", "run.steps=5"]
    urls = next(x for x in a if x.startswith("engine.server_urls="))
    # the learner's own config parser accepts exactly what the launcher passes
    lc = load_config(ROOT / "configs/qwen3_14b_echo.yaml", ["engine.backend=vllm_server", urls])
    assert lc.engine.server_urls == [s.url for s in rollouts]
    assert "/logs/42/learner-%t.log" in describe(steps)
    # sandbox hosts on the rollout nodes: a Podman service each, handed to the learner as its fleet
    fleet = plan(load_config(ROOT / "configs/qwen3_14b_echo.yaml", ["cluster.sandbox_hosts=true", "cluster.sandbox_slots=16"]),
                 "r.yaml", [], ["g1", "g2", "g3", "g4"], job_id="7")  # fmt: skip
    sandboxes = [s for s in fleet if s.component == "sandbox"]
    assert [s.host for s in sandboxes] == ["g3", "g4"] and all("--foreground" in s.argv for s in sandboxes)
    lc = load_config(ROOT / "configs/qwen3_14b_echo.yaml", fleet[-1].argv[fleet[-1].argv.index("r.yaml") + 1 :])
    assert lc.sandbox.hosts == [{"url": "ssh://g3", "max_concurrent": 16}, {"url": "ssh://g4", "max_concurrent": 16}]
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


def _sbatch(run_dir: Path, extra: list[str], nodes: int = 1) -> str:
    tiny = _overrides(run_dir) + extra
    r = subprocess.run(["sbatch", "--parsable", f"--nodes={nodes}", "--gpus-per-node=0", f"--output={run_dir}/slurm-%j.out",
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


CLUSTER_STEPS = 10


def _job_pids(job: str, node: str, needle: str = "") -> list[int]:
    """The processes of ``job`` on emulated ``node`` (their environment says where they run)
    whose command line holds ``needle``."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            env = set((d / "environ").read_bytes().split(b"\0"))
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if f"SLURM_JOB_ID={job}".encode() in env and f"SLURMD_NODENAME={node}".encode() in env and needle in cmd:
            pids.append(int(d.name))
    return pids


def _signal_learner(job: str, sig: int) -> None:
    for node in ("echo-node1", "echo-node2"):
        for pid in _job_pids(job, node, "torch.distributed.run") + _job_pids(job, node, "pipeline.cli train"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


def _lose_node(job: str, node: str) -> int:
    """What losing ``node`` does to the job: every one of its processes dies at once (SIGKILL,
    no handler runs). Its slurmd stays: Slurm sees the job step fail, as after a reboot."""
    pids = _job_pids(job, node)
    assert pids, f"no process of job {job} on {node}"
    for pid in pids:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    return len(pids)


def _answers(url: str) -> bool:
    import requests

    try:
        return requests.get(f"{url}/v1/models", timeout=2).ok
    except requests.RequestException:
        return False


def _steps_logged(log: Path) -> int:
    import re

    return max((int(m) for m in re.findall(r"step (\d+)/", log.read_text(errors="replace"))), default=0) if log.exists() else 0


@pytest.mark.slow
def test_four_node_job_survives_a_lost_rollout_node_and_resumes_after_a_lost_learner_node(tmp_path):
    """``sbatch --nodes=4``: the learner as one torchrun over two nodes (TP=2 across them,
    gloo), one vLLM CPU server on each of two rollout nodes (each bound to its node's
    loopback address), weights to both over one process group every step, and on each
    rollout node a Podman API service: the episodes' sandboxes, a fleet. The rollout node
    echo-node4 is lost after its second step: its episodes move to echo-node3, the group is
    rebuilt without it, ``rollout/servers_alive`` drops to 1; launch.py starts the server
    again and the engine re-admits it at the next update, holding that version (the
    sampler's log-probs match the learner's on every step after). Then the
    learner node echo-node2 is lost: the job fails fast; the same sbatch command resumes
    from the last checkpoint. Every step once in MLflow, the sampler-vs-learner gap at fp32
    noise on every step (a stale or wrong server would show), never a filesystem fallback."""
    pytest.importorskip("vllm", reason="the rollout component is vLLM's CPU server")
    if os.geteuid() != 0 or subprocess.run(["bash", "tools/slurm_local.sh", "--nodes", "4"], cwd=ROOT).returncode:
        pytest.skip("no four-node Slurm here (tools/slurm_local.sh --nodes 4 needs root and apt)")
    from pipeline.tracking import read_metric_history
    from pipeline.trajectory import load_jsonl

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    four = ["cluster.learner_nodes=2", "cluster.rollout_nodes=2", "parallel.tensor=2", f"run.steps={CLUSTER_STEPS}",
            "rollout.max_staleness=0", "engine.weight_transport=dist", "engine.weight_transfer_timeout_s=120",
            "cluster.server_restart_delay_s=2", "eval.every=0", "run.max_infra_error_frac=0.5",
            "cluster.sandbox_hosts=true", "cluster.sandbox_url=unix://{socket}", "cluster.sandbox_slots=4",
            "sandbox.host_probe_s=2"]  # fmt: skip
    job = _sbatch(run_dir, four, nodes=4)
    learner_log = lambda j: run_dir / "logs" / j / "learner-0.log"  # noqa: E731 - global rank 0, on echo-node1
    ended = lambda j: _state(j) in ("COMPLETED", "FAILED", "CANCELLED", "GONE")  # noqa: E731
    _wait(job, lambda: _steps_logged(learner_log(job)) >= 2 or ended(job), 900, run_dir)
    assert not ended(job), (run_dir / f"slurm-{job}.out").read_text()[-3000:]
    assert _lose_node(job, "echo-node4") >= 1
    _wait(job, lambda: "dropping http://echo-node4:8100" in learner_log(job).read_text() or ended(job), 300, run_dir)
    # Two cores: a vLLM start beside a training run takes minutes, and 80 tiny steps take
    # one. The test holds the learner (SIGSTOP) until the restarted server answers, as a
    # slower step would; then the run goes on and re-admits it at its next weight update.
    _signal_learner(job, signal.SIGSTOP)
    try:
        _wait(job, lambda: _answers("http://echo-node4:8100") or ended(job), 600, run_dir)
    finally:
        _signal_learner(job, signal.SIGCONT)
    readmitted = "vllm_server: re-admitting http://echo-node4:8100"
    _wait(job, lambda: readmitted in learner_log(job).read_text() or ended(job), 300, run_dir)
    back_at = _steps_logged(learner_log(job))
    _wait(job, lambda: _steps_logged(learner_log(job)) >= back_at + 2 or ended(job), 300, run_dir)
    assert not ended(job), "the run ended before its learner node could be lost; raise CLUSTER_STEPS"
    lost_at = time.time()
    _lose_node(job, "echo-node2")
    _wait(job, lambda: ended(job), 300, run_dir)
    fail_s = time.time() - lost_at
    out1, log1 = (run_dir / f"slurm-{job}.out").read_text(), learner_log(job).read_text()
    assert "learner exited with 0 " not in out1 and not (run_dir / "summary.json").exists(), out1[-3000:]
    print(f"learner node lost: the job ended {fail_s:.0f} s later")
    assert fail_s < 120, f"the job took {fail_s:.0f} s to fail after losing a learner node"
    # the lost rollout node: dropped, its server started again on it, re-admitted at a new version
    assert "launch: rollout server http://echo-node4:8100 exited" in out1 and "started again" in out1, out1[-3000:]
    # its sandbox host went with it: marked down, started again, back in the fleet
    sock4 = "unix:///run/echo-rl-hosts/echo-node4.sock"
    assert f"launch: sandbox host {sock4} exited" in out1
    assert f"sandbox fleet: host {sock4} is down" in log1 and f"sandbox fleet: host {sock4} is back" in log1
    assert "dropping http://echo-node4:8100" in log1 and readmitted in log1
    assert "through the filesystem" not in log1  # every version went over the (rebuilt) group
    resumed_at = int((run_dir / "ckpt" / "latest").read_text().strip()[-6:])

    job2 = _sbatch(run_dir, four, nodes=4)
    _wait(job2, lambda: ended(job2), 900, run_dir)
    out2, log2 = (run_dir / f"slurm-{job2}.out").read_text(), learner_log(job2).read_text()
    assert "learner exited with 0" in out2, out2[-3000:] + log2[-3000:]
    assert f"resuming from {run_dir / 'ckpt'} at step {resumed_at}" in log2
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == CLUSTER_STEPS
    db, run_id = f"sqlite:///{run_dir / 'mlflow.db'}", (run_dir / "mlflow_run_id").read_text().strip()
    history = lambda key: read_metric_history(db, run_id, key)  # noqa: E731
    assert [s for s, _ in history("loss")] == list(range(CLUSTER_STEPS))  # every step once, one MLflow run
    alive = [v for _, v in history("rollout/servers_alive")]
    assert alive[0] == 2 and min(alive) == 1 and alive[-1] == 2, alive  # lost, then back
    # (its sandbox host restarts in seconds: back before the step's gauge is read, as a rule)
    hosts = [v for _, v in history("sandbox/hosts_alive")]
    assert hosts[0] == 2 and hosts[-1] == 2, hosts
    gaps = history("logprob_abs_gap")
    assert [s for s, _ in gaps] == list(range(CLUSTER_STEPS)) and all(v < 1e-4 for _, v in gaps), gaps
    trajs = [t for p in sorted((run_dir / "trajectories").glob("step_*.jsonl")) for t in load_jsonl(p)]
    assert {t.metadata["sandbox_host"] for t in trajs} == {sock4, "unix:///run/echo-rl-hosts/echo-node3.sock"}
    # in-flight requests of the lost server moved to the live one: no episode was lost with it
    # (one that were would be infra_error, which no loss sees: never a reward-0 sample)
    assert len(trajs) == CLUSTER_STEPS * 4 and not [t.task_id for t in trajs if t.infra_error]
    print(json.dumps({"fail_s": round(fail_s), "servers_alive": alive, "hosts_alive": hosts,
                      "moved": sum(bool(t.metadata.get("infra_lost_on")) for t in trajs)}))


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
