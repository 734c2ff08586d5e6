"""Fidelity receipts: a sampled cached job's uncached re-run with the same seed, measured against the job's own
frames on idle worker time (worker.receipts). The measurement attaches to the job (``metrics.fidelity``, a
``job.fidelity`` webhook event), becomes one more sample of the frontier point that predicted it, and is compared
with that prediction."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.contract.frontier import setting_key
from core.contract.jobs import EventType
from core.contract.loras import adapter_key
from core.contract.models import model_key
from core.contract.shapes import Shape
from core.db import FidelityReceipt, FrontierPointRow, Job
from core.jobs import frontier
from core.webhooks.events import record_event


@dataclass(frozen=True)
class Tally:
    total: int
    shortfalls: int


def record(
    session: Session,
    job_id: uuid.UUID,
    source: str,
    psnr: float,
    ssim: float,
    baseline_seconds: float,
    margin_db: float,
    public_url: str,
) -> tuple[FidelityReceipt, uuid.UUID | None]:
    """Attach a receipt's measurement to its job, fold it into the frontier point that predicted the job (the one
    `auto` chose, else the point measured for the job's exact shape and setting) and judge it against that
    prediction; the receipt and the webhook delivery to send once committed."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is None or job.metrics is None:
        raise ValueError(f"job {job_id} has no metrics to attach a receipt to")
    point = _predicting_point(session, job, source)
    predicted_psnr = point.psnr_min if point is not None else None
    predicted_ssim = point.ssim_min if point is not None else None
    shortfall = predicted_psnr is not None and psnr < predicted_psnr - margin_db
    if point is not None and point.adapters == adapter_key(job.loras or ()):
        # A job with LoRA adapters judged by the base model's frontier is not one more sample of it.
        frontier.fold(point, psnr, ssim)
    receipt = FidelityReceipt(
        job_id=job.id,
        model=job.model,
        strategy=job.cache_strategy,
        point_id=point.id if point is not None else None,
        psnr=psnr,
        ssim=ssim,
        predicted_psnr=predicted_psnr,
        predicted_ssim=predicted_ssim,
        shortfall=shortfall,
    )
    session.add(receipt)
    metrics: dict[str, Any] = dict(job.metrics)
    metrics["fidelity"] = {
        "psnr": psnr,
        "ssim": ssim,
        "baseline_denoise_seconds": baseline_seconds,
        "measured_speedup": baseline_seconds / metrics["denoise_seconds"],
        "basis": "receipt",
        "predicted_psnr": predicted_psnr,
        "predicted_ssim": predicted_ssim,
        "shortfall": shortfall,
    }
    session.execute(update(Job).where(Job.id == job.id).values(metrics=metrics, version=Job.version + 1))
    session.flush()
    return receipt, record_event(session, job, EventType.fidelity, public_url)


def _predicting_point(session: Session, job: Job, source: str) -> FrontierPointRow | None:
    chosen = ((job.expected or {}).get("auto") or {}).get("point")
    if chosen is not None:
        return frontier.point(session, chosen)
    shape = Shape(job.width, job.height, job.num_frames, job.num_inference_steps)
    setting = setting_key(job.cache_strategy, job.cache_params)
    return frontier.point_at(session, model_key(source), shape, setting, adapter_key(job.loras or ()))


def tally(session: Session, model: str, since: datetime) -> Tally:
    """Receipts of ``model``'s jobs measured since ``since``, and how many fell short."""
    total, shortfalls = session.execute(
        select(func.count(), func.count().filter(FidelityReceipt.shortfall)).where(
            FidelityReceipt.model == model, FidelityReceipt.measured_at >= since
        )
    ).one()
    return Tally(total, shortfalls)


def totals(session: Session) -> dict[str, Tally]:
    """Receipts and shortfalls per model, all time (Prometheus counters)."""
    rows = session.execute(
        select(FidelityReceipt.model, func.count(), func.count().filter(FidelityReceipt.shortfall)).group_by(
            FidelityReceipt.model
        )
    ).all()
    return {model: Tally(total, shortfalls) for model, total, shortfalls in rows}
