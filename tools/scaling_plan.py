"""Size a cluster job on paper: memory per GPU, rollout tokens, weight-sync bytes, sandboxes.

    python tools/scaling_plan.py configs/qwen3_14b_echo.yaml [--episode-tokens 12000]
        [--action-frac 0.3] [--mfu 0.35] [--decode-tps 3000] [--fs-gbps 2] [--net-gbps 50]

Reads the recipe (model shape, TP/PP, cluster section, rollout sizes) and prints the
arithmetic with every assumption named, so a user can redo it with their own figures.
Model-state bytes per parameter follow Megatron's mixed precision with the distributed
optimizer: bf16 weights (2) + fp32 gradient buffer (4) on every model-parallel shard, fp32
master weights + Adam m and v (12) sharded over data parallel. Activations assume TE's
fused attention (TE's, or the packed attention of ``learner.attention=packed``: no S²
matrix): ~34·s·h bytes per layer for a micro-batch of s tokens (Korthikanti et al., 2022),
divided by TP (no sequence parallelism). ``learner.recompute`` scales that by the ratio
measured by ``tools/bench/attention_memory.py`` (``tools/bench/results/
activation_memory_cpu.json``: extra peak bytes of one forward+backward with recompute ÷
without, same model and length), or, without that file, by theory (full: each layer keeps
its 2·s·h input, one layer's activations live at a time). A micro-batch must hold the
longest episode, so s ≥ rollout.max_context_tokens; the logits add s·V/TP fp32 values
for the fused cross-entropy's input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GIB = 1024**3


def params(hf: dict) -> int:
    h, L, V, i = hf["hidden_size"], hf["num_hidden_layers"], hf["vocab_size"], hf["intermediate_size"]
    d = hf.get("head_dim") or h // hf["num_attention_heads"]
    q, kv = hf["num_attention_heads"] * d, hf["num_key_value_heads"] * d
    layer = h * (q + 2 * kv) + q * h + 3 * h * i + 2 * h + 2 * d  # qkv, out, mlp, norms, q/k norms
    emb = V * h * (1 if hf.get("tie_word_embeddings") else 2)
    return L * layer + emb + h


MEASURED = Path(__file__).resolve().parent / "bench" / "results" / "activation_memory_cpu.json"


def activation_coef(recompute: str, layers: int) -> tuple[float, str]:
    """Bytes per token per layer per hidden unit under ``recompute``, and where it came from."""
    if recompute == "none":
        return 34.0, "34 (Korthikanti et al.)"
    if MEASURED.is_file():
        ratio = json.loads(MEASURED.read_text())["ratio_to_none"][recompute]
        return 34.0 * ratio, f"34 × {ratio:.2f} (measured, {MEASURED.name})"
    if recompute == "full":
        return 2.0 + 34.0 / layers, "2 + 34/L (theory)"
    return 34.0, "34 (theory: selective recompute saves no S² term without one)"


def plan(cfg, a) -> str:
    hf = json.loads(Path(cfg.model.hf_config).read_text())
    P = params(hf)
    c, r = cfg.cluster, cfg.rollout
    tp, pp = cfg.parallel.tensor, cfg.parallel.pipeline
    gpus = c.learner_nodes * max(c.gpus_per_node, 1)
    dp = gpus // (tp * pp)
    h, L, V = hf["hidden_size"], hf["num_hidden_layers"], hf["vocab_size"]
    s = cfg.learner.micro_batch_tokens

    coef, coef_src = activation_coef(cfg.learner.recompute, L)

    def memory(tp: int, pp: int) -> tuple[float, float, float]:
        dp = max(gpus // (tp * pp), 1)
        shard = P / (tp * pp)
        # 1F1B: the first stage holds up to PP micro-batches in flight, so L/PP layers × PP
        return shard * 6 + shard * 12 / dp, coef * s * h * L / tp, s * V / tp * 4

    model_state, act, logits = memory(tp, pp)
    episodes = r.tasks_per_step * r.group_size
    tokens = episodes * a.episode_tokens
    sampled = tokens * a.action_frac
    servers = c.rollout_nodes * (max(c.gpus_per_node, 1) // c.vllm_tensor_parallel)
    flops = 6 * P * tokens + 6 * L * h * a.episode_tokens * tokens  # dense + causal attention (≈ 6·L·h·s per token)
    peak = 989e12  # H100 SXM dense bf16
    sync_bytes = P * 2
    out = [
        f"# {cfg.run.name}: {P / 1e9:.2f}B parameters ({hf['num_hidden_layers']} layers, h={h}, V={V})",
        "",
        f"## learner: {c.learner_nodes} node(s) × {c.gpus_per_node} GPUs = {gpus}; TP {tp} × PP {pp} × DP {dp}",
        f"- model state per GPU: 6 B × P/(TP·PP) + 12 B × P/(TP·PP·DP) = {model_state / GIB:.1f} GiB",
        f"- activations per GPU (micro-batch of {s} tokens; under 1F1B the first stage keeps PP micro-batches of "
        f"{L // pp} layers): c·s·h·L/TP = {act / GIB:.1f} GiB, learner.recompute={cfg.learner.recompute}: "
        f"c = {coef_src}",
        f"- logits for the fused CE: s·V/TP·4 B = {logits / GIB:.1f} GiB (last stage)",
        f"- total ≈ {(model_state + act + logits) / GIB:.1f} GiB of an 80 GiB H100 "
        f"({'fits' if model_state + act + logits < 72 * GIB else 'does NOT fit: raise TP/PP or cut micro_batch_tokens'})",
        "",
        f"Other layouts of the {gpus} learner GPUs (GiB per GPU: model state + activations + logits):",
        "",
        "| TP | PP | DP | model state | activations | logits | total |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in (1, 2, 4, 8):
        for q in (1, 2, 4):
            if gpus % (t * q) or L % q or hf["num_key_value_heads"] % t and t % hf["num_key_value_heads"]:
                continue
            m, ac, lg = memory(t, q)
            out.append(f"| {t} | {q} | {gpus // (t * q)} | {m / GIB:.1f} | {ac / GIB:.1f} | {lg / GIB:.1f} | "
                       f"{(m + ac + lg) / GIB:.1f}{'' if m + ac + lg < 72 * GIB else ' (over)'} |")  # fmt: skip
    out += [
        "",
        f"## rollout per step: {r.tasks_per_step} tasks × {r.group_size} samples = {episodes} episodes",
        f"- tokens: {episodes} × {a.episode_tokens} (assumed mean episode) = {tokens / 1e6:.2f} M; sampled (ACTION, "
        f"{a.action_frac:.0%}) {sampled / 1e6:.2f} M",
        f"- {servers} vLLM server(s) (TP {c.vllm_tensor_parallel}) at an assumed {a.decode_tps:,} sampled tokens/s each: "
        f"{sampled / (servers * a.decode_tps):.0f} s of decoding (plus the slowest episode's tail)",
        f"- sandboxes: up to rollout.max_concurrent_episodes = {r.max_concurrent_episodes} containers at once, "
        f"each ≤ {cfg.sandbox.memory_mb} MB and {cfg.sandbox.pids} processes: ≤ "
        f"{r.max_concurrent_episodes * cfg.sandbox.memory_mb / 1024:.0f} GiB if every one hits its limit",
        "",
        "## learner step",
        f"- FLOPs: 6·P·tokens + attention ≈ {flops:.2e}; at MFU {a.mfu:.0%} of {gpus} × 989 TFLOP/s (bf16 dense): "
        f"{flops / (gpus * peak * a.mfu):.0f} s",
        "",
        f"## weight sync per step: {sync_bytes / GIB:.1f} GiB (bf16)",
        f"- shared filesystem (engine.weight_transport=filesystem): rank 0 writes once, each of {servers} servers reads it: "
        f"{sync_bytes / (a.fs_gbps * 1e9):.0f} s write + {servers * sync_bytes / (a.fs_gbps * 1e9 * max(c.rollout_nodes, 1)):.0f} s "
        f"reads at {a.fs_gbps:g} GB/s per node",
        f"- process group (engine.weight_transport=dist), gloo over TCP as built: rank 0 sends each of the "
        f"{servers} servers' workers its copy: {servers * sync_bytes / (a.net_gbps * 1e9):.1f} s at {a.net_gbps:g} GB/s "
        f"from the learner's node",
        f"- the same group on NCCL (ring/tree broadcast, the wire protocol unchanged; not built): "
        f"{sync_bytes / (a.net_gbps * 1e9):.1f} s at {a.net_gbps:g} GB/s",
    ]
    decode = sampled / (servers * a.decode_tps)
    learn = flops / (gpus * peak * a.mfu)
    write = sync_bytes / (a.fs_gbps * 1e9)
    read = servers * sync_bytes / (a.fs_gbps * 1e9 * max(c.rollout_nodes, 1))
    serial, overlapped = decode + learn + write + read, max(decode + read, learn + write)
    push = servers * sync_bytes / (a.net_gbps * 1e9)
    out += [
        "",
        "## step time, serial vs overlapped (rollout.max_staleness)",
        f"- serial (0), filesystem: decode + learn + write + read = {decode:.0f} + {learn:.0f} + {write:.0f} + "
        f"{read:.0f} = {serial:.0f} s",
        f"- overlapped (≥ 1), filesystem: the learner trains step t (then writes the weights) while the servers decode "
        f"batch t+1 (then read the weights): max({decode:.0f} + {read:.0f}, {learn:.0f} + {write:.0f}) = "
        f"{overlapped:.0f} s ({serial / overlapped:.2f}× the serial rate; "
        f"{'the learner' if learn + write < decode + read else 'the rollout side'} waits "
        f"{abs((decode + read) - (learn + write)):.0f} s a step)",
        f"- serial (0), dist: {decode:.0f} + {learn:.0f} + {push:.1f} = {decode + learn + push:.0f} s; overlapped "
        f"(≥ 1), dist (the push is on both sides' path): max({decode:.0f}, {learn:.0f}) + {push:.1f} = "
        f"{max(decode, learn) + push:.0f} s",
    ]
    return "\n".join(out)


def main(argv: list[str]) -> int:
    from pipeline.config import load_config

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--episode-tokens", type=int, default=12000, help="mean tokens of one episode (prompt to end)")
    p.add_argument("--action-frac", type=float, default=0.3, help="share of an episode's tokens the model samples")
    p.add_argument("--mfu", type=float, default=0.35, help="learner model-FLOPs utilization")
    p.add_argument("--decode-tps", type=int, default=3000, help="sampled tokens/s of one vLLM server at full batch")
    p.add_argument("--fs-gbps", type=float, default=2.0, help="shared filesystem GB/s per node")
    p.add_argument("--net-gbps", type=float, default=50.0, help="inter-node GB/s (400 Gb/s IB = 50)")
    a = p.parse_intermixed_args(argv)
    print(plan(load_config(a.recipe, a.overrides), a))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
