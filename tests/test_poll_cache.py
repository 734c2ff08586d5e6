"""A poller's conditional GET of an unchanged job is answered from the tag cache (core.jobs.tag_cache, api.conditional)
without the database, and stops being answered from it as soon as the job, or the queue in front of a queued job,
changes: on the real API (PostgreSQL, Redis), with the changes made through the state machine by another process,
as a worker makes them."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from service import POSTGRES_ADMIN, SMALL_JOB, Service, isolated_service

from core.settings import Settings

# What a worker process does first: take a job (the state machine), or say it serves a model.
CLAIM = """
import sys, uuid
from datetime import timedelta
from core.db import session_scope
from core.jobs import transitions
from core.settings import get_settings

with session_scope(get_settings().database) as session:
    job_id, model = uuid.UUID(sys.argv[1]), sys.argv[2]
    assert transitions.claim(session, job_id, "poll-cache-test", model, timedelta(minutes=5), 3) is not None
"""
REGISTER = """
import os, sys
from core.db import session_scope
from core.jobs import workers
from core.settings import get_settings

with session_scope(get_settings().database) as session:
    workers.register(session, "poll-cache-worker", "test", os.getpid(), sys.argv[1], workers.Device("cpu"))
"""


@pytest.fixture(scope="module")
def api(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with isolated_service(settings, tmp_path_factory.mktemp("poll-cache")) as service:
        yield service


@contextmanager
def database_refusing(api: Service) -> Iterator[None]:
    """The service's database refuses connections and the API's open ones are cut, until the block ends."""
    name = api.settings.database.rsplit("/", 1)[1]
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        try:
            yield
        finally:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


def queued_job(api: Service) -> str:
    return api.submit(prompt=f"cached fox {uuid.uuid4()}", **SMALL_JOB)["id"]


def test_an_unchanged_jobs_304_needs_no_database(api: Service) -> None:
    job_id = queued_job(api)
    with api.client() as client:
        first = client.get(f"/jobs/{job_id}")
        tag = first.headers["etag"]
        with database_refusing(api):
            cached = client.get(f"/jobs/{job_id}", headers={"If-None-Match": tag})
            plain = client.get(f"/jobs/{job_id}")
            other = client.get(f"/jobs/{job_id}", headers={"If-None-Match": '"not-the-tag"'})
    assert cached.status_code == 304, cached.text
    assert cached.headers["etag"] == tag and cached.headers["retry-after"] == first.headers["retry-after"]
    assert cached.headers["x-request-id"] and cached.headers["x-content-type-options"] == "nosniff"
    # What the cache cannot answer goes to the database, which is down.
    assert plain.status_code == other.status_code == 503


def test_a_claim_by_another_process_ends_the_cached_answers_of_the_job_and_of_the_one_behind_it(api: Service) -> None:
    first, second = queued_job(api), queued_job(api)
    with api.client() as client:
        tags = {job_id: client.get(f"/jobs/{job_id}").headers["etag"] for job_id in (first, second)}
        before = {job_id: client.get(f"/jobs/{job_id}", headers={"If-None-Match": tags[job_id]}) for job_id in tags}
        position = client.get(f"/jobs/{second}").json()["queue_position"]
        model = client.get(f"/jobs/{first}").json()["model"]
        subprocess.run([sys.executable, "-c", CLAIM, first, model], env=api.env, check=True, timeout=60)
        after = {job_id: client.get(f"/jobs/{job_id}", headers={"If-None-Match": tags[job_id]}) for job_id in tags}
    assert [answer.status_code for answer in before.values()] == [304, 304]
    assert after[first].status_code == 200 and after[first].json()["status"] == "running"
    assert after[second].status_code == 200 and after[second].json()["queue_position"] == position - 1


def test_another_keys_poll_of_a_cached_job_is_a_404(api: Service) -> None:
    job_id = queued_job(api)
    with api.client() as alice, api.client("bob") as bob:
        tag = alice.get(f"/jobs/{job_id}").headers["etag"]
        assert alice.get(f"/jobs/{job_id}", headers={"If-None-Match": tag}).status_code == 304
        answer = bob.get(f"/jobs/{job_id}", headers={"If-None-Match": tag})
    assert answer.status_code == 404


def test_a_worker_that_starts_ends_the_cached_answer_of_a_job_waiting_for_one(api: Service) -> None:
    job_id = queued_job(api)
    with api.client() as client:
        waiting = client.get(f"/jobs/{job_id}")
        tag = waiting.headers["etag"]
        before = client.get(f"/jobs/{job_id}", headers={"If-None-Match": tag})
        model = waiting.json()["model"]
        subprocess.run([sys.executable, "-c", REGISTER, model], env=api.env, check=True, timeout=60)
        after = client.get(f"/jobs/{job_id}", headers={"If-None-Match": tag})
    assert waiting.json()["status_detail"] == "waiting_for_worker" and before.status_code == 304
    assert after.status_code == 200 and after.json()["status_detail"] != "waiting_for_worker"
