"""Runs jobs in one GPU worker process: the model is loaded once, then each job is claimed, denoised
with its cache strategy, encoded, stored under its attempt's own key and finished. The pipeline's
step callback checks in with the database at every step (lease, progress, cancel) and raises the
stop the heartbeat thread asked for (timeout, hand-back at shutdown, lost lease)."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import socket
import tempfile
import time
import uuid
from dataclasses import asdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from sqlalchemy import update

from core.caching.base import ScheduleFigures
from core.caching.profiles import ProfileStore
from core.contract.jobs import EventType
from core.contract.request import JobRequest
from core.contract.shapes import Shape
from core.db import Job, JobStatus, session_scope, utcnow
from core.db.session import UNREACHABLE, retrying
from core.errors import CacheConfigError, InvalidRequest
from core.generation import GenerationResult, Progress, generate
from core.images import check_image, fetch, open_checked
from core.jobs import catalogue, dispatch, transitions, workers
from core.jobs.mapping import request_of
from core.jobs.transitions import RunOutcome
from core.lora_files import LoraFiles
from core.models import LoadedModel
from core.models.compile import compile_and_warm_up
from core.models.loading import pipeline_loads
from core.models.lora import Adapters
from core.settings import Settings
from core.storage import Storage, StorageError, input_image_key, storage_from, store_bytes, video_key
from core.video import encode_mp4, to_uint8
from core.webhooks.events import record_event
from worker import dispatcher
from worker.active import ActiveJob, HandedBack, JobCanceled, JobTimedOut, LeaseLost, StopJob
from worker.app import enqueue_delivery
from worker.device import describe as describe_device
from worker.group import Generate, load
from worker.heartbeat import Heartbeat
from worker.receipts import Receipts

log = logging.getLogger("skipstep.worker")


class JobRunner:
    def __init__(self, settings: Settings, model: str) -> None:
        self.settings = settings
        self.model_name = model
        source = settings.model_sources.get(model)
        if source is None:
            configured = ", ".join(settings.model_sources)
            raise RuntimeError(f"model {model!r} is not configured (SKIPSTEP_MODELS: {configured})")
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.lease = timedelta(seconds=settings.job_lease_seconds)
        started = time.perf_counter()
        self.model, self.group = load(settings, source, model)
        loaded = time.perf_counter() - started
        self.profiles = ProfileStore(settings.profiles_dir)
        self.info = self.model.info(self.profiles)
        self.receipts = Receipts(settings, self.model, model, source, self.group)
        self.storage: Storage = storage_from(settings)
        self.storage.ensure()
        lora_files = LoraFiles(settings, self.storage, model)
        self.model.adapters = Adapters(self.model.pipeline, settings.lora_cache_size, lora_files)
        self.active: ActiveJob | None = None
        # When SIGTERM arrived (time.monotonic()); set from a signal handler, so nothing else is done there.
        self.shutdown_requested_at: float | None = None
        device = self.group.device if self.group is not None else describe_device(self.model.device)
        compiles = settings.compiles_on(self.model.device.type)
        # Compiling and warming up its model's blocks: it takes no jobs until that is done.
        self.warming = compiles
        with session_scope(settings.database) as session:
            workers.register(session, self.worker_id, socket.gethostname(), os.getpid(), model, device, compiles)
            catalogue.publish(session, model, self.info, self.worker_id)
        lora_files.register_folder(self.info.lora_modules or {})
        where = device.describe() + (f" ({device.description})" if device.description else "")
        where += f", CUDA_VISIBLE_DEVICES={device.visible_devices}" if device.visible_devices else ""
        log.info("loaded model %s on %s in %.1f s (worker %s)", model, where, loaded, self.worker_id)
        # Beating while it compiles: a long warm-up must not look like a dead worker.
        self.heartbeat = Heartbeat(self)
        self.heartbeat.start()
        if compiles:
            started = time.perf_counter()
            compile_and_warm_up(self.model, settings)
            log.info("model %s: blocks compiled and warmed up in %.1f s", model, time.perf_counter() - started)
            with session_scope(settings.database) as session:
                workers.warm(session, self.worker_id)
            self.warming = False
        dispatcher.dispatch(settings, [model])

    def begin_shutdown(self) -> None:
        """SIGTERM: the running job may finish within the grace period; the heartbeat enforces it."""
        self.shutdown_requested_at = time.monotonic()

    def close(self) -> None:
        self.heartbeat.stop()
        with session_scope(self.settings.database) as session:
            workers.stopped(session, self.worker_id)
        if self.group is not None:
            self.group.close()

    def _deadline(self) -> float:
        """How long database writes of a job are retried through an outage: its lease would lapse then."""
        return time.monotonic() + self.settings.job_lease_seconds

    def run(self, job_id: uuid.UUID) -> None:
        if self.shutdown_requested_at is not None:
            # Shutting down: leave the job to another worker at once.
            with session_scope(self.settings.database) as session:
                dispatch.undispatch(session, [job_id])
            dispatcher.dispatch(self.settings, [self.model_name])
            return
        job = retrying(lambda: self._claim(job_id), self._deadline(), "claiming a job")
        if job is None:
            log.info("job %s: not claimable (finished, canceled, held by a live worker or out of attempts)", job_id)
            return
        self.active = ActiveJob(job)
        log.info("job %s: claimed (attempt %d of %d)", job_id, job.attempts, self.settings.max_job_attempts)
        try:
            self._run(self.active)
        except UNREACHABLE:
            raise
        except Exception as exc:
            # Past generation (encoding, figures): the same job would fail the same way on every attempt,
            # so it ends now instead of being redelivered until its attempts run out.
            log.exception("job %s: failed after generation", job_id)
            self._finish(self.active, JobStatus.failed, error_code="generation_failed", error_message=_describe(exc))
        finally:
            self.active = None
            retrying(self._idle, self._deadline(), "reporting the worker idle")
            if self.shutdown_requested_at is None:
                dispatcher.dispatch(self.settings, [self.model_name])
        self.receipts.run_while_idle(lambda: self.shutdown_requested_at is not None)

    def _first_frame(self, job: Job, shape: Shape) -> Image.Image | None:
        """The job's input image: stored at submit, or fetched now from its URL, checked and stored beside the
        video (InvalidRequest naming ``image`` for one that breaks a rule)."""
        if job.input_image_key is not None:
            return open_checked(self.storage.get(job.input_image_key))
        if job.input_image_url is None:
            return None
        settings = self.settings
        data = fetch(job.input_image_url, settings.image_max_bytes, settings.webhook_allow_private)
        checked = check_image(data, shape, settings.image_max_bytes, settings.image_max_pixels)
        key = input_image_key(job.id)
        store_bytes(self.storage, key, checked, "image/png")
        with session_scope(settings.database) as session:
            session.execute(update(Job).where(Job.id == job.id).values(input_image_key=key))
        job.input_image_key = key
        return open_checked(checked)

    def _claim(self, job_id: uuid.UUID) -> Job | None:
        with session_scope(self.settings.database) as session:
            job = transitions.claim(
                session, job_id, self.worker_id, self.model_name, self.lease, self.settings.max_job_attempts
            )
            if job is None:
                return None
            workers.set_current(session, self.worker_id, job_id)
            started = record_event(session, job, EventType.started, self.settings.public_url)
        enqueue_delivery(started)
        return job

    def _idle(self) -> None:
        with session_scope(self.settings.database) as session:
            workers.set_current(session, self.worker_id, None, done=True)

    def _run(self, active: ActiveJob) -> None:
        job = active.job
        steps = Steps(self, active)
        try:
            request = request_of(job)
            # The model's rules, as the API applies them at submit: a job accepted while nothing described the
            # model (its pending_checks) is checked here, before any work.
            request.shape(self.info.family, self.info.default_shape)
            self.info.check_cache(request.cache)
            source = self._source(job) if job.compare else None
            shape = request.shape(self.model.family.rules, self.model.default_shape)
            image = self._first_frame(job, shape)
            result = self._generate(request, steps, source, image)
        except StopJob as stop:
            self._stopped(active, stop)
            return
        except (InvalidRequest, CacheConfigError) as exc:
            self._finish(active, JobStatus.failed, error_code="invalid_request", error_message=str(exc))
            return
        except Exception as exc:
            if self.group is not None:
                # Under way on every rank: a failure here may be a rank that died; the job is retried.
                self.group.fault(f"job {job.id}: generation failed")
            log.exception("job %s: generation failed", job.id)
            self._finish(active, JobStatus.failed, error_code="generation_failed", error_message=_describe(exc))
            return

        active.alive()
        key = video_key(job.id, job.attempts)
        encoding = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="skipstep-") as scratch:
            path = Path(scratch) / "video.mp4"
            frames = to_uint8(result.frames)
            encode_mp4(frames, path, result.fps)
            active.alive()
            try:
                # A worker frozen past its lease may find here that its job was requeued: it stores nothing.
                steps.held()
            except StopJob as stop:
                self._stopped(active, stop)
                return
            uploading = time.perf_counter()
            try:
                size = self._store(active, key, path)
            except StorageError:
                message = f"the video could not be stored after {self.settings.storage_attempts} attempts"
                self._finish(active, JobStatus.failed, error_code="storage_failed", error_message=message)
                return
        stored = time.perf_counter()

        metrics = _metrics(job, result, steps, encode=uploading - encoding, upload=stored - uploading)
        metrics["frames_sha256"] = hashlib.sha256(frames.tobytes()).hexdigest()
        metrics["engine"] = engine_metrics(self.model, result)
        ended = self._finish(
            active,
            JobStatus.succeeded,
            video_key=key,
            video_bytes=size,
            video_seconds=result.shape.num_frames / result.fps,
            denoise_seconds=result.timings.denoising,
            speedup=metrics["speedup"],
            metrics=metrics,
            progress_step=total_steps(job),
            computed_calls=sum(branch.computed for branch in result.cache.branches.values()),
            skipped_calls=sum(branch.skipped for branch in result.cache.branches.values()),
        )
        if ended is not None and ended.job.status == JobStatus.succeeded:
            self.receipts.sample(job.id, request, result)
        if ended is None or ended.job.status != JobStatus.succeeded:
            # Superseded by another worker, or canceled while finishing: only the holder's video is published.
            self._discard(key)
            if ended is None:
                retrying(lambda: self._end_run(job, RunOutcome.SUPERSEDED), self._deadline(), "recording the run's end")

    def _generate(
        self, request: JobRequest, steps: Steps, source: JobRequest | None, image: Image.Image | None
    ) -> GenerationResult:
        """The job's generation: here, or on every rank of the group, which stops where this rank's callbacks stop."""
        if self.group is None:
            return generate(self.model, request, self.profiles, steps.planned, steps.stepped, source, image)
        self.group.order(Generate(request, source, image))
        planned, stepped = self.group.leading(steps.planned), self.group.leading(steps.stepped)
        return generate(self.model, request, self.profiles, planned, stepped, source, image)

    def _source(self, job: Job) -> JobRequest | None:
        """A remix's source request, its fidelity's baseline."""
        if job.remix_of is None:
            return None
        with session_scope(self.settings.database) as session:
            return request_of(session.get_one(Job, job.remix_of))

    def _store(self, active: ActiveJob, key: str, path: Path) -> int:
        """Upload with retries and backoff; the server's error is logged, never shown to the client."""
        delay, attempt = min(self.settings.storage_retry_seconds, self.settings.storage_retry_max_seconds), 1
        while True:
            try:
                return self.storage.put(key, path)
            except (StorageError, OSError) as exc:
                active.alive()
                if attempt == self.settings.storage_attempts:
                    log.error("job %s: storing the video failed for good: %s", active.job.id, exc)
                    raise StorageError(str(exc)) from exc
                log.warning("job %s: storing the video failed (try %d): %s; retrying", active.job.id, attempt, exc)
                time.sleep(delay)
                active.alive()
                delay, attempt = min(delay * 2, self.settings.storage_retry_max_seconds), attempt + 1

    def _discard(self, key: str) -> None:
        try:
            self.storage.delete(key)
        except (StorageError, OSError) as exc:
            log.warning("could not delete the dropped video %s: %s", key, exc)

    def _stopped(self, active: ActiveJob, stop: StopJob) -> None:
        job = active.job
        if isinstance(stop, JobCanceled):
            self._finish(active, JobStatus.canceled)
        elif isinstance(stop, JobTimedOut):
            self._finish(active, JobStatus.failed, error_code=transitions.TIMEOUT, error_message=str(stop))
        elif isinstance(stop, HandedBack):
            handed = retrying(lambda: self._hand_back(job), self._deadline(), "handing a job back")
            log.warning("job %s: %s at shutdown", job.id, "handed back to the queue" if handed else "already taken")
            dispatcher.dispatch(self.settings, [self.model_name])
        else:
            log.warning("job %s: this worker no longer holds the job; stopped without writing", job.id)
            retrying(lambda: self._end_run(job, RunOutcome.LOST), self._deadline(), "recording the run's end")

    def _hand_back(self, job: Job) -> bool:
        with session_scope(self.settings.database) as session:
            return transitions.hand_back(session, job.id, self.worker_id, job.attempts)

    def _end_run(self, job: Job, outcome: str) -> None:
        with session_scope(self.settings.database) as session:
            transitions.end_run(session, job.id, job.attempts, outcome)

    def _finish(self, active: ActiveJob, status: JobStatus, **values: Any) -> transitions.Ended | None:
        def finish() -> transitions.Ended | None:
            with session_scope(self.settings.database) as session:
                return transitions.finish(
                    session,
                    active.job.id,
                    self.worker_id,
                    active.job.attempts,
                    status,
                    self.settings.public_url,
                    **values,
                )

        ended = retrying(finish, self._deadline(), "finishing a job")
        if ended is None:
            log.warning("job %s: lost the claim before finishing; its result is dropped", active.job.id)
            return None
        enqueue_delivery(ended.delivery)
        log.info("job %s: %s", active.job.id, ended.job.status.value)
        return ended


class Steps:
    """The pipeline's per-step callback: check in (lease, throttled progress, cancel), step times, stops."""

    def __init__(self, runner: JobRunner, active: ActiveJob) -> None:
        self.runner, self.active = runner, active
        self.cuda = runner.model.device.type == "cuda"
        self.denoising_at: datetime | None = None
        self.step_seconds: list[float] = []
        self._last_step = self._last_write = time.perf_counter()

    def planned(self, _figures: ScheduleFigures | None) -> None:
        self.denoising_at = utcnow()
        self._last_step = time.perf_counter()
        self.active.alive()
        self._check_in(progress_step=0, progress_total=total_steps(self.active.job), computed_calls=0, skipped_calls=0)

    def stepped(self, progress: Progress) -> None:
        if self.cuda:
            # Step times are only true if the device has finished the step's work.
            torch.cuda.synchronize()
        now = time.perf_counter()
        if not progress.baseline:
            self.step_seconds.append(now - self._last_step)
        self._last_step = now
        self.active.alive()
        if self.active.stop is not None:
            raise self.active.stop
        if progress.step == progress.total:
            return
        values: dict[str, int] = {}
        if now - self._last_write >= self.runner.settings.progress_seconds:
            self._last_write = now
            values = {
                "progress_step": progress.step,
                "computed_calls": progress.computed_calls,
                "skipped_calls": progress.skipped_calls,
            }
        self._check_in(**values)

    def held(self) -> None:
        """Check in once more after denoising, before the video is stored; raises as a step would."""
        self._check_in()

    def _check_in(self, **values: int) -> None:
        runner, job = self.runner, self.active.job

        def check_in() -> transitions.Renewal | None:
            with session_scope(runner.settings.database) as session:
                return transitions.check_in(
                    session, job.id, runner.worker_id, job.attempts, runner.lease, progress_at=utcnow(), **values
                )

        try:
            renewal = retrying(check_in, runner._deadline(), "checking in a running job")
        except Exception as exc:
            raise LeaseLost(f"the database was unreachable for a whole lease: {exc.__class__.__name__}") from exc
        if renewal is None:
            raise LeaseLost("another worker holds the job")
        if renewal.cancel_requested:
            raise JobCanceled


def total_steps(job: Job) -> int:
    """The steps a job's progress counts: a ``compare`` job runs its uncached baseline after the cached run."""
    return job.num_inference_steps * (2 if job.compare else 1)


def _metrics(job: Job, result: GenerationResult, steps: Steps, encode: float, upload: float) -> dict[str, Any]:
    report = result.cache
    # Speedup is against the uncached run; a remix compared with its source measures only fidelity.
    fidelity = result.fidelity if result.fidelity and result.fidelity.baseline == "uncached" else None
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
        "loras": result.loras,
        "fidelity": _json_safe(result.fidelity.model_dump()) if result.fidelity else None,
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


def engine_metrics(model: LoadedModel, result: GenerationResult) -> dict[str, Any]:
    """How the model ran the job: attention kernel, precision and compiled blocks as set up (each requested
    setting beside what this machine could do), whether the prompt's encoding was reused, and the devices that
    shared the job."""
    return {
        "attention": asdict(model.attention),
        "precision": asdict(model.precision),
        "compiled": model.compiled,
        "prompt_cached": result.prompt_cached,
        "devices": model.parallel.world_size if model.parallel else 1,
        "parallelism": model.parallel.mode if model.parallel else None,
        "pipeline_loads": pipeline_loads(),
        "lora_loads": model.adapters.loads if model.adapters is not None else 0,
    }


def _json_safe(values: dict[str, Any]) -> dict[str, Any]:
    """Identical frames have an infinite PSNR, which JSON (and PostgreSQL's json type) cannot hold: null."""
    return {
        name: None if isinstance(value, float) and not math.isfinite(value) else value for name, value in values.items()
    }


def _describe(exc: BaseException) -> str:
    return f"{exc.__class__.__name__}: {exc}"
