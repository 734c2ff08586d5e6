"""Polling GET /jobs/{id} as a fleet of clients does, on the real API (PostgreSQL, Redis, no GPU worker, so
jobs stay queued until canceled): ETag and 304, Retry-After while queued, the long-poll `wait`, and API keys
kept in-process for a bounded time with revocation honoured within it."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from service import SMALL_JOB, Service, fresh_database, launch
from sqlalchemy import update

from core.db import ApiKey, session_scope
from core.keys import create_key
from core.settings import Settings

KEY_CACHE_SECONDS = 1.0


@pytest.fixture(scope="module")
def api(settings: Settings, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with fresh_database() as database_url:
        service = launch(
            settings,
            database_url,
            redis_url,
            tmp_path_factory.mktemp("polling-logs"),
            SKIPSTEP_API_KEY_CACHE_SECONDS=str(KEY_CACHE_SECONDS),
        )
        try:
            yield service
        finally:
            service.stop()


def queued_job(api: Service) -> str:
    return api.submit(prompt=f"polled fox {uuid.uuid4()}", **SMALL_JOB)["id"]


def test_an_unchanged_job_answers_304_and_a_changed_one_its_new_state(api: Service) -> None:
    job_id = queued_job(api)
    with api.client() as client:
        first = client.get(f"/jobs/{job_id}")
        tag = first.headers["etag"]
        same = client.get(f"/jobs/{job_id}", headers={"If-None-Match": tag})
        weak = client.get(f"/jobs/{job_id}", headers={"If-None-Match": f'"other", W/{tag}'})
        assert client.post(f"/jobs/{job_id}/cancel").status_code == 202
        after = client.get(f"/jobs/{job_id}", headers={"If-None-Match": tag})
        settled = client.get(f"/jobs/{job_id}", headers={"If-None-Match": after.headers["etag"]})
    assert first.status_code == 200 and first.headers["cache-control"] == "no-cache"
    assert same.status_code == 304 and same.content == b"" and same.headers["etag"] == tag
    assert weak.status_code == 304
    assert after.status_code == 200 and after.json()["status"] == "canceled" and after.headers["etag"] != tag
    # A finished job's 304 comes from its version alone.
    assert settled.status_code == 304 and "retry-after" not in settled.headers


def test_another_keys_tag_reveals_nothing(api: Service) -> None:
    job_id = queued_job(api)
    with api.client() as alice, api.client("bob") as bob:
        tag = alice.get(f"/jobs/{job_id}").headers["etag"]
        answer = bob.get(f"/jobs/{job_id}", headers={"If-None-Match": tag})
    assert answer.status_code == 404


def test_a_queued_job_says_when_to_look_again(api: Service) -> None:
    job_id = queued_job(api)
    with api.client() as client:
        job = client.get(f"/jobs/{job_id}")
        unchanged = client.get(f"/jobs/{job_id}", headers={"If-None-Match": job.headers["etag"]})
    # No worker serves the model: nothing estimates the start, so the hint is a heartbeat.
    assert job.json()["status_detail"] == "waiting_for_worker"
    assert job.headers["retry-after"] == api.env["SKIPSTEP_HEARTBEAT_SECONDS"]
    assert unchanged.status_code == 304 and unchanged.headers["retry-after"] == job.headers["retry-after"]


def cancel_later(api: Service, job_id: str, seconds: float) -> threading.Thread:
    def cancel() -> None:
        time.sleep(seconds)
        with api.client() as client:
            client.post(f"/jobs/{job_id}/cancel")

    thread = threading.Thread(target=cancel)
    thread.start()
    return thread


def test_a_long_poll_answers_as_soon_as_the_job_changes(api: Service) -> None:
    job_id = queued_job(api)
    with api.client() as client:
        tag = client.get(f"/jobs/{job_id}").headers["etag"]
        canceler = cancel_later(api, job_id, 1.0)
        started = time.monotonic()
        answer = client.get(f"/jobs/{job_id}", params={"wait": 30}, headers={"If-None-Match": tag})
        waited = time.monotonic() - started
        canceler.join(timeout=30)
    assert answer.status_code == 200 and answer.json()["status"] == "canceled"
    # Announced on the broker at commit: well before the poll interval's re-read, far before the 30 s.
    assert 0.9 < waited < 5, waited


def test_a_long_poll_without_a_tag_waits_for_the_next_change(api: Service) -> None:
    job_id = queued_job(api)
    with api.client() as client:
        canceler = cancel_later(api, job_id, 1.0)
        answer = client.get(f"/jobs/{job_id}", params={"wait": 30})
        canceler.join(timeout=30)
    assert answer.status_code == 200 and answer.json()["status"] == "canceled"


def test_a_long_poll_with_nothing_to_report_ends_at_its_wait(api: Service) -> None:
    job_id = queued_job(api)
    with api.client() as client:
        tag = client.get(f"/jobs/{job_id}").headers["etag"]
        started = time.monotonic()
        unchanged = client.get(f"/jobs/{job_id}", params={"wait": 1.5}, headers={"If-None-Match": tag})
        waited = time.monotonic() - started
        untagged = client.get(f"/jobs/{job_id}", params={"wait": 0.5})
        finished = client.post(f"/jobs/{job_id}/cancel").json()
        at_once = time.monotonic()
        done = client.get(f"/jobs/{job_id}", params={"wait": 30})
    assert unchanged.status_code == 304 and 1.4 < waited < 10, waited
    assert untagged.status_code == 200 and untagged.json()["status"] == "queued"
    # A finished job never makes a poller wait.
    assert done.status_code == 200 and done.json()["status"] == finished["status"] == "canceled"
    assert time.monotonic() - at_once < 5


@pytest.mark.parametrize("wait", ["-1", "61", "soon"])
def test_a_wait_out_of_range_is_a_422_naming_it(api: Service, wait: str) -> None:
    job_id = queued_job(api)
    with api.client() as client:
        answer = client.get(f"/jobs/{job_id}", params={"wait": wait})
    assert answer.status_code == 422
    assert [field["field"] for field in answer.json()["error"]["fields"]] == ["wait"]


def test_a_revoked_key_is_refused_within_the_key_cache_time(api: Service) -> None:
    with session_scope(api.settings.database) as session:
        key, raw = create_key(session, f"revoked-{uuid.uuid4().hex[:6]}")
    headers = {"Authorization": f"Bearer {raw}"}
    with api.client(None) as client:
        assert client.get("/jobs", headers=headers).status_code == 200
        with session_scope(api.settings.database) as session:
            session.execute(update(ApiKey).where(ApiKey.id == key.id).values(revoked_at=ApiKey.created_at))
        revoked_at = time.monotonic()
        refused = None
        while time.monotonic() - revoked_at < 10 * KEY_CACHE_SECONDS:
            if client.get("/jobs", headers=headers).status_code == 401:
                refused = time.monotonic() - revoked_at
                break
            time.sleep(0.05)
    # Two API processes would each keep it at most the cache time; this one refuses it within it.
    assert refused is not None and refused <= KEY_CACHE_SECONDS + 0.5, refused
