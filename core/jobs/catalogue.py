"""The model catalogue: what a submit needs of each model (family, default shape, block count, transformer
config, the calibration profiles held for it and the strategies that apply), published by its GPU workers
once they have loaded it, so that the API host needs no model files. Where no worker has described a model,
configuration alone tells what it can; where it cannot, the job's model-dependent checks wait for its worker.

An API process keeps what it found of each model while the catalogue's version in the broker's Redis is the one it
read before (``publish`` gives the catalogue a new version at commit, ``core.jobs.notify``), and at most
``KEEP_SECONDS`` (a version lost with the broker, files that appeared since): a submit then reads one Redis key
instead of the row and the model's configuration files."""

from __future__ import annotations

import time
from dataclasses import asdict

import redis
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from core.contract import models
from core.contract.models import ModelInfo
from core.contract.shapes import FAMILIES, Shape
from core.db import CatalogueEntry, utcnow
from core.errors import ModelLoadError
from core.jobs import notify
from core.redis_sync import client_for
from core.settings import Settings

KEEP_SECONDS = 60.0
# (database, model, source) -> (catalogue version, when read, the description)
_kept: dict[tuple[str, str, str], tuple[bytes, float, ModelInfo]] = {}


def publish(session: Session, name: str, info: ModelInfo, worker_id: str) -> None:
    """Record what a worker that loaded model ``name`` knows of it; the latest description wins."""
    if info.family is None or info.default_shape is None:
        raise ValueError(f"model {name}: a worker describes the model it loaded, family and default shape included")
    values = {
        "source": info.source,
        "family": info.family.name,
        "default_shape": asdict(info.default_shape),
        "block_count": info.block_count,
        "transformer": info.transformer,
        "strategies": list(info.strategies or ()),
        "profiles": list(info.profiles or ()),
        "pipeline": info.pipeline,
        "lora_modules": info.lora_modules,
        "described_by": worker_id,
        "described_at": utcnow(),
    }
    insert = postgresql_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    session.execute(
        insert(CatalogueEntry)
        .values(name=name, **values)
        .on_conflict_do_update(index_elements=[CatalogueEntry.name], set_=values)
    )
    notify.catalogue_changed(session)


def describe(session: Session, name: str, settings: Settings) -> ModelInfo:
    """What a submit needs of the configured model ``name``: what its latest worker published, while the
    configuration still names the model that worker loaded (``same_model``); else what configuration alone
    tells (the preset catalogue, a hub id's config in the local Hugging Face cache, a local directory that exists
    here); else nothing yet (family None: every size must be given, and the family's rules are checked by the
    worker when it claims the job)."""
    source = settings.model_sources[name]
    version = _version(settings.broker_url)
    key = (settings.database, name, source)
    kept = _kept.get(key)
    if version is not None and kept is not None and kept[0] == version and time.monotonic() - kept[1] < KEEP_SECONDS:
        return kept[2]
    read_at = time.monotonic()
    info = _read(session, name, source, settings)
    if version is not None:
        _kept[key] = (version, read_at, info)
    return info


def _read(session: Session, name: str, source: str, settings: Settings) -> ModelInfo:
    entry = session.get(CatalogueEntry, name)
    if entry is not None and models.same_model(entry.source, source):
        return ModelInfo(
            source=entry.source,
            family=FAMILIES[entry.family],
            default_shape=Shape(**entry.default_shape),
            transformer=entry.transformer,
            profiles=tuple(entry.profiles),
            strategies=tuple(entry.strategies),
            described_by=entry.described_by,
            described_at=entry.described_at,
            pipeline=entry.pipeline or {},
            lora_modules=entry.lora_modules,
        )
    try:
        return models.describe(source, settings.presets_dir)
    except ModelLoadError:
        return ModelInfo(source=source, family=None, default_shape=None)


def _version(broker_url: str | None) -> bytes | None:
    """The catalogue's version, read before the catalogue (empty: nothing has been published since the broker
    started afresh); None, and nothing is kept, without a broker or an answer from it."""
    if broker_url is None:
        return None
    try:
        return client_for(broker_url).get(notify.CATALOGUE_VERSION) or b""
    except redis.RedisError:
        return None
