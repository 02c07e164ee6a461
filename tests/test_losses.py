"""The ECHO objective against hand-computed numbers, and its split invariance."""

import math

import pytest
import torch

from pipeline.losses import (
    LossConfig,
    Role,
    count_tokens,
    echo_loss,
    packed_echo_loss,
    scheduled_env_coef,
)

P, A, O, W = int(Role.PROMPT), int(Role.ACTION), int(Role.OUTPUT), int(Role.WARNING)
NAN = float("nan")


def t(x, dtype=torch.float64):
    return torch.tensor(x, dtype=dtype)


# ---- policy gradient ----------------------------------------------------------------


def test_ratio_clipped_on_both_sides():
    # token 0: ratio e^{ln 1.5} = 1.5, A=+1 → clipped at 1.2: loss -1.2, no gradient
    # token 1: ratio 0.5, A=-1 → max(0.5, 0.8) = 0.8 (clipped), no gradient
    # token 2: ratio 1.1, A=+1 → inside: loss -1.1, d/dlogp = -1.1
    lp = t([[math.log(1.5), math.log(0.5), math.log(1.1)]]).requires_grad_()
    sampler = t([[0.0, 0.0, 0.0]])
    roles = t([[A, A, A]], torch.long)
    # one sequence per row: give each token its own row to vary the advantage
    lp3 = lp.reshape(3, 1)
    loss, m = echo_loss(lp3, sampler.reshape(3, 1), t([1.0, -1.0, 1.0]), roles.reshape(3, 1), env_coef=0.0)
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 1.1) / 3)
    loss.backward()
    assert lp.grad[0].tolist() == pytest.approx([0.0, 0.0, -1.1 / 3])
    assert m["clip_frac_high"].item() == pytest.approx(1 / 3)
    assert m["clip_frac_low"].item() == pytest.approx(1 / 3)


def test_truncated_importance_sampling_weights_tokens_by_the_capped_ratio():
    # the same three tokens with loss.tis_cap=1.2: weights min(ratio, 1.2) = 1.2, 0.5, 1.1
    # on -A·∇log p (the ratio to the learner's own policy is 1): no token loses its gradient
    lp = t([[math.log(1.5)], [math.log(0.5)], [math.log(1.1)]]).requires_grad_()
    roles, sampler = t([[A]] * 3, torch.long), t([[0.0]] * 3)
    loss, m = echo_loss(lp, sampler, t([1.0, -1.0, 1.0]), roles, env_coef=0.0, tis_cap=1.2)
    assert loss.item() == pytest.approx((-1.2 + 0.5 - 1.1) / 3)
    loss.backward()
    assert lp.grad[:, 0].tolist() == pytest.approx([-1.2 / 3, 0.5 / 3, -1.1 / 3])
    assert m["tis_truncated_frac"].item() == pytest.approx(1 / 3)
    assert m["clip_frac_high"].item() == 0.0
    # off by default: the clipped ratio of the test above, nothing truncated
    off, m_off = echo_loss(lp.detach(), sampler, t([1.0, -1.0, 1.0]), roles, env_coef=0.0)
    assert off.item() == pytest.approx((-1.2 + 0.8 - 1.1) / 3) and m_off["tis_truncated_frac"].item() == 0.0


def test_asymmetric_clip_bounds():
    # ratio 1.25, A=+1: clip_high=0.3 → inside (-1.25); clip_high=0.2 → -1.2
    lp, s, r = t([[math.log(1.25)]]), t([[0.0]]), t([[A]], torch.long)
    inside, _ = echo_loss(lp, s, t([1.0]), r, env_coef=0.0, clip_low=0.1, clip_high=0.3)
    clipped, _ = echo_loss(lp, s, t([1.0]), r, env_coef=0.0, clip_low=0.1, clip_high=0.2)
    assert inside.item() == pytest.approx(-1.25)
    assert clipped.item() == pytest.approx(-1.2)
    # ratio 0.85, A=-1: clip_low=0.1 → floor 0.9, max(0.85, 0.9) = 0.9 (clipped);
    # clip_low=0.2 → floor 0.8, max(0.85, 0.85) = 0.85 (inside)
    lp = t([[math.log(0.85)]])
    low, _ = echo_loss(lp, s, t([-1.0]), r, env_coef=0.0, clip_low=0.1, clip_high=0.3)
    inside_low, _ = echo_loss(lp, s, t([-1.0]), r, env_coef=0.0, clip_low=0.2, clip_high=0.3)
    assert low.item() == pytest.approx(0.9)
    assert inside_low.item() == pytest.approx(0.85)


def test_token_mean_vs_sequence_mean():
    # seq0: 1 action token, A=1; seq1: 3 action tokens, A=2; ratio 1 everywhere
    lp = t([[-1.0, NAN, NAN, NAN], [-1.0, -1.0, -1.0, -2.0]])
    lp = torch.nan_to_num(lp, nan=-0.5)
    sampler = t([[-1.0, NAN, NAN, NAN], [-1.0, -1.0, -1.0, NAN]])
    roles = t([[A, P, P, P], [A, A, A, O]], torch.long)
    adv = t([1.0, 2.0])
    tok, _ = echo_loss(lp, sampler, adv, roles, env_coef=0.0, pg_reduction="token_mean")
    seq, _ = echo_loss(lp, sampler, adv, roles, env_coef=0.0, pg_reduction="sequence_mean")
    assert tok.item() == pytest.approx((-1 - 2 * 3) / 4)
    assert seq.item() == pytest.approx((-1 / 1 - 6 / 3) / 2)


def test_k3_kl_to_reference():
    # d = ref - lp = 0.5: k3 = e^0.5 - 0.5 - 1; A = 0 so only the KL term remains
    lp, ref = t([[-1.0]]), t([[-0.5]])
    loss, m = echo_loss(lp, lp.clone(), t([0.0]), t([[A]], torch.long), env_coef=0.0,
                        ref_logprobs=ref, kl_coef=0.1)  # fmt: skip
    k3 = math.exp(0.5) - 0.5 - 1
    assert m["kl_ref"].item() == pytest.approx(k3)
    assert loss.item() == pytest.approx(0.1 * k3)


def test_zero_advantage_gives_zero_pg_gradient():
    lp = t([[-1.0, -2.0, -0.3]]).requires_grad_()
    loss, _ = echo_loss(lp, t([[-1.1, -1.9, NAN]]), t([0.0]), t([[A, A, O]], torch.long), env_coef=0.0)
    loss.backward()
    assert loss.item() == 0.0
    assert lp.grad.abs().max().item() == 0.0


# ---- environment cross-entropy --------------------------------------------------------

# seq0 roles [A, O, O, W], -log p [0.5, 1, 2, 3]; seq1 [O, P], -log p [4, 9]
ENV_LP = t([[-0.5, -1.0, -2.0, -3.0], [-4.0, -9.0, 0.0, 0.0]])
ENV_ROLES = t([[A, O, O, W], [O, P, P, P]], torch.long)
ENV_SAMPLER = t([[-0.5, NAN, NAN, NAN], [NAN, NAN, NAN, NAN]])


@pytest.mark.parametrize(
    "targets,normalizer,expected",
    [
        ("output", "observation", ((1 + 2) / 3 + 4 / 1) / 2),
        ("output+warning", "observation", ((1 + 2 + 3) / 3 + 4 / 1) / 2),
        ("warning", "observation", (3 / 3 + 0 / 1) / 2),
        ("output", "targets", ((1 + 2) / 2 + 4 / 1) / 2),
        ("warning", "targets", (3 / 1) / 1),  # seq1 has no warning tokens: not counted
        ("output+warning", "targets", ((1 + 2 + 3) / 3 + 4 / 1) / 2),
    ],
)
def test_env_cross_entropy(targets, normalizer, expected):
    loss, m = echo_loss(ENV_LP, ENV_SAMPLER, t([0.0, 0.0]), ENV_ROLES, env_coef=1.0,
                        env_targets=targets, env_normalizer=normalizer)  # fmt: skip
    assert m["env_ce"].item() == pytest.approx(expected)
    assert loss.item() == pytest.approx(expected)  # A=0: pg contributes 0
    assert m["env_ce_output"].item() == pytest.approx((1 + 2 + 4) / 3)
    assert m["env_ce_warning"].item() == pytest.approx(3.0)
    assert m["tokens_output"].item() == 3 and m["tokens_warning"].item() == 1


def test_env_loss_only_touches_target_tokens():
    lp = ENV_LP.clone().requires_grad_()
    loss, _ = echo_loss(lp, ENV_SAMPLER, t([0.0, 0.0]), ENV_ROLES, env_coef=0.5)
    loss.backward()
    # d/dlogp of 0.5 * mean_s(-Σ/c_s): seq0 outputs: -0.5/3/2, seq1 output: -0.5/1/2
    expected = torch.tensor([[0.0, -0.5 / 6, -0.5 / 6, 0.0], [-0.25, 0.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(lp.grad, expected)


def test_env_only_has_no_policy_gradient():
    lp = ENV_LP.clone().requires_grad_()
    loss, m = echo_loss(lp, ENV_SAMPLER, t([5.0, -5.0]), ENV_ROLES, env_coef=0.05, pg_coef=0.0)
    assert loss.item() == pytest.approx(0.05 * 2.5)
    loss.backward()
    assert lp.grad[0, 0].item() == 0.0  # the ACTION token gets nothing
    assert m["pg_loss"].item() != 0.0  # still reported


def test_echo_with_zero_coef_is_grpo_exactly():
    torch.manual_seed(0)
    roles = torch.tensor([[P, A, A, O, O, W, A, O]] * 3)
    lp = (-torch.rand(3, 8, dtype=torch.float64) * 3)
    sampler = torch.where(roles == A, lp + 0.1 * torch.randn_like(lp), torch.full_like(lp, NAN))
    adv = t([1.0, -0.5, 0.25])
    a = lp.clone().requires_grad_()
    b = lp.clone().requires_grad_()
    la, _ = echo_loss(a, sampler, adv, roles, env_coef=0.0)
    lb, _ = echo_loss(b, sampler, adv, roles, env_coef=0.05)
    (la).backward()
    lb.backward()
    assert not torch.equal(a.grad, b.grad)  # λ>0 does change gradients ...
    c = lp.clone().requires_grad_()
    lc, _ = echo_loss(c, sampler, adv, roles, env_coef=0.0, env_targets="output+warning")
    lc.backward()
    assert torch.equal(a.grad, c.grad)  # ... λ=0 ignores the env settings entirely


# ---- split invariance -------------------------------------------------------------------


def _random_batch(B=6, T=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    roles = torch.randint(0, 4, (B, T), generator=g)
    roles[:, -3:] = P  # padding
    lp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 4
    sampler = torch.where(roles == A, lp + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64),
                          torch.full_like(lp, NAN))  # fmt: skip
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    return lp, sampler, adv, roles


@pytest.mark.parametrize("reduction", ["token_mean", "sequence_mean"])
@pytest.mark.parametrize("targets,normalizer", [("output", "observation"), ("output+warning", "targets")])
def test_split_invariance(reduction, targets, normalizer):
    lp, sampler, adv, roles = _random_batch()
    kw = dict(env_coef=0.05, env_targets=targets, env_normalizer=normalizer, pg_reduction=reduction,
              clip_low=0.1, clip_high=0.15)  # fmt: skip
    full_in = lp.clone().requires_grad_()
    full, fm = echo_loss(full_in, sampler, adv, roles, **kw)
    full.backward()

    splits = [(0, 1), (1, 4), (4, 6)]  # uneven micro-batches / DP shards
    seq = lambda n, T: torch.arange(n).repeat_interleave(T)  # noqa: E731
    counts = None
    for lo, hi in splits:
        c = count_tokens(roles[lo:hi], seq(hi - lo, roles.shape[1]), hi - lo,
                         env_targets=targets, env_normalizer=normalizer)  # fmt: skip
        counts = c if counts is None else counts + c
    part_in = lp.clone().requires_grad_()
    total = 0.0
    metrics_sum = {}
    for lo, hi in splits:
        loss, m = echo_loss(part_in[lo:hi], sampler[lo:hi], adv[lo:hi], roles[lo:hi], counts=counts, **kw)
        loss.backward()
        total += loss.item()
        for k, v in m.items():
            metrics_sum[k] = metrics_sum.get(k, 0.0) + v.item()
    assert total == pytest.approx(full.item(), abs=1e-6)
    torch.testing.assert_close(part_in.grad, full_in.grad, atol=1e-6, rtol=0)
    for k in ("pg_loss", "env_ce", "env_ce_output", "clip_frac_high", "tokens_action"):
        assert metrics_sum[k] == pytest.approx(fm[k].item(), abs=1e-6)


def test_packed_layout_equals_padded_layout():
    """The learner's packed [N] layout gives the public [B, T] API's loss and grads."""
    lp, sampler, adv, roles = _random_batch(B=3, T=10, seed=3)
    padded_in = lp.clone().requires_grad_()
    ref, _ = echo_loss(padded_in, sampler, adv, roles, env_coef=0.1)
    ref.backward()
    # pack: drop each row's trailing padding, concatenate, add one padding sequence id 3
    lens = [7, 7, 7]
    flat_in = lp.clone().requires_grad_()
    parts = [slice(0, n) for n in lens]
    cat = lambda x: torch.cat([x[b, parts[b]] for b in range(3)] + [x[0, -2:]])  # noqa: E731
    roles_p = torch.cat([roles[b, parts[b]] for b in range(3)] + [torch.tensor([P, P])])
    seq_ids = torch.tensor(sum(([b] * n for b, n in enumerate(lens)), []) + [3, 3])
    counts = count_tokens(roles_p, seq_ids, 4)
    loss, _ = packed_echo_loss(cat(flat_in), cat(sampler), torch.cat([adv, t([0.0])]), roles_p,
                               seq_ids, 4, counts, env_coef=0.1)  # fmt: skip
    loss.backward()
    assert loss.item() == pytest.approx(ref.item(), abs=1e-12)
    torch.testing.assert_close(flat_in.grad, padded_in.grad)


# ---- coefficients and modes ---------------------------------------------------------------


def test_env_coef_schedules():
    kw = dict(env_coef=0.1, start_value=0.0, start_step=10, end_step=20)
    assert scheduled_env_coef(5, schedule="constant", **kw) == 0.1
    assert scheduled_env_coef(9, schedule="step", **kw) == 0.0
    assert scheduled_env_coef(10, schedule="step", **kw) == 0.1
    assert scheduled_env_coef(10, schedule="linear", **kw) == 0.0
    assert scheduled_env_coef(15, schedule="linear", **kw) == pytest.approx(0.05)
    assert scheduled_env_coef(25, schedule="linear", **kw) == 0.1


def test_modes_give_coefficients():
    assert LossConfig(mode="grpo", env_coef=0.05).coefs(3) == (1.0, 0.0, 0.0)
    assert LossConfig(mode="echo", env_coef=0.05).coefs(3) == (1.0, 0.05, 0.0)
    assert LossConfig(mode="env_only", env_coef=0.05).coefs(3) == (0.0, 0.05, 0.0)
    assert LossConfig(mode="sft", env_coef=0.0).coefs(3) == (0.0, 0.0, 1.0)


def test_sft_mode_is_action_token_cross_entropy():
    # two sequences; ACTION tokens carry log-probs -1, -2 (seq 0) and -3 (seq 1)
    roles = torch.tensor([[0, 1, 1, 2], [0, 1, 2, 2]])
    logp = torch.tensor([[-9.0, -1.0, -2.0, -4.0], [-9.0, -3.0, -5.0, -7.0]], requires_grad=True)
    nan = torch.zeros_like(logp)  # sampler log-probs (expert data: any finite value)
    loss, m = echo_loss(logp, nan, torch.zeros(2), roles, env_coef=0.0, pg_coef=0.0)
    assert float(loss) == 0.0 and abs(float(m["action_ce"]) - 2.0) < 1e-6
    from pipeline.losses import count_tokens, packed_echo_loss

    flat_roles, seq = roles.reshape(-1), torch.arange(2).repeat_interleave(4)
    counts = count_tokens(flat_roles, seq, 2)
    loss, m = packed_echo_loss(logp.reshape(-1), nan.reshape(-1), torch.zeros(2), flat_roles, seq, 2, counts,
                               env_coef=0.5, pg_coef=0.0, sft_coef=1.0)  # fmt: skip
    action_ce = (1 + 2 + 3) / 3
    env_ce = (4 / 1 + (5 + 7) / 2) / 2  # per-sequence length-normalized OUTPUT CE
    assert abs(float(m["action_ce"]) - action_ce) < 1e-6
    assert abs(float(loss) - (action_ce + 0.5 * env_ce)) < 1e-6
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[0, -1 / 3, -1 / 3, -0.5 / 2], [0, -1 / 3, -0.5 / 4, -0.5 / 4]]))
