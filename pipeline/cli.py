"""``echo-rl``: the command line.

    echo-rl config configs/tiny.yaml loss.env_coef=0.1   # print the resolved config
    echo-rl train  configs/tiny.yaml loss.env_coef=0.1   # run a training job
    echo-rl learner-smoke configs/tiny.yaml              # learner steps on synthetic trajectories
    echo-rl convert {mcore-to-hf,hf-to-mcore,verify} ... # checkpoints (tools/convert.py)
"""

from __future__ import annotations

import argparse
import sys

from pipeline.config import ConfigError, load_config, to_yaml


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML recipe, e.g. configs/tiny.yaml")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. loss.env_coef=0.1")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="echo-rl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_config_args(sub.add_parser("config", help="print the resolved config"))
    _add_config_args(sub.add_parser("train", help="run a training job"))
    smoke = sub.add_parser("learner-smoke", help="Megatron learner steps on synthetic trajectories")
    _add_config_args(smoke)
    sub.add_parser("convert", help="checkpoint export/import/verify (tools/convert.py)", add_help=False)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["convert"]:
        from tools.convert import main as convert_main

        return convert_main(argv[1:])
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"echo-rl: {e}", file=sys.stderr)
        return 2
    if args.command == "config":
        print(to_yaml(cfg), end="")
        return 0
    if args.command == "learner-smoke":
        from pipeline.learner.smoke import run_smoke

        return run_smoke(cfg)
    if args.command == "train":
        from pipeline.learner.smoke import run_smoke

        print(
            "echo-rl train: the rollout stage (vLLM/HF engines driving sandboxed terminal tasks)\n"
            "and weight sync are not built yet (issues 5-7). Until they land, train runs the\n"
            "real learner (Megatron-Core, fused log-probs, ECHO loss, checkpoints) on synthetic\n"
            "trajectories shaped like terminal episodes.",
            file=sys.stderr,
        )
        return run_smoke(cfg)
    return 1


if __name__ == "__main__":
    sys.exit(main())
