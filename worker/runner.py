"""Runs jobs in one worker process: the model is loaded once, then each job is claimed, denoised
with its cache strategy, encoded, stored and recorded. A heartbeat thread keeps the claim alive,
reports the worker and sweeps up jobs that a crash or a broker outage left behind."""

from __future__ import annotations

import logging
import math
import os
import socket
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import torch
from sqlalchemy.orm import Session

from core.caching.base import ScheduleFigures
from core.caching.profiles import ProfileStore
from core.contract.request import GenerationRequest
from core.contract.strategies import CacheSpec
from core.db import Job, JobStatus, session_scope, utcnow
from core.errors import CacheConfigError, InvalidRequest
from core.generation import GenerationResult, Progress, generate
from core.jobs import repository, workers
from core.models import load_model
from core.settings import Settings
from core.storage import StorageError, storage_from, video_key
from core.video import encode_mp4, to_uint8
from core.webhooks.events import STARTED, event_for, record_event
from worker.app import enqueue_delivery, enqueue_job

log = logging.getLogger("skipstep.worker")


class JobCanceled(Exception):
    """Raised from the step callback to stop the pipeline at a step boundary."""


class JobRunner:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.lease = timedelta(seconds=settings.job_lease_seconds)
        started = time.perf_counter()
        self.model = load_model(settings.model, settings)
        log.info(
            "loaded model %s on %s in %.1f s (worker %s)",
            settings.model,
            self.model.device,
            time.perf_counter() - started,
            self.worker_id,
        )
        self.profiles = ProfileStore(settings.profiles_dir)
        self.storage = storage_from(settings)
        self.storage.ensure()
        with session_scope(settings.database) as session:
            workers.register(
                session, self.worker_id, socket.gethostname(), os.getpid(), settings.model, str(self.model.device)
            )
        self.current: uuid.UUID | None = None
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name="skipstep-heartbeat", daemon=True)
        self._heartbeat.start()

    def close(self) -> None:
        self._stop.set()
        self._heartbeat.join(timeout=5)
        with session_scope(self.settings.database) as session:
            workers.stopped(session, self.worker_id)

    def run(self, job_id: uuid.UUID) -> None:
        with session_scope(self.settings.database) as session:
            job = repository.claim(session, job_id, self.worker_id, self.lease)
            if job is None:
                log.info("job %s: not claimable (finished, canceled or held by a live worker); skipped", job_id)
                return
            workers.set_current(session, self.worker_id, job_id)
            started = record_event(session, job, STARTED, self.settings.public_url)
        enqueue_delivery(started)
        self.current = job_id
        log.info("job %s: claimed (attempt %d)", job_id, job.attempts)
        try:
            self._run(job)
        finally:
            self.current = None
            with session_scope(self.settings.database) as session:
                workers.set_current(session, self.worker_id, None, done=True)

    def _run(self, job: Job) -> None:
        steps = Steps(self, job)
        try:
            request = GenerationRequest(
                prompt=job.prompt,
                negative_prompt=job.negative_prompt,
                width=job.width,
                height=job.height,
                num_frames=job.num_frames,
                num_inference_steps=job.num_inference_steps,
                guidance_scale=job.guidance_scale,
                seed=job.seed,
                fps=job.fps,
                cache=CacheSpec(strategy=job.cache_strategy, params=job.cache_params, profile=job.cache_profile),
                compare=job.compare,
            )
            result = generate(self.model, request, self.profiles, steps.planned, steps.stepped)
        except JobCanceled:
            self._finish(job, JobStatus.canceled)
            return
        except (InvalidRequest, CacheConfigError) as exc:
            self._finish(job, JobStatus.failed, error_code="invalid_request", error_message=str(exc))
            return
        except Exception as exc:
            log.exception("job %s: generation failed", job.id)
            self._finish(job, JobStatus.failed, error_code="generation_failed", error_message=_describe(exc))
            return

        encoding = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory(prefix="skipstep-") as scratch:
                path = Path(scratch) / "video.mp4"
                encode_mp4(to_uint8(result.frames), path, result.fps)
                uploading = time.perf_counter()
                size = self.storage.put(video_key(job.id), path)
        except (StorageError, OSError) as exc:
            log.exception("job %s: storing the video failed", job.id)
            self._finish(job, JobStatus.failed, error_code="storage_failed", error_message=_describe(exc))
            return
        stored = time.perf_counter()

        metrics = _metrics(job, result, steps, encode=uploading - encoding, upload=stored - uploading)
        self._finish(
            job,
            JobStatus.succeeded,
            video_key=video_key(job.id),
            video_bytes=size,
            video_seconds=result.shape.num_frames / result.fps,
            denoise_seconds=result.timings.denoising,
            speedup=metrics["speedup"],
            metrics=metrics,
            progress_step=result.shape.num_inference_steps,
            computed_calls=sum(branch.computed for branch in result.cache.branches.values()),
            skipped_calls=sum(branch.skipped for branch in result.cache.branches.values()),
        )

    def _finish(self, job: Job, status: JobStatus, **values: Any) -> None:
        with session_scope(self.settings.database) as session:
            finished = repository.finish(session, job.id, self.worker_id, status, **values)
            event = record_event(session, finished, event_for(status), self.settings.public_url) if finished else None
        enqueue_delivery(event)
        if finished is None:
            log.warning("job %s: lost the claim before finishing; its result is dropped", job.id)
        else:
            log.info("job %s: %s", job.id, status.value)

    def _beat(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_seconds):
            try:
                with session_scope(self.settings.database) as session:
                    workers.seen(session, self.worker_id)
                    if self.current is not None:
                        repository.renew_lease(session, self.current, self.worker_id, self.lease)
                self.sweep()
            except Exception:
                log.exception("heartbeat failed; retrying")

    def sweep(self) -> None:
        """Queue what was never queued, and retake or end jobs whose worker died."""
        with session_scope(self.settings.database) as session:
            requeue = list(repository.unsent(session, older_than=timedelta(seconds=self.settings.heartbeat_seconds)))
            events = []
            for job in repository.lapsed(session):
                if job.cancel_requested_at is not None:
                    events.append(self._end_lapsed(session, job, JobStatus.canceled))
                elif job.attempts >= self.settings.max_job_attempts:
                    lost = f"the worker running this job stopped responding {job.attempts} times"
                    events.append(
                        self._end_lapsed(session, job, JobStatus.failed, error_code="worker_lost", error_message=lost)
                    )
                elif repository.requeue_lapsed(session, job.id):
                    log.warning("job %s: worker %s stopped responding; requeued", job.id, job.worker_id)
                    requeue.append(job.id)
        for delivery_id in events:
            enqueue_delivery(delivery_id)
        for job_id in requeue:
            enqueue_job(job_id)
            with session_scope(self.settings.database) as session:
                repository.mark_enqueued(session, job_id)

    def _end_lapsed(self, session: Session, job: Job, status: JobStatus, **values: Any) -> uuid.UUID | None:
        """End a job whose worker died; the id of its webhook delivery, if it has one."""
        if not repository.end_lapsed(session, job.id, status, **values):
            return None
        return record_event(session, job, event_for(status), self.settings.public_url)


class Steps:
    """The pipeline's per-step callback: throttled progress writes, cancellation, step times."""

    def __init__(self, runner: JobRunner, job: Job) -> None:
        self.runner, self.job = runner, job
        self.cuda = runner.model.device.type == "cuda"
        self.denoising_at: datetime | None = None
        self.step_seconds: list[float] = []
        self._last_step = self._last_write = time.perf_counter()

    def planned(self, _figures: ScheduleFigures | None) -> None:
        self.denoising_at = utcnow()
        self._last_step = time.perf_counter()
        self._write(progress_step=0, progress_total=self.job.num_inference_steps, computed_calls=0, skipped_calls=0)

    def stepped(self, progress: Progress) -> None:
        if self.cuda:
            # Step times are only true if the device has finished the step's work.
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.step_seconds.append(now - self._last_step)
        self._last_step = now
        if progress.step == progress.total:
            return
        with session_scope(self.runner.settings.database) as session:
            if repository.cancel_requested(session, self.job.id):
                raise JobCanceled
            if now - self._last_write >= self.runner.settings.progress_seconds:
                self._last_write = now
                repository.record_progress(
                    session,
                    self.job.id,
                    self.runner.worker_id,
                    progress_step=progress.step,
                    computed_calls=progress.computed_calls,
                    skipped_calls=progress.skipped_calls,
                )

    def _write(self, **values: int) -> None:
        with session_scope(self.runner.settings.database) as session:
            repository.record_progress(session, self.job.id, self.runner.worker_id, **values)


def _metrics(job: Job, result: GenerationResult, steps: Steps, encode: float, upload: float) -> dict[str, Any]:
    report = result.cache
    fidelity = result.fidelity
    to_denoising = (steps.denoising_at - job.created_at).total_seconds() if steps.denoising_at else None
    return {
        "strategy": report.strategy,
        "params": report.params,
        "profile": report.profile,
        "steps_total": report.steps_total,
        "branches": {name: branch.model_dump() for name, branch in report.branches.items()},
        "denoise_seconds": report.denoise_seconds,
        "seconds_per_step": report.denoise_seconds / report.steps_total,
        "seconds_per_computed_step": report.seconds_per_computed_step,
        "estimated_full_seconds": report.estimated_full_seconds,
        # Against the real uncached run where the job asked for one, else the engine's estimate.
        "speedup": fidelity.measured_speedup if fidelity else report.speedup,
        "speedup_basis": "measured" if fidelity else "estimated",
        "estimated_speedup": report.speedup,
        "ideal_speedup": report.ideal_speedup,
        "fidelity": _json_safe(fidelity.model_dump()) if fidelity else None,
        "step_seconds": [round(seconds, 4) for seconds in steps.step_seconds],
        "timings": {
            "queued": (job.started_at - job.created_at).total_seconds() if job.started_at else None,
            # From POST /jobs to the first denoising step starting (prompt encoded, schedule planned).
            "submit_to_denoising": to_denoising,
            "text_encoding": result.timings.text_encoding,
            "denoising": result.timings.denoising,
            "vae_decode": result.timings.vae_decode,
            "mp4_encoding": encode,
            "upload": upload,
        },
    }


def _json_safe(values: dict[str, float]) -> dict[str, float | None]:
    """Identical frames have an infinite PSNR, which JSON (and PostgreSQL's json type) cannot hold: null."""
    return {name: value if math.isfinite(value) else None for name, value in values.items()}


def _describe(exc: BaseException) -> str:
    return f"{exc.__class__.__name__}: {exc}"
