import numpy as np
import pytest
import torch
from diffusers import LTXPipeline, WanPipeline
from pydantic import ValidationError

from core.errors import InvalidRequest
from core.generation import generate


def test_uncached_output_equals_wan_pipeline(wan_tiny, profiles, small_request) -> None:
    request = small_request()
    ours = generate(wan_tiny, request, profiles)

    reference = WanPipeline(**wan_tiny.pipeline.components)
    reference.set_progress_bar_config(disable=True)
    frames = reference(
        prompt=request.prompt,
        width=request.width,
        height=request.height,
        num_frames=request.num_frames,
        num_inference_steps=request.num_inference_steps,
        guidance_scale=request.guidance_scale,
        generator=torch.Generator("cpu").manual_seed(request.seed),
        output_type="np",
    ).frames[0]

    assert ours.frames.shape == (9, 64, 64, 3)
    assert np.array_equal(ours.frames, frames)
    assert ours.cache.branches["cond"].computed == ours.cache.branches["uncond"].computed == 10


def test_uncached_output_equals_ltx_pipeline(ltx_tiny, profiles, small_request) -> None:
    request = small_request("ltx")
    ours = generate(ltx_tiny, request, profiles)

    reference = LTXPipeline(**ltx_tiny.pipeline.components)
    reference.set_progress_bar_config(disable=True)
    frames = reference(
        prompt=request.prompt,
        width=request.width,
        height=request.height,
        num_frames=request.num_frames,
        num_inference_steps=request.num_inference_steps,
        guidance_scale=request.guidance_scale,
        frame_rate=request.fps,
        generator=torch.Generator("cpu").manual_seed(request.seed),
        output_type="np",
    ).frames[0]
    assert np.array_equal(ours.frames, frames)


def test_another_seed_gives_another_video(wan_tiny, profiles, small_request) -> None:
    first = generate(wan_tiny, small_request(num_inference_steps=4), profiles)
    second = generate(wan_tiny, small_request(num_inference_steps=4, seed=8), profiles)
    assert not np.array_equal(first.frames, second.frames)


def test_timings_cover_the_stages(wan_tiny, profiles, small_request) -> None:
    result = generate(wan_tiny, small_request(num_inference_steps=4), profiles)
    timings = result.timings
    assert timings.text_encoding > 0 and timings.denoising > 0 and timings.vae_decode > 0
    assert result.cache.denoise_seconds == timings.denoising


@pytest.mark.parametrize(
    ("overrides", "field", "rule"),
    [
        ({"width": 72}, "width", "multiple of 16"),
        ({"height": 40}, "height", "multiple of 16"),
        ({"num_frames": 10}, "num_frames", "4k+1"),
    ],
)
def test_shape_rules_of_the_model_family(wan_tiny, profiles, small_request, overrides, field, rule) -> None:
    with pytest.raises(InvalidRequest) as error:
        generate(wan_tiny, small_request(**overrides), profiles)
    assert error.value.field == field
    assert rule in error.value.rule


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"num_inference_steps": 1}, "num_inference_steps"),
        ({"width": -64}, "width"),
        ({"seed": -1}, "seed"),
        ({"fps": 0}, "fps"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_request_fields_are_validated(small_request, overrides, field) -> None:
    with pytest.raises(ValidationError) as error:
        small_request(**overrides)
    assert [e["loc"][0] for e in error.value.errors()] == [field]
