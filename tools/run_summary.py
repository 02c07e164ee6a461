"""Print a run's main curves from its MLflow store: python tools/run_summary.py runs/tiny [runs/tiny-grpo ...]"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KEYS = ("rollout/pass_rate", "eval/pass_at_1", "probe/output_ce", "env_ce_output", "rollout/tool_errors")


def main(dirs: list[str]) -> None:
    from pipeline.tracking import read_metric_history

    for rd in dirs:
        run_id = (Path(rd) / "mlflow_run_id").read_text().strip()
        print(rd)
        for k in KEYS:
            pts = read_metric_history(f"sqlite:///{Path(rd).resolve() / 'mlflow.db'}", run_id, k)
            print(f"  {k:>20}: " + " ".join(f"{s}:{v:.3g}" for s, v in pts))


if __name__ == "__main__":
    main(sys.argv[1:])
