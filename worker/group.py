"""A worker spanning several devices: one process per device (a rank), started together by
``skipstep worker --gpus`` (core.worker_group) with torchrun's variables (RANK, WORLD_SIZE, MASTER_PORT).

Rank 0 is the worker the queue knows: it claims jobs, heartbeats, writes results and uploads. The other
ranks (worker.follower) wait for what rank 0 broadcasts — a job's generation, a receipt's re-run, or the
end — and run the same generation with it, sharing each transformer call (core.parallel). At every step
boundary rank 0 broadcasts whether the run goes on (cancel, lease lost, time limit, hand-back), so every
rank stops at the same step. Orders and stops travel over a gloo group of their own: a rank idle for hours
waits on a socket, not in a GPU collective that would time out.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from core import parallel
from core.jobs.workers import Device
from core.models import LoadedModel, load_model
from core.models.loading import resolve_device
from core.models.presets import PRESETS
from core.settings import Settings
from worker.device import describe

log = logging.getLogger("skipstep.worker")

# The exit status of a rank whose group broke (a peer died, a collective failed): its supervisor restarts the group.
EXIT_GROUP_FAULT = 76
# Orders wait this long at most: an idle group waits for its next job.
IDLE_TIMEOUT = timedelta(days=365)


class Stopped(Exception):
    """Rank 0 stopped the run at this step; on the other ranks the run ends here."""


@dataclass(frozen=True)
class Generate:
    """Run ``core.generation.generate`` with these arguments."""

    request: Any
    source: Any = None
    image: Any = None


@dataclass(frozen=True)
class Rerun:
    """Run ``core.generation.run`` uncached (a receipt's re-run)."""

    request: Any
    shape: Any


@dataclass(frozen=True)
class Leave:
    """The group shuts down."""


def membership() -> tuple[int, int, int] | None:
    """(rank, world size, rendezvous port) from torchrun's variables, or None for a worker on one device."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) < 2:
        return None
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["MASTER_PORT"])


class Group:
    """This rank's side of the group: the orders channel, the step agreement and the devices of every rank."""

    def __init__(self, rank: int, world_size: int, mode: str, device: Device) -> None:
        self.rank, self.world_size, self.mode = rank, world_size, mode
        self.control = dist.new_group(backend="gloo", timeout=IDLE_TIMEOUT)
        names: list[Any] = [None] * world_size
        dist.all_gather_object(names, device.name, group=self.control)
        # What the worker's row says: rank 0's device, and every rank's.
        self.device = Device(device.name, device.description, device.visible_devices, tuple(names), mode)

    @property
    def leader(self) -> bool:
        return self.rank == 0

    # -- rank 0 -------------------------------------------------------------------------------------

    def order(self, order: Generate | Rerun | Leave) -> None:
        dist.broadcast_object_list([order], src=0, group=self.control)

    def leading(self, callback: Callable[..., None] | None) -> Callable[..., None]:
        """Rank 0's step callback: ``callback``'s verdict (it raises to stop the run) is told to every rank first."""

        def step(*args: Any) -> None:
            try:
                if callback is not None:
                    callback(*args)
            except BaseException:
                self._agree(stop=True)
                raise
            self._agree(stop=False)

        return step

    # -- the other ranks ----------------------------------------------------------------------------

    def next_order(self) -> Generate | Rerun | Leave:
        received: list[Any] = [None]
        dist.broadcast_object_list(received, src=0, group=self.control)
        return received[0]

    def following(self, *_args: Any) -> None:
        """The other ranks' step callback: stop where rank 0 stopped."""
        if self._agree(stop=False):
            raise Stopped

    def _agree(self, stop: bool) -> bool:
        verdict = torch.tensor([int(stop)])
        dist.broadcast(verdict, src=0, group=self.control)
        return bool(verdict.item())

    def close(self) -> None:
        """Rank 0 tells the others to leave; every rank leaves the process group."""
        if self.leader:
            try:
                self.order(Leave())
            except Exception:
                log.warning("the group's other ranks are gone already")
        parallel.close_group()

    def fault(self, what: str) -> None:
        """A collective failed or a rank went astray: the group cannot go on together. Exit without writing
        anything; the supervisor restarts the group, and a job this rank held is retried once its lease lapses."""
        log.exception("rank %d of %d: %s; the group restarts", self.rank, self.world_size, what)
        logging.shutdown()
        os._exit(EXIT_GROUP_FAULT)


def load(settings: Settings, source: str, name: str) -> tuple[LoadedModel, Group | None]:
    """Load model ``name``: on this process's device alone, or as a rank of a group (joined first), with the
    model's parallelism (SKIPSTEP_PARALLELISM) enabled."""
    member = membership()
    if member is None:
        return load_model(source, settings, name), None
    rank, world_size, port = member
    parallel.init_group(rank, world_size, port, resolve_device(settings.device))
    # A preset is built on first use, into one directory: rank 0 builds it while the others wait.
    if source in PRESETS and rank > 0:
        dist.barrier()
    model = load_model(source, settings, name)
    if source in PRESETS and rank == 0:
        dist.barrier()
    mode = settings.parallelism_of(name)
    model.parallel = parallel.enable(model.transformer, mode)
    group = Group(rank, world_size, mode, describe(model.device))
    log.info("rank %d of %d: model %s on %s, %s parallelism", rank, world_size, name, model.device, mode)
    return model, group
