"""How a model is set up to run: the attention backend and its fallback, FP8 and its refusal without a capable
GPU, the prompt cache, VAE tiling and the text encoder's place; that a run leaves nothing behind; and the
analytic FLOP count the GPU bench divides by."""

import gc
import weakref

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from core.caching.registry import build_cache
from core.contract.shapes import Shape
from core.generation import generate, run
from core.models import LoadedModel, load_model
from core.models.flops import wan_call_flops, wan_tokens
from core.models.fp8 import fp8_unsupported
from core.settings import Settings
from worker.runner import engine_metrics


def tiny_request(small_request, **overrides: object):
    return small_request(width=32, height=32, num_frames=5, num_inference_steps=3, **overrides)


def with_settings(settings: Settings, **values: object) -> Settings:
    return settings.model_copy(update=values)


@pytest.fixture(scope="module")
def native(settings: Settings) -> LoadedModel:
    """A wan-tiny of its own, its attention set explicitly to native."""
    return load_model("wan-tiny", with_settings(settings, attention_backend="native"))


@pytest.mark.parametrize("backend", ["_native_math", "flex"])
def test_cpu_backends_run_and_match_native(native, settings, profiles, small_request, backend) -> None:
    model = load_model("wan-tiny", with_settings(settings, attention_backend=backend))
    assert (model.attention.requested, model.attention.used, model.attention.fallback_reason) == (
        backend,
        backend,
        None,
    )
    processors = {block.attn1.processor._attention_backend for block in model.transformer.blocks}
    assert {str(getattr(p, "value", p)) for p in processors} == {backend}
    request = tiny_request(small_request)
    expected = generate(native, request, profiles)
    result = generate(model, request, profiles)
    np.testing.assert_allclose(result.frames, expected.frames, atol=1e-4)
    assert engine_metrics(model, result)["attention"] == {
        "requested": backend,
        "used": backend,
        "fallback_reason": None,
    }


@pytest.mark.parametrize(
    ("backend", "reason"),
    [
        ("flash", "flash-attn"),  # the package is not installed
        ("_native_cudnn", "scaled_dot_product_attention"),  # cuDNN attention needs CUDA
        ("no-such-backend", "not registered"),
    ],
)
def test_a_backend_that_cannot_run_here_falls_back_to_native(
    native, settings, profiles, small_request, caplog, backend, reason
) -> None:
    with caplog.at_level("WARNING", logger="skipstep.models"):
        model = load_model("wan-tiny", with_settings(settings, attention_backend=backend))
    assert model.attention.requested == backend
    assert model.attention.used == "native"
    assert reason in model.attention.fallback_reason
    assert f"attention backend {backend!r} cannot run" in caplog.text
    request = tiny_request(small_request)
    result = generate(model, request, profiles)
    np.testing.assert_array_equal(result.frames, generate(native, request, profiles).frames)
    metrics = engine_metrics(model, result)["attention"]
    assert (metrics["requested"], metrics["used"]) == (backend, "native")
    assert reason in metrics["fallback_reason"]


def test_fp8_without_a_capable_gpu_keeps_the_dtype_and_says_why(settings, caplog) -> None:
    assert "CUDA" in fp8_unsupported(torch.device("cpu"))
    with caplog.at_level("WARNING", logger="skipstep.models"):
        model = load_model("wan-tiny", with_settings(settings, fp8_models="other, wan-tiny"))
    assert (model.precision.requested, model.precision.used) == ("fp8", "float32")
    assert "CUDA" in model.precision.fallback_reason
    assert "FP8 requested but not used" in caplog.text
    weights = [module.weight for module in model.transformer.blocks.modules() if isinstance(module, torch.nn.Linear)]
    assert all(type(weight) is torch.nn.Parameter and weight.dtype == torch.float32 for weight in weights)
    named_other = load_model("wan-tiny", with_settings(settings, fp8_models="other"))
    assert (named_other.precision.requested, named_other.precision.fallback_reason) == ("float32", None)


def test_repeated_prompts_reuse_their_encoding(settings, profiles, small_request) -> None:
    model = load_model("wan-tiny", with_settings(settings, prompt_cache_size=1))
    first = generate(model, tiny_request(small_request, prompt="a fox"), profiles)
    again = generate(model, tiny_request(small_request, prompt="a fox"), profiles)
    assert (first.prompt_cached, again.prompt_cached) == (False, True)
    np.testing.assert_array_equal(again.frames, first.frames)
    # One entry: another prompt evicts the first.
    assert not generate(model, tiny_request(small_request, prompt="an owl"), profiles).prompt_cached
    assert not generate(model, tiny_request(small_request, prompt="a fox"), profiles).prompt_cached
    uncached = load_model("wan-tiny", with_settings(settings, prompt_cache_size=0))
    generate(uncached, tiny_request(small_request, prompt="a fox"), profiles)
    assert not generate(uncached, tiny_request(small_request, prompt="a fox"), profiles).prompt_cached
    assert len(uncached.prompts) == 0


def test_vae_tiling_and_text_encoder_placement(settings) -> None:
    model = load_model("wan-tiny", with_settings(settings, vae_tiling=True, text_encoder_device="cpu"))
    assert model.pipeline.vae.use_tiling
    assert model.text_device == torch.device("cpu")
    assert not load_model("wan-tiny", settings).pipeline.vae.use_tiling


@pytest.mark.parametrize(
    ("strategy", "params"),
    [
        ("magcache", {"retention_ratio": 0.0}),
        ("fbcache", {"threshold": 0.5}),
        ("easycache", {"threshold": 0.5, "warmup_steps": 1}),
        ("chipmunk", {"voxel_shape": [1, 2, 2], "mlp_top_keys": 0.3}),
    ],
)
def test_a_finished_run_holds_no_cached_tensors(wan_tiny, profiles, small_request, strategy, params) -> None:
    """The cache and its tensors go when the caller drops it, without the cycle collector: a reference cycle
    through the transformer's hook kept them until the next collection, the memory creep between runs."""
    request = tiny_request(small_request, cache={"strategy": strategy, "params": params})
    shape = request.shape(wan_tiny.family.rules, wan_tiny.default_shape)
    cache = build_cache(request.cache, wan_tiny.transformer, shape, profiles)
    gc.collect()
    gc.disable()
    try:
        run(wan_tiny, request, shape, cache)
        held = [weakref.ref(cache)] + [weakref.ref(s.residual) for s in cache.states.values() if s.residual is not None]
        del cache
        assert [ref() for ref in held] == [None] * len(held)
    finally:
        gc.enable()


@pytest.mark.parametrize(("width", "height", "frames", "text_tokens"), [(32, 48, 9, 512), (64, 32, 5, 77)])
def test_flop_count_matches_torch_flop_counter(settings, width, height, frames, text_tokens) -> None:
    """The bench's analytic count of a Wan call against torch's own count of the same call (the math attention
    kernel, whose matrix products the counter sees; it has no formula for CPU's fused one)."""
    model = load_model("wan-tiny", with_settings(settings, attention_backend="_native_math"))
    transformer = model.transformer
    config = transformer.config
    shape = Shape(width=width, height=height, num_frames=frames, num_inference_steps=2)
    latents = torch.randn(1, config.in_channels, (frames - 1) // 4 + 1, height // 8, width // 8)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        transformer(
            hidden_states=latents,
            timestep=torch.tensor([500.0]),
            encoder_hidden_states=torch.randn(1, text_tokens, config.text_dim),
            return_dict=False,
        )
    flops = wan_call_flops(transformer, wan_tokens(config, shape), text_tokens)
    assert flops.per_call == counter.get_total_flops()
    assert flops.layers == config.num_layers and flops.per_block * flops.layers > flops.outside
