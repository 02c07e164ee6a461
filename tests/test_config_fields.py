"""No knob that does nothing: every field of every config section is read somewhere in
the code: a stage, a method of its own section other than ``check`` (which validates, it
does not use), or the launcher scripts. A field that is declared, validated and logged but
read nowhere fails here, naming it."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

from pipeline.config import Config

ROOT = Path(__file__).resolve().parents[1]


def _sections(cls, prefix=""):
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            yield from _sections(type(default), f"{prefix}{f.name}.")
        else:
            yield cls, f"{prefix}{f.name}", f.name


def dead_fields(root_cls, texts: list[str]) -> list[str]:
    """Dotted names of the fields of ``root_cls``'s tree that ``texts`` never read."""
    dead = []
    for cls, dotted, name in _sections(root_cls):
        own = inspect.getsource(cls)
        check = inspect.getsource(cls.check) if hasattr(cls, "check") else ""
        fields = "\n".join(line for line in own.splitlines() if re.match(rf"\s+{name}\s*:", line))
        pattern = re.compile(rf"\.{name}\b|[\"']{name}[\"']|\b{name}=")
        scrub = lambda t: t.replace(check, "").replace(fields, "") if check or fields else t  # noqa: E731
        if not any(pattern.search(scrub(t)) for t in texts):
            dead.append(dotted)
    return dead


def _texts() -> list[str]:
    paths = [*(ROOT / "pipeline").rglob("*.py"), *(ROOT / "megatron_patches").rglob("*.py"),
             *(p for p in (ROOT / "slurm").rglob("*") if p.is_file())]  # fmt: skip
    return [p.read_text() for p in paths]


def test_every_config_field_is_read_by_some_stage():
    assert dead_fields(Config, _texts()) == []


@dataclasses.dataclass
class _Probe:
    used_knob: int = 0
    dead_knob_xyz: int = 0  # declared, validated, read nowhere

    def check(self):
        return [("dead_knob_xyz", "bad")] if self.dead_knob_xyz < 0 or self.used_knob < 0 else []


@dataclasses.dataclass
class _ProbeRoot:
    probe: _Probe = dataclasses.field(default_factory=_Probe)


def test_the_scan_reports_a_dead_field_and_not_a_used_one():
    """Positive and negative control on the same scan: only the field no code reads."""
    stage = "def stage(cfg):\n    return cfg.probe.used_knob * 2\n"
    assert dead_fields(_ProbeRoot, [stage, inspect.getsource(_Probe)]) == ["probe.dead_knob_xyz"]
