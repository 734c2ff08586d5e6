"""A job's server-sent events on the live stack (uvicorn, Celery worker, PostgreSQL, Redis, S3 server),
read with an SSE client (httpx-sse), and the change announcements behind them."""

from __future__ import annotations

import json
from contextlib import ExitStack

import httpx
import redis
from httpx_sse import ServerSentEvent, connect_sse
from service import SLOW_JOB, Service, wait_until

from core.jobs.notify import channel


def follow(service: Service, job_id: str, key: str = "alice", **headers: str) -> list[ServerSentEvent]:
    """Every event of one connection, until the server ends the stream."""
    with service.client(key) as client, connect_sse(client, "GET", f"/jobs/{job_id}/events", headers=headers) as sse:
        assert sse.response.status_code == 200, sse.response.read()
        assert sse.response.headers["content-type"].startswith("text/event-stream")
        # A keepalive comment reaches httpx-sse as an event without data: not an event of the job.
        return [event for event in sse.iter_sse() if event.data]


def test_events_follow_a_job_to_its_end_and_resume(service: Service) -> None:
    job = service.submit(num_inference_steps=20, cache={"strategy": "magcache"})
    events = follow(service, job["id"])

    names = [event.event for event in events]
    assert names[0] == "status" and names[-1] == "succeeded"
    assert set(names) <= {"status", "progress", "succeeded"}
    ids = [int(event.id) for event in events]
    assert ids == sorted(set(ids)), "event ids are the job's versions: each new, increasing"

    progress = [json.loads(event.data) for event in events if event.event == "progress"]
    assert progress, names
    assert set(progress[-1]) == {"step", "total", "percent", "computed_calls", "skipped_calls"}
    assert all(p["total"] == 20 for p in progress)
    steps = [p["step"] for p in progress]
    assert steps == sorted(steps)

    done = json.loads(events[-1].data)
    assert done["status"] == "succeeded"
    assert done["result"]["video_url"] == f"{service.url}/jobs/{job['id']}/video"
    assert done["progress"]["computed_calls"] + done["progress"]["skipped_calls"] == 40
    assert done == service.get(job["id"])

    # Resuming after an earlier event gives the state now (the last event) and ends; after the last one,
    # 204 tells the client not to reconnect.
    resumed = follow(service, job["id"], **{"Last-Event-ID": events[0].id})
    assert [(event.event, event.id) for event in resumed] == [("succeeded", events[-1].id)]
    with service.client() as client:
        after_last = client.get(f"/jobs/{job['id']}/events", headers={"Last-Event-ID": events[-1].id})
        assert after_last.status_code == 204
        bad = client.get(f"/jobs/{job['id']}/events", headers={"Last-Event-ID": "yesterday"})
        assert bad.status_code == 422
        assert bad.json()["error"]["fields"] == [
            {"field": "Last-Event-ID", "rule": "must be the id of an event of this stream"}
        ]
    with service.client("bob") as client:
        assert client.get(f"/jobs/{job['id']}/events").status_code == 404


def test_streams_per_key_are_bounded_and_a_cancel_ends_them(service: Service) -> None:
    cap = service.settings.event_streams_per_key
    # Long enough to still be unfinished while the streams open; canceled below.
    job = service.submit(key="bob", **SLOW_JOB)
    announcements = redis.Redis.from_url(service.env["SKIPSTEP_BROKER_URL"]).pubsub()
    announcements.subscribe(channel(job["id"]))

    with ExitStack() as streams:
        client = streams.enter_context(service.client("bob"))
        opened = []
        for _ in range(cap):
            sse = streams.enter_context(connect_sse(client, "GET", f"/jobs/{job['id']}/events"))
            assert sse.response.status_code == 200
            opened.append(sse)
        refused = client.get(f"/jobs/{job['id']}/events")
        assert refused.status_code == 429
        assert refused.headers["retry-after"]
        assert refused.json()["error"]["code"] == "rate_limited"
        # Another key's streams are counted apart.
        admin = streams.enter_context(service.client("admin"))
        with connect_sse(admin, "GET", f"/jobs/{job['id']}/events") as other:
            assert other.response.status_code == 200

        with service.client("bob") as canceler:
            assert canceler.post(f"/jobs/{job['id']}/cancel").status_code == 202
        for sse in opened:
            last = [event for event in sse.iter_sse() if event.data][-1]
            assert last.event == "canceled"
            assert json.loads(last.data)["status"] == "canceled"

    # The state machine announced its changes on the broker (at least the claim or the cancel).
    def announced() -> bool:
        message = announcements.get_message(ignore_subscribe_messages=True, timeout=0.5)
        return message is not None and message["data"] == b"changed"

    wait_until(announced, 10, 0, "an announcement of the job's change")
    announcements.close()

    # With the streams closed, the key's slots are free again.
    with service.client("bob") as client:
        response = client.get(f"/jobs/{job['id']}/events")
        assert response.status_code == 200
        assert "event: canceled" in response.text


def test_unknown_job_and_no_key(service: Service) -> None:
    missing = "00000000-0000-0000-0000-000000000000"
    with service.client() as client:
        assert client.get(f"/jobs/{missing}/events").status_code == 404
    assert httpx.get(f"{service.url}/jobs/{missing}/events").status_code == 401
