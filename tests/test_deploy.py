"""docker-compose.yml and deploy/ are checked here (no Docker engine runs on these machines):
every role runs a command this code base has, on the queues the app routes to, with known settings."""

from __future__ import annotations

import importlib
from pathlib import Path

import yaml

from core.settings import Settings
from worker.app import WEBHOOKS_QUEUE

ROOT = Path(__file__).resolve().parents[1]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_runs_every_role_against_postgres_redis_and_minio() -> None:
    services = compose()["services"]
    assert {"postgres", "redis", "minio", "migrate", "api", "worker", "webhooks"} <= set(services)
    assert services["migrate"]["command"] == ["skipstep", "migrate"]

    api = services["api"]["command"]
    module, _, attribute = api[api.index("uvicorn") + 1].partition(":")
    assert hasattr(importlib.import_module(module), attribute)

    webhooks = services["webhooks"]["command"]
    assert webhooks[:3] == ["celery", "-A", "worker.app"]
    assert webhooks[webhooks.index("-Q") + 1] == WEBHOOKS_QUEUE
    # A GPU worker is `skipstep worker`: one model's queue, one job at a time in one process.
    assert services["worker"]["command"][:2] == ["skipstep", "worker"]
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    for role in ("api", "worker", "webhooks"):
        assert services[role]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_example_environment_names_only_real_settings() -> None:
    lines = (ROOT / "deploy" / "skipstep.env.example").read_text().splitlines()
    values = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
    fields = {f"SKIPSTEP_{name.upper()}" for name in Settings.model_fields}
    assert set(values) <= fields
    settings = Settings(**{name.removeprefix("SKIPSTEP_").lower(): value for name, value in values.items()})
    assert settings.storage_backend == "s3" and settings.database.startswith("postgresql+psycopg://")
    # The sources of every COPY line (its last word is the destination), as whole names, not substrings.
    copied = {
        source
        for line in (ROOT / "deploy" / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ")
        for source in line.split()[1:-1]
    }
    assert {"core", "api", "worker", "migrations", "alembic.ini"} <= copied
