"""``none``: compute every step. The baseline, still counted and timed like any strategy."""

from collections.abc import Sequence

from core.caching.base import TimestepCache


class NoCache(TimestepCache):
    name = "none"
    reuses = False

    def signals(self) -> dict[str, Sequence[float]]:
        return {branch: [0.0] * self.plan.num_steps for branch in self.plan.branches}
