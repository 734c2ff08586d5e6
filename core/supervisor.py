"""Keeps the processes of one machine's service running (``skipstep up``).

A child that exits is restarted after a backoff that doubles while it keeps failing (and resets once
it has run for a while), and the restart is logged; an API crash does not stop the workers. SIGTERM
or SIGINT stops everything: the workers first, with time to finish or hand back their jobs, then
the API, then the embedded broker.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

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
            self.failures = 0 if ran >= STABLE_SECONDS else self.failures + 1
            backoff = (
                0.0
                if self.failures == 0
                else min(FIRST_BACKOFF_SECONDS * 2 ** (self.failures - 1), MAX_BACKOFF_SECONDS)
            )
            say(
                f"{self.name} (pid {self.process.pid}) exited with status {code} after {ran:.0f} s; "
                f"restarting in {backoff:g} s"
            )
            self.process, self.restart_at = None, now + backoff
        if now >= self.restart_at:
            self.start()


def say(line: str) -> None:
    print(f"skipstep up: {line}", file=sys.stderr, flush=True)


def supervise(children: Sequence[Child], stop_seconds: float) -> int:
    """Run the children until SIGTERM or SIGINT; then stop them, waiting up to ``stop_seconds`` for the
    workers' graceful shutdown before killing what is left."""
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    for child in children:
        child.start()
    while not stopping:
        now = time.monotonic()
        for child in children:
            child.check(now)
        time.sleep(0.2)
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
