"""The front stays light: the API, the webhooks worker and the client commands load no torch, diffusers or
transformers. Each check runs in a fresh process (this one has torch loaded) and reads ``sys.modules`` as the
process exits; the served API is checked by the libraries mapped into its process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from service import Service

HEAVY = ("torch", "diffusers", "transformers")
# Prints, at exit, which heavy packages the process imported.
PROBE = (
    "import atexit, sys\n"
    f"atexit.register(lambda: print('heavy:', [m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr))\n"
)


def run_probe(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", PROBE + code, *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)


def heavy_modules(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("heavy:")]
    assert lines, result.stderr
    return lines[-1]


def skipstep(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = os.environ | {"SKIPSTEP_HOME": str(home)} | env
    return run_probe("from core.cli import main\nsys.exit(main(sys.argv[1:]))", *args, env=environment)


@pytest.mark.parametrize(
    "code",
    [
        "import api.app",
        # What a webhooks worker (celery -A worker.app worker -Q webhooks) imports: the app and its task modules.
        "from worker.app import celery_app\ncelery_app.loader.import_default_modules()",
    ],
    ids=["api", "webhooks-worker"],
)
def test_front_processes_import_no_engine(code: str) -> None:
    result = run_probe(code)
    assert result.returncode == 0, result.stderr
    assert heavy_modules(result) == "heavy: []"


def test_commands_import_no_engine(api_alone: Service, tmp_path: Path) -> None:
    home = tmp_path / "home"
    submitted = skipstep(
        home,
        "submit",
        "--prompt",
        "a light client",
        "--width",
        "64",
        "--height",
        "64",
        "--num-frames",
        "9",
        "--steps",
        "6",
        "--cache",
        "magcache",
        "--api-url",
        api_alone.url,
        SKIPSTEP_API_KEY=api_alone.keys["alice"],
    )
    assert submitted.returncode == 0, submitted.stderr
    assert "queued" in submitted.stdout
    runs = {
        "help": skipstep(home, "--help"),
        "submit-help": skipstep(home, "submit", "--help"),
        "submit": submitted,
        "migrate": skipstep(home, "migrate"),
        "keys": skipstep(home, "keys", "create", "--name", "light"),
        "down": skipstep(home, "down"),
    }
    assert runs["migrate"].returncode == 0 and runs["keys"].returncode == 0, runs["keys"].stderr
    assert "no running service" in runs["down"].stderr
    assert {name: heavy_modules(run) for name, run in runs.items()} == dict.fromkeys(runs, "heavy: []")


def test_served_api_maps_no_torch(api_alone: Service) -> None:
    """After a submit and a read, the API process has no torch library mapped."""
    job = api_alone.submit(cache={"strategy": "magcache"})
    api_alone.get(job["id"])
    api = next(p for p in api_alone.processes if "uvicorn" in " ".join(map(str, p.args)))
    maps = Path(f"/proc/{api.pid}/maps").read_text()
    assert not [line for line in maps.splitlines() if "/torch/" in line or "/diffusers/" in line]
