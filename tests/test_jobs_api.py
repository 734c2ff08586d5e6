"""The job service end to end: real uvicorn, Celery worker, PostgreSQL, Redis and S3 server."""

from __future__ import annotations

import io
import uuid
from datetime import timedelta
from typing import Any

import av
import httpx
import pytest
from celery import Celery
from service import SMALL_JOB, Service, wait_until
from sqlalchemy import func, select

from core.db import ApiKey, Job, JobRun, JobStatus, session_scope, utcnow
from worker.app import RUN_JOB, generate_queue


def job_count(service: Service) -> int:
    with session_scope(service.settings.database) as session:
        return session.scalar(select(func.count()).select_from(Job)) or 0


def test_submit_poll_download(service: Service) -> None:
    submitted = service.submit(cache={"strategy": "magcache", "params": {"threshold": 0.24, "max_skip_steps": 3}})
    assert submitted["status"] == "queued"
    assert submitted["links"]["self"] == f"{service.url}/jobs/{submitted['id']}"
    assert isinstance(submitted["input"]["seed"], int)  # random, and recorded

    job = service.wait(submitted["id"])
    assert job["status"] == "succeeded", job["error"]
    metrics = job["metrics"]
    assert metrics["strategy"] == "magcache"
    assert set(metrics["branches"]) == {"cond", "uncond"}
    schedules = [branch["schedule"] for branch in metrics["branches"].values()]
    assert all(len(schedule) == 6 and set(schedule) <= {"C", "."} for schedule in schedules)
    # The progress counts are the schedules' marks: C computed, . reused; two CFG branches a step.
    assert job["progress"] == {
        "step": 6,
        "total": 6,
        "percent": 100.0,
        "computed_calls": sum(schedule.count("C") for schedule in schedules),
        "skipped_calls": sum(schedule.count(".") for schedule in schedules),
    }
    assert [b["computed"] for b in metrics["branches"].values()] == [s.count("C") for s in schedules]
    # The schedule the API predicted at submit, without the engine, is the one the worker ran.
    assert submitted["expected"]["branches"] == {
        name: {key: branch[key] for key in ("computed", "skipped", "schedule")}
        for name, branch in metrics["branches"].items()
    }
    assert submitted["expected"]["ideal_speedup"] == pytest.approx(metrics["ideal_speedup"], abs=1e-3)
    assert metrics["denoise_seconds"] > 0 and metrics["speedup"] > 0
    assert len(metrics["step_seconds"]) == 6
    assert metrics["timings"]["submit_to_denoising"] > 0  # how long it takes: bench/service_latency.py

    with service.client() as client:
        redirect = client.get(f"/jobs/{job['id']}/video")
    assert redirect.status_code == 307
    presigned = redirect.headers["location"]
    assert presigned.startswith(service.env["SKIPSTEP_S3_ENDPOINT_URL"]) and "X-Amz-Signature" in presigned
    video = httpx.get(presigned)
    assert video.status_code == 200
    assert len(video.content) == job["result"]["bytes"]
    with av.open(io.BytesIO(video.content)) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == SMALL_JOB["num_frames"]
    assert (frames[0].width, frames[0].height) == (64, 64)


def test_idempotency_key_replays_and_conflicts(service: Service) -> None:
    key = f"order-{uuid.uuid4()}"
    body = {"prompt": "idempotent fox", **SMALL_JOB, "seed": 3}
    with service.client() as client:
        first = client.post("/jobs", json=body, headers={"Idempotency-Key": key})
        again = client.post("/jobs", json=body, headers={"Idempotency-Key": key})
        other = client.post("/jobs", json=body | {"seed": 4}, headers={"Idempotency-Key": key})
        bobs = service.client("bob").post("/jobs", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == 202 and again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "conflict"
    # Keys are scoped to their API key: bob's identical request is a job of his own.
    assert bobs.status_code == 202 and bobs.json()["id"] != first.json()["id"]
    service.wait(first.json()["id"])


BAD_BODIES = [
    ({"prompt": ""}, "prompt", "at least 1 character"),
    ({"prompt": "   "}, "prompt", "must not be blank"),
    ({"prompt": "x" * 2001}, "prompt", "at most 2000 characters"),
    ({"width": 72}, "width", "multiple of 16"),
    ({"height": 0}, "height", "greater than or equal to 16"),
    ({"width": 4096}, "width", "less than or equal to 1920"),
    ({"num_frames": 10}, "num_frames", "4k+1"),
    ({"num_frames": 1001}, "num_frames", "less than or equal to 257"),
    ({"num_inference_steps": 1}, "num_inference_steps", "greater than or equal to 2"),
    ({"num_inference_steps": 500}, "num_inference_steps", "less than or equal to 200"),
    ({"guidance_scale": -1}, "guidance_scale", "greater than or equal to 0"),
    ({"seed": -5}, "seed", "greater than or equal to 0"),
    ({"fps": 0}, "fps", "greater than or equal to 1"),
    ({"cache": {"strategy": "fastcache"}}, "cache.strategy", "unknown strategy 'fastcache'"),
    ({"cache": {"strategy": "magcache", "params": {"threshold": -1}}}, "cache", "params.threshold"),
    ({"cache": {"strategy": "teacache", "params": {"bogus": 1}}}, "cache", "params.bogus"),
    ({"cache": {"strategy": "none", "colour": "red"}}, "cache.colour", "Extra inputs are not permitted"),
    ({"colour": "red"}, "colour", "Extra inputs are not permitted"),
    ({"webhook_url": "ftp://example.com/hook"}, "webhook_url", "http"),
    ({"webhook_events": ["job.succeeded"]}, "webhook_events", "needs webhook_url"),
    ({"webhook_url": "https://no-such-host.invalid/hook"}, "webhook_url", "could not resolve no-such-host.invalid"),
    ({"webhook_url": "https://example.com/h", "webhook_events": ["job.exploded"]}, "webhook_events.0", "job.succeeded"),
]


@pytest.mark.parametrize(("change", "field", "rule"), BAD_BODIES, ids=[f"{b[1]}-{i}" for i, b in enumerate(BAD_BODIES)])
def test_every_rule_is_named_and_nothing_is_written(service: Service, change: dict, field: str, rule: str) -> None:
    before = job_count(service)
    with service.client() as client:
        response = client.post("/jobs", json={"prompt": "a fox", **SMALL_JOB} | change)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    named = {f["field"]: f["rule"] for f in error["fields"]}
    assert field in named, named
    assert rule in named[field]
    assert job_count(service) == before


@pytest.mark.parametrize(
    "bad",
    [
        {"prompt": "", "width": 4000, "seed": -5, "fps": 0, "colour": "red"},
        # The model family's size rules, checked once the body is valid, are named together too.
        {"width": 72, "height": 90, "num_frames": 10},
    ],
)
def test_a_422_names_every_bad_field_at_once(service: Service, bad: dict[str, Any]) -> None:
    before = job_count(service)
    with service.client() as client:
        response = client.post("/jobs", json={**SMALL_JOB, "prompt": "a red fox", **bad})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert {f["field"] for f in error["fields"]} == set(bad)
    assert all(f"{f['field']}: {f['rule']}" in error["message"] for f in error["fields"])
    assert job_count(service) == before


def test_a_message_redelivered_for_a_finished_job_changes_nothing(service: Service) -> None:
    """The broker may deliver a job's message again (a redelivery after a lost ack, a duplicate dispatch):
    the worker finds the job finished, does not run it, and the job stays as it was."""
    finished = service.wait(service.submit()["id"])
    assert finished["status"] == "succeeded"
    broker = Celery(broker=service.env["SKIPSTEP_BROKER_URL"])
    broker.send_task(RUN_JOB, args=[finished["id"]], queue=generate_queue("wan-tiny"))
    not_claimable = f"job {finished['id']}: not claimable"
    wait_until(lambda: not_claimable in service.worker_log.read_text(), 60, 0.1, "the worker to refuse the message")
    assert service.get(finished["id"]) == finished
    with session_scope(service.settings.database) as session:
        runs = select(func.count()).select_from(JobRun).where(JobRun.job_id == uuid.UUID(finished["id"]))
        assert session.scalar(runs) == 1


def test_auth_and_isolation(service: Service) -> None:
    job = service.submit("alice")
    with service.client(None) as anonymous:
        assert anonymous.get(f"/jobs/{job['id']}").status_code == 401
        wrong = anonymous.get("/jobs", headers={"Authorization": "Bearer sk_not-a-key"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "unauthorized"
    with service.client("bob") as bob:
        for method, path in (("GET", ""), ("POST", "/cancel"), ("GET", "/video")):
            response = bob.request(method, f"/jobs/{job['id']}{path}")
            assert response.status_code == 404, (method, path, response.text)
        assert job["id"] not in {j["id"] for j in bob.get("/jobs", params={"limit": 100}).json()["jobs"]}
    with service.client("admin") as admin:
        assert admin.get(f"/jobs/{job['id']}").status_code == 200
    service.wait(job["id"])


def test_list_filters_and_cursor_pagination(service: Service) -> None:
    ids = [service.submit("bob", cache={"strategy": "easycache"}, seed=i)["id"] for i in range(3)]
    for job_id in ids:
        service.wait(job_id, key="bob")
    with service.client("bob") as client:
        first = client.get("/jobs", params={"strategy": "easycache", "limit": 2}).json()
        second = client.get(
            "/jobs", params={"strategy": "easycache", "limit": 2, "cursor": first["next_cursor"]}
        ).json()
        succeeded = client.get("/jobs", params={"status": "succeeded", "limit": 100}).json()
        bad_cursor = client.get("/jobs", params={"cursor": "nonsense"})
        bad_status = client.get("/jobs", params={"status": "exploded"})
    listed = [j["id"] for j in first["jobs"] + second["jobs"]]
    assert listed[:3] == ids[::-1]  # newest first, no job twice across pages
    assert len(set(listed)) == len(listed)
    assert all(j["status"] == "succeeded" for j in succeeded["jobs"])
    assert bad_cursor.status_code == 422 and bad_cursor.json()["error"]["fields"][0]["field"] == "cursor"
    assert bad_status.status_code == 422 and bad_status.json()["error"]["fields"][0]["field"] == "status"


LONG_JOB = {"width": 128, "height": 128, "num_frames": 17, "num_inference_steps": 20}


def test_cancel_running_and_queued(service: Service) -> None:
    running = service.submit(**LONG_JOB)
    queued = service.submit()
    wait_until(lambda: (service.get(running["id"]).get("progress") or {}).get("step", 0) >= 1, 60, what="a step")
    waiting = service.get(queued["id"])
    assert waiting["status"] == "queued" and waiting["queue_position"] >= 1

    with service.client() as client:
        canceled = client.post(f"/jobs/{queued['id']}/cancel")
        assert canceled.status_code == 202 and canceled.json()["status"] == "canceled"
        stopping = client.post(f"/jobs/{running['id']}/cancel")
        assert stopping.status_code == 202 and stopping.json()["cancel_requested"] is True

    stopped = service.wait(running["id"], timeout=30)
    assert stopped["status"] == "canceled"
    assert stopped["progress"]["step"] < stopped["progress"]["total"]
    # The worker is free again: a new job runs, and the queued job it was holding behind never ran.
    after = service.wait(service.submit()["id"])
    assert after["status"] == "succeeded"
    never = service.get(queued["id"])
    assert never["status"] == "canceled" and never["started_at"] is None
    with service.client() as client:
        finished = client.post(f"/jobs/{after['id']}/cancel")
    assert finished.status_code == 409 and "succeeded" in finished.json()["error"]["message"]


def test_model_loads_once_per_worker_process(service: Service) -> None:
    jobs = [service.submit(seed=i)["id"] for i in range(3)]
    workers = {service.wait(job_id)["worker"] for job_id in jobs}
    assert len(workers) == 1
    [worker] = workers
    [mine] = [line for line in service.worker_log.read_text().splitlines() if f"(worker {worker})" in line]
    assert "loaded model wan-tiny on cpu" in mine


def test_health_readiness_and_metrics(service: Service) -> None:
    service.wait(service.submit()["id"])
    assert httpx.get(f"{service.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{service.url}/readyz").json()
    assert ready == {"status": "ready", "checks": {"database": "ok", "broker": "ok", "storage": "ok"}}
    metrics = httpx.get(f"{service.url}/metrics").text
    assert 'skipstep_jobs{status="succeeded"}' in metrics
    assert "skipstep_queue_depth" in metrics
    assert 'skipstep_recent_speedup{strategy="none"}' in metrics


def test_unknown_job_is_404_and_openapi_documents_the_contract(service: Service) -> None:
    with service.client() as client:
        missing = client.get(f"/jobs/{uuid.uuid4()}")
        spec = client.get("/openapi.json").json()
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert "/jobs/{job_id}/cancel" in spec["paths"]
    example = spec["components"]["schemas"]["JobRequest"]["examples"][0]
    assert example["cache"]["strategy"] == "magcache"


def test_compare_records_fidelity_and_the_measured_speedup(service: Service) -> None:
    cached = service.wait(
        service.submit(cache={"strategy": "easycache", "params": {"threshold": 0.4, "warmup_steps": 2}}, compare=True)[
            "id"
        ]
    )
    same = service.wait(service.submit(compare=True)["id"])
    assert cached["status"] == same["status"] == "succeeded"
    fidelity = cached["metrics"]["fidelity"]
    assert cached["metrics"]["speedup_basis"] == "measured"
    assert cached["metrics"]["speedup"] == fidelity["measured_speedup"]
    assert 0 < fidelity["ssim"] <= 1 and fidelity["psnr"] > 0
    # Uncached against uncached: identical frames, an infinite PSNR, stored as null.
    assert same["metrics"]["fidelity"]["psnr"] is None and same["metrics"]["fidelity"]["ssim"] == 1.0


def test_workers_report_themselves(service: Service) -> None:
    job = service.wait(service.submit()["id"])
    with service.client("admin") as admin:
        listed = admin.get("/workers").json()
    with service.client("alice") as alice:
        assert alice.get("/workers").status_code == 403
    [mine] = [worker for worker in listed if worker["id"] == job["worker"]]
    assert mine["alive"] and mine["model"] == "wan-tiny" and mine["device"] == "cpu"
    assert mine["jobs_done"] >= 1 and mine["pid"] == int(job["worker"].rpartition(":")[2])


def test_jobs_of_a_dead_worker_end_as_lost_or_canceled(service: Service) -> None:
    """Rows left running by a worker that died for good: a live worker's sweep ends them."""
    past = utcnow() - timedelta(minutes=5)
    fields = {"prompt": "orphan", "negative_prompt": "", "guidance_scale": 5.0, "seed": 1, "fps": 16, **SMALL_JOB}
    with session_scope(service.settings.database) as session:
        alice = session.scalar(select(ApiKey).where(ApiKey.name == "alice"))
        common = {
            "owner_id": alice.id,
            "model": "wan-tiny",
            "status": JobStatus.running,
            "worker_id": "gone:1",
            "lease_expires_at": past,
        }
        lost = Job(**fields, **common, cache_strategy="none", attempts=3, started_at=past)
        canceled = Job(**fields, **common, cache_strategy="none", attempts=1, started_at=past, cancel_requested_at=past)
        session.add_all([lost, canceled])
    assert service.wait(str(lost.id), timeout=30)["error"] == {
        "code": "worker_lost",
        "message": "the worker running this job stopped responding on each of its 3 attempts",
    }
    assert service.wait(str(canceled.id), timeout=30)["status"] == "canceled"
