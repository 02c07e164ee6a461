"""A kill-free training run through every attack: the real loop (``pipeline.main.train``:
Megatron on gloo, MLflow, checkpoints, weight sync) whose policy is replaced by one that
types the red-team commands (``pipeline/tasks/attacks.py``, the leftover kinds included),
one per episode, then finishes. Each backend once. The run must end with every step done:
no hang (bounded by the test's timeout), no crash, no infrastructure error the agent
caused, no reward above 0 for an attack; the honest episodes in the same run (the
reference solution, the positive control) score 1."""

import json
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.engines.base import BatchingEngine, Generation
from pipeline.tasks.attacks import ATTACKS

ROOT = Path(__file__).resolve().parents[1]


def tool_call(name: str, **arguments) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


class AttackEngine(BatchingEngine):
    """Episode n (counted at its first turn) types attack n, or, every eighth episode, its
    task's reference solution; then finishes. Takes the learner's weights and drops them."""

    def __init__(self, tok, stop_id: int, solutions: dict[str, str]):
        self.tok, self.stop, self.solutions, self.typed = tok, stop_id, solutions, []
        super().__init__(max_batch=16, batch_wait_ms=0)

    def _first_command(self, prompt_text: str) -> str:
        n = len(self.typed)
        key = next((k for k in self.solutions if k in prompt_text), None)
        honest = n % 8 == 7 and key is not None
        self.typed.append(("honest", self.solutions[key]) if honest else ("attack", ATTACKS[(n - n // 8) % len(ATTACKS)].name))
        return self.solutions[key] if honest else ATTACKS[(n - n // 8) % len(ATTACKS)].command

    def generate_batch(self, prompts, params):
        out = []
        for p in prompts:
            text = self.tok.decode(p)
            script = tool_call("finish") if "<tool_response>" in text else tool_call("bash", command=self._first_command(text))
            ids = self.tok(script, add_special_tokens=False)["input_ids"] + [self.stop]
            out.append(Generation(ids, [-0.1] * len(ids), "stop", self.policy_version))
        return out

    def load_weights(self, items) -> None:
        for _ in items:
            pass


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["bwrap", "docker"])
def test_training_survives_every_attack(backend, tmp_path, task_rootfs, monkeypatch):
    import pipeline.engines as engines
    import pipeline.main as main
    from pipeline.rollout.chat import ChatFormat, load_tokenizer
    from pipeline.sandbox import SandboxError, make_backend

    cfg = load_config(str(ROOT / "configs/tiny.yaml"), [
        f"run.output_dir={tmp_path / 'run'}", "run.steps=2", "model.load=''", "model.warmstart_steps=0",
        "rollout.tasks_per_step=10", "rollout.group_size=2", "rollout.max_turns=3", "rollout.infra_retries=0",
        "rollout.max_tokens_per_turn=2048", "rollout.max_context_tokens=8192", "learner.micro_batch_tokens=8192",
        "rollout.max_concurrent_episodes=6",
        "eval.every=0", "tasks.families=[text_replace,python_fix,csv_sum,find_large]", f"sandbox.backend={backend}",
        "sandbox.timeout_s=20", "sandbox.memory_mb=512", "sandbox.pids=128", f"sandbox.rootfs={task_rootfs}",
    ])  # fmt: skip
    try:
        make_backend(cfg.sandbox)
    except SandboxError as e:
        pytest.skip(f"{backend} unavailable: {e}")
    chat = ChatFormat(load_tokenizer(ROOT / cfg.model.tokenizer))
    engines_made = []

    def attack_engine(*a, **kw):
        from pipeline.tasks.sets import TaskSampler

        sampler = TaskSampler(cfg.tasks, tmp_path / "run" / "tasks", cfg.run.seed)
        tasks = [t for s in range(cfg.run.steps) for t in sampler.for_step(s, cfg.rollout.tasks_per_step)]
        engines_made.append(AttackEngine(chat.tok, chat.stop_token_id, {t.instruction.strip(): t.solution for t in tasks}))
        return engines_made[-1]

    monkeypatch.setattr(engines, "make_engine", attack_engine)
    import socket

    import torch.distributed as dist

    with socket.socket() as sock:  # this process's own rendezvous port: later subprocesses must not inherit it
        sock.bind(("127.0.0.1", 0))
        monkeypatch.setenv("MASTER_PORT", str(sock.getsockname()[1]))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    try:
        summary = main.train(cfg)
    finally:
        from megatron.core import parallel_state

        parallel_state.destroy_model_parallel()
        if dist.is_initialized():
            dist.destroy_process_group()
    assert summary["steps"] == 2
    trajs = [json.loads(line) for f in sorted((tmp_path / "run" / "trajectories").glob("step_*.jsonl"))
             for line in f.read_text().splitlines()]  # fmt: skip
    assert len(trajs) == cfg.run.steps * cfg.rollout.tasks_per_step * cfg.rollout.group_size
    texts = [chat.tok.decode(t["token_ids"]) for t in trajs]
    played = {a.name for a in ATTACKS if any(json.dumps(a.command)[1:-1] in x for x in texts)}
    assert played == {a.name for a in ATTACKS}, sorted({a.name for a in ATTACKS} - played)
    infra = [t["metadata"].get("infra_error") for t in trajs if t["infra_error"]]
    assert not infra, infra[:3]
    solutions = {json.dumps(v)[1:-1] for e in engines_made for kind, v in e.typed if kind == "honest"}
    honest = [t for t, x in zip(trajs, texts) if any(s in x for s in solutions)]
    assert len(honest) >= 3 and all(t["reward"] == 1.0 for t in honest), [t["reward"] for t in honest]  # the control
    assert sum(t["reward"] > 0 for t in trajs) == len(honest), "an attack episode scored above 0"
