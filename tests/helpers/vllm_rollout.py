"""A real vLLM (CPU build) rollout: tiny Qwen3 + the project's tokenizer, bubblewrap
sandboxes, generated tasks; weights updated through the stream contract; the viewer
renders the result. The model vLLM loads is ``tools/convert``'s export (HF → Megatron
dist checkpoint → HF), so this also checks that an exported dir serves in vLLM. Run as a script (vLLM spawns workers, so it needs a __main__ guard).

    python tests/helpers/vllm_rollout.py OUT_DIR ROOTFS
"""

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(out: Path, rootfs: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config, Qwen3ForCausalLM

    from pipeline.engines.base import SamplingParams
    from pipeline.engines.vllm import VLLMEngine
    from pipeline.rollout.chat import ChatFormat, load_tokenizer
    from pipeline.rollout.loop import RolloutConfig, run_rollouts
    from pipeline.sandbox import SandboxConfig
    from pipeline.sandbox.bwrap import BwrapBackend
    from pipeline.tasks import load_task
    from pipeline.tasks.generator import generate
    from pipeline.trajectory import save_jsonl
    from pipeline.weights.stream import StreamChecksum, WeightBucket
    from pipeline.viewer import render_html

    root = Path(__file__).resolve().parents[2]
    tok = load_tokenizer(root / "configs/tokenizer/tiny")
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=1152, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, head_dim=64, tie_word_embeddings=True)
    Qwen3ForCausalLM(cfg).save_pretrained(out / "hf")
    for args in (["hf-to-mcore", "--hf", out / "hf", "--out", out / "mcore"],
                 ["mcore-to-hf", "--ckpt", out / "mcore", "--out", out / "model"]):  # fmt: skip
        subprocess.run([sys.executable, str(root / "tools/convert.py"), *map(str, args)], cwd=root, check=True)
    engine = VLLMEngine(out / "model", logprob_temperature=1.0, max_batch=16, max_model_len=1024)
    chat = ChatFormat(tok)
    tasks = [load_task(d) for d in generate(["files_mkdir", "text_count"], 1, out / "tasks", seed=0)]
    sb = SandboxConfig(rootfs=rootfs, timeout_s=5)
    rc = RolloutConfig(group_size=2, max_turns=2, max_tokens_per_turn=24, max_context_tokens=1024)
    trajs = run_rollouts(tasks, engine, BwrapBackend(sb, root=out / "sandboxes"), chat, rc, sb, seed=1, progress=False)
    save_jsonl(trajs, out / "vllm.jsonl")
    render_html(out / "vllm.jsonl", out / "vllm.html")

    # the sampler's log-probs against transformers' forward on the same weights (T = 1)
    hf = AutoModelForCausalLM.from_pretrained(str(out / "model"), dtype=torch.float32).eval()
    gaps = []
    with torch.no_grad():
        for t in trajs:
            ids = torch.tensor([t.token_ids])
            logp = torch.log_softmax(hf(ids).logits.float(), -1)[0, :-1].gather(-1, ids[0, 1:, None])[:, 0]
            for i in range(1, len(t)):
                if t.roles[i] == 1:
                    gaps.append(abs(float(logp[i - 1]) - t.sampler_logprobs[i]))

    # new weights through the stream contract: version reported only after the checksum
    new = {n: p.detach().clone() * 0.5 for n, p in hf.named_parameters()}
    digest = StreamChecksum()
    items = sorted(new.items())
    for n, p in items:
        digest.update(n, p)
    version = engine.update_weights([WeightBucket(1, 0, items[:5]), WeightBucket(1, 1, items[5:], last=True,
                                                                                  checksum=digest.hexdigest())])
    prompt = trajs[0].token_ids[:20]
    gen = engine.submit(prompt, SamplingParams(max_tokens=8)).result()
    engine.close()
    # the new weights are in use: the sampler's log-probs are those of the halved model
    with torch.no_grad():
        ids = torch.tensor([prompt + gen.token_ids])
        old = torch.log_softmax(hf(ids).logits.float(), -1)[0, len(prompt) - 1 : -1]
        old_gap = float((old.gather(-1, torch.tensor(gen.token_ids)[:, None])[:, 0] - torch.tensor(gen.logprobs)).abs().max())
        hf.load_state_dict(new, strict=False)
        ids = torch.tensor([prompt + gen.token_ids])
        ref = torch.log_softmax(hf(ids).logits.float(), -1)[0, len(prompt) - 1 : -1]
        ref = ref.gather(-1, torch.tensor(gen.token_ids)[:, None])[:, 0]
    new_gap = float((ref - torch.tensor(gen.logprobs)).abs().max())
    summary = {
        "n": len(trajs), "actions": sum(t.num_tokens(1) for t in trajs), "outputs": sum(t.num_tokens(2) for t in trajs),
        "warnings": sum(t.num_tokens(3) for t in trajs), "infra": sum(t.infra_error for t in trajs),
        "max_gap": max(gaps), "mean_gap": sum(gaps) / len(gaps), "version": version, "gen_version": gen.policy_version, "new_weights_gap": new_gap, "old_weights_gap": old_gap,
        "roles_ok": all(len(t.token_ids) == len(t.roles) for t in trajs),
    }
    (out / "summary.json").write_text(json.dumps(summary))
    print("SUMMARY", json.dumps(summary))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
