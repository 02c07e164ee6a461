"""The trajectory viewer: every token's role visible (HTML and terminal), and per-token
loss weights that are the gradient magnitudes of the ECHO loss at ratio 1."""

import io

import torch

from pipeline.losses import echo_loss
from pipeline.rollout.chat import load_tokenizer
from pipeline.trajectory import Role, Trajectory, save_jsonl
from pipeline.viewer import loss_weights, render_html, render_terminal

TOK = "configs/tokenizer/tiny"


def trajectories():
    tok = load_tokenizer(TOK)
    out = []
    for g, reward in enumerate([1.0, 0.0]):
        parts = [("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", Role.PROMPT), ("ls", Role.ACTION),
                 ("<|im_end|>\n<|im_start|>user\n", Role.PROMPT), ("a.txt\nexit code: 0" if g else "b", Role.OUTPUT),
                 ("\nWARNING: x", Role.WARNING)]  # fmt: skip
        ids, roles = [], []
        for text, role in parts:
            t = tok(text, add_special_tokens=False)["input_ids"]
            ids += t
            roles += [int(role)] * len(t)
        lps = [-0.5 if r == Role.ACTION else float("nan") for r in roles]
        out.append(Trajectory("t", "g", ids, roles, [0] * len(ids), lps, reward=reward))
    return out


def test_html_and_terminal_show_every_token_with_its_role(tmp_path):
    trajs = trajectories()
    save_jsonl(trajs, tmp_path / "t.jsonl")
    html = render_html(tmp_path / "t.jsonl", tmp_path / "t.html").read_text()
    assert html.count("class='t'") == sum(len(t) for t in trajs)
    assert "title='ACTION" in html and "title='OUTPUT" in html and "title='WARNING" in html and "exit" in html
    buf = io.StringIO()
    render_terminal(tmp_path / "t.jsonl", file=buf)
    assert "\033[32m" in buf.getvalue() and "\033[34m" in buf.getvalue() and "exit" in buf.getvalue()


def test_loss_weights_are_the_echo_gradient_at_ratio_one():
    trajs = trajectories()
    w = loss_weights(trajs, env_coef=0.05, advantages=[1.0, -1.0])
    L = max(len(t) for t in trajs)
    pad = lambda xs, v: xs + [v] * (L - len(xs))  # noqa: E731
    roles = torch.tensor([pad(t.roles[1:], 0) for t in trajs])
    logp = torch.tensor([pad(t.sampler_logprobs[1:], 0.0) for t in trajs]).nan_to_num(-1.0).requires_grad_()
    sampler = logp.detach().clone()
    loss, _ = echo_loss(logp, sampler, torch.tensor([1.0, -1.0]), roles, env_coef=0.05)
    loss.backward()
    for b, t in enumerate(trajs):
        assert torch.allclose(logp.grad[b, : len(t) - 1].abs(), torch.tensor(w[b][1:]), atol=1e-7)
