"""Each Megatron patch's target still exists with the expected shape (fails loudly if not)."""

import importlib
import inspect

import pytest
import torch

from megatron_patches import PatchTargetMissing, apply_cpu_patches
from megatron_patches import cpu_devices, cpu_grad_clip
from megatron_patches.common import require


@pytest.mark.parametrize("module", cpu_devices.TARGETS)
def test_device_patch_targets_use_module_level_torch(module):
    mod = importlib.import_module(module)
    assert hasattr(mod, "torch")
    assert "cuda" in inspect.getsource(mod)  # still creates CUDA tensors: patch still needed


def test_rng_tracker_target():
    random = importlib.import_module("megatron.core.tensor_parallel.random")
    for attr in ("CudaRNGStatesTracker", "_CUDA_RNG_STATE_TRACKER", "_CUDA_RNG_STATE_TRACKER_INITIALIZED",
                 "_MODEL_PARALLEL_RNG_TRACKER_NAME", "get_cuda_rng_tracker"):  # fmt: skip
        assert hasattr(random, attr)
    assert list(inspect.signature(random.CudaRNGStatesTracker.add).parameters) == ["self", "name", "seed"]
    # what activation recomputation saves and restores (replaced on CPU; read from the
    # module's file, as another test may have applied the patches in this process)
    src = inspect.getsource(random)
    get_all = src[src.index("def _get_all_rng_states():") : src.index("def _set_all_rng_states(")]
    assert "_get_cuda_rng_state(" in get_all and "return cpu_rng_state, cuda_rng_state, cuda_rng_state_tracker" in get_all
    assert "def _set_all_rng_states(cpu_rng_state, cuda_rng_state, cuda_rng_state_tracker):" in src
    assert "_get_all_rng_states()" in inspect.getsource(random.CheckpointFunction.forward)


def test_grad_clip_target_signature():
    mod = importlib.import_module("megatron.core.optimizer.clip_grads")
    assert list(inspect.signature(mod.clip_grad_by_total_norm_fp32).parameters) == cpu_grad_clip.EXPECTED_PARAMS
    assert "torch.cuda.FloatTensor" in inspect.getsource(mod.clip_grad_by_total_norm_fp32)


def test_tied_embedding_target():
    mod = importlib.import_module("megatron.core.models.common.language_module.language_module")
    src = inspect.getsource(mod.LanguageModule.setup_embeddings_and_output_layer)
    assert ".cuda()" in src


def test_missing_target_fails_loudly():
    with pytest.raises(PatchTargetMissing):
        require("megatron.core.tensor_parallel.random", "no_such_symbol")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU patches apply only without a GPU")
def test_patched_behaviour():
    apply_cpu_patches()
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker
    from megatron.core.transformer import utils

    assert utils.get_default_causal_mask(4).device.type == "cpu"
    tracker = get_cuda_rng_tracker()
    tracker.reset()
    tracker.add("a", 123)
    before = torch.get_rng_state()
    with tracker.fork("a"):
        x = torch.rand(3)
    assert torch.equal(torch.get_rng_state(), before)  # caller's stream untouched
    assert torch.equal(x, torch.rand(3, generator=torch.Generator().manual_seed(123)))
    p = torch.nn.Parameter(torch.ones(4))
    p.grad = torch.full((4,), 2.0)
    cpu_grad_clip.clip_grad_by_total_norm_fp32([p], max_norm=1.0, total_norm=4.0)
    assert p.grad.tolist() == pytest.approx([2.0 / (4.0 + 1e-6)] * 4)
