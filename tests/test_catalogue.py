"""The model catalogue on real databases: what a worker publishes of the model it loaded is what a submit reads,
the latest worker wins and rows outlive workers; where no worker has described a model, configuration alone
describes what it can, and a model nothing describes asks for every size and leaves its rules to the worker."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from service import fresh_database

from core.caching.profiles import ProfileStore
from core.contract.request import JobRequest
from core.contract.shapes import LTX, SIZE_FIELDS, WAN
from core.contract.strategies import CacheSpec
from core.db import session_scope
from core.db.migrate import upgrade
from core.errors import InvalidRequest
from core.jobs import catalogue
from core.models import LoadedModel, load_model
from core.settings import Settings


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'catalogue.db'}"
        upgrade(url)
        yield url
        return
    with fresh_database() as url:
        upgrade(url)
        yield url


def test_a_workers_description_is_what_a_submit_reads(
    database: str, wan_tiny: LoadedModel, settings: Settings, tmp_path: Path
) -> None:
    """Published once loaded, read back whole; a later worker overwrites; the row stays when workers stop."""
    model_dir = tmp_path / "models" / "Wan2.1-T2V-1.3B-Diffusers"
    shutil.copytree(wan_tiny.path, model_dir)
    # A worker loads the directory where its host mounts it.
    published = load_model(str(model_dir), settings).info(ProfileStore(settings.profiles_dir))
    assert published.strategies is not None and "magcache" in published.strategies
    assert [p["name"] for p in published.profiles or ()] == ["wan-tiny-128x128x17-20steps"]
    # The API host configures the same model at a path it does not have.
    api = Settings(home=tmp_path / "api-home", models="wan=/models/Wan2.1-T2V-1.3B-Diffusers")
    with session_scope(database) as session:
        assert catalogue.describe(session, "wan", api).family is None
        catalogue.publish(session, "wan", published, "gpu-host:11")
    with session_scope(database) as session:
        read = catalogue.describe(session, "wan", api)
    assert (read.family, read.default_shape, read.transformer) == (WAN, published.default_shape, published.transformer)
    assert (read.block_count, read.strategies, read.profiles) == (8, published.strategies, published.profiles)
    assert read.described_by == "gpu-host:11" and read.described_at is not None

    with session_scope(database) as session:
        catalogue.publish(session, "wan", published, "gpu-host:12")
    with session_scope(database) as session:
        assert catalogue.describe(session, "wan", api).described_by == "gpu-host:12"
        # The name pointed at another model: the description of the old one is not used.
        moved = Settings(home=tmp_path / "api-home", models="wan=/models/Wan2.1-T2V-14B-Diffusers")
        assert catalogue.describe(session, "wan", moved).family is None


def test_configuration_describes_what_no_worker_has(database: str, wan_tiny: LoadedModel, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", models=f"ltx=ltx-tiny,wan={wan_tiny.path},far=/models/nowhere")
    with session_scope(database) as session:
        preset = catalogue.describe(session, "ltx", settings)
        files = catalogue.describe(session, "wan", settings)
        unknown = catalogue.describe(session, "far", settings)
    # A preset from the catalogue in code (not built here: no transformer config), a directory from its files.
    assert (preset.family, preset.transformer, preset.described_by) == (LTX, {}, None)
    assert files.family == WAN and files.block_count == 8 and files.profiles is None
    assert (unknown.family, unknown.default_shape) == (None, None)
    dbcache = CacheSpec(strategy="dbcache")
    assert preset.pending_checks(dbcache) == ["cache.params"] and files.pending_checks(dbcache) is None
    assert unknown.pending_checks(CacheSpec(strategy="magcache")) == ["width", "height", "num_frames"]
    assert unknown.pending_checks(dbcache) == ["width", "height", "num_frames", "cache.params"]


def test_a_model_nothing_describes_needs_every_size_and_no_rule_is_guessed() -> None:
    request = JobRequest(prompt="a fox", width=40, height=40, num_frames=6, num_inference_steps=2)
    shape = request.shape(None, None)  # 40 and 6 frames break Wan's rules: the worker will say so
    assert (shape.width, shape.num_frames) == (40, 6)
    with pytest.raises(InvalidRequest) as missing:
        JobRequest(prompt="a fox", width=64).shape(None, None)
    assert [field for field, _ in missing.value.problems] == [name for name in SIZE_FIELDS if name != "width"]
    assert all("not known yet" in rule for _, rule in missing.value.problems)
