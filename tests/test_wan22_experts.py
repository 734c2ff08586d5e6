"""Caching across Wan2.2 A14B's two experts: one cache per transformer, planned over the steps it runs, with its
own state, schedule and profile tables; the schedule a MagCache job reports per expert is the one ``expected``
announced at submit."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from diffusers import WanTransformer3DModel
from service import Service, fresh_database, launch, s3_settings

from core.caching.profiles import ProfileStore, transformer_signature
from core.contract.experts import expert_steps
from core.contract.shapes import Shape
from core.generation import generate
from core.models import LoadedModel, load_model
from core.settings import Settings

EXPERT_BRANCHES = ["high_noise/cond", "high_noise/uncond", "low_noise/cond", "low_noise/uncond"]
TINY_PROFILE = "wan2.2-t2v-a14b-tiny-64x64x9-20steps"


@pytest.fixture(scope="module")
def a14b_tiny(settings: Settings) -> LoadedModel:
    return load_model("wan2.2-t2v-a14b-tiny", settings)


@pytest.mark.parametrize("strategy", ["magcache", "teacache", "fbcache", "easycache"])
def test_each_expert_keeps_its_own_cache(a14b_tiny, profiles, small_request, strategy) -> None:
    """Every strategy runs per expert: each expert's first step computes (nothing it cached exists yet, and the
    other expert's residual is never reused), and each expert's branches count only its own steps."""
    # EasyCache computes its first 10 steps by default: more than either expert runs here.
    params = {"threshold": 0.5} | ({"warmup_steps": 1} if strategy == "easycache" else {})
    steps = 10
    result = generate(
        a14b_tiny, small_request(num_inference_steps=steps, cache={"strategy": strategy, "params": params}), profiles
    )
    assert list(result.cache.branches) == EXPERT_BRANCHES
    [(_, high), (_, low)] = expert_steps(a14b_tiny.description, steps)
    for name, figures in result.cache.branches.items():
        span = high if name.startswith("high_noise") else low
        assert len(figures.schedule) == len(span) and figures.schedule[0] == "C", name
    assert sum(f.skipped for f in result.cache.branches.values()) > 0
    assert result.cache.steps_total == steps


def test_profile_tables_per_expert() -> None:
    store = ProfileStore(Path("/nonexistent"))
    profile = store.get("wan2.2-t2v-a14b")
    assert list(profile.magcache) == EXPERT_BRANCHES
    high, low = profile.for_expert("high_noise"), profile.for_expert("low_noise")
    assert list(high.magcache) == ["cond", "uncond"] and len(high.magcache["cond"]) == 26
    assert len(low.magcache["cond"]) == 14 and low.magcache["cond"][0] == 0.65523  # the published switch step
    assert profile.for_expert("") is profile
    assert "MagCache4Wan2.2/magcache_generate.py" in profile.source


@pytest.mark.parametrize(
    ("name", "config"),
    [
        ("wan2.2-t2v-a14b", {"num_layers": 40, "num_attention_heads": 40, "ffn_dim": 13824}),
        ("wan2.2-i2v-a14b", {"num_layers": 40, "num_attention_heads": 40, "ffn_dim": 13824, "in_channels": 36}),
        ("wan2.2-ti2v-5b", {"num_layers": 30, "num_attention_heads": 24, "ffn_dim": 14336, "in_channels": 48}),
    ],
)
def test_published_wan22_profiles_fit_the_real_models(name, config) -> None:
    out_channels = 48 if config.get("in_channels") == 48 else 16
    with torch.device("meta"):
        real = WanTransformer3DModel(
            attention_head_dim=128, text_dim=4096, out_channels=out_channels, **{"in_channels": 16, **config}
        )
    store = ProfileStore(Path("/nonexistent"))
    profile = store.get(name)
    assert profile.matches(transformer_signature(real))
    shape = Shape(profile.width, profile.height, profile.num_frames, profile.num_inference_steps)
    assert store.nearest(transformer_signature(real), shape, "magcache").name == name


@pytest.fixture(scope="module")
def a14b_service(settings, a14b_tiny, redis_url, s3_endpoint, tmp_path_factory) -> Iterator[Service]:
    logs = tmp_path_factory.mktemp("a14b-service-logs")
    with fresh_database() as database_url:
        service = launch(
            settings,
            database_url,
            redis_url,
            logs,
            SKIPSTEP_MODEL="wan2.2-t2v-a14b-tiny",
            **s3_settings(s3_endpoint, "skipstep-a14b"),
        )
        try:
            service.start_worker("wan2.2-t2v-a14b-tiny")
            yield service
        finally:
            service.stop()


def test_magcache_job_runs_the_per_expert_schedule_expected_at_submit(a14b_service: Service) -> None:
    submitted = a14b_service.submit(
        cache={"strategy": "magcache", "params": {"threshold": 0.3, "retention_ratio": 0.1}}, num_inference_steps=12
    )
    expected = submitted["expected"]
    assert expected["profile"] == TINY_PROFILE and list(expected["branches"]) == EXPERT_BRANCHES
    assert all(expected["branches"][branch]["skipped"] > 0 for branch in ("high_noise/cond", "low_noise/cond"))
    job = a14b_service.wait(submitted["id"], timeout=300)
    assert job["status"] == "succeeded", job["error"]
    metrics = job["metrics"]
    assert metrics["profile"] == TINY_PROFILE
    ran = {branch: figures["schedule"] for branch, figures in metrics["branches"].items()}
    assert ran == {branch: figures["schedule"] for branch, figures in expected["branches"].items()}
    assert job["result"]["bytes"] > 0
