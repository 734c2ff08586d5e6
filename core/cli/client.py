"""``skipstep submit``: a thin client of a running service, on the SDK (``skipstep.Client``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from core.cli.request import add_request_options, request_fields
from core.contract.frontier import Choice
from core.contract.jobs import JobStatus
from core.contract.request import JobRequest
from core.errors import SkipstepError
from core.settings import Settings

if TYPE_CHECKING:
    from skipstep import JobView


def add_commands(commands: Any, settings: Settings) -> None:
    submit = commands.add_parser("submit", help="submit a job to the running service")
    add_request_options(submit, JobRequest, targets=True)
    submit.add_argument(
        "--image",
        metavar="FILE|URL",
        help="an image-to-video model's first frame: a PNG, JPEG or WebP, or its https URL",
    )
    submit.add_argument("--wait", action="store_true", help="follow the job until it finishes")
    submit.add_argument("--out", type=Path, metavar="FILE.mp4", help="with --wait: download the video here")
    submit.add_argument("--api-url", default=settings.public_url)
    submit.add_argument("--timeout", type=float, default=600, help="seconds to wait for the service and the job")
    submit.set_defaults(run=_submit)


def _submit(args: argparse.Namespace, settings: Settings) -> int:
    from skipstep import ApiError, Client, WaitTimeout

    # The service validates the body (its limits and models are its own settings).
    body = request_fields(args, JobRequest)
    deadline = time.monotonic() + args.timeout
    with httpx.Client(base_url=args.api_url, timeout=30) as probe:
        _wait_ready(probe, deadline)
    # Read only now: a service being started by `skipstep up` writes its key before it is ready.
    with Client(args.api_url, settings.api_key or _read_key_file(settings)) as client:
        try:
            job = client.jobs.create(**body, **_image(args.image))
            print(f"job {job.id} queued")
            if job.expected is not None and job.expected.auto is not None:
                print(_auto_line(job.expected.auto))
            if not args.wait:
                return 0
            show = _Progress()
            job = client.jobs.wait(job.id, timeout=max(0.0, deadline - time.monotonic()), on_progress=show)
            show(job)
            if job.status != JobStatus.succeeded or job.result is None or job.metrics is None:
                message = job.error.message if job.error else ""
                print(f"job {job.id} {job.status.value}: {message}".rstrip(": "))
                return 1
            metrics = job.metrics
            print(
                f"job {job.id} succeeded: video {job.result.video_url} ({job.result.bytes} bytes); "
                f"denoise {metrics.denoise_seconds:.2f} s, speedup {metrics.speedup:.2f}x ({metrics.speedup_basis})"
            )
            if args.out is not None:
                client.jobs.download(job.id, args.out)
                print(f"wrote {args.out}")
        except ApiError as exc:
            raise SkipstepError(exc.message) from exc
        except WaitTimeout as exc:
            raise SkipstepError(f"--timeout: {exc}") from exc
    return 0


def _auto_line(choice: Choice) -> str:
    setting = choice.strategy + (" " + json.dumps(choice.params, sort_keys=True) if choice.params else "")
    predicted = ""
    if choice.point is not None:
        predicted = f" (predicted {choice.predicted_speedup:g}x, PSNR {choice.predicted_psnr:g} dB"
        predicted += f", SSIM {choice.predicted_ssim:g})"
    return f"auto chose {setting}{predicted}: {choice.reason}"


def _image(given: str | None) -> dict[str, Any]:
    """``--image`` as the SDK takes it: a URL as ``image_url``, a file as ``image``."""
    if given is None:
        return {}
    if given.startswith(("https://", "http://")):
        return {"image_url": given}
    path = Path(given)
    if not path.is_file():
        raise SkipstepError(f"--image: no such file: {given}")
    return {"image": path}


class _Progress:
    """Prints the job's status line to stderr each time it changes."""

    def __init__(self) -> None:
        self.last = ""

    def __call__(self, job: JobView) -> None:
        line = job.status.value
        if job.progress is not None:
            progress = job.progress
            line += (
                f" step {progress.step}/{progress.total} (computed {progress.computed_calls}, "
                f"skipped {progress.skipped_calls} calls)"
            )
        elif job.status == JobStatus.queued:
            line += f", position {job.queue_position}"
        if line != self.last:
            print(line, file=sys.stderr)
            self.last = line


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
