"""Trajectory viewer: every token with its role, as HTML or coloured terminal text.

    echo-rl view runs/tiny/trajectories/step_000003.jsonl            # terminal (or python tools/view_trajectories.py)
    echo-rl view FILE.jsonl --html out.html [--limit 8]
    echo-rl view FILE.jsonl --loss-weights --env-coef 0.05            # per-token loss weight

Roles: PROMPT (grey), ACTION (green), OUTPUT (blue), WARNING (orange); token boundaries
are marked. ``--loss-weights`` shows, per token, its weight in the step's ECHO loss as
``packed_echo_loss`` computes it (``|∂L/∂logp|`` at ratio 1, from the step's global
counts): ACTION tokens carry |A| / N_action, target tokens λ / (c_s · N_env).
"""

from __future__ import annotations

import argparse
import html
import sys
from pathlib import Path

from pipeline.trajectory import Role, Trajectory, load_jsonl

COLORS = {Role.PROMPT: "#888888", Role.ACTION: "#1b7f1b", Role.OUTPUT: "#1f4fbf", Role.WARNING: "#c46a00"}
ANSI = {Role.PROMPT: "\033[90m", Role.ACTION: "\033[32m", Role.OUTPUT: "\033[34m", Role.WARNING: "\033[33m"}


def _tokenizer(path: str | None):
    from pipeline.rollout.chat import load_tokenizer

    return load_tokenizer(path or "configs/tokenizer/tiny")


def loss_weights(trajs: list[Trajectory], env_coef: float, advantages: list[float] | None = None,
                 env_targets=(Role.OUTPUT,)) -> list[list[float]]:  # fmt: skip
    """Per-token |∂L/∂logp| of the step's ECHO loss at ratio 1 (token_mean GRPO, observation
    normalizer), with the step's global counts; the first token of each trajectory is no target."""
    from pipeline.advantages import AdvantageConfig, group_advantages

    adv = advantages if advantages is not None else group_advantages(trajs, AdvantageConfig())
    n_action = sum(t.num_tokens(Role.ACTION) for t in trajs if not t.infra_error) or 1
    obs = [sum(1 for r in t.roles[1:] if r in (Role.OUTPUT, Role.WARNING)) for t in trajs]
    n_env = sum(1 for t, c in zip(trajs, obs) if c and not t.infra_error) or 1
    out = []
    for t, a, c in zip(trajs, adv, obs):
        w = [0.0]
        for r in t.roles[1:]:
            if t.infra_error:
                w.append(0.0)
            elif r == Role.ACTION:
                w.append(abs(a) / n_action)
            elif r in env_targets and c:
                w.append(env_coef / (c * n_env))
            else:
                w.append(0.0)
        out.append(w)
    return out


def _header(t: Trajectory) -> str:
    meta = {k: v for k, v in t.metadata.items() if k != "messages"}
    return (f"{t.task_id} group={t.group_id} reward={t.reward} version={t.policy_version} "
            f"infra_error={t.infra_error} {meta}")  # fmt: skip


def render_html(path: str | Path, out: str | Path, *, limit: int = 0, tokenizer: str | None = None,
                weights: list[list[float]] | None = None) -> Path:  # fmt: skip
    tok = _tokenizer(tokenizer)
    trajs = load_jsonl(path)[: limit or None]
    parts = ["<html><head><meta charset='utf-8'><style>body{font-family:monospace;font-size:13px}"
             "span.t{white-space:pre-wrap;border-right:1px solid #ddd}h3{font-size:13px}</style></head><body>",
             "<p>" + " ".join(f"<span style='color:{c}'>■ {r.name}</span>" for r, c in COLORS.items()) + "</p>"]  # fmt: skip
    for k, t in enumerate(trajs):
        parts.append(f"<h3>{html.escape(_header(t))}</h3><div>")
        for i, (tid, role) in enumerate(zip(t.token_ids, t.roles)):
            text = html.escape(tok.decode([tid]))
            title = f"{Role(role).name} id={tid}"
            if role == Role.ACTION:
                title += f" sampler_logp={t.sampler_logprobs[i]:.3f}"
            if weights is not None:
                title += f" loss_weight={weights[k][i]:.3g}"
            parts.append(f"<span class='t' style='color:{COLORS[Role(role)]}' title='{title}'>{text}</span>")
        parts.append("</div><hr>")
    parts.append("</body></html>")
    Path(out).write_text("".join(parts))
    return Path(out)


def render_terminal(path: str | Path, *, limit: int = 0, tokenizer: str | None = None,
                    weights: list[list[float]] | None = None, file=sys.stdout) -> None:  # fmt: skip
    tok = _tokenizer(tokenizer)
    for k, t in enumerate(load_jsonl(path)[: limit or None]):
        print(f"\033[1m{_header(t)}\033[0m", file=file)
        for i, (tid, role) in enumerate(zip(t.token_ids, t.roles)):
            text = tok.decode([tid])
            mark = f"\033[4m{text}\033[24m" if i % 2 else text  # alternate underline: token boundaries
            w = f"\033[35m[{weights[k][i]:.2g}]" if weights is not None and weights[k][i] else ""
            file.write(f"{ANSI[Role(role)]}{mark}{w}\033[0m")
        print("\n", file=file)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="echo-rl view", description=__doc__.splitlines()[0])
    ap.add_argument("jsonl")
    ap.add_argument("--html", help="write HTML here instead of printing")
    ap.add_argument("--limit", type=int, default=0, help="first N trajectories (0 = all)")
    ap.add_argument("--tokenizer", help="tokenizer dir (default: configs/tokenizer/tiny)")
    ap.add_argument("--loss-weights", action="store_true", help="show each token's weight in the step's loss")
    ap.add_argument("--env-coef", type=float, default=0.05, help="λ for --loss-weights")
    a = ap.parse_args(argv)
    weights = None
    if a.loss_weights:
        weights = loss_weights(load_jsonl(a.jsonl), a.env_coef)[: a.limit or None]
    if a.html:
        print(render_html(a.jsonl, a.html, limit=a.limit, tokenizer=a.tokenizer, weights=weights))
    else:
        render_terminal(a.jsonl, limit=a.limit, tokenizer=a.tokenizer, weights=weights)
    return 0


if __name__ == "__main__":
    sys.exit(main())
