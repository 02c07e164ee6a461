"""Megatron learner on gloo: TP/PP/DP layouts and checkpoint resume are exact (fp32).

Every run starts from the same TP=1 initial checkpoint (loaded, resharded, by Megatron
dist_checkpointing); updated weights are compared after loading each run's checkpoint
back at TP=1. Adam's eps is raised so that the update is close to linear in the
gradient: otherwise tiny gradients whose last bits differ by summation order would be
amplified to ±lr by Adam's normalization and hide real parity.
"""

import json

import pytest
import torch

from tests.helpers.dist import torchrun

pytestmark = pytest.mark.slow

WORKER = "tests/helpers/learner_worker.py"
COMMON = ["optim.lr=1e-3", "optim.adam_eps=1e-3", "learner.micro_batch_tokens=256", "run.seed=7"]
LAYOUTS = {
    # tp1 (the reference) uses the packed attention without recomputation; three layouts
    # also switch one of those, so each equality covers both (a fault in either would show)
    "tp2": (2, ["parallel.tensor=2", "learner.recompute=full"]),
    "pp2": (2, ["parallel.pipeline=2", "learner.recompute=selective"]),
    "tp2pp2": (4, ["parallel.tensor=2", "parallel.pipeline=2"]),
    "dp2": (2, ["learner.attention=mask"]),  # the block-diagonal S×S mask: the reference attention
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    torchrun(WORKER, 1, str(root / "init.json"), "--save", str(root / "init"), "--steps", "0", *COMMON)
    variants = {"tp1": (1, []), **LAYOUTS,
                # ECHO with λ = 0 (a step schedule that has not switched on yet) vs GRPO
                "grpo": (1, ["loss.mode=grpo"]),
                "echo_zero": (1, ["loss.env_coef_schedule=step", "loss.schedule_start_step=100"])}
    for name, (nproc, extra) in variants.items():
        torchrun(WORKER, nproc, str(root / f"{name}.json"), "--init", str(root / "init"),
                 "--steps", "2", "--save", str(root / name), *COMMON, *extra)  # fmt: skip
    dumps = [f"--dump={root / name}:{root / name}.pt" for name in [*variants, "init"]]
    torchrun(WORKER, 1, str(root / "dump.json"), *dumps, *COMMON)
    out = {name: (json.loads((root / f"{name}.json").read_text()), torch.load(root / f"{name}.pt"))
           for name in variants}  # fmt: skip
    out["init"] = torch.load(root / "init.pt")
    out["root"] = root
    return out


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_matches_tp1(runs, layout):
    ref_hist, ref_w = runs["tp1"]
    hist, w = runs[layout]
    for a, b in zip(ref_hist, hist):
        for key in ("loss", "pg_loss", "env_ce", "env_ce_output", "tokens_action", "tokens_output"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (layout, a["step"], key)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    assert set(w) == set(ref_w)
    for name in ref_w:
        torch.testing.assert_close(w[name], ref_w[name], rtol=1e-5, atol=2e-6, msg=f"{layout}:{name}")


def test_weights_actually_moved(runs):
    """Guards the parity test: two steps changed the weights well beyond its tolerance."""
    _, w = runs["tp1"]
    moved = max((w[k] - runs["init"][k]).abs().max().item() for k in w)
    assert moved > 1e-4


def test_echo_with_zero_env_coef_is_grpo(runs):
    (g_hist, g_w), (e_hist, e_w) = runs["grpo"], runs["echo_zero"]
    assert [h["env_coef"] for h in e_hist] == [0.0, 0.0]
    assert [h["loss"] for h in e_hist] == [h["loss"] for h in g_hist]
    for name in g_w:
        assert torch.equal(g_w[name], e_w[name]), name
    _, echo_w = runs["tp1"]  # λ = 0.05 does change the update
    assert any(not torch.equal(echo_w[n], g_w[n]) for n in g_w)


def test_resume_is_exact(runs, tmp_path):
    """2 steps straight == 1 step, checkpoint, new process, resume, 1 step."""
    root = runs["root"]
    ref_hist, ref_w = runs["tp1"]
    torchrun(WORKER, 1, str(tmp_path / "a.json"), "--init", str(root / "init"), "--steps", "1",
             "--save", str(tmp_path / "ck"), *COMMON)  # fmt: skip
    torchrun(WORKER, 2, str(tmp_path / "b.json"), "--resume", str(tmp_path / "ck"), "--steps", "1",
             "--save", str(tmp_path / "ck2"), *COMMON, "parallel.tensor=2")  # fmt: skip
    torchrun(WORKER, 1, str(tmp_path / "d.json"), f"--dump={tmp_path / 'ck2'}:{tmp_path / 'w.pt'}",
             *COMMON)  # fmt: skip
    resumed = json.loads((tmp_path / "b.json").read_text())[0]
    assert resumed["step"] == 1
    assert resumed["loss"] == pytest.approx(ref_hist[1]["loss"], rel=1e-6)
    w = torch.load(tmp_path / "w.pt")
    for name in ref_w:
        torch.testing.assert_close(w[name], ref_w[name], rtol=1e-5, atol=2e-6)
