"""In-process transport of the per-step weight stream: learner → engine, and → an HF dir.

Where it sits: learner.train_step → **sync_engine** → engine.update_weights (rank 0).

Every learner rank calls these together (the stream all-gathers TP shards and broadcasts
PP stages); only global rank 0 holds an engine and receives buckets. Ordering contract:
``pipeline/weights/stream.py`` — called after step k's optimizer step and before step
k+1's rollouts; the engine reports version ``learner.step`` only after the checksum of
the last bucket matched.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.weights.hf_io import atomic_dir, write_hf_dir
from pipeline.weights.stream import stream_hf_weights


def _stream(learner, dtype: torch.dtype | None = None):
    return stream_hf_weights(learner.model.module, learner.hf, version=learner.step, dtype=dtype)


def sync_engine(learner, engine) -> int:
    """Stream the learner's current weights into ``engine`` (None on ranks other than 0).

    An engine whose fast transport failed for this version (``StreamAgain``: the
    ``vllm_server`` engine's process group) takes it again, over the transport it names;
    rank 0 tells every rank whether to stream again (the stream is a collective of all ranks)."""
    from pipeline.engines.base import StreamAgain
    from pipeline.learner.parallel import handover

    version, transport = learner.step, None
    for attempt in range(3):  # the fast transport, once more over it (rebuilt), then the fallback
        stream = _stream(learner)
        again = None
        if engine is None:
            for _ in stream:  # take part in the collectives
                pass
        else:
            try:
                version = engine.update_weights(stream, **({"transport": transport} if transport else {}))
            except StreamAgain as e:
                if attempt == 2:
                    raise
                again = e.transport
        transport = handover(again)
        if transport is None:
            break
    if version != learner.step:
        raise RuntimeError(f"engine reports weights version {version}, the learner is at {learner.step}")
    return version


def stage_engine(learner, engine):
    """Stream the learner's weights and have ``engine`` stage them (served later, between
    rollout batches: ``engine.apply_staged``); every learner rank calls it, None off rank 0."""
    stream = _stream(learner)
    if engine is None:
        for _ in stream:
            pass
        return None
    return engine.stage_weights(stream)


def export_hf_dir(learner, out: str | Path, *, tokenizer_dir: str | Path | None = None,
                  dtype: torch.dtype | None = None) -> Path | None:  # fmt: skip
    """Write the learner's current weights as an HF checkpoint dir (rank 0 writes)."""
    import torch.distributed as dist

    stream = _stream(learner, dtype)
    if dist.get_rank() != 0:
        for _ in stream:
            pass
        return None
    hf = dict(learner.hf)
    if dtype is not None:
        hf["torch_dtype"] = str(dtype).removeprefix("torch.")
    with atomic_dir(out) as tmp:
        write_hf_dir(tmp, (item for b in stream for item in b.items), hf, tokenizer_dir=tokenizer_dir)
    return Path(out)
