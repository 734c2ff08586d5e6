"""LoRA adapters for admins: register one for a model (a safetensors upload, checked against the model's
transformer), list them, delete one. Jobs name them in ``loras``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import anyio
from fastapi import APIRouter, Request, status
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.datastructures import UploadFile

from api.deps import AdminDep, SessionDep, SettingsDep, StorageDep
from api.errors import ApiError
from core.db import Lora
from core.jobs import loras

router = APIRouter(prefix="/admin/loras", include_in_schema=False)


class LoraView(BaseModel):
    name: str
    model: str
    # "upload" (POST /admin/loras) or "folder" (SKIPSTEP_LORA_DIR)
    source: str
    rank: int
    modules: int
    bytes: int
    sha256: str
    created_at: datetime


def lora_view(row: Lora) -> LoraView:
    return LoraView(
        name=row.name,
        model=row.model,
        source="upload" if row.storage_key is not None else "folder",
        rank=row.rank,
        modules=len(row.modules),
        bytes=row.bytes,
        sha256=row.sha256,
        created_at=row.created_at,
    )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=LoraView)
async def register(
    request: Request, _admin: AdminDep, session: SessionDep, settings: SettingsDep, storage: StorageDep
) -> Any:
    """multipart/form-data: ``name``, ``model`` and ``file`` (a LoRA in diffusers' safetensors format)."""
    form = await request.form(max_part_size=settings.lora_max_bytes)
    try:
        name, model, upload = form.get("name"), form.get("model"), form.get("file")
        missing = [
            (field, "required")
            for field, value in (("name", name), ("model", model))
            if not isinstance(value, str) or not value
        ]
        if not isinstance(upload, UploadFile):
            missing.append(("file", "required: the LoRA's safetensors file as a file part"))
        if missing:
            raise ApiError.invalid(*missing[0])
        data = await upload.read()
    finally:
        await form.close()
    # Checking, storing and committing block: off the event loop.
    row = await anyio.to_thread.run_sync(loras.register_upload, session, storage, settings, str(name), str(model), data)
    return lora_view(row)


@router.get("", response_model=list[LoraView])
def listing(_admin: AdminDep, session: SessionDep, model: str | None = None) -> Any:
    return [lora_view(row) for row in loras.registered(session, model)]


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete(name: str, _admin: AdminDep, session: SessionDep, storage: StorageDep) -> Response:
    if not loras.delete(session, storage, name):
        raise ApiError(status.HTTP_404_NOT_FOUND, f"no LoRA named {name!r}")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
