"""Measured frontiers in the database: saved by ``skipstep frontier``, read by ``GET /models``, the dashboard and
``auto`` jobs at submit, and kept true by fidelity receipts (core.jobs.receipts)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from itertools import groupby

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from core.contract.frontier import MAX_SIZE_DISTANCE, Frontier, FrontierPoint, mark_pareto
from core.contract.shapes import Shape
from core.db import FrontierPointRow, utcnow


def save(
    session: Session,
    model: str,
    shape: Shape,
    guidance_scale: float,
    points: Sequence[FrontierPoint],
    adapters: str = "",
) -> None:
    """Replace the frontier of ``model`` (a model key) at ``shape``, run with the LoRA adapters ``adapters``
    (core.contract.loras.adapter_key; empty: the base model), with ``points``, receipts included."""
    session.execute(delete(FrontierPointRow).where(*_at(model, shape, adapters)))
    now = utcnow()
    for point in points:
        session.add(
            FrontierPointRow(
                model=model,
                width=shape.width,
                height=shape.height,
                num_frames=shape.num_frames,
                num_inference_steps=shape.num_inference_steps,
                guidance_scale=guidance_scale,
                adapters=adapters,
                strategy=point.strategy,
                params=point.params,
                setting=point.setting,
                computed_calls=point.computed_calls,
                total_calls=point.total_calls,
                speedup=point.speedup,
                denoise_seconds=point.denoise_seconds,
                baseline_denoise_seconds=point.baseline_denoise_seconds,
                psnr_min=point.psnr,
                psnr_mean=point.psnr_mean,
                ssim_min=point.ssim,
                ssim_mean=point.ssim_mean,
                samples=point.samples,
                receipts=point.receipts,
                measured_at=now,
                updated_at=now,
            )
        )


def frontiers(session: Session, model: str) -> list[Frontier]:
    """Every frontier measured for ``model`` (a model key), smallest shape first, Pareto points marked."""
    rows = session.scalars(
        select(FrontierPointRow)
        .where(FrontierPointRow.model == model)
        .order_by(
            FrontierPointRow.num_inference_steps,
            FrontierPointRow.adapters,
            FrontierPointRow.width * FrontierPointRow.height * FrontierPointRow.num_frames,
            FrontierPointRow.width,
            FrontierPointRow.num_frames,
            FrontierPointRow.speedup,
        )
    ).all()
    shape_of = lambda row: (row.width, row.height, row.num_frames, row.num_inference_steps, row.adapters)  # noqa: E731
    found = []
    for (width, height, frames, steps, adapters), group in groupby(rows, key=shape_of):
        members = list(group)
        found.append(
            Frontier(
                model=model,
                width=width,
                height=height,
                num_frames=frames,
                num_inference_steps=steps,
                guidance_scale=members[0].guidance_scale,
                adapters=adapters,
                measured_at=min(row.measured_at for row in members),
                points=mark_pareto([_point(row) for row in members]),
            )
        )
    return found


def covering(session: Session, model: str, shape: Shape, adapters: str = "") -> tuple[Frontier | None, str]:
    """The frontier that stands for a job of ``model`` at ``shape`` with the LoRA adapters ``adapters``: measured
    with them if one is (else the base model's, said in the note), at the job's step count, at the nearest size
    within a factor 4 in tokens (steps first, then size, as calibration profiles are picked); else None and why.
    The string is why there is none, or the note on the one chosen."""
    every = frontiers(session, model)
    measured = [f for f in every if f.adapters == adapters] or [f for f in every if not f.adapters]
    if not measured:
        return None, f"none measured for {model}"
    note = (
        f"no frontier was measured with LoRAs {adapters}; the base model's" if measured[0].adapters != adapters else ""
    )
    same_steps = [f for f in measured if f.num_inference_steps == shape.num_inference_steps]
    if not same_steps:
        steps = sorted({f.num_inference_steps for f in measured})
        return None, f"{model} has frontiers at {', '.join(map(str, steps))} steps, not {shape.num_inference_steps}"
    nearest = min(same_steps, key=lambda f: f.distance(shape.width, shape.height, shape.num_frames))
    if nearest.distance(shape.width, shape.height, shape.num_frames) > MAX_SIZE_DISTANCE:
        return None, (
            f"the nearest frontier of {model} ({nearest.width}x{nearest.height}x{nearest.num_frames}) is over 4 "
            "times smaller or larger than the job"
        )
    return nearest, note


def point(session: Session, point_id: str | uuid.UUID) -> FrontierPointRow | None:
    return session.get(FrontierPointRow, uuid.UUID(str(point_id)))


def point_at(session: Session, model: str, shape: Shape, setting: str, adapters: str = "") -> FrontierPointRow | None:
    """The point measured for exactly this model, shape, adapter set and setting, if any."""
    return session.scalar(
        select(FrontierPointRow).where(*_at(model, shape, adapters), FrontierPointRow.setting == setting)
    )


def fold(row: FrontierPointRow, psnr: float, ssim: float) -> None:
    """A receipt's fidelity becomes one more sample of its point: the worst case and the means follow it."""
    n = row.samples
    row.psnr_mean = (row.psnr_mean * n + psnr) / (n + 1)
    row.ssim_mean = (row.ssim_mean * n + ssim) / (n + 1)
    row.psnr_min = min(row.psnr_min, psnr)
    row.ssim_min = min(row.ssim_min, ssim)
    row.samples = n + 1
    row.receipts += 1
    row.updated_at = utcnow()


def _at(model: str, shape: Shape, adapters: str) -> tuple:
    return (
        FrontierPointRow.model == model,
        FrontierPointRow.adapters == adapters,
        FrontierPointRow.width == shape.width,
        FrontierPointRow.height == shape.height,
        FrontierPointRow.num_frames == shape.num_frames,
        FrontierPointRow.num_inference_steps == shape.num_inference_steps,
    )


def _point(row: FrontierPointRow) -> FrontierPoint:
    return FrontierPoint(
        id=str(row.id),
        strategy=row.strategy,
        params=row.params,
        computed_calls=row.computed_calls,
        total_calls=row.total_calls,
        speedup=row.speedup,
        denoise_seconds=row.denoise_seconds,
        baseline_denoise_seconds=row.baseline_denoise_seconds,
        psnr=row.psnr_min,
        psnr_mean=row.psnr_mean,
        ssim=row.ssim_min,
        ssim_mean=row.ssim_mean,
        samples=row.samples,
        receipts=row.receipts,
    )
