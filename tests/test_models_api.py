"""GET /models on the live stack, and the per-model fleet figures behind it on a database with known jobs."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from service import Service, fresh_database, job_row

from core.contract.strategies import STRATEGIES
from core.db import ApiKey, Job, JobStatus, session_scope, utcnow
from core.db.migrate import upgrade
from core.jobs import fleet

# Done well within a second on an idle machine.
TINY_JOB = {"width": 32, "height": 32, "num_frames": 5, "num_inference_steps": 2}


def test_models_lists_what_a_job_for_each_model_accepts(service: Service) -> None:
    with service.client() as client:
        response = client.get("/models")
    assert response.status_code == 200, response.text
    (model,) = response.json()
    assert (model["name"], model["default"], model["family"]) == ("wan-tiny", True, "wan")
    assert model["default_shape"] == {"width": 128, "height": 128, "num_frames": 17, "num_inference_steps": 20}
    assert model["limits"]["width"] == {"min": 16, "max": 1920, "rule": "a multiple of 16"}
    assert model["limits"]["num_frames"]["rule"] == "4k+1"
    assert model["limits"]["num_inference_steps"] == {"min": 2, "max": 200, "rule": None}
    strategies = {strategy["name"]: strategy for strategy in model["strategies"]}
    assert list(strategies) == list(STRATEGIES)
    assert strategies["magcache"]["needs_calibration"] and strategies["magcache"]["available"]
    assert not strategies["easycache"]["needs_calibration"] and strategies["easycache"]["available"]
    # Its worker's profiles for its transformer: Wan2.1-1.3B's are for another architecture of the family.
    profiles = {profile["name"]: profile for profile in model["profiles"]}
    assert "wan-tiny-128x128x17-20steps" in profiles and "wan2.1-t2v-1.3b" not in profiles
    assert not any(name.startswith("ltx") for name in profiles)
    assert model["described_by"] is not None and model["described_at"] is not None
    assert profiles["wan-tiny-128x128x17-20steps"]["calibrated_on"] == "wan-tiny"
    assert "magcache" in profiles["wan-tiny-128x128x17-20steps"]["strategies"]


def test_models_reports_live_workers_and_recent_jobs(service: Service) -> None:
    job = service.submit(cache={"strategy": "easycache"}, **TINY_JOB)
    assert service.wait(job["id"])["status"] == "succeeded"
    with service.client() as client:
        (mine,) = client.get("/models").json()
    with service.client("admin") as client:
        (admin,) = client.get("/models").json()
        workers = [w for w in client.get("/workers").json() if w["alive"] and w["model"] == "wan-tiny"]
    assert mine["workers"]["live"] == len(workers) >= 1 and mine["workers"]["devices"] == []
    assert len(admin["workers"]["devices"]) == len(workers)
    assert all(device.endswith("/cpu") for device in admin["workers"]["devices"])
    assert mine["queue"]["waiting_for_worker"] is False
    assert mine["recent"]["succeeded_by_strategy"]["easycache"] >= 1
    assert mine["recent"]["succeeded"] == sum(mine["recent"]["succeeded_by_strategy"].values())


def test_models_needs_a_key(service: Service) -> None:
    with service.client(None) as client:
        response = client.get("/models")
    assert response.status_code == 401
    assert response.json()["error"]["code"]


@pytest.fixture
def database() -> Iterator[str]:
    with fresh_database() as url:
        upgrade(url)
        yield url


def test_fleet_figures_per_model(database: str) -> None:
    now = utcnow()
    minutes = timedelta(minutes=1)

    def job(model: str, status: JobStatus, **fields: object) -> Job:
        return job_row(owner.id, model, status, **fields)

    with session_scope(database) as session:
        owner = ApiKey(name="k", key_hash=uuid.uuid4().hex, webhook_secret="whsec_x")
        session.add(owner)
        session.flush()
        # wan: 20 jobs done in the last hour that waited 1..20 s; 2 queued (the older 10 minutes ago), 1 running.
        for wait in range(1, 21):
            created = now - 30 * minutes
            session.add(
                job(
                    "wan",
                    JobStatus.succeeded,
                    created_at=created,
                    started_at=created + timedelta(seconds=wait),
                    finished_at=now - minutes,
                    denoise_seconds=float(wait),
                    speedup=2.0 if wait % 2 else 1.0,
                    cache_strategy="magcache" if wait % 2 else "none",
                )
            )
        session.add(job("wan", JobStatus.queued, created_at=now - 10 * minutes))
        session.add(job("wan", JobStatus.queued, created_at=now - minutes))
        session.add(job("wan", JobStatus.running, created_at=now - 5 * minutes, started_at=now - 4 * minutes))
        # ltx: one failure in the window, one success before it (not counted).
        session.add(
            job(
                "ltx",
                JobStatus.failed,
                created_at=now - 9 * minutes,
                started_at=now - 8 * minutes,
                finished_at=now - 7 * minutes,
            )
        )
        session.add(
            job(
                "ltx",
                JobStatus.succeeded,
                created_at=now - 3 * 60 * minutes,
                started_at=now - 3 * 60 * minutes,
                finished_at=now - 2 * 60 * minutes,
                denoise_seconds=9.0,
            )
        )

    with session_scope(database) as session:
        figures = fleet.figures(session, ["wan", "ltx", "idle"])
    wan, ltx, idle = figures["wan"], figures["ltx"], figures["idle"]
    assert (wan.queued, wan.running, wan.succeeded, wan.failed) == (2, 1, 20, 0)
    assert abs(wan.oldest_queued_seconds(now) - 600) < 1
    assert wan.succeeded_by_strategy == {"magcache": 10, "none": 10}
    assert wan.jobs_per_hour == 20
    assert wan.wait_mean_seconds == pytest.approx(10.5)
    assert wan.wait_p95_seconds == pytest.approx(19)
    assert wan.denoise_mean_seconds == pytest.approx(10.5) and wan.speedup_mean == pytest.approx(1.5)
    assert (ltx.queued, ltx.succeeded, ltx.failed, ltx.denoise_mean_seconds) == (0, 0, 1, None)
    assert ltx.wait_mean_seconds == pytest.approx(60)
    assert idle == fleet.ModelFigures()
