"""The Megatron-Core learner: model, per-token log-probs, train step, checkpoints."""
