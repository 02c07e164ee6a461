"""The microcosm's statistics: paired bootstrap intervals over seeds × evaluation mazes.

Where it sits: ``pipeline/microcosm/run.py`` evaluates every arm on the same mazes per seed and
keeps each maze's solve fraction (``per_maze`` in the curve rows) → **these functions** →
``pipeline/microcosm/report.py`` (tables, the detected / not detected verdicts, the plot's
bands, ``curves.csv``'s interval columns).

The unit of resampling is the pair (seed, evaluation maze): the seeds are resampled with
replacement, then the mazes within each resampled seed, and the *same* resample is applied
to both arms (every arm of a seed is evaluated on the same mazes), so maze difficulty
cancels in a difference and the seed-to-seed spread of training stays in the interval.
With one seed only the mazes are resampled (the interval then says nothing about seeds).
A maze whose episodes were all infrastructure failures is NaN and left out of every mean.

A difference is **detected** when its 95% interval excludes 0, in the direction of its
sign; a step count is reported with its interval, ``None`` standing for "not reached".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054
N_BOOT = 4000


@dataclass(frozen=True)
class Interval:
    estimate: float
    lo: float
    hi: float

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2

    def verdict(self) -> str:
        if self.lo > 0:
            return "detected (+)"
        if self.hi < 0:
            return "detected (−)"
        return "not detected"

    def __str__(self) -> str:
        return f"{self.estimate:+.3f} [{self.lo:+.3f}, {self.hi:+.3f}]"


@dataclass(frozen=True)
class StepInterval:
    """First evaluated step at or above a target; ``None`` = not reached within the run."""

    estimate: int | None
    lo: int | None
    hi: int | None
    last_step: int

    def __str__(self) -> str:
        f = lambda s: "never" if s is None else str(s)  # noqa: E731
        if self.estimate is None and self.lo is None:
            return f"not reached in {self.last_step} steps"
        return f"{f(self.estimate)} [{f(self.lo)}, {f(self.hi)}]"


def as_matrix(per_seed: dict[int, list[float]], seeds: list[int]) -> np.ndarray:
    """Seeds × mazes of per-maze solve fractions (every seed the same number of mazes)."""
    rows = [np.asarray(per_seed[s], dtype=np.float64) for s in seeds]
    if len({len(r) for r in rows}) != 1:
        raise ValueError(f"seeds have different numbers of evaluation mazes: {[len(r) for r in rows]}")
    return np.stack(rows)


def _resample(n_seeds: int, n_mazes: int, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    s = rng.integers(0, n_seeds, size=(n_boot, n_seeds)) if n_seeds > 1 else np.zeros((n_boot, 1), dtype=np.int64)
    m = rng.integers(0, n_mazes, size=(n_boot, n_seeds, n_mazes))
    return s, m


def _boot_means(x: np.ndarray, idx) -> np.ndarray:
    """Bootstrap means of a seeds × mazes matrix (or steps × seeds × mazes: one mean per step)."""
    s, m = idx
    if x.ndim == 2:
        return np.nanmean(x[s[:, :, None], m], axis=(1, 2))
    return np.nanmean(x[:, s[:, :, None], m], axis=(2, 3)).T  # n_boot × steps


def _percentiles(v: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(v, [2.5, 97.5])
    return float(lo), float(hi)


def mean_ci(x: np.ndarray, *, n_boot: int = N_BOOT, seed: int = 0) -> Interval:
    """Mean solve rate of one arm (seeds × mazes) with its 95% bootstrap interval."""
    v = _boot_means(x, _resample(*x.shape, n_boot, seed))
    return Interval(float(np.nanmean(x)), *_percentiles(v))


def paired_diff_ci(a: np.ndarray, b: np.ndarray, *, n_boot: int = N_BOOT, seed: int = 0) -> Interval:
    """Arm ``a`` − arm ``b`` (seeds × mazes each, the same mazes), paired 95% bootstrap interval."""
    if a.shape != b.shape:
        raise ValueError(f"arms evaluated on different mazes: {a.shape} vs {b.shape}")
    return mean_ci(a - b, n_boot=n_boot, seed=seed)


def steps_to_reach_ci(steps: list[int], x: np.ndarray, target: float, *, n_boot: int = N_BOOT,
                      seed: int = 0) -> StepInterval:  # fmt: skip
    """``x``: steps × seeds × mazes of one arm. The first step whose mean solve rate ≥ target, on
    the data and over bootstrap resamples; the interval's end is ``None`` when more than 2.5% of
    the resamples never reach it (the run was too short to bound it)."""
    steps_arr = np.asarray(steps)
    first = lambda curve: next((int(s) for s, p in zip(steps_arr, curve) if p >= target - 1e-9), None)  # noqa: E731
    point = first(np.nanmean(x, axis=(1, 2)))
    boot = _boot_means(x, _resample(x.shape[1], x.shape[2], n_boot, seed))
    reached = (boot >= target - 1e-9)
    idx = np.where(reached.any(axis=1), reached.argmax(axis=1), len(steps))  # len(steps) = never
    lo_i, hi_i = (int(math.floor(np.percentile(idx, 2.5))), int(math.ceil(np.percentile(idx, 97.5))))
    as_step = lambda i: None if i >= len(steps) else int(steps_arr[i])  # noqa: E731
    return StepInterval(point, as_step(lo_i), as_step(hi_i), int(steps_arr[-1]))


def predicted_half_width(n_seeds: int, n_mazes: int, samples: int, p: float = 0.5) -> float:
    """The 95% half-width of a paired difference of two arms at solve rate ``p`` when the arms'
    seeds agree (episode noise only: each maze's fraction is a mean of ``samples`` Bernoulli
    draws per arm). The two-level bootstrap counts that noise a second time through the seed
    means, a factor 1 + (S − 1)/S on the variance (1.67 at 3 seeds: conservative); a real
    seed-to-seed spread widens it further."""
    two_level = 1 + (n_seeds - 1) / n_seeds
    return Z95 * math.sqrt(two_level * 2 * p * (1 - p) / (samples * n_mazes * n_seeds))


def episodes_for_half_width(half_width: float, n_seeds: int, p: float = 0.5) -> int:
    """Evaluation episodes per arm (seeds × mazes × samples) for ``predicted_half_width`` ≤ the goal."""
    return math.ceil((1 + (n_seeds - 1) / n_seeds) * 2 * p * (1 - p) * (Z95 / half_width) ** 2)


@dataclass(frozen=True)
class SpeedUp:
    """GRPO's steps ÷ the arm's steps to reach GRPO's start + ``fraction`` × its best gain.
    ``never``: the share of resamples in which the arm never reached the target (its ratio is
    counted as 0 there: the interval is conservative for the arm)."""

    estimate: float | None
    lo: float
    hi: float
    grpo_steps: float
    arm_steps: float | None
    target: float
    never: float

    def verdict(self) -> str:
        if self.lo > 1:
            return "faster (detected)"
        if self.hi < 1:
            return "slower (detected)"
        return "not detected"

    def __str__(self) -> str:
        est = "0 (never)" if self.estimate is None else f"{self.estimate:.2f}×"
        return f"{est} [{self.lo:.2f}, {self.hi:.2f}]"


def _crossing(curves: np.ndarray, steps: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """curves: n × steps; targets: n. The step at which each curve first reaches its target,
    linearly interpolated between the two evaluations around it (evaluations are coarse: every
    ``eval_every`` steps); NaN where it never does."""
    hit = curves >= targets[:, None] - 1e-9
    i = hit.argmax(axis=1)
    rows = np.arange(len(curves))
    prev = np.maximum(i - 1, 0)
    c0, c1 = curves[rows, prev], curves[rows, i]
    frac = np.where(c1 > c0, (targets - c0) / np.where(c1 > c0, c1 - c0, 1.0), 1.0)
    at = np.where(i > 0, steps[prev] + np.clip(frac, 0, 1) * (steps[i] - steps[prev]), steps[i])
    return np.where(hit.any(axis=1), at, np.nan)


def speedup_ci(steps: list[int], grpo: np.ndarray, arm: np.ndarray, fraction: float = 1.0, *,
               n_boot: int = N_BOOT, seed: int = 0) -> SpeedUp:  # fmt: skip
    """``grpo``, ``arm``: steps × seeds × mazes, the same steps and mazes (step 0 = the shared start).

    The target is GRPO's start + ``fraction`` × (GRPO's best − its start), recomputed in each
    resample from GRPO's resampled curve (so the noise in GRPO's best is in the interval);
    each arm's steps are where its curve first reaches it (``_crossing``). Both arms take the
    same resample of seeds and mazes. Ratio GRPO ÷ arm (> 1: the arm got there sooner); a
    crossing earlier than one step counts as one step."""
    if grpo.shape != arm.shape:
        raise ValueError(f"arms evaluated on different steps or mazes: {grpo.shape} vs {arm.shape}")
    st = np.asarray(steps, dtype=np.float64)

    def ratios(g: np.ndarray, a: np.ndarray):  # n × steps curves
        targets = g[:, 0] + fraction * (g.max(axis=1) - g[:, 0])
        sg, sa = _crossing(g, st, targets), _crossing(a, st, targets)
        r = np.where(np.isnan(sa), 0.0, np.maximum(sg, 1.0) / np.maximum(np.nan_to_num(sa), 1.0))
        return r, sg, sa, targets

    r0, sg0, sa0, t0 = ratios(np.nanmean(grpo, axis=(1, 2))[None], np.nanmean(arm, axis=(1, 2))[None])
    idx = _resample(grpo.shape[1], grpo.shape[2], n_boot, seed)
    rb, _, sab, _ = ratios(_boot_means(grpo, idx), _boot_means(arm, idx))
    lo, hi = _percentiles(rb)
    never = bool(np.isnan(sa0[0]))
    return SpeedUp(None if never else float(r0[0]), lo, hi, float(sg0[0]), None if never else float(sa0[0]),
                   float(t0[0]), float(np.isnan(sab).mean()))  # fmt: skip
