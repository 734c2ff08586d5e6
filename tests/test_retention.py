"""A video's lifetime against real PostgreSQL and an S3-protocol server (moto): a job's objects expire after its
key's retention and are deleted by the webhooks worker's sweep; DELETE removes them at once; the sweep is
idempotent and safe to interrupt; a delete that arrives while the worker uploads leaves nothing behind."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

import openai
import pytest
from faults import Stack, TcpProxy
from service import SMALL_JOB, Service, fresh_database, job_row, s3_settings, wait_until
from sqlalchemy import update

from core.db import Job, JobStatus, session_scope, utcnow
from core.db.migrate import upgrade
from core.jobs import retention
from core.jobs.view import job_view
from core.keys import create_key
from core.settings import Settings
from core.storage import S3Storage, Storage, storage_from

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def objects(service: Service, job_id: str) -> list[str]:
    return storage_from(service.settings.model_copy(update=_s3(service))).keys(f"videos/{job_id}/")


def _s3(service: Service) -> dict[str, object]:
    return {
        "storage_backend": "s3",
        "s3_endpoint_url": service.env["SKIPSTEP_S3_ENDPOINT_URL"],
        "s3_bucket": service.env["SKIPSTEP_S3_BUCKET"],
        "s3_access_key_id": "test",
        "s3_secret_access_key": "test",
    }


def key_with_retention(service: Service, name: str, hours: float | None) -> str:
    with session_scope(service.settings.database) as session:
        key, service.keys[name] = create_key(session, name)
        key.retention_hours = hours
    return name


def test_an_expired_job_loses_its_objects_and_says_so(service: Service) -> None:
    carol = key_with_retention(service, f"carol-{uuid.uuid4().hex[:6]}", 4 / 3600)  # four seconds
    done = service.wait(service.submit(carol)["id"], key=carol)
    assert done["status"] == "succeeded", done["error"]
    assert objects(service, done["id"]) == [f"videos/{done['id']}/1.mp4"]
    assert done["result"]["expired"] is False and done["links"]["video"] is not None
    assert _seconds(done["expires_at"]) - _seconds(done["finished_at"]) == pytest.approx(4, abs=0.01)
    wait_until(lambda: not objects(service, done["id"]), 30, 0.2, "the sweep to delete the video")

    gone = service.get(done["id"], key=carol)
    assert gone["status"] == "succeeded" and gone["result"]["bytes"] == done["result"]["bytes"]
    assert gone["result"]["expired"] is True and gone["links"]["video"] is None
    with service.client(carol) as client:
        response = client.get(f"/jobs/{done['id']}/video")
        assert response.status_code == 410 and response.json()["error"]["code"] == "gone"
        video = client.get(f"/v1/videos/{done['id']}").json()
    assert video["expires_at"] == int(_seconds(gone["expires_at"]))

    # A key without its own retention gets the global one (7 days); 0 keeps for ever.
    kept = service.wait(service.submit()["id"])
    assert _seconds(kept["expires_at"]) - _seconds(kept["finished_at"]) == pytest.approx(7 * 24 * 3600, abs=0.01)
    forever = key_with_retention(service, f"dave-{uuid.uuid4().hex[:6]}", 0)
    assert service.wait(service.submit(forever)["id"], key=forever)["expires_at"] is None


def test_delete_removes_a_finished_video_at_once(service: Service) -> None:
    done = service.wait(service.submit()["id"])
    assert objects(service, done["id"])
    with service.client() as client:
        deleted = client.delete(f"/jobs/{done['id']}")
        assert deleted.status_code == 200, deleted.text
        assert deleted.json()["result"]["expired"] is True
        assert objects(service, done["id"]) == []
        assert client.get(f"/jobs/{done['id']}/video").status_code == 410
        assert client.delete(f"/jobs/{done['id']}").status_code == 200  # again: nothing left, same answer
        assert client.delete(f"/jobs/{uuid.uuid4()}").status_code == 404

    # Through OpenAI's API, with the openai package.
    with openai.OpenAI(base_url=f"{service.url}/v1", api_key=service.keys["alice"], max_retries=0) as oai:
        video = oai.videos.create(prompt="a fox", size="64x64", seconds="0.5", extra_body={"num_inference_steps": 4})
        video = oai.videos.poll(video.id, poll_interval_ms=200)
        assert video.status == "completed" and video.expires_at is not None
        assert oai.videos.delete(video.id).deleted is True
        assert objects(service, video.id) == []
        with pytest.raises(openai.APIStatusError) as error:
            oai.videos.download_content(video.id)
        assert error.value.status_code == 410


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


@pytest.fixture
def store(s3_endpoint: str, settings: Settings) -> Iterator[tuple[str, S3Storage]]:
    """A fresh database and bucket, swept only by the test itself."""
    with fresh_database() as database:
        upgrade(database)
        values = {key.removeprefix("SKIPSTEP_").lower(): value for key, value in s3_settings(s3_endpoint, "").items()}
        storage = S3Storage(settings.model_copy(update=values | {"s3_bucket": f"retention-{uuid.uuid4().hex[:8]}"}))
        storage.ensure()
        yield database, storage


def _stored_job(database: str, storage: Storage, tmp_path, status: JobStatus, **fields: object) -> uuid.UUID:
    with session_scope(database) as session:
        owner, _ = create_key(session, "owner")
        job = job_row(owner.id, "wan-tiny", status, **fields)
        session.add(job)
        session.flush()
        job_id = job.id
    video = tmp_path / f"{job_id}.mp4"
    video.write_bytes(b"\0\0\0\x18ftypmp42")
    storage.put(f"videos/{job_id}/1.mp4", video)
    return job_id


def test_the_sweep_finishes_after_a_crash_and_never_touches_a_running_job(
    store: tuple[str, S3Storage], tmp_path
) -> None:
    database, storage = store
    past = utcnow() - timedelta(seconds=1)
    finished = _stored_job(database, storage, tmp_path, JobStatus.succeeded, expires_at=past, video_key="k")
    running = _stored_job(database, storage, tmp_path, JobStatus.running, expires_at=past)  # deleted while it runs
    later = _stored_job(database, storage, tmp_path, JobStatus.succeeded, expires_at=utcnow() + timedelta(hours=1))

    # A sweeper that crashed between its two writes: the objects are gone, the row is not marked.
    storage.delete_prefix(f"videos/{finished}/")
    with session_scope(database) as session:
        job = session.get_one(Job, finished)
        assert job.expired_at is None and job_view(job, "http://x").result.expired  # clients already see it gone
        assert retention.due(session) == [finished]

    assert retention.sweep(database, storage) == 1  # the rerun finishes it
    assert retention.sweep(database, storage) == 0  # and again: nothing to do
    with session_scope(database) as session:
        assert session.get_one(Job, finished).expired_at is not None
        assert session.get_one(Job, running).expired_at is None
    assert storage.keys(f"videos/{running}/") == [f"videos/{running}/1.mp4"]
    assert storage.keys(f"videos/{later}/") == [f"videos/{later}/1.mp4"]

    # Once the running job ends, its objects go at the next sweep.
    with session_scope(database) as session:
        session.execute(update(Job).where(Job.id == running).values(status=JobStatus.canceled))
    assert retention.sweep(database, storage) == 1
    assert storage.keys(f"videos/{running}/") == []


def test_a_delete_during_upload_leaves_nothing_behind(stack: Callable[..., Stack], s3_endpoint: str) -> None:
    proxy = TcpProxy(int(s3_endpoint.rsplit(":", 1)[1]))
    try:
        s3 = s3_settings(f"http://127.0.0.1:{proxy.port}", f"upload-{uuid.uuid4().hex[:8]}")
        service = stack(**s3).service
        service.start_worker(SKIPSTEP_STORAGE_RETRY_SECONDS="1")
        proxy.cut()
        job_id = service.submit(**SMALL_JOB)["id"]
        first_try = f"job {job_id}: storing the video failed (try 1)"
        wait_until(lambda: first_try in service.worker_log.read_text(), 120, 0.05, "a failed first upload")
        with service.client() as client:
            assert client.delete(f"/jobs/{job_id}").status_code == 202  # running: canceled, deleted once it stops
        proxy.restore()
        assert service.wait(job_id, timeout=60)["status"] == "canceled"

        storage = storage_from(service.settings.model_copy(update=_s3(service)))
        retention.sweep(service.settings.database, storage)
        assert storage.keys(f"videos/{job_id}/") == []
        with session_scope(service.settings.database) as session:
            assert session.get_one(Job, uuid.UUID(job_id)).expired_at is not None
    finally:
        proxy.close()


def test_storage_per_key_on_the_dashboard(service: Service) -> None:
    name = key_with_retention(service, f"erin-{uuid.uuid4().hex[:6]}", 48)
    done = service.wait(service.submit(name)["id"], key=name)
    with service.client("admin") as client:
        overview = client.get("/admin/api/overview").json()
    [usage] = [row for row in overview["storage"] if row["name"] == name]
    assert usage == {"name": name, "videos": 1, "bytes": done["result"]["bytes"], "retention_hours": 48}
    assert f'data-key="{name}"' in overview["html"]["storage"]
