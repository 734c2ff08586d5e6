"""A process's LoRA files (a worker's; the calibrate and frontier commands'): a registered adapter's file found
for a run (an upload fetched once from the object store into SKIPSTEP_HOME/loras, a folder's file read where it
lies), and a worker's folder of adapters for its model (SKIPSTEP_LORA_DIR/<model>/<name>.safetensors) checked and
registered when it starts."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

from core.contract.loras import MAX_HEADER_BYTES, NAME_PATTERN
from core.db import Lora, session_scope
from core.errors import InvalidRequest
from core.jobs import loras
from core.models.lora import AdapterFile
from core.settings import Settings
from core.storage import Storage

log = logging.getLogger("skipstep.worker")


class LoraFiles:
    def __init__(self, settings: Settings, storage: Storage, model: str) -> None:
        self.settings, self.storage, self.model = settings, storage, model
        self.cache = settings.home / "loras"

    def __call__(self, name: str) -> AdapterFile:
        """LoRA ``name`` as registered for this worker's model (InvalidRequest naming ``loras`` for one deleted since
        the job was submitted); its file is fetched when the adapter is loaded."""
        with session_scope(self.settings.database) as session:
            row = session.get(Lora, name)
            if row is None or row.model != self.model:
                raise InvalidRequest("loras", f"LoRA {name!r} is no longer registered for model {self.model}")
            sha256, key, path = row.sha256, row.storage_key, row.path
        return AdapterFile(name, sha256, lambda: self._file(name, sha256, key, path))

    def _file(self, name: str, sha256: str, key: str | None, path: str | None) -> Path:
        """The LoRA's file on this host, its digest checked (InvalidRequest for a file changed since)."""
        if key is not None:
            file = self.cache / f"{sha256}.safetensors"
            if not file.is_file():
                self.cache.mkdir(parents=True, exist_ok=True)
                partial = file.with_suffix(".partial")
                partial.write_bytes(self.storage.get(key))
                partial.replace(file)
        else:
            file = Path(path or "")
        if _digest(file) != sha256:
            raise InvalidRequest("loras", f"LoRA {name!r}: its file {file.name} is not the one registered")
        return file

    def register_folder(self, modules: dict[str, list[int]]) -> None:
        """Register the model's adapters in SKIPSTEP_LORA_DIR/<model>/, each checked against ``modules``; one that
        is not a LoRA for the model, or whose name is taken by another file, is logged and left out."""
        if self.settings.lora_dir is None:
            return
        folder = self.settings.lora_dir / self.model
        for file in sorted(folder.glob("*.safetensors")) if folder.is_dir() else ():
            name = file.stem
            try:
                if not _valid_name(name):
                    raise InvalidRequest("name", f"{name!r}: letters, digits, '_' and '-' only, at most 64")
                with file.open("rb") as handle:
                    head = handle.read(8)
                    length = int.from_bytes(head, "little") if len(head) == 8 else 0
                    head += handle.read(min(length, MAX_HEADER_BYTES))
                checked = loras.check_file(head, modules, self.model)
                checked = loras.Checked(checked.adapts, _digest(file), file.stat().st_size)
            except (InvalidRequest, OSError) as exc:
                log.warning("LoRA file %s is left out: %s", file, exc)
                continue
            with session_scope(self.settings.database) as session:
                if not loras.register_path(session, name, self.model, str(file), checked):
                    log.warning("LoRA file %s is left out: the name %s is registered for another file", file, name)


def _valid_name(name: str) -> bool:
    return re.match(NAME_PATTERN, name) is not None


def _digest(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
