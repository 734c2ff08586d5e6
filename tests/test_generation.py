import numpy as np
import pytest
import torch
from diffusers import HunyuanVideoPipeline, LTXPipeline, WanPipeline
from pydantic import ValidationError

from core.errors import InvalidRequest
from core.generation import generate


@pytest.mark.parametrize(
    ("family", "pipeline_class", "branches"),
    [
        ("wan", WanPipeline, ["cond", "uncond"]),
        ("ltx", LTXPipeline, ["cond_uncond"]),  # one batched call for both CFG branches
        ("hunyuan", HunyuanVideoPipeline, ["cond"]),  # embedded guidance, whatever its scale
    ],
)
def test_uncached_output_equals_the_diffusers_pipeline(
    request, profiles, small_request, family, pipeline_class, branches
) -> None:
    model = request.getfixturevalue(f"{family}_tiny")
    generation = small_request(family)
    ours = generate(model, generation, profiles)

    reference = pipeline_class(**model.pipeline.components)
    reference.set_progress_bar_config(disable=True)
    frames = reference(
        prompt=generation.prompt,
        width=generation.width,
        height=generation.height,
        num_frames=generation.num_frames,
        num_inference_steps=generation.num_inference_steps,
        guidance_scale=generation.guidance_scale,
        generator=torch.Generator("cpu").manual_seed(generation.seed),
        output_type="np",
        **model.family.call_kwargs(generation.fps),
    ).frames[0]

    assert ours.frames.shape == (generation.num_frames, 64, 64, 3)
    assert np.array_equal(ours.frames, frames)
    assert list(ours.cache.branches) == branches
    assert all(branch.computed == 10 for branch in ours.cache.branches.values())


def test_another_seed_gives_another_video(wan_tiny, profiles, small_request) -> None:
    first = generate(wan_tiny, small_request(num_inference_steps=4), profiles)
    second = generate(wan_tiny, small_request(num_inference_steps=4, seed=8), profiles)
    assert not np.array_equal(first.frames, second.frames)


def test_timings_cover_the_stages(wan_tiny, profiles, small_request) -> None:
    result = generate(wan_tiny, small_request(num_inference_steps=4), profiles)
    timings = result.timings
    assert timings.text_encoding > 0 and timings.denoising > 0 and timings.vae_decode > 0
    assert result.cache.denoise_seconds == timings.denoising
    # CPU seconds of the whole process while denoising: torch's threads may add up to more than the wall time.
    assert 0 < timings.denoising_cpu <= timings.denoising * torch.get_num_threads() + 0.5


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
    [(named, broken)] = error.value.problems
    assert named == field
    assert rule in broken


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
