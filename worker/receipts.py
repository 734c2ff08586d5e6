"""Fidelity receipts on a worker's idle time: the frames of a sampled cached job are kept (8-bit, a few jobs at
most); once the worker has nothing queued for its model, it re-runs the job uncached with the same seed and records
the fidelity (core.jobs.receipts). A re-run gives way to real work: it stops at the next denoising step once a job
of the model is queued, and is tried again when the worker is next idle."""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sqlalchemy import func, select

from core.caching.none import NoCache
from core.contract.request import JobRequest
from core.contract.shapes import Shape
from core.db import Job, JobStatus, session_scope
from core.fidelity import delivered_fidelity
from core.generation import GenerationResult, Progress, run
from core.jobs import receipts
from core.models import LoadedModel
from core.settings import Settings
from core.video import to_uint8
from worker.app import enqueue_delivery
from worker.group import Group, Rerun

log = logging.getLogger("skipstep.worker")
# Sampled jobs whose frames a worker keeps at once; a job sampled beyond this gets no receipt.
MAX_PENDING = 4


@dataclass(frozen=True)
class Pending:
    job_id: uuid.UUID
    request: JobRequest
    shape: Shape
    frames: np.ndarray


class GiveWay(Exception):
    """A real job is waiting: the re-run stops."""


class Receipts:
    def __init__(
        self, settings: Settings, model: LoadedModel, model_name: str, source: str, group: Group | None = None
    ) -> None:
        self.settings, self.model, self.model_name, self.source = settings, model, model_name, source
        # A worker spanning several devices re-runs on every rank, as it runs jobs.
        self.group = group
        self.pending: dict[uuid.UUID, Pending] = {}

    def sample(self, job_id: uuid.UUID, request: JobRequest, result: GenerationResult) -> None:
        """Keep a succeeded job's frames for a receipt, if it is sampled: a cached job not already compared."""
        if result.cache.strategy == "none" or request.compare or len(self.pending) >= MAX_PENDING:
            return
        if random.random() >= self.settings.receipt_sample_rate:
            return
        self.pending[job_id] = Pending(job_id, request, result.shape, to_uint8(result.frames))
        log.info("job %s: sampled for a fidelity receipt", job_id)

    def run_while_idle(self, stopping: Callable[[], bool]) -> None:
        """Measure the pending receipts, one after another, while no job of the model is queued."""
        while self.pending and not stopping() and not self._jobs_waiting():
            pending = next(iter(self.pending.values()))

            def give_way(_progress: Progress) -> None:
                if stopping() or self._jobs_waiting():
                    raise GiveWay

            try:
                result = self._rerun(pending, give_way)
            except GiveWay:
                log.info(
                    "job %s: receipt re-run gave way to a queued job; it runs when the worker is idle again",
                    pending.job_id,
                )
                return
            except Exception:
                if self.group is not None:
                    self.group.fault(f"job {pending.job_id}: the receipt's re-run failed")
                log.exception("job %s: the receipt's re-run failed; dropped", pending.job_id)
                del self.pending[pending.job_id]
                continue
            del self.pending[pending.job_id]
            psnr, ssim = delivered_fidelity(pending.frames, to_uint8(result.frames))
            with session_scope(self.settings.database) as session:
                receipt, delivery = receipts.record(
                    session,
                    pending.job_id,
                    self.source,
                    psnr,
                    ssim,
                    result.timings.denoising,
                    self.settings.receipt_margin_db,
                    self.settings.public_url,
                )
                shortfall, predicted = receipt.shortfall, receipt.predicted_psnr
            enqueue_delivery(delivery)
            log.log(
                logging.WARNING if shortfall else logging.INFO,
                "job %s: receipt PSNR %.2f dB, SSIM %.4f (predicted %s)%s",
                pending.job_id,
                psnr,
                ssim,
                "none" if predicted is None else f"{predicted:.2f} dB",
                " — below the frontier's prediction" if shortfall else "",
            )

    def _rerun(self, pending: Pending, give_way: Callable[[Progress], None]) -> GenerationResult:
        if self.group is None:
            return run(self.model, pending.request, pending.shape, NoCache(), on_step=give_way)
        self.group.order(Rerun(pending.request, pending.shape))
        return run(self.model, pending.request, pending.shape, NoCache(), on_step=self.group.leading(give_way))

    def _jobs_waiting(self) -> bool:
        with session_scope(self.settings.database) as session:
            waiting = session.scalar(
                select(func.count()).where(Job.model == self.model_name, Job.status == JobStatus.queued)
            )
        return bool(waiting)
