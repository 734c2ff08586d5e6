"""The actions on jobs, one function each, called by every front door (``POST /jobs``, ``/v1/videos``; the SDK
and ``skipstep submit`` reach them through ``/jobs``). Each checks the server's own rules, writes, commits,
then hands what must be sent to the broker (``Broker``: the front door's way to reach the workers, as core
imports no worker code)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.caching.profiles import ProfileStore
from core.contract.request import JobRequest
from core.db import ApiKey, Job
from core.errors import Conflict, InvalidRequest
from core.jobs import catalogue, repository, retention, targets, transitions
from core.jobs.expected import expected
from core.jobs.mapping import new_job
from core.jobs.remix import remix_request
from core.limits.active import hold_room
from core.limits.policy import SizeLimits
from core.settings import Settings
from core.storage import Storage, StorageError
from core.webhooks.addresses import UnresolvableHost, UnsafeWebhookURL, resolve_target

log = logging.getLogger("skipstep.jobs")


@dataclass(frozen=True)
class Broker:
    """What the service sends once a change is committed: a model's next jobs to its queue, a webhook delivery
    to the webhooks queue. Each must log, not raise, when the broker is down: the database sends again."""

    dispatch: Callable[[Settings, list[str]], object]
    deliver: Callable[[uuid.UUID | None], None]


@dataclass(frozen=True)
class Submitted:
    job: Job
    replayed: bool  # an earlier submit with the same Idempotency-Key made it


def submit(
    session: Session,
    key: ApiKey,
    request: JobRequest,
    settings: Settings,
    broker: Broker,
    idempotency_key: str | None = None,
    remix_of: uuid.UUID | None = None,
) -> Submitted:
    """Check a valid request against what depends on its model and the key (InvalidRequest naming every field),
    queue it and dispatch it.
    The row is committed before the broker hears of it, and the key's cap on jobs in flight holds under
    concurrent submits (``core.limits.active``). The same Idempotency-Key and body give the same job; another body,
    Conflict."""
    if request.webhook_url is not None:
        try:
            resolve_target(request.webhook_url, settings.webhook_allow_private)
        except (UnsafeWebhookURL, UnresolvableHost) as exc:
            raise InvalidRequest("webhook_url", str(exc)) from None

    fingerprint = request.fingerprint()
    if idempotency_key is not None:
        existing = repository.by_idempotency_key(session, key, idempotency_key)
        if existing is not None:
            return _replay(existing, fingerprint)

    model = request.model or settings.default_model
    info = catalogue.describe(session, model, settings)
    shape = request.shape(info.family, info.default_shape)
    request, choice = targets.resolve(session, request, shape, model, info)
    info.check_cache(request.cache)
    too_big = SizeLimits.for_key(key, settings).violations(shape, request.compare)
    if too_big:
        raise InvalidRequest(*too_big[0], *too_big[1:])
    figures = expected(session, request, shape, model, info, ProfileStore(settings.profiles_dir), choice)
    job = new_job(
        request,
        shape,
        model,
        key.id,
        idempotency_key=idempotency_key,
        request_hash=fingerprint,
        expected=figures.model_dump(mode="json") if figures is not None else None,
        pending_checks=info.pending_checks(request.cache),
        remix_of=remix_of,
    )
    hold_room(session, key, settings)
    session.add(job)
    try:
        session.commit()
    except IntegrityError:
        # A concurrent request with the same Idempotency-Key won the insert.
        session.rollback()
        existing = repository.by_idempotency_key(session, key, idempotency_key or "")
        if existing is None:
            raise
        return _replay(existing, fingerprint)
    try:
        broker.dispatch(settings, [job.model])
    except Exception:
        log.warning("job %s is saved but could not be dispatched now; a worker's sweep will send it", job.id)
    return Submitted(job, replayed=False)


def remix(
    session: Session,
    key: ApiKey,
    source: Job,
    changes: dict[str, Any],
    settings: Settings,
    broker: Broker,
    idempotency_key: str | None = None,
) -> Submitted:
    """Submit a new job made from a succeeded one (``core.jobs.remix``), linked to it; Conflict if the source
    has no video."""
    return submit(session, key, remix_request(source, changes), settings, broker, idempotency_key, source.id)


def _replay(job: Job, fingerprint: str) -> Submitted:
    if job.request_hash != fingerprint:
        raise Conflict(f"Idempotency-Key was already used for job {job.id} with a different request body")
    return Submitted(job, replayed=True)


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
