"""The shipped layouts as local processes: each service of docker-compose.yml and each container of
deploy/kubernetes/, with its own command, environment and mounts as the file gives them.

What stands in for what those files take from elsewhere:
- the image (deploy/Dockerfile): its ENV, and its code, which is this checkout (tests/test_deploy.py checks that
  the image copies every package); ``skipstep``, ``uvicorn`` and ``celery`` run on this interpreter;
- the database, broker and object store the files name (compose's postgres, redis and minio services, the hosts of
  the Kubernetes ConfigMap and Secret): a fresh PostgreSQL database, a redis-server and an S3-protocol server
  (moto) on loopback; a setting naming one is pointed there once checked to name that host;
- each container's filesystem: a folder of its own, with each volume a folder that the containers mounting it
  share; a setting holding a container path (SKIPSTEP_HOME, SKIPSTEP_STORAGE_DIR, a model's source) is rewritten
  to where that path lands for that container;
- each port a command listens on: a free loopback port;
- the GPU: the device is the CPU. Webhooks may go to a receiver on loopback.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlsplit, urlunsplit

import yaml
from service import free_port
from sqlalchemy.engine import make_url

from core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
KUBERNETES = ROOT / "deploy" / "kubernetes"

# The image's entry points, run on this interpreter.
EXECUTABLES = {"skipstep": "core.cli", "uvicorn": "uvicorn", "celery": "celery"}
# What every container gets on top of its file's settings: no GPU here; webhooks to a receiver on loopback.
OVERRIDES = {"SKIPSTEP_DEVICE": "cpu", "SKIPSTEP_WEBHOOK_ALLOW_PRIVATE": "true", "OMP_NUM_THREADS": "2"}
# Settings that hold a path in the container.
PATH_SETTINGS = {
    f"SKIPSTEP_{name.upper()}"
    for name, info in Settings.model_fields.items()
    if Path in (get_args(info.annotation) or (info.annotation,))
}


@dataclass
class Container:
    """One container as its file describes it (the image's own ENV not included)."""

    name: str
    command: list[str]
    env: dict[str, str]
    # Where each volume is mounted: a folder on this machine (a bind mount), or the name of a volume.
    mounts: dict[str, Path | str] = field(default_factory=dict)


@dataclass(frozen=True)
class Backing:
    """The stand-ins for the services a layout names by host: host -> database, broker or storage."""

    database_url: str
    broker_url: str
    s3_endpoint: str
    hosts: Mapping[str, str]


def image_env() -> dict[str, str]:
    """The Dockerfile's ENV lines (``KEY=VALUE`` pairs)."""
    env: dict[str, str] = {}
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("ENV "):
            env |= dict(pair.split("=", 1) for pair in shlex.split(line[4:]))
    return env


class Layout:
    """Runs containers as process groups of their own, logged under ``root / "logs"``; stops them all by pid."""

    def __init__(self, root: Path, backing: Backing) -> None:
        self.root, self.backing = root, backing
        self.ports: dict[int, int] = {}
        self.processes: list[subprocess.Popen[bytes]] = []
        (root / "logs").mkdir(parents=True, exist_ok=True)

    def port(self, container_port: int) -> int:
        """The loopback port that stands for a container port."""
        return self.ports.setdefault(container_port, free_port())

    def url(self, url: str) -> str:
        """A URL as seen from inside a container (its own port) as reachable here."""
        parts = urlsplit(url)
        assert parts.port is not None and parts.hostname in ("127.0.0.1", "localhost"), url
        return urlunsplit(parts._replace(netloc=f"127.0.0.1:{self.port(parts.port)}"))

    def host_path(self, container: Container, path: str) -> Path:
        """Where a container path lands: under the volume mounted there, else in the container's own folder."""
        for target, source in sorted(container.mounts.items(), key=lambda mount: -len(mount[0])):
            if path == target or path.startswith(target.rstrip("/") + "/"):
                base = source if isinstance(source, Path) else self.root / "volumes" / source
                return base / Path(path).relative_to(target)
        return self.root / "containers" / container.name / path.lstrip("/")

    def environment(self, container: Container) -> dict[str, str]:
        env = image_env() | container.env
        env |= self._pointed(env)
        for name in PATH_SETTINGS & set(env):
            env[name] = str(self.host_path(container, env[name]))
        if "SKIPSTEP_MODEL" in env:
            env["SKIPSTEP_MODEL"] = self._source(container, env["SKIPSTEP_MODEL"])
        if env.get("SKIPSTEP_MODELS"):
            entries = [entry.partition("=") for entry in env["SKIPSTEP_MODELS"].split(",")]
            env["SKIPSTEP_MODELS"] = ",".join(f"{n}{eq}{self._source(container, s)}" for n, eq, s in entries)
        if "SKIPSTEP_HOME" in env:
            Path(env["SKIPSTEP_HOME"]).mkdir(parents=True, exist_ok=True)  # the image creates it
        home = self.host_path(container, "/home/skipstep")
        home.mkdir(parents=True, exist_ok=True)
        return {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8"} | env | OVERRIDES

    def _source(self, container: Container, source: str) -> str:
        return str(self.host_path(container, source)) if source.startswith("/") else source

    def _pointed(self, env: Mapping[str, str]) -> dict[str, str]:
        """The settings naming the database, the broker and the store, pointed at their stand-ins."""
        pointed: dict[str, str] = {}
        if "SKIPSTEP_DATABASE_URL" in env:
            self._names(make_url(env["SKIPSTEP_DATABASE_URL"]).host, "database", "SKIPSTEP_DATABASE_URL")
            pointed["SKIPSTEP_DATABASE_URL"] = self.backing.database_url
        if "SKIPSTEP_BROKER_URL" in env:
            broker = urlsplit(env["SKIPSTEP_BROKER_URL"])
            self._names(broker.hostname, "broker", "SKIPSTEP_BROKER_URL")
            netloc = urlsplit(self.backing.broker_url).netloc
            pointed["SKIPSTEP_BROKER_URL"] = urlunsplit(broker._replace(netloc=netloc))
        if "SKIPSTEP_S3_ENDPOINT_URL" in env:
            self._names(urlsplit(env["SKIPSTEP_S3_ENDPOINT_URL"]).hostname, "storage", "SKIPSTEP_S3_ENDPOINT_URL")
            pointed["SKIPSTEP_S3_ENDPOINT_URL"] = self.backing.s3_endpoint
        return pointed

    def _names(self, host: str | None, role: str, setting: str) -> None:
        assert self.backing.hosts.get(host or "") == role, f"{setting} names {host!r}, which is not the {role}"

    def command(self, argv: list[str]) -> list[str]:
        """An image command on this interpreter, listening on loopback ports."""
        assert argv[0] in EXECUTABLES, f"{argv[0]} is not a command of the image"
        command = [sys.executable, "-m", EXECUTABLES[argv[0]], *argv[1:]]
        for option, value in (("--host", lambda _: "127.0.0.1"), ("--port", lambda p: str(self.port(int(p))))):
            if option in command:
                index = command.index(option) + 1
                command[index] = value(command[index])
        return command

    def start(self, container: Container, command: list[str] | None = None) -> subprocess.Popen[bytes]:
        log = (self.root / "logs" / f"{container.name}.log").open("ab")
        process = subprocess.Popen(
            self.command(command or container.command),
            env=self.environment(container),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes.append(process)
        return process

    def run(self, container: Container, command: list[str] | None = None, timeout: float = 180, **env: str) -> str:
        """A one-off container (``docker compose run [-e NAME=VALUE]``, a Job): its output, once it exited 0."""
        done = subprocess.run(
            self.command(command or container.command),
            env=self.environment(container) | env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert done.returncode == 0, f"{container.name} {command} exited {done.returncode}:\n{done.stderr[-3000:]}"
        return done.stdout

    def log(self, name: str) -> str:
        path = self.root / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM to each container's process group, then SIGKILL to what is left of it."""
        for process in self.processes:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


def interpolate(value: Any, variables: Mapping[str, str]) -> Any:
    """Compose's variable substitution in every string of the parsed file: ``${VAR}``, ``${VAR:-default}`` (also
    when empty), ``${VAR-default}`` (when unset), ``$$``."""
    if isinstance(value, dict):
        return {key: interpolate(item, variables) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, variables) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        name, colon, default = match["name"], match["colon"], match["default"]
        current = variables.get(name)
        if default is not None and (current is None or (colon and current == "")):
            return default
        return current or ""

    return re.sub(r"\$\$|\$\{(?P<name>\w+)(?:(?P<colon>:?)-(?P<default>[^}]*))?\}", substitute, value)


def compose_file(variables: Mapping[str, str]) -> dict[str, Any]:
    return interpolate(yaml.safe_load(COMPOSE.read_text()), variables)


def env_file(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def compose_containers(variables: Mapping[str, str]) -> dict[str, Container]:
    """The services that run this project's image, as containers. Each env_file is the example the file tells the
    operator to copy it from."""
    containers = {}
    for name, service in compose_file(variables)["services"].items():
        if service.get("image") != "skipstep:latest":
            continue
        env: dict[str, str] = {}
        files = service.get("env_file", [])
        for path in [files] if isinstance(files, str) else files:
            env |= env_file(ROOT / f"{path}.example")
        environment = service.get("environment", {})
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) for item in environment)
        env |= {key: str(value) for key, value in environment.items() if value is not None}
        mounts: dict[str, Path | str] = {}
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            bind = source.startswith((".", "/", "~"))
            mounts[target] = (COMPOSE.parent / Path(source).expanduser()).resolve() if bind else source
        containers[name] = Container(name, list(service["command"]), env, mounts)
    return containers


def kubernetes_objects() -> list[dict[str, Any]]:
    return [doc for path in sorted(KUBERNETES.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def kubernetes_containers() -> dict[str, Container]:
    """Each workload's container (Deployments and Jobs), by workload name: its command, its environment from the
    ConfigMaps and Secrets it names and its own ``env``, its volumes (a claim, or an emptyDir of its own)."""
    objects = kubernetes_objects()
    maps = {doc["metadata"]["name"]: doc.get("data", {}) for doc in objects if doc["kind"] == "ConfigMap"}
    secrets = {doc["metadata"]["name"]: doc.get("stringData", {}) for doc in objects if doc["kind"] == "Secret"}
    containers = {}
    for doc in objects:
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        name, pod = doc["metadata"]["name"], doc["spec"]["template"]["spec"]
        volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
        (spec,) = pod["containers"]
        env: dict[str, str] = {}
        for source in spec.get("envFrom", []):
            if "configMapRef" in source:
                env |= maps[source["configMapRef"]["name"]]
            else:
                env |= secrets[source["secretRef"]["name"]]
        for variable in spec.get("env", []):
            assert "value" in variable, f"{name}: env {variable['name']} is not a plain value"
            env[variable["name"]] = variable["value"]
        mounts: dict[str, Path | str] = {}
        for mount in spec.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "persistentVolumeClaim" in volume:
                mounts[mount["mountPath"]] = f"claim-{volume['persistentVolumeClaim']['claimName']}"
            else:
                assert "emptyDir" in volume, f"{name}: volume {mount['name']} is neither a claim nor an emptyDir"
                mounts[mount["mountPath"]] = f"{name}-{mount['name']}"
        containers[name] = Container(name, list(spec["command"]), env, mounts)
    return containers
