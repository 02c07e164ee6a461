"""Patch: tied input/output embeddings across pipeline stages set up on the CPU.

What: wraps ``LanguageModule.setup_embeddings_and_output_layer`` so that, while it runs
(and only then), ``Tensor.cuda()`` returns the tensor unchanged on a CPU-only machine.

Why: with pipeline parallelism and tied embeddings, the method moves the last stage's
copy of the word embeddings to the GPU with ``weight.data.cuda()`` before all-reducing it
with the first stage (so both copies start equal). Without CUDA that call raises; the
all-reduce itself works on gloo.

Versions: checked against megatron-core 0.16.1
(``megatron.core.models.common.language_module.language_module.LanguageModule``).

Math: unchanged — the same all-reduce of the same values, on the CPU. Applied only when
no GPU is present.
"""

from __future__ import annotations

import functools

import torch

from megatron_patches.common import require

_MODULE = "megatron.core.models.common.language_module.language_module"


def apply() -> None:
    cls = require(_MODULE, "LanguageModule").LanguageModule
    original = getattr(cls, "setup_embeddings_and_output_layer", None)
    if original is None:
        from megatron_patches.common import PatchTargetMissing

        raise PatchTargetMissing(f"{_MODULE}.LanguageModule.setup_embeddings_and_output_layer")
    if getattr(original, "_echo_cpu_patch", False):
        return

    @functools.wraps(original)
    def setup_embeddings_and_output_layer(self, *args, **kwargs):
        real_cuda = torch.Tensor.cuda
        torch.Tensor.cuda = lambda t, *a, **k: t
        try:
            return original(self, *args, **kwargs)
        finally:
            torch.Tensor.cuda = real_cuda

    setup_embeddings_and_output_layer._echo_cpu_patch = True
    cls.setup_embeddings_and_output_layer = setup_embeddings_and_output_layer
