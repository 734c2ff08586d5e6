"""Clients read any server's answer: the SDK and `skipstep submit`, run with settings of their own that name other
models and lower limits than the server's, parse a job in every state, and the document's example job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import httpx
from service import Service, job_row
from sqlalchemy import select

from core.db import ApiKey, JobStatus, session_scope, utcnow
from core.keys import hash_key

# The client machine's settings: another model, and limits every job below is over.
CLIENT_SETTINGS = {
    "SKIPSTEP_MODELS": "ltx-tiny",
    "SKIPSTEP_REQUEST_MAX_PROMPT_CHARS": "1",
    "SKIPSTEP_REQUEST_MAX_SIDE": "16",
    "SKIPSTEP_REQUEST_MAX_FRAMES": "1",
    "SKIPSTEP_REQUEST_MAX_STEPS": "2",
}

READ_BACK = """
import json, sys
from skipstep import Client, JobView
url, key, ids, example = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
with Client(url, key) as client:
    print(json.dumps([client.jobs.get(job_id).status.value for job_id in ids]))
    print(json.dumps(sorted(view.status.value for view in client.jobs.list(page_size=2))))
print(JobView.model_validate(example).input.model)
"""


def client_env(home: Path, **more: str) -> dict[str, str]:
    return os.environ | CLIENT_SETTINGS | {"SKIPSTEP_HOME": str(home)} | more


def test_the_sdk_reads_every_state_and_the_documents_example(api_alone: Service, tmp_path: Path) -> None:
    now = utcnow()
    done = {"started_at": now - timedelta(seconds=9), "finished_at": now, "worker_id": "gpu-1:42"}
    with httpx.Client(base_url=api_alone.url, timeout=30) as anonymous:
        document = anonymous.get("/openapi.json").json()
    example = document["paths"]["/jobs/{job_id}"]["get"]["responses"]["200"]["content"]["application/json"]["example"]
    rows = {
        JobStatus.queued: {},
        JobStatus.running: {"started_at": now, "worker_id": "gpu-1:42", "progress_step": 2, "progress_total": 4},
        JobStatus.succeeded: done
        | {"video_key": "videos/x/1.mp4", "video_bytes": 1000, "video_seconds": 0.5, "metrics": example["metrics"]},
        JobStatus.failed: done | {"error_code": "timeout", "error_message": "the job ran too long"},
        JobStatus.canceled: done | {"cancel_requested_at": now},
    }
    with session_scope(api_alone.settings.database) as session:
        owner = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(api_alone.keys["bob"])))
        jobs = [
            job_row(owner.id, "wan-tiny", status, prompt="a fox in the snow", **fields)
            for status, fields in rows.items()
        ]
        session.add_all(jobs)
        session.flush()
        ids = [str(job.id) for job in jobs]

    result = subprocess.run(
        [sys.executable, "-c", READ_BACK, api_alone.url, api_alone.keys["bob"], json.dumps(ids), json.dumps(example)],
        env=client_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    statuses, listed, example_model = result.stdout.splitlines()
    assert json.loads(statuses) == [status.value for status in rows]
    assert json.loads(listed) == sorted(status.value for status in rows)
    assert example_model == example["input"]["model"]


def test_skipstep_submit_reads_the_job_it_queued(api_alone: Service, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "core.cli", "submit", "--model", "wan-tiny", "--prompt", "a fox in the snow"]
    command += ["--width", "64", "--height", "64", "--num-frames", "9", "--steps", "6", "--api-url", api_alone.url]
    env = client_env(tmp_path, SKIPSTEP_API_KEY=api_alone.keys["bob"])
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("job ") and result.stdout.strip().endswith(" queued")
    job_id = result.stdout.split()[1]
    job = api_alone.get(job_id, "bob")
    assert (job["model"], job["input"]["prompt"], job["input"]["width"]) == ("wan-tiny", "a fox in the snow", 64)
    with api_alone.client("bob") as bob:
        bob.post(f"/jobs/{job_id}/cancel")


def test_skipstep_submit_takes_a_target_and_the_service_judges_it(api_alone: Service, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "core.cli", "submit", "--model", "wan-tiny", "--prompt", "a fox in the snow"]
    command += ["--width", "64", "--height", "64", "--num-frames", "9", "--steps", "6", "--api-url", api_alone.url]
    env = client_env(tmp_path, SKIPSTEP_API_KEY=api_alone.keys["bob"])

    def submit(*options: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*command, *options], env=env, capture_output=True, text=True, timeout=120, check=False)

    # No frontier measured: auto runs uncached and says why.
    result = submit("--tier", "high")
    assert result.returncode == 0, result.stderr
    queued, chose = result.stdout.splitlines()
    job = api_alone.get(queued.split()[1], "bob")
    assert job["input"]["cache"]["strategy"] == "none"
    assert {k: v for k, v in job["expected"]["auto"]["target"].items() if v is not None} == {"tier": "high"}
    assert chose == "auto chose none: " + job["expected"]["auto"]["reason"]
    assert "no frontier covers this job (none measured for wan-tiny)" in chose
    with api_alone.client("bob") as bob:
        bob.post(f"/jobs/{job['id']}/cancel")

    for options, rule in (
        (("--cache", "magcache", "--min-psnr", "30"), "target: only with strategy 'auto'"),
        (
            ("--tier", "high", "--deadline-seconds", "5"),
            "give one of: tier, min_psnr and/or min_ssim, deadline_seconds",
        ),
        (("--min-psnr", "130"), "less than or equal to 100"),
    ):
        refused = submit(*options)
        assert refused.returncode == 2 and "cache" in refused.stderr and rule in refused.stderr, refused.stderr
    assert submit("--tier", "best").returncode == 2  # argparse: not a tier
