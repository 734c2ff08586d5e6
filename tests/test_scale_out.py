"""Scale-out: two models on one stack, each job on its own model's worker, a job for a model with no worker
waiting until one starts; and `skipstep up --gpus` pinning one worker per GPU (checked without a GPU)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from faults import Stack
from service import SMALL_JOB, Service

from core.errors import SkipstepError
from core.supervisor import assign_gpus, gpu_workers


def models_by_name(service: Service, key: str = "admin") -> dict[str, dict[str, Any]]:
    with service.client(key) as client:
        response = client.get("/models")
    assert response.status_code == 200, response.text
    return {model["name"]: model for model in response.json()}


def worker_id(process: subprocess.Popen[bytes]) -> str:
    return f"{socket.gethostname()}:{process.pid}"


def test_two_models_each_job_on_its_models_worker_and_a_job_waits_for_its_worker(
    stack: Callable[..., Stack], ltx_tiny: object
) -> None:
    service = stack(SKIPSTEP_MODELS="wan-tiny,ltx-tiny").service
    wan = service.start_worker("wan-tiny")

    models = models_by_name(service)
    assert list(models) == ["wan-tiny", "ltx-tiny"] and models["wan-tiny"]["default"]
    assert (models["wan-tiny"]["family"], models["ltx-tiny"]["family"]) == ("wan", "ltx")
    assert models["wan-tiny"]["workers"]["live"] == 1 and models["ltx-tiny"]["workers"]["live"] == 0
    assert not models["wan-tiny"]["queue"]["waiting_for_worker"] and models["ltx-tiny"]["queue"]["waiting_for_worker"]

    waiting = service.submit(model="ltx-tiny", **SMALL_JOB)
    assert waiting["model"] == "ltx-tiny" and waiting["status"] == "queued"
    assert waiting["status_detail"] == "waiting_for_worker"
    first = service.submit(**SMALL_JOB)  # no model named: the first configured
    assert first["model"] == "wan-tiny" and first["status_detail"] is None
    done = service.wait(first["id"])
    assert done["status"] == "succeeded" and done["worker"] == worker_id(wan)

    # The wan worker never takes the ltx job: it is still waiting, and says so.
    still = service.get(waiting["id"])
    assert (still["status"], still["status_detail"], still["queue_position"]) == ("queued", "waiting_for_worker", 1)
    models = models_by_name(service)
    assert models["ltx-tiny"]["queue"]["queued"] == 1 and models["ltx-tiny"]["queue"]["oldest_queued_seconds"] > 0
    assert models["wan-tiny"]["queue"]["queued"] == 0
    assert models["wan-tiny"]["recent"]["succeeded"] == 1
    assert models["wan-tiny"]["recent"]["succeeded_by_strategy"] == {"none": 1}
    # The dashboard filters by model and summarises each one.
    with service.client("admin") as client:
        ltx_only = client.get("/admin/api/overview", params={"model": "ltx-tiny"}).json()
    assert [row["id"] for row in ltx_only["jobs"]] == [waiting["id"]]
    assert (ltx_only["models"]["ltx-tiny"]["queued"], ltx_only["models"]["wan-tiny"]["succeeded"]) == (1, 1)
    summary = ltx_only["html"]["models"]
    assert summary.count("<tr data-model=") == 2 and summary.count("data-waiting-for-worker") == 1

    # A worker for ltx-tiny starts (pinned, as `skipstep up --gpus` would: the device report says which GPU).
    ltx = service.start_worker("ltx-tiny", CUDA_VISIBLE_DEVICES="1")
    ran = service.wait(waiting["id"])
    assert ran["status"] == "succeeded" and ran["worker"] == worker_id(ltx)

    # Side by side: each job on its model's worker.
    pairs = [(service.submit(model=model, seed=seed, **SMALL_JOB), model) for seed in (1, 2) for model in models]
    owners = {"wan-tiny": worker_id(wan), "ltx-tiny": worker_id(ltx)}
    for job, model in pairs:
        final = service.wait(job["id"])
        assert (final["status"], final["model"], final["worker"]) == ("succeeded", model, owners[model])

    models = models_by_name(service)
    for name in ("wan-tiny", "ltx-tiny"):
        assert (models[name]["workers"]["live"], models[name]["workers"]["idle"]) == (1, 1)
        queue = models[name]["queue"]
        assert (queue["queued"], queue["running"], queue["waiting_for_worker"]) == (0, 0, False)
        recent = models[name]["recent"]
        assert recent["succeeded"] == 3 and recent["failed"] == 0 and recent["jobs_per_hour"] == 3
        assert recent["denoise_mean_seconds"] > 0 and recent["speedup_mean"] > 0
        assert 0 <= recent["wait_mean_seconds"] <= recent["wait_p95_seconds"]
    # The ltx job waited for its worker to start: longer than any of wan's.
    assert models["ltx-tiny"]["recent"]["wait_p95_seconds"] > models["wan-tiny"]["recent"]["wait_p95_seconds"]
    assert models["ltx-tiny"]["workers"]["devices"] == [f"{socket.gethostname()}/cpu (GPU 1)"]
    assert models_by_name(service, "alice")["ltx-tiny"]["workers"]["devices"] == []

    with service.client("admin") as client:
        workers = {worker["id"]: worker for worker in client.get("/workers").json()}
        metrics = client.get("/metrics").text
    assert (workers[worker_id(ltx)]["model"], workers[worker_id(ltx)]["visible_devices"]) == ("ltx-tiny", "1")
    assert (workers[worker_id(wan)]["model"], workers[worker_id(wan)]["visible_devices"]) == ("wan-tiny", None)
    for name in ("wan-tiny", "ltx-tiny"):
        assert f'skipstep_model_queue_depth{{model="{name}"}} 0.0' in metrics
        assert f'skipstep_model_workers_live{{model="{name}"}} 1.0' in metrics
        assert f'skipstep_model_recent_jobs_succeeded{{model="{name}",strategy="none"}} 3.0' in metrics
        assert f'skipstep_model_wait_seconds{{model="{name}",stat="p95"}}' in metrics


def test_a_job_for_an_unconfigured_model_is_refused_and_nothing_is_written(service: Service) -> None:
    with service.client() as client:
        before = client.get("/jobs").json()["jobs"]
        response = client.post("/jobs", json={"prompt": "a fox", "model": "no-such-model", **SMALL_JOB})
        after = client.get("/jobs").json()["jobs"]
    assert response.status_code == 422
    assert [field["field"] for field in response.json()["error"]["fields"]] == ["model"]
    assert after == before


def test_gpus_give_each_worker_its_own_gpu() -> None:
    assert assign_gpus("0,1", ["wan"]) == [("0", "wan"), ("1", "wan")]
    assert assign_gpus("0,1,2", ["wan", "ltx"]) == [("0", "wan"), ("1", "ltx"), ("2", "wan")]
    assert assign_gpus("3=ltx, 1=wan,2", ["wan", "ltx"]) == [("3", "ltx"), ("1", "wan"), ("2", "wan")]
    uuid = "GPU-8f3c2a1e-0000-1111-2222-333344445555"
    assert assign_gpus(f"{uuid}=wan", ["wan"]) == [(uuid, "wan")]


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("", "expected GPU ids"),
        ("0,0", "names one twice"),
        ("0=wan,0=ltx", "names one twice"),
        ("cuda:0", "is not a GPU index"),
        ("0=huge", "'huge' is not a configured model"),
        ("0", "no GPU left for ltx"),
        ("0=wan,1=wan", "no GPU left for ltx"),
    ],
)
def test_gpus_refuses_what_cannot_be_pinned(spec: str, problem: str) -> None:
    with pytest.raises(SkipstepError, match=problem):
        assign_gpus(spec, ["wan", "ltx"])


def test_each_gpu_worker_process_sees_only_its_gpu() -> None:
    """The children `skipstep up --gpus 0,1,2` starts, started for real with a command that reports its
    environment in place of the worker: each is pinned to its own GPU and asks for CUDA (no CPU fallback)."""
    report = "import json, os, sys; print(json.dumps([sys.argv[1:], os.environ.get('CUDA_VISIBLE_DEVICES'), "
    report += "os.environ.get('SKIPSTEP_DEVICE'), os.environ.get('SKIPSTEP_DATABASE_URL')]))"
    env = {"SKIPSTEP_DATABASE_URL": "postgresql+psycopg://db/skipstep", "SKIPSTEP_DEVICE": "cuda:1", "PATH": ""}
    children = gpu_workers([sys.executable, "-c", report], assign_gpus("0,1,2", ["wan", "ltx"]), env)
    assert [child.name for child in children] == ["worker wan on GPU 0", "worker ltx on GPU 1", "worker wan on GPU 2"]
    seen = []
    for child in children:
        process = subprocess.run(child.command, env=child.env, capture_output=True, text=True, timeout=30)
        seen.append(json.loads(process.stdout))
    assert seen == [
        [["--model", "wan"], "0", "cuda", "postgresql+psycopg://db/skipstep"],
        [["--model", "ltx"], "1", "cuda", "postgresql+psycopg://db/skipstep"],
        [["--model", "wan"], "2", "cuda", "postgresql+psycopg://db/skipstep"],
    ]


def test_up_refuses_gpus_it_cannot_assign_before_starting_anything(
    cli: Callable[..., subprocess.CompletedProcess], tmp_path: Any
) -> None:
    result = cli(tmp_path, "up", "--gpus", "0,0")
    assert result.returncode != 0 and "names one twice" in result.stderr
    assert not (tmp_path / "up.pid").exists() and not (tmp_path / "skipstep.db").exists()
