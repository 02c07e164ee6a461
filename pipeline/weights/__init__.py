"""Megatron ⇄ HF weights: name mapping (per architecture), TP gather/shard, the per-step
bucketed stream to the engines, and HF checkpoint files."""
