"""A rank other than 0 of a worker spanning several devices (worker.group): ``python -m worker.follower MODEL``,
started by ``skipstep worker --gpus`` (core.worker_group) with torchrun's variables. It loads the model, then
runs what rank 0 orders until rank 0 says the group ends. It touches neither the queue nor the database.

SIGTERM and SIGINT are ignored: a running job may finish within the shutdown grace period, which rank 0
enforces; the supervisor ends this process once rank 0 has stopped.
"""

from __future__ import annotations

import logging
import signal
import sys

from core.caching.none import NoCache
from core.caching.profiles import ProfileStore
from core.errors import SkipstepError
from core.generation import generate, run
from core.models.compile import compile_and_warm_up
from core.settings import get_settings
from worker.group import Generate, Leave, Rerun, Stopped, load

log = logging.getLogger("skipstep.worker")


def main(model_name: str) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s: %(levelname)s/follower] %(message)s")
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    settings = get_settings()
    model, group = load(settings, settings.model_sources[model_name], model_name)
    if group is None:
        raise SystemExit("worker.follower runs as a rank of a group: RANK, WORLD_SIZE and MASTER_PORT are unset")
    if settings.compiles_on(model.device.type):
        compile_and_warm_up(model, settings)
    profiles = ProfileStore(settings.profiles_dir)
    while not isinstance(order := group.next_order(), Leave):
        try:
            if isinstance(order, Generate):
                generate(
                    model,
                    order.request,
                    profiles,
                    group.following,
                    group.following,
                    order.source,
                    order.image,
                )
            elif isinstance(order, Rerun):
                run(model, order.request, order.shape, NoCache(), on_step=group.following)
        except (Stopped, SkipstepError):
            # Stopped where rank 0 stopped, or refused as rank 0 refused it (the same checks on the same request).
            continue
        except Exception:
            group.fault("a run failed on this rank")
    group.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
