"""The microcosm's statistics on synthetic evaluations whose true difference is known: the
paired interval covers it, and the detected / not detected verdict is right both ways."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.microcosm.report import summarize
from pipeline.microcosm.stats import (
    episodes_for_half_width,
    mean_ci,
    paired_diff_ci,
    predicted_half_width,
    speedup_ci,
    steps_to_reach_ci,
)

ROOT = Path(__file__).resolve().parents[1]


def _arm(rng, difficulty: np.ndarray, shift: float, samples: int) -> np.ndarray:
    """Seeds × mazes of solve fractions: each maze's success probability is its difficulty + shift."""
    p = np.clip(difficulty + shift, 0, 1)
    return rng.binomial(samples, p) / samples


@pytest.mark.parametrize("true_diff", [0.12, -0.12, 0.0])
def test_paired_interval_covers_the_true_difference_and_the_verdict_follows_it(true_diff):
    rng = np.random.default_rng(7)
    seeds, mazes, samples = 3, 128, 2
    covered, verdicts = 0, []
    for trial in range(40):
        difficulty = rng.uniform(0.2, 0.8, size=(seeds, mazes))  # the same mazes for both arms
        b = _arm(rng, difficulty, 0.0, samples)
        a = _arm(rng, difficulty, true_diff, samples)
        ci = paired_diff_ci(a, b, n_boot=1000, seed=trial)
        covered += ci.lo <= true_diff <= ci.hi
        verdicts.append(ci.verdict())
    assert covered >= 34  # nominal 95%: 38 of 40; 34 leaves room for a 3-seed bootstrap's undercoverage
    expected = "detected (+)" if true_diff > 0 else "detected (−)" if true_diff < 0 else "not detected"
    assert verdicts.count(expected) >= (38 if true_diff else 34), verdicts


def test_pairing_is_what_makes_a_small_difference_detectable():
    """Maze difficulty varies far more than the arms differ: an unpaired comparison of the
    two means cannot see 0.06, the paired one can (its half-width is the maze noise only)."""
    rng = np.random.default_rng(3)
    difficulty = rng.choice([0.05, 0.95], size=(3, 256))
    a, b = _arm(rng, difficulty, 0.06, 4), _arm(rng, difficulty, 0.0, 4)
    paired = paired_diff_ci(a, b, seed=1)
    ma, mb = mean_ci(a, seed=1), mean_ci(b, seed=2)
    assert paired.verdict() == "detected (+)"
    assert paired.half_width < (ma.half_width + mb.half_width) / 2
    assert ma.lo <= mb.hi  # the two arms' own intervals overlap


def test_steps_to_reach_has_an_interval_and_says_when_a_run_never_got_there():
    rng = np.random.default_rng(0)
    steps = [0, 10, 20, 30, 40]
    true_curve = np.array([0.1, 0.3, 0.55, 0.7, 0.75])
    x = np.stack([_arm(rng, np.full((3, 96), p), 0.0, 2) for p in true_curve])
    got = steps_to_reach_ci(steps, x, 0.5, n_boot=1000)
    assert got.estimate == 20 and got.lo is not None and got.lo <= 20 <= got.hi
    never = steps_to_reach_ci(steps, x, 0.9, n_boot=1000)
    assert never.estimate is None and str(never) == "not reached in 40 steps"
    borderline = steps_to_reach_ci(steps, x, 0.75, n_boot=1000)  # the last point straddles it
    assert borderline.hi is None and "never" in str(borderline)


def _curves(rng, curve: np.ndarray, difficulty: np.ndarray, samples: int = 2) -> np.ndarray:
    """steps × seeds × mazes: each maze's probability is its difficulty + the curve's gain."""
    return np.stack([_arm(rng, difficulty, g, samples) for g in curve])


def test_the_speed_up_is_the_ratio_of_steps_to_grpos_target_with_an_interval():
    rng = np.random.default_rng(11)
    steps = list(range(0, 101, 10))
    t = np.asarray(steps, dtype=float)
    gain = lambda s: 0.35 * (1 - np.exp(-s / 30))  # noqa: E731 — GRPO's gain after s steps
    difficulty = rng.uniform(0.1, 0.4, size=(3, 128))
    grpo = _curves(rng, gain(t), difficulty)
    twice = _curves(rng, gain(2 * t), difficulty)  # the same curve at twice the speed
    same = _curves(rng, gain(t), difficulty)
    flat = _curves(rng, np.zeros_like(t), difficulty)  # never improves
    fast = speedup_ci(steps, grpo, twice, 0.8, n_boot=1000)
    assert fast.verdict() == "faster (detected)" and 1.4 <= fast.estimate <= 3.0 and fast.lo <= 2.0 <= fast.hi, fast
    assert fast.grpo_steps > fast.arm_steps and fast.never < 0.05
    tie = speedup_ci(steps, grpo, same, 0.8, n_boot=1000)
    assert tie.verdict() == "not detected" and tie.lo <= 1.0 <= tie.hi, tie
    slow = speedup_ci(steps, grpo, flat, 0.8, n_boot=1000)  # positive control of the other direction
    assert slow.estimate is None and slow.arm_steps is None and slow.never > 0.9 and slow.verdict() == "slower (detected)"
    # the target is GRPO's own: at f = 1 GRPO reaches it at its best evaluated step
    best = speedup_ci(steps, grpo, twice, 1.0, n_boot=200)
    means = grpo.mean(axis=(1, 2))
    assert best.grpo_steps == steps[int(np.argmax(means))] and abs(best.target - means.max()) < 1e-9
    # between evaluations the crossing is interpolated: a curve 0, 0.2, 0.4 reaches 0.3 at step 15
    lin = np.stack([np.full((1, 4), v) for v in (0.0, 0.2, 0.4)])
    assert speedup_ci([0, 10, 20], lin, lin, 0.75, n_boot=10).grpo_steps == 15.0
    with pytest.raises(ValueError, match="different steps or mazes"):
        speedup_ci(steps, grpo, twice[:-1], 0.8)


def test_the_power_formula_matches_the_bootstrap_and_sizes_the_full_config():
    from pipeline.microcosm.world import load_microcosm_config

    rng = np.random.default_rng(5)
    full = load_microcosm_config(str(ROOT / "configs/microcosm/original.yaml"), [])
    seeds, mazes, samples = len(full.seeds), full.eval_mazes, full.eval_samples
    pred = predicted_half_width(seeds, mazes, samples, p=0.5)
    widths = [paired_diff_ci(_arm(rng, np.full((seeds, mazes), 0.5), 0, samples),
                             _arm(rng, np.full((seeds, mazes), 0.5), 0, samples), n_boot=1000, seed=i).half_width
              for i in range(10)]  # fmt: skip
    assert abs(np.mean(widths) - pred) < 0.25 * pred
    assert pred <= 0.05 and episodes_for_half_width(0.05, seeds) <= seeds * mazes * samples


def test_the_summary_carries_intervals_and_verdicts():
    from pipeline.microcosm.world import MicrocosmConfig

    rng = np.random.default_rng(1)
    mc = MicrocosmConfig(seeds=[0, 1, 2], eval_mazes=64, eval_samples=2)
    rows = []
    for arm, shift in (("action", 0.0), ("action+output", 0.25)):
        for seed in mc.seeds:
            difficulty = np.random.default_rng(seed).uniform(0.1, 0.5, 64)
            for step, base in ((0, 0.0), (10, 0.2), (20, 0.4)):
                frac = _arm(rng, np.clip(difficulty + base, 0, 1)[None], shift if step else 0.0, 2)[0]
                rows.append({"experiment": "supervised", "arm": arm, "seed": seed, "step": step,
                             "solve_rate": float(frac.mean()), "probe_ce": 1.0, "train_solve_rate": "", "loss": "",
                             "seconds": 0, "per_maze": " ".join(f"{v:g}" for v in frac)})  # fmt: skip
    md = summarize("supervised", rows, mc)
    assert "action+output − action" in md and "detected (+)" in md
    assert "95% CI" in md and "smallest detectable difference" in md
