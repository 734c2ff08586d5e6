"""A worker that compiles its model says so: `GET /models` counts it as warming, and no job goes to it, until
its warm-up is over; each job's metrics then say how the model ran (attention backend actually used,
compiled blocks, a reused prompt encoding)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from faults import Stack
from service import SMALL_JOB, Service, wait_until


def workers_of(service: Service, model: str = "wan-tiny") -> dict[str, Any]:
    with service.client("admin") as client:
        response = client.get("/models")
    assert response.status_code == 200, response.text
    return next(entry["workers"] for entry in response.json() if entry["name"] == model)


def test_a_compiling_worker_takes_jobs_once_warm_and_jobs_say_how_the_model_ran(stack: Callable[..., Stack]) -> None:
    service = stack().service
    service.start_worker(
        SKIPSTEP_COMPILE="true", SKIPSTEP_COMPILE_BACKEND="aot_eager", SKIPSTEP_ATTENTION_BACKEND="flash"
    )
    # Registered as soon as the model is loaded, before compiling: alive, warming, taking no job.
    warming = workers_of(service)
    assert (warming["live"], warming["idle"], warming["warming"]) == (1, 0, 1)
    assert warming["devices"][0].endswith("cpu warming")
    early = service.submit(prompt="a heron in the reeds", **SMALL_JOB)
    assert early["status_detail"] == "waiting_for_worker"

    # Idle: alive and warm (a worker whose heartbeat is starved by its compile may look dead for a moment).
    wait_until(lambda: workers_of(service)["idle"] == 1, 300, 0.5, "the worker to warm up")
    assert workers_of(service)["warming"] == 0
    first = service.wait(early["id"])
    assert first["status"] == "succeeded", first
    assert "blocks compiled and warmed up" in service.worker_log.read_text()
    engine = first["metrics"]["engine"]
    assert engine["attention"]["requested"] == "flash" and engine["attention"]["used"] == "native"
    assert "flash-attn" in engine["attention"]["fallback_reason"]
    assert engine["precision"] == {"requested": "float32", "used": "float32", "fallback_reason": None}
    assert engine["compiled"] is True and engine["prompt_cached"] is False

    again = service.wait(service.submit(prompt="a heron in the reeds", **SMALL_JOB)["id"])
    assert again["status"] == "succeeded" and again["metrics"]["engine"]["prompt_cached"] is True
