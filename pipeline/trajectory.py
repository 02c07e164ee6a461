"""The typed token record of one episode, and its packing into learner micro-batches.

Where it sits: rollout → **Trajectory** → advantages → **pack_micro_batches** → learner.

A trajectory is the whole multi-turn episode as ONE token sequence with a role per token.
Worked example (one turn, then the agent finishes; ids shortened)::

    text     <|im_start|>system ... <|im_end|> <|im_start|>assistant  ls -la  <|im_end|>
    role     PROMPT ...................................................ACTION ACTION PROMPT
    text     <|im_start|>tool  total 4 ...  [output truncated]  <|im_end|> ...
    role     PROMPT............OUTPUT.....  WARNING............  PROMPT
    turn     0 0 ........ 0     1 1 ........ 1 1 ...

    token_ids         [t0, t1, ..., tN-1]           every list has length N
    roles             [Role codes]                  PROMPT/ACTION/OUTPUT/WARNING
    turn_ids          [0, 0, ..., 1, 1, ...]        turn index of each token
    sampler_logprobs  [nan, ..., -0.12, -1.3, nan]  finite exactly on ACTION tokens

- ``PROMPT``: system and task text, chat-template scaffolding, end-of-turn markers.
- ``ACTION``: tokens sampled by the policy (the only ones with sampler log-probs).
- ``OUTPUT``: what the terminal wrote back (stdout/stderr, exit code).
- ``WARNING``: text the harness wrote (malformed call, timeout, truncation notices).

Learner view: position ``i`` of a packed micro-batch predicts token ``i + 1``; a token's
role is the role of the *target* token, so the first token of every trajectory is
never a target. Trajectories are packed whole (never split across micro-batches).
"""

from __future__ import annotations

import enum
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import torch


class Role(enum.IntEnum):
    """Role code of a token; the integer values are the public encoding (``roles`` tensors)."""

    PROMPT = 0
    ACTION = 1
    OUTPUT = 2
    WARNING = 3


class TrajectoryError(ValueError):
    """A trajectory violates its invariants."""


@dataclass
class Trajectory:
    """One episode: tokens with roles, the sampler's log-probs, and its outcome."""

    task_id: str  # which task the episode ran
    group_id: str  # GRPO group: the G samples of one task in one step share it
    token_ids: list[int]  # the full packed sequence [N]
    roles: list[int]  # Role code per token [N]
    turn_ids: list[int]  # turn index per token [N]
    sampler_logprobs: list[float]  # sampler log p of each ACTION token, nan elsewhere [N]
    reward: float = 0.0  # verifier reward (1/0 for terminal tasks)
    policy_version: int = 0  # weights version that generated the ACTION tokens
    infra_error: bool = False  # sandbox/verifier failure: excluded from statistics
    metadata: dict = field(default_factory=dict)  # free-form: finish reason, num_turns, ...

    def __post_init__(self) -> None:
        n = len(self.token_ids)
        for name in ("roles", "turn_ids", "sampler_logprobs"):
            if len(getattr(self, name)) != n:
                raise TrajectoryError(
                    f"trajectory {self.task_id}/{self.group_id}: {name} has "
                    f"{len(getattr(self, name))} entries, token_ids has {n}"
                )
        valid = {int(r) for r in Role}
        for i, (role, lp) in enumerate(zip(self.roles, self.sampler_logprobs)):
            if role not in valid:
                raise TrajectoryError(f"token {i}: unknown role code {role}")
            if role == Role.ACTION:
                if lp is None or not math.isfinite(lp) or lp > 1e-6:
                    raise TrajectoryError(
                        f"token {i} is ACTION but its sampler log-prob is {lp!r}"
                    )
            elif lp is not None and not math.isnan(lp):
                raise TrajectoryError(
                    f"token {i} has role {Role(role).name} but a sampler log-prob {lp!r}; "
                    "only ACTION tokens are sampled"
                )
        self.roles = [int(r) for r in self.roles]
        self.sampler_logprobs = [
            float("nan") if lp is None else float(lp) for lp in self.sampler_logprobs
        ]

    def __len__(self) -> int:
        return len(self.token_ids)

    def num_tokens(self, role: Role) -> int:
        return sum(1 for r in self.roles if r == role)

    def spans(self, role: Role) -> list[tuple[int, int]]:
        """Maximal [start, end) runs of ``role`` — what a viewer or a test decodes."""
        out, start = [], None
        for i, r in enumerate(self.roles + [-1]):
            if r == role and start is None:
                start = i
            elif r != role and start is not None:
                out.append((start, i))
                start = None
        return out

    def to_json(self) -> str:
        d = asdict(self)
        d["sampler_logprobs"] = [None if math.isnan(x) else x for x in self.sampler_logprobs]
        return json.dumps(d, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> "Trajectory":
        return cls(**json.loads(line))


def save_jsonl(trajectories: Iterable[Trajectory], path: str | Path) -> None:
    """Written whole or not at all (a reader never sees half a file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        for t in trajectories:
            f.write(t.to_json() + "\n")
    os.replace(tmp, path)


def load_jsonl(path: str | Path) -> list[Trajectory]:
    with open(path) as f:
        return [Trajectory.from_json(line) for line in f if line.strip()]


@dataclass
class MicroBatch:
    """Trajectories packed into one row for the learner (a block-diagonal causal batch).

    ``S`` = packed length (≤ the token budget, padded to ``pad_multiple``); ``n`` = number
    of trajectories. Position ``i`` predicts ``target_ids[i]``. Padding positions belong
    to a padding sequence with index ``n``, role PROMPT and advantage 0.
    """

    input_ids: torch.Tensor  # [1, S] long
    position_ids: torch.Tensor  # [1, S] long, restart at 0 for each trajectory
    target_ids: torch.Tensor  # [1, S] long: the next token
    target_roles: torch.Tensor  # [1, S] long: Role code of the target token
    sampler_logprobs: torch.Tensor  # [1, S] float: sampler log p of ACTION targets, nan elsewhere
    sequence_ids: torch.Tensor  # [1, S] long in [0, n]; n = padding
    advantages: torch.Tensor  # [n + 1] float per sequence (padding: 0)
    cu_seqlens: torch.Tensor  # [n + 2] int32 boundaries in the packed row (incl. padding)
    num_sequences: int  # n (real trajectories)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[1])


def _pack_one(
    trajectories: Sequence[Trajectory],
    advantages: Sequence[float],
    pad_multiple: int,
    pad_token_id: int,
) -> MicroBatch:
    cols: dict[str, list] = {k: [] for k in ("inp", "pos", "tgt", "role", "slp", "seq")}
    cu = [0]
    for s, t in enumerate(trajectories):
        L = len(t) - 1  # positions that predict a next token
        cols["inp"] += t.token_ids[:-1]
        cols["pos"] += list(range(L))
        cols["tgt"] += t.token_ids[1:]
        cols["role"] += t.roles[1:]
        cols["slp"] += t.sampler_logprobs[1:]
        cols["seq"] += [s] * L
        cu.append(cu[-1] + L)
    n = len(trajectories)
    total = cu[-1]
    padded = max(pad_multiple, -(-total // pad_multiple) * pad_multiple)
    pad = padded - total
    cols["inp"] += [pad_token_id] * pad
    cols["pos"] += list(range(pad))
    cols["tgt"] += [pad_token_id] * pad
    cols["role"] += [int(Role.PROMPT)] * pad
    cols["slp"] += [float("nan")] * pad
    cols["seq"] += [n] * pad
    cu.append(padded)

    def row(key, dtype):
        return torch.tensor(cols[key], dtype=dtype).unsqueeze(0)

    return MicroBatch(
        input_ids=row("inp", torch.long),
        position_ids=row("pos", torch.long),
        target_ids=row("tgt", torch.long),
        target_roles=row("role", torch.long),
        sampler_logprobs=row("slp", torch.float32),
        sequence_ids=row("seq", torch.long),
        advantages=torch.tensor(list(advantages) + [0.0], dtype=torch.float32),
        cu_seqlens=torch.tensor(cu, dtype=torch.int32),
        num_sequences=n,
    )


def pack_micro_batches(
    trajectories: Sequence[Trajectory],
    advantages: Sequence[float],
    token_budget: int,
    *,
    num_shards: int = 1,
    pad_multiple: int = 8,
    pad_token_id: int = 0,
) -> list[list[MicroBatch]]:
    """Pack trajectories into micro-batches of at most ``token_budget`` positions.

    First-fit-decreasing bin packing (no padding to the longest sequence); bins are dealt
    round-robin to ``num_shards`` data-parallel shards, and every shard gets the same
    number of micro-batches (empty all-padding ones if needed) so pipeline schedules line
    up. ``infra_error`` trajectories are dropped here: they carry no learning signal.
    """
    if len(trajectories) != len(advantages):
        raise ValueError(f"{len(trajectories)} trajectories but {len(advantages)} advantages")
    if token_budget % pad_multiple:
        raise ValueError(f"token budget {token_budget} is not a multiple of {pad_multiple}")
    items = [(t, a) for t, a in zip(trajectories, advantages) if not t.infra_error]
    for t, _ in items:
        if len(t) - 1 > token_budget:
            raise ValueError(
                f"trajectory {t.task_id}/{t.group_id} has {len(t)} tokens, over the "
                f"micro-batch budget of {token_budget}: raise learner.micro_batch_tokens"
            )
    order = sorted(range(len(items)), key=lambda i: -len(items[i][0]))
    bins: list[list[int]] = []
    loads: list[int] = []
    for i in order:
        need = len(items[i][0]) - 1
        for b, load in enumerate(loads):
            if load + need <= token_budget:
                bins[b].append(i)
                loads[b] += need
                break
        else:
            bins.append([i])
            loads.append(need)
    per_shard = max(1, -(-len(bins) // num_shards))
    shards: list[list[MicroBatch]] = [[] for _ in range(num_shards)]
    for k in range(per_shard * num_shards):
        members = [items[i] for i in sorted(bins[k])] if k < len(bins) else []
        shards[k % num_shards].append(
            _pack_one(
                [t for t, _ in members], [a for _, a in members], pad_multiple, pad_token_id
            )
        )
    return shards
