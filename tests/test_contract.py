"""The request contract at the front: a live API (uvicorn, PostgreSQL, Redis) serving ltx-tiny (the default)
and wan-tiny, with no GPU worker. Sizes are checked by the rules of the job's model family at submit, and a
MagCache job carries its expected schedule from the moment it is queued."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from service import Service, fresh_database, launch
from sqlalchemy import delete, func, select

from core.caching.profiles import ProfileStore
from core.contract.models import describe
from core.contract.request import JobRequest
from core.contract.shapes import HUNYUAN, LTX, WAN
from core.db import ApiKey, CatalogueEntry, Job, JobStatus, Worker, session_scope, utcnow
from core.jobs import catalogue, notify, workers
from core.jobs.mapping import new_job
from core.models import LoadedModel
from core.settings import Settings, get_settings

MAGCACHE = {"strategy": "magcache", "params": {"threshold": 0.24, "max_skip_steps": 3}}
WAN_JOB = {"model": "wan-tiny", "width": 64, "height": 64, "num_frames": 9, "num_inference_steps": 6}


@pytest.fixture(scope="module")
def front(settings: Settings, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    logs = tmp_path_factory.mktemp("front-logs")
    with fresh_database() as database_url:
        # A long heartbeat: the worker row a test registers stays live without a process behind it.
        values = {"SKIPSTEP_MODELS": "ltx-tiny,wan-tiny", "SKIPSTEP_HEARTBEAT_SECONDS": "30"}
        service = launch(settings, database_url, redis_url, logs, **values)
        try:
            yield service
        finally:
            service.stop()


def job_count(service: Service) -> int:
    with session_scope(service.settings.database) as session:
        return session.scalar(select(func.count()).select_from(Job)) or 0


@pytest.mark.parametrize(
    ("change", "field", "rule"),
    [
        ({"width": 144}, "width", "multiple of 32 for ltx models"),
        ({"height": 80}, "height", "multiple of 32 for ltx models"),
        ({"num_frames": 21}, "num_frames", "8k+1"),
        ({"model": "wan-tiny", "width": 72}, "width", "multiple of 16 for wan models"),
        ({"model": "wan-tiny", "num_frames": 10}, "num_frames", "4k+1"),
        ({"model": "sora"}, "model", "unknown model 'sora'; configured: ltx-tiny, wan-tiny"),
        (
            {
                "model": "wan-tiny",
                "cache": {"strategy": "dbcache", "params": {"Fn_compute_blocks": 6, "Bn_compute_blocks": 2}},
            },
            "cache.params",
            "(6 + 2) must leave at least one of the transformer's 8 blocks to cache",
        ),
    ],
)
def test_sizes_follow_the_family_of_the_jobs_model(
    front: Service, wan_tiny: object, change: dict, field: str, rule: str
) -> None:
    """Sizes and, where the model's transformer config is on disk (wan_tiny builds it), the strategy's block
    counts are checked at submit."""
    before = job_count(front)
    with front.client() as client:
        response = client.post("/jobs", json={"prompt": "a fox", "num_inference_steps": 6} | change)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    named = {f["field"]: f["rule"] for f in error["fields"]}
    assert rule in named[field], named
    assert job_count(front) == before


def test_each_model_gets_its_own_defaults_and_rules(front: Service) -> None:
    # 144 wide and 21 frames are Wan sizes, not LTX ones.
    wan = front.submit(model="wan-tiny", width=144, num_frames=21)
    assert (wan["model"], wan["input"]["width"], wan["input"]["num_frames"]) == ("wan-tiny", 144, 21)
    ltx = front.submit(width=None, height=None, num_frames=None, num_inference_steps=None)
    assert ltx["model"] == "ltx-tiny"  # the first configured model is the default
    assert {k: ltx["input"][k] for k in ("width", "height", "num_frames", "num_inference_steps")} == {
        "width": 128,
        "height": 128,
        "num_frames": 17,
        "num_inference_steps": 20,
    }
    assert ltx["input"]["model"] == "ltx-tiny" and isinstance(ltx["input"]["seed"], int)
    assert ltx["status_detail"] == "waiting_for_worker" and ltx["estimated_start_at"] is None


def test_magcache_job_carries_its_expected_schedule(front: Service) -> None:
    job = front.submit(cache=MAGCACHE, **WAN_JOB)
    expected = job["expected"]
    assert expected["strategy"] == "magcache" and expected["profile"] == "wan-tiny-128x128x17-20steps"
    assert expected["steps_total"] == 6 and set(expected["branches"]) == {"cond", "uncond"}
    for branch in expected["branches"].values():
        assert len(branch["schedule"]) == 6 and branch["schedule"][0] == "C"
        assert branch["computed"] == branch["schedule"].count("C")
        assert branch["skipped"] == branch["schedule"].count(".")
    computed = sum(b["computed"] for b in expected["branches"].values())
    assert computed < 12  # the tiny model's ratios are ~1: MagCache skips
    assert expected["ideal_speedup"] == pytest.approx(12 / computed, abs=1e-4)
    assert expected["estimated_denoise_seconds"] is None and expected["estimate_jobs"] == 0
    assert front.get(job["id"])["expected"] == expected

    uncached = front.submit(**WAN_JOB)
    easycache = front.submit(cache={"strategy": "easycache"}, **WAN_JOB)
    assert uncached["expected"] is None and easycache["expected"] is None  # not known ahead


def test_estimates_from_recent_jobs_and_live_workers(front: Service) -> None:
    """Succeeded jobs of the same model, shape and strategy give the denoise estimate; with a live worker of
    the model the queued job gets an estimated start."""
    with session_scope(front.settings.database) as session:
        owner = session.scalar(select(ApiKey).where(ApiKey.name == "bob"))
        request = JobRequest(prompt="earlier", cache=MAGCACHE, **WAN_JOB)
        info = describe("wan-tiny", front.settings.presets_dir)
        shape = request.shape(info.family, info.default_shape)
        started = utcnow() - timedelta(minutes=5)
        for seconds in (2.0, 3.0, 4.0):
            done = new_job(request, shape, "wan-tiny", owner.id, status=JobStatus.succeeded)
            done.started_at, done.finished_at = started, started + timedelta(seconds=10 * seconds)
            done.denoise_seconds, done.computed_calls = seconds, 4
            session.add(done)
        worker_id = f"{socket.gethostname()}:test-{os.getpid()}"
        workers.register(session, worker_id, socket.gethostname(), os.getpid(), "wan-tiny", workers.Device("cpu"))
    try:
        job = front.submit(cache=MAGCACHE, **WAN_JOB)
        computed = sum(b["computed"] for b in job["expected"]["branches"].values())
        # Median seconds per computed call of the three jobs: 3.0 / 4.
        assert job["expected"]["estimated_denoise_seconds"] == pytest.approx(0.75 * computed, abs=1e-3)
        assert job["expected"]["estimate_jobs"] == 3
        queued = front.get(job["id"])
        assert queued["status"] == "queued" and queued["status_detail"] is None
        start = datetime.fromisoformat(queued["estimated_start_at"])
        assert start >= datetime.fromisoformat(queued["created_at"])
        with front.client("admin") as admin:
            page = admin.get(f"/admin/jobs/{job['id']}")
        assert page.status_code == 200
        assert "Expected from profile wan-tiny-128x128x17-20steps" in page.text and 'id="estimated-start"' in page.text
        assert page.text.count('class="cell computed"') >= computed  # the planned strip, before the job runs
    finally:
        with session_scope(front.settings.database) as session:
            session.execute(delete(Worker).where(Worker.id == worker_id))


@contextmanager
def announcing_on(service: Service) -> Iterator[None]:
    """This process announces its commits (core.jobs.notify) on the service's broker, as a worker host does."""
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("SKIPSTEP_BROKER_URL", service.env["SKIPSTEP_BROKER_URL"])
            get_settings.cache_clear()
            yield
    finally:
        get_settings.cache_clear()


def test_a_job_follows_the_model_as_its_worker_described_it(front: Service, wan_tiny: LoadedModel) -> None:
    """With a worker's description in the catalogue, the API plans a MagCache job on the profile that worker holds
    (one this API host does not have) and GET /models shows it; a newer description replaces it at once, and the
    description goes once its row does."""
    held = ProfileStore(front.settings.profiles_dir).get("wan-tiny-128x128x17-20steps")
    # Ratios of 1: MagCache skips every step it may, so the schedule tells this profile from the built-in one.
    own = held.model_copy(
        update={"name": "calibrated-on-the-worker", "magcache": {b: [1.0] * 20 for b in held.magcache or {}}}
    )
    info = wan_tiny.info(ProfileStore(front.settings.profiles_dir))
    earlier = replace(info, profiles=(held.model_copy(update={"name": "calibrated-before"}).model_dump(mode="json"),))
    described = replace(info, profiles=(own.model_dump(mode="json"),))
    with announcing_on(front):
        try:
            with session_scope(front.settings.database) as session:
                catalogue.publish(session, "wan-tiny", earlier, "gpu-host:6")
            assert front.submit(cache=MAGCACHE, **WAN_JOB)["expected"]["profile"] == "calibrated-before"
            # The API process keeps the description it read; a new one replaces it at once.
            with session_scope(front.settings.database) as session:
                catalogue.publish(session, "wan-tiny", described, "gpu-host:7")
            job = front.submit(cache=MAGCACHE, **WAN_JOB)
            assert job["expected"]["profile"] == "calibrated-on-the-worker" and job["pending_checks"] == []
            assert job["expected"]["branches"]["cond"]["schedule"] == "C...C."  # K = 3: at most three in a row
            with front.client() as client:
                (wan,) = [m for m in client.get("/models").json() if m["name"] == "wan-tiny"]
            assert wan["described_by"] == "gpu-host:7"
            assert [p["name"] for p in wan["profiles"]] == ["calibrated-on-the-worker"]
        finally:
            with session_scope(front.settings.database) as session:
                session.execute(delete(CatalogueEntry).where(CatalogueEntry.name == "wan-tiny"))
                notify.catalogue_changed(session)  # as publish does: the API processes keep what they read


def test_family_is_read_from_files_without_loading(tmp_path: Path, wan_tiny: object, monkeypatch) -> None:
    """A local directory and a hub id in a Hugging Face cache are told apart and read from their JSON files."""
    assert describe(str(wan_tiny.path), tmp_path).family == WAN
    assert describe("ltx-tiny", tmp_path).family == LTX  # the preset catalogue, nothing built
    snapshot = tmp_path / "hub" / "models--acme--tiny-wan" / "snapshots" / "0123abcd"
    (snapshot / "transformer").mkdir(parents=True)
    for name in ("model_index.json", "transformer/config.json"):
        (snapshot / name).write_text((wan_tiny.path / name).read_text())
    (tmp_path / "hub" / "models--acme--tiny-wan" / "refs").mkdir()
    (tmp_path / "hub" / "models--acme--tiny-wan" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    info = describe("acme/tiny-wan", tmp_path)
    assert info.family == WAN and info.transformer["class"] == "WanTransformer3DModel"
    assert info.transformer["num_layers"] == 8


def test_block_counts_come_from_the_transformer_config() -> None:
    assert WAN.block_count({"num_layers": 30}) == 30
    assert HUNYUAN.block_count({"num_layers": 20, "num_single_layers": 40}) == 60  # both stacks are cached
    assert WAN.block_count({}) is None  # a preset not built yet: the worker checks when the job starts
