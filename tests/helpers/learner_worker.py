"""One learner run under torchrun, for the parity/resume tests (gloo on CPU).

    torchrun --nproc-per-node N tests/helpers/learner_worker.py OUT_JSON [--init DIR]
        [--resume DIR] [--save DIR] [--dump DIR:FILE ...] [--steps K] [overrides...]

Trains K steps on deterministic synthetic trajectories (step s uses seed s), each DP
rank on its shard, and writes rank 0's per-step metrics to OUT_JSON. ``--dump`` writes
each checkpoint's full model state dict (loaded at this layout) instead of training.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--init", default="", help="start from these weights (model only)")
    ap.add_argument("--resume", default="", help="resume model+optimizer+step from here")
    ap.add_argument("--save", default="", help="save a checkpoint here at the end")
    ap.add_argument("--dump", action="append", default=[],
                    help="DIR:FILE (repeatable): load checkpoint DIR, write its model state dict to FILE")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--num-trajectories", type=int, default=12)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_intermixed_args()

    import torch
    import torch.distributed as dist

    from pipeline.advantages import group_advantages
    from pipeline.config import load_config
    from pipeline.learner.learner import Learner
    from pipeline.learner.smoke import synthetic_trajectories
    from pipeline.trajectory import pack_micro_batches

    cfg = load_config(None, ["model.hf_config=configs/models/qwen3-tiny.json", *args.overrides])
    learner = Learner(cfg.model, cfg.parallel, cfg.optim, cfg.learner, cfg.loss, seed=cfg.run.seed)
    if args.init:
        learner.load(args.init, model_only=True)
    if args.resume:
        learner.load(args.resume)
    if args.dump:
        for pair in args.dump:
            src, dst = pair.split(":")
            learner.load(src, model_only=True)
            state = {k: v.detach().clone() for k, v in learner.model.module.state_dict().items()
                     if not k.endswith("_extra_state")}  # fmt: skip
            torch.save(state, dst)
        Path(args.out).write_text("{}")
        return
    history = []
    for _ in range(args.steps):
        step = learner.step
        trajs = synthetic_trajectories(
            args.num_trajectories, vocab_size=learner.hf["vocab_size"], group_size=4, seed=step
        )
        adv = group_advantages(trajs, cfg.advantages)
        shards = pack_micro_batches(
            trajs, adv, cfg.learner.micro_batch_tokens, num_shards=learner.topo.dp
        )
        m = learner.train_step(shards[learner.topo.dp_rank], step)
        m["step"] = step
        m["num_microbatches"] = len(shards[learner.topo.dp_rank])
        history.append(m)
    if args.save:
        learner.save(args.save)
    if dist.get_rank() == 0:
        Path(args.out).write_text(json.dumps(history))


if __name__ == "__main__":
    main()
