"""HunyuanVideo as a third family: the hunyuan-tiny preset, its pipeline, size rules, every strategy on it."""

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import HunyuanVideoPipeline, HunyuanVideoTransformer3DModel
from service import SMALL_JOB, Service, fresh_database, launch, s3_settings

from core.caching.profiles import ProfileStore, transformer_signature
from core.caching.registry import CACHES
from core.contract.models import PRESETS
from core.contract.request import GenerationRequest
from core.contract.shapes import HUNYUAN, Shape, family_for_transformer
from core.errors import InvalidRequest
from core.generation import generate
from core.models.presets import build_hunyuan_tiny
from core.settings import Settings

# Embedded guidance: one transformer call per step, so a branch of 10 steps is 10 calls.
STEPS = 10


def test_preset_is_built_saved_and_loaded_through_from_pretrained(hunyuan_tiny, settings: Settings) -> None:
    path = settings.presets_dir / "hunyuan-tiny"
    assert hunyuan_tiny.path == path
    index = json.loads((path / "model_index.json").read_text())
    assert index["_class_name"] == "HunyuanVideoPipeline"
    for component in ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler"):
        assert (path / component).is_dir(), component
    assert isinstance(hunyuan_tiny.pipeline, HunyuanVideoPipeline)
    assert isinstance(hunyuan_tiny.transformer, HunyuanVideoTransformer3DModel)
    assert type(hunyuan_tiny.pipeline.text_encoder).__name__ == "LlamaModel"
    assert type(hunyuan_tiny.pipeline.text_encoder_2).__name__ == "CLIPTextModel"
    assert type(hunyuan_tiny.pipeline.vae).__name__ == "AutoencoderKLHunyuanVideo"
    assert hunyuan_tiny.family.name == "hunyuan"
    assert hunyuan_tiny.default_shape == PRESETS["hunyuan-tiny"].default_shape

    built = build_hunyuan_tiny().transformer.state_dict()
    loaded = hunyuan_tiny.transformer.state_dict()
    assert built.keys() == loaded.keys()
    assert all(torch.equal(built[key], loaded[key]) for key in built)


@pytest.mark.parametrize(
    "strategy", ["teacache", "magcache", "easycache", "taocache", "fbcache", "dbcache", "taylorseer"]
)
def test_every_strategy_runs_and_skips(hunyuan_tiny, profiles, small_request, strategy) -> None:
    # Thresholds that skip on random weights (the published defaults are tuned for trained models).
    params = {
        "teacache": {"threshold": 0.5},
        "magcache": {"threshold": 0.5, "max_skip_steps": 3},
        "easycache": {"threshold": 0.3, "warmup_steps": 2},
        "taocache": {"threshold": 2.0},
        "fbcache": {"threshold": 0.5},
        "dbcache": {"Fn_compute_blocks": 1, "residual_diff_threshold": 0.5, "max_warmup_steps": 2},
        "taylorseer": {"warmup_steps": 2, "interval": 3},
    }[strategy]
    result = generate(hunyuan_tiny, small_request("hunyuan", cache={"strategy": strategy, "params": params}), profiles)
    report = result.cache
    assert list(report.branches) == ["cond"]
    figures = report.branches["cond"]
    assert figures.computed + figures.skipped == STEPS
    assert 0 < figures.skipped < STEPS, figures
    if CACHES[strategy].needs is not None:
        assert report.profile == "hunyuan-tiny-128x128x17-20steps"
    assert np.isfinite(result.frames).all()


def test_skipped_calls_skip_both_block_stacks(hunyuan_tiny, profiles, small_request) -> None:
    transformer = hunyuan_tiny.transformer
    calls = {"double": 0, "single": 0}
    # A block's own hooks run even when the cache skips its forward; its attention runs only when computed.
    handles = [
        block.attn.register_forward_pre_hook(lambda *_: calls.__setitem__("double", calls["double"] + 1))
        for block in transformer.transformer_blocks
    ] + [
        block.attn.register_forward_pre_hook(lambda *_: calls.__setitem__("single", calls["single"] + 1))
        for block in transformer.single_transformer_blocks
    ]
    try:
        request = small_request("hunyuan", cache={"strategy": "magcache", "params": {"threshold": 0.5}})
        report = generate(hunyuan_tiny, request, profiles).cache
    finally:
        for handle in handles:
            handle.remove()
    computed = report.branches["cond"].computed
    assert computed < STEPS
    assert calls == {
        "double": computed * len(transformer.transformer_blocks),
        "single": computed * len(transformer.single_transformer_blocks),
    }


@pytest.mark.parametrize(
    ("overrides", "field", "rule"),
    [
        ({"width": 72}, "width", "must be a multiple of 16 for hunyuan models"),
        ({"height": 40}, "height", "must be a multiple of 16 for hunyuan models"),
        ({"num_frames": 12}, "num_frames", "must be 4k+1 (e.g. 9, 17, 33) for hunyuan models"),
    ],
)
def test_size_rules_of_the_family(overrides, field, rule) -> None:
    request = GenerationRequest(prompt="a fox", **overrides)
    with pytest.raises(InvalidRequest) as caught:
        request.shape(HUNYUAN, HUNYUAN.default_shape)
    assert caught.value.problems == [(field, rule)]


def test_family_rules_and_defaults_are_known_without_loading() -> None:
    assert family_for_transformer("HunyuanVideoTransformer3DModel") is HUNYUAN
    assert HUNYUAN.default_shape == Shape(width=1280, height=720, num_frames=129, num_inference_steps=50)
    assert PRESETS["hunyuan-tiny"].family is HUNYUAN
    shape = GenerationRequest(prompt="a fox").shape(HUNYUAN, PRESETS["hunyuan-tiny"].default_shape)
    assert shape == Shape(width=128, height=128, num_frames=17, num_inference_steps=20)


def test_published_profiles_fit_the_real_model() -> None:
    with torch.device("meta"):
        real = HunyuanVideoTransformer3DModel()  # diffusers' defaults are HunyuanVideo's configuration
    signature = transformer_signature(real)
    store = ProfileStore(Path("/nonexistent"))
    for name, width, height in (("hunyuanvideo-t2v-720p", 1280, 720), ("hunyuanvideo-t2v-544p", 960, 544)):
        profile = store.get(name)
        assert profile.matches(signature)
        assert (profile.width, profile.height, profile.num_inference_steps) == (width, height, 50)
        assert list(profile.magcache) == ["cond"] and len(profile.magcache["cond"]) == 50
        assert "MagCache4HunyuanVideo/magcache_sample_video.py" in profile.source
    assert store.get("hunyuanvideo-t2v-720p").magcache["cond"][:3] == [1.0, 1.0754, 1.27807]
    nearest = store.nearest(signature, HUNYUAN.default_shape, "magcache")
    assert nearest.name == "hunyuanvideo-t2v-720p"


@pytest.fixture(scope="module")
def hunyuan_service(settings, hunyuan_tiny, redis_url, s3_endpoint, tmp_path_factory) -> Iterator[Service]:
    """The service serving hunyuan-tiny: its own database, the session's Redis and S3 server."""
    logs = tmp_path_factory.mktemp("hunyuan-service-logs")
    with fresh_database() as database_url:
        service = launch(
            settings,
            database_url,
            redis_url,
            logs,
            SKIPSTEP_MODEL="hunyuan-tiny",
            **s3_settings(s3_endpoint, "skipstep-hunyuan"),
        )
        try:
            service.start_worker("hunyuan-tiny")
            yield service
        finally:
            service.stop()


def test_magcache_job_through_the_api(hunyuan_service: Service) -> None:
    submitted = hunyuan_service.submit(cache={"strategy": "magcache", "params": {"threshold": 0.5}})
    job = hunyuan_service.wait(submitted["id"], timeout=300)
    assert job["status"] == "succeeded", job["error"]
    metrics = job["metrics"]
    assert metrics["strategy"] == "magcache"
    assert metrics["profile"] == "hunyuan-tiny-128x128x17-20steps"
    assert list(metrics["branches"]) == ["cond"]
    figures = metrics["branches"]["cond"]
    assert figures["computed"] + figures["skipped"] == SMALL_JOB["num_inference_steps"]
    assert figures["skipped"] > 0
    assert job["result"]["bytes"] > 0


def test_family_rules_at_submit(hunyuan_service: Service) -> None:
    with hunyuan_service.client() as client:
        response = client.post("/jobs", json={"prompt": "a fox", "num_frames": 12})
    assert response.status_code == 422
    assert [f["field"] for f in response.json()["error"]["fields"]] == ["num_frames"]
