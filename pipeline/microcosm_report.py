"""The microcosm's report: per-experiment markdown tables, curve plots, steps-to-reach.

Where it sits: ``pipeline/microcosm.py`` runs the arms → curve rows (``CURVE_FIELDS``) →
**summarize / plot** → ``summary.md``, ``curves.png``.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.microcosm import MicrocosmConfig


def _f(rows, key="solve_rate"):
    return [float(r[key]) for r in rows]


def _mean_sd(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"


def _by(rows: list[dict], *keys):
    out: dict = {}
    for r in rows:
        out.setdefault(tuple(str(r[k]) for k in keys), []).append(r)
    return out


def steps_to_reach(curve: list[dict], target: float) -> int | None:
    """First evaluated step whose solve rate ≥ target (None: never)."""
    return next((int(r["step"]) for r in curve if float(r["solve_rate"]) >= target - 1e-9), None)


def summarize(experiment: str, rows: list[dict], mc: MicrocosmConfig) -> str:
    lines = [f"# microcosm: {experiment}", "", f"seeds {list(mc.seeds)}; mean ± sd over seeds; solve rate on "
             f"{mc.eval_mazes} fresh mazes per seed ({mc.eval_samples} sampled episodes each, T={mc.temperature:g}).", ""]  # fmt: skip
    arms = _by(rows, "arm")
    if experiment in ("supervised", "rl", "probe"):
        key = "probe_ce" if experiment == "probe" else "solve_rate"
        label = "world-model probe CE (nats/OUTPUT token)" if experiment == "probe" else "solve rate"
        lines += [f"| arm | {label} at step 0 | at the end | best |", "|---|---|---|---|"]
        for (arm,), rs in arms.items():
            curves = _by(rs, "seed").values()
            first = [float(sorted(c, key=lambda r: int(r["step"]))[0][key]) for c in curves]
            last = [float(sorted(c, key=lambda r: int(r["step"]))[-1][key]) for c in curves]
            best = [(min if experiment == "probe" else max)(_f(c, key)) for c in curves]
            lines.append(f"| {arm} | {_mean_sd(first)} | {_mean_sd(last)} | {_mean_sd(best)} |")
    if experiment == "rl":
        lines += ["", "Steps to GRPO's best solve rate (per seed: GRPO's best step ÷ the arm's first step at or "
                  "above that rate):", "", "| arm | seed | GRPO best | GRPO steps | arm steps | speed-up |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        grpo = {s: c for (a, s), c in _by(rows, "arm", "seed").items() if a == "grpo"}
        for (arm, seed), curve in sorted(_by(rows, "arm", "seed").items()):
            if arm == "grpo" or seed not in grpo:
                continue
            best = max(_f(grpo[seed]))
            g, e = steps_to_reach(grpo[seed], best), steps_to_reach(curve, best)
            ratio = ("— (GRPO never rose above step 0)" if not g else "— (never reached)" if e is None
                     else "reached at step 0" if e == 0 else f"{g / e:.2f}×")  # fmt: skip
            lines.append(f"| {arm} | {seed} | {best:.3f} | {g} | {e if e is not None else 'never'} | {ratio} |")
    if experiment == "env_only":
        lines += ["| maze | seed | solve before | after | change |", "|---|---|---|---|---|"]
        changes = []
        for (arm, seed), c in sorted(_by(rows, "arm", "seed").items()):
            c = sorted(c, key=lambda r: int(r["step"]))
            b, a = float(c[0]["solve_rate"]), float(c[-1]["solve_rate"])
            changes.append(a - b)
            lines.append(f"| {arm} | {seed} | {b:.3f} | {a:.3f} | {a - b:+.3f} |")
        lines += ["", f"mean change {_mean_sd(changes)} over {len(changes)} seeds"]
    return "\n".join(lines) + "\n"


def plot(experiment: str, rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["solve_rate", "probe_ce"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key in zip(axes, keys):
        for (arm,), rs in _by(rows, "arm").items():
            by_step = _by(rs, "step")
            steps = sorted(int(s) for (s,) in by_step)
            ys = [[float(r[key]) for r in by_step[(str(s),)]] for s in steps]
            mean = [statistics.mean(y) for y in ys]
            sd = [statistics.pstdev(y) for y in ys]
            line, = ax.plot(steps, mean, marker="o", label=arm)
            ax.fill_between(steps, [m - s for m, s in zip(mean, sd)], [m + s for m, s in zip(mean, sd)],
                            color=line.get_color(), alpha=0.15)  # fmt: skip
        ax.set_xlabel("step")
        ax.set_ylabel(key.replace("_", " "))
        ax.legend()
    fig.suptitle(f"maze microcosm: {experiment} (mean ± sd over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
