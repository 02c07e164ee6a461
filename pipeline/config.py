"""The run's configuration: a tree of per-stage dataclasses, loaded through OmegaConf.

Where it sits: the entry point loads it once; each stage gets only its own sub-config.

    cfg = load_config("configs/tiny.yaml", ["loss.env_coef=0.1"])

Errors name the field: an unknown key gives the closest valid one, a wrong type names
the key, an out-of-range value says the allowed range (``ConfigError``).
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.advantages import AdvantageConfig
from pipeline.engines.base import EngineConfig
from pipeline.evaluate import EvalConfig
from pipeline.learner.config import LearnerConfig, ModelConfig, OptimConfig, ParallelConfig
from pipeline.losses import LossConfig
from pipeline.rollout.loop import RolloutConfig
from pipeline.sandbox.base import SandboxConfig
from pipeline.tasks.sets import TaskSetConfig
from pipeline.tracking import TrackingConfig


class ConfigError(ValueError):
    """A configuration problem, naming the dotted key it is about."""


@dataclass
class RunConfig:
    name: str = "echo"  # run name (MLflow run name, run dir name)
    output_dir: str = "runs"  # checkpoints, trajectories and the MLflow store go under it
    seed: int = 1234  # seeds model init, task sampling and generation
    steps: int = 10  # training steps
    resume: bool = True  # continue from the latest checkpoint in output_dir/ckpt when there is one
    max_infra_error_frac: float = 0.5  # stop when more episodes of a step fail on infrastructure

    def check(self) -> list[tuple[str, str]]:
        errs = [("steps", f"must be ≥ 0, got {self.steps}")] if self.steps < 0 else []
        if not 0 <= self.max_infra_error_frac <= 1:
            errs.append(("max_infra_error_frac", f"must be in [0, 1], got {self.max_infra_error_frac}"))
        return errs


@dataclass
class ClusterConfig:
    """Placement for ``sbatch slurm/*.sbatch`` (``pipeline/launch.py``); unused by single-node runs."""

    learner_nodes: int = 1  # nodes running Megatron (srun torchrun), the first ones of the job
    rollout_nodes: int = 1  # nodes running vLLM servers (the next ones)
    gpus_per_node: int = 8  # learner processes per node and GPUs of a rollout node (0: CPU)
    vllm_tensor_parallel: int = 1  # GPUs per vLLM server (servers per rollout node = gpus_per_node / this)
    vllm_port: int = 8100  # first server port on each rollout node
    vllm_args: list[str] = field(default_factory=list)  # extra vLLM server arguments, e.g. [--dtype, bfloat16]
    master_port: int = 29500  # torchrun rendezvous port on the first learner node
    server_start_timeout_s: float = 1800.0  # how long servers wait for the learner's model export
    server_host: str = ""  # address each vLLM server binds ("" = its node's name, the one in its URL; 0.0.0.0 = all)
    server_restarts: int = 3  # a rollout server that dies is started again (on its node) this often per job
    server_restart_delay_s: float = 10.0  # wait before each restart
    sandbox_hosts: bool = False  # each rollout node serves sandboxes (tools/podman_host.sh): the learner gets them as sandbox.hosts
    sandbox_url: str = "ssh://{node}"  # how the learner reaches a rollout node's service ({node}, {socket} filled in)
    sandbox_slots: int = 8  # episodes at once on each rollout node's sandbox host
    log_dir: str = ""  # per-component logs ("" = RUN_DIR/logs/JOB_ID)

    def check(self) -> list[tuple[str, str]]:
        errs = [(n, f"must be ≥ 1, got {getattr(self, n)}") for n in ("learner_nodes", "rollout_nodes", "vllm_tensor_parallel")
                if getattr(self, n) < 1]  # fmt: skip
        if self.server_restarts < 0:
            errs.append(("server_restarts", f"must be ≥ 0, got {self.server_restarts}"))
        if self.gpus_per_node < 0:
            errs.append(("gpus_per_node", f"must be ≥ 0, got {self.gpus_per_node}"))
        elif self.gpus_per_node and self.gpus_per_node % self.vllm_tensor_parallel:
            errs.append(("vllm_tensor_parallel", f"must divide gpus_per_node={self.gpus_per_node}"))
        return errs


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    advantages: AdvantageConfig = field(default_factory=AdvantageConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    tasks: TaskSetConfig = field(default_factory=TaskSetConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)


def _check_keys(tree: Any, schema: type, prefix: str) -> None:
    """Raise on the first key of ``tree`` that ``schema`` does not define."""
    if not isinstance(tree, dict):
        return
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            if not close:  # maybe it belongs one level up or down: search all dotted keys
                close = difflib.get_close_matches(path, _all_keys(Config), n=1, cutoff=0.6)
                hint = f"; did you mean '{close[0]}'?" if close else ""
            else:
                hint = f"; did you mean '{prefix}{close[0]}'?"
            raise ConfigError(f"unknown config key '{path}'{hint}")
        ftype = fields[key].type
        sub = ftype if isinstance(ftype, type) else globals().get(str(ftype))
        if sub is not None and dataclasses.is_dataclass(sub):
            if not isinstance(value, dict):
                raise ConfigError(f"'{path}' is a section ({sub.__name__}), got {value!r}")
            _check_keys(value, sub, path + ".")


def _all_keys(schema: type, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(schema):
        sub = globals().get(str(f.type)) if not isinstance(f.type, type) else f.type
        if sub is not None and dataclasses.is_dataclass(sub):
            out += _all_keys(sub, f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """YAML recipe (optional) + dotlist overrides → validated ``Config``."""
    layers = []
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"config file not found: {path}")
        layers.append(OmegaConf.load(path))
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"override {bad[0]!r} is not of the form key=value")
    layers.append(OmegaConf.from_dotlist(list(overrides)))
    for layer in layers:
        _check_keys(OmegaConf.to_container(layer), Config, "")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), *layers)
        cfg: Config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        msg = str(e).splitlines()[0]
        raise ConfigError(f"config key '{key}': {msg}") from None
    errors = [
        f"{section.name}.{name} {msg}"
        for section in dataclasses.fields(Config)
        for name, msg in getattr(cfg, section.name).check()
    ]
    if errors:
        raise ConfigError("invalid config: " + "; ".join(errors))
    return cfg


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def flat_params(cfg: Config) -> dict[str, Any]:
    """Dotted key → value, e.g. for tracking params."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if dataclasses.is_dataclass(node):
            for f in dataclasses.fields(node):
                walk(getattr(node, f.name), f"{prefix}{f.name}.")
        else:
            out[prefix[:-1]] = node

    walk(cfg, "")
    return out
