"""The admin dashboard under load: seeds job rows of mixed strategies, shapes and statuses (spread over
30 days, newest first in the queue), then times the dashboard's page and its JSON refresh through the
real app, in process (no network), with repeated requests.

    python bench/dashboard_load.py [--database-url URL] [--jobs 100000] [--repeat 20]

The default database is a new SQLite file in a temporary directory. A PostgreSQL URL must name an
empty database (it is migrated here). Prints milliseconds per request: median, 95th percentile, max.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import insert, text

from core.db import Job, JobStatus, Worker, engine_for, session_scope, utcnow
from core.db.migrate import upgrade
from core.keys import create_key
from core.settings import get_settings

STRATEGIES = {  # name: (share of jobs, mean speedup, spread, params)
    "none": (0.15, 1.0, 0.0, {}),
    "teacache": (0.25, 1.8, 0.25, {"threshold": 0.08, "use_ret_steps": True}),
    "magcache": (0.35, 2.2, 0.35, {"threshold": 0.12, "max_skip_steps": 2, "retention_ratio": 0.2}),
    "easycache": (0.25, 2.0, 0.3, {"threshold": 0.05, "warmup_ratio": 0.2}),
}
SHAPES = [  # width, height, frames, steps, uncached denoise seconds
    (832, 480, 81, 50, 210.0),
    (480, 832, 81, 50, 210.0),
    (832, 480, 33, 30, 52.0),
    (128, 128, 17, 20, 7.0),
]
WORDS = (
    ("a red", "a small", "an old", "a golden", "a silver"),
    ("fox", "lighthouse", "robot", "sailboat", "owl", "city"),
    ("running through snow", "at dusk", "in the rain", "under northern lights", "in slow motion"),
)
QUEUED, RUNNING = 40, 4
BATCH = 5000


def schedule(steps: int, computed: int, rng: random.Random) -> str:
    keep = set(rng.sample(range(1, steps), max(0, computed - 1))) | {0}
    return "".join("C" if step in keep else "." for step in range(steps))


def job_rows(count: int, owner: uuid.UUID, seed: int = 7) -> Iterator[dict[str, Any]]:
    rng = random.Random(seed)
    now = utcnow()
    names = list(STRATEGIES)
    weights = [STRATEGIES[name][0] for name in names]
    ages = sorted(rng.uniform(0, 30 * 86400) for _ in range(count))
    for index, age in enumerate(ages):
        created = now - timedelta(seconds=age)
        name = rng.choices(names, weights)[0]
        _, mean, spread, params = STRATEGIES[name]
        width, height, frames, steps, full = rng.choice(SHAPES)
        if index < QUEUED:
            status = JobStatus.queued
        elif index < QUEUED + RUNNING:
            status = JobStatus.running
        else:
            status = rng.choices([JobStatus.succeeded, JobStatus.failed, JobStatus.canceled], [0.9, 0.06, 0.04])[0]
        row: dict[str, Any] = {
            "id": uuid.uuid4(),
            "owner_id": owner,
            "status": status,
            "prompt": " ".join(rng.choice(words) for words in WORDS) + ", cinematic",
            "negative_prompt": "",
            "width": width,
            "height": height,
            "num_frames": frames,
            "num_inference_steps": steps,
            "guidance_scale": 5.0,
            "seed": rng.randrange(2**31),
            "fps": 16,
            "model": "wan-tiny",
            "priority": 0,
            "cache_strategy": name,
            "cache_params": params,
            "cache_profile": None,
            "compare": False,
            "webhook_url": None,
            "webhook_events": [],
            "idempotency_key": None,
            "request_hash": None,
            "created_at": created,
            "dispatched_at": created,
            "started_at": None if status == JobStatus.queued else created + timedelta(seconds=2),
            "finished_at": None,
            "cancel_requested_at": None,
            "worker_id": None if status == JobStatus.queued else f"gpu-{index % 4}:{1000 + index % 4}",
            "lease_expires_at": None,
            "attempts": 0 if status == JobStatus.queued else 1,
            "progress_step": 0,
            "progress_total": 0 if status == JobStatus.queued else steps,
            "computed_calls": 0,
            "skipped_calls": 0,
            "video_key": None,
            "video_bytes": None,
            "video_seconds": None,
            "denoise_seconds": None,
            "speedup": None,
            "metrics": None,
            "error_code": None,
            "error_message": None,
        }
        if status == JobStatus.succeeded:
            row |= succeeded(row, rng, mean, spread, full)
        elif status == JobStatus.failed:
            row |= {"finished_at": created + timedelta(seconds=30), "error_code": "generation_failed"}
            row["error_message"] = "RuntimeError: CUDA out of memory"
        elif status == JobStatus.canceled:
            row |= {"finished_at": created + timedelta(seconds=5), "cancel_requested_at": created}
        yield row


def succeeded(row: dict[str, Any], rng: random.Random, mean: float, spread: float, full: float) -> dict[str, Any]:
    steps = row["num_inference_steps"]
    speedup = max(1.0, rng.gauss(mean, spread))
    computed = max(1, min(steps, round(steps / speedup)))
    denoise = full / speedup
    compare = rng.random() < 0.1
    branches = {}
    for branch in ("cond", "uncond"):
        plan = schedule(steps, computed, rng)
        branches[branch] = {"computed": plan.count("C"), "skipped": plan.count("."), "schedule": plan}
    fidelity = None
    if compare:
        fidelity = {
            "psnr": rng.gauss(31, 3),
            "ssim": min(1.0, rng.gauss(0.93, 0.03)),
            "baseline_denoise_seconds": full,
            "measured_speedup": speedup,
        }
    metrics = {
        "strategy": row["cache_strategy"],
        "params": row["cache_params"],
        "profile": "wan2.1-t2v-1.3b",
        "steps_total": steps,
        "branches": branches,
        "denoise_seconds": denoise,
        "seconds_per_step": denoise / steps,
        "speedup": speedup,
        "speedup_basis": "measured" if compare else "estimated",
        "fidelity": fidelity,
        "step_seconds": [round(denoise / steps, 4)] * steps,
        "timings": {"text_encoding": 0.4, "denoising": denoise, "vae_decode": 6.0, "mp4_encoding": 0.8},
    }
    finished = row["created_at"] + timedelta(seconds=denoise + 20)
    return {
        "compare": compare,
        "finished_at": finished,
        "progress_step": steps,
        "computed_calls": 2 * computed,
        "skipped_calls": 2 * (steps - computed),
        "video_key": f"videos/{row['id']}.mp4",
        "video_bytes": 2_000_000,
        "video_seconds": row["num_frames"] / 16,
        "denoise_seconds": denoise,
        "speedup": speedup,
        "metrics": metrics,
    }


def seed(url: str, count: int) -> str:
    """Migrates and fills the database; returns an admin key."""
    upgrade(url)
    with session_scope(url) as session:
        admin = create_key(session, "bench-admin", is_admin=True)[1]
        owner = create_key(session, "bench-user")[0].id
        now = utcnow()
        for index in range(4):
            session.add(
                Worker(
                    id=f"gpu-{index}:{1000 + index}",
                    hostname=f"gpu-{index}",
                    pid=1000 + index,
                    model="/models/Wan2.1-T2V-1.3B-Diffusers",
                    device=f"cuda:{index}",
                    jobs_done=count // 4,
                    last_seen_at=now if index < 3 else now - timedelta(hours=2),
                    stopped_at=None if index < 3 else now - timedelta(hours=2),
                )
            )
    rows = job_rows(count, owner)
    with session_scope(url) as session:
        while batch := [row for _, row in zip(range(BATCH), rows, strict=False)]:
            session.execute(insert(Job), batch)
    if not url.startswith("sqlite"):
        # What autovacuum does soon after a bulk load: planner statistics and the visibility map.
        with engine_for(url).connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("VACUUM ANALYZE jobs"))
    return admin


def timed(client: TestClient, path: str, repeat: int) -> list[float]:
    for _ in range(2):
        assert client.get(path).status_code == 200, path
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (path, response.status_code)
    return times


def deep_page(client: TestClient, pages: int) -> str:
    path = "/admin/api/overview"
    for _ in range(pages):
        path = f"/admin/api/overview?after={client.get(path).json()['next_cursor']}"
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="SQLAlchemy URL of an empty database (default: a temp SQLite file)")
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="skipstep-dashboard-") as scratch:
        url = args.database_url or f"sqlite:///{Path(scratch) / 'dashboard.db'}"
        started = time.perf_counter()
        admin = seed(url, args.jobs)
        print(f"seeded {args.jobs:,} jobs into {url.split('://')[0]} in {time.perf_counter() - started:.1f} s")

        os.environ |= {"SKIPSTEP_DATABASE_URL": url, "SKIPSTEP_HOME": scratch}
        get_settings.cache_clear()
        from api.app import create_app

        with TestClient(create_app(), headers={"Authorization": f"Bearer {admin}"}) as client:
            some_job = client.get("/admin/api/overview?status=succeeded").json()["jobs"][0]["id"]
            depth = min(40, args.jobs // 50 - 1)
            cases = {
                "page  /admin": "/admin",
                "json  /admin/api/overview (refresh)": "/admin/api/overview",
                "json  overview ?strategy=magcache&status=succeeded": (
                    "/admin/api/overview?strategy=magcache&status=succeeded"
                ),
                "json  overview ?from/to (one day, 20 days ago)": "/admin/api/overview?from={d}&to={d}".format(
                    d=(utcnow() - timedelta(days=20)).date().isoformat()
                ),
                f"json  overview, {depth} pages deep": deep_page(client, depth),
                "json  overview ?sort=speedup": "/admin/api/overview?sort=speedup",
                "json  overview ?sort=finished&order=asc": "/admin/api/overview?sort=finished&order=asc",
                "json  overview ?q=lighthouse (prompt search)": "/admin/api/overview?q=lighthouse",
                "json  overview ?q=<job id>": f"/admin/api/overview?q={some_job}",
                "json  /admin/api/summary": "/admin/api/summary",
                "page  /admin/jobs/{id}": f"/admin/jobs/{some_job}",
            }
            print(f"{'request':<54}{'median ms':>10}{'p95 ms':>9}{'max ms':>9}")
            for name, path in cases.items():
                times = sorted(timed(client, path, args.repeat))
                p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
                print(f"{name:<54}{statistics.median(times):>10.1f}{p95:>9.1f}{times[-1]:>9.1f}")


if __name__ == "__main__":
    main()
