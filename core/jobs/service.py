"""The actions on jobs, one function each, called by every front door (``POST /jobs``, ``/v1/videos``; the SDK
and ``skipstep submit`` reach them through ``/jobs``). Each checks the server's own rules, writes, commits,
then hands what must be sent to the broker (``Broker``: the front door's way to reach the workers, as core
imports no worker code)."""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.caching.profiles import ProfileStore
from core.contract.models import ModelInfo
from core.contract.request import JobRequest
from core.contract.shapes import Shape
from core.db import ApiKey, Job
from core.errors import Conflict, InvalidRequest
from core.images import check_image
from core.jobs import catalogue, loras, notify, repository, retention, targets, transitions
from core.jobs.expected import Standing, expected, standing
from core.jobs.mapping import new_job
from core.jobs.remix import remix_request
from core.limits.active import hold_room
from core.limits.policy import SizeLimits
from core.settings import Settings
from core.storage import Storage, StorageError, input_image_key, store_bytes
from core.webhooks.addresses import UnresolvableHost, UnsafeWebhookURL, resolve_target

log = logging.getLogger("skipstep.jobs")


@dataclass(frozen=True)
class Broker:
    """What the service sends once a change is committed: a model's next jobs to its queue, a webhook delivery
    to the webhooks queue. Each must log, not raise, when the broker is down: the database sends again."""

    dispatch: Callable[[Settings, list[str]], object]
    deliver: Callable[[uuid.UUID | None], None]


@dataclass(frozen=True)
class FirstFrame:
    """A job's input image: the bytes of an upload, or a URL the worker fetches (under the webhooks' SSRF rules)."""

    data: bytes | None = None
    url: str | None = None

    def digest(self) -> str:
        return hashlib.sha256(self.data if self.data is not None else (self.url or "").encode()).hexdigest()


@dataclass(frozen=True)
class Submitted:
    job: Job
    replayed: bool  # an earlier submit with the same Idempotency-Key made it
    standing: Standing  # where it stood once committed


def submit(
    session: Session,
    key: ApiKey,
    request: JobRequest,
    settings: Settings,
    broker: Broker,
    idempotency_key: str | None = None,
    remix_of: uuid.UUID | None = None,
    image: FirstFrame | None = None,
    storage: Storage | None = None,
) -> Submitted:
    """Check a valid request against what depends on its model and the key (InvalidRequest naming every field),
    queue it and dispatch it.
    The row is committed before the broker hears of it, and the key's cap on jobs in flight holds under
    concurrent submits (``core.limits.active``). The same Idempotency-Key and body give the same job; another body,
    Conflict. An uploaded first frame (``image``) is checked (core.images) and stored in ``storage`` beside the
    job's video before the row is committed; nothing is stored for one that breaks a rule."""
    if request.webhook_url is not None:
        try:
            resolve_target(request.webhook_url, settings.webhook_allow_private)
        except (UnsafeWebhookURL, UnresolvableHost) as exc:
            raise InvalidRequest("webhook_url", str(exc)) from None

    fingerprint = request.fingerprint()
    if image is not None:
        fingerprint = hashlib.sha256(f"{fingerprint}:{image.digest()}".encode()).hexdigest()
    if idempotency_key is not None:
        existing = repository.by_idempotency_key(session, key, idempotency_key)
        if existing is not None:
            return _replay(session, existing, fingerprint, settings)

    model = request.model or settings.default_model
    info = catalogue.describe(session, model, settings)
    loras.check_request(session, model, request.loras)
    shape = request.shape(info.family, info.default_shape)
    request, choice = targets.resolve(session, request, shape, model, info)
    info.check_cache(request.cache)
    too_big = SizeLimits.for_key(key, settings).violations(shape, request.compare)
    if too_big:
        raise InvalidRequest(*too_big[0], *too_big[1:])
    first_frame = _first_frame(image, model, info, shape, settings)
    figures = expected(session, request, shape, model, info, ProfileStore(settings.profiles_dir), choice)
    job = new_job(
        request,
        shape,
        model,
        key.id,
        id=uuid.uuid4(),
        idempotency_key=idempotency_key,
        request_hash=fingerprint,
        expected=figures.model_dump(mode="json") if figures is not None else None,
        pending_checks=info.pending_checks(request.cache),
        remix_of=remix_of,
        input_image_url=image.url if image is not None else None,
    )
    hold_room(session, key, settings)
    if first_frame is not None:
        if storage is None:
            raise ValueError("an uploaded image needs the storage to keep it")
        job.input_image_key = input_image_key(job.id)
        store_bytes(storage, job.input_image_key, first_frame, "image/png")
    session.add(job)
    notify.queue_changed(session, model)
    try:
        session.commit()
    except BaseException as exc:
        if job.input_image_key is not None:
            storage.delete(job.input_image_key)
        if not isinstance(exc, IntegrityError):
            raise
        # A concurrent request with the same Idempotency-Key won the insert.
        session.rollback()
        existing = repository.by_idempotency_key(session, key, idempotency_key or "")
        if existing is None:
            raise
        return _replay(session, existing, fingerprint, settings)
    place = _standing(session, job, settings)
    # Read after the commit: a worker that turns idle later commits that first, then dispatches and sees this job.
    if place.idle_workers > 0:
        try:
            broker.dispatch(settings, [job.model])
        except Exception:
            log.warning("job %s is saved but could not be dispatched now; a worker's sweep will send it", job.id)
    return Submitted(job, replayed=False, standing=place)


def remix(
    session: Session,
    key: ApiKey,
    source: Job,
    changes: dict[str, Any],
    settings: Settings,
    broker: Broker,
    storage: Storage,
    idempotency_key: str | None = None,
) -> Submitted:
    """Submit a new job made from a succeeded one (``core.jobs.remix``), linked to it, with the source's first frame
    if it had one; Conflict if the source has no video, or its first frame is no longer stored."""
    request = remix_request(source, changes)
    image = None
    if source.input_image_key is not None:
        try:
            image = FirstFrame(data=storage.get(source.input_image_key))
        except StorageError:
            raise Conflict(f"job {source.id}'s first frame is no longer stored: it cannot be remixed") from None
    elif source.input_image_url is not None:
        image = FirstFrame(url=source.input_image_url)
    return submit(
        session, key, request, settings, broker, idempotency_key, remix_of=source.id, image=image, storage=storage
    )


def _first_frame(
    image: FirstFrame | None, model: str, info: ModelInfo, shape: Shape, settings: Settings
) -> bytes | None:
    """The uploaded first frame as it will be stored (PNG at the job's size), after the model's and the image's
    rules; None for none or a URL (its address checked here, its image by the worker that fetches it)."""
    if image is None:
        if info.image_input == "required":
            raise InvalidRequest("image", f"model {model} generates from an image: upload one or give image_url")
        return None
    if info.family is not None and info.image_input is None:
        raise InvalidRequest("image", f"model {model} generates from text alone: it takes no image")
    if image.url is not None:
        check_image_url(image.url, settings)
        return None
    return check_image(image.data or b"", shape, settings.image_max_bytes, settings.image_max_pixels)


def check_image_url(url: str, settings: Settings) -> None:
    """An image URL must be https (http too where private addresses are allowed: development, tests) and resolve
    to public addresses unless SKIPSTEP_WEBHOOK_ALLOW_PRIVATE allows private ones, as webhook URLs."""
    allowed = ("https", "http") if settings.webhook_allow_private else ("https",)
    if not url.lower().startswith(tuple(f"{scheme}://" for scheme in allowed)):
        raise InvalidRequest("image", "image URL must be https")
    try:
        resolve_target(url, settings.webhook_allow_private)
    except (UnsafeWebhookURL, UnresolvableHost) as exc:
        raise InvalidRequest("image", str(exc).replace("webhook URL", "image URL")) from None


def _replay(session: Session, job: Job, fingerprint: str, settings: Settings) -> Submitted:
    if job.request_hash != fingerprint:
        raise Conflict(f"Idempotency-Key was already used for job {job.id} with a different request body")
    return Submitted(job, replayed=True, standing=_standing(session, job, settings))


def _standing(session: Session, job: Job, settings: Settings) -> Standing:
    """The job's standing, read in a transaction ended here: the caller's session holds no connection after."""
    place = standing(session, job, settings.heartbeat_seconds)
    session.commit()
    return place


def cancel(session: Session, job_id: uuid.UUID, settings: Settings, broker: Broker) -> Job | None:
    """Cancel a queued job now, or ask a running one to stop at its next step; committed, its webhook event
    sent. None if it had already finished."""
    outcome = transitions.cancel(session, job_id, settings.public_url)
    session.commit()
    if isinstance(outcome, transitions.Ended):
        broker.deliver(outcome.delivery)
        return outcome.job
    return outcome


def delete(session: Session, job_id: uuid.UUID, settings: Settings, storage: Storage, broker: Broker) -> bool:
    """Delete a job's video and inputs from storage: a queued or running job is canceled first, and its objects
    are made due now and deleted at once if it has finished (in the order ``core.jobs.retention`` describes).
    Whether they are gone now; False: the job still runs (the sweep deletes them once it has stopped), or the store
    refused (the sweep tries again)."""
    canceled = transitions.cancel(session, job_id, settings.public_url)
    retention.request_delete(session, job_id)
    session.commit()
    if isinstance(canceled, transitions.Ended):
        broker.deliver(canceled.delivery)
    try:
        return retention.expire(settings.database, storage, job_id)
    except StorageError as exc:
        log.warning("job %s: its objects could not be deleted now (%s); the sweep tries again", job_id, exc)
        return False
