"""``skipstep submit``: a thin HTTP client of a running service."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from core.cli.request import add_request_options, request_fields
from core.contract.request import JobRequest
from core.errors import SkipstepError
from core.settings import Settings


def add_commands(commands: Any, settings: Settings) -> None:
    submit = commands.add_parser("submit", help="submit a job to the running service")
    add_request_options(submit, JobRequest)
    submit.add_argument("--wait", action="store_true", help="follow the job until it finishes")
    submit.add_argument("--out", type=Path, metavar="FILE.mp4", help="with --wait: download the video here")
    submit.add_argument("--api-url", default=settings.public_url)
    submit.add_argument("--timeout", type=float, default=600, help="seconds to wait for the service and the job")
    submit.set_defaults(run=_submit)


def _submit(args: argparse.Namespace, settings: Settings) -> int:
    # The service validates the body (its limits and models are its own settings).
    body = request_fields(args, JobRequest)
    deadline = time.monotonic() + args.timeout
    with httpx.Client(base_url=args.api_url, timeout=30) as client:
        _wait_ready(client, deadline)
        # Read only now: a service being started by `skipstep up` writes its key before it is ready.
        client.headers["Authorization"] = f"Bearer {settings.api_key or _read_key_file(settings)}"
        response = client.post("/jobs", json=body)
        if response.status_code != 202:
            raise SkipstepError(_error_text(response))
        job = response.json()
        print(f"job {job['id']} queued")
        if not args.wait:
            return 0
        job = _follow(client, job, deadline)
        if job["status"] != "succeeded":
            error = job.get("error") or {}
            print(f"job {job['id']} {job['status']}: {error.get('message', '')}".rstrip(": "))
            return 1
        metrics = job["metrics"]
        print(
            f"job {job['id']} succeeded: video {job['result']['video_url']} ({job['result']['bytes']} bytes); "
            f"denoise {metrics['denoise_seconds']:.2f} s, speedup {metrics['speedup']:.2f}x "
            f"({metrics['speedup_basis']})"
        )
        if args.out is not None:
            video = client.get(f"/jobs/{job['id']}/video", follow_redirects=True)
            video.raise_for_status()
            args.out.write_bytes(video.content)
            print(f"wrote {args.out}")
    return 0


def _follow(client: httpx.Client, job: dict[str, Any], deadline: float) -> dict[str, Any]:
    last = ""
    while job["status"] in ("queued", "running"):
        if time.monotonic() > deadline:
            raise SkipstepError(f"--timeout: job {job['id']} still {job['status']}")
        time.sleep(0.5)
        job = client.get(f"/jobs/{job['id']}").json()
        progress = job.get("progress") or {}
        line = job["status"]
        if progress:
            line += (
                f" step {progress['step']}/{progress['total']} (computed {progress['computed_calls']}, "
                f"skipped {progress['skipped_calls']} calls)"
            )
        elif job["status"] == "queued":
            line += f", position {job['queue_position']}"
        if line != last:
            print(line, file=sys.stderr)
            last = line
    return job


def _wait_ready(client: httpx.Client, deadline: float) -> None:
    while True:
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SkipstepError(f"--api-url: no ready service at {client.base_url}")
        time.sleep(0.5)


def _read_key_file(settings: Settings) -> str:
    path = settings.api_key_file
    if not path.exists():
        raise SkipstepError(f"no API key: set SKIPSTEP_API_KEY (or run `skipstep up`, which writes {path})")
    return path.read_text().strip()


def _error_text(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:200]}"
