"""Two-expert models (Wan2.2 A14B): which denoising steps each transformer runs, known without loading a model.

The pipeline runs ``transformer`` (the high-noise expert) while the timestep is at least ``boundary_ratio`` of
the training timesteps, then ``transformer_2`` (the low-noise one). Each expert's CFG branches are cache
branches of their own, named ``<expert>/<branch>``: nothing cached under one expert is reused under the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

HIGH_NOISE, LOW_NOISE = "high_noise", "low_noise"
# Where a scheduler's first flow sigma is 1, diffusers' UniPC scheduler lowers it by this much.
_FIRST_SIGMA_EPSILON = 1e-6


def qualified(expert: str, branch: str) -> str:
    """A cache branch's name: the CFG branch, under its expert where there are two."""
    return f"{expert}/{branch}" if expert else branch


def flow_timesteps(num_steps: int, shift: float, num_train_timesteps: int = 1000) -> list[int]:
    """The timesteps of diffusers' UniPCMultistepScheduler with ``use_flow_sigmas`` (Wan's scheduler), as it
    computes them: linear sigmas from 1, shifted, times the training timesteps, truncated to integers."""
    step = (1 / num_train_timesteps - 1) / num_steps
    sigmas = [k * step + 1.0 for k in range(num_steps)]
    shifted = [shift * s / (1 + (shift - 1) * s) for s in sigmas]
    if abs(shifted[0] - 1) < _FIRST_SIGMA_EPSILON:
        shifted[0] -= _FIRST_SIGMA_EPSILON
    return [int(s * num_train_timesteps) for s in shifted]


def high_noise_steps(timesteps: Sequence[float], boundary_ratio: float, num_train_timesteps: int) -> int:
    """How many of the steps the high-noise expert runs: those whose timestep is at or above the boundary."""
    return sum(1 for t in timesteps if t >= boundary_ratio * num_train_timesteps)


def expert_steps(pipeline: dict[str, Any], num_steps: int) -> list[tuple[str, range]] | None:
    """Each expert and its steps: ``[("", all steps)]`` for one transformer; None where the pipeline's
    description does not tell the timesteps (a scheduler other than Wan's flow UniPC)."""
    boundary = pipeline.get("boundary_ratio")
    if boundary is None:
        return [("", range(num_steps))]
    if not pipeline.get("use_flow_sigmas", True) or "flow_shift" not in pipeline:
        return None
    train = pipeline.get("num_train_timesteps", 1000)
    high = high_noise_steps(flow_timesteps(num_steps, pipeline["flow_shift"], train), boundary, train)
    return split(num_steps, high)


def split(num_steps: int, high: int) -> list[tuple[str, range]]:
    """The two experts' steps, the high-noise expert's first; an expert that runs no step is left out."""
    experts = [(HIGH_NOISE, range(0, high)), (LOW_NOISE, range(high, num_steps))]
    return [(name, steps) for name, steps in experts if len(steps)]
