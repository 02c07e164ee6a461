"""The microcosm's report: tables with 95% intervals, detected / not detected verdicts, curve
plots with interval bands, and the interval rows of ``curves.csv``.

Where it sits: ``pipeline/microcosm/run.py`` runs the arms → curve rows (``CURVE_FIELDS``, one
per arm × seed × evaluated step, with each evaluation maze's solve fraction in ``per_maze``)
→ **summarize / plot / interval_rows** (statistics: ``pipeline/microcosm/stats.py``) →
``summary.md``, ``curves.png``, ``curves.csv``.

Solve rates are resampled over seeds × evaluation mazes, paired across arms (the same mazes
for every arm of a seed). The probe CE is one number per seed and step (its probe set is
fixed per seed), so its intervals resample seeds only. Rows without ``per_maze`` (runs
cached before it existed) count as one maze per seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.microcosm.stats import mean_ci, paired_diff_ci, predicted_half_width, speedup_ci, steps_to_reach_ci

if TYPE_CHECKING:
    from pipeline.microcosm.world import MicrocosmConfig

CI_NOTE = "95% CI: paired bootstrap over seeds × evaluation mazes"


def _by(rows: list[dict], *keys):
    out: dict = {}
    for r in rows:
        out.setdefault(tuple(str(r[k]) for k in keys), []).append(r)
    return out


def _values(row: dict, key: str) -> list[float]:
    if key == "solve_rate" and row.get("per_maze"):
        return [float(v) for v in str(row["per_maze"]).split()]
    return [float(row[key])]


def arm_matrices(rows: list[dict], key: str = "solve_rate") -> dict[str, tuple[list[int], list[int], np.ndarray]]:
    """arm → (steps, seeds, steps × seeds × mazes) over the steps every seed evaluated."""
    out = {}
    for (arm,), rs in _by(rows, "arm").items():
        cell = {(int(r["step"]), int(r["seed"])): _values(r, key) for r in rs}
        seeds = sorted({s for _, s in cell})
        steps = sorted(st for st in {st for st, _ in cell} if all((st, s) in cell for s in seeds))
        widths = {len(v) for v in cell.values()}
        if len(widths) != 1:  # mixed cached/new rows: fall back to one value per seed
            cell = {k: [float(np.mean(v))] for k, v in cell.items()}
        out[arm] = (steps, seeds, np.array([[cell[(st, s)] for s in seeds] for st in steps], dtype=np.float64))
    return out


def comparisons(experiment: str, arms: list[str]) -> list[tuple[str, str]]:
    """(arm, reference) pairs each experiment reports a difference for."""
    if experiment == "supervised":
        return [("action+output", "action")] if {"action", "action+output"} <= set(arms) else []
    if experiment in ("rl", "probe"):
        return [(a, "grpo") for a in arms if a != "grpo" and "grpo" in arms]
    if experiment == "prior":  # the interaction prior (imitation with OUTPUT) vs ECHO, each against plain GRPO
        pairs = [("action+output→grpo", "action→grpo")]
        for a in sorted(a for a in arms if "→echo" in a):
            start = a.split("→")[0]
            pairs += [(a, f"{start}→grpo")] + ([(a, "action+output→grpo")] if start == "action" else [])
        return [(a, b) for a, b in pairs if {a, b} <= set(arms)]
    return []


def speed_pairs(experiment: str, arms: list[str]) -> list[tuple[str, str]]:
    """(ECHO arm, GRPO arm) from the same start: the speed-up is measured between them."""
    if experiment == "rl":
        return [(a, "grpo") for a in arms if a.startswith("echo") and "grpo" in arms]
    if experiment == "prior":
        return [(a, f"{a.split('→')[0]}→grpo") for a in arms if "→echo" in a and f"{a.split('→')[0]}→grpo" in arms]
    return []


def _ci(x: np.ndarray) -> str:
    c = mean_ci(x)
    return f"{c.estimate:.3f} [{c.lo:.3f}, {c.hi:.3f}]"


def summarize(experiment: str, rows: list[dict], mc: MicrocosmConfig) -> str:
    n_seeds = len({str(r["seed"]) for r in rows})
    hw = predicted_half_width(n_seeds, mc.eval_mazes, mc.eval_samples)
    lines = [f"# microcosm: {experiment}", "",
             f"seeds {sorted({int(r['seed']) for r in rows})}; solve rate on {mc.eval_mazes} fresh mazes per seed "
             f"({mc.eval_samples} sampled episodes each, T={mc.temperature:g}); every value is the mean "
             f"[{CI_NOTE}]; a difference is *detected* when its interval excludes 0.", "",
             f"Power: smallest detectable difference of two arms at solve rate 0.5 ≈ ±{hw:.3f} (the 95% CI "
             f"half-width when the seeds agree, {n_seeds} seeds × {mc.eval_mazes} mazes × "
             f"{mc.eval_samples} samples; seed-to-seed spread only widens it: the measured half-widths are below).", ""]  # fmt: skip
    solve = arm_matrices(rows, "solve_rate")
    key = "probe_ce" if experiment == "probe" else "solve_rate"
    mats = arm_matrices(rows, key) if key != "solve_rate" else solve
    if experiment in ("supervised", "rl", "probe", "prior"):
        label = "probe CE (nats/OUTPUT token; CI over seeds)" if experiment == "probe" else "solve rate"
        lines += [f"| arm | {label} at step 0 | at the end | best evaluated step |", "|---|---|---|---|"]
        for arm, (steps, _, x) in mats.items():
            means = np.nanmean(x, axis=(1, 2))
            best = int(np.argmin(means) if experiment == "probe" else np.argmax(means))
            lines.append(f"| {arm} | {_ci(x[0])} | {_ci(x[-1])} | {_ci(x[best])} (step {steps[best]}) |")
        targets = list(getattr(mc, "reach_targets", [0.5, 0.8]))
        if experiment == "rl" and "grpo" in solve:
            targets.append(float(np.nanmean(solve["grpo"][2], axis=(1, 2)).max()))
        lines += _speed_lines(experiment, solve, list(getattr(mc, "speed_fractions", [1.0])))
        lines += ["", "Steps to reach a solve rate (first evaluated step at or above it; [95% CI]; the "
                  "last target of `rl` is GRPO's best mean):", "",
                  "| arm | " + " | ".join(f"≥ {t:.3g}" for t in targets) + " |", "|---" * (len(targets) + 1) + "|"]  # fmt: skip
        for arm, (steps, _, x) in solve.items():
            lines.append(f"| {arm} | " + " | ".join(str(steps_to_reach_ci(steps, x, t)) for t in targets) + " |")
        pairs = comparisons(experiment, list(mats))
        if pairs:
            lines += ["", f"Differences ({CI_NOTE}, the same resample for both arms; 'mean over the curve' "
                      "averages every evaluated step after 0, so it rewards getting there sooner):", "",
                      "| difference | at the end | verdict | mean over the curve | verdict | half-width |",
                      "|---|---|---|---|---|---|"]  # fmt: skip
            for a, b in pairs:
                (sa, _, xa), (sb, _, xb) = mats[a], mats[b]
                common = [s for s in sa if s in sb and s > 0]
                pa, pb = (np.stack([x[st.index(s)] for s in common]) for st, x in ((sa, xa), (sb, xb)))
                end = paired_diff_ci(pa[-1], pb[-1])
                auc = paired_diff_ci(pa.mean(axis=0), pb.mean(axis=0))
                lines.append(f"| {a} − {b} ({key.replace('_', ' ')}) | {end} | {end.verdict()} | {auc} | "
                             f"{auc.verdict()} | ±{end.half_width:.3f} |")  # fmt: skip
    if experiment in ("sweep", "rl", "prior"):
        lines += ["", "Gain over the start (each arm against its own step 0, paired by maze):", "",
                  "| arm | solve rate at step 0 | at the end | best evaluated step | end − start | verdict | "
                  "mean over the curve − start | verdict |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for arm, (steps, _, x) in solve.items():
            means = np.nanmean(x, axis=(1, 2))
            best = int(np.argmax(means))
            end, curve = paired_diff_ci(x[-1], x[0]), paired_diff_ci(x[1:].mean(axis=0), x[0])
            lines.append(f"| {arm} | {_ci(x[0])} | {_ci(x[-1])} | {_ci(x[best])} (step {steps[best]}) | "
                         f"{end} | {end.verdict()} | {curve} | {curve.verdict()} |")  # fmt: skip
    if experiment == "env_only":
        lines += ["| maze | solve before | after | after − before (paired by maze) | verdict |", "|---|---|---|---|---|"]
        for arm, (steps, _, x) in solve.items():
            d = paired_diff_ci(x[-1], x[0])
            lines.append(f"| {arm} | {_ci(x[0])} | {_ci(x[-1])} | {d} | {d.verdict()} |")
    return "\n".join(lines) + "\n"


def _speed_lines(experiment: str, solve: dict, fractions: list[float]) -> list[str]:
    pairs = speed_pairs(experiment, list(solve))
    if not pairs:
        return []
    lines = ["", "Speed-up: GRPO's steps ÷ the ECHO arm's steps to reach GRPO's start + f × (GRPO's best − start), "
             "where each curve first gets there (interpolated between evaluations); [95% CI, the same paired bootstrap, the target recomputed from "
             "GRPO's resampled curve; a resample where the arm never gets there counts 0×]. > 1: ECHO got there sooner.",
             "", "| ECHO arm | f | target | GRPO steps | ECHO steps | speed-up | verdict | resamples never reached |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for a, g in pairs:
        (sa, _, xa), (sg, _, xg) = solve[a], solve[g]
        common = [s for s in sg if s in sa]
        pa, pg = (np.stack([x[st.index(s)] for s in common]) for st, x in ((sa, xa), (sg, xg)))
        for f in fractions:
            sp = speedup_ci(common, pg, pa, f)
            arm_steps = "never" if sp.arm_steps is None else f"{sp.arm_steps:.1f}"
            lines.append(f"| {a} | {f:g} | {sp.target:.3f} | {sp.grpo_steps:.1f} | {arm_steps} | {sp} | {sp.verdict()} | "
                         f"{sp.never:.0%} |")  # fmt: skip
    return lines


def interval_rows(experiment: str, rows: list[dict]) -> list[dict]:
    """``curves.csv``'s pooled rows: ``seed=all`` per arm and step (mean + 95% CI), and one row
    per reported difference and step (``arm`` = "a − b")."""
    out = []
    mats = arm_matrices(rows, "solve_rate")
    for arm, (steps, _, x) in mats.items():
        for i, s in enumerate(steps):
            c = mean_ci(x[i])
            out.append({"experiment": experiment, "arm": arm, "seed": "all", "step": s, "solve_rate": round(c.estimate, 4),
                        "ci_lo": round(c.lo, 4), "ci_hi": round(c.hi, 4)})  # fmt: skip
    for a, b in comparisons(experiment, list(mats)):
        (sa, _, xa), (sb, _, xb) = mats[a], mats[b]
        for s in (s for s in sa if s in sb):
            d = paired_diff_ci(xa[sa.index(s)], xb[sb.index(s)])
            out.append({"experiment": experiment, "arm": f"{a} − {b}", "seed": "all", "step": s,
                        "solve_rate": round(d.estimate, 4), "ci_lo": round(d.lo, 4), "ci_hi": round(d.hi, 4),
                        "verdict": d.verdict()})  # fmt: skip
    return out


def plot(experiment: str, rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["solve_rate", "probe_ce"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key in zip(axes, keys):
        for arm, (steps, _, x) in arm_matrices(rows, key).items():
            cis = [mean_ci(x[i]) for i in range(len(steps))]
            (line,) = ax.plot(steps, [c.estimate for c in cis], marker="o", label=arm)
            ax.fill_between(steps, [c.lo for c in cis], [c.hi for c in cis], color=line.get_color(), alpha=0.15)
        ax.set_xlabel("step")
        ax.set_ylabel(key.replace("_", " "))
        ax.legend()
    fig.suptitle(f"maze microcosm: {experiment} (mean; bands: {CI_NOTE}, probe CE over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
