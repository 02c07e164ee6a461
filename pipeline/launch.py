"""The cluster launcher: one Slurm job → vLLM rollout servers + a Megatron learner.

    python -m pipeline.launch RECIPE [key=value ...]             # inside an sbatch job
    python -m pipeline.launch --dry-run --nodes n1,n2,n3 RECIPE   # print what each node runs

Where it sits: ``sbatch slurm/echo_14b.sbatch`` → slurm/env.sh → **launch** → ``srun`` steps:

    nodes (scontrol show hostnames $SLURM_JOB_NODELIST)
      ├─ first cluster.learner_nodes: srun torchrun -m pipeline.cli train RECIPE
      │    engine.backend=vllm_server engine.server_urls=[every rollout server]
      ├─ next cluster.rollout_nodes: srun python -m pipeline.engines.serve (vLLM's
      │    OpenAI server, cluster.vllm_tensor_parallel GPUs each, with our weight loader)
      └─ with cluster.sandbox_hosts, on each rollout node too: srun tools/podman_host.sh
           (a Podman Docker-API service), handed to the learner as sandbox.hosts (a fleet:
           pipeline/sandbox/fleet.py), reached at cluster.sandbox_url

Trajectories flow to the learner as HTTP responses; weights flow back through the shared
filesystem (``RUN_DIR/engine_model/stream/v{N}``, loaded by every server through
``/collective_rpc``), or with ``engine.weight_transport=dist`` over one process group
(servers get ``--weight-transfer-config {"backend": "gloo"}``, the learner its own node's
name as ``engine.weight_transfer_address``: rank 0 hosts the rendezvous and tells each
server its rank offset), so the weight-version contract of ``update_weights`` holds. A job
with one node runs both components on it (the CPU test in CI). Nothing here is a new RPC
layer: Slurm places, vLLM serves, torch.distributed trains.

Each server binds its node's name (``cluster.server_host``), the address in its URL. The
learner's torchrun uses a static rendezvous: each node's rank is its place in the learner
list, so the first learner node holds global rank 0 (the store, the weight transfer's
address) whatever the nodes' ``gethostname()`` says (emulated nodes share one).

Failure handling: servers that never come up stop the learner with a message naming the
URL and its log; a server that dies later is dropped by the engine (its episodes retry
elsewhere or become ``infra_error``), and started again here on its node after
``cluster.server_restart_delay_s`` (``cluster.server_restarts`` times per job); the engine
re-admits it at the next weight update, holding the new version. A learner rank that dies
ends the learner step (``--kill-on-bad-exit``; the others fail at their next collective);
when the learner exits, the servers are stopped; SIGTERM (scancel, preemption) is passed
on; a requeued or resubmitted job runs the same command, which resumes from ``RUN_DIR/ckpt``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Step:
    component: str  # learner | rollout | sandbox
    host: str  # the first node it runs on
    argv: list[str]
    log: Path
    url: str = ""  # rollout: the server's base URL; sandbox: its Docker API URL


def node_list() -> list[str]:
    """The job's nodes, in Slurm's order."""
    nodelist = os.environ.get("SLURM_JOB_NODELIST")
    if not nodelist:
        raise SystemExit("launch: not inside a Slurm job (no SLURM_JOB_NODELIST); use --dry-run --nodes to preview")
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    return out.stdout.split()


def plan(cfg, recipe: str, overrides: list[str], hosts: list[str], *, job_id: str, python: str = "python") -> list[Step]:
    """The srun command of every component. Pure: the dry run prints exactly this."""
    c = cfg.cluster
    want = c.learner_nodes + c.rollout_nodes
    if len(hosts) == 1:
        learners, rollouts = hosts[:1], hosts[:1]  # one node: both components side by side
    elif len(hosts) >= want:
        learners, rollouts = hosts[: c.learner_nodes], hosts[c.learner_nodes : want]
    else:
        raise SystemExit(f"launch: the job has {len(hosts)} nodes, the recipe wants cluster.learner_nodes="
                         f"{c.learner_nodes} + cluster.rollout_nodes={c.rollout_nodes}")  # fmt: skip
    run_dir = Path(cfg.run.output_dir).resolve()
    logs = Path(c.log_dir or run_dir / "logs") / str(job_id)
    gpus = c.gpus_per_node
    per_node = max(gpus // c.vllm_tensor_parallel, 1) if gpus else 1
    steps, urls = [], []
    for host in rollouts:
        for k in range(per_node):
            port = c.vllm_port + k
            url = f"http://{host}:{port}"
            urls.append(url)
            argv = ["srun", "--overlap", "--nodes=1", "--ntasks=1", f"--nodelist={host}", f"--job-name=rollout-{host}-{k}",
                    f"--output={logs}/rollout-{host}-{k}.log", "--open-mode=append"]  # fmt: skip
            if gpus:
                argv.append(f"--gpus={c.vllm_tensor_parallel}")
            argv += [python, "-m", "pipeline.engines.serve", "--model-dir", str(run_dir / "engine_model"),
                     "--host", c.server_host or host, "--port", str(port), "--timeout", f"{c.server_start_timeout_s:g}", "--",
                     "--tensor-parallel-size", str(c.vllm_tensor_parallel),
                     "--max-model-len", str(cfg.rollout.max_context_tokens), *c.vllm_args]  # fmt: skip
            if cfg.engine.weight_transport == "dist":  # the learner pushes weights over a process group
                argv += ["--weight-transfer-config", json.dumps({"backend": "gloo"})]
            if not gpus and not {"--kv-cache-memory-bytes", "--gpu-memory-utilization"} & set(c.vllm_args):
                # a CPU server sizes its KV cache from its NUMA node, which can be a fraction of
                # the machine: a fixed 1 GiB unless the recipe says otherwise
                argv += ["--kv-cache-memory-bytes", str(1 << 30)]
            steps.append(Step("rollout", host, argv, logs / f"rollout-{host}-{k}.log", url))
    extra = []
    if c.sandbox_hosts:  # a sandbox host (a Podman API service) on every rollout node: the learner's fleet
        hosts = []
        for host in rollouts:
            url = c.sandbox_url.format(node=host, socket=f"/run/echo-rl-hosts/{host}.sock")
            hosts.append(f"{{url: '{url}', max_concurrent: {c.sandbox_slots}}}")
            argv = ["srun", "--overlap", "--nodes=1", "--ntasks=1", f"--nodelist={host}", f"--job-name=sandbox-{host}",
                    f"--output={logs}/sandbox-{host}.log", "--open-mode=append", "bash",
                    str(Path(__file__).resolve().parents[1] / "tools/podman_host.sh"), host, "--foreground"]  # fmt: skip
            steps.append(Step("sandbox", host, argv, logs / f"sandbox-{host}.log", url))
        extra = ["sandbox.backend=docker", "sandbox.hosts=[" + ", ".join(hosts) + "]"]
    server_urls = "engine.server_urls=[" + ",".join(f'"{u}"' for u in urls) + "]"
    learner = ["srun", "--overlap", f"--nodes={len(learners)}", f"--ntasks={len(learners)}", "--ntasks-per-node=1", f"--nodelist={','.join(learners)}",
               "--job-name=learner", f"--output={logs}/learner-%t.log", "--kill-on-bad-exit=1"]  # fmt: skip
    if gpus:
        learner.append(f"--gpus-per-node={gpus}")
    # each node's rank is its place in the learner list (torchrun reads --node-rank from
    # PET_NODE_RANK), so global rank 0, which hosts the weight transfer, is on learners[0]
    node_rank = f'i=0; for n in {" ".join(map(shlex.quote, learners))}; do [ "$n" = "$SLURMD_NODENAME" ] && break; ' \
                'i=$((i + 1)); done; PET_NODE_RANK=$i exec "$@"'
    learner += ["bash", "-c", node_rank, "learner"]
    learner += [python, "-m", "torch.distributed.run", f"--nnodes={len(learners)}", f"--nproc-per-node={max(gpus, 1)}",
                "--rdzv-backend=static", f"--master-addr={learners[0]}", f"--master-port={c.master_port}",
                "-m", "pipeline.cli", "train", recipe, *overrides, "engine.backend=vllm_server", server_urls, *extra]  # fmt: skip
    if cfg.engine.weight_transport == "dist":  # learner rank 0 (first learner node) hosts the group's rendezvous
        learner.append(f"engine.weight_transfer_address={learners[0]}")
    steps.append(Step("learner", learners[0], learner, logs / "learner-0.log"))
    return steps


def describe(steps: list[Step]) -> str:
    lines = []
    for s in steps:
        lines.append(f"# {s.component} on {s.host} (log {s.log})" + (f", serving {s.url}" if s.url else ""))
        lines.append(shlex.join(s.argv))
    return "\n".join(lines)


def run(steps: list[Step], run_dir: Path, *, restarts: int = 0, restart_delay_s: float = 10.0) -> int:
    """Start the servers, run the learner to the end (a server that dies is started again,
    ``restarts`` times in all), stop the servers; the learner's exit code."""
    steps[0].log.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(run_dir / "engine_model", ignore_errors=True)  # servers wait for the learner's fresh export
    procs: list[subprocess.Popen] = []

    def stop(*_):
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()

    def on_signal(signum, _frame):
        print(f"launch: signal {signum}, stopping every component", flush=True)
        stop()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(describe(steps), flush=True)
    t0 = time.time()
    try:
        servers = {i: subprocess.Popen(s.argv) for i, s in enumerate(steps[:-1])}
        procs.extend(servers.values())
        learner = subprocess.Popen(steps[-1].argv)
        procs.append(learner)
        died: dict[int, float] = {}
        while (code := _wait(learner, 2.0)) is None:
            for i, p in servers.items():
                if p.poll() is None:
                    continue
                what = f"{_NAMES[steps[i].component]} {steps[i].url}"
                if i not in died:
                    died[i] = time.time()
                    left = f"restarting in {restart_delay_s:g} s ({restarts} restart(s) left)" if restarts else "no restarts left"
                    print(f"launch: {what} exited with {p.returncode}; {left}", flush=True)
                elif restarts and time.time() - died[i] >= restart_delay_s:
                    restarts -= 1
                    del died[i]
                    servers[i] = subprocess.Popen(steps[i].argv)
                    procs.append(servers[i])
                    print(f"launch: {what} started again (log {steps[i].log})", flush=True)
    finally:
        stop()
    print(f"launch: learner exited with {code} after {time.time() - t0:.0f} s; logs in {steps[0].log.parent}", flush=True)
    return code


_NAMES = {"rollout": "rollout server", "sandbox": "sandbox host"}


def _wait(p: subprocess.Popen, timeout_s: float) -> int | None:
    try:
        return p.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None


def main(argv: list[str] | None = None) -> int:
    from pipeline.config import ConfigError, load_config

    p = argparse.ArgumentParser(prog="python -m pipeline.launch", description=__doc__.splitlines()[0])
    p.add_argument("recipe", help="YAML recipe, e.g. configs/qwen3_14b_echo.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides, passed on to the learner")
    p.add_argument("--dry-run", action="store_true", help="print the command of every component and exit")
    p.add_argument("--nodes", default="", help="comma-separated host names (dry run outside Slurm)")
    p.add_argument("--python", default=sys.executable, help="the interpreter the steps run")
    a = p.parse_intermixed_args(argv)
    try:
        cfg = load_config(a.recipe, a.overrides)
    except ConfigError as e:
        print(f"launch: {e}", file=sys.stderr)
        return 2
    hosts = a.nodes.split(",") if a.nodes else node_list()
    job_id = os.environ.get("SLURM_JOB_ID", "dry-run")
    steps = plan(cfg, a.recipe, a.overrides, hosts, job_id=job_id, python=a.python)
    if a.dry_run:
        print(describe(steps))
        return 0
    return run(steps, Path(cfg.run.output_dir).resolve(), restarts=cfg.cluster.server_restarts,
               restart_delay_s=cfg.cluster.server_restart_delay_s)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
