"""The microcosm's experiments and its CLI (``echo-rl microcosm ...``): each experiment over
its seeds, its curves, tables and plots (see ``pipeline/microcosm/__init__.py``)."""

from __future__ import annotations

import csv
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from pipeline.microcosm.world import CURVE_FIELDS, EXPERIMENTS, MicrocosmConfig, World, load_microcosm_config


def run_experiment(experiment: str, mc: MicrocosmConfig) -> Path:
    from pipeline.microcosm.arms import env_only_arm, rl_arm, supervised_arm

    t0 = time.perf_counter()
    rows: list[dict] = []
    for seed in mc.seeds:
        world = World(mc, seed)
        if experiment == "supervised":
            for arm in ("action", "action+output"):
                rows += supervised_arm(world, arm)
        elif experiment in ("rl", "probe"):
            arms = [("grpo", 0.0)] + [("echo", c) for c in (mc.env_coefs if experiment == "rl" else [mc.env_only_coef])]
            for mode, coef in arms:
                rows += rl_arm(world, mode, coef)[0]
        elif experiment == "env_only":
            rows += env_only_arm(world)
        elif experiment == "sweep":  # GRPO alone at each learning rate (to choose rl_lr for every arm)
            for lr in mc.sweep_lrs:
                rows += [{**r, "arm": f"grpo lr={lr:g}"} for r in rl_arm(World(replace(mc, rl_lr=lr), seed), "grpo", 0.0)[0]]
        elif experiment == "prior":  # imitation with vs without OUTPUT tokens, then the same RL arms
            for start in ("supervised-action", "supervised-action+output"):
                w = World(replace(mc, rl_start=start), seed)
                for mode, coef in [("grpo", 0.0)] + [("echo", c) for c in mc.env_coefs]:
                    rows += [{**r, "arm": f"{start.removeprefix('supervised-')}→{r['arm']}"} for r in rl_arm(w, mode, coef)[0]]
        print(f"seed {seed} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    out = Path(mc.out_dir) / experiment
    out.mkdir(parents=True, exist_ok=True)
    for r in rows:
        r["experiment"] = experiment
    from pipeline.microcosm.report import interval_rows, plot, summarize

    with open(out / "curves.csv", "w", newline="") as f:
        w = csv.DictWriter(f, CURVE_FIELDS, restval="")
        w.writeheader()
        w.writerows(rows + interval_rows(experiment, rows))

    plot(experiment, rows, out / "curves.png")
    md = summarize(experiment, rows, mc) + f"\nwall time {time.perf_counter() - t0:.0f} s (cached runs excluded)\n"
    (out / "summary.md").write_text(md)
    (out / "config.json").write_text(json.dumps(asdict(mc), indent=2))
    print(md)
    print(f"wrote {out}/curves.csv, curves.png, summary.md")
    return out


def power_report(mc: MicrocosmConfig) -> str:
    from pipeline.microcosm.stats import episodes_for_half_width, predicted_half_width

    n = len(mc.seeds) * mc.eval_mazes * mc.eval_samples
    lines = [f"evaluation: {len(mc.seeds)} seeds × {mc.eval_mazes} mazes × {mc.eval_samples} samples = {n} episodes per arm and step"]
    for p in (0.5, 0.2, 0.9):
        lines.append(f"  at solve rate {p:g}: smallest detectable paired difference ±{predicted_half_width(len(mc.seeds), mc.eval_mazes, mc.eval_samples, p):.3f} "
                     f"(95% CI half-width when the seeds agree; seed-to-seed spread widens it)")  # fmt: skip
    lines.append(f"  ±0.05 at 0.5 needs {episodes_for_half_width(0.05, len(mc.seeds))} episodes per arm and step")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    import argparse

    from pipeline.config import ConfigError

    p = argparse.ArgumentParser(prog="echo-rl microcosm", description=__doc__.splitlines()[0])
    p.add_argument("experiment", choices=EXPERIMENTS)
    p.add_argument("--config", default="configs/microcosm/default.yaml", help="YAML (configs/microcosm/smoke.yaml: CI size)")
    p.add_argument("--power", action="store_true", help="print the smallest difference this config can detect; run nothing")
    p.add_argument("--import-curves", metavar="CSV", help="first put the supervised runs of a published curves.csv in the run cache")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. seeds=[0,1,2,3] out_dir=runs/m2")
    a = p.parse_intermixed_args(argv)
    try:
        mc = load_microcosm_config(a.config, a.overrides)
    except ConfigError as e:
        print(f"echo-rl: {e}", file=sys.stderr)
        return 2
    if a.power:
        print(power_report(mc))
        return 0
    if a.import_curves:
        from pipeline.microcosm.arms import import_curves

        for d in import_curves(a.import_curves, mc):
            print(f"imported {d}")
    try:
        run_experiment(a.experiment, mc)
    except ConfigError as e:  # found only when a run needs it (rl_start: a cached arm without weights)
        print(f"echo-rl: {e}", file=sys.stderr)
        return 2
    return 0

