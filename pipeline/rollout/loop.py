"""The agent loop: a task, a sandbox and an engine → one token-exact Trajectory.

Where it sits: tasks → **run_rollouts** (engine ⇄ sandbox, many episodes in flight) →
Trajectory[] → advantages.

One episode::

    prompt (system + task, PROMPT) ──► engine samples an action (ACTION ids + log-probs)
        ▲                                   │ parse the one <tool_call>
        │                                   ├─ finish ──────────────► verifier → reward
        └── observation (PROMPT scaffolding,├─ bash CMD → sandbox.exec → OUTPUT (+ WARNING notices)
            OUTPUT, WARNING) ◄──────────────└─ malformed → WARNING text

The episode ends on ``finish``, when the environment says it is done (a maze's goal),
after ``max_turns`` actions, or when the context budget
cannot fit another turn (each ends with a WARNING saying why). Then the task's tests run.
A sandbox that dies, an engine failure, or a verifier that fails even on a fresh sandbox
marks the trajectory ``infra_error`` (excluded from advantages and the loss, never reward
0), after up to ``infra_retries`` fresh attempts. A verifier that the agent's changes broke
is reward 0 with ``verifier_failure: agent`` (``pipeline/tasks/verifier.py``): an escape
from a negative reward must not be learnable.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pipeline.engines.base import Engine, EngineError, SamplingParams
from pipeline.rollout.chat import ChatFormat, Segment
from pipeline.sandbox.base import SandboxBackend, SandboxConfig, SandboxError, join_lines
from pipeline.tasks.base import Task, VerifierError
from pipeline.tasks.verifier import verify
from pipeline.trajectory import Role, Trajectory


# Quality filters for training data (env_only: learning without a verifier).
TRAIN_FILTERS = {
    "tool_calls_parsed": lambda t: t.metadata.get("tool_errors", 0) == 0,  # every tool call parsed
    "finished": lambda t: t.metadata.get("finish_reason") == "finish",  # the agent called finish
    "no_truncation": lambda t: not (t.metadata.get("truncated_actions") or t.metadata.get("truncated_outputs")),
}


def passes_filters(t: Trajectory, filters: list[str]) -> bool:
    return not t.infra_error and all(TRAIN_FILTERS[f](t) for f in filters)


@dataclass
class RolloutConfig:
    group_size: int = 8  # G samples per task (GRPO group)
    tasks_per_step: int = 4  # tasks sampled per step
    max_turns: int = 16  # actions per episode
    temperature: float = 0.8  # sampling temperature
    top_p: float = 1.0  # nucleus sampling
    max_tokens_per_turn: int = 2048  # tokens one action may sample
    max_context_tokens: int = 32768  # the whole episode's token budget
    max_concurrent_episodes: int = 16  # episodes in flight (sandboxes open at once)
    infra_retries: int = 1  # fresh attempts of an episode after an infrastructure failure
    template_kwargs: dict = field(default_factory=dict)  # extra chat-template arguments (e.g. enable_thinking)
    train_filters: list[str] = field(default_factory=list)  # keep for training only episodes that pass: tool_calls_parsed, finished, no_truncation
    max_staleness: int = 0  # 0: roll out, then learn (serial); k ≥ 1: batches sampled ahead while the learner trains, by a policy ≤ k versions old (pipeline/rollout/producer.py)

    def check(self) -> list[tuple[str, str]]:
        errs = []
        if self.group_size < 2:
            errs.append(("group_size", f"must be ≥ 2 (group-relative advantages), got {self.group_size}"))
        for n in ("tasks_per_step", "max_turns", "max_tokens_per_turn", "max_concurrent_episodes"):
            if getattr(self, n) < 1:
                errs.append((n, f"must be ≥ 1, got {getattr(self, n)}"))
        if self.temperature <= 0:
            errs.append(("temperature", f"must be > 0, got {self.temperature}"))
        if self.max_context_tokens < self.max_tokens_per_turn:
            errs.append(("max_context_tokens", f"must be ≥ max_tokens_per_turn ({self.max_tokens_per_turn})"))
        bad = [f for f in self.train_filters if f not in TRAIN_FILTERS]
        if bad:
            errs.append(("train_filters", f"unknown {bad}; known: {sorted(TRAIN_FILTERS)}"))
        if self.max_staleness < 0:
            errs.append(("max_staleness", f"must be ≥ 0 (0 = synchronous), got {self.max_staleness}"))
        if self.infra_retries < 0:
            errs.append(("infra_retries", f"must be ≥ 0, got {self.infra_retries}"))
        return errs


# Tokens kept free for the closing text (the context warning's tool turn, the template's
# tail); and the fewest tokens an action is given before the budget ends the episode.
_RESERVE, _MIN_ACTION = 64, 16


class _Episode:
    """The growing token record of one episode."""

    def __init__(self, task: Task, group_id: str):
        self.task, self.group_id = task, group_id
        self.ids: list[int] = []
        self.roles: list[int] = []
        self.turns: list[int] = []
        self.logprobs: list[float] = []
        self.versions: set[int] = set()
        self.meta = {"num_turns": 0, "tool_errors": 0, "timeouts": 0, "truncated_outputs": 0,
                     "truncated_actions": 0, "role_straddles": 0, "finish_reason": ""}  # fmt: skip

    def add(self, seg: Segment, turn: int) -> None:
        self.ids += seg.token_ids
        self.roles += seg.roles
        self.turns += [turn] * len(seg.token_ids)
        self.logprobs += [float("nan")] * len(seg.token_ids)
        self.meta["role_straddles"] += seg.role_straddles

    def add_action(self, ids: list[int], logprobs: list[float], turn: int) -> None:
        self.ids += ids
        self.roles += [int(Role.ACTION)] * len(ids)
        self.turns += [turn] * len(ids)
        self.logprobs += logprobs

    def trajectory(self, reward: float, infra_error: bool) -> Trajectory:
        return Trajectory(
            task_id=self.task.task_id, group_id=self.group_id, token_ids=self.ids, roles=self.roles,
            turn_ids=self.turns, sampler_logprobs=self.logprobs, reward=reward,
            policy_version=min(self.versions, default=0), infra_error=infra_error, metadata=self.meta,
        )  # fmt: skip


def run_episode(task: Task, group_id: str, engine: Engine, backend: SandboxBackend, chat: ChatFormat,
                cfg: RolloutConfig, sandbox_cfg: SandboxConfig, *, seed: int | None = None) -> Trajectory:  # fmt: skip
    """One episode; infrastructure failures are retried, then recorded, never raised."""
    error, lost_on = "", []
    for attempt in range(cfg.infra_retries + 1):
        ep = _Episode(task, group_id)
        t0 = time.perf_counter()
        try:
            reward = _play(ep, engine, backend, chat, cfg, sandbox_cfg, seed)
            ep.meta.update(rollout_s=time.perf_counter() - t0, attempts=attempt + 1)
            if lost_on:  # the sandbox hosts of the attempts lost to infrastructure (a fleet)
                ep.meta["infra_lost_on"] = lost_on
            return ep.trajectory(reward, infra_error=False)
        except (SandboxError, VerifierError, EngineError, OSError) as e:
            error = f"{type(e).__name__}: {e}"
            lost_on.append(ep.meta.get("sandbox_host", ""))
    ep.meta.update(infra_error=error[:2000], attempts=cfg.infra_retries + 1, finish_reason="infra_error")
    if not ep.ids:  # failed before the prompt was rendered: keep a one-token record
        ep.add(chat.prompt(chat.messages(task.instruction)), 0)
    return ep.trajectory(0.0, infra_error=True)


def _play(ep: _Episode, engine: Engine, backend: SandboxBackend, chat: ChatFormat, cfg: RolloutConfig,
          sandbox_cfg: SandboxConfig, seed: int | None) -> float:  # fmt: skip
    messages = chat.messages(ep.task.instruction)
    ep.add(chat.prompt(messages), 0)
    if len(ep.ids) + _RESERVE + _MIN_ACTION > cfg.max_context_tokens:
        raise ValueError(f"task {ep.task.task_id}: the prompt has {len(ep.ids)} tokens, over "
                         f"rollout.max_context_tokens={cfg.max_context_tokens}")  # fmt: skip
    with backend.start(task_dir=ep.task.task_dir, episode=f"{ep.group_id}", task=ep.task) as box:
        if getattr(box, "host_url", ""):
            ep.meta["sandbox_host"] = box.host_url
        for turn in range(cfg.max_turns):
            budget = cfg.max_context_tokens - len(ep.ids) - _RESERVE  # ≥ _MIN_ACTION (checked below)
            gen = engine.submit(ep.ids, SamplingParams(
                temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=min(cfg.max_tokens_per_turn, budget),
                stop_token_ids=[chat.stop_token_id], seed=None if seed is None else seed + turn,
            )).result()  # fmt: skip
            ep.versions.add(gen.policy_version)
            ep.add_action(gen.token_ids, gen.logprobs, turn)
            ep.meta["num_turns"] = turn + 1
            parts: list[tuple[str, str]] = []
            if gen.finish_reason != "stop":  # the harness closes the turn the model left open
                ep.add(Segment([chat.stop_token_id], [int(Role.PROMPT)], chat.stop_token), turn)
                ep.meta["truncated_actions"] += 1
                parts.append((f"WARNING: your reply was cut off at {len(gen.token_ids)} tokens", "warning"))
            messages.append({"role": "assistant", "content": chat.decode_action(gen.token_ids)})
            call = chat.parse_action(messages[-1]["content"])
            if call.name == "finish" and not parts:
                ep.meta["finish_reason"] = "finish"
                ep.add(chat.closing(messages), turn)
                break
            if call.error:
                ep.meta["tool_errors"] += 1
                parts.append((call.error, "warning"))
            elif call.name == "bash":
                try:
                    result = box.exec(call.command)
                except SandboxError:
                    if not box.alive():
                        raise  # the sandbox died under the command: infrastructure
                    # it still runs but cannot run commands (pids exhausted, shell broken):
                    # the agent's doing; the episode ends and the verifier decides
                    ep.meta["finish_reason"] = "sandbox_broken"
                    ep.add(chat.closing(messages), turn)
                    break
                ep.meta["timeouts"] += result.timed_out
                ep.meta["truncated_outputs"] += result.truncated
                parts += result.observation(sandbox_cfg)
                if result.done:  # the environment ended the episode (a maze's goal)
                    ep.meta["finish_reason"] = "done"
            if call.ignored_calls:
                parts.append((f"WARNING: only the first tool call runs, {call.ignored_calls} more ignored", "warning"))
            final = turn == cfg.max_turns - 1 or ep.meta["finish_reason"] == "done"
            if final and ep.meta["finish_reason"] != "done":
                ep.meta["finish_reason"] = "max_turns"
                parts.append((f"WARNING: turn limit of {cfg.max_turns} reached, the episode ends", "warning"))
            parts = join_lines(parts)
            seg = chat.observation(messages, parts, final=final)
            room = cfg.max_context_tokens - len(ep.ids) - len(seg.token_ids)
            if room < (0 if final else _RESERVE + _MIN_ACTION):
                final = True
                ep.meta["finish_reason"] = "context"
                parts = [(f"WARNING: context budget of {cfg.max_context_tokens} tokens used up, the episode ends", "warning")]
                seg = chat.observation(messages, parts, final=True)
            messages.append({"role": "tool", "content": seg.content})
            ep.add(seg, turn + 1)
            if final:
                break
        ep.meta["messages"] = messages
        verdict = verify(ep.task, box, backend, sandbox_cfg, episode=ep.group_id)
        ep.meta.update(verifier_s=verdict.seconds, rewards=verdict.rewards)
        if verdict.failure:
            ep.meta.update(verifier_failure=verdict.failure, verifier_detail=verdict.detail)
        return verdict.reward


def run_rollouts(tasks: list[Task], engine: Engine, backend: SandboxBackend, chat: ChatFormat,
                 cfg: RolloutConfig, sandbox_cfg: SandboxConfig, *, group_size: int | None = None,
                 step: int = 0, seed: int = 0, progress: bool = True, on_episode_end=None) -> list[Trajectory]:  # fmt: skip
    """``group_size`` episodes of each task, ``max_concurrent_episodes`` in flight.
    Returns trajectories in (task, sample) order, whatever order they finished in.
    ``on_episode_end()`` is called as each episode ends, however it ends (``Lockstep.done``)."""
    from tqdm import tqdm

    G = group_size or cfg.group_size
    jobs = [(t, f"s{step}-t{i}", i * G + g) for i, t in enumerate(tasks) for g in range(G)]
    import sys

    # a live bar in a terminal; in a log (not a tty) none: it would stay at 0/N, and the
    # step's own line says how the batch went
    bar = tqdm(total=len(jobs), desc=f"rollout step {step}", unit="ep", leave=False, mininterval=0.1,
               disable=not (progress and sys.stderr.isatty()))  # fmt: skip

    def one(job):
        task, gid, k = job
        try:
            traj = run_episode(task, gid, engine, backend, chat, cfg, sandbox_cfg, seed=seed * 100_003 + k * 101)
        finally:
            if on_episode_end is not None:
                on_episode_end()
        bar.update(1)
        return traj

    with ThreadPoolExecutor(max_workers=cfg.max_concurrent_episodes, thread_name_prefix="episode") as pool:
        out = list(pool.map(one, jobs))
    bar.close()
    return out


def rollout_metrics(trajectories: list[Trajectory]) -> dict[str, float]:
    """Per-step rollout statistics for tracking (``rollout/...``)."""
    n = max(len(trajectories), 1)
    ok = [t for t in trajectories if not t.infra_error]
    m = {
        "rollout/episodes": float(len(trajectories)),
        "rollout/infra_errors": float(len(trajectories) - len(ok)),
        "rollout/infra_error_frac": (len(trajectories) - len(ok)) / n,
        "rollout/reward": sum(t.reward for t in ok) / max(len(ok), 1),
        "rollout/pass_rate": sum(t.reward >= 1.0 for t in ok) / max(len(ok), 1),
        "rollout/tokens": float(sum(len(t) for t in trajectories)),
        # episodes whose verifier the agent's own changes broke (scored 0, not dropped)
        "rollout/verifier_agent_failures": float(sum(t.metadata.get("verifier_failure") == "agent" for t in ok)),
    }
    for key in ("num_turns", "tool_errors", "timeouts", "truncated_outputs", "truncated_actions", "role_straddles"):
        total = sum(t.metadata.get(key, 0) for t in ok)
        m[f"rollout/{'turns' if key == 'num_turns' else key}"] = total / max(len(ok), 1) if key == "num_turns" else float(total)
    for reason in ("finish", "done", "max_turns", "context"):
        m[f"rollout/finish_{reason}"] = float(sum(t.metadata.get("finish_reason") == reason for t in ok))
    for role in Role:
        m[f"rollout/tokens_{role.name.lower()}"] = float(sum(t.num_tokens(role) for t in trajectories))
    # −log p of the sampled ACTION tokens: a Monte-Carlo estimate of the policy's per-token
    # entropy (exact in expectation when the log-prob temperature is the sampling one)
    lps = [lp for t in ok for r, lp in zip(t.roles, t.sampler_logprobs) if r == Role.ACTION]
    m["rollout/action_nll"] = -sum(lps) / max(len(lps), 1)
    seconds = [t.metadata.get("rollout_s", 0.0) for t in ok]
    m["rollout/episode_s"] = sum(seconds) / max(len(seconds), 1)
    return m
