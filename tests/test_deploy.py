"""docker-compose.yml and deploy/ are checked here (no Docker engine or Kubernetes cluster runs on these
machines): every role runs a command this code base has, on the queues the app routes to, with known
settings; probes hit real routes; the autoscalers' query counts what it says on a real database; the manifests
fit Kubernetes' and KEDA's schemas; and both layouts run as local processes (tests/layouts.py) from migration to
a job's video."""

from __future__ import annotations

import importlib
import logging
import re
import threading
import tomllib
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml
from layouts import Backing, Layout, compose_containers, compose_file, kubernetes_containers
from moto.server import ThreadedMotoServer
from service import fresh_database, job_row, start_redis, stop_process, wait_until
from sqlalchemy import text
from sqlalchemy.engine import make_url

from api.app import app
from core import health
from core.cli import parser
from core.cli.request import OPTION_NAMES
from core.cli.service import stop_seconds
from core.contract.shapes import SIZE_FIELDS
from core.db import ApiKey, JobStatus, session_scope
from core.db.migrate import ALEMBIC_INI, upgrade
from core.models import LoadedModel
from core.settings import Settings, model_name
from skipstep import verify_webhook
from worker.app import WEBHOOKS_QUEUE

ROOT = Path(__file__).resolve().parents[1]
KUBERNETES = ROOT / "deploy" / "kubernetes"
# The Kubernetes release whose schemas the manifests are validated against.
KUBERNETES_VERSION = "1.33"
log = logging.getLogger(__name__)
# The layout tests' job: done within a second on an idle machine.
TINY_JOB = {"width": 32, "height": 32, "num_frames": 5, "num_inference_steps": 2}
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


def test_the_image_copies_every_package_and_the_migrations() -> None:
    """The image installs the distribution from what it copies: every package pyproject.toml lists (the SDK
    behind `skipstep submit` included), and what `skipstep migrate` reads next to them."""
    # The sources of every COPY line (its last word is the destination), as whole names, not substrings.
    copied = {
        source
        for line in (ROOT / "deploy" / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ")
        for source in line.split()[1:-1]
    }
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {
        pattern.rstrip("*").rstrip(".") for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert packages and all((ROOT / package / "__init__.py").is_file() for package in packages)
    assert packages <= copied, f"not copied into the image: {sorted(packages - copied)}"
    assert ALEMBIC_INI.parent == ROOT and {"alembic.ini", "migrations"} <= copied
    assert {"pyproject.toml", "README.md"} <= copied  # what `pip install .` reads


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
    # Ready while the database answers (/readyz), alive while the process does (/healthz): two routes.
    assert (api["readinessProbe"]["httpGet"]["path"], api["livenessProbe"]["httpGet"]["path"]) == (
        "/readyz",
        "/healthz",
    )
    for probe in ("readinessProbe", "livenessProbe"):
        assert api[probe]["httpGet"]["path"] in routes and api[probe]["httpGet"]["port"] in ports
        # Kubernetes' default timeout is 1 s; /readyz may wait this long for the broker and the storage.
        assert api[probe]["timeoutSeconds"] > health.REPORT_SECONDS
    healthcheck = compose()["services"]["api"]["healthcheck"]
    assert urlsplit(healthcheck["test"][-1]).path == "/readyz"
    assert int(healthcheck["timeout"].removesuffix("s")) > health.REPORT_SECONDS
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


def test_scale_down_lets_a_busy_worker_finish_its_job() -> None:
    """Scaling down (or rolling out) sends SIGTERM: the worker takes no more jobs, and its running job may go on for
    the shutdown grace, which is at least the job time limit, so the job ends (done, or timed out) before any
    hand-back; the pod's termination grace leaves time for that (deploy/SCALING.md, "Scaling down")."""
    settings = configured()
    assert settings.shutdown_grace_seconds >= settings.max_job_seconds
    workers = [
        doc
        for doc in objects("Deployment").values()
        if doc["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
    ]
    assert workers
    for deployment in workers:
        pod = deployment["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] >= settings.max_job_seconds + settings.heartbeat_seconds
        (container,) = pod["containers"]
        # Nothing may cut the drain short: no preStop hook that ends the process, no liveness probe to fail.
        assert "lifecycle" not in container and "livenessProbe" not in container


def test_manifests_fit_the_kubernetes_schemas() -> None:
    """Validated offline, strictly (an unknown field is an error, as kubectl's server-side validation makes it):
    Kubernetes' own kinds against the schemas kubernetes-validate bundles; KEDA's against the CRDs of KEDA 2.20.2
    committed in tests/schemas/keda (kedacore/keda, config/crd/bases, Apache-2.0). The Kustomization is checked
    by test_kustomization_applies_every_manifest."""
    crds = {}
    for path in sorted((ROOT / "tests" / "schemas" / "keda").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            api_version = f"{crd['spec']['group']}/{version['name']}"
            crds[(api_version, crd["spec"]["names"]["kind"])] = strict(version["schema"]["openAPIV3Schema"])
    checked = set()
    for name, docs in manifests().items():
        for doc in docs:
            if doc["kind"] == "Kustomization":
                continue
            where = f"{name}: {doc['kind']} {doc['metadata']['name']}"
            if (doc["apiVersion"], doc["kind"]) in crds:
                errors = jsonschema.Draft202012Validator(crds[(doc["apiVersion"], doc["kind"])]).iter_errors(doc)
                assert not (error := jsonschema.exceptions.best_match(errors)), f"{where}: {error}"
            else:
                try:
                    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
                except kubernetes_validate.ValidationError as exc:
                    raise AssertionError(f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}") from None
            checked.add(doc["kind"])
    assert {"Deployment", "Job", "Service", "ConfigMap", "Secret", "ScaledObject", "TriggerAuthentication"} <= checked


def strict(schema: Any) -> Any:
    """A CRD's structural schema with unknown fields refused, as the API server prunes or rejects them (fields
    marked x-kubernetes-preserve-unknown-fields excepted)."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    refined = {key: strict(value) for key, value in schema.items()}
    open_ended = "additionalProperties" in refined or refined.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in refined and not open_ended:
        refined["additionalProperties"] = False
    return refined


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


@pytest.fixture
def stand_ins(tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """A fresh PostgreSQL database, a redis-server and an S3-protocol server, on loopback."""
    (tmp_path / "redis").mkdir()
    with fresh_database() as database_url:
        broker, broker_url = start_redis(tmp_path / "redis")
        s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        s3.start()
        host, port = s3.get_host_and_port()
        try:
            yield database_url, broker_url, f"http://{host}:{port}"
        finally:
            s3.stop()
            stop_process(broker)


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def created_key(output: str) -> tuple[str, str]:
    """The API key and webhook secret that `skipstep keys create` printed."""
    key = re.search(r"^api key \(user \S+\): (\S+)$", output, re.MULTILINE)
    secret = re.search(r"^webhook secret: (\S+)$", output, re.MULTILINE)
    assert key and secret, output
    return key[1], secret[1]


def described(base: str, key: str, model: str) -> dict[str, Any] | None:
    """The model as GET /models shows it, once a live worker of it has described it."""
    response = httpx.get(f"{base}/models", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    (view,) = [entry for entry in response.json() if entry["name"] == model]
    return view if view["workers"]["live"] >= 1 and view["described_by"] else None


class Receiver(ThreadingHTTPServer):
    """Records the webhook requests it gets (headers, body) and answers 204."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


def test_compose_layout_takes_a_job_from_submit_to_video(
    tmp_path: Path, wan_tiny: LoadedModel, stand_ins: tuple[str, str, str]
) -> None:
    """docker-compose.yml's services as processes (tests/layouts.py): migrate, then the API (no model mounted, as
    in the file), the first GPU worker (wan-tiny saved with save_pretrained where the file mounts the models) and
    the webhooks worker, each started once its depends_on conditions hold; then, as the file's header says, a key
    made with `docker compose run api skipstep keys create` and a job submitted with the image's `skipstep submit
    --wait --out`, through the api service's published port, to its video and its signed webhook."""
    variables = {"SKIPSTEP_MODELS_DIR": str(tmp_path / "models")}
    file, services = compose_file(variables)["services"], compose_containers(variables)
    api, worker, migrate = services["api"], services["worker-gpu0"], services["migrate"]
    # The example settings name the file's own postgres and minio services, with their credentials.
    database, postgres = make_url(api.env["SKIPSTEP_DATABASE_URL"]), file["postgres"]["environment"]
    assert (database.username, database.password, database.database) == (
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_PASSWORD"],
        postgres["POSTGRES_DB"],
    )
    minio = file["minio"]["environment"]
    assert (api.env["SKIPSTEP_S3_ACCESS_KEY_ID"], api.env["SKIPSTEP_S3_SECRET_ACCESS_KEY"]) == (
        minio["MINIO_ROOT_USER"],
        minio["MINIO_ROOT_PASSWORD"],
    )
    hosts = {"postgres": "database", "redis": "broker", "minio": "storage"}
    layout = Layout(tmp_path / "compose", Backing(*stand_ins, hosts=hosts))
    source = worker.env["SKIPSTEP_MODEL"]
    wan_tiny.pipeline.save_pretrained(layout.host_path(worker, source))
    assert not layout.host_path(api, source).exists()  # the API host has no model files
    receiver = Receiver()
    try:
        done = set(hosts)  # the stand-ins answer: the images' healthchecks pass
        for name in ("migrate", "api", "worker-gpu0", "webhooks"):
            for dependency, condition in file[name].get("depends_on", {}).items():
                assert dependency in done, f"{name} starts before {dependency} ({condition['condition']})"
            if name == "migrate":
                layout.run(migrate)
            else:
                layout.start(services[name])
            done.add(name)
        healthcheck = layout.url(file["api"]["healthcheck"]["test"][-1])
        wait_until(lambda: answers(healthcheck), 120, 0.5, f"the api healthcheck\n{layout.log('api')}")
        key, secret = created_key(layout.run(api, ["skipstep", "keys", "create", "--name", "me"]))
        (published,) = file["api"]["ports"]
        base = f"http://127.0.0.1:{layout.port(int(published.split(':')[-1]))}"
        model = model_name(source)
        view = wait_until(lambda: described(base, key, model), 180, 0.5, f"the worker\n{layout.log('worker-gpu0')}")
        # What the API knows of the model, it has from the worker's description in the database.
        assert view["family"] == "wan" and view["default_shape"]["num_inference_steps"] == 50

        out = layout.host_path(api, "/tmp/fox.mp4")
        out.parent.mkdir(parents=True)
        submit = ["skipstep", "submit", "--wait", "--out", str(out), "--api-url", base, "--prompt", "a red fox"]
        submit += [
            f"{OPTION_NAMES.get(name, '--' + name.replace('_', '-'))}={value}" for name, value in TINY_JOB.items()
        ]
        output = layout.run(api, [*submit, "--webhook-url", receiver.url], SKIPSTEP_API_KEY=key)
        succeeded = re.search(r"^job (\S+) succeeded: video \S+ \((\d+) bytes\)", output, re.MULTILINE)
        assert succeeded and f"wrote {out}" in output, output
        log.info("compose layout, `skipstep submit` through the api service:\n%s", output.strip())
        video = out.read_bytes()
        assert len(video) == int(succeeded[2]) and video[4:8] == b"ftyp"
        wait_until(lambda: receiver.requests, 60, 0.2, f"the webhook\n{layout.log('webhooks')}")
        headers, body = receiver.requests[0]
        event = verify_webhook(body, headers, secret)
        assert event["type"] == "job.succeeded" and event["data"]["id"] == succeeded[1]
    finally:
        receiver.shutdown()
        layout.stop()


def test_kubernetes_layout_takes_a_job_from_zero_workers_to_video(
    tmp_path: Path, wan_tiny: LoadedModel, stand_ins: tuple[str, str, str]
) -> None:
    """deploy/kubernetes/'s containers as processes (tests/layouts.py): the migration Job, the API and webhooks
    Deployments, probes answering; the GPU workers at zero replicas, as KEDA leaves them. A job for a model that
    no worker has described yet is accepted with its size rules pending (one that omits a size is refused, naming
    it); KEDA's query then counts the waiting jobs, the model's worker Deployment is started, checks the pending
    rules at claim (failing the job that breaks one, naming the field) and runs the other to its video."""
    containers, settings = kubernetes_containers(), configured()
    api = containers["skipstep-api"]
    model = settings.default_model
    scaled = {
        name: scaler
        for name, scaler in objects("ScaledObject").items()
        if worker_model(objects("Deployment")[scaler["spec"]["scaleTargetRef"]["name"]]) == model
    }
    ((_, scaler),) = scaled.items()
    worker = containers[scaler["spec"]["scaleTargetRef"]["name"]]
    hosts = {"postgres": "database", "redis": "broker", urlsplit(settings.s3_endpoint_url or "").hostname: "storage"}
    layout = Layout(tmp_path / "kubernetes", Backing(*stand_ins, hosts=hosts))
    source = settings.model_sources[model]
    assert not layout.host_path(api, source).exists()  # the API pod mounts no models
    try:
        layout.run(containers["skipstep-migrate"])
        layout.start(api)
        layout.start(containers["skipstep-webhooks"])
        (spec,) = objects("Deployment")["skipstep-api"]["spec"]["template"]["spec"]["containers"]
        ports = {port["name"]: port["containerPort"] for port in spec["ports"]}
        for probe in ("readinessProbe", "livenessProbe"):
            get = spec[probe]["httpGet"]
            url = f"http://127.0.0.1:{layout.port(ports[get['port']])}{get['path']}"
            wait_until(lambda url=url: answers(url), 120, 0.5, f"the api's {probe}\n{layout.log('skipstep-api')}")
        key, _ = created_key(layout.run(api, ["skipstep", "keys", "create", "--name", "me"]))
        base = f"http://127.0.0.1:{layout.port(ports['http'])}"
        # Plain HTTP: the SDK's models check a job's model against the client's own settings.
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
            (view,) = [entry for entry in client.get("/models").json() if entry["name"] == model]
            assert (view["family"], view["default_shape"], view["described_by"]) == (None, None, None)
            job = client.post("/jobs", json={"prompt": "a red fox", "model": model, **TINY_JOB})
            assert job.status_code == 202, job.text
            assert job.json()["pending_checks"] == ["width", "height", "num_frames"]
            bad = client.post("/jobs", json={"prompt": "a red fox", "model": model, **TINY_JOB, "width": 40})
            assert bad.status_code == 202, bad.text
            refused = client.post("/jobs", json={"prompt": "a red fox", "model": model})
            assert refused.status_code == 422
            assert {problem["field"] for problem in refused.json()["error"]["fields"]} == set(SIZE_FIELDS)

            (trigger,) = scaler["spec"]["triggers"]
            with session_scope(stand_ins[0]) as session:
                waiting = session.scalar(text(trigger["metadata"]["query"]))
            assert waiting == 2 and waiting > int(trigger["metadata"]["activationTargetQueryValue"])
            wan_tiny.pipeline.save_pretrained(layout.host_path(worker, source))
            layout.start(worker)

            def finished(job_id: str) -> dict[str, Any] | None:
                view = client.get(f"/jobs/{job_id}").json()
                return view if view["status"] in ("succeeded", "failed", "canceled") else None

            done = wait_until(lambda: finished(job.json()["id"]), 240, 0.5, f"the job\n{layout.log(worker.name)}")
            assert done["status"] == "succeeded" and done["pending_checks"] == [], done["error"]
            video = client.get(f"/jobs/{done['id']}/video", follow_redirects=True)
            assert video.status_code == 200 and len(video.content) == done["result"]["bytes"]
            assert video.content[4:8] == b"ftyp"
            log.info("kubernetes layout, job %s: %s, video %d bytes", done["id"], done["status"], len(video.content))
            failed = wait_until(lambda: finished(bad.json()["id"]), 60, 0.5, "the job that breaks a size rule")
            assert failed["status"] == "failed" and failed["error"]["code"] == "invalid_request"
            assert failed["error"]["message"].startswith("width:")
            log.info("kubernetes layout, job %s: %s, %s", failed["id"], failed["status"], failed["error"]["message"])
            (view,) = [entry for entry in client.get("/models").json() if entry["name"] == model]
            assert view["family"] == "wan" and view["described_by"]
    finally:
        layout.stop()
