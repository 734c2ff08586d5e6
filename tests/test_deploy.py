"""docker-compose.yml and deploy/ are checked here (no Docker engine or Kubernetes cluster runs on these
machines): every role runs a command this code base has, on the queues the app routes to, with known
settings; probes hit real routes; the autoscalers' query counts what it says on a real database."""

from __future__ import annotations

import importlib
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from service import fresh_database, job_row
from sqlalchemy import text

from api.app import app
from core.cli import parser
from core.cli.service import stop_seconds
from core.db import ApiKey, JobStatus, session_scope
from core.db.migrate import upgrade
from core.settings import Settings
from worker.app import WEBHOOKS_QUEUE

ROOT = Path(__file__).resolve().parents[1]
KUBERNETES = ROOT / "deploy" / "kubernetes"
SETTING_NAMES = {f"SKIPSTEP_{name.upper()}" for name in Settings.model_fields}


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def gpu_services(services: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in services.items()
        if any(
            "gpu" in device.get("capabilities", [])
            for device in service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        )
    }


def test_compose_runs_every_role_against_postgres_redis_and_minio() -> None:
    services = compose()["services"]
    assert {"postgres", "redis", "minio", "migrate", "api", "webhooks"} <= set(services)
    assert services["migrate"]["command"] == ["skipstep", "migrate"]

    api = services["api"]["command"]
    module, _, attribute = api[api.index("uvicorn") + 1].partition(":")
    assert hasattr(importlib.import_module(module), attribute)

    webhooks = services["webhooks"]["command"]
    assert webhooks[:3] == ["celery", "-A", "worker.app"]
    assert webhooks[webhooks.index("-Q") + 1] == WEBHOOKS_QUEUE
    for role in ("api", "webhooks", *gpu_services(services)):
        assert services[role]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_compose_pins_one_gpu_per_worker() -> None:
    """Each GPU worker is its own service holding one device id of its own: `--scale` would give every
    replica the same reservation (NVIDIA container toolkit issue 521, docker/compose 11863)."""
    services = compose()["services"]
    workers = gpu_services(services)
    assert len(workers) >= 2
    pinned = []
    for name, service in workers.items():
        # A GPU worker is `skipstep worker`: one model's queue, one job at a time in one process.
        assert service["command"][:2] == ["skipstep", "worker"], name
        parser(Settings()).parse_args(service["command"][1:])
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert "count" not in device and len(device["device_ids"]) == 1, name
        pinned += device["device_ids"]
        assert set(service.get("environment", {})) <= SETTING_NAMES, name
        grace = re.fullmatch(r"(\d+)m", service["stop_grace_period"])
        assert grace and int(grace[1]) * 60 >= stop_seconds(Settings()), name
    assert len(set(pinned)) == len(pinned)


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


def manifests() -> dict[str, list[dict[str, Any]]]:
    return {
        path.name: [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        for path in sorted(KUBERNETES.glob("*.yaml"))
    }


def objects(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for docs in manifests().values() for doc in docs if doc["kind"] == kind}


def configured() -> Settings:
    """The settings every pod gets, from the ConfigMap and the Secret."""
    values = objects("ConfigMap")["skipstep"]["data"] | objects("Secret")["skipstep"]["stringData"]
    assert set(values) <= SETTING_NAMES
    return Settings(**{name.removeprefix("SKIPSTEP_").lower(): value for name, value in values.items()})


def containers(kind: str) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for name, doc in objects(kind).items():
        found += [(name, container) for container in doc["spec"]["template"]["spec"]["containers"]]
    return found


def test_kustomization_applies_every_manifest() -> None:
    listed = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(name for name in manifests() if name != "kustomization.yaml")


def test_every_kubernetes_container_runs_a_real_command_with_real_settings() -> None:
    settings = configured()
    pods = containers("Deployment") + containers("Job")
    assert {name for name, _ in pods} >= {"skipstep-api", "skipstep-webhooks", "skipstep-migrate"}
    for name, container in pods:
        command = container["command"]
        if command[0] == "skipstep":
            parser(settings).parse_args(command[1:])
        elif command[0] == "uvicorn":
            module, _, attribute = command[1].partition(":")
            assert hasattr(importlib.import_module(module), attribute), name
        else:
            assert command[:3] == ["celery", "-A", "worker.app"], name
            assert command[command.index("-Q") + 1] == WEBHOOKS_QUEUE, name
        sources = {
            source.get("configMapRef", source.get("secretRef", {})).get("name") for source in container["envFrom"]
        }
        assert sources == {"skipstep"}, name
        assert {env["name"] for env in container.get("env", [])} <= SETTING_NAMES, name
    assert objects("Job")["skipstep-migrate"]["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "skipstep",
        "migrate",
    ]


def test_api_probes_hit_real_routes() -> None:
    routes = {path for path, operations in app.openapi()["paths"].items() if "get" in operations}
    assert {"/healthz", "/readyz", "/jobs"} <= routes
    (api,) = [container for name, container in containers("Deployment") if name == "skipstep-api"]
    ports = {port["name"]: port["containerPort"] for port in api["ports"]}
    assert ports["http"] == int(api["command"][api["command"].index("--port") + 1])
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("readinessProbe", "livenessProbe"):
        assert api[probe]["httpGet"]["path"] in routes and api[probe]["httpGet"]["port"] in ports
    (service,) = objects("Service").values()
    assert (
        service["spec"]["selector"] == objects("Deployment")["skipstep-api"]["spec"]["template"]["metadata"]["labels"]
    )
    assert service["spec"]["ports"][0]["targetPort"] in ports


def worker_model(deployment: dict[str, Any]) -> str:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return parser(configured()).parse_args(container["command"][1:]).model


def test_one_gpu_worker_deployment_and_autoscaler_per_configured_model() -> None:
    settings = configured()
    workers = {
        name: doc
        for name, doc in objects("Deployment").items()
        if doc["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
    }
    served = {worker_model(doc): name for name, doc in workers.items()}
    assert sorted(served) == sorted(settings.model_sources)
    scalers = objects("ScaledObject")
    assert sorted(scaler["spec"]["scaleTargetRef"]["name"] for scaler in scalers.values()) == sorted(workers)
    auths = objects("TriggerAuthentication")
    for model, name in served.items():
        pod = workers[name]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert container["command"][:2] == ["skipstep", "worker"]
        # Kubernetes waits as long for a worker as `skipstep down` does: the grace, then the hand-back.
        assert pod["terminationGracePeriodSeconds"] == stop_seconds(settings)
        assert workers[name]["metadata"]["labels"]["skipstep/model"] == model
        (scaler,) = [s for s in scalers.values() if s["spec"]["scaleTargetRef"]["name"] == name]
        assert scaler["spec"]["minReplicaCount"] == 0
        (trigger,) = scaler["spec"]["triggers"]
        assert trigger["type"] == "postgresql" and trigger["authenticationRef"]["name"] in auths
    for auth in auths.values():
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["key"] in objects("Secret")[ref["name"]]["stringData"]


@pytest.fixture(scope="module")
def jobs_database() -> Any:
    with fresh_database() as url:
        upgrade(url)
        yield url


def test_each_autoscaler_counts_its_models_waiting_and_running_jobs(jobs_database: str) -> None:
    """Each ScaledObject's query, run on a migrated database: it counts the model's queued and running jobs
    (jobs wait in the database, not in the Redis list) and nothing else."""
    with session_scope(jobs_database) as session:
        owner = ApiKey(name="k", key_hash=uuid.uuid4().hex, webhook_secret="whsec_x")
        session.add(owner)
        session.flush()
        statuses = [JobStatus.queued] * 3 + [JobStatus.running] + [JobStatus.succeeded, JobStatus.failed]
        for model in configured().model_sources:
            for status in statuses:
                session.add(job_row(owner.id, model, status))
        session.add(job_row(owner.id, "other-model", JobStatus.queued))
    for scaler in objects("ScaledObject").values():
        deployment = objects("Deployment")[scaler["spec"]["scaleTargetRef"]["name"]]
        (trigger,) = scaler["spec"]["triggers"]
        assert f"'{worker_model(deployment)}'" in trigger["metadata"]["query"]
        with session_scope(jobs_database) as session:
            assert session.scalar(text(trigger["metadata"]["query"])) == 4


def test_scaling_guide_names_real_settings_and_metrics() -> None:
    guide = (ROOT / "deploy" / "SCALING.md").read_text()
    assert (
        set(re.findall(r"SKIPSTEP_[A-Z0-9_]+", guide)) - {"SKIPSTEP_GPU0_MODEL", "SKIPSTEP_GPU1_MODEL"} <= SETTING_NAMES
    )
    metrics = importlib.import_module("api.metrics").__file__
    exported = set(re.findall(r'"(skipstep_[a-z_]+)"', Path(metrics).read_text()))
    assert set(re.findall(r"skipstep_[a-z_]+", guide)) <= exported
    assert "celery -A worker.app flower" in guide
