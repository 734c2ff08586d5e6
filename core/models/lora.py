"""LoRA adapters on a loaded pipeline, with diffusers' own LoRA loaders: a job's adapters are loaded once
(``load_lora_weights``) and kept, the least recently used unloaded past a capacity (``delete_adapters``); each run
activates its own set with its weights (``set_adapters``), and a run with none disables them all, which runs the
base weights exactly. The model is never reloaded for an adapter."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffusers import DiffusionPipeline

from core.contract.loras import LoraSpec


@dataclass(frozen=True)
class AdapterFile:
    """A registered LoRA: its name, the digest of its file, and where that file is on this machine (``locate``:
    fetched, if need be, when the adapter is loaded)."""

    name: str
    sha256: str
    locate: Callable[[], Path]


# A registered LoRA by name (InvalidRequest naming ``loras`` for one that is not registered for the model).
Resolve = Callable[[str], AdapterFile]


class Adapters:
    def __init__(self, pipeline: DiffusionPipeline, capacity: int, resolve: Resolve) -> None:
        self.pipeline, self.capacity, self.resolve = pipeline, capacity, resolve
        # Adapter names (a LoRA's name and digest, so that a file registered again under its name loads anew),
        # least recently used first.
        self.loaded: OrderedDict[str, None] = OrderedDict()
        # Adapters loaded from their files by this process.
        self.loads = 0

    def apply(self, loras: Sequence[LoraSpec]) -> list[dict[str, Any]]:
        """Make the next pipeline run use exactly ``loras`` with their weights (none: the base weights); what ran,
        each with whether its file was loaded for it."""
        if not loras:
            if self.loaded:
                self.pipeline.disable_lora()
            return []
        files = [self.resolve(spec.name) for spec in loras]
        names = [f"{file.name}_{file.sha256[:12]}" for file in files]
        fresh = set()
        for file, adapter in zip(files, names, strict=True):
            if adapter in self.loaded:
                self.loaded.move_to_end(adapter)
                continue
            self._make_room(keep=names)
            self.pipeline.load_lora_weights(str(file.locate()), adapter_name=adapter)
            self.loaded[adapter] = None
            self.loads += 1
            fresh.add(adapter)
        self.pipeline.set_adapters(names, [spec.weight for spec in loras])
        self.pipeline.enable_lora()
        return [
            {"name": spec.name, "weight": spec.weight, "sha256": file.sha256, "loaded": adapter in fresh}
            for spec, file, adapter in zip(loras, files, names, strict=True)
        ]

    def _make_room(self, keep: Sequence[str]) -> None:
        """Unload the least recently used adapters that this run does not need while the cache is full."""
        evictable = [name for name in self.loaded if name not in keep]
        while len(self.loaded) >= self.capacity and evictable:
            oldest = evictable.pop(0)
            self.pipeline.delete_adapters(oldest)
            del self.loaded[oldest]
