"""Under torchrun: load an HF-converted checkpoint at TP×PP, write the learner's per-token
log-probs of fixed sequences, take one training step, save a checkpoint and the
per-step weight stream (rank 0). argv: HF_DIR MCORE_CKPT OUT_DIR TP PP"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    import torch
    import torch.distributed as dist

    from pipeline.config import load_config
    from pipeline.learner.learner import Learner
    from pipeline.learner.smoke import synthetic_trajectories
    from pipeline.trajectory import pack_micro_batches
    from pipeline.weights.stream import stream_hf_weights

    hf_dir, ckpt, out, tp, pp = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4], sys.argv[5]
    cfg = load_config(None, [f"model.hf_config={hf_dir}", f"model.load={ckpt}", f"parallel.tensor={tp}",
                             f"parallel.pipeline={pp}", "optim.lr=1e-3"])  # fmt: skip
    learner = Learner(cfg.model, cfg.parallel, cfg.optim, cfg.learner, cfg.loss)
    trajs = synthetic_trajectories(6, vocab_size=learner.hf["vocab_size"], seed=11)
    shards = pack_micro_batches(trajs, [0.5, -0.5] * 3, 256)
    mbs = shards[0]
    logprobs = learner.logprobs(mbs)
    learner.train_step(mbs)
    learner.save(str(out / "ckpt"))
    streamed, buckets = {}, []
    for bucket in stream_hf_weights(learner.model.module, learner.hf, version=learner.step, bucket_bytes=100_000):
        streamed.update(bucket.items)
        buckets.append((bucket.index, bucket.last, bucket.version, bucket.checksum))
    if dist.get_rank() == 0:
        torch.save({"mbs": mbs, "logprobs": logprobs, "streamed": streamed, "buckets": buckets},
                   out / "result.pt")  # fmt: skip


if __name__ == "__main__":
    main()
