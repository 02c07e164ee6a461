"""``echo-rl``: the command line.

    echo-rl config configs/tiny.yaml loss.env_coef=0.1   # print the resolved config
    echo-rl train  configs/tiny.yaml loss.env_coef=0.1   # run a training job (resumes when killed)
    echo-rl eval   runs/tiny/ckpt configs/tiny.yaml      # pass@k + world-model probe of a checkpoint
    echo-rl learner-smoke configs/tiny.yaml              # learner steps on synthetic trajectories
    echo-rl convert {mcore-to-hf,hf-to-mcore,verify} ... # checkpoints (pipeline/weights/convert.py)
    echo-rl view runs/tiny/trajectories/step_000003.jsonl [--html OUT] [--loss-weights]  # trajectories by role
    echo-rl sandbox exec [--task DIR] [--timeout S] -- CMD # the observation the agent would see
    echo-rl sandbox shell [--task DIR]                   # an interactive shell in a task's sandbox
    echo-rl tasks generate --families all --n 4 --out DIR  # built-in task families → Harbor dirs
    echo-rl tasks check DIR... [--backend docker] [--jobs N] [--json OUT]  # oracle: no-op 0, solution 1
    echo-rl tasks audit DIR... [--backend docker] [--jobs N] [--json OUT]  # generic reward attacks
    echo-rl tasks prepare DIR... --wheelhouse W [--download]  # offline-ready images (verifier tools baked in)
    echo-rl microcosm rl [--config configs/microcosm/smoke.yaml]  # the maze microcosm (pipeline/microcosm/)
"""

from __future__ import annotations

import argparse
import sys

from pipeline.config import ConfigError, load_config, to_yaml


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML recipe, e.g. configs/tiny.yaml")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. loss.env_coef=0.1")


def main(argv: list[str] | None = None) -> int:
    import warnings

    # Megatron-Core warns on import where TE/Apex are absent (every CPU run): said once in the README.
    warnings.filterwarnings("ignore", message=".*(Transformer Engine and Apex|Apex is not installed).*")
    # and its TransformerConfig of 0.16 warns about its own default cuda_graph_scope
    warnings.filterwarnings("ignore", message="full scope is deprecated", module="megatron")
    parser = argparse.ArgumentParser(prog="echo-rl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_config_args(sub.add_parser("config", help="print the resolved config"))
    _add_config_args(sub.add_parser("train", help="run a training job (resumes from RUN_DIR/ckpt)"))
    ev = sub.add_parser("eval", help="pass@k on held-out tasks + the world-model probe of a checkpoint")
    ev.add_argument("ckpt", help="Megatron checkpoint dir (e.g. runs/tiny/ckpt)")
    ev.add_argument("--out", default="", help="where to write the table (default: CKPT/../eval-CKPT)")
    _add_config_args(ev)
    smoke = sub.add_parser("learner-smoke", help="Megatron learner steps on synthetic trajectories")
    _add_config_args(smoke)
    sub.add_parser("convert", help="checkpoint export/import/verify (pipeline/weights/convert.py)", add_help=False)
    sub.add_parser("view", help="show trajectories by role (pipeline/viewer.py)", add_help=False)
    sub.add_parser("microcosm", help="the maze microcosm: supervised | rl | probe | env_only", add_help=False)
    sb = sub.add_parser("sandbox", help="run commands in a task's sandbox as the agent would")
    sb_sub = sb.add_subparsers(dest="sandbox_command", required=True)
    ex = sb_sub.add_parser("exec", help="print exactly the observation the agent would see for CMD")
    sh = sb_sub.add_parser("shell", help="an interactive shell in a task's environment")
    for p in (ex, sh):
        p.add_argument("--backend", default="bwrap")
        p.add_argument("--task", help="task directory (its environment/app seeds /app)")
        p.add_argument("--config", help="YAML recipe whose sandbox section to use")
    ex.add_argument("--timeout", type=float, help="per-command timeout in seconds")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ...")
    tasks = sub.add_parser("tasks", help="task sets")
    tasks_sub = tasks.add_subparsers(dest="tasks_command", required=True)
    gen = tasks_sub.add_parser("generate", help="write generated tasks as Harbor task dirs")
    gen.add_argument("--families", default="all", help="comma-separated family names, or all")
    gen.add_argument("--n", type=int, default=1, help="instances per family")
    gen.add_argument("--out", required=True)
    gen.add_argument("--seed", type=int, default=0)
    for name, what in (("check", "the oracle run: no-op → 0, reference solution → 1, per task"),
                       ("audit", "generic reward attacks against each task; fails if one scores above the no-op")):
        tp = tasks_sub.add_parser(name, help=what)
        tp.add_argument("dirs", nargs="+")
        tp.add_argument("--backend")
        tp.add_argument("--jobs", type=int, default=1)
        tp.add_argument("--json")
    tasks_sub.add_parser("prepare", help="offline-ready task images: the verifier's tools baked in (pipeline/tasks/prepare.py)",
                         add_help=False)  # fmt: skip
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] in (["tasks", "check"], ["tasks", "audit"]):
        from pipeline.tasks.check import main as check_main

        return check_main(argv[1:])
    if argv[:2] == ["tasks", "prepare"]:
        from pipeline.tasks.prepare import main as prepare_main

        return prepare_main(argv[2:])
    if argv[:1] == ["tasks"]:
        from pipeline.tasks.generator import FAMILIES, generate

        a = parser.parse_args(argv)
        families = sorted(FAMILIES) if a.families == "all" else a.families.split(",")
        try:
            dirs = generate(families, a.n, a.out, seed=a.seed)
        except ValueError as e:
            print(f"echo-rl: {e}", file=sys.stderr)
            return 2
        print(f"wrote {len(dirs)} Harbor task dirs under {a.out}")
        return 0
    if argv[:1] == ["sandbox"]:
        return _sandbox(parser.parse_args(argv))
    if argv[:1] == ["microcosm"]:
        from pipeline.microcosm.run import main as microcosm_main

        return microcosm_main(argv[1:])
    if argv[:1] == ["convert"]:
        from pipeline.weights.convert import main as convert_main

        return convert_main(argv[1:])
    if argv[:1] == ["view"]:
        from pipeline.viewer import main as view_main

        return view_main(argv[1:])
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
        from pipeline.main import RunError, train

        try:
            train(cfg)
        except ConfigError as e:
            print(f"echo-rl: {e}", file=sys.stderr)
            return 2
        except (RunError, FloatingPointError) as e:
            print(f"echo-rl train: {e}", file=sys.stderr)
            return 1
        return 0
    if args.command == "eval":
        from pipeline.evaluate import run_eval_command

        return run_eval_command(cfg, args.ckpt, args.out)
    return 1


def _sandbox(args) -> int:
    from pathlib import Path

    from pipeline.sandbox import SandboxError, make_backend

    try:
        cfg = load_config(args.config, [f"sandbox.backend={args.backend}"]).sandbox
        backend = make_backend(cfg)
        with backend.start(task_dir=Path(args.task) if args.task else None, episode="cli") as box:
            if args.sandbox_command == "shell":
                return box.shell()
            cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
            if not cmd:
                print("echo-rl sandbox exec: give a command after --", file=sys.stderr)
                return 2
            result = box.exec(" ".join(cmd), timeout_s=args.timeout)
            for text, _kind in result.observation(cfg):
                sys.stdout.write(text)
            sys.stdout.write("\n")
            return 0
    except (ConfigError, SandboxError) as e:
        print(f"echo-rl: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
