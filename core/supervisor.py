"""Keeps the processes of one machine's service running (``skipstep up``).

A child that exits is restarted after a backoff that doubles while it keeps failing (and resets once
it has run for a while), and the restart is logged; an API crash does not stop the workers. SIGTERM
or SIGINT stops everything: the workers first, with time to finish or hand back their jobs, then
the API, then the embedded broker.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from core.errors import SkipstepError

FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 60.0
# A child that ran this long before exiting is restarted without delay: it was not crash-looping.
STABLE_SECONDS = 60.0


@dataclass
class Child:
    name: str
    command: list[str]
    env: dict[str, str]
    # Stopped last (the broker), after the others have shut down.
    infrastructure: bool = False
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0
    restart_at: float = 0.0

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, env=self.env)
        self.started_at = time.monotonic()
        say(f"started {self.name} (pid {self.process.pid})")

    def check(self, now: float) -> None:
        """Notice an exit and schedule the restart; start it when its time has come."""
        if self.process is not None:
            code = self.process.poll()
            if code is None:
                return
            ran = now - self.started_at
            self.failures, backoff = restart_delay(ran, self.failures)
            say(
                f"{self.name} (pid {self.process.pid}) exited with status {code} after {ran:.0f} s; "
                f"restarting in {backoff:g} s"
            )
            self.process, self.restart_at = None, now + backoff
        if now >= self.restart_at:
            self.start()


def restart_delay(ran: float, failures: int) -> tuple[int, float]:
    """(failures in a row, seconds to wait) for a process that exited after running ``ran`` seconds."""
    failures = 0 if ran >= STABLE_SECONDS else failures + 1
    return failures, 0.0 if failures == 0 else min(FIRST_BACKOFF_SECONDS * 2 ** (failures - 1), MAX_BACKOFF_SECONDS)


GPU_ID = re.compile(r"\d+|(GPU|MIG)-[0-9A-Za-z-]+")


def assign_gpus(spec: str, models: Sequence[str], per_worker: int = 1) -> list[tuple[str, str]]:
    """(GPUs, model) for each worker of ``--gpus``: ``0,1,...`` (the models take the workers in turn) or
    ``0=MODEL,1=MODEL,...``; a GPU is an index or a ``GPU-``/``MIG-`` UUID, as CUDA_VISIBLE_DEVICES takes it.
    One worker per ``per_worker`` GPUs in the order given (``0,1`` for a worker spanning GPUs 0 and 1), each
    GPU in one worker, and every model gets at least one."""
    entries = [entry.strip() for entry in spec.split(",") if entry.strip()]
    if not entries:
        raise SkipstepError("--gpus: expected GPU ids, e.g. 0,1 or 0=wan-tiny,1=ltx-tiny")
    named: list[tuple[str, str | None]] = []
    for entry in entries:
        gpu, sep, model = (part.strip() for part in entry.partition("="))
        if not GPU_ID.fullmatch(gpu):
            raise SkipstepError(f"--gpus: {gpu!r} is not a GPU index or a GPU-/MIG- UUID")
        if sep and model not in models:
            raise SkipstepError(f"--gpus: {model!r} is not a configured model ({', '.join(models)})")
        named.append((gpu, model if sep else None))
    gpus = [gpu for gpu, _ in named]
    if len(set(gpus)) != len(gpus):
        raise SkipstepError(f"--gpus: each GPU runs one worker; {spec!r} names one twice")
    if len(named) % per_worker:
        raise SkipstepError(f"--gpus-per-worker: {len(named)} GPUs do not make workers of {per_worker} GPUs each")
    groups = [named[start : start + per_worker] for start in range(0, len(named), per_worker)]
    workers: list[tuple[str, str | None]] = []
    for group in groups:
        chosen = {model for _, model in group if model is not None}
        if len(chosen) > 1:
            raise SkipstepError(f"--gpus: one worker spans GPUs {','.join(gpu for gpu, _ in group)}: name one model")
        workers.append((",".join(gpu for gpu, _ in group), next(iter(chosen), None)))
    unnamed = iter(range(len(workers)))
    plan = [(gpu, model or models[next(unnamed) % len(models)]) for gpu, model in workers]
    missing = [model for model in models if model not in {model for _, model in plan}]
    if missing:
        raise SkipstepError(
            f"--gpus: no GPU left for {', '.join(missing)}; give each model a GPU (e.g. 0={models[0]},1=...) "
            "or serve fewer models on this host (SKIPSTEP_MODELS)"
        )
    return plan


def gpu_workers(command: Sequence[str], plan: Sequence[tuple[str, str]], env: Mapping[str, str]) -> list[Child]:
    """One worker per entry of ``plan``, each pinned to its GPU: the process sees only that device (as ``cuda``),
    so no two workers share one and none falls back to the CPU unnoticed. A worker spanning several GPUs is
    ``skipstep worker --gpus``, which pins its ranks itself (core.worker_group)."""
    return [
        Child(f"worker {model} on GPUs {gpus}", [*command, "--model", model, "--gpus", gpus], dict(env))
        if "," in gpus
        else Child(
            f"worker {model} on GPU {gpus}",
            [*command, "--model", model],
            {**env, "CUDA_VISIBLE_DEVICES": gpus, "SKIPSTEP_DEVICE": "cuda"},
        )
        for gpus, model in plan
    ]


def say(line: str) -> None:
    print(f"skipstep up: {line}", file=sys.stderr, flush=True)


def until_signalled(start: Callable[[], None], tick: Callable[[float], None], interval: float) -> None:
    """Run ``start``, then call ``tick`` with the monotonic time every ``interval`` seconds, until SIGTERM or SIGINT
    arrives (from the moment ``start`` begins: a signal during it ends the loop before its first tick)."""
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    start()
    while not stopping:
        tick(time.monotonic())
        time.sleep(interval)


def supervise(children: Sequence[Child], stop_seconds: float) -> int:
    """Run the children until SIGTERM or SIGINT; then stop them, waiting up to ``stop_seconds`` for the
    workers' graceful shutdown before killing what is left."""

    def start() -> None:
        for child in children:
            child.start()

    def check(now: float) -> None:
        for child in children:
            child.check(now)

    until_signalled(start, check, 0.2)
    say("stopping")
    _stop([child for child in children if not child.infrastructure], stop_seconds)
    _stop([child for child in children if child.infrastructure], stop_seconds)
    return 0


def _stop(children: Sequence[Child], timeout: float) -> None:
    running = [child.process for child in children if child.process is not None and child.process.poll() is None]
    for process in running:
        process.terminate()
    deadline = time.monotonic() + timeout
    for process in running:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            say(f"pid {process.pid} did not stop within {timeout:g} s; killing it")
            process.kill()
            process.wait()
