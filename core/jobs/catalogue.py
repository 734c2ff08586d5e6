"""The model catalogue: what a submit needs of each model (family, default shape, block count, transformer
config, the calibration profiles held for it and the strategies that apply), published by its GPU workers
once they have loaded it, so that the API host needs no model files. Where no worker has described a model,
configuration alone tells what it can; where it cannot, the job's model-dependent checks wait for its worker."""

from __future__ import annotations

from dataclasses import asdict

from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from core.contract import models
from core.contract.models import ModelInfo
from core.contract.shapes import FAMILIES, Shape
from core.db import CatalogueEntry, utcnow
from core.errors import ModelLoadError
from core.settings import Settings


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


def describe(session: Session, name: str, settings: Settings) -> ModelInfo:
    """What a submit needs of the configured model ``name``: what its latest worker published, while the
    configuration still names the model that worker loaded (``same_model``); else what configuration alone
    tells (the preset catalogue, a hub id's config in the local Hugging Face cache, a local directory that exists
    here); else nothing yet (family None: every size must be given, and the family's rules are checked by the
    worker when it claims the job)."""
    source = settings.model_sources[name]
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
