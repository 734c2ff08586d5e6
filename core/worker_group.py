"""A worker spanning several devices (``skipstep worker --model NAME --gpus 0,1,...``): this process starts one
process per device, a rank, with torchrun's rendezvous variables on loopback (a free MASTER_PORT), and keeps
them running as one.

Rank 0 is the Celery worker of the model's queue, the worker the service knows (worker.runner); the others
follow it (worker.follower). A group cannot go on without one of its ranks: when any rank exits, the others
are killed by pid and a new group is started (after the backoff of ``skipstep up``). The job rank 0 held is
retried once its lease lapses, as for any worker that died (attempts are counted, the writes of a dead claim
are void). SIGTERM or SIGINT stops the group: rank 0 first, with the time ``skipstep up`` gives a worker to
finish or hand back its job, then the others.
"""

from __future__ import annotations

import ctypes
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field

from core.errors import SkipstepError
from core.supervisor import GPU_ID, restart_delay, until_signalled

CPU = "cpu"
_PR_SET_PDEATHSIG = 1


def parse_devices(spec: str) -> list[str]:
    """``--gpus``: GPU indexes or ``GPU-``/``MIG-`` UUIDs (``0,1,2,3``), or ``cpu,cpu`` for ranks on the CPU
    (gloo; for trying the group out and for tests). Two at least, each GPU once."""
    devices = [entry.strip() for entry in spec.split(",") if entry.strip()]
    if len(devices) < 2:
        raise SkipstepError("--gpus: a worker spanning devices needs two at least, e.g. 0,1 (or cpu,cpu)")
    if all(device == CPU for device in devices):
        return devices
    for device in devices:
        if not GPU_ID.fullmatch(device):
            raise SkipstepError(f"--gpus: {device!r} is not a GPU index or a GPU-/MIG- UUID (or cpu, for every rank)")
    if len(set(devices)) != len(devices):
        raise SkipstepError(f"--gpus: each GPU serves one rank; {spec!r} names one twice")
    return devices


def rank_env(env: Mapping[str, str], devices: Sequence[str], rank: int, port: int) -> dict[str, str]:
    """The environment of ``rank``: the rendezvous, and its device. Every rank sees all of the group's GPUs
    (NCCL finds the links between them) and runs on its own, ``cuda:RANK``."""
    values = {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(len(devices)),
    }
    if devices[0] == CPU:
        values["SKIPSTEP_DEVICE"] = CPU
    else:
        values |= {"CUDA_VISIBLE_DEVICES": ",".join(devices), "SKIPSTEP_DEVICE": f"cuda:{rank}"}
    return {**env, **values}


def _die_with_parent() -> None:
    """In a rank, before it runs: killed if the supervisor dies, so that no rank outlives its group."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class WorkerGroup:
    model: str
    devices: list[str]
    # Rank 0's command, and the others'.
    leader: list[str]
    follower: list[str]
    env: dict[str, str]
    stop_seconds: float
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    started_at: float = 0.0
    failures: int = 0

    def start(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        commands = [self.leader, *[self.follower] * (len(self.devices) - 1)]
        self.processes = [
            subprocess.Popen(
                command,
                env=rank_env(self.env, self.devices, rank, port),
                preexec_fn=_die_with_parent,
            )
            for rank, command in enumerate(commands)
        ]
        self.started_at = time.monotonic()
        pids = ", ".join(f"rank {rank} pid {process.pid}" for rank, process in enumerate(self.processes))
        say(f"{self.model} on {','.join(self.devices)}: started {pids} (rendezvous on port {port})")

    def exited(self) -> tuple[int, int] | None:
        """(rank, status) of a rank that exited, if any."""
        for rank, process in enumerate(self.processes):
            code = process.poll()
            if code is not None:
                return rank, code
        return None

    def kill(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
        for process in self.processes:
            process.wait()

    def stop(self) -> None:
        """Rank 0 first, within ``stop_seconds`` (it tells the others to leave), then whatever is left."""
        leader = self.processes[0]
        if leader.poll() is None:
            leader.terminate()
            try:
                leader.wait(timeout=self.stop_seconds)
            except subprocess.TimeoutExpired:
                say(f"rank 0 (pid {leader.pid}) did not stop within {self.stop_seconds:g} s; killing it")
        deadline = time.monotonic() + 10
        for process in self.processes[1:]:
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
        self.kill()

    def supervise(self) -> int:
        """Run the group until SIGTERM or SIGINT, restarting it whenever a rank exits."""
        restart_at: float | None = None

        def check(now: float) -> None:
            nonlocal restart_at
            if restart_at is None and (exit := self.exited()) is not None:
                rank, code = exit
                self.kill()
                self.failures, backoff = restart_delay(now - self.started_at, self.failures)
                say(
                    f"{self.model}: rank {rank} (pid {self.processes[rank].pid}) exited with status {code} after "
                    f"{now - self.started_at:.0f} s; killed the other ranks, restarting the group in {backoff:g} s"
                )
                restart_at = now + backoff
            if restart_at is not None and now >= restart_at:
                restart_at = None
                self.start()

        until_signalled(self.start, check, 0.1)
        say(f"{self.model}: stopping")
        self.stop()
        return 0


def say(line: str) -> None:
    print(f"skipstep worker: {line}", file=sys.stderr, flush=True)
