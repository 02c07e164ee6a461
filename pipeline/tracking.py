"""MLflow: the only module that talks to it (global rank 0 only).

Where it sits: main → **Tracker** (params once; metrics per step; artifacts) → MLflow.

Default store: ``sqlite:///RUN_DIR/mlflow.db``, artifacts in ``RUN_DIR/mlartifacts`` (any
tracking URI works; a server's artifact store is the server's). The MLflow run id
is kept in ``RUN_DIR/mlflow_run_id`` so a resumed job logs into the same run.

Exactly-once steps: a step's metrics are buffered and written to MLflow right after the
checkpoint that contains the step is saved (``commit``). A job killed between two
checkpoints redoes those steps after resuming and logs them then, so MLflow never has a
step twice or a step missing.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class TrackingConfig:
    tracking_uri: str = ""  # "" = sqlite:///<run dir>/mlflow.db
    experiment: str = "echo-rl"  # MLflow experiment name
    enabled: bool = True  # false: no MLflow at all (metrics still print)

    def check(self) -> list[tuple[str, str]]:
        return []


class Tracker:
    def __init__(self, cfg: TrackingConfig, run_dir: Path, run_name: str, params: dict[str, Any]):
        self.enabled = cfg.enabled
        self.run_dir = run_dir
        self.uri = cfg.tracking_uri or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"
        self._pending: list[tuple[int, dict[str, float]]] = []
        self.run_id = ""
        if not self.enabled:
            return
        os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
        import mlflow

        self.mlflow = mlflow
        mlflow.set_tracking_uri(self.uri)
        if not cfg.tracking_uri and mlflow.get_experiment_by_name(cfg.experiment) is None:
            # the run's own store keeps its artifacts under RUN_DIR too (MLflow's default is
            # ./mlruns in the working directory: a run would write into the checkout)
            mlflow.create_experiment(cfg.experiment, artifact_location=(run_dir / "mlartifacts").resolve().as_uri())
        mlflow.set_experiment(cfg.experiment)
        id_file = run_dir / "mlflow_run_id"
        if id_file.is_file():
            self.run_id = id_file.read_text().strip()
            mlflow.start_run(run_id=self.run_id)
        else:
            run = mlflow.start_run(run_name=run_name)
            self.run_id = run.info.run_id
            id_file.write_text(self.run_id)
            items = {k: (str(v)[:500] if not isinstance(v, (int, float, bool)) else v) for k, v in params.items()}
            mlflow.log_params(items)

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        """Buffer a step's metrics until ``commit`` (see the module docstring)."""
        self._pending.append((step, {k: float(v) for k, v in metrics.items() if _finite_number(v)}))

    def commit(self) -> None:
        """Write the buffered steps (call right after a checkpoint was saved)."""
        if self.enabled and self._pending:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            batch = [Metric(k, v, now, step) for step, m in self._pending for k, v in m.items()]
            client = self.mlflow.tracking.MlflowClient()
            for i in range(0, len(batch), 1000):
                client.log_batch(self.run_id, metrics=batch[i : i + 1000])
        self._pending.clear()

    def has_step(self, key: str, step: int) -> bool:
        """Whether MLflow already holds ``key`` at ``step`` (a resumed run must not log it again)."""
        if not self.enabled:
            return False
        return any(s == step for s, _ in read_metric_history(self.uri, self.run_id, key))

    def log_artifact(self, path: str | Path, subdir: str | None = None) -> None:
        if self.enabled and Path(path).exists():
            self.mlflow.log_artifact(str(path), artifact_path=subdir)

    def ui_command(self) -> str:
        return f"mlflow ui --backend-store-uri {self.uri}"

    def close(self) -> None:
        if self.enabled:
            self.mlflow.end_run()


def _finite_number(v: Any) -> bool:
    """MLflow takes finite numbers only (bools count as 0/1)."""
    return isinstance(v, (int, float)) and math.isfinite(float(v))


def read_metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of one metric, sorted by step: for tests and reports."""
    from mlflow.tracking import MlflowClient

    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key))


CURVES = ("rollout/pass_rate", "eval/pass_at_1", "loss", "pg_loss", "env_ce_output", "probe/output_ce",
          "logprob_abs_gap", "rollout/turns")  # fmt: skip


def plot_curves(tracker: Tracker, out: Path, keys=CURVES) -> Path:
    """A PNG of the run's main curves, read back from MLflow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {k: read_metric_history(tracker.uri, tracker.run_id, k) for k in keys}
    series = {k: v for k, v in series.items() if v}
    cols = 4
    rows = max(1, -(-len(series) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, (k, pts) in zip(axes.flat, series.items()):
        ax.plot([s for s, _ in pts], [v for _, v in pts], marker="o", ms=3)
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
    for ax in list(axes.flat)[len(series):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
