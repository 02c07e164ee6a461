from pathlib import Path

import pytest

from pipeline.config import Config, ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("recipe", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_recipe_loads(recipe):
    cfg = load_config(ROOT / "configs" / recipe)
    assert isinstance(cfg, Config)
    assert (ROOT / cfg.model.hf_config).is_file()


def test_overrides_apply():
    cfg = load_config(ROOT / "configs/tiny.yaml", ["loss.env_coef=0.1", "parallel.tensor=2"])
    assert cfg.loss.env_coef == 0.1 and cfg.parallel.tensor == 2


@pytest.mark.parametrize(
    "override,match",
    [
        ("loss.env_cof=0.1", r"unknown config key 'loss.env_cof'; did you mean 'loss.env_coef'"),
        ("env_coef=0.1", r"unknown config key 'env_coef'; did you mean 'loss.env_coef'"),
        ("lerner.temperature=1", r"unknown config key 'lerner'; did you mean 'learner'"),
        ("loss.env_coef=-0.1", r"loss.env_coef must be ≥ 0"),
        ("loss.clip_low=0", r"loss.clip_low must be > 0"),
        ("loss.clip_high=-1", r"loss.clip_high must be > 0"),
        ("rollout.group_size=1", r"rollout.group_size must be ≥ 2"),
        ("loss.clip_low=abc", r"config key 'loss.clip_low'"),
        ("loss.env_targets=outputs", r"loss.env_targets must be one of"),
        ("loss=3", r"'loss' is a section"),
        ("loss.env_coef", r"not of the form key=value"),
    ],
)
def test_errors_name_the_field(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(ROOT / "configs/tiny.yaml", [override])


def test_unknown_key_in_yaml_is_an_error(tmp_path):
    (tmp_path / "bad.yaml").write_text("loss:\n  env_coeff: 0.1\n")
    with pytest.raises(ConfigError, match="did you mean 'loss.env_coef'"):
        load_config(tmp_path / "bad.yaml")


def test_echo_with_zero_coef_points_to_grpo():
    with pytest.raises(ConfigError, match="use mode grpo"):
        load_config(None, ["loss.mode=echo", "loss.env_coef=0"])
