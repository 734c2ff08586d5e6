"""Wan2.1 I2V, Wan2.2 TI2V-5B and Wan2.2 A14B (two experts) on their tiny presets: loaded through the production
loading code and equal, uncached, to diffusers' own pipelines at the same seed."""

import json

import numpy as np
import pytest
import torch
from diffusers import WanImageToVideoPipeline, WanPipeline
from PIL import Image

from core.contract import models
from core.contract.experts import expert_steps, flow_timesteps
from core.contract.shapes import WAN, WAN22
from core.errors import InvalidRequest
from core.generation import generate
from core.models import LoadedModel, load_model
from core.settings import Settings

STEPS = 4


@pytest.fixture(scope="session")
def image_models(settings: Settings) -> dict[str, LoadedModel]:
    names = ("wan-i2v-tiny", "wan2.2-ti2v-tiny", "wan2.2-t2v-a14b-tiny", "wan2.2-i2v-a14b-tiny")
    return {name: load_model(name, settings) for name in names}


@pytest.fixture
def first_frame() -> Image.Image:
    pixels = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.mark.parametrize(
    ("name", "pipeline_class", "with_image", "branches"),
    [
        ("wan-i2v-tiny", WanImageToVideoPipeline, True, ["cond", "uncond"]),
        ("wan2.2-ti2v-tiny", WanPipeline, False, ["cond", "uncond"]),
        ("wan2.2-ti2v-tiny", WanImageToVideoPipeline, True, ["cond", "uncond"]),
        (
            "wan2.2-t2v-a14b-tiny",
            WanPipeline,
            False,
            ["high_noise/cond", "high_noise/uncond", "low_noise/cond", "low_noise/uncond"],
        ),
        (
            "wan2.2-i2v-a14b-tiny",
            WanImageToVideoPipeline,
            True,
            ["high_noise/cond", "high_noise/uncond", "low_noise/cond", "low_noise/uncond"],
        ),
    ],
)
def test_uncached_output_equals_the_diffusers_pipeline(
    image_models, profiles, small_request, first_frame, name, pipeline_class, with_image, branches
) -> None:
    model = image_models[name]
    request = small_request(num_inference_steps=STEPS)
    image = first_frame if with_image else None
    ours = generate(model, request, profiles, image=image)

    source = model.pipeline_for(with_image)
    reference = pipeline_class(
        **source.components,
        boundary_ratio=source.config.boundary_ratio,
        expand_timesteps=source.config.expand_timesteps,
    )
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
        **({"image": image} if with_image else {}),
    ).frames[0]

    assert ours.frames.shape == (request.num_frames, 64, 64, 3)
    assert np.array_equal(ours.frames, frames)
    assert list(ours.cache.branches) == branches
    assert sum(branch.computed for branch in ours.cache.branches.values()) == STEPS * 2
    assert all(branch.skipped == 0 for branch in ours.cache.branches.values())


def test_two_experts_split_where_the_pipeline_switches(image_models, profiles, small_request) -> None:
    """The high-noise expert runs while t >= boundary_ratio x 1000, as diffusers switches; the API's pure-Python
    split (from the published pipeline description) agrees with the scheduler's timesteps."""
    model = image_models["wan2.2-t2v-a14b-tiny"]
    model.pipeline.scheduler.set_timesteps(STEPS)
    timesteps = model.pipeline.scheduler.timesteps.tolist()
    assert flow_timesteps(STEPS, 12.0) == timesteps
    high = sum(t >= 875 for t in timesteps)
    assert 0 < high < STEPS
    assert expert_steps(model.description, STEPS) == [("high_noise", range(high)), ("low_noise", range(high, STEPS))]
    result = generate(model, small_request(num_inference_steps=STEPS), profiles)
    assert result.cache.branches["high_noise/cond"].computed == high
    assert result.cache.branches["low_noise/cond"].computed == STEPS - high


def test_models_describe_their_images_experts_and_family(image_models, settings: Settings) -> None:
    expected = {
        "wan-i2v-tiny": ("required", None, WAN),
        "wan2.2-ti2v-tiny": ("optional", None, WAN22),
        "wan2.2-t2v-a14b-tiny": (None, 0.875, WAN),
        "wan2.2-i2v-a14b-tiny": ("required", 0.9, WAN),
    }
    for name, (image_input, boundary, family) in expected.items():
        loaded = image_models[name]
        published = loaded.info(profiles=_no_profiles(settings))
        on_disk = models.describe(name, settings.presets_dir)
        from_catalogue = models.ModelInfo(name, family, family.default_shape, pipeline=models.PRESETS[name].pipeline)
        for info in (published, on_disk, from_catalogue):
            assert (info.image_input, info.boundary_ratio, info.family) == (image_input, boundary, family), name
    index = json.loads((settings.presets_dir / "wan-i2v-tiny" / "model_index.json").read_text())
    assert index["image_encoder"] == ["transformers", "CLIPVisionModel"]


def _no_profiles(settings: Settings):
    from core.caching.profiles import ProfileStore

    return ProfileStore(settings.profiles_dir)


@pytest.mark.parametrize(
    ("name", "overrides", "field", "rule"),
    [
        ("wan2.2-ti2v-tiny", {"width": 48}, "width", "multiple of 32"),
        ("wan2.2-ti2v-tiny", {"num_frames": 10}, "num_frames", "4k+1"),
        ("wan-i2v-tiny", {"width": 72}, "width", "multiple of 16"),
    ],
)
def test_size_rules_of_the_new_families(
    image_models, profiles, small_request, first_frame, name, overrides, field, rule
):
    with pytest.raises(InvalidRequest) as error:
        generate(image_models[name], small_request(**overrides), profiles, image=first_frame)
    [(named, broken)] = error.value.problems
    assert (named, rule in broken) == (field, True)


def test_image_required_or_refused_by_the_model(image_models, profiles, small_request, first_frame) -> None:
    with pytest.raises(InvalidRequest) as error:
        generate(image_models["wan-i2v-tiny"], small_request(num_inference_steps=2), profiles)
    assert error.value.problems[0][0] == "image"
    with pytest.raises(InvalidRequest) as error:
        generate(
            image_models["wan2.2-t2v-a14b-tiny"], small_request(num_inference_steps=2), profiles, image=first_frame
        )
    assert error.value.problems[0][0] == "image"
