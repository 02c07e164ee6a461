"""The ECHO objective as pure functions: tensors in, ``(loss, metrics)`` out.

Where it sits: learner forward (per-token log-probs) → **losses** → backward.

    L = pg_coef · L_GRPO(ACTION tokens) + env_coef · L_env(target tokens)

Both terms read ONE tensor: ``logprobs[i] = log p(token i+1 | ≤ i)`` from the learner's
forward pass (same rollout, same forward, different mask).

Global normalization: every denominator is a *global* count passed in as ``counts``
(summed over all micro-batches and all data-parallel ranks of the step), so splitting
a batch differently changes neither the loss sum nor the gradients. Every metric is
likewise a contribution that sums to the global value across shards.

Formulas (``m`` = ACTION mask, ``r_t = exp(logp_t - logp_sampler_t)``, ``A_s`` = advantage
of the token's sequence):

- ``pg_t = max(-A r_t, -A clip(r_t, 1 - clip_low, 1 + clip_high)) [+ kl_coef · k3_t]``
  with ``k3_t = exp(ref_t - logp_t) - (ref_t - logp_t) - 1``.
- token_mean:    ``L_GRPO = Σ_t m_t pg_t / N_action``  (N_action: global ACTION tokens)
- sequence_mean: ``L_GRPO = Σ_s (Σ_{t∈s} m_t pg_t / n_s) / N_seq`` (n_s: ACTION tokens of s;
  N_seq: global sequences with n_s > 0)
- ``L_env = Σ_s (Σ_{t∈s} target_t · (-logp_t) / c_s) / N_env`` where ``c_s`` counts the
  sequence's OUTPUT+WARNING tokens (normalizer ``observation``, the reference code) or its
  target tokens (``targets``); ``N_env``: global sequences with ``c_s > 0``.

Departures from the paper's reference code: the std-free Dr.GRPO and sequence_mean
options, the k3 KL term and separate clip bounds are the peers' options, off by default.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.trajectory import Role

ENV_TARGETS = {
    "output": (Role.OUTPUT,),
    "output+warning": (Role.OUTPUT, Role.WARNING),
    "warning": (Role.WARNING,),
}
ENV_NORMALIZERS = ("observation", "targets")
PG_REDUCTIONS = ("token_mean", "sequence_mean")

__all__ = [
    "Role",
    "LossCounts",
    "count_tokens",
    "policy_gradient_loss",
    "env_cross_entropy",
    "packed_echo_loss",
    "echo_loss",
]


@dataclass(frozen=True)
class LossCounts:
    """Denominators of one step's loss; sum them over micro-batches and DP ranks."""

    role_tokens: torch.Tensor  # [4] float: target tokens per Role code
    action_sequences: float  # sequences with ≥ 1 ACTION target
    env_sequences: float  # sequences with a non-zero env normalizer count

    def __add__(self, other: "LossCounts") -> "LossCounts":
        return LossCounts(
            self.role_tokens + other.role_tokens,
            self.action_sequences + other.action_sequences,
            self.env_sequences + other.env_sequences,
        )

    def as_tensor(self) -> torch.Tensor:
        """[6] float, for one all-reduce across ranks."""
        extra = torch.tensor([self.action_sequences, self.env_sequences], dtype=torch.float64)
        return torch.cat([self.role_tokens.double(), extra])

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> "LossCounts":
        t = t.double().cpu()
        return cls(t[:4].clone(), float(t[4]), float(t[5]))


def _in_roles(roles: torch.Tensor, kinds) -> torch.Tensor:
    out = torch.zeros_like(roles, dtype=torch.bool)
    for k in kinds:
        out |= roles == int(k)
    return out


def _env_masks(roles: torch.Tensor, targets: str, normalizer: str):
    if targets not in ENV_TARGETS:
        raise ValueError(f"env_targets must be one of {list(ENV_TARGETS)}, got {targets!r}")
    if normalizer not in ENV_NORMALIZERS:
        raise ValueError(f"env_normalizer must be one of {ENV_NORMALIZERS}, got {normalizer!r}")
    target_mask = _in_roles(roles, ENV_TARGETS[targets])
    if normalizer == "observation":
        norm_mask = _in_roles(roles, (Role.OUTPUT, Role.WARNING))
    else:
        norm_mask = target_mask
    return target_mask, norm_mask


def _per_sequence(values: torch.Tensor, sequence_ids: torch.Tensor, num_sequences: int):
    out = torch.zeros(num_sequences, dtype=values.dtype, device=values.device)
    return out.index_add(0, sequence_ids, values)


def count_tokens(
    roles: torch.Tensor,
    sequence_ids: torch.Tensor,
    num_sequences: int,
    *,
    env_targets: str = "output",
    env_normalizer: str = "observation",
) -> LossCounts:
    """Local counts of one shard. ``roles``, ``sequence_ids``: [N] (flattened)."""
    roles, sequence_ids = roles.reshape(-1), sequence_ids.reshape(-1)
    role_tokens = torch.stack([(roles == int(r)).sum() for r in Role]).double().cpu()
    action = (roles == int(Role.ACTION)).double()
    n_action = _per_sequence(action, sequence_ids, num_sequences)
    _, norm_mask = _env_masks(roles, env_targets, env_normalizer)
    n_norm = _per_sequence(norm_mask.double(), sequence_ids, num_sequences)
    return LossCounts(role_tokens, float((n_action > 0).sum()), float((n_norm > 0).sum()))


def policy_gradient_loss(
    logprobs: torch.Tensor,
    sampler_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    roles: torch.Tensor,
    sequence_ids: torch.Tensor,
    num_sequences: int,
    counts: LossCounts,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    reduction: str = "token_mean",
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    tis_cap: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped importance-ratio policy gradient on ACTION tokens. All inputs flat [N];
    ``advantages`` per sequence [num_sequences]; ``sampler_logprobs`` may be nan off-action.

    ``tis_cap`` > 0: truncated importance sampling against the behaviour (sampler) policy
    instead: the clipped ratio is taken against the learner's own current policy (one
    update per batch: value 1, gradient ∇log p) and each token is weighted by
    ``min(p_learner / p_sampler, tis_cap)`` (detached), as in the published TIS recipes."""
    if reduction not in PG_REDUCTIONS:
        raise ValueError(f"pg_reduction must be one of {PG_REDUCTIONS}, got {reduction!r}")
    action = roles == int(Role.ACTION)
    old = torch.where(action, sampler_logprobs.to(logprobs.dtype), logprobs.detach())
    log_ratio = torch.where(action, logprobs - old, torch.zeros_like(logprobs))
    is_weight = torch.ones_like(logprobs)
    if tis_cap > 0:
        prox = logprobs.detach()
        ratio = torch.exp(torch.where(action, logprobs - prox, torch.zeros_like(logprobs)))
        is_weight = torch.where(action, torch.exp(log_ratio.detach()).clamp(max=tis_cap), is_weight)
    else:
        ratio = torch.exp(log_ratio)
    adv = advantages.to(logprobs.dtype)[sequence_ids]
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_token = is_weight * torch.maximum(unclipped, clipped)
    kl = torch.zeros_like(logprobs)
    if ref_logprobs is not None and kl_coef != 0.0:
        d = torch.where(action, ref_logprobs.to(logprobs.dtype) - logprobs, torch.zeros_like(logprobs))
        kl = torch.exp(d) - d - 1.0
    zero = torch.zeros_like(logprobs)
    if reduction == "token_mean":
        weight = action.to(logprobs.dtype) / max(float(counts.role_tokens[Role.ACTION]), 1.0)
    else:
        n_s = _per_sequence(action.to(logprobs.dtype), sequence_ids, num_sequences)
        weight = torch.where(action, 1.0 / n_s.clamp(min=1.0)[sequence_ids], zero)
        weight = weight / max(counts.action_sequences, 1.0)
    pg = (torch.where(action, per_token, zero) * weight).sum()
    kl_term = (torch.where(action, kl, zero) * weight).sum()
    loss = pg + kl_coef * kl_term
    n_act = max(float(counts.role_tokens[Role.ACTION]), 1.0)
    with torch.no_grad():
        metrics = {
            "pg_loss": pg.detach(),
            "kl_ref": kl_term.detach(),
            "clip_frac_high": ((adv > 0) & (ratio > 1 + clip_high) & action).sum() / n_act,
            "clip_frac_low": ((adv < 0) & (ratio < 1 - clip_low) & action).sum() / n_act,
            # mean (learner - sampler) log-prob on ACTION tokens: the mismatch to watch
            "logprob_gap": log_ratio.detach().sum() / n_act,
            "logprob_abs_gap": log_ratio.detach().abs().sum() / n_act,
            # share of ACTION tokens whose importance weight was truncated at loss.tis_cap
            "tis_truncated_frac": ((torch.exp(log_ratio.detach()) > tis_cap) & action).sum() / n_act if tis_cap > 0
            else torch.zeros((), dtype=logprobs.dtype, device=logprobs.device),
        }
    return loss, metrics


def env_cross_entropy(
    logprobs: torch.Tensor,
    roles: torch.Tensor,
    sequence_ids: torch.Tensor,
    num_sequences: int,
    counts: LossCounts,
    *,
    targets: str = "output",
    normalizer: str = "observation",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Length-normalized CE on the tokens the terminal wrote. Inputs flat [N].

    ``counts.env_sequences`` must have been computed with the same targets/normalizer.
    Metrics ``env_ce_output`` / ``env_ce_warning`` are plain per-token means over all
    OUTPUT / WARNING tokens of the step, whatever the training targets are.
    """
    target_mask, norm_mask = _env_masks(roles, targets, normalizer)
    nll = -logprobs
    zero = torch.zeros_like(nll)
    c_s = _per_sequence(norm_mask.to(nll.dtype), sequence_ids, num_sequences)
    nll_s = _per_sequence(torch.where(target_mask, nll, zero), sequence_ids, num_sequences)
    per_seq = torch.where(c_s > 0, nll_s / c_s.clamp(min=1.0), torch.zeros_like(nll_s))
    loss = per_seq.sum() / max(counts.env_sequences, 1.0)
    with torch.no_grad():
        metrics = {"env_ce": loss.detach()}
        for role in (Role.OUTPUT, Role.WARNING):
            m = roles == int(role)
            n = max(float(counts.role_tokens[role]), 1.0)
            metrics[f"env_ce_{role.name.lower()}"] = torch.where(m, nll, zero).sum() / n
    return loss, metrics


def action_cross_entropy(
    logprobs: torch.Tensor, roles: torch.Tensor, counts: LossCounts
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Imitation: mean CE over the step's ACTION tokens (the ``sft`` mode's term, used for
    warm starts and the microcosm's supervised arm). Inputs flat [N]."""
    action = roles == int(Role.ACTION)
    nll = torch.where(action, -logprobs, torch.zeros_like(logprobs))
    loss = nll.sum() / max(float(counts.role_tokens[Role.ACTION]), 1.0)
    return loss, {"action_ce": loss.detach()}


def packed_echo_loss(
    logprobs: torch.Tensor,
    sampler_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    roles: torch.Tensor,
    sequence_ids: torch.Tensor,
    num_sequences: int,
    counts: LossCounts,
    *,
    env_coef: float,
    pg_coef: float = 1.0,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    env_targets: str = "output",
    env_normalizer: str = "observation",
    pg_reduction: str = "token_mean",
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    sft_coef: float = 0.0,
    tis_cap: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The ECHO objective on flat packed tensors [N] with per-token ``sequence_ids``
    (plus ``sft_coef`` × the ACTION-token CE, for imitation)."""
    pg, pg_metrics = policy_gradient_loss(
        logprobs, sampler_logprobs, advantages, roles, sequence_ids, num_sequences, counts,
        clip_low=clip_low, clip_high=clip_high, reduction=pg_reduction,
        ref_logprobs=ref_logprobs, kl_coef=kl_coef, tis_cap=tis_cap,
    )  # fmt: skip
    env_ce, env_metrics = env_cross_entropy(
        logprobs, roles, sequence_ids, num_sequences, counts,
        targets=env_targets, normalizer=env_normalizer,
    )  # fmt: skip
    act_ce, act_metrics = action_cross_entropy(logprobs, roles, counts)
    loss = pg_coef * pg + env_coef * env_ce + sft_coef * act_ce
    metrics = {"loss": loss.detach(), **pg_metrics, **env_metrics, **act_metrics}
    for role in Role:
        metrics[f"tokens_{role.name.lower()}"] = (roles == int(role)).sum().double()
    return loss, metrics


def echo_loss(
    logprobs: torch.Tensor,
    sampler_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    roles: torch.Tensor,
    *,
    env_coef: float,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    env_targets: str = "output",
    env_normalizer: str = "observation",
    pg_reduction: str = "token_mean",
    pg_coef: float = 1.0,
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    counts: LossCounts | None = None,
    tis_cap: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ECHO for your own trainer. ``logprobs``, ``sampler_logprobs``, ``roles``: [B, T],
    aligned (``roles[b, t]`` is the role of the token whose log-prob is ``logprobs[b, t]``;
    padding has role PROMPT); ``advantages``: [B]; roles are ``Role`` integer codes.

    ``counts``: the global denominators when this batch is a shard of a larger step
    (``count_tokens`` per shard, summed); by default the batch is the whole step.
    ``pg_coef=0`` gives ``env_only`` (verifier-free); ``env_coef=0`` gives GRPO.
    """
    B, T = roles.shape
    sequence_ids = torch.arange(B, device=roles.device).repeat_interleave(T)
    flat = lambda x: None if x is None else x.reshape(-1)  # noqa: E731
    if counts is None:
        counts = count_tokens(
            roles, sequence_ids, B, env_targets=env_targets, env_normalizer=env_normalizer
        )
    return packed_echo_loss(
        flat(logprobs), flat(sampler_logprobs), advantages, flat(roles), sequence_ids, B,
        counts, env_coef=env_coef, pg_coef=pg_coef, clip_low=clip_low, clip_high=clip_high,
        env_targets=env_targets, env_normalizer=env_normalizer, pg_reduction=pg_reduction,
        ref_logprobs=flat(ref_logprobs), kl_coef=kl_coef, tis_cap=tis_cap,
    )  # fmt: skip


def scheduled_env_coef(
    step: int, *, env_coef: float, schedule: str, start_value: float, start_step: int,
    end_step: int,
) -> float:  # fmt: skip
    """λ at ``step``: ``constant``; ``linear`` from start_value at start_step to env_coef at
    end_step; ``step``: start_value before start_step, env_coef from it on."""
    if schedule == "constant":
        return env_coef
    if schedule == "step":
        return start_value if step < start_step else env_coef
    if schedule == "linear":
        if step <= start_step:
            return start_value
        if step >= end_step:
            return env_coef
        frac = (step - start_step) / max(end_step - start_step, 1)
        return start_value + frac * (env_coef - start_value)
    raise ValueError(f"unknown env_coef schedule {schedule!r}")


@dataclass
class LossConfig:
    mode: str = "echo"  # grpo (env_coef forced to 0) | echo | env_only (no policy-gradient term) | sft (imitation: CE on ACTION tokens + env_coef × L_env)
    env_coef: float = 0.05  # λ on the environment CE; ~0.05 works, ≥0.2 can collapse
    env_coef_schedule: str = "constant"  # constant | linear | step
    env_coef_start: float = 0.0  # λ before/at schedule_start_step for linear and step
    schedule_start_step: int = 0  # where the linear ramp starts / the step switches
    schedule_end_step: int = 0  # where the linear ramp reaches env_coef
    env_targets: str = "output"  # output | output+warning | warning
    env_normalizer: str = "observation"  # observation (OUTPUT+WARNING count) | targets
    clip_low: float = 0.2  # ratio clipped below at 1 - clip_low
    clip_high: float = 0.2  # ratio clipped above at 1 + clip_high
    pg_reduction: str = "token_mean"  # token_mean (over the step's action tokens) | sequence_mean
    tis_cap: float = 0.0  # > 0: truncated importance sampling vs the sampler (weights capped here), for rollout.max_staleness ≥ 1; 0 = off
    # (no kl_coef: no reference policy is built, so a KL knob here would do nothing; the
    # paper trains without one. echo_loss takes ref_logprobs/kl_coef for who brings one.)

    def coefs(self, step: int) -> tuple[float, float, float]:
        """(pg_coef, env_coef, sft_coef) at ``step`` for this mode."""
        lam = scheduled_env_coef(
            step, env_coef=self.env_coef, schedule=self.env_coef_schedule,
            start_value=self.env_coef_start, start_step=self.schedule_start_step,
            end_step=self.schedule_end_step,
        )  # fmt: skip
        if self.mode == "grpo":
            return 1.0, 0.0, 0.0
        if self.mode == "sft":
            return 0.0, lam, 1.0
        return (0.0 if self.mode == "env_only" else 1.0), lam, 0.0

    def check(self) -> list[tuple[str, str]]:
        errs = []
        choices = {
            "mode": ("grpo", "echo", "env_only", "sft"),
            "env_coef_schedule": ("constant", "linear", "step"),
            "env_targets": tuple(ENV_TARGETS),
            "env_normalizer": ENV_NORMALIZERS,
            "pg_reduction": PG_REDUCTIONS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                errs.append((name, f"must be one of {list(allowed)}, got {getattr(self, name)!r}"))
        for name in ("env_coef", "env_coef_start", "tis_cap"):
            if getattr(self, name) < 0:
                errs.append((name, f"must be ≥ 0, got {getattr(self, name)}"))
        for name in ("clip_low", "clip_high"):
            if getattr(self, name) <= 0:
                errs.append((name, f"must be > 0, got {getattr(self, name)}"))
        if self.clip_low >= 1:
            errs.append(("clip_low", f"must be < 1 (ratio floor 1 - clip_low), got {self.clip_low}"))
        if self.env_coef_schedule == "linear" and self.schedule_end_step <= self.schedule_start_step:
            errs.append(("schedule_end_step", "must be > schedule_start_step for a linear schedule"))
        if self.mode == "grpo" and self.env_coef_schedule != "constant":
            errs.append(("env_coef_schedule", "a schedule has no effect in mode grpo"))
        if self.mode in ("echo", "env_only") and self.env_coef == 0:
            errs.append(("env_coef", f"is 0 in mode {self.mode}: use mode grpo for plain GRPO"))
        return errs
