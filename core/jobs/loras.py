"""Registered LoRA adapters: an admin's upload (its file kept in the object store) or a worker's folder
(SKIPSTEP_LORA_DIR), each checked against its model's transformer modules as the model's workers published them
(``core.jobs.catalogue``); and the check of a job's ``loras`` at submit, against the database alone."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.contract.loras import NAME_PATTERN, LoraFile, LoraFileError, LoraSpec, check_lora, safetensors_header
from core.db import Lora
from core.errors import Conflict, InvalidRequest
from core.jobs import catalogue
from core.settings import Settings
from core.storage import Storage, store_bytes


@dataclass(frozen=True)
class Checked:
    """A LoRA file found fit for a model: what it adapts, its digest and size."""

    adapts: LoraFile
    sha256: str
    size: int


def check_file(data: bytes, modules: dict[str, list[int]], model: str) -> Checked:
    """``data`` checked as a LoRA for ``model`` (InvalidRequest naming ``file`` and the rule it breaks)."""
    try:
        adapts = check_lora(safetensors_header(data), modules, model)
    except LoraFileError as exc:
        raise InvalidRequest("file", str(exc)) from None
    return Checked(adapts, hashlib.sha256(data).hexdigest(), len(data))


def register_upload(session: Session, storage: Storage, settings: Settings, name: str, model: str, data: bytes) -> Lora:
    """Check an uploaded LoRA for ``model`` against what its workers published, store it and record it, committed.
    InvalidRequest naming the field at fault; Conflict for a name taken. Nothing is stored for a refused one."""
    problems = []
    if not re.match(NAME_PATTERN, name):
        problems.append(("name", "letters, digits, '_' and '-' only, starting with a letter or digit, at most 64"))
    if model not in settings.model_sources:
        problems.append(("model", f"unknown model {model!r}; configured: {', '.join(settings.model_sources)}"))
    if len(data) > settings.lora_max_bytes:
        problems.append(("file", f"must be at most {settings.lora_max_bytes} bytes (SKIPSTEP_LORA_MAX_BYTES)"))
    if problems:
        raise InvalidRequest(*problems[0], *problems[1:])
    modules = catalogue.describe(session, model, settings).lora_modules
    if modules is None:
        raise InvalidRequest(
            "model", f"no worker of model {model} has described its transformer yet: start one, then register"
        )
    checked = check_file(data, modules, model)
    if session.get(Lora, name) is not None:
        raise Conflict(f"a LoRA named {name!r} is already registered: delete it first, or pick another name")
    key = f"loras/{model}/{name}-{checked.sha256[:16]}.safetensors"
    store_bytes(storage, key, data, "application/octet-stream")
    row = _row(name, model, checked, storage_key=key)
    session.add(row)
    try:
        session.commit()
    except BaseException as exc:
        session.rollback()
        storage.delete(key)
        if isinstance(exc, IntegrityError):
            raise Conflict(f"a LoRA named {name!r} is already registered") from None
        raise
    return row


def register_path(session: Session, name: str, model: str, path: str, checked: Checked) -> bool:
    """Record a LoRA a worker found in its folder (SKIPSTEP_LORA_DIR); one registered under the same name with
    another file is left as it is (False)."""
    existing = session.get(Lora, name)
    if existing is not None:
        return existing.model == model and existing.sha256 == checked.sha256
    session.add(_row(name, model, checked, path=path))
    return True


def _row(name: str, model: str, checked: Checked, **where: str) -> Lora:
    return Lora(
        name=name,
        model=model,
        sha256=checked.sha256,
        bytes=checked.size,
        modules=list(checked.adapts.modules),
        rank=checked.adapts.rank,
        **where,
    )


def registered(session: Session, model: str | None = None) -> list[Lora]:
    query = select(Lora).order_by(Lora.model, Lora.name)
    if model is not None:
        query = query.where(Lora.model == model)
    return list(session.scalars(query))


def delete(session: Session, storage: Storage, name: str) -> bool:
    """Forget a LoRA and delete its uploaded file, committed; False if none is registered by that name. Queued jobs
    that name it fail when a worker takes them."""
    row = session.get(Lora, name)
    if row is None:
        return False
    key = row.storage_key
    session.delete(row)
    session.commit()
    if key is not None:
        storage.delete(key)
    return True


def check_request(session: Session, model: str, loras: Sequence[LoraSpec]) -> None:
    """A job's ``loras`` against those registered: each must exist and adapt the job's model (InvalidRequest naming
    ``loras.<index>.name`` for each that does not)."""
    if not loras:
        return
    rows = {row.name: row for row in session.scalars(select(Lora).where(Lora.name.in_([s.name for s in loras])))}
    problems = []
    for index, spec in enumerate(loras):
        row = rows.get(spec.name)
        if row is None:
            known = ", ".join(lora.name for lora in registered(session, model)) or "none"
            problems.append((f"loras.{index}.name", f"unknown LoRA {spec.name!r}; registered for {model}: {known}"))
        elif row.model != model:
            problems.append((f"loras.{index}.name", f"LoRA {spec.name!r} adapts model {row.model}, not {model}"))
    if problems:
        raise InvalidRequest(*problems[0], *problems[1:])
